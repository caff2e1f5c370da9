//! Process-wide llama.cpp state: the backend and the log bridge.

use std::cell::Cell;
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

thread_local! {
    /// Bytes of the buffers llama.cpp reported allocating on this thread
    /// while a [`buffer_bytes`] call runs; `None` outside one.
    static BUFFERS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` and returns what it returned with the bytes of every buffer
/// llama.cpp allocated meanwhile on this thread (KV cache, output and
/// compute buffers), as its own log reports them: llama.h has no call
/// that tells a context's memory, and an estimate would miss the compute
/// buffer, which is most of it.
pub(crate) fn buffer_bytes<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let outer = BUFFERS.with(|b| b.replace(Some(0)));
    let out = f();
    let bytes = BUFFERS.with(|b| b.replace(outer)).unwrap_or(0);
    (out, bytes)
}

/// "llama_context:        CPU compute buffer size =    12.34 MiB" -> bytes.
fn reported_buffer(line: &str) -> Option<u64> {
    let rest = line.split(" buffer size = ").nth(1)?;
    let mib: f64 = rest.trim().strip_suffix("MiB")?.trim().parse().ok()?;
    Some((mib * 1024.0 * 1024.0) as u64)
}

/// Makes glibc map the large buffers of a context (the KV cache and the
/// compute buffer, tens of megabytes each) and unmap them when freed:
/// glibc raises its mmap threshold to the largest block freed (up to
/// 32 MiB), after which such buffers come from its heaps and the holes
/// they leave stay in the process. Measured under the 1000-request load
/// test: 382 MiB peak RSS without it, 291 MiB with it. The setting is
/// process-wide, so it stays above the sizes other code in the process
/// allocates often (8 MiB rather than the 1 MiB first tried).
fn map_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

/// Held as the last field of a model or session, so that it drops after
/// the llama.cpp objects it sits beside: glibc keeps what a closed session
/// or an unloaded model freed (compute buffers of tens of megabytes served
/// from its heaps once its dynamic mmap threshold has risen, tokenizer
/// tables, graph metadata, in per-thread arenas) until trimmed, and under
/// load that adds up to tens of megabytes the budget does not see.
#[derive(Default)]
pub(crate) struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        arny_engine_api::release_free_heap();
    }
}

/// The llama.cpp backend, initialised once per process with logs routed to
/// `tracing`. Anything else in the process that calls llama.cpp must use
/// this handle: a second `LlamaBackend::init` fails.
pub fn backend() -> Result<&'static LlamaBackend> {
    let b = BACKEND.get_or_init(|| {
        map_large_buffers();
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
    if level == sys::GGML_LOG_LEVEL_INFO
        && let Some(bytes) = reported_buffer(line)
    {
        BUFFERS.with(|b| {
            if let Some(sum) = b.get() {
                b.set(Some(sum + bytes));
            }
        });
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

#[cfg(test)]
mod tests {
    use super::reported_buffer;

    #[test]
    fn buffer_lines_are_read_in_bytes() {
        let line = "llama_context:        CPU compute buffer size =    12.50 MiB";
        assert_eq!(reported_buffer(line), Some(12 * 1024 * 1024 + 512 * 1024));
        let kv = "llama_kv_cache:        CPU KV buffer size =     3.00 MiB";
        assert_eq!(reported_buffer(kv), Some(3 << 20));
        assert_eq!(reported_buffer("llama_context: n_ctx = 512"), None);
    }
}
