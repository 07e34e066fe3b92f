//! The git poller: every `auto_deploy_poll_interval_seconds` (a changed
//! interval applies from the next tick), starting at start-up, paused while
//! the master switch is off, it reads the tracked branch's head of each
//! enabled external project and triggers `auto-poll` when it moved. Lookups
//! run concurrently (`auto_deploy_poll_concurrency`), each capped, so one
//! slow or hanging remote costs its own project the timeout and nothing else.
//! The same tick reconciles every enabled hosted project (a local read, as
//! `auto-push`): a push cut off by a crash or whose trigger failed deploys
//! here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::schedule::Schedule;
use super::{Checked, TriggerError, commit_moved};
use crate::app::App;
use crate::git::{GitError, remote_head};
use crate::policy::GitSource;
use crate::store::{DeploySource, EventKind, POLL_MIN_SECONDS, ProjectRecord, StoreError};

pub const GIT_POLL: &str = "git-poll";
/// Spread of the random delay before each lookup, so a thousand projects on
/// one host are not asked at the same instant.
const MAX_JITTER_MS: u64 = 50;
/// Hosted repositories reconciled at once (local reads and a decision each).
const LOCAL_CONCURRENCY: usize = 4;

#[derive(Debug, Default, Serialize)]
pub struct TickSummary {
    /// The master switch was off: nothing was checked.
    pub paused: bool,
    pub checked: usize,
    /// Deployments queued (or coalesced into a queued one).
    pub triggered: usize,
    /// Deployments that failed before reaching a node; retried next tick.
    pub failed: usize,
    /// Lookups or decisions that failed: nothing was deployed.
    pub errors: usize,
    pub elapsed_ms: u128,
    pub projects: Vec<ProjectResult>,
}

#[derive(Debug, Serialize)]
pub struct ProjectResult {
    pub project_id: i64,
    pub name: String,
    #[serde(flatten)]
    pub result: Checked,
}

pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    let mut schedule = Schedule::new(&app, GIT_POLL, true, |_, s| {
        Duration::from_secs(s.auto_deploy_poll_interval_seconds.max(POLL_MIN_SECONDS))
    });
    while schedule.next(&app, &cancel).await {
        match tick(&app).await {
            Ok(s) => app.loops.ticked(GIT_POLL, s.paused, None),
            Err(e) => {
                tracing::warn!(error = %e, "git poll tick failed");
                app.loops.ticked(GIT_POLL, false, Some(e.to_string()));
            }
        }
    }
    app.loops.state(GIT_POLL, "stopped", None);
}

/// One tick over every enabled project: external ones polled, hosted ones
/// reconciled. Ticks never overlap.
pub async fn tick(app: &Arc<App>) -> Result<TickSummary, StoreError> {
    let _one_at_a_time = app.git_poll_lock.lock().await;
    let started = Instant::now();
    let Some((settings, projects)) = super::enabled_projects(app, |_| true).await? else {
        return Ok(TickSummary {
            paused: true,
            ..TickSummary::default()
        });
    };
    let permits = Arc::new(Semaphore::new(
        settings.auto_deploy_poll_concurrency as usize,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let (hosted, external): (Vec<_>, Vec<_>) = projects
        .into_iter()
        .partition(|p| p.fields.git_source == GitSource::Hosted);
    // Local reads: no jitter and slots of their own, so a hanging remote
    // never holds them up.
    let local = Arc::new(Semaphore::new(LOCAL_CONCURRENCY));
    for project in hosted {
        let (app, local) = (app.clone(), local.clone());
        let span = tracing::info_span!("trigger", project = project.id, source = "auto-push");
        tasks.spawn(
            async move {
                let _permit = local.acquire_owned().await.expect("semaphore open");
                ProjectResult {
                    project_id: project.id,
                    name: project.fields.name.clone(),
                    result: reconcile(&app, &project).await,
                }
            }
            .instrument(span),
        );
    }
    for project in external {
        let (app, permits) = (app.clone(), permits.clone());
        let span = tracing::info_span!("trigger", project = project.id, source = "auto-poll");
        tasks.spawn(
            async move {
                let jitter = rand::rng().random_range(0..=MAX_JITTER_MS);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                let result = check(&app, &project).await;
                ProjectResult {
                    project_id: project.id,
                    name: project.fields.name.clone(),
                    result,
                }
            }
            .instrument(span),
        );
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(error = %e, "a poll task failed"),
        }
    }
    results.sort_by_key(|r| r.project_id);
    let count = |f: fn(&Checked) -> bool| results.iter().filter(|r| f(&r.result)).count();
    Ok(TickSummary {
        paused: false,
        checked: results.len(),
        triggered: count(|c| matches!(c, Checked::Triggered { .. })),
        failed: count(|c| matches!(c, Checked::Failed { .. })),
        errors: count(|c| matches!(c, Checked::Error { .. })),
        elapsed_ms: started.elapsed().as_millis(),
        projects: results,
    })
}

async fn check(app: &App, project: &ProjectRecord) -> Checked {
    let url = project.fields.git_url.clone().unwrap_or_default();
    let head = match lookup(app, project, &url).await {
        Ok(head) => head,
        Err(e) => {
            let url = crate::git::shown_url(&url);
            let error = format!("poll of {url} failed: {e}");
            return failed(app, project, EventKind::PollFailed, error).await;
        }
    };
    match commit_moved(app, project, head, DeploySource::AutoPoll).await {
        Ok(Some(d)) => Checked::from_deployment(d),
        Ok(None) => Checked::Unchanged {
            reason: "the branch has not moved".into(),
        },
        // Ticks never overlap, so only a change to the project itself moved
        // the tracked commit: the next tick decides on the new state.
        Err(TriggerError::Store(StoreError::Stale(_))) => Checked::Unchanged {
            reason: "the tracked commit moved meanwhile; the next tick looks again".into(),
        },
        Err(e) => failed(app, project, EventKind::PollFailed, e.to_string()).await,
    }
}

/// A hosted project: its bare repository's branch head against the tracked
/// commit.
async fn reconcile(app: &App, project: &ProjectRecord) -> Checked {
    match super::reconcile_hosted(app, project.id).await {
        Ok(Some(d)) => Checked::from_deployment(d),
        Ok(None) => Checked::Unchanged {
            reason: "the branch has not moved".into(),
        },
        Err(e) => {
            let error = format!("reconciling the hosted repository failed: {e}");
            failed(app, project, EventKind::ReconcileFailed, error).await
        }
    }
}

async fn lookup(app: &App, project: &ProjectRecord, url: &str) -> Result<Option<String>, GitError> {
    let credential = super::credential(app, project.id).await?;
    let (owned_url, branch) = (url.to_string(), project.fields.git_branch.clone());
    let pins = project.ssh_known_hosts.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        remote_head(&owned_url, &branch, credential.as_ref(), pins.as_deref())
    });
    match tokio::time::timeout(app.git_timeout, blocking).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(GitError::Remote(format!("lookup task failed: {e}"))),
        Err(_) => Err(GitError::Timeout {
            url: crate::git::shown_url(url),
            timeout: app.git_timeout,
        }),
    }
}

async fn failed(app: &App, project: &ProjectRecord, kind: EventKind, error: String) -> Checked {
    tracing::warn!(error = %error, "{kind}");
    let _ = app.store.log_event(Some(project.id), kind, &error).await;
    Checked::Error { error }
}
