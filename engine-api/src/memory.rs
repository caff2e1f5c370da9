//! Returning freed heap to the system.

/// Hands the heap that glibc keeps after large frees (a model's load-time
/// tables, a closed session's buffers, kept in its arenas until trimmed)
/// back to the system, so that the process's RSS is what is live: the
/// memory budget counts what models and sessions hold, and freed pages it
/// does not see would otherwise add up under load. A no-op elsewhere
/// (other allocators return memory on their own terms).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
