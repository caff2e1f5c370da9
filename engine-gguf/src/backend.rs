//! Process-wide llama.cpp state: the backend and the log bridge.

use std::ffi::{CStr, c_char, c_void};
use std::sync::{Mutex, OnceLock};

use arny_engine_api::{EngineError, Result};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
/// The first error llama.cpp logged since the last `clear_last_error`: the
/// first one names the cause, later ones only say that loading failed.
static FIRST_ERROR: Mutex<String> = Mutex::new(String::new());
/// A log line that llama.cpp split over several calls (`GGML_LOG_LEVEL_CONT`).
static PARTIAL: Mutex<(i32, String)> = Mutex::new((0, String::new()));

/// The llama.cpp backend, initialised once per process with logs routed to
/// `tracing`. Anything else in the process that calls llama.cpp must use
/// this handle: a second `LlamaBackend::init` fails.
pub fn backend() -> Result<&'static LlamaBackend> {
    let b = BACKEND.get_or_init(|| {
        // SAFETY: the callback is a plain function that never unwinds.
        unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
        LlamaBackend::init().map_err(|e| e.to_string())
    });
    b.as_ref()
        .map_err(|e| EngineError::engine(crate::ENGINE_ID, format!("backend init: {e}")))
}

/// The first error line llama.cpp logged since the current operation began,
/// for error messages. Process-wide: two loads failing at the same moment on
/// different threads may see each other's message.
pub fn last_llama_error() -> Option<String> {
    let e = FIRST_ERROR.lock().ok()?;
    (!e.is_empty()).then(|| e.clone())
}

pub(crate) fn clear_last_error() {
    if let Ok(mut e) = FIRST_ERROR.lock() {
        e.clear();
    }
}

unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    // A panic must not unwind into C; a poisoned lock just drops the line.
    let _ = std::panic::catch_unwind(|| route(level, &text));
}

fn route(level: sys::ggml_log_level, text: &str) {
    let Ok(mut partial) = PARTIAL.lock() else {
        return;
    };
    let level = if level == sys::GGML_LOG_LEVEL_CONT {
        partial.0 as sys::ggml_log_level
    } else {
        if !partial.1.is_empty() {
            let (l, line) = (
                partial.0 as sys::ggml_log_level,
                std::mem::take(&mut partial.1),
            );
            emit(l, &line);
        }
        partial.0 = level as i32;
        level
    };
    partial.1.push_str(text);
    if partial.1.ends_with('\n') {
        let line = std::mem::take(&mut partial.1);
        emit(level, &line);
    }
}

fn emit(level: sys::ggml_log_level, line: &str) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    match level {
        sys::GGML_LOG_LEVEL_ERROR => {
            tracing::error!(target: "llama.cpp", "{line}");
            if let Ok(mut e) = FIRST_ERROR.lock()
                && e.is_empty()
            {
                // "llama_model_load: error loading model: <cause>" -> "<cause>"
                let cause = line
                    .rsplit(": error loading model: ")
                    .next()
                    .unwrap_or(line);
                cause.clone_into(&mut e);
            }
        }
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{line}"),
        // llama.cpp prints every metadata key at INFO; that is debug detail here.
        sys::GGML_LOG_LEVEL_INFO => tracing::debug!(target: "llama.cpp", "{line}"),
        _ => tracing::trace!(target: "llama.cpp", "{line}"),
    }
}
