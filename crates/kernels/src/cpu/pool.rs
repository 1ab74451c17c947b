//! A persistent pool of worker threads that run one data-parallel job at a time, with low
//! hand-off latency (spin, then sleep), because a decode step issues hundreds of small jobs.
//!
//! Work is claimed dynamically: a job is a number of tasks, and every thread (the caller
//! included) takes the next unclaimed task until none are left. The caller never waits for a
//! worker that has not started (on a busy machine a descheduled worker would otherwise stall
//! every job); it waits only for tasks already being run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps on the condition variable. Jobs in a decode
/// step arrive every few microseconds, so spinning a little avoids a futex wake-up per job.
const SPIN: Duration = Duration::from_micros(100);

/// A job as the workers see it: a borrowed closure with its lifetime erased. Sound because
/// `ThreadPool::parallel_for` closes the job and waits for every worker inside it to leave
/// before it returns.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync` and outlives every use (see `JobPtr`).
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

struct Job {
    f: JobPtr,
    n_tasks: usize,
}

struct Shared {
    /// Incremented once per job; workers look for work when they see it change.
    generation: AtomicUsize,
    /// The open job, if any; workers enter it under this lock.
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Next task index to claim.
    next_task: AtomicUsize,
    /// Workers currently inside the job (they have its pointer).
    inside: AtomicUsize,
    /// Workers asleep on `wake` (changed under the `job` lock): a job wakes them only when
    /// there are some, since the wake-up is a system call and most jobs find them spinning.
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

/// `n_threads` threads in all: the caller of a job works as one of them.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serializes jobs from different threads (the pool runs one job at a time).
    running: Mutex<()>,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            next_task: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|id| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("meditron-cpu-{id}"))
                    .spawn(move || worker_loop(&shared))
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

    /// One thread per core: memory-bound kernels gain nothing from more.
    pub fn with_default_threads() -> ThreadPool {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ThreadPool::new(n)
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(task)` once for every task in `0..n_tasks`, spread over the threads; returns
    /// when all are done. A panic in any task reaches the caller.
    pub fn parallel_for<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        if self.n_threads == 1 || n_tasks <= 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _one_job_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let sh = &*self.shared;
        let f: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: erase the lifetime; the job is closed and drained below before `f` dies.
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f)
        });
        {
            let mut job = sh.job.lock().unwrap_or_else(|p| p.into_inner());
            sh.next_task.store(0, Ordering::SeqCst);
            *job = Some(Job { f: ptr, n_tasks });
            sh.generation.fetch_add(1, Ordering::SeqCst);
        }
        // A worker that went to sleep did so under the lock before we took it above, so its
        // count is visible here; one that had not yet sleeps no longer (it sees the change).
        if sh.sleepers.load(Ordering::SeqCst) != 0 {
            sh.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_tasks(sh, f, n_tasks)));
        // Close the job: late workers find nothing; then wait for those still inside.
        *sh.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut spins = 0u32;
        while sh.inside.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if sh.panicked.swap(false, Ordering::SeqCst) {
            panic!("a CPU worker thread panicked (see the message above)");
        }
    }

    /// Splits `0..n` into contiguous ranges whose starts are multiples of `align` (a few per
    /// thread, so a slow thread's share can be taken over) and calls `f(range)` for each.
    pub fn for_ranges<F: Fn(std::ops::Range<usize>) + Sync>(&self, n: usize, align: usize, f: F) {
        let align = align.max(1);
        let chunks = n.div_ceil(align);
        let parts = if self.n_threads == 1 {
            1
        } else {
            chunks.min(self.n_threads * 4)
        };
        if parts <= 1 {
            if n > 0 {
                f(0..n);
            }
            return;
        }
        self.parallel_for(parts, |t| {
            let r = split_range(chunks, t, parts);
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

fn claim_tasks(sh: &Shared, f: &(dyn Fn(usize) + Sync), n_tasks: usize) {
    loop {
        let t = sh.next_task.fetch_add(1, Ordering::AcqRel);
        if t >= n_tasks {
            return;
        }
        f(t);
    }
}

fn worker_loop(sh: &Shared) {
    let mut seen = 0usize;
    loop {
        let spin_start = Instant::now();
        let mut spins = 0u32;
        loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            if sh.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(256) || spin_start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let job = sh.job.lock().unwrap_or_else(|p| p.into_inner());
            if sh.generation.load(Ordering::Acquire) == seen && !sh.shutdown.load(Ordering::Acquire)
            {
                sh.sleepers.fetch_add(1, Ordering::SeqCst);
                drop(sh.wake.wait_timeout(job, Duration::from_millis(100)));
                sh.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = sh.generation.load(Ordering::Acquire);
        // Enter the job under the lock, so the caller cannot close it between our read of the
        // pointer and our registration.
        let entered = {
            let job = sh.job.lock().unwrap_or_else(|p| p.into_inner());
            job.as_ref().map(|j| {
                sh.inside.fetch_add(1, Ordering::AcqRel);
                (j.f, j.n_tasks)
            })
        };
        if let Some((JobPtr(f), n_tasks)) = entered {
            // SAFETY: the caller waits for `inside` to drop to zero before `f` goes away.
            let f = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| claim_tasks(sh, f, n_tasks))).is_err() {
                sh.panicked.store(true, Ordering::SeqCst);
                // Let the caller's claim loop finish the rest of the tasks.
            }
            sh.inside.fetch_sub(1, Ordering::AcqRel);
        }
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
    fn every_task_runs_exactly_once() {
        let pool = ThreadPool::new(4);
        for round in 0..300 {
            let n = round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.parallel_for(n, |t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
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
            pool.parallel_for(8, |t| assert!(t != 5, "boom"))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.parallel_for(8, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
