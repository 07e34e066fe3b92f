//! The trigger pipeline: the one way a deployment comes to be, whatever
//! fired it (a person, a push, a poll, an image watch).
//!
//! It asks the policy whether the project can be deployed, checks a pinned
//! compose project's node, and hands the store one write that creates (or
//! coalesces into) the deployment and records the new tracked state in the
//! same transaction: a crash never loses or repeats a deploy. A deploy that
//! fails here, before any node, records the failure but not the tracked
//! state, so the next tick tries the same change again.

use std::collections::BTreeMap;

use tracing::Instrument;

use crate::app::App;
use crate::policy::Verdict;
use crate::store::{
    DeploySource, Deployment, ProjectRecord, ProjectType, StoreError, TriggerWrite, now,
    refuse_to_migrate,
};

/// What fired, what to deploy and what to record as tracked.
#[derive(Debug, Clone)]
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
        }
    }
}

pub async fn trigger(
    app: &App,
    project: &ProjectRecord,
    t: Trigger,
) -> Result<Deployment, StoreError> {
    let span = tracing::info_span!("trigger", project = project.id, source = ?t.source);
    async move {
        let view = project.policy_view();
        let facts = crate::policy::facts::placeholder(
            app,
            project.fields.project_type,
            project.pinned_node_id,
        )
        .await?;
        let source = t.source.into();
        let (verdict, policy) = app
            .decide(move |p| p.check_deployable(&view, &facts, source))
            .await;
        let mut failure = match verdict {
            Ok(Verdict::Allowed(_)) => None,
            Ok(Verdict::Refused(reason)) => Some(reason),
            Err(e) => Some(format!("the policy could not decide: {e}")),
        };
        let mut node_id = None;
        if failure.is_none()
            && project.fields.project_type == ProjectType::Compose
            && let Some(pinned) = project.pinned_node_id
        {
            let node = app.store.node(pinned).await?;
            let offline_after = app.store.settings().await?.node_offline_after_seconds as i64;
            if node.online(now(), offline_after) {
                node_id = Some(pinned);
            } else {
                failure = Some(refuse_to_migrate(&node.name));
            }
        }
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
        };
        let deployment = app.store.record_trigger(&write).await?;
        match &deployment.error {
            Some(e) => tracing::warn!(deployment = deployment.id, repeats = deployment.repeat_count, error = %e, "deployment failed before it started; the tracked state stays, the next tick tries again"),
            None => tracing::info!(deployment = deployment.id, triggers = deployment.trigger_count, reason = %deployment.reason, "deployment queued"),
        }
        Ok(deployment)
    }
    .instrument(span)
    .await
}
