//! The triggers that turn a moved source into a deployment: pushes to hosted
//! repositories (and their reconciliation), polls of external ones (the
//! loops in `crate::loops`). All end in `commit_moved`, which asks the
//! policy and calls the one pipeline.
//!
//! The host gates nothing itself: each tick reads the facts once, asks the
//! policy's `watch-plan` for every project it claimed, and looks up only
//! what a plan names. The master switch and each project's toggle are facts the policy
//! weighs like any other.

use std::sync::Arc;

use autodeploy_policy_contract::{Answer, Call};
use serde::Serialize;
use tracing::Instrument;

use crate::app::App;
use crate::git::{Credential, GitError};
use crate::pipeline::{self, Trigger};
use crate::policy::facts::{self, FactBase};
use crate::policy::{Facts, WatchPlan};
use crate::store::{
    CredentialKind, DeploySource, DeployStatus, Deployment, EventKind, ProjectRecord, StoreError,
};

/// Decisions that lost a race with another trigger are made again on the
/// fresh state this many times at most.
const MAX_REDECIDE: usize = 5;

/// What a trigger check came to; `Failed`: its deployment failed before it
/// reached a node, and the tracked state stays so the next tick retries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Checked {
    Unchanged {
        reason: String,
    },
    /// Lost a race with another trigger for the same project, so nothing
    /// was decided; it reads as unchanged, its reason saying why.
    #[serde(rename = "unchanged")]
    Raced {
        reason: String,
    },
    Triggered {
        deployment: i64,
        reason: String,
    },
    Failed {
        deployment: i64,
        error: String,
    },
    Error {
        error: String,
    },
}

impl Checked {
    pub fn from_deployment(d: Deployment) -> Checked {
        match (d.status, d.error) {
            (DeployStatus::Failed, error) => Checked::Failed {
                deployment: d.id,
                error: error.unwrap_or_default(),
            },
            _ => Checked::Triggered {
                deployment: d.id,
                reason: d.reason,
            },
        }
    }
}

/// What a commit check came to when it did not fail.
#[derive(Debug)]
pub enum Moved {
    /// A deployment was queued (or a failed one recorded) for the change.
    Queued(Box<Deployment>),
    /// Nothing to deploy now, with the policy's reason (a branch that has
    /// not moved, or a change the policy holds back).
    Unchanged(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// The policy's watch plan for one project; `Err` says why there is none.
pub(crate) async fn watch_plan(
    app: &App,
    project: &ProjectRecord,
    facts: Facts,
) -> Result<WatchPlan, String> {
    let decided = app.decide_call(watch_plan_call(project, facts)).await;
    plan_of(decided)
}

/// The `watch-plan` call for one project on `facts`.
pub(crate) fn watch_plan_call(project: &ProjectRecord, facts: Facts) -> Call {
    Call::WatchPlan {
        project: project.policy_view(),
        facts,
    }
}

/// The plan a `watch-plan` decision gave; `Err` says why there is none.
pub(crate) fn plan_of(decided: crate::decisions::Decided) -> Result<WatchPlan, String> {
    match decided.answer {
        Ok(Answer::WatchPlan(plan)) => Ok(plan),
        Ok(other) => Err(format!(
            "the policy answered watch-plan with {}",
            other.to_json()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The project's git credential, unsealed, for one lookup.
pub async fn credential(app: &App, project_id: i64) -> Result<Option<Credential>, GitError> {
    let sealed = app
        .store
        .credential(project_id)
        .await
        .map_err(|e| GitError::Remote(e.to_string()))?;
    let Some(c) = sealed else { return Ok(None) };
    let secret = app
        .key
        .unseal(&c.sealed)
        .map_err(|e| GitError::Remote(e.to_string()))?;
    Ok(Some(match c.kind {
        CredentialKind::Https => Credential::Https {
            username: c.username.unwrap_or_default(),
            token: secret,
        },
        CredentialKind::Ssh => Credential::Ssh {
            private_key: secret,
        },
    }))
}

/// Compares a branch head with the project's tracked commit through the
/// policy's `decide-commit` on `facts`; a decision to deploy goes through
/// the pipeline. `None` as head means the branch is gone: an error, never a
/// deploy.
pub async fn commit_moved(
    app: &App,
    project: &ProjectRecord,
    facts: Facts,
    head: Option<String>,
    source: DeploySource,
) -> Result<Moved, TriggerError> {
    let decided = app
        .decide_call(commit_call(project, facts, head, source))
        .await;
    commit_decided(app, project, decided, source).await
}

/// The `decide-commit` call for a branch head (see [`commit_moved`]).
pub fn commit_call(
    project: &ProjectRecord,
    facts: Facts,
    head: Option<String>,
    source: DeploySource,
) -> Call {
    Call::DecideCommit {
        project: project.policy_view(),
        facts,
        source: source.into(),
        remote_head: head,
    }
}

/// Acts on a `decide-commit` decision made for `project` (see
/// [`commit_moved`]): a decision to deploy goes through the pipeline.
pub async fn commit_decided(
    app: &App,
    project: &ProjectRecord,
    decided: crate::decisions::Decided,
    source: DeploySource,
) -> Result<Moved, TriggerError> {
    let d = match decided.answer {
        Ok(Answer::DecideCommit(Ok(d))) => d,
        Ok(Answer::DecideCommit(Err(message))) => return Err(TriggerError::Policy(message)),
        Ok(other) => {
            return Err(TriggerError::Policy(format!(
                "the policy answered decide-commit with {}",
                other.to_json()
            )));
        }
        Err(e) => return Err(TriggerError::Policy(e.to_string())),
    };
    if !d.trigger {
        return Ok(Moved::Unchanged(d.reason));
    }
    let t = Trigger {
        source,
        target_commit: d.record.clone(),
        target_digests: None,
        reason: d.reason,
        track_commit: d.record,
        track_digests: None,
        decided_on_commit: Some(project.last_tracked_commit_sha.clone()),
        decisions: vec![decided.decision],
        from_deployment: None,
    };
    Ok(Moved::Queued(Box::new(
        pipeline::trigger(app, project, t).await?,
    )))
}

/// Compares a hosted repository's tracked branch head (a local read) with
/// the project's tracked commit, and triggers `auto-push` when the policy
/// says it moved. Runs after every push, whichever branch it moved, and for
/// every hosted project whose watch plan says so on each poll tick: a push
/// whose trigger failed, or that a crash cut off after the ref moved, is
/// deployed then. `Unchanged` when nothing is to deploy, including a branch
/// nothing was pushed to yet. The facts come from `base` when it has them.
pub async fn reconcile_hosted(
    app: &App,
    project_id: i64,
    base: &FactBase,
) -> Result<Moved, TriggerError> {
    for _ in 0..MAX_REDECIDE {
        let project = app.store.project(project_id).await?;
        let path = crate::git::hosted_path(&app.repo_dir, project_id);
        let branch = project.fields.git_branch.clone();
        let head = tokio::task::spawn_blocking(move || crate::git::local_head(&path, &branch))
            .await
            .map_err(|e| GitError::Remote(format!("reading the branch failed: {e}")))??;
        if head.is_none() {
            return Ok(Moved::Unchanged(format!(
                "nothing was pushed to {} yet",
                project.fields.git_branch
            )));
        }
        let facts = facts::from_base(app, base, &project).await?;
        match commit_moved(app, &project, facts, head, DeploySource::AutoPush).await {
            // Another push recorded first: decide again on what it left.
            Err(TriggerError::Store(StoreError::Stale(_))) => continue,
            other => return other,
        }
    }
    Err(TriggerError::Store(StoreError::Conflict(format!(
        "project {project_id}: the tracked commit kept moving; the next tick tries again"
    ))))
}

/// After a push to a hosted repository, whichever branch it moved: when the
/// policy's watch plan reconciles pushes for the project, the tracked
/// branch's head is reconciled with the tracked commit (`auto-push` when
/// they differ). The push itself has succeeded whatever happens here;
/// failures are logged and recorded in the event log.
pub async fn on_push(app: &Arc<App>, project_id: i64, before: Option<String>) {
    let span = tracing::info_span!("trigger", project = project_id, source = "auto-push");
    after_push(app, project_id, before).instrument(span).await
}

async fn after_push(app: &Arc<App>, project_id: i64, before: Option<String>) {
    let project = match app.store.project(project_id).await {
        Ok(p) => p,
        Err(e) => return tracing::warn!(error = %e, "push: project vanished"),
    };
    let path = crate::git::hosted_path(&app.repo_dir, project_id);
    let after = match crate::git::local_head(&path, &project.fields.git_branch) {
        Ok(h) => h,
        Err(e) => return tracing::warn!(error = %e, "push: cannot read the branch"),
    };
    // Whichever branch was pushed, the tracked branch's head is compared
    // with the tracked commit below; this only decides what is worth a note.
    let moved = after != before;
    let branch = &project.fields.git_branch;
    let note = |msg: String| async move {
        tracing::info!("{msg}");
        let _ = app
            .store
            .log_event(Some(project_id), EventKind::Push, &msg)
            .await;
    };
    let base = match FactBase::read_for(app, project.pinned_node_id).await {
        Ok(base) => base,
        Err(e) => {
            return note(format!(
                "push to {branch} could not trigger a deployment: {e}"
            ))
            .await;
        }
    };
    match watch_plan(app, &project, base.facts(&project)).await {
        Ok(plan) if !plan.reconcile_pushes => {
            if moved {
                note(format!(
                    "push to {branch}: not deploying; the policy watches no pushes here ({})",
                    plan.reason
                ))
                .await;
            }
            return;
        }
        Ok(_) => {}
        Err(e) => {
            return note(format!(
                "push to {branch} could not trigger a deployment: the policy could not plan what to watch: {e}"
            ))
            .await;
        }
    }
    match reconcile_hosted(app, project_id, &base).await {
        Ok(Moved::Queued(d)) => tracing::info!(deployment = d.id, "push triggered a deployment"),
        // A push that moved the branch and is not deployed says why (the
        // policy may hold it, e.g. in a deny window).
        Ok(Moved::Unchanged(reason)) if moved => {
            note(format!("push to {branch}: not deploying: {reason}")).await
        }
        Ok(Moved::Unchanged(_)) => {}
        Err(e) => {
            note(format!(
                "push to {branch} could not trigger a deployment: {e}"
            ))
            .await
        }
    }
}
