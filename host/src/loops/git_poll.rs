//! The git poller: every `auto_deploy_poll_interval_seconds` (a changed
//! interval applies from the next tick), starting at start-up, it claims the
//! projects due for a check, asks the policy's watch plan for each, reads
//! the tracked branch's head of each external project whose plan polls
//! commits, and triggers `auto-poll` when it moved. The same tick
//! reconciles each hosted project whose plan reconciles pushes (a local
//! read, as `auto-push`): a push cut off by a crash or whose trigger failed
//! deploys here.
//!
//! Projects are claimed from the store in batches under a lease, so any
//! number of replicas share one database and each project is checked once
//! per interval across them; a tick holds a bounded number of projects at
//! a time, whatever the number in the store. Lookups run concurrently
//! (`auto_deploy_poll_concurrency`), each capped, so one slow or hanging
//! remote costs its own project the timeout and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Loop, LoopStatus, Ticked};
use crate::app::App;
use crate::git::GitError;
use crate::policy::Facts;
use crate::policy::facts::FactBase;
use crate::store::{
    BrokenProject, DeploySource, EventKind, GitSource, LeaseClaim, POLL_MIN_SECONDS, ProjectRecord,
    Settings, StoreError,
};
use crate::triggers::{Checked, Moved, TriggerError, commit_moved};

pub const GIT_POLL: &str = "git-poll";
/// Spread of the random delay before each network lookup, so a thousand
/// projects on one host are not asked at the same instant.
const MAX_JITTER_MS: u64 = 50;
/// Hosted repositories reconciled at once (local reads and a decision each).
const LOCAL_CONCURRENCY: usize = 4;
/// Projects claimed from the store at once.
const BATCH: i64 = 256;
/// Projects a tick holds at once (claimed, not yet done): bounds its memory
/// whatever the number of projects.
const IN_FLIGHT: usize = 1024;
/// Per-project results a tick asked for through the API lists; the counts
/// cover every project.
const LISTED: usize = 1000;
/// Database connections a tick's lookups use at once for their own reads
/// and writes: fewer than the pool holds, so pushes and the API never queue
/// behind a tick of many remotes.
static DB_SLOTS: Semaphore = Semaphore::const_new(4);

/// Which projects a tick checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those due: not checked by any replica within the interval (the
    /// loop's own ticks).
    Due,
    /// Every project no other replica is checking right now (a tick asked
    /// for through the API); their schedule is left as it was.
    All,
}

#[derive(Debug, Default, Serialize)]
pub struct TickSummary {
    /// The master switch was off during this tick (the policy decided what
    /// that meant; the default policy then watches nothing).
    pub paused: bool,
    /// The replica that ran the tick.
    pub replica: String,
    /// Projects this tick claimed: due (or, asked through the API, any)
    /// and not being checked by another replica.
    pub claimed: usize,
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
    /// Each project checked, in id order; at most the first [`LISTED`]
    /// (see `listed_all`).
    pub projects: Vec<ProjectResult>,
    /// Whether `projects` lists every project checked.
    pub listed_all: bool,
}

#[derive(Debug, Serialize)]
pub struct ProjectResult {
    pub project_id: i64,
    pub name: String,
    #[serde(flatten)]
    pub result: Checked,
}

/// The git poller's own state.
#[derive(Default)]
pub struct GitPoller {
    /// Keeps a "tick now" from running beside the loop's own tick.
    lock: tokio::sync::Mutex<()>,
    /// The last poll error of each project, so a streak of the same error
    /// is one event, not one per tick.
    errors: ErrorStreaks,
    status: LoopStatus,
}

fn interval(settings: &Settings) -> Duration {
    Duration::from_secs(
        settings
            .auto_deploy_poll_interval_seconds
            .max(POLL_MIN_SECONDS),
    )
}

#[async_trait]
impl Loop for GitPoller {
    type Error = StoreError;

    fn name(&self) -> &'static str {
        GIT_POLL
    }

    fn status(&self) -> &LoopStatus {
        &self.status
    }

    fn first_at_once(&self) -> bool {
        true
    }

    fn interval(&self, _app: &App, settings: &Settings) -> Duration {
        interval(settings)
    }

    async fn tick(&self, app: &Arc<App>, cancel: &CancellationToken) -> Result<Ticked, StoreError> {
        let s = self.tick_scope(app, Scope::Due, cancel).await?;
        Ok(Ticked {
            watched: Some(s.checked),
        })
    }
}

impl GitPoller {
    /// One tick over every project now (`POST /api/ticks/git-poll`).
    pub async fn tick_now(&self, app: &Arc<App>) -> Result<TickSummary, StoreError> {
        self.tick_scope(app, Scope::All, &CancellationToken::new())
            .await
    }

    /// One tick over the projects `scope` names: claimed in batches, each
    /// batch's watch plans asked for, then external ones polled and hosted
    /// ones reconciled as their plans say. Ticks of one replica never
    /// overlap; `cancel` stops claiming more (what was claimed finishes).
    pub async fn tick_scope(
        &self,
        app: &Arc<App>,
        scope: Scope,
        cancel: &CancellationToken,
    ) -> Result<TickSummary, StoreError> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let base = Arc::new(FactBase::read(app).await?);
        let now = crate::store::now();
        let every = interval(base.settings()).as_secs() as i64;
        let claim = LeaseClaim {
            owner: app.replica.as_str().to_string(),
            due_before: (scope == Scope::Due).then_some(now - every),
            checked_at: now,
            lease_until: now + every,
            limit: BATCH,
        };
        let mut tick = Tick {
            app: app.clone(),
            base: base.clone(),
            remote: Arc::new(Semaphore::new(
                // Clamped when read; `max(1)` keeps a zero from ever stalling.
                (base.settings().auto_deploy_poll_concurrency as usize).max(1),
            )),
            local: Arc::new(Semaphore::new(LOCAL_CONCURRENCY)),
            tasks: tokio::task::JoinSet::new(),
            tally: Tally::new(if scope == Scope::All { LISTED } else { 0 }),
        };
        let mut after = 0;
        let mut failure = None;
        while !cancel.is_cancelled() {
            let rows = match app.store.claim_projects(&claim, after).await {
                Ok(rows) => rows,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let Some(last) = super::last_id(&rows) else {
                break;
            };
            after = last;
            tick.tally.claimed += rows.len();
            tick.start_batch(self, rows).await;
            while tick.tasks.len() > IN_FLIGHT {
                tick.join_one().await;
            }
        }
        while !tick.tasks.is_empty() {
            tick.join_one().await;
        }
        // Released as one: a lease held to the tick's end only keeps another
        // replica's asked-for tick off these projects meanwhile. A due tick
        // stamps them checked now, after every lookup it made.
        let checked_at = claim.due_before.map(|_| crate::store::now());
        if let Err(e) = app.store.release_projects(&claim.owner, checked_at).await {
            tracing::warn!(error = %e, "releasing the tick's leases failed; they expire");
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(tick.tally.summary(&tick.base, &claim.owner, started))
    }
}

/// One tick in progress.
struct Tick {
    app: Arc<App>,
    base: Arc<FactBase>,
    remote: Arc<Semaphore>,
    local: Arc<Semaphore>,
    tasks: tokio::task::JoinSet<ProjectResult>,
    tally: Tally,
}

impl Tick {
    /// Asks the watch plans of one claimed batch and starts its checks.
    async fn start_batch(
        &mut self,
        poller: &GitPoller,
        rows: Vec<Result<ProjectRecord, BrokenProject>>,
    ) {
        let app = &self.app.clone();
        let (good, broken) = super::decodable(rows);
        for b in broken {
            let error = super::unreadable(&b);
            if poller.errors.is_new(b.id, &error) {
                let _ = app
                    .store
                    .log_event(Some(b.id), EventKind::PollFailed, &error)
                    .await;
            }
            self.tally.add(ProjectResult {
                project_id: b.id,
                name: b.name,
                result: Checked::Error { error },
            });
        }
        // A hosted repository is reconciled, an external one polled; a plan
        // naming the other for a project has nothing to do there.
        for (project, facts, plan) in super::watch_plans(app, &self.base.clone(), good).await {
            match plan {
                Ok(plan) => match project.fields.git_source {
                    GitSource::Hosted if plan.reconcile_pushes => self.reconcile(project),
                    GitSource::External if plan.poll_commits => self.poll(project, facts),
                    _ => self.tally.not_watched += 1,
                },
                Err(error) => {
                    let result =
                        failed(app, &poller.errors, &project, EventKind::PollFailed, error).await;
                    self.tally.add(ProjectResult {
                        project_id: project.id,
                        name: project.fields.name.clone(),
                        result,
                    });
                }
            }
        }
    }

    /// A hosted project: its bare repository's branch head against the
    /// tracked commit. Local reads: no jitter and slots of their own, so a
    /// hanging remote never holds them up.
    fn reconcile(&mut self, project: ProjectRecord) {
        let (app, local, base) = (self.app.clone(), self.local.clone(), self.base.clone());
        let (id, name) = (project.id, project.fields.name.clone());
        self.spawn_check(id, name, "auto-push", async move {
            match local.acquire_owned().await {
                Ok(_permit) => reconcile(&app, &project, &base).await,
                Err(_) => stopped(),
            }
        });
    }

    /// An external project: its remote branch head against the tracked
    /// commit.
    fn poll(&mut self, project: ProjectRecord, facts: Facts) {
        let (app, permits) = (self.app.clone(), self.remote.clone());
        let (id, name) = (project.id, project.fields.name.clone());
        self.spawn_check(id, name, "auto-poll", async move {
            let url = project.fields.git_url.as_deref().unwrap_or_default();
            if crate::git::isolated::is_remote(url) {
                let jitter = rand::rng().random_range(0..=MAX_JITTER_MS);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            match permits.acquire_owned().await {
                Ok(_permit) => check(&app, &project, facts).await,
                Err(_) => stopped(),
            }
        });
    }

    /// Runs one project's check on the tick's tasks, in its trigger span.
    fn spawn_check(
        &mut self,
        project_id: i64,
        name: String,
        source: &'static str,
        check: impl Future<Output = Checked> + Send + 'static,
    ) {
        let span = tracing::info_span!("trigger", project = project_id, source = source);
        self.tasks.spawn(
            async move {
                ProjectResult {
                    project_id,
                    name,
                    result: check.await,
                }
            }
            .instrument(span),
        );
    }

    async fn join_one(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(r)) => self.tally.add(r),
            Some(Err(e)) => tracing::error!(error = %e, "a poll task failed"),
            None => {}
        }
    }
}

/// What a tick came to, counted as results come in.
struct Tally {
    claimed: usize,
    checked: usize,
    not_watched: usize,
    triggered: usize,
    failed: usize,
    errors: usize,
    /// Kept per-project results, at most `keep`.
    listed: Vec<ProjectResult>,
    keep: usize,
}

impl Tally {
    fn new(keep: usize) -> Tally {
        Tally {
            claimed: 0,
            checked: 0,
            not_watched: 0,
            triggered: 0,
            failed: 0,
            errors: 0,
            listed: Vec::new(),
            keep,
        }
    }

    fn add(&mut self, r: ProjectResult) {
        self.checked += 1;
        match r.result {
            Checked::Triggered { .. } => self.triggered += 1,
            Checked::Failed { .. } => self.failed += 1,
            Checked::Error { .. } => self.errors += 1,
            Checked::Unchanged { .. } => {}
        }
        // The lowest ids are kept: the list reads the same whichever
        // results came first.
        if self.keep == 0 {
            return;
        }
        if self.listed.len() == self.keep {
            let Some((at, highest)) = self
                .listed
                .iter()
                .enumerate()
                .max_by_key(|(_, l)| l.project_id)
                .map(|(at, l)| (at, l.project_id))
            else {
                return;
            };
            if highest < r.project_id {
                return;
            }
            self.listed.swap_remove(at);
        }
        self.listed.push(r);
    }

    fn summary(mut self, base: &FactBase, replica: &str, started: Instant) -> TickSummary {
        self.listed.sort_by_key(|r| r.project_id);
        TickSummary {
            paused: !base.master_enabled(),
            replica: replica.to_string(),
            claimed: self.claimed,
            checked: self.checked,
            not_watched: self.not_watched,
            triggered: self.triggered,
            failed: self.failed,
            errors: self.errors,
            elapsed_ms: started.elapsed().as_millis(),
            listed_all: self.listed.len() == self.checked,
            projects: self.listed,
        }
    }
}

async fn check(app: &App, project: &ProjectRecord, facts: Facts) -> Checked {
    let errors = &app.loops.git_poll.errors;
    let url = project.fields.git_url.clone().unwrap_or_default();
    let head = match lookup(app, project, &url).await {
        Ok(head) => head,
        Err(e) => {
            let url = crate::git::shown_url(&url);
            let error = format!("poll of {url} failed: {e}");
            return failed(app, errors, project, EventKind::PollFailed, error).await;
        }
    };
    match commit_moved(app, project, facts, head, DeploySource::AutoPoll).await {
        Ok(Moved::Queued(d)) => {
            errors.clear(project.id);
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            errors.clear(project.id);
            Checked::Unchanged { reason }
        }
        // Ticks never overlap, so only a change to the project itself moved
        // the tracked commit: the next tick decides on the new state.
        Err(TriggerError::Store(StoreError::Stale(_))) => Checked::Unchanged {
            reason: "the tracked commit moved meanwhile; the next tick looks again".into(),
        },
        Err(e) => failed(app, errors, project, EventKind::PollFailed, e.to_string()).await,
    }
}

async fn reconcile(app: &App, project: &ProjectRecord, base: &FactBase) -> Checked {
    let errors = &app.loops.git_poll.errors;
    match crate::triggers::reconcile_hosted(app, project.id, base).await {
        Ok(Moved::Queued(d)) => {
            errors.clear(project.id);
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            errors.clear(project.id);
            Checked::Unchanged { reason }
        }
        Err(e) => {
            let error = format!("reconciling the hosted repository failed: {e}");
            failed(app, errors, project, EventKind::ReconcileFailed, error).await
        }
    }
}

/// The remote head, looked up in a child process killed at the cap (see
/// `git::isolated`): a remote that trickles holds its slot for the cap and
/// no thread of the daemon.
async fn lookup(app: &App, project: &ProjectRecord, url: &str) -> Result<Option<String>, GitError> {
    // The row says whether there is a credential: most projects have none,
    // and a tick of thousands saves a read each.
    let credential = match project.credentials {
        Some(_) => {
            let _slot = DB_SLOTS.acquire().await;
            crate::triggers::credential(app, project.id).await?
        }
        None => None,
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

async fn failed(
    app: &App,
    errors: &ErrorStreaks,
    project: &ProjectRecord,
    kind: EventKind,
    error: String,
) -> Checked {
    tracing::warn!(error = %error, "{kind}");
    // One event per streak of the same error: a remote down for a day is
    // not a row per tick, and a tick over many failing remotes does not
    // queue on database writes.
    if errors.is_new(project.id, &error) {
        let _slot = DB_SLOTS.acquire().await;
        let _ = app.store.log_event(Some(project.id), kind, &error).await;
    }
    Checked::Error { error }
}

/// The error each project is failing with right now.
#[derive(Default)]
pub struct ErrorStreaks(Mutex<HashMap<i64, String>>);

impl ErrorStreaks {
    /// Records `error` for `id`; true when it differs from the last one.
    pub fn is_new(&self, id: i64, error: &str) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(&id).is_some_and(|last| last == error) {
            return false;
        }
        all.insert(id, error.to_string());
        true
    }

    /// The project works again: its next error starts a new streak.
    pub fn clear(&self, id: i64) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.remove(&id).is_some() && all.is_empty() {
            // A day of failing remotes may have grown it: give the memory back.
            all.shrink_to_fit();
        }
    }
}

/// What a check that never ran (its tick was stopped) came to.
fn stopped() -> Checked {
    Checked::Error {
        error: "the tick was stopped".into(),
    }
}
