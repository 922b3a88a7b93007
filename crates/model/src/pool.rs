//! A work pool for the many small parallel loops of single-stream decode (≈ 240 a token: every
//! quantized matmul and attention), where the caller never waits for a thread that is not running.
//!
//! Why not candle's barrier pool or rayon: a decode loop is 5–50 µs of work. candle's barrier pool
//! hands each thread a share and then waits for every thread to report back, so when the
//! machine is busy and a worker is descheduled, the caller spins until the OS runs it again —
//! measured on the 2-core dev machine under a load of 4: 5 tokens/s with two threads against 24
//! with one. rayon blocks the calling thread and wakes sleeping workers (microseconds per call).
//! Here items are claimed one at a time from a shared counter by whoever is running — the caller
//! included — so a worker that is late finds nothing left and the caller only ever waits for
//! items a running worker has already claimed.
//!
//! Jobs are `Arc`s holding what they need (no borrowed data crosses threads, so no unsafe).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Work split into `n` independent items, run as `run(0..n)` in any order on any thread.
pub trait Job: Send + Sync {
    fn run(&self, item: usize);
}

struct Task {
    job: Arc<dyn Job>,
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// A panic in an item on a worker, re-raised in the caller (the item still counts as done,
    /// so the caller does not wait forever).
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Task {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.job.run(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Worker {
    thread: Thread,
    sleeping: AtomicBool,
}

struct Shared {
    task: Mutex<Option<Arc<Task>>>,
    generation: AtomicU64,
    stop: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Arc<Worker>>,
    /// One caller at a time (a second caller runs its job inline rather than wait).
    busy: Mutex<()>,
}

/// How long an idle worker spins before it sleeps: longer than the gaps between a decode step's
/// loops, short enough not to burn a core once generation stops.
const SPIN: Duration = Duration::from_micros(300);

impl Pool {
    fn new(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            task: Mutex::new(None),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let workers = (0..workers)
            .filter_map(|i| {
                let shared = shared.clone();
                let (tx, rx) = std::sync::mpsc::channel::<Arc<Worker>>();
                let handle = std::thread::Builder::new()
                    .name(format!("ferrotune-pool-{i}"))
                    .spawn(move || {
                        if let Ok(me) = rx.recv() {
                            worker_loop(&shared, &me)
                        }
                    })
                    .ok()?;
                let w =
                    Arc::new(Worker { thread: handle.thread().clone(), sleeping: AtomicBool::new(false) });
                tx.send(w.clone()).ok()?;
                Some(w)
            })
            .collect();
        Self { shared, workers, busy: Mutex::new(()) }
    }

    /// Threads that run jobs, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `job` over items `0..n` and return when all are done. The caller works too.
    pub fn run(&self, job: Arc<dyn Job>, n: usize) {
        let guard = match self.busy.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if n <= 1 || self.workers.is_empty() || guard.is_none() {
            (0..n).for_each(|i| job.run(i));
            return;
        }
        let task = Arc::new(Task {
            job,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        for w in &self.workers {
            if w.sleeping.load(Ordering::SeqCst) {
                w.thread.unpark();
            }
        }
        task.work();
        // Only items a worker has claimed can be outstanding here. If that worker was
        // descheduled mid-item, spinning would hold the core it needs: yield after a short spin.
        let mut spins = 0u32;
        while task.done.load(Ordering::Acquire) < n {
            spins = spins.saturating_add(1);
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(guard);
        if let Some(p) = task.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.workers.iter().for_each(|w| w.thread.unpark());
    }
}

fn worker_loop(shared: &Shared, me: &Worker) {
    let mut seen = 0u64;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let generation = loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(128) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                // Give the core away now and then: on a busy machine the caller (or another
                // process) may be waiting for it.
                std::thread::yield_now();
                continue;
            }
            // Sleep. The caller bumps the generation before it looks at `sleeping`, and this
            // thread sets `sleeping` before it looks at the generation again (both SeqCst), so
            // one of the two sees the other; an unpark before the park makes the park return.
            me.sleeping.store(true, Ordering::SeqCst);
            if shared.generation.load(Ordering::SeqCst) == seen {
                std::thread::park();
            }
            me.sleeping.store(false, Ordering::SeqCst);
            idle_since = None;
        };
        seen = generation;
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let task = shared.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = task {
            t.work();
        }
    }
}

/// The process-wide pool: `RAYON_NUM_THREADS` (default: all cores) threads, the caller included.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads().saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Squares(Vec<AtomicU64>);
    impl Job for Squares {
        fn run(&self, i: usize) {
            self.0[i].store((i * i) as u64, Ordering::Relaxed);
        }
    }

    struct Fails;
    impl Job for Fails {
        fn run(&self, i: usize) {
            assert!(i != 5, "item 5 fails");
        }
    }

    #[test]
    fn a_panicking_item_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.run(Arc::new(Fails), 64)));
        assert!(r.is_err());
        let job = Arc::new(Squares((0..40).map(|_| AtomicU64::new(0)).collect()));
        pool.run(job.clone(), 40);
        assert_eq!(job.0[39].load(Ordering::Relaxed), 39 * 39);
    }

    #[test]
    fn every_item_runs_once_across_many_jobs_and_idle_gaps() {
        let pool = Pool::new(2);
        for round in 0..200 {
            let n = 1 + round % 37;
            let job = Arc::new(Squares((0..n).map(|_| AtomicU64::new(u64::MAX)).collect()));
            pool.run(job.clone(), n);
            for (i, v) in job.0.iter().enumerate() {
                assert_eq!(v.load(Ordering::Relaxed), (i * i) as u64);
            }
            if round % 50 == 0 {
                // Let the workers fall asleep; the next job must wake or not need them.
                std::thread::sleep(SPIN * 3);
            }
        }
    }
}
