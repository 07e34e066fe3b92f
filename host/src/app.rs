//! What every part of the daemon shares: the store, the active policy, the
//! secret key and the state of the background loops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::policy::{Policy, PolicyError, PolicyHandle, PolicyInfo};
use crate::secrets::{SecretKey, token_hash};
use crate::store::{Store, StoreError};

pub struct App {
    pub store: Arc<dyn Store>,
    /// Hosted repositories and accepted policies live here.
    pub data_dir: PathBuf,
    pub policy: PolicyHandle,
    pub key: SecretKey,
    /// Hash of `AUTODEPLOY_ADMIN_TOKEN`, when it is set.
    pub admin_env_hash: Option<String>,
    pub loops: LoopStates,
    /// Cap on one remote git lookup.
    pub git_timeout: Duration,
    /// Keeps a "tick now" from running beside the loop's own tick.
    pub git_poll_lock: tokio::sync::Mutex<()>,
    pub registry: crate::registry::Registry,
    /// `REGISTRY_ADDR`, probed at start.
    pub registry_addr: Option<String>,
    /// Why the image trigger is off, when the start-up probe failed.
    pub image_watch_off: Mutex<Option<String>>,
    pub image_watch_lock: tokio::sync::Mutex<()>,
    /// The threads policy decisions run on.
    pub decisions: DecisionPool,
    /// The last poll error of each project, so a streak of the same error
    /// is one event, not one per tick.
    pub poll_errors: ErrorStreaks,
    /// Bumped on every settings change, so a loop waiting for its next tick
    /// re-reads its interval and the master switch at once.
    pub settings_changed: tokio::sync::watch::Sender<()>,
    /// The lowest image watch interval accepted: 60 s, unless the test-only
    /// `AUTODEPLOY_TEST_ONLY_MIN_IMAGE_WATCH_INTERVAL_SECONDS` lowers it.
    pub image_watch_min_seconds: u64,
}

impl App {
    /// Runs one policy decision off the async threads; returns it with the
    /// policy that made it.
    pub async fn decide<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Policy) -> Result<T, PolicyError> + Send + 'static,
    ) -> (Result<T, PolicyError>, PolicyInfo) {
        let policy = self.policy.current();
        let info = policy.info().clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.decisions.run(Box::new(move || {
            let _ = tx.send(f(&policy));
        }));
        let result = rx.await.unwrap_or_else(|_| {
            Err(PolicyError::Trap {
                call: "host",
                message: "the decision task failed".into(),
            })
        });
        (result, info)
    }

    pub async fn is_admin(&self, token: &str) -> Result<bool, StoreError> {
        let hash = token_hash(token);
        if self.admin_env_hash.as_deref() == Some(hash.as_str()) {
            return Ok(true);
        }
        self.store.admin_token_exists(&hash).await
    }
}

/// The error each project is failing with right now.
#[derive(Default)]
pub struct ErrorStreaks(Mutex<std::collections::HashMap<i64, String>>);

impl ErrorStreaks {
    /// Records `error` for `id`; true when it differs from the last one.
    pub fn is_new(&self, id: i64, error: &str) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(&id).is_some_and(|last| last == error) {
            return false;
        }
        all.insert(id, error.to_string());
        true
    }

    /// The project works again: its next error starts a new streak.
    pub fn clear(&self, id: i64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

type Job = Box<dyn FnOnce() + Send>;

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
    fn threads() -> usize {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8)
    }

    fn run(&self, job: Job) {
        let queue = self.queue.get_or_init(|| {
            let queue = Arc::new(JobQueue::default());
            for i in 0..Self::threads() {
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

/// Each background loop's last tick, for `GET /api/status`.
#[derive(Default)]
pub struct LoopStates(Mutex<BTreeMap<&'static str, LoopState>>);

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopState {
    pub state: String,
    pub last_tick_at: Option<i64>,
    pub last_error: Option<String>,
    /// Ticks the loop ran on its own (ticks asked for through the API not
    /// counted).
    pub ticks: u64,
    /// When the next tick is due (Unix seconds); `None` while paused.
    pub next_tick_at: Option<i64>,
}

impl LoopStates {
    pub fn set(&self, name: &'static str, state: &str, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = state.to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
    }

    /// A tick the loop ran on its own has ended.
    pub fn ticked(&self, name: &'static str, paused: bool, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = if paused { "paused" } else { "running" }.to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
        entry.ticks += 1;
        entry.next_tick_at = None;
    }

    /// The loop waits: for its next tick at `next` (Unix seconds), or, with
    /// `None`, for the master switch to be turned on again.
    pub fn waiting(&self, name: &'static str, next: Option<i64>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = if next.is_some() { "running" } else { "paused" }.to_string();
        entry.next_tick_at = next;
    }

    /// A state that is not a tick (stopped, off); the last tick stays shown.
    pub fn state(&self, name: &'static str, state: &str, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = state.to_string();
        entry.next_tick_at = None;
        if error.is_some() {
            entry.last_error = error;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, LoopState> {
        self.0.lock().expect("loop state lock").clone()
    }
}
