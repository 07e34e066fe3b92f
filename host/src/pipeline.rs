//! The trigger pipeline: the one way a deployment comes to be, whatever
//! fired it (a person, a push, a poll, an image watch).
//!
//! It gathers the facts (the master switch, the pinned node's state, what the
//! agents run, the time, the operator's config), asks the policy whether the
//! project can be deployed now, and hands the store one write that creates
//! (or coalesces into) the deployment and records the new tracked state in
//! the same transaction: a crash never loses or repeats a deploy. A deploy the
//! policy refuses is recorded as failed with its reason, but not the tracked
//! state, so the next tick tries the same change again.

use std::collections::BTreeMap;

use tracing::Instrument;

use autodeploy_policy_contract::model::Verdict;
use autodeploy_policy_contract::{Answer, Call};

use crate::app::App;
use crate::decisions::PendingDecision;
use crate::metrics::TriggerOutcome;
use crate::store::{DeploySource, Deployment, ProjectRecord, StoreError, TriggerWrite};

/// What fired, what to deploy and what to record as tracked.
#[derive(Debug)]
pub struct Trigger {
    pub source: DeploySource,
    pub target_commit: Option<String>,
    pub target_digests: Option<BTreeMap<String, String>>,
    pub reason: String,
    pub track_commit: Option<String>,
    pub track_digests: Option<BTreeMap<String, String>>,
    /// The tracked commit the decision was made on; the store refuses the
    /// write if another trigger moved it meanwhile.
    pub decided_on_commit: Option<String>,
    /// The policy decisions that fired it; written with the deployment.
    pub decisions: Vec<PendingDecision>,
    /// A manual redeploy of that deployment's recorded state.
    pub from_deployment: Option<i64>,
}

impl Trigger {
    pub fn manual() -> Self {
        Trigger {
            source: DeploySource::Manual,
            target_commit: None,
            target_digests: None,
            reason: "manual deploy".into(),
            track_commit: None,
            track_digests: None,
            decided_on_commit: None,
            decisions: Vec::new(),
            from_deployment: None,
        }
    }
}

pub async fn trigger(
    app: &App,
    project: &ProjectRecord,
    t: Trigger,
) -> Result<Deployment, StoreError> {
    let span = tracing::info_span!("trigger", project = project.id, source = %t.source);
    async move {
        let facts = crate::policy::facts::gather(app, project).await?;
        let decided = app
            .decide_call(Call::CheckDeployable {
                project: project.policy_view(),
                facts,
                source: t.source.into(),
            })
            .await;
        let policy = decided.policy;
        let failure = match decided.answer {
            Ok(Answer::CheckDeployable(Verdict::Allowed(_))) => None,
            Ok(Answer::CheckDeployable(Verdict::Refused(reason))) => Some(reason),
            Ok(other) => Some(format!(
                "the policy answered check-deployable with {}",
                other.to_json()
            )),
            Err(e) => Some(format!("the policy could not decide: {e}")),
        };
        let mut decisions = t.decisions;
        decisions.push(decided.decision);
        // Whether a pinned project may deploy (its node online) is the
        // policy's call; once it may, the deployment is for that node alone:
        // its named volumes live there.
        let node_id = if failure.is_none() {
            project.pinned_node_id
        } else {
            None
        };
        let write = TriggerWrite {
            project_id: project.id,
            source: t.source,
            target_commit: t.target_commit,
            target_digests: t.target_digests,
            reason: t.reason,
            failure,
            node_id,
            policy_name: policy.name,
            policy_version: policy.version,
            policy_sha256: policy.sha256,
            track_commit: t.track_commit,
            track_digests: t.track_digests,
            decided_on_commit: t.decided_on_commit,
            // A person's deploy does not hang on the toggle; a tick's does.
            decided_with_auto_deploy: (t.source != DeploySource::Manual)
                .then_some(project.fields.auto_deploy_enabled),
            from_deployment: t.from_deployment,
            decisions: decisions
                .into_iter()
                .map(PendingDecision::into_record)
                .collect(),
        };
        let deployment = match app.store.record_trigger(&write).await {
            Ok(d) => d,
            Err(e) => {
                app.metrics.trigger(write.source, TriggerOutcome::Error);
                // Nothing was written: the decisions were still made, and
                // are logged without a deployment.
                for r in write.decisions {
                    app.decision_log.submit(r);
                }
                return Err(e);
            }
        };
        app.metrics.trigger(
            write.source,
            if write.failure.is_none() {
                TriggerOutcome::Queued
            } else {
                TriggerOutcome::Refused
            },
        );
        // A trigger that joined a deployment already counted adds none.
        if deployment.trigger_count <= 1 && deployment.repeat_count <= 1 {
            app.metrics.deployment(deployment.status);
        }
        match &deployment.error {
            Some(e) => {
                app.notifier.wake();
                tracing::warn!(deployment = deployment.id, repeats = deployment.repeat_count, error = %e, "deployment failed before it started; the tracked state stays, the next tick tries again")
            }
            None => tracing::info!(deployment = deployment.id, triggers = deployment.trigger_count, reason = %deployment.reason, "deployment queued"),
        }
        Ok(deployment)
    }
    .instrument(span)
    .await
}
