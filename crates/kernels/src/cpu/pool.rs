//! A persistent pool of worker threads that run one data-parallel job at a time, with low
//! hand-off latency (spin, then sleep), because a decode step issues hundreds of small jobs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps on the condition variable. Jobs in a decode
/// step arrive every few microseconds, so spinning a little avoids a futex wake-up per job.
const SPIN: Duration = Duration::from_micros(200);

/// A job as the workers see it: a borrowed closure with its lifetime erased. Sound because
/// `ThreadPool::run` does not return until every worker has finished calling it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, usize) + Sync));
// SAFETY: the pointee is `Sync` and outlives every use (see `JobPtr`).
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

struct Shared {
    /// Incremented once per job; workers start a job when they see it change.
    generation: AtomicUsize,
    /// Workers that have not finished the current job yet.
    pending: AtomicUsize,
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

/// `n_threads` threads in all: the caller of [`ThreadPool::run`] works as thread 0.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serializes `run` calls from different threads (the pool runs one job at a time).
    running: Mutex<()>,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|id| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("meditron-cpu-{id}"))
                    .spawn(move || worker_loop(&shared, id, n_threads))
                    .unwrap_or_else(|e| panic!("cannot start CPU worker thread: {e}"))
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            running: Mutex::new(()),
        }
    }

    /// One thread per physical core is what memory-bound kernels want; hyper-threads only
    /// contend for the same load ports.
    pub fn with_default_threads() -> ThreadPool {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ThreadPool::new(n)
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(thread_index, n_threads)` once on every thread and returns when all are done.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            f(0, 1);
            return;
        }
        let _one_job_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let f: &(dyn Fn(usize, usize) + Sync) = &f;
        // SAFETY: erase the lifetime; we wait below until no worker can still use it.
        let ptr: JobPtr = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize, usize) + Sync + '_),
                *const (dyn Fn(usize, usize) + Sync + 'static),
            >(f)
        });
        {
            let mut job = self.shared.job.lock().unwrap_or_else(|p| p.into_inner());
            *job = Some(ptr);
            self.shared
                .pending
                .store(self.n_threads - 1, Ordering::SeqCst);
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| f(0, self.n_threads)));
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.shared.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if self.shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a CPU worker thread panicked (see the message above)");
        }
    }

    /// Splits `0..n` into one contiguous range per thread (sizes differ by at most
    /// `align`) and calls `f(range)` for the non-empty ones.
    pub fn for_ranges<F: Fn(std::ops::Range<usize>) + Sync>(&self, n: usize, align: usize, f: F) {
        let align = align.max(1);
        let chunks = n.div_ceil(align);
        let threads = self.n_threads.min(chunks.max(1));
        if threads <= 1 {
            if n > 0 {
                f(0..n);
            }
            return;
        }
        self.run(|t, _| {
            if t >= threads {
                return;
            }
            let r = split_range(chunks, t, threads);
            let r = (r.start * align).min(n)..(r.end * align).min(n);
            if !r.is_empty() {
                f(r);
            }
        });
    }
}

/// The `t`-th of `parts` nearly equal contiguous pieces of `0..n`.
pub fn split_range(n: usize, t: usize, parts: usize) -> std::ops::Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = t * base + t.min(extra);
    start..start + base + usize::from(t < extra)
}

fn worker_loop(shared: &Shared, id: usize, n_threads: usize) {
    let mut seen = 0usize;
    loop {
        let spin_start = Instant::now();
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spin_start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let job = shared.job.lock().unwrap_or_else(|p| p.into_inner());
            if shared.generation.load(Ordering::Acquire) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                drop(shared.wake.wait_timeout(job, Duration::from_millis(100)));
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(JobPtr(f)) = job {
            // SAFETY: `run` keeps the closure alive until `pending` reaches zero.
            let f = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| f(id, n_threads))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(4);
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|t, n| {
                assert_eq!(n, 4);
                hits[t].fetch_add(round + 1, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn ranges_cover_everything_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 5, 31, 32, 33, 1000] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_ranges(n, 4, |r| {
                assert!(r.start % 4 == 0);
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_panicking_job_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|t, _| assert!(t != 1, "boom"))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
