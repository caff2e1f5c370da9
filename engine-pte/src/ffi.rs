//! The C++ shim (`shim/pte_shim.h`), opened at run time, and a safe handle
//! over one loaded program.
//!
//! The shim is a shared library built by `build.rs` next to the runtime it
//! links; see there for why it is opened with `dlopen` rather than linked.
//! A missing or mismatched shim is an [`EngineError::Unsupported`] at load
//! time, never a binary that fails to start.

// In a browser there is no shim to open: the loader is compiled out and
// what only it uses is unused there.
#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

use std::ffi::{CStr, CString, c_char};
use std::sync::OnceLock;

use arny_engine_api::{EngineError, Result};

use crate::ENGINE_ID;

const ABI_VERSION: u32 = 2;
const MAX_RANK: usize = 8;
/// `code` the shim uses for its own checks and C++ exceptions.
const SHIM_ERROR: u32 = 0x1000;
/// ExecuTorch's `Error::InvalidProgram`.
const INVALID_PROGRAM: u32 = 0x23;

/// ExecuTorch's EValue tag for tensors and scalar type ids.
pub const TAG_TENSOR: u32 = 1;
pub const DTYPE_LONG: i32 = 4;
pub const DTYPE_FLOAT: i32 = 6;

#[repr(C)]
struct Status {
    code: u32,
    message: [c_char; 512],
}

std::thread_local! {
    /// The runtime's error lines since the current call began: they name
    /// the cause (which verification failed) that its status code does not.
    static RUNTIME_ERRORS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Whether this thread is inside a call (a [`Status`] is alive).
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn take_runtime_errors() -> Vec<String> {
    RUNTIME_ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

impl Status {
    /// Every call into the runtime starts here; until the status drops,
    /// the runtime's error lines on this thread are kept for its message.
    fn new() -> Self {
        IN_CALL.set(true);
        Self {
            code: 0,
            message: [0; 512],
        }
    }
    /// The shim's message, with the runtime's own error lines of this call
    /// (at most three) after it.
    fn message(&self) -> String {
        // SAFETY: the shim always NUL-terminates (snprintf), and the buffer
        // starts zeroed.
        let mut m = unsafe { CStr::from_ptr(self.message.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let causes = take_runtime_errors();
        if !causes.is_empty() {
            m.push_str(": ");
            m.push_str(&causes[..causes.len().min(3)].join("; "));
        }
        m
    }
}

impl Drop for Status {
    /// Error lines that no failure carried out (the call succeeded, or its
    /// message was never read) are logged, so none is lost.
    fn drop(&mut self) {
        IN_CALL.set(false);
        for line in take_runtime_errors() {
            tracing::error!(target: "executorch", "{line}");
        }
    }
}

/// One input or output of a method.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    pub tag: u32,
    pub dtype: i32,
    pub rank: u32,
    pub sizes: [i32; MAX_RANK],
}

impl Slot {
    pub fn dims(&self) -> &[i32] {
        &self.sizes[..(self.rank as usize).min(MAX_RANK)]
    }
}

enum Opaque {}

type OpenFile = unsafe extern "C" fn(*const c_char, *const c_char, *mut Status) -> *mut Opaque;
type OpenBuffer = unsafe extern "C" fn(*const u8, usize, *const c_char, *mut Status) -> *mut Opaque;
type Close = unsafe extern "C" fn(*mut Opaque);
type MethodNames = unsafe extern "C" fn(*mut Opaque, *mut c_char, usize, *mut Status) -> usize;
type Slots = unsafe extern "C" fn(*mut Opaque, *const c_char, *mut Slot, u32, *mut Status) -> i32;
type ConstantFn = unsafe extern "C" fn(
    *mut Opaque,
    *const c_char,
    *mut u32,
    *mut f64,
    *mut i64,
    *mut c_char,
    usize,
    *mut Status,
) -> i64;
type RunI64 = unsafe extern "C" fn(
    *mut Opaque,
    *const c_char,
    u32,
    *const *const i64,
    *const *const i32,
    *const u32,
    u32,
    *mut f32,
    usize,
    *mut i32,
    *mut u32,
    *mut Status,
) -> i64;
type PlannedBytes = unsafe extern "C" fn(*mut Opaque, *const c_char, *mut Status) -> i64;
type LogSink = unsafe extern "C" fn(c_char, *const c_char, usize, *const c_char, usize);
type Threads = unsafe extern "C" fn() -> u32;
type SetThreads = unsafe extern "C" fn(u32) -> i32;

/// The shim's entry points. The library stays loaded for the process's
/// lifetime (it lives in a `static`), so the function pointers stay valid.
struct Runtime {
    #[cfg(not(target_arch = "wasm32"))]
    _lib: libloading::Library,
    open_file: OpenFile,
    open_buffer: OpenBuffer,
    close: Close,
    method_names: MethodNames,
    inputs: Slots,
    outputs: Slots,
    constant: ConstantFn,
    run_i64: RunI64,
    planned_bytes: PlannedBytes,
    threads: Threads,
    set_threads: SetThreads,
}

/// The runtime's log lines, as `tracing` events under the target
/// `executorch`. Its info lines (thread pool, CPU detection) are debug
/// here: they say nothing a user acts on.
unsafe extern "C" fn log_sink(
    level: c_char,
    file: *const c_char,
    line: usize,
    message: *const c_char,
    length: usize,
) {
    // No panic may unwind into C++.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the runtime passes `length` valid bytes and a C string.
        let text = unsafe { std::slice::from_raw_parts(message.cast::<u8>(), length) };
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end();
        let file = if file.is_null() {
            std::borrow::Cow::Borrowed("?")
        } else {
            unsafe { CStr::from_ptr(file) }.to_string_lossy()
        };
        match level as u8 {
            // Inside a call: kept for the error it returns (see Status).
            b'E' | b'F' if IN_CALL.get() => {
                tracing::debug!(target: "executorch", %file, line, "{text}");
                RUNTIME_ERRORS.with(|e| {
                    let mut e = e.borrow_mut();
                    if e.len() < 16 {
                        e.push(text.to_string());
                    }
                });
            }
            b'E' | b'F' => tracing::error!(target: "executorch", %file, line, "{text}"),
            _ => tracing::debug!(target: "executorch", %file, line, "{text}"),
        }
    });
}

fn shim_path() -> Option<String> {
    std::env::var("ARNY_PTE_SHIM")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| Some(env!("ARNY_PTE_SHIM").to_string()).filter(|p| !p.is_empty()))
}

#[cfg(target_arch = "wasm32")]
fn load_runtime() -> std::result::Result<Runtime, String> {
    Err(
        "ExecuTorch programs do not run in a browser through this engine (use the burn engine)"
            .into(),
    )
}

#[cfg(not(target_arch = "wasm32"))]
fn load_runtime() -> std::result::Result<Runtime, String> {
    let path = shim_path().ok_or_else(|| {
        "this build has no ExecuTorch runtime (the wheel's runtime is Linux x86-64)".to_string()
    })?;
    // SAFETY: loading runs the runtime's static initializers (operator and
    // delegate registration), which is what they are for.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
        format!("cannot open the ExecuTorch shim {path}: {e} (run scripts/setup.sh)")
    })?;
    // SAFETY: the symbol types match shim/pte_shim.h, checked by the ABI
    // version below.
    unsafe {
        let version: libloading::Symbol<unsafe extern "C" fn() -> u32> = lib
            .get(b"arny_pte_abi_version\0")
            .map_err(|e| format!("{path}: {e}"))?;
        if version() != ABI_VERSION {
            return Err(format!(
                "{path}: shim ABI {} but the engine expects {ABI_VERSION} (rebuild)",
                version()
            ));
        }
        let set_sink: libloading::Symbol<unsafe extern "C" fn(LogSink)> = lib
            .get(b"arny_pte_set_log_sink\0")
            .map_err(|e| format!("{path}: {e}"))?;
        set_sink(log_sink);
        macro_rules! sym {
            ($name:literal) => {
                *lib.get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{path}: {e}"))?
            };
        }
        Ok(Runtime {
            open_file: sym!("arny_pte_open_file"),
            open_buffer: sym!("arny_pte_open_buffer"),
            close: sym!("arny_pte_close"),
            method_names: sym!("arny_pte_method_names"),
            inputs: sym!("arny_pte_inputs"),
            outputs: sym!("arny_pte_outputs"),
            constant: sym!("arny_pte_constant"),
            run_i64: sym!("arny_pte_run_i64"),
            planned_bytes: sym!("arny_pte_planned_bytes"),
            threads: sym!("arny_pte_threads"),
            set_threads: sym!("arny_pte_set_threads"),
            _lib: lib,
        })
    }
}

fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(load_runtime)
        .as_ref()
        .map_err(|e| EngineError::Unsupported(format!("ExecuTorch runtime unavailable: {e}")))
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| EngineError::InvalidInput(format!("NUL in `{s}`")))
}

/// How a failed shim call is reported.
fn error(st: &Status, source_name: &str) -> EngineError {
    let message = st.message();
    match st.code {
        INVALID_PROGRAM => EngineError::Corrupt {
            source_name: source_name.to_string(),
            reason: message,
        },
        _ => EngineError::engine(ENGINE_ID, message),
    }
}

/// A constant a metadata method returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    Int(i64),
    Double(f64),
    Bool(bool),
    Str(String),
}

/// Which part of a method's float output [`Program::run`] copies out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Nothing (a prefill chunk whose logits nobody asked for).
    None = 0,
    /// The last row: the next-token logits.
    Last = 1,
    All = 2,
}

/// The shape of a float output.
pub struct Output {
    pub dims: Vec<usize>,
}

/// One loaded program with its method `forward` ready to run.
///
/// Not `Sync`: ExecuTorch's `Module` is not thread-safe. The model wraps
/// it in a mutex.
pub struct Program {
    rt: &'static Runtime,
    handle: *mut Opaque,
    source_name: String,
    /// Keeps a caller's buffer alive while the program reads from it.
    _bytes: Option<std::sync::Arc<[u8]>>,
}

// SAFETY: the handle is an owned C++ object with no thread affinity; all
// access goes through `&mut self` or the model's mutex.
unsafe impl Send for Program {}

impl Program {
    pub fn open_file(path: &std::path::Path, method: &str) -> Result<Self> {
        let rt = runtime()?;
        let name = path.display().to_string();
        let cpath = cstring(&path.to_string_lossy())?;
        let cmethod = cstring(method)?;
        let mut st = Status::new();
        // SAFETY: valid C strings; the shim catches all C++ exceptions.
        let handle = unsafe { (rt.open_file)(cpath.as_ptr(), cmethod.as_ptr(), &mut st) };
        Self::opened(rt, handle, &st, name, None)
    }

    pub fn open_bytes(name: &str, bytes: std::sync::Arc<[u8]>, method: &str) -> Result<Self> {
        let rt = runtime()?;
        let cmethod = cstring(method)?;
        let mut st = Status::new();
        // SAFETY: the buffer is kept alive in `_bytes` for the handle's life.
        let handle =
            unsafe { (rt.open_buffer)(bytes.as_ptr(), bytes.len(), cmethod.as_ptr(), &mut st) };
        Self::opened(rt, handle, &st, name.to_string(), Some(bytes))
    }

    fn opened(
        rt: &'static Runtime,
        handle: *mut Opaque,
        st: &Status,
        source_name: String,
        bytes: Option<std::sync::Arc<[u8]>>,
    ) -> Result<Self> {
        if handle.is_null() {
            // A program that passed the header checks but that the runtime
            // rejects is damaged, whatever the runtime's error code says.
            return Err(match st.code {
                SHIM_ERROR => EngineError::engine(ENGINE_ID, st.message()),
                _ => EngineError::Corrupt {
                    source_name,
                    reason: st.message(),
                },
            });
        }
        Ok(Self {
            rt,
            handle,
            source_name,
            _bytes: bytes,
        })
    }

    pub fn method_names(&mut self) -> Result<Vec<String>> {
        let mut st = Status::new();
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: buf is writable for its length.
            let need = unsafe {
                (self.rt.method_names)(self.handle, buf.as_mut_ptr().cast(), buf.len(), &mut st)
            };
            if st.code != 0 {
                return Err(error(&st, &self.source_name));
            }
            if need <= buf.len() {
                buf.truncate(need);
                let s = String::from_utf8_lossy(&buf);
                return Ok(s
                    .split('\n')
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect());
            }
            buf.resize(need, 0);
        }
    }

    fn slots(&mut self, method: &str, inputs: bool) -> Result<Vec<Slot>> {
        let cmethod = cstring(method)?;
        let mut out = vec![Slot::default(); 16];
        let mut st = Status::new();
        let f = if inputs {
            self.rt.inputs
        } else {
            self.rt.outputs
        };
        // SAFETY: out holds 16 slots.
        let n = unsafe { f(self.handle, cmethod.as_ptr(), out.as_mut_ptr(), 16, &mut st) };
        if n < 0 {
            return Err(error(&st, &self.source_name));
        }
        out.truncate((n as usize).min(16));
        Ok(out)
    }

    pub fn inputs(&mut self, method: &str) -> Result<Vec<Slot>> {
        self.slots(method, true)
    }

    pub fn outputs(&mut self, method: &str) -> Result<Vec<Slot>> {
        self.slots(method, false)
    }

    /// Bytes the method's planned buffers (activations, KV cache) take.
    pub fn planned_bytes(&mut self, method: &str) -> Result<u64> {
        let cmethod = cstring(method)?;
        let mut st = Status::new();
        // SAFETY: valid handle and C string.
        let n = unsafe { (self.rt.planned_bytes)(self.handle, cmethod.as_ptr(), &mut st) };
        if n < 0 {
            return Err(error(&st, &self.source_name));
        }
        Ok(n as u64)
    }

    /// Runs a metadata method (no inputs, one constant output).
    pub fn constant(&mut self, method: &str) -> Result<Constant> {
        let cmethod = cstring(method)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let (mut kind, mut num, mut inum) = (0u32, 0f64, 0i64);
            let mut st = Status::new();
            // SAFETY: buf is writable for its length; outputs are valid.
            let n = unsafe {
                (self.rt.constant)(
                    self.handle,
                    cmethod.as_ptr(),
                    &mut kind,
                    &mut num,
                    &mut inum,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut st,
                )
            };
            if n < 0 {
                return Err(error(&st, &self.source_name));
            }
            return Ok(match kind {
                1 => Constant::Int(inum),
                2 => Constant::Double(num),
                3 => Constant::Bool(inum != 0),
                _ => {
                    let n = n as usize;
                    if n > buf.len() {
                        buf.resize(n, 0);
                        continue;
                    }
                    buf.truncate(n);
                    Constant::Str(String::from_utf8(buf).map_err(|_| EngineError::Corrupt {
                        source_name: self.source_name.clone(),
                        reason: format!("`{method}` returned a string that is not UTF-8"),
                    })?)
                }
            });
        }
    }

    /// Runs `method` on int64 tensors and appends the `rows` part of its
    /// first output (float) to `out`; `hint` is the expected number of
    /// floats (room is made for it up front).
    pub fn run(
        &mut self,
        method: &str,
        inputs: &[(&[i64], &[i32])],
        rows: Rows,
        hint: usize,
        out: &mut Vec<f32>,
    ) -> Result<Output> {
        let cmethod = cstring(method)?;
        let data: Vec<*const i64> = inputs.iter().map(|(d, _)| d.as_ptr()).collect();
        let sizes: Vec<*const i32> = inputs.iter().map(|(_, s)| s.as_ptr()).collect();
        let ranks: Vec<u32> = inputs.iter().map(|(_, s)| s.len() as u32).collect();
        for (d, s) in inputs {
            let numel: i64 = s.iter().map(|&x| i64::from(x)).product();
            if numel != d.len() as i64 {
                return Err(EngineError::engine(
                    ENGINE_ID,
                    format!("input of {} values for shape {s:?}", d.len()),
                ));
            }
        }
        let base = out.len();
        let mut room = hint;
        loop {
            out.resize(base + room, 0.0);
            let mut dims = [0i32; MAX_RANK];
            let mut rank = 0u32;
            let mut st = Status::new();
            // SAFETY: every input pointer covers its shape (checked above);
            // `out` is writable for `room` floats from `base`.
            let n = unsafe {
                (self.rt.run_i64)(
                    self.handle,
                    cmethod.as_ptr(),
                    inputs.len() as u32,
                    data.as_ptr(),
                    sizes.as_ptr(),
                    ranks.as_ptr(),
                    rows as u32,
                    out.as_mut_ptr().add(base),
                    room,
                    dims.as_mut_ptr(),
                    &mut rank,
                    &mut st,
                )
            };
            if n < 0 {
                out.truncate(base);
                return Err(error(&st, &self.source_name));
            }
            let n = n as usize;
            if n > room {
                // The hint was short. Running again is correct because cache
                // positions are explicit: the run rewrites the same entries.
                room = n;
                continue;
            }
            out.truncate(base + n);
            let dims = dims[..(rank as usize).min(MAX_RANK)]
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            return Ok(Output { dims });
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from open_* and is closed once.
        unsafe { (self.rt.close)(self.handle) };
    }
}

/// The process-wide thread pool the XNNPACK delegate computes on.
pub fn threads() -> Result<u32> {
    let rt = runtime()?;
    // SAFETY: no arguments; the shim catches exceptions.
    Ok(unsafe { (rt.threads)() })
}

/// Resizes the pool. The caller must hold the lock that serialises runs.
pub fn set_threads(n: u32) -> Result<()> {
    let rt = runtime()?;
    // SAFETY: as above.
    match unsafe { (rt.set_threads)(n) } {
        0 => Ok(()),
        _ => Err(EngineError::engine(
            ENGINE_ID,
            format!("could not resize the thread pool to {n}"),
        )),
    }
}
