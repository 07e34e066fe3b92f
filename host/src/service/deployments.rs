//! Deployment actions: a person redeploys a recorded state, cancels a
//! deployment or reads its log; a node streams the log of the deployment
//! it runs and reports how it went.

use std::collections::BTreeMap;

use super::{Result, ServiceError, invalid};
use crate::app::App;
use crate::pipeline::{self, Trigger};
use crate::store::{
    Cancelled, DeployReport, DeployStatus, Deployment, LogAppend, LogPage, Node, ProjectType,
    StoreError,
};

/// Largest log chunk a node may post at once (bytes).
pub const MAX_LOG_CHUNK: usize = 256 << 10;
/// Largest piece of a log one read answers (bytes); `next` says where to go on.
pub const LOG_PAGE: usize = 256 << 10;

/// Deployment `id` when it belongs to project `project_id`; not found
/// otherwise, so one project's ids say nothing about another's.
async fn of_project(app: &App, project_id: i64, id: i64) -> Result<Deployment> {
    app.store.project(project_id).await?;
    match app.store.deployment(id).await {
        Ok(d) if d.project_id == project_id => Ok(d),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(ServiceError::NotFound(format!(
            "deployment {id} of project {project_id}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Queues a manual deployment of deployment `from`'s recorded state (what
/// its node reported running, else its target). The policy is asked as
/// for any manual deploy. The project's tracked state stays: the poll does
/// not take a rollback as a change to undo.
pub async fn redeploy(app: &App, project_id: i64, from: i64) -> Result<Deployment> {
    let source = of_project(app, project_id, from).await?;
    if source.status != DeployStatus::Succeeded {
        return Err(ServiceError::Conflict(format!(
            "deployment {from} is {}: only a succeeded deployment can be redeployed",
            source.status
        )));
    }
    let project = app.store.project(project_id).await?;
    let state = source.recorded_state();
    // Without its commit (or, for an image, its digests) the redeploy
    // would run whatever the branch or tag points at now, not that state.
    match project.fields.project_type {
        ProjectType::Image if state.digests.is_none() => {
            return Err(ServiceError::Conflict(format!(
                "deployment {from} recorded no image digests: it cannot be redeployed exactly"
            )));
        }
        ProjectType::Deployment | ProjectType::Compose if state.commit.is_none() => {
            return Err(ServiceError::Conflict(format!(
                "deployment {from} recorded no commit: it cannot be redeployed exactly"
            )));
        }
        _ => {}
    }
    let t = Trigger {
        target_commit: state.commit,
        target_digests: state.digests,
        reason: format!("redeploy of deployment {from}"),
        from_deployment: Some(from),
        ..Trigger::manual()
    };
    Ok(pipeline::trigger(app, &project, t).await?)
}

/// Cancels deployment `id` of the project: a queued one at once, a running
/// one through its node.
pub async fn cancel(app: &App, project_id: i64, id: i64) -> Result<(Deployment, Cancelled)> {
    app.store.project(project_id).await?;
    let done = app.store.cancel_deployment(project_id, id).await?;
    tracing::info!(project = project_id, deployment = id, outcome = ?done.1, "deployment cancel");
    Ok(done)
}

/// A page of deployment `id`'s log from byte `after`.
pub async fn log(app: &App, project_id: i64, id: i64, after: Option<i64>) -> Result<LogPage> {
    let after = after.unwrap_or(0);
    if after < 0 {
        return invalid(format!("after {after} is not a byte offset (0 or more)"));
    }
    of_project(app, project_id, id).await?;
    Ok(app.store.deployment_log(id, after, LOG_PAGE).await?)
}

/// Stores a chunk of the log of a deployment `node` runs; true when a
/// person asked to cancel it.
pub async fn append_log(app: &App, node: &Node, id: i64, offset: i64, chunk: &str) -> Result<bool> {
    if offset < 0 {
        return invalid(format!("offset {offset} is not a byte offset (0 or more)"));
    }
    if chunk.len() > MAX_LOG_CHUNK {
        return invalid(format!(
            "chunk is {} bytes; post at most {MAX_LOG_CHUNK} bytes at a time",
            chunk.len()
        ));
    }
    match app.store.append_log(node.id, id, offset, chunk).await? {
        LogAppend::Stored { cancel } => Ok(cancel),
        LogAppend::Gap { received } => invalid(format!(
            "offset {offset} is past the {received} bytes received so far: send the log from byte {received}"
        )),
    }
}

/// A node's report, as it sent it.
pub struct Report {
    pub status: DeployStatus,
    pub log_tail: Option<String>,
    pub error: Option<String>,
    pub ran_commit: Option<String>,
    pub ran_digests: Option<BTreeMap<String, String>>,
}

/// Log tails are cut to their last 64 KiB.
const MAX_LOG_TAIL: usize = 64 * 1024;

/// Records how a deployment `node` runs went.
pub async fn report(app: &App, node: &Node, id: i64, r: Report) -> Result<Deployment> {
    if r.status == DeployStatus::Queued {
        return invalid("status must be running, succeeded, failed, rolled_back or cancelled");
    }
    if let Some(commit) = &r.ran_commit
        && !is_hex_id(commit)
    {
        return invalid("ran_commit must be a full commit id (40 or 64 hex digits)");
    }
    if let Some(digests) = &r.ran_digests {
        for (image, digest) in digests {
            if image.is_empty() || image.len() > 512 {
                return invalid("ran_digests: every key must be an image reference of 1-512 bytes");
            }
            if !is_digest(digest) {
                return invalid(format!(
                    "ran_digests: the digest of {image:?} must be sha256: and 64 hex digits"
                ));
            }
        }
    }
    let report = DeployReport {
        status: r.status,
        log_tail: r.log_tail.as_deref().map(last_bytes),
        error: r.error.as_deref(),
        ran_commit: r.ran_commit.as_deref(),
        ran_digests: r.ran_digests.as_ref(),
    };
    let d = app.store.report_deploy(node.id, id, &report).await?;
    app.metrics.deployment(d.status);
    app.notifier.wake();
    tracing::info!(node = %node.name, deployment = id, status = %r.status, "deployment reported");
    Ok(d)
}

fn is_hex_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn last_bytes(s: &str) -> &str {
    if s.len() <= MAX_LOG_TAIL {
        return s;
    }
    let mut start = s.len() - MAX_LOG_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
