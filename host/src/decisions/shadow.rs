//! A shadow policy: a candidate that answers every live decision beside the
//! active policy and is never acted on. Each live decision is handed to the
//! shadow's own thread after its answer is known, through a bounded queue
//! (full: the decision is skipped and counted), so the live decision never
//! waits for the candidate. Differences are counted, logged and the latest
//! kept in memory.

use std::collections::VecDeque;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use autodeploy_policy_contract::Call;
use serde::Serialize;
use serde_json::Value;

use super::{call_kind, outcome};
use crate::policy::{Policy, PolicyInfo};
use crate::store::{DecisionCall, now};

/// Live decisions waiting for the shadow; more are skipped.
const QUEUE: usize = 1024;
/// Differences kept for `GET /api/policy/shadow`, the newest.
pub const KEPT_DIFFS: usize = 100;

/// The running shadow, if any.
#[derive(Default)]
pub struct ShadowSlot(Mutex<Option<Arc<Shadow>>>);

impl ShadowSlot {
    pub fn current(&self) -> Option<Arc<Shadow>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts `policy` as the shadow (replacing a running one); `config`,
    /// when given, replaces `facts.config` in every call it sees.
    pub fn start(&self, policy: Policy, config: Option<String>) -> std::io::Result<ShadowReport> {
        let state = Arc::new(ShadowState::default());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let info = policy.info().clone();
        let worker = state.clone();
        let cfg = config.clone();
        std::thread::Builder::new()
            .name("policy-shadow".into())
            .spawn(move || {
                // Ends when the shadow is stopped: its sender is dropped.
                for job in rx {
                    worker.compare(&policy, cfg.as_deref(), job);
                }
            })?;
        let shadow = Arc::new(Shadow {
            info,
            config_set: config.is_some(),
            started_at: now(),
            queue: tx,
            state,
        });
        let report = shadow.report(true);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(shadow);
        Ok(report)
    }

    /// Stops the shadow; its last report, or `None` when none ran.
    pub fn stop(&self) -> Option<ShadowReport> {
        let shadow = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(shadow.report(false))
    }
}

pub struct Shadow {
    info: PolicyInfo,
    config_set: bool,
    started_at: i64,
    queue: SyncSender<Job>,
    state: Arc<ShadowState>,
}

struct Job {
    call: Call,
    live: Value,
    at: i64,
}

#[derive(Default)]
struct ShadowState {
    counts: Mutex<Counts>,
    diffs: Mutex<VecDeque<ShadowDiff>>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Live decisions the shadow answered.
    pub compared: u64,
    /// Of those, answered differently (failures included).
    pub differ: u64,
    /// Of those, the shadow could not answer (trap, budget, deadline).
    pub failed: u64,
    /// Live decisions skipped because the shadow had fallen behind.
    pub skipped: u64,
}

/// One decision the shadow would have made differently.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowDiff {
    pub at: i64,
    pub call: DecisionCall,
    pub project_id: Option<i64>,
    /// What the active policy answered (and the daemon acted on).
    pub live: Value,
    /// What the shadow would have answered.
    pub shadow: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// False once stopped.
    pub active: bool,
    pub policy: PolicyInfo,
    /// Whether the shadow runs with a config of its own.
    pub config_set: bool,
    pub started_at: i64,
    #[serde(flatten)]
    pub counts: Counts,
    /// The latest differences, newest first.
    pub diffs: Vec<ShadowDiff>,
}

impl Shadow {
    /// Hands a live decision and its outcome to the shadow; never waits.
    pub fn offer(&self, call: Call, live: Value) {
        let job = Job {
            call,
            live,
            at: now(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(job)
        {
            self.state.counts().skipped += 1;
        }
    }

    pub fn report(&self, active: bool) -> ShadowReport {
        ShadowReport {
            active,
            policy: self.info.clone(),
            config_set: self.config_set,
            started_at: self.started_at,
            counts: *self.state.counts(),
            diffs: self
                .state
                .diffs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .cloned()
                .collect(),
        }
    }
}

impl ShadowState {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compare(&self, policy: &Policy, config: Option<&str>, mut job: Job) {
        if let (Some(cfg), Some(facts)) = (config, job.call.facts_mut()) {
            facts.config = cfg.to_string();
        }
        let result = super::run(policy, &job.call);
        let candidate = outcome(&result);
        let differs = candidate != job.live;
        {
            let mut c = self.counts();
            c.compared += 1;
            c.failed += u64::from(result.is_err());
            c.differ += u64::from(differs);
        }
        if !differs {
            return;
        }
        let call = call_kind(&job.call);
        let project_id = job.call.project().and_then(|p| p.id.parse().ok());
        tracing::warn!(
            call = %call,
            project = ?project_id,
            live = %job.live,
            shadow = %candidate,
            "the shadow policy would decide differently (not acted on)"
        );
        let mut diffs = self.diffs.lock().unwrap_or_else(|e| e.into_inner());
        if diffs.len() == KEPT_DIFFS {
            diffs.pop_front();
        }
        diffs.push_back(ShadowDiff {
            at: job.at,
            call,
            project_id,
            live: job.live,
            shadow: candidate,
        });
    }
}
