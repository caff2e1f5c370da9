//! Arny's C ABI: the SDK for apps written in anything that can call C
//! (Flutter through `dart:ffi`, Swift, Kotlin through JNI, Python through
//! `ctypes`). `include/arny.h` is generated from this file by cbindgen and
//! checked in; a test fails when it is stale.
//!
//! The rules every entry point keeps:
//! - It returns an `ArnyCode`; on failure the calling thread's last error
//!   (`arny_last_error()`, `arny_last_error_kind()`) says what went wrong.
//! - No panic crosses the boundary: each body runs under `catch_unwind` and a
//!   panic comes back as `ARNY_CODE_PANIC` with its message.
//! - Strings in are NUL-terminated UTF-8 and borrowed for the call; strings
//!   out are owned by the caller and freed with `arny_string_free()`.
//! - Calls block the calling thread; an assistant may be used from several
//!   threads at once, and `arny_cancel()` may be called from any thread.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;
use std::sync::Mutex;

use arny_sdk::{AskOptions, Assistant, AssistantOptions, CancelToken, Event, Manifest, SdkError};
use futures::channel::mpsc::UnboundedReceiver;

/// What a call returned. `ARNY_CODE_OK` is zero; every other value is an error
/// whose message is in `arny_last_error()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArnyCode {
    Ok = 0,
    /// A null pointer, a string that is not UTF-8, malformed options JSON.
    InvalidArgument = 1,
    /// The manifest could not be read or is invalid.
    Manifest = 2,
    /// The request named a specialist the manifest does not have.
    UnknownSpecialist = 3,
    /// A model needs an engine this build does not include.
    EngineUnavailable = 4,
    /// A model failed to load: missing, truncated, wrong format.
    /// `arny_last_error_kind()` gives the engine's reason.
    LoadFailed = 5,
    /// The model does not fit in the manifest's memory budget.
    MemoryBudget = 6,
    /// The engine failed while generating (context overflow, ...).
    Engine = 7,
    /// The gateway failed to classify the request.
    Router = 8,
    /// A model could not be fetched or verified.
    ModelStore = 9,
    /// The cloud fallback failed.
    Cloud = 10,
    /// The request itself is invalid (empty message, ...).
    InvalidRequest = 11,
    /// A bug: Rust code panicked. The assistant may still be usable.
    Panic = 12,
    /// An output constraint (`json_schema`, `regex`, `grammar`) that cannot
    /// be enforced; the message names the keyword or the syntax error.
    InvalidConstraint = 13,
    /// The request waited for memory (or a slot) held by running requests
    /// past the manifest's `queue_timeout_secs`; retrying later may work.
    Busy = 14,
}

/// An assistant: models, gateway and memory budget, as built from a
/// manifest. Create with `arny_assistant_create()`, free with
/// `arny_assistant_destroy()`.
pub struct ArnyAssistant {
    assistant: Assistant,
    events: Mutex<UnboundedReceiver<Event>>,
    // Last, so the assistant (and the models' threads) go before the runtime.
    runtime: tokio::runtime::Runtime,
}

/// A cancellation flag for one or more generations. Thread-safe.
pub struct ArnyCancel {
    token: CancelToken,
}

/// Called with each piece of streamed text (NUL-terminated UTF-8, valid
/// only during the call), on the thread that called `arny_generate()`.
/// Return `false` to stop the generation.
pub type ArnyTokenCallback =
    Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> bool>;

struct LastError {
    kind: CString,
    message: CString,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

struct Failure {
    code: ArnyCode,
    kind: String,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ArnyCode::InvalidArgument,
            kind: "invalid_argument".into(),
            message: message.into(),
        }
    }
}

impl From<SdkError> for Failure {
    fn from(e: SdkError) -> Self {
        let code = match &e {
            SdkError::Manifest { .. } => ArnyCode::Manifest,
            SdkError::UnknownSpecialist { .. } => ArnyCode::UnknownSpecialist,
            SdkError::EngineUnavailable { .. } => ArnyCode::EngineUnavailable,
            SdkError::Load { .. } | SdkError::Adapter { .. } => ArnyCode::LoadFailed,
            SdkError::MemoryBudget { .. } => ArnyCode::MemoryBudget,
            SdkError::QueueTimeout { .. } => ArnyCode::Busy,
            SdkError::Engine(e) if e.code() == "invalid_constraint" => ArnyCode::InvalidConstraint,
            SdkError::Engine(_) => ArnyCode::Engine,
            SdkError::Router(_) => ArnyCode::Router,
            SdkError::Store(_) => ArnyCode::ModelStore,
            #[cfg(feature = "cloud")]
            SdkError::Cloud(_) => ArnyCode::Cloud,
            SdkError::InvalidRequest(_) => ArnyCode::InvalidRequest,
        };
        Self {
            code,
            kind: e.code().to_string(),
            message: e.to_string(),
        }
    }
}

fn set_last_error(kind: &str, message: &str) {
    // Interior NULs would cut the message; they cannot appear in a C string.
    let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| {
        *e.borrow_mut() = Some(LastError {
            kind: c(kind),
            message: c(message),
        })
    });
}

/// Runs an entry point's body: records the failure or the panic as the
/// thread's last error and turns it into a code.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> ArnyCode {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ArnyCode::Ok,
        Ok(Err(f)) => {
            tracing::debug!(kind = %f.kind, message = %f.message, "C call failed");
            set_last_error(&f.kind, &f.message);
            f.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "panic caught at the C boundary");
            set_last_error("panic", &format!("internal error (panic): {what}"));
            ArnyCode::Panic
        }
    }
}

/// # Safety
/// `s` is null or a NUL-terminated string alive for `'a`.
unsafe fn str_arg<'a>(s: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if s.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller passes a NUL-terminated string (function contract).
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// # Safety
/// `s` is null or a NUL-terminated string alive for `'a`.
unsafe fn opt_str_arg<'a>(s: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if s.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(s, what) }.map(Some)
    }
}

/// # Safety
/// `out` is null or valid for a write.
unsafe fn put_string(out: *mut *mut c_char, value: String) -> Result<(), Failure> {
    if out.is_null() {
        return Ok(());
    }
    let c = CString::new(value).map_err(|_| Failure::invalid("output contains a NUL byte"))?;
    // SAFETY: checked non-null; the caller provides a writable slot.
    unsafe { *out = c.into_raw() };
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// # Safety
/// `h` is null or a live handle from `arny_assistant_create()`.
unsafe fn handle<'a>(h: *const ArnyAssistant) -> Result<&'a ArnyAssistant, Failure> {
    // SAFETY: the caller passes a live handle or null (function contract).
    unsafe { h.as_ref() }.ok_or_else(|| Failure::invalid("assistant handle is null"))
}

fn build(manifest: Manifest, out: *mut *mut ArnyAssistant) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid("out is null"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("arny-io")
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: ArnyCode::Engine,
            kind: "io".into(),
            message: format!("cannot start the I/O runtime: {e}"),
        })?;
    let assistant = runtime.block_on(Assistant::new(manifest, AssistantOptions::default()))?;
    let events = Mutex::new(assistant.events());
    let h = Box::new(ArnyAssistant {
        assistant,
        events,
        runtime,
    });
    // SAFETY: checked non-null above.
    unsafe { *out = Box::into_raw(h) };
    Ok(())
}

/// Creates an assistant from a manifest file (TOML; relative paths in it are
/// relative to the file). `config_path` null means the built-in manifest
/// (the default model for every specialist). On success `*out` holds a
/// handle for `arny_assistant_destroy()`.
///
/// # Safety
/// `config_path` is null or a NUL-terminated string; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_assistant_create(
    config_path: *const c_char,
    out: *mut *mut ArnyAssistant,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let manifest = match unsafe { opt_str_arg(config_path, "config_path") }? {
            Some(p) => Manifest::from_file(Path::new(p))?,
            None => Manifest::builtin(),
        };
        build(manifest, out)
    })
}

/// Creates an assistant from manifest text (TOML) held in memory, e.g. an
/// app asset. Relative model paths resolve against `base_dir` (null: the
/// current directory).
///
/// # Safety
/// `toml` and `base_dir` are null or NUL-terminated strings; `out` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_assistant_create_from_toml(
    toml: *const c_char,
    base_dir: *const c_char,
    out: *mut *mut ArnyAssistant,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let text = unsafe { str_arg(toml, "toml") }?;
        // SAFETY: forwarded contract.
        let base = unsafe { opt_str_arg(base_dir, "base_dir") }?.unwrap_or(".");
        let manifest = Manifest::parse(text, "<toml>", Path::new(base))?;
        build(manifest, out)
    })
}

/// Frees an assistant and unloads its models. Null is ignored. No call on
/// this handle may be running or follow.
///
/// # Safety
/// `h` is null or a handle from `arny_assistant_create*`, not yet destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_assistant_destroy(h: *mut ArnyAssistant) {
    if h.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: a live handle made by Box::into_raw (function contract).
        drop(unsafe { Box::from_raw(h) });
        Ok(())
    });
}

/// Classifies `text` without generating. `*out_json` receives the decision:
/// `{"label","top","confidence","below_threshold","best_local","scores":[{"label","probability"}],"strategy","ms"}`.
///
/// # Safety
/// `h` is a live handle; `text` a NUL-terminated string; `out_json` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_route(
    h: *const ArnyAssistant,
    text: *const c_char,
    out_json: *mut *mut c_char,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let (a, text) = unsafe { (handle(h)?, str_arg(text, "text")?) };
        let d = a.runtime.block_on(a.assistant.route(text))?;
        // SAFETY: forwarded contract.
        unsafe { put_string(out_json, json(&d)) }
    })
}

/// Answers `text`: the gateway routes it, the chosen specialist streams its
/// answer through `on_token`, and `*out_json` receives the result:
/// `{"decision":{…}|null,"handler":{"kind","name"|"model"},"text","finish_reason","usage":{…}|null,"total_ms"}`.
/// `finish_reason` is `cancelled` when `cancel` fired or `on_token`
/// returned false; that is not an error.
///
/// `options_json` (may be null): `{"specialist","max_tokens","temperature","top_k","top_p","min_p","repetition_penalty","presence_penalty","frequency_penalty","seed","stop":[…]}`,
/// plus at most one constraint the answer is held to while it is generated:
/// `"json_schema":{…}`, `"json_object":true`, `"regex":"…"` or `"grammar":"…"` (Lark);
/// a schema keyword that cannot be enforced is `ARNY_CODE_INVALID_CONSTRAINT`.
/// every key optional; a sampling key set changes only that setting of the
/// specialist's. An unknown key is `ARNY_CODE_INVALID_ARGUMENT`.
/// `cancel` (may be null) can be fired from any thread with `arny_cancel()`.
///
/// # Safety
/// `h` is a live handle; strings are null or NUL-terminated; `cancel` is
/// null or live; `on_token` may be null; `out_json` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_generate(
    h: *const ArnyAssistant,
    text: *const c_char,
    options_json: *const c_char,
    cancel: *const ArnyCancel,
    on_token: ArnyTokenCallback,
    user_data: *mut c_void,
    out_json: *mut *mut c_char,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let (a, text, options) = unsafe {
            (
                handle(h)?,
                str_arg(text, "text")?,
                opt_str_arg(options_json, "options_json")?,
            )
        };
        let options = AskOptions::from_json(options.unwrap_or_default())
            .map_err(|e| Failure::invalid(format!("options_json: {e}")))?;
        let mut request = options
            .request(text)
            .map_err(|e| Failure::invalid(format!("options_json: {e}")))?;
        // SAFETY: null or a live ArnyCancel (function contract).
        if let Some(c) = unsafe { cancel.as_ref() } {
            request.cancel = c.token.clone();
        }
        let stop = request.cancel.clone();
        // The pointer is only used on this thread, inside this call; the
        // wrapper makes the closure Send as the SDK's signature asks.
        let user = SendPtr(user_data);
        let on_text = move |piece: &str| {
            let Some(cb) = on_token else { return };
            if stop.is_cancelled() {
                return;
            }
            let Ok(c) = CString::new(piece.replace('\0', " ")) else {
                return;
            };
            // SAFETY: the app's callback with the app's pointer; the string
            // lives for the call.
            let go_on = unsafe { cb(c.as_ptr(), user.get()) };
            if !go_on {
                stop.cancel();
            }
        };
        let answer = a.runtime.block_on(a.assistant.ask(request, on_text))?;
        // SAFETY: forwarded contract.
        unsafe { put_string(out_json, json(&answer)) }
    })
}

struct SendPtr(*mut c_void);
// SAFETY: the pointer is only dereferenced by the app's callback, on the
// thread that passed it in; the SDK just needs the closure to be Send.
unsafe impl Send for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// The assistant's state as JSON: plan, gateway strategy and threshold,
/// specialists, cloud model, memory budget and the models loaded now.
///
/// # Safety
/// `h` is a live handle; `out_json` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_status(
    h: *const ArnyAssistant,
    out_json: *mut *mut c_char,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { handle(h) }?;
        let status = a.assistant.status();
        // SAFETY: forwarded contract.
        unsafe { put_string(out_json, json(&status)) }
    })
}

/// Takes the next event without waiting: routing decisions, model loads and
/// unloads, cloud requests, as `{"event":"routed"|"loading"|"loaded"|…,…}`.
/// Returns `ARNY_CODE_OK` and sets `*out_json` to null when there is none.
///
/// # Safety
/// `h` is a live handle; `out_json` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_next_event(
    h: *const ArnyAssistant,
    out_json: *mut *mut c_char,
) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { handle(h) }?;
        if out_json.is_null() {
            return Err(Failure::invalid("out_json is null"));
        }
        let next = a
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_recv()
            .ok();
        match next {
            // SAFETY: checked non-null.
            Some(e) => unsafe { put_string(out_json, json(&e)) },
            None => {
                // SAFETY: checked non-null.
                unsafe { *out_json = ptr::null_mut() };
                Ok(())
            }
        }
    })
}

/// A new cancellation flag, not fired. Free with `arny_cancel_free()`.
#[unsafe(no_mangle)]
pub extern "C" fn arny_cancel_new() -> *mut ArnyCancel {
    Box::into_raw(Box::new(ArnyCancel {
        token: CancelToken::new(),
    }))
}

/// Fires the flag: every generation given it stops at its next token and
/// returns with `finish_reason` `cancelled`. Safe from any thread; null is
/// ignored.
///
/// # Safety
/// `c` is null or a live flag from `arny_cancel_new()`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_cancel(c: *const ArnyCancel) {
    // SAFETY: null or live (function contract).
    if let Some(c) = unsafe { c.as_ref() } {
        c.token.cancel();
    }
}

/// Frees a flag once no generation uses it. Null is ignored.
///
/// # Safety
/// `c` is null or a flag from `arny_cancel_new()`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_cancel_free(c: *mut ArnyCancel) {
    if !c.is_null() {
        // SAFETY: made by Box::into_raw (function contract).
        drop(unsafe { Box::from_raw(c) });
    }
}

/// Frees a string returned by this library. Null is ignored.
///
/// # Safety
/// `s` is null or a string this library returned, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw (function contract).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The message of the last failed call on this thread, or null. Valid
/// until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn arny_last_error() -> *const c_char {
    LAST_ERROR.with(|e| {
        e.borrow()
            .as_ref()
            .map_or(ptr::null(), |e| e.message.as_ptr())
    })
}

/// A stable machine-readable name for the last failure on this thread
/// (`manifest`, `wrong_format`, `corrupt`, `unknown_specialist`,
/// `memory_budget_exceeded`, `invalid_argument`, `panic`, ...), or null.
#[unsafe(no_mangle)]
pub extern "C" fn arny_last_error_kind() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(ptr::null(), |e| e.kind.as_ptr()))
}

/// Sends the library's logs to stderr, filtered like `RUST_LOG`
/// (`"info"`, `"arny_sdk=debug"`; null: `"warn"`). Only the first call
/// takes effect.
///
/// # Safety
/// `filter` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn arny_init_logging(filter: *const c_char) -> ArnyCode {
    guard(|| {
        // SAFETY: forwarded contract.
        let filter = unsafe { opt_str_arg(filter, "filter") }?.unwrap_or("warn");
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| Failure::invalid(format!("filter: {e}")))?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        Ok(())
    })
}

/// The library's version, e.g. `0.1.0` (static, never freed).
#[unsafe(no_mangle)]
pub extern "C" fn arny_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
