//! What every part of the daemon shares: the store, the active policy, the
//! secret key and the config, and handles to the background loops (for
//! "tick now" and status; each loop owns its state).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::decisions::pool::DecisionPool;
use crate::decisions::shadow::ShadowSlot;
use crate::decisions::{Decided, DecisionLog, PendingDecision};
use crate::loops::{Loops, ReplicaId};
use crate::policy::{Answer, Call, PolicyError, PolicyHandle, PolicyInfo};
use crate::secrets::{SecretKey, token_hash};
use crate::store::{DecisionRecord, Store, StoreError};

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
    /// The git poller, image watcher and node watcher.
    pub loops: Loops,
    /// This process among the replicas sharing the database.
    pub replica: ReplicaId,
    /// Cap on one remote git lookup.
    pub git_timeout: Duration,
    /// The threads policy decisions run on.
    pub decisions: DecisionPool,
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
    /// What `/metrics` exports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The notification sender's wake-up and HTTP client.
    pub notifier: crate::notifications::Notifier,
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
    pub async fn decide_call(&self, call: Call) -> Decided {
        let mut decided = self.decide_calls(vec![call]).await;
        decided.pop().expect("one answer per call")
    }

    /// [`App::decide_call`] for many calls at once, answers in the calls'
    /// order. Each call is still its own policy run (a fresh instance, its
    /// own budget) and its own log entry; only the hand-offs to the policy
    /// threads are shared: one per thread rather than one per call, which
    /// cost more than a small decision. All are decided by the same policy.
    pub async fn decide_calls(&self, mut calls: Vec<Call>) -> Vec<Decided> {
        if calls.is_empty() {
            return Vec::new();
        }
        let (policy, config) = self.policy.current_with_config();
        for call in &mut calls {
            if let Some(facts) = call.facts_mut()
                && *facts.config != *config
            {
                facts.config = config.to_string();
            }
        }
        let info = policy.info().clone();
        let shadow = self.shadow.current();
        // What a call's entry says when its job never answered.
        let unanswered: Vec<_> = calls
            .iter()
            .map(|call| {
                (
                    crate::decisions::call_kind(call),
                    call.project().and_then(|p| p.id.parse().ok()),
                )
            })
            .collect();
        let chunk = calls.len().div_ceil(self.decisions.threads());
        let mut waiting = Vec::new();
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let part: Vec<Call> = calls.by_ref().take(chunk).collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (policy, shadow, recorded_by) = (policy.clone(), shadow.clone(), info.clone());
            let metrics = self.metrics.clone();
            let n = part.len();
            self.decisions.run(Box::new(move || {
                let mut answers = Vec::with_capacity(part.len());
                let mut lives = Vec::new();
                for call in &part {
                    // A call that panics loses its own answer, not the
                    // others' in the job.
                    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let started = std::time::Instant::now();
                        let answer = crate::decisions::run(&policy, call);
                        metrics.decision(
                            crate::decisions::call_kind(call),
                            started.elapsed(),
                            answer.is_err(),
                        );
                        let record = crate::decisions::record(call, &answer, &recorded_by);
                        (answer, record)
                    }));
                    let (answer, record) = answered.unwrap_or_else(|_| {
                        let project_id = call.project().and_then(|p| p.id.parse().ok());
                        failed_job(crate::decisions::call_kind(call), project_id, &recorded_by)
                    });
                    if shadow.is_some() {
                        lives.push(crate::decisions::outcome(&answer));
                    }
                    answers.push((answer, record));
                }
                let _ = tx.send(answers);
                // After the live answers are on their way: the shadow only
                // queues them.
                if let Some(shadow) = shadow {
                    for (call, live) in part.into_iter().zip(lives) {
                        shadow.offer(call, live);
                    }
                }
            }));
            waiting.push((rx, n));
        }
        let mut decided = Vec::with_capacity(unanswered.len());
        let mut unanswered = unanswered.into_iter();
        for (rx, n) in waiting {
            let answers = rx.await.unwrap_or_default();
            let got = answers.len();
            for (answer, record) in answers {
                unanswered.next();
                decided.push(self.pending(answer, record, &info));
            }
            for (kind, project_id) in unanswered.by_ref().take(n - got) {
                let (answer, record) = failed_job(kind, project_id, &info);
                decided.push(self.pending(answer, record, &info));
            }
        }
        decided
    }

    fn pending(
        &self,
        answer: Result<Answer, PolicyError>,
        record: DecisionRecord,
        info: &PolicyInfo,
    ) -> Decided {
        Decided {
            answer,
            policy: info.clone(),
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

/// The answer and entry of a call whose job failed (a panic on a policy
/// thread).
fn failed_job(
    kind: crate::store::DecisionCall,
    project_id: Option<i64>,
    info: &PolicyInfo,
) -> (Result<Answer, PolicyError>, DecisionRecord) {
    let answer = Err(PolicyError::Trap {
        call: "host",
        message: "the decision task failed".into(),
    });
    let record = DecisionRecord {
        at: crate::store::now(),
        call: kind,
        project_id,
        input: serde_json::json!({ "call": kind, "unrecorded": "the decision task failed" })
            .to_string(),
        output: crate::decisions::outcome(&answer).to_string(),
        policy_name: info.name.clone(),
        policy_version: info.version.clone(),
        policy_sha256: info.sha256.clone(),
        policy_wit_version: info.wit_version.to_string(),
    };
    (answer, record)
}
