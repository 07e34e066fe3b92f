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
