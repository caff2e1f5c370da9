//! How many compute threads a CPU engine uses when the caller does not say.
//!
//! Thread pools spin while workers wait for each other (ggml's and
//! XNNPACK's pthreadpool alike). With more threads than idle cores, a
//! spinning worker steals the core a working one needs, and a busy 2-core
//! machine ran llama.cpp 10-100x slower with 2 threads than with 1.
//! So: one thread on machines with 2 cores or fewer; otherwise half the
//! logical cores (roughly the physical or performance cores on phones and
//! desktops), capped at 8, past which a small model gains nothing.

/// The default thread count for this machine.
pub fn default_threads() -> u32 {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    threads_for(logical)
}

fn threads_for(logical: usize) -> u32 {
    if logical <= 2 {
        1
    } else {
        (logical / 2).clamp(1, 8) as u32
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy() {
        use super::threads_for;
        assert_eq!(threads_for(1), 1);
        assert_eq!(threads_for(2), 1);
        assert_eq!(threads_for(4), 2);
        assert_eq!(threads_for(8), 4);
        assert_eq!(threads_for(64), 8);
    }
}
