//! A few threads of their own for policy decisions.

use std::sync::{Arc, Mutex};

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A few threads of their own for policy decisions. Not tokio's blocking
/// pool: that one is shared with file and git work, and when it is busy a
/// push or a manual deploy would wait behind it for a policy answer. Every
/// decision is bounded (instruction budget, deadline), so a small fixed set
/// of threads keeps up; started on first use.
#[derive(Default)]
pub struct DecisionPool {
    queue: std::sync::OnceLock<Arc<JobQueue>>,
}

/// One queue all the threads take from. A job wakes exactly one idle
/// thread (a condition variable's `notify_one`): with a channel behind a
/// mutex, each job also woke the thread waiting for that mutex, for nothing,
/// and the hand-off cost more than a small decision.
#[derive(Default)]
struct JobQueue {
    state: Mutex<QueueState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: std::collections::VecDeque<Job>,
    threads: usize,
    closed: bool,
}

impl DecisionPool {
    /// Threads: one per core, at least 2 and at most 8.
    pub(crate) fn threads(&self) -> usize {
        Self::count()
    }

    fn count() -> usize {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8)
    }

    pub(crate) fn run(&self, job: Job) {
        let queue = self.queue.get_or_init(|| {
            let queue = Arc::new(JobQueue::default());
            for i in 0..Self::count() {
                let worker = queue.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("policy-{i}"))
                    .spawn(move || worker.work());
                match spawned {
                    Ok(_) => queue.lock().threads += 1,
                    Err(e) => tracing::error!(error = %e, "cannot start a policy thread"),
                }
            }
            queue
        });
        let mut state = queue.lock();
        if state.threads == 0 {
            // No thread could be started: run here rather than never.
            drop(state);
            job();
            return;
        }
        state.jobs.push_back(job);
        drop(state);
        queue.ready.notify_one();
    }
}

impl Drop for DecisionPool {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.get() {
            queue.lock().closed = true;
            queue.ready.notify_all();
        }
    }
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Jobs run outside the lock, so a panic never leaves it mid-change.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if let Some(job) = state.jobs.pop_front() {
                        break job;
                    }
                    if state.closed {
                        return;
                    }
                    state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            // A panicking decision loses its answer (the caller gets an
            // error), not the thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}
