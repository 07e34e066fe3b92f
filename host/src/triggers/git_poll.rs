//! The git poller: every `auto_deploy_poll_interval_seconds` (a changed
//! interval applies from the next tick), starting at start-up, it asks the
//! policy's watch plan for every project, reads the tracked branch's head of
//! each external project whose plan polls commits, and triggers `auto-poll`
//! when it moved. Lookups run concurrently (`auto_deploy_poll_concurrency`),
//! each capped, so one slow or hanging remote costs its own project the
//! timeout and nothing else. The same tick reconciles each hosted project
//! whose plan reconciles pushes (a local read, as `auto-push`): a push cut
//! off by a crash or whose trigger failed deploys here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::schedule::Schedule;
use super::{Checked, Moved, TriggerError, commit_moved};
use crate::app::App;
use crate::git::GitError;
use crate::policy::Facts;
use crate::policy::facts::FactBase;
use crate::store::{
    DeploySource, EventKind, GitSource, POLL_MIN_SECONDS, ProjectRecord, StoreError,
};

pub const GIT_POLL: &str = "git-poll";
/// Spread of the random delay before each lookup, so a thousand projects on
/// one host are not asked at the same instant.
const MAX_JITTER_MS: u64 = 50;
/// Hosted repositories reconciled at once (local reads and a decision each).
const LOCAL_CONCURRENCY: usize = 4;
/// Database connections a tick's lookups use at once for their own reads
/// and writes: fewer than the pool holds, so pushes and the API never queue
/// behind a tick of many remotes.
static DB_SLOTS: Semaphore = Semaphore::const_new(4);

#[derive(Debug, Default, Serialize)]
pub struct TickSummary {
    /// The master switch was off during this tick (the policy decided what
    /// that meant; the default policy then watches nothing).
    pub paused: bool,
    /// Projects looked at: those whose watch plan polls or reconciles them,
    /// and rows that cannot be read.
    pub checked: usize,
    /// Projects the policy's watch plan left out of this trigger.
    pub not_watched: usize,
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
            Ok(s) => app.loops.ticked(GIT_POLL, Some(s.checked), None),
            Err(e) => {
                tracing::warn!(error = %e, "git poll tick failed");
                app.loops.ticked(GIT_POLL, None, Some(e.to_string()));
            }
        }
    }
    app.loops.state(GIT_POLL, "stopped", None);
}

/// One tick over every project: the policy's watch plan for each, then
/// external ones polled and hosted ones reconciled as their plans say.
/// Ticks never overlap.
pub async fn tick(app: &Arc<App>) -> Result<TickSummary, StoreError> {
    let _one_at_a_time = app.git_poll_lock.lock().await;
    let started = Instant::now();
    let (base, projects, broken) = super::tick_projects(app).await?;
    let base = Arc::new(base);
    // A hosted repository is reconciled, an external one polled; a plan
    // naming the other for a project has nothing to do there.
    let mut results = Vec::new();
    let (mut hosted, mut external, mut not_watched) = (Vec::new(), Vec::new(), 0);
    for (project, facts, plan) in super::watch_plans(app, &base, projects).await {
        match plan {
            Ok(plan) => match project.fields.git_source {
                GitSource::Hosted if plan.reconcile_pushes => hosted.push(project),
                GitSource::External if plan.poll_commits => external.push((project, facts)),
                _ => not_watched += 1,
            },
            Err(error) => results.push(ProjectResult {
                project_id: project.id,
                name: project.fields.name.clone(),
                result: failed(app, &project, EventKind::PollFailed, error).await,
            }),
        }
    }
    // Clamped when read; `max(1)` keeps a zero from ever stalling the tick.
    let permits = Arc::new(Semaphore::new(
        (base.settings().auto_deploy_poll_concurrency as usize).max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    // Local reads: no jitter and slots of their own, so a hanging remote
    // never holds them up.
    let local = Arc::new(Semaphore::new(LOCAL_CONCURRENCY));
    for project in hosted {
        let (app, local, base) = (app.clone(), local.clone(), base.clone());
        let span = tracing::info_span!("trigger", project = project.id, source = "auto-push");
        tasks.spawn(
            async move {
                let result = match local.acquire_owned().await {
                    Ok(_permit) => reconcile(&app, &project, &base).await,
                    Err(_) => Checked::Error {
                        error: "the tick was stopped".into(),
                    },
                };
                ProjectResult {
                    project_id: project.id,
                    name: project.fields.name.clone(),
                    result,
                }
            }
            .instrument(span),
        );
    }
    for (project, facts) in external {
        let (app, permits) = (app.clone(), permits.clone());
        let span = tracing::info_span!("trigger", project = project.id, source = "auto-poll");
        tasks.spawn(
            async move {
                let jitter = rand::rng().random_range(0..=MAX_JITTER_MS);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                let result = match permits.acquire_owned().await {
                    Ok(_permit) => check(&app, &project, facts).await,
                    Err(_) => Checked::Error {
                        error: "the tick was stopped".into(),
                    },
                };
                ProjectResult {
                    project_id: project.id,
                    name: project.fields.name.clone(),
                    result,
                }
            }
            .instrument(span),
        );
    }
    // A row that does not decode is an error for its own project only.
    for b in broken {
        let error = format!("the project's stored row is unreadable: {}", b.error);
        if app.poll_errors.is_new(b.id, &error) {
            let _ = app
                .store
                .log_event(Some(b.id), EventKind::PollFailed, &error)
                .await;
        }
        results.push(ProjectResult {
            project_id: b.id,
            name: b.name,
            result: Checked::Error { error },
        });
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(error = %e, "a poll task failed"),
        }
    }
    results.sort_by_key(|r| r.project_id);
    let count = |f: fn(&Checked) -> bool| results.iter().filter(|r| f(&r.result)).count();
    Ok(TickSummary {
        paused: !base.master_enabled(),
        checked: results.len(),
        not_watched,
        triggered: count(|c| matches!(c, Checked::Triggered { .. })),
        failed: count(|c| matches!(c, Checked::Failed { .. })),
        errors: count(|c| matches!(c, Checked::Error { .. })),
        elapsed_ms: started.elapsed().as_millis(),
        projects: results,
    })
}

async fn check(app: &App, project: &ProjectRecord, facts: Facts) -> Checked {
    let url = project.fields.git_url.clone().unwrap_or_default();
    let head = match lookup(app, project, &url).await {
        Ok(head) => head,
        Err(e) => {
            let url = crate::git::shown_url(&url);
            let error = format!("poll of {url} failed: {e}");
            return failed(app, project, EventKind::PollFailed, error).await;
        }
    };
    match commit_moved(app, project, facts, head, DeploySource::AutoPoll).await {
        Ok(Moved::Queued(d)) => {
            app.poll_errors.clear(project.id);
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            app.poll_errors.clear(project.id);
            Checked::Unchanged { reason }
        }
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
async fn reconcile(app: &App, project: &ProjectRecord, base: &FactBase) -> Checked {
    match super::reconcile_hosted(app, project.id, base).await {
        Ok(Moved::Queued(d)) => {
            app.poll_errors.clear(project.id);
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            app.poll_errors.clear(project.id);
            Checked::Unchanged { reason }
        }
        Err(e) => {
            let error = format!("reconciling the hosted repository failed: {e}");
            failed(app, project, EventKind::ReconcileFailed, error).await
        }
    }
}

/// The remote head, looked up in a child process killed at the cap (see
/// `git::isolated`): a remote that trickles holds its slot for the cap and
/// no thread of the daemon.
async fn lookup(app: &App, project: &ProjectRecord, url: &str) -> Result<Option<String>, GitError> {
    let credential = {
        let _slot = DB_SLOTS.acquire().await;
        super::credential(app, project.id).await?
    };
    crate::git::isolated::remote_head(
        url,
        &project.fields.git_branch,
        credential.as_ref(),
        project.ssh_known_hosts.as_deref(),
        app.git_timeout,
    )
    .await
}

async fn failed(app: &App, project: &ProjectRecord, kind: EventKind, error: String) -> Checked {
    tracing::warn!(error = %error, "{kind}");
    // One event per streak of the same error: a remote down for a day is
    // not a row per tick, and a tick over many failing remotes does not
    // queue on database writes.
    if app.poll_errors.is_new(project.id, &error) {
        let _slot = DB_SLOTS.acquire().await;
        let _ = app.store.log_event(Some(project.id), kind, &error).await;
    }
    Checked::Error { error }
}
