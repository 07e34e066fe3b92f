//! The triggers that turn a moved source into a deployment: pushes to hosted
//! repositories (and their reconciliation), polls of external ones. All end
//! in `commit_moved`, which asks the policy and calls the one pipeline.

pub mod git_poll;
pub mod image_watch;
pub mod schedule;

use std::sync::Arc;

use serde::Serialize;
use tracing::Instrument;

use crate::app::App;
use crate::git::{Credential, GitError};
use crate::pipeline::{self, Trigger};
use crate::store::{
    BrokenProject, CredentialKind, DeploySource, DeployStatus, Deployment, EventKind,
    ProjectRecord, Settings, StoreError,
};

/// Decisions that lost a race with another trigger are made again on the
/// fresh state this many times at most.
const MAX_REDECIDE: usize = 5;

/// What a trigger check came to; `Failed`: its deployment failed before it
/// reached a node, and the tracked state stays so the next tick retries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Checked {
    Unchanged { reason: String },
    Triggered { deployment: i64, reason: String },
    Failed { deployment: i64, error: String },
    Error { error: String },
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

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// The settings and the projects a tick looks at (auto-deploy on and
/// `wanted`); `None` while the master switch is off. Rows that do not
/// decode are left out (see [`enabled_projects_checked`]).
pub async fn enabled_projects(
    app: &App,
    wanted: impl Fn(&ProjectRecord) -> bool,
) -> Result<Option<(Settings, Vec<ProjectRecord>)>, StoreError> {
    Ok(enabled_projects_checked(app, wanted, |_| false)
        .await?
        .map(|(settings, projects, _)| (settings, projects)))
}

/// As [`enabled_projects`], and apart the rows that do not decode and that
/// `broken` (seeing what could be read of them) says concern this tick: a
/// corrupt row is an error for its own project, never for the whole tick.
pub async fn enabled_projects_checked(
    app: &App,
    wanted: impl Fn(&ProjectRecord) -> bool,
    broken: impl Fn(&BrokenProject) -> bool,
) -> Result<Option<(Settings, Vec<ProjectRecord>, Vec<BrokenProject>)>, StoreError> {
    let settings = app.store.settings().await?;
    if !settings.auto_deploy_master_enabled {
        return Ok(None);
    }
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for row in app.store.projects_checked().await? {
        match row {
            Ok(p) if p.fields.auto_deploy_enabled && wanted(&p) => good.push(p),
            Ok(_) => {}
            Err(b) => {
                tracing::warn!(project = b.id, error = %b.error, "a project row does not decode");
                if b.auto_deploy_enabled != Some(false) && broken(&b) {
                    bad.push(b);
                }
            }
        }
    }
    Ok(Some((settings, good, bad)))
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
/// policy's `decide-commit`; a decision to deploy goes through the pipeline.
/// `None` as head means the branch is gone: an error, never a deploy.
pub async fn commit_moved(
    app: &App,
    project: &ProjectRecord,
    head: Option<String>,
    source: DeploySource,
) -> Result<Option<Deployment>, TriggerError> {
    let view = project.policy_view();
    let facts =
        crate::policy::facts::placeholder(app, project.fields.project_type, project.pinned_node_id)
            .await?;
    let (decision, _) = app
        .decide(move |p| p.decide_commit(&view, &facts, source.into(), head.as_deref()))
        .await;
    let d = decision.map_err(|e| TriggerError::Policy(e.to_string()))?;
    if !d.trigger {
        return Ok(None);
    }
    let t = Trigger {
        source,
        target_commit: d.record.clone(),
        target_digests: None,
        reason: d.reason,
        track_commit: d.record,
        track_digests: None,
        decided_on_commit: Some(project.last_tracked_commit_sha.clone()),
    };
    Ok(Some(pipeline::trigger(app, project, t).await?))
}

/// Compares a hosted repository's tracked branch head (a local read) with
/// the project's tracked commit, and triggers `auto-push` when the policy
/// says it moved. Runs after every push, whichever branch it moved, and for
/// every enabled hosted project at start-up and on each poll tick: a push
/// whose trigger failed, or that a crash cut off after the ref moved, is
/// deployed then. `Ok(None)` when nothing is to deploy, including a branch
/// nothing was pushed to yet.
pub async fn reconcile_hosted(
    app: &App,
    project_id: i64,
) -> Result<Option<Deployment>, TriggerError> {
    for _ in 0..MAX_REDECIDE {
        let project = app.store.project(project_id).await?;
        let path = crate::git::hosted_path(&app.data_dir, project_id);
        let branch = project.fields.git_branch.clone();
        let head = tokio::task::spawn_blocking(move || crate::git::local_head(&path, &branch))
            .await
            .map_err(|e| GitError::Remote(format!("reading the branch failed: {e}")))??;
        if head.is_none() {
            return Ok(None);
        }
        match commit_moved(app, &project, head, DeploySource::AutoPush).await {
            // Another push recorded first: decide again on what it left.
            Err(TriggerError::Store(StoreError::Stale(_))) => continue,
            other => return other,
        }
    }
    Err(TriggerError::Store(StoreError::Conflict(format!(
        "project {project_id}: the tracked commit kept moving; the next tick tries again"
    ))))
}

/// After a push to a hosted repository, whichever branch it moved: with
/// auto-deploy on (master switch and toggle), the tracked branch's head is
/// reconciled with the tracked commit (`auto-push` when they differ). The
/// push itself has succeeded whatever happens here; failures are logged and
/// recorded in the event log.
pub async fn on_push(app: &Arc<App>, project_id: i64, before: Option<String>) {
    let span = tracing::info_span!("trigger", project = project_id, source = "auto-push");
    after_push(app, project_id, before).instrument(span).await
}

async fn after_push(app: &Arc<App>, project_id: i64, before: Option<String>) {
    let project = match app.store.project(project_id).await {
        Ok(p) => p,
        Err(e) => return tracing::warn!(error = %e, "push: project vanished"),
    };
    let path = crate::git::hosted_path(&app.data_dir, project_id);
    let after = match crate::git::local_head(&path, &project.fields.git_branch) {
        Ok(h) => h,
        Err(e) => return tracing::warn!(error = %e, "push: cannot read the branch"),
    };
    // Whichever branch was pushed, the tracked branch's head is compared
    // with the tracked commit below; this only decides what is worth a note.
    let moved = after != before;
    let branch = &project.fields.git_branch;
    let master = app
        .store
        .settings()
        .await
        .map(|s| s.auto_deploy_master_enabled)
        .unwrap_or(false);
    let note = |msg: String| async move {
        tracing::info!("{msg}");
        let _ = app
            .store
            .log_event(Some(project_id), EventKind::Push, &msg)
            .await;
    };
    if (!master || !project.fields.auto_deploy_enabled) && !moved {
        return;
    }
    if !master {
        return note(format!(
            "push to {branch}: auto-deploy is paused (master switch off); not deploying"
        ))
        .await;
    }
    if !project.fields.auto_deploy_enabled {
        return note(format!(
            "push to {branch}: auto-deploy is off for this project; not deploying"
        ))
        .await;
    }
    match reconcile_hosted(app, project_id).await {
        Ok(Some(d)) => tracing::info!(deployment = d.id, "push triggered a deployment"),
        Ok(None) => {}
        Err(e) => {
            note(format!(
                "push to {branch} could not trigger a deployment: {e}"
            ))
            .await
        }
    }
}
