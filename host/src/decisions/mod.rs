//! The decision log: every policy call the daemon makes is recorded with its
//! input, its output and the policy that answered, so a deployment can show
//! the decisions that made it and a candidate policy can be replayed against
//! real traffic (see [`replay`]) or run beside the live one ([`shadow`]).
//!
//! Writes stay off the triggers' path. A decision that made a deployment is
//! written in the deployment's own transaction (the pipeline carries it
//! there), so the link survives a crash. Every other decision goes to a
//! bounded queue that a background writer drains in batches; when the queue
//! is full the decision is dropped and counted, never waited for: a trigger
//! is worth more than its log line.

mod fast_json;
pub mod pool;
pub mod replay;
pub mod shadow;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autodeploy_policy_contract::{Answer, Call};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::policy::{Policy, PolicyError, PolicyInfo};
use crate::store::{DecisionCall, DecisionRecord, Pruned, now};

/// Decisions waiting for the background writer; more are dropped.
const QUEUE: usize = 10_000;
/// Decisions written per transaction.
const BATCH: usize = 500;
/// Decisions written since the last time freed memory was handed back
/// that make it worth doing again once the queue is empty.
const TRIM_AFTER: usize = 5_000;
/// How often retention runs (also at start and on every settings change).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// At most one "decisions dropped" warning per this long.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Runs one call on `policy`: the one way the log, replay and shadow ask a
/// policy anything.
pub fn run(policy: &Policy, call: &Call) -> Result<Answer, PolicyError> {
    policy.run(call)
}

/// The call's name in the store's terms.
pub fn call_kind(call: &Call) -> DecisionCall {
    match call {
        Call::PolicyInfo => DecisionCall::PolicyInfo,
        Call::ParseCompose { .. } => DecisionCall::ParseCompose,
        Call::WatchPlan { .. } => DecisionCall::WatchPlan,
        Call::DecideCommit { .. } => DecisionCall::DecideCommit,
        Call::DecideImages { .. } => DecisionCall::DecideImages,
        Call::CheckAutoDeploy { .. } => DecisionCall::CheckAutoDeploy,
        Call::CheckDeployable { .. } => DecisionCall::CheckDeployable,
    }
}

/// What a policy call came to, as the log, replay and shadow compare it:
/// the answer's JSON, or `{"failed": "..."}` when the policy could not
/// answer (trap, budget, deadline, memory).
pub fn outcome(result: &Result<Answer, PolicyError>) -> Value {
    match result {
        Ok(answer) => answer.to_json(),
        Err(e) => json!({ "failed": e.to_string() }),
    }
}

/// The call as the log keeps it. A compose file is not kept, only its
/// sha256 and size: it may carry credentials in its environment, and the
/// image list the policy answered is in the output.
pub fn input_json(call: &Call) -> Value {
    match call {
        Call::ParseCompose { yaml } => json!({
            "call": "parse-compose",
            "input": {
                "yaml_sha256": crate::secrets::hex(&Sha256::digest(yaml.as_bytes())),
                "yaml_bytes": yaml.len(),
            },
        }),
        other => serde_json::to_value(other).unwrap_or_else(|e| {
            json!({ "call": other.name(), "unrecorded": format!("the call does not serialize: {e}") })
        }),
    }
}

/// The store's row for one call.
pub fn record(
    call: &Call,
    result: &Result<Answer, PolicyError>,
    policy: &PolicyInfo,
) -> DecisionRecord {
    DecisionRecord {
        at: now(),
        call: call_kind(call),
        project_id: call.project().and_then(|p| p.id.parse().ok()),
        // The calls a tick makes by the thousand skip the `Value` tree.
        input: fast_json::input(call).unwrap_or_else(|| input_json(call).to_string()),
        output: match result {
            Ok(answer) => fast_json::output(answer),
            Err(_) => None,
        }
        .unwrap_or_else(|| outcome(result).to_string()),
        policy_name: policy.name.clone(),
        policy_version: policy.version.clone(),
        policy_sha256: policy.sha256.clone(),
        policy_wit_version: policy.wit_version.to_string(),
    }
}

/// The log's queue, its writer's counters and the last retention pass.
pub struct DecisionLog {
    tx: tokio::sync::mpsc::Sender<DecisionRecord>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<DecisionRecord>>>,
    written: AtomicU64,
    dropped: AtomicU64,
    write_failures: AtomicU64,
    last_drop_warning: Mutex<Option<Instant>>,
    last_prune: Mutex<Option<PruneState>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneState {
    pub at: i64,
    #[serde(flatten)]
    pub pruned: Pruned,
    pub error: Option<String>,
}

/// What `GET /api/status` shows of the log.
#[derive(Debug, Clone, Serialize)]
pub struct LogStats {
    /// Written by the background writer (decisions that made a deployment
    /// are written with it and not counted here).
    pub written: u64,
    /// Dropped because the queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Lost because a batch could not be written.
    pub write_failures: u64,
    pub queued: usize,
    pub last_prune: Option<PruneState>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        DecisionLog {
            tx,
            rx: Mutex::new(Some(rx)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            last_drop_warning: Mutex::new(None),
            last_prune: Mutex::new(None),
        }
    }
}

impl DecisionLog {
    /// Queues a decision for the background writer; never waits.
    pub fn submit(&self, record: DecisionRecord) {
        if self.tx.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self
                .last_drop_warning
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(
                    dropped,
                    "the decision log's queue is full: decisions are dropped, not waited for"
                );
            }
        }
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            queued: QUEUE - self.tx.capacity(),
            last_prune: self
                .last_prune
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A decision not yet written. Dropped, it goes to the background writer;
/// taken with [`PendingDecision::into_record`], it is the caller's to write
/// (the pipeline writes it with the deployment it made).
pub struct PendingDecision {
    record: Option<DecisionRecord>,
    log: Arc<DecisionLog>,
}

impl PendingDecision {
    pub fn new(record: DecisionRecord, log: Arc<DecisionLog>) -> Self {
        PendingDecision {
            record: Some(record),
            log,
        }
    }

    pub fn record(&self) -> Option<&DecisionRecord> {
        self.record.as_ref()
    }

    pub fn into_record(mut self) -> DecisionRecord {
        self.record
            .take()
            .expect("a pending decision holds its record until taken")
    }
}

impl Drop for PendingDecision {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.log.submit(r);
        }
    }
}

impl std::fmt::Debug for PendingDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDecision")
            .field("call", &self.record.as_ref().map(|r| r.call))
            .finish()
    }
}

/// One policy call's answer, the policy that gave it, and its log entry.
pub struct Decided {
    pub answer: Result<Answer, PolicyError>,
    pub policy: PolicyInfo,
    pub decision: PendingDecision,
}

/// Writes queued decisions in batches until `cancel`, then writes what is
/// still queued and stops. A batch that cannot be written is logged and
/// counted; the writer goes on with the next.
pub async fn run_writer(app: Arc<App>, cancel: CancellationToken) {
    let Some(mut rx) = app
        .decision_log
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        tracing::error!("the decision log writer was started twice");
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut since_trim = 0;
    loop {
        let got = tokio::select! {
            _ = cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if got == 0 {
            return;
        }
        write(&app, &mut batch).await;
        since_trim += got;
        // A backlog (a tick's thousands of decisions) is written: the
        // memory its records held goes back to the system.
        if rx.is_empty() && since_trim >= TRIM_AFTER {
            since_trim = 0;
            crate::serve::release_freed_memory();
        }
    }
    // Shutting down: what is queued now is written, then the writer ends.
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(&app, &mut batch).await;
    }
}

async fn write(app: &App, batch: &mut Vec<DecisionRecord>) {
    let n = batch.len() as u64;
    match app.store.record_decisions(batch).await {
        Ok(()) => {
            app.decision_log.written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            app.decision_log
                .write_failures
                .fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, decisions = n, "writing to the decision log failed; these decisions are lost");
        }
    }
    batch.clear();
}

/// Applies the retention settings at start, every [`PRUNE_EVERY`] and on
/// every settings change, until `cancel`. A failed pass is logged and the
/// loop goes on.
pub async fn run_retention(app: Arc<App>, cancel: CancellationToken) {
    let mut changed = app.settings_changed.subscribe();
    loop {
        prune(&app).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

/// One retention pass.
pub async fn prune(app: &App) -> PruneState {
    let result = async {
        let s = app.store.settings().await?;
        let older_than = now() - (s.decision_log_max_age_days as i64) * 86_400;
        app.store
            .prune_decisions(s.decision_log_max_rows, older_than)
            .await
    }
    .await;
    let state = match result {
        Ok(pruned) => {
            if pruned != Pruned::default() {
                tracing::info!(
                    by_age = pruned.by_age,
                    by_count = pruned.by_count,
                    "decision log pruned"
                );
            }
            PruneState {
                at: now(),
                pruned,
                error: None,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "pruning the decision log failed; the next pass tries again");
            PruneState {
                at: now(),
                pruned: Pruned::default(),
                error: Some(e.to_string()),
            }
        }
    };
    *app.decision_log
        .last_prune
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
    state
}
