//! Threads for a page: Web Workers that share the module's memory (a wasm
//! build with `+atomics`), parked here until a matmul hands them tasks.
//!
//! rayon cannot be used as it is on the native side: a page's main thread
//! may not block (`memory.atomic.wait` traps there), and rayon's caller
//! blocks while its pool works. Here the caller never waits in that sense:
//! it takes tasks itself, then spins until the workers' last tasks finish,
//! which for a matmul is microseconds. Workers spin a while for the next
//! job (a token's matmuls come back to back) and then sleep on the job
//! counter, which the caller wakes only when someone sleeps.
//!
//! The page starts the workers (JS: a module Worker per thread, each
//! instantiating this module over the same memory and calling
//! [`worker_main`]); until one has, everything runs on the caller.

use std::arch::wasm32::{memory_atomic_notify, memory_atomic_wait32};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering::SeqCst};

/// Workers inside [`worker_main`].
static WORKERS: AtomicUsize = AtomicUsize::new(0);
/// Bumped once per job: what workers watch and sleep on.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// The job in flight, on its caller's stack; null between jobs.
static JOB: AtomicPtr<Job<'static>> = AtomicPtr::new(std::ptr::null_mut());
/// Workers that may be holding [`JOB`]'s pointer: the caller returns only
/// when this is zero and [`JOB`] is null, so no worker reads a dead job.
static HOLDING: AtomicUsize = AtomicUsize::new(0);
/// Workers asleep in `memory.atomic.wait`.
static SLEEPING: AtomicUsize = AtomicUsize::new(0);
/// One job at a time: a second caller (re-entry, or a worker's task that
/// itself calls a matmul) runs its tasks alone.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Checks for a new job before sleeping: a few ms, longer than the gaps
/// between one token's matmuls and most gaps between tokens, shorter than
/// a page's idle time. A sleeping worker wakes late (on a 2-core VM its
/// core may have halted), and the caller meanwhile takes the job alone: at
/// 2^18 checks a worker slept about twice a token, at 2^21 about once in
/// ten tokens, and the page decoded ~6% faster (medians of 18 answers).
const SPIN: u32 = 1 << 21;

struct Job<'a> {
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    run: &'a (dyn Fn(usize) + Sync),
}

impl Job<'_> {
    /// Takes tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            (self.run)(i);
            self.done.fetch_add(1, SeqCst);
        }
    }
}

/// The workers that have started.
pub fn workers() -> usize {
    WORKERS.load(SeqCst)
}

/// Runs `run(i)` for every `i < tasks`, on the caller and every started
/// worker; returns when all have run. Each task runs exactly once.
pub fn for_each(tasks: usize, run: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 || WORKERS.load(SeqCst) == 0 || BUSY.swap(true, SeqCst) {
        (0..tasks).for_each(run);
        return;
    }
    let job = Job {
        tasks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        run,
    };
    // The lifetime is erased only while this frame waits for every holder.
    JOB.store((&job as *const Job<'_>).cast_mut().cast(), SeqCst);
    EPOCH.fetch_add(1, SeqCst);
    if SLEEPING.load(SeqCst) > 0 {
        // SAFETY: EPOCH is a live, aligned u32 in the shared memory.
        unsafe { memory_atomic_notify(EPOCH.as_ptr().cast(), u32::MAX) };
    }
    job.work();
    while job.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    JOB.store(std::ptr::null_mut(), SeqCst);
    while HOLDING.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    BUSY.store(false, SeqCst);
}

/// A worker's life: wait for a job, take its tasks, repeat. Never returns;
/// call it from a Web Worker (the main thread may not sleep).
pub fn worker_main() -> ! {
    WORKERS.fetch_add(1, SeqCst);
    let mut seen = EPOCH.load(SeqCst);
    loop {
        let mut spins = 0;
        while EPOCH.load(SeqCst) == seen {
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            SLEEPING.fetch_add(1, SeqCst);
            // Returns at once if the epoch moved since the check above.
            // SAFETY: as in `for_each`.
            unsafe { memory_atomic_wait32(EPOCH.as_ptr().cast(), seen as i32, -1) };
            SLEEPING.fetch_sub(1, SeqCst);
        }
        seen = EPOCH.load(SeqCst);
        HOLDING.fetch_add(1, SeqCst);
        let job = JOB.load(SeqCst);
        // SAFETY: a non-null JOB stays alive until HOLDING drops to zero
        // after JOB is cleared (SeqCst orders the two pairs of accesses).
        if let Some(job) = unsafe { job.as_ref() } {
            job.work();
        }
        HOLDING.fetch_sub(1, SeqCst);
    }
}
