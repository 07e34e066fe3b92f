//! What every part of the daemon shares: the store, the active policy, the
//! secret key and the state of the background loops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::decisions::shadow::ShadowSlot;
use crate::decisions::{Decided, DecisionLog, PendingDecision};
use crate::policy::{Call, PolicyError, PolicyHandle};
use crate::secrets::{SecretKey, token_hash};
use crate::store::{Store, StoreError};

pub struct App {
    pub store: Arc<dyn Store>,
    /// This replica's own files (compiled policies, scratch space).
    pub data_dir: PathBuf,
    /// Hosted repositories: `AUTODEPLOY_REPO_DIR`, shared by replicas.
    pub repo_dir: PathBuf,
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
    /// Where every decision goes (see `decisions`).
    pub decision_log: Arc<DecisionLog>,
    /// A candidate policy answering beside the active one, never acted on.
    pub shadow: ShadowSlot,
}

impl App {
    /// Runs one policy call off the async threads and records it in the
    /// decision log; returns the answer with the policy that gave it. The
    /// entry is written when the returned `PendingDecision` is dropped, or
    /// with the deployment it made when handed to the pipeline. A running
    /// shadow policy gets the call after the live answer is known.
    ///
    /// The call's `facts.config` is set to the deciding policy's own, read
    /// together with it, so a policy swapped in after the facts were
    /// gathered never sees another's config (and the log shows the one used).
    pub async fn decide_call(&self, mut call: Call) -> Decided {
        let (policy, config) = self.policy.current_with_config();
        if let Some(facts) = call.facts_mut()
            && *facts.config != *config
        {
            facts.config = config.to_string();
        }
        let info = policy.info().clone();
        let shadow = self.shadow.current();
        let (kind, project_id) = (
            crate::decisions::call_kind(&call),
            call.project().and_then(|p| p.id.parse().ok()),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let recorded_by = info.clone();
        self.decisions.run(Box::new(move || {
            let answer = crate::decisions::run(&policy, &call);
            let record = crate::decisions::record(&call, &answer, &recorded_by);
            let live = shadow.is_some().then(|| crate::decisions::outcome(&answer));
            let _ = tx.send((answer, record));
            // After the live answer is on its way: the shadow only queues it.
            if let (Some(shadow), Some(live)) = (shadow, live) {
                shadow.offer(call, live);
            }
        }));
        let (answer, record) = rx.await.unwrap_or_else(|_| {
            let answer = Err(PolicyError::Trap {
                call: "host",
                message: "the decision task failed".into(),
            });
            let record = crate::store::DecisionRecord {
                at: crate::store::now(),
                call: kind,
                project_id,
                input:
                    serde_json::json!({ "call": kind, "unrecorded": "the decision task failed" })
                        .to_string(),
                output: crate::decisions::outcome(&answer).to_string(),
                policy_name: info.name.clone(),
                policy_version: info.version.clone(),
                policy_sha256: info.sha256.clone(),
                policy_wit_version: info.wit_version.to_string(),
            };
            (answer, record)
        });
        Decided {
            answer,
            policy: info,
            decision: PendingDecision::new(record, self.decision_log.clone()),
        }
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
    /// When the next tick is due (Unix seconds); `None` while a tick runs
    /// or the loop is stopped.
    pub next_tick_at: Option<i64>,
    /// Projects the last tick looked at: those the policy's watch plan named
    /// for this loop. 0 when the policy watches nothing (e.g. with the
    /// master switch off).
    pub last_tick_watched: Option<usize>,
}

impl LoopStates {
    pub fn set(&self, name: &'static str, state: &str, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = state.to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
    }

    /// A tick the loop ran on its own has ended, having looked at
    /// `watched` projects (`None`: it failed before it knew).
    pub fn ticked(&self, name: &'static str, watched: Option<usize>, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = "running".to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
        entry.ticks += 1;
        entry.next_tick_at = None;
        entry.last_tick_watched = watched;
    }

    /// The loop waits for its next tick at `next` (Unix seconds).
    pub fn waiting(&self, name: &'static str, next: i64) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = "running".to_string();
        entry.next_tick_at = Some(next);
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
