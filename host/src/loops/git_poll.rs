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
use crate::metrics::GitResult;
use crate::policy::Facts;
use crate::policy::facts::FactBase;
use crate::store::{
    BrokenProject, DeploySource, EventKind, GitSource, LeaseClaim, NotifyEvent, POLL_MIN_SECONDS,
    ProjectRecord, Settings, StoreError,
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
    /// External projects a due tick left out because their webhooks
    /// arrive (polled at 10× the interval meanwhile).
    pub relaxed: usize,
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
    /// Projects a webhook asked to look up, each with whether another hook
    /// came while its lookup runs: at most one runs and one waits per
    /// project, however many hooks arrive.
    hooked: Mutex<HashMap<i64, bool>>,
    /// Per project whose webhooks arrive: when the last valid one came and
    /// when its branch was last looked up (by a hook or a tick), for
    /// [`GitPoller::relaxed`]. In memory: another replica polls as usual.
    hook_times: Mutex<HashMap<i64, HookTimes>>,
}

/// While a project's webhooks arrive it is polled this many times less
/// often: polling stays the fallback for a missed hook.
pub const HOOKED_POLL_FACTOR: i64 = 10;

/// How many more times a webhook's lookup runs after losing a race with
/// another trigger for the same project.
const MAX_HOOK_RETRIES: usize = 3;

/// The reason a check that lost a race with another trigger reports.
const RACED: &str =
    "the project changed meanwhile (its tracked commit or Auto Deploy); the next tick looks again";

#[derive(Debug, Clone, Copy, Default)]
struct HookTimes {
    hook_at: i64,
    looked_up_at: i64,
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
    /// Looks up `project_id`'s branch head now, outside the ticks (a
    /// verified webhook asked). Coalesced: while a lookup of the project is
    /// running, further calls make one more run after it, never more.
    /// True when this call was folded into a lookup already under way.
    /// The head read decides through `decide-commit`, as on a tick; no
    /// payload ever names the commit.
    pub fn look_up_soon(&self, app: &Arc<App>, project_id: i64) -> bool {
        self.hook_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project_id)
            .or_default()
            .hook_at = crate::store::now();
        {
            let mut hooked = self.hooked.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = hooked.get_mut(&project_id) {
                *again = true;
                return true;
            }
            hooked.insert(project_id, false);
        }
        let app = app.clone();
        let span = tracing::info_span!("trigger", project = project_id, source = "auto-poll");
        tokio::spawn(
            async move {
                let mut raced = 0;
                loop {
                    let started = crate::store::now();
                    let checked = look_up_one(&app, project_id).await;
                    tracing::debug!(?checked, "webhook lookup done");
                    let poller = &app.loops.git_poll;
                    // Only a lookup that decided counts toward polling the
                    // project less: after a failed one, or one that lost a
                    // race with another trigger, the next due tick looks
                    // again at the usual interval.
                    let lost_race = matches!(checked, Checked::Raced { .. });
                    if !lost_race && !matches!(checked, Checked::Error { .. }) {
                        poller.looked_up(project_id, started);
                    }
                    let mut hooked = poller.hooked.lock().unwrap_or_else(|e| e.into_inner());
                    match hooked.get_mut(&project_id) {
                        Some(again) if *again => *again = false,
                        // Another trigger moved the tracked commit while
                        // this one decided: decide again on the new state
                        // (a few times; a tick covers the rest).
                        Some(_) if lost_race && raced < MAX_HOOK_RETRIES => raced += 1,
                        _ => {
                            hooked.remove(&project_id);
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        false
    }

    /// Notes a lookup of a project whose hooks arrive.
    fn looked_up(&self, project_id: i64, at: i64) {
        let mut all = self.hook_times.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = all.get_mut(&project_id) {
            t.looked_up_at = at;
        }
    }

    /// Whether a due tick at `now` (interval `every` seconds) leaves the
    /// project out: a valid hook came within the last
    /// [`HOOKED_POLL_FACTOR`] intervals and its branch was looked up within
    /// them too. So it is polled every 10 intervals while hooks arrive, and
    /// at the interval again once they stop for 10 intervals.
    fn relaxed(&self, project_id: i64, now: i64, every: i64) -> bool {
        let mut all = self.hook_times.lock().unwrap_or_else(|e| e.into_inner());
        let window = every.saturating_mul(HOOKED_POLL_FACTOR);
        match all.get(&project_id).copied() {
            Some(t) if now - t.hook_at >= window => {
                all.remove(&project_id);
                false
            }
            Some(t) => now - t.looked_up_at < window,
            None => false,
        }
    }

    /// One tick over every project now (`POST /api/ticks/git-poll`).
    pub async fn tick_now(&self, app: &Arc<App>) -> Result<TickSummary, StoreError> {
        let summary = self
            .tick_scope(app, Scope::All, &CancellationToken::new())
            .await;
        // As after the loop's own ticks: what the tick freed goes back to
        // the system.
        crate::serve::release_freed_memory();
        summary
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
            in_flight: 0,
            tally: Tally::new(if scope == Scope::All { LISTED } else { 0 }),
            relax: (scope == Scope::Due).then_some((now, every)),
        };
        let renewal = Renewal::start(app, &claim.owner, every);
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
            while tick.in_flight > IN_FLIGHT {
                tick.join_one().await;
            }
        }
        while !tick.tasks.is_empty() {
            tick.join_one().await;
        }
        renewal.stop().await;
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

/// Keeps a tick's leases alive while it runs. A lease is one interval
/// long, so a tick that takes longer (thousands of remotes, a loaded host)
/// would otherwise let another replica claim and look up again the projects
/// it has claimed and not yet looked up: two lookups of a project seconds
/// apart. A replica that dies stops renewing, and its leases run out within
/// one interval of its last renewal.
struct Renewal {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Renewal {
    fn start(app: &Arc<App>, owner: &str, every: i64) -> Renewal {
        let stop = CancellationToken::new();
        let (app, owner, stopped) = (app.clone(), owner.to_string(), stop.clone());
        // Three renewals per lease: one that is late or fails is not the end.
        let period = Duration::from_millis((every.max(1) as u64) * 1000 / 3);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let until = crate::store::now() + every;
                if let Err(e) = app.store.renew_leases(&owner, until).await {
                    tracing::warn!(error = %e, "renewing the tick's leases failed");
                }
            }
        });
        Renewal {
            stop,
            task: Some(task),
        }
    }

    /// Stops renewing; no renewal runs once this returns.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Renewal {
    /// A tick dropped half-way (an API caller gone) renews nothing more.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One tick in progress.
struct Tick {
    app: Arc<App>,
    base: Arc<FactBase>,
    remote: Arc<Semaphore>,
    local: Arc<Semaphore>,
    /// Each task checks one project, or a batch of local ones.
    tasks: tokio::task::JoinSet<Vec<ProjectResult>>,
    /// Projects the running tasks check.
    in_flight: usize,
    tally: Tally,
    /// A due tick's (now, interval): projects whose hooks arrive may be
    /// left out (see [`GitPoller::relaxed`]). An asked-for tick checks all.
    relax: Option<(i64, i64)>,
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
        let mut local = Vec::new();
        for (project, facts, plan) in super::watch_plans(app, &self.base.clone(), good).await {
            match plan {
                Ok(plan) => match project.fields.git_source {
                    GitSource::Hosted if plan.reconcile_pushes => self.reconcile(project),
                    GitSource::External
                        if plan.poll_commits
                            && self.relax.is_some_and(|(now, every)| {
                                poller.relaxed(project.id, now, every)
                            }) =>
                    {
                        self.tally.relaxed += 1;
                    }
                    GitSource::External if plan.poll_commits => {
                        if let Some((now, _)) = self.relax {
                            poller.looked_up(project.id, now);
                        }
                        let url = project.fields.git_url.as_deref().unwrap_or_default();
                        if crate::git::isolated::is_remote(url) {
                            self.poll(project, facts)
                        } else {
                            local.push((project, facts));
                        }
                    }
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
        if !local.is_empty() {
            self.poll_local(local);
        }
    }

    /// External projects on local repositories (`file://`, a path): their
    /// heads are local reads and their decisions are asked for together,
    /// one policy hand-off for the lot rather than one per project.
    fn poll_local(&mut self, projects: Vec<(ProjectRecord, Facts)>) {
        let (app, permits) = (self.app.clone(), self.remote.clone());
        self.in_flight += projects.len();
        self.tasks
            .spawn(async move { check_local(&app, &permits, projects).await });
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
        self.in_flight += 1;
        self.tasks.spawn(
            async move {
                vec![ProjectResult {
                    project_id,
                    name,
                    result: check.await,
                }]
            }
            .instrument(span),
        );
    }

    async fn join_one(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(results)) => {
                self.in_flight = self.in_flight.saturating_sub(results.len());
                for r in results {
                    self.tally.add(r);
                }
            }
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
    relaxed: usize,
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
            relaxed: 0,
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
            Checked::Unchanged { .. } | Checked::Raced { .. } => {}
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
            relaxed: self.relaxed,
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
    let moved = commit_moved(app, project, facts, head, DeploySource::AutoPoll).await;
    checked(app, project, moved).await
}

/// One external project's head, looked up and decided on now (see
/// [`GitPoller::look_up_soon`]), when its watch plan polls commits.
async fn look_up_one(app: &App, project_id: i64) -> Checked {
    let errors = &app.loops.git_poll.errors;
    let project = match app.store.project(project_id).await {
        Ok(p) => p,
        Err(e) => {
            return Checked::Error {
                error: e.to_string(),
            };
        }
    };
    if project.fields.git_source != GitSource::External {
        return Checked::Unchanged {
            reason: "a hosted project is deployed on push".into(),
        };
    }
    let base = match FactBase::read_for(app, project.pinned_node_id).await {
        Ok(base) => base,
        Err(e) => {
            return Checked::Error {
                error: e.to_string(),
            };
        }
    };
    let facts = base.facts(&project);
    match crate::triggers::watch_plan(app, &project, facts.clone()).await {
        Ok(plan) if plan.poll_commits => check(app, &project, facts).await,
        Ok(plan) => Checked::Unchanged {
            reason: format!("the policy watches no commits here ({})", plan.reason),
        },
        Err(error) => {
            let error = format!("the policy could not plan what to watch: {error}");
            failed(app, errors, &project, EventKind::PollFailed, error).await
        }
    }
}

/// [`check`] for a batch of projects on local repositories: each head is
/// read as there, under the tick's lookup slots, then the `decide-commit`
/// calls of the heads read go to the policy together, and each decision is
/// acted on in its project's trigger span.
async fn check_local(
    app: &App,
    permits: &Semaphore,
    projects: Vec<(ProjectRecord, Facts)>,
) -> Vec<ProjectResult> {
    let errors = &app.loops.git_poll.errors;
    let span =
        |p: &ProjectRecord| tracing::info_span!("trigger", project = p.id, source = "auto-poll");
    // Those without a credential (most) are read together on one thread;
    // the others each look theirs up, credential first.
    let plain: Vec<usize> = (0..projects.len())
        .filter(|&i| projects[i].0.credentials.is_none())
        .collect();
    let mut heads: Vec<Option<Result<Option<String>, GitError>>> =
        projects.iter().map(|_| None).collect();
    let together = async {
        let _permit = permits.acquire().await.ok()?;
        let reads = plain
            .iter()
            .map(|&i| {
                let p = &projects[i].0;
                crate::git::isolated::LocalHead {
                    url: p.fields.git_url.clone().unwrap_or_default(),
                    branch: p.fields.git_branch.clone(),
                    known_hosts: p.ssh_known_hosts.clone(),
                }
            })
            .collect();
        Some(crate::git::isolated::local_heads(reads, app.git_timeout).await)
    };
    let alone = futures::future::join_all(
        projects
            .iter()
            .filter(|(project, _)| project.credentials.is_some())
            .map(|(project, _)| {
                async move {
                    let url = project.fields.git_url.as_deref().unwrap_or_default();
                    // `None`: the tick was stopped.
                    match permits.acquire().await {
                        Ok(_permit) => Some(lookup(app, project, url).await),
                        Err(_) => None,
                    }
                }
                .instrument(span(project))
            }),
    );
    let (together, alone) = futures::future::join(together, alone).await;
    if let Some(read) = together {
        for (&i, head) in plain.iter().zip(read) {
            heads[i] = Some(head);
        }
    }
    let mut alone = alone.into_iter();
    for (i, (project, _)) in projects.iter().enumerate() {
        if project.credentials.is_some() {
            heads[i] = alone.next().flatten();
        }
    }
    let mut looked_up = Vec::with_capacity(projects.len());
    let mut results = Vec::new();
    for ((project, facts), head) in projects.into_iter().zip(heads) {
        let result = match head {
            Some(Ok(head)) => {
                looked_up.push((project, facts, head));
                continue;
            }
            Some(Err(e)) => {
                let url = project.fields.git_url.as_deref().unwrap_or_default();
                let error = format!("poll of {} failed: {e}", crate::git::shown_url(url));
                failed(app, errors, &project, EventKind::PollFailed, error)
                    .instrument(span(&project))
                    .await
            }
            None => stopped(),
        };
        results.push(ProjectResult {
            project_id: project.id,
            name: project.fields.name.clone(),
            result,
        });
    }
    let (calls, projects): (Vec<_>, Vec<_>) = looked_up
        .into_iter()
        .map(|(project, facts, head)| {
            let call = crate::triggers::commit_call(&project, facts, head, DeploySource::AutoPoll);
            (call, project)
        })
        .unzip();
    let decided = app.decide_calls(calls).await;
    let acted = projects.into_iter().zip(decided).map(|(project, decided)| {
        let span = span(&project);
        async move {
            let moved = match permits.acquire().await {
                Ok(_permit) => {
                    crate::triggers::commit_decided(app, &project, decided, DeploySource::AutoPoll)
                        .await
                }
                Err(_) => {
                    return ProjectResult {
                        project_id: project.id,
                        name: project.fields.name.clone(),
                        result: stopped(),
                    };
                }
            };
            let result = checked(app, &project, moved).await;
            ProjectResult {
                project_id: project.id,
                name: project.fields.name.clone(),
                result,
            }
        }
        .instrument(span)
    });
    results.extend(futures::future::join_all(acted).await);
    results
}

/// What a commit check came to (see [`check`]).
async fn checked(
    app: &App,
    project: &ProjectRecord,
    moved: Result<Moved, TriggerError>,
) -> Checked {
    let errors = &app.loops.git_poll.errors;
    match moved {
        Ok(Moved::Queued(d)) => {
            recovered(app, project).await;
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            recovered(app, project).await;
            Checked::Unchanged { reason }
        }
        // Ticks never overlap, so only a change to the project itself moved
        // the tracked commit: the next tick decides on the new state.
        Err(TriggerError::Store(StoreError::Stale(_))) => Checked::Raced {
            reason: RACED.into(),
        },
        Err(e) => failed(app, errors, project, EventKind::PollFailed, e.to_string()).await,
    }
}

async fn reconcile(app: &App, project: &ProjectRecord, base: &FactBase) -> Checked {
    let errors = &app.loops.git_poll.errors;
    match crate::triggers::reconcile_hosted(app, project.id, base).await {
        Ok(Moved::Queued(d)) => {
            recovered(app, project).await;
            Checked::from_deployment(*d)
        }
        Ok(Moved::Unchanged(reason)) => {
            recovered(app, project).await;
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
    let head = crate::git::isolated::remote_head(
        url,
        &project.fields.git_branch,
        credential.as_ref(),
        project.ssh_known_hosts.as_deref(),
        app.git_timeout,
    )
    .await;
    app.metrics.git_lookup(
        url,
        match head {
            Ok(_) => GitResult::Ok,
            Err(_) => GitResult::Error,
        },
    );
    head
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
    let (new, in_a_row) = errors.note(project.id, &error);
    if new {
        let _slot = DB_SLOTS.acquire().await;
        let _ = app.store.log_event(Some(project.id), kind, &error).await;
    }
    if in_a_row == FAILING_AFTER {
        let detail = format!("{FAILING_AFTER} checks in a row failed; the last: {error}");
        notify(app, project.id, NotifyEvent::TriggerFailing, &detail).await;
    }
    Checked::Error { error }
}

/// Consecutive failed checks after which a project's owners are told its
/// trigger keeps failing (once per streak).
pub const FAILING_AFTER: u32 = 3;

/// The error each project is failing with right now, and how many checks
/// in a row failed.
#[derive(Default)]
pub struct ErrorStreaks(Mutex<HashMap<i64, (String, u32)>>);

impl ErrorStreaks {
    /// Records `error` for `id`; true when it differs from the last one.
    pub fn is_new(&self, id: i64, error: &str) -> bool {
        self.note(id, error).0
    }

    /// Records `error` for `id`: whether it differs from the last one, and
    /// the failed checks in a row, this one included.
    pub fn note(&self, id: i64, error: &str) -> (bool, u32) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let streak = all.entry(id).or_insert_with(|| (String::new(), 0));
        streak.1 = streak.1.saturating_add(1);
        if streak.0 == error {
            return (false, streak.1);
        }
        streak.0 = error.to_string();
        (true, streak.1)
    }

    /// The project works again: its next error starts a new streak. The
    /// failed checks in a row the streak had.
    pub fn clear(&self, id: i64) -> u32 {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ended = all.remove(&id).map_or(0, |(_, n)| n);
        if ended > 0 && all.is_empty() {
            // A day of failing remotes may have grown it: give the memory back.
            all.shrink_to_fit();
        }
        ended
    }
}

/// Ends the project's error streak; one long enough to have been told of
/// is told to have ended.
async fn recovered(app: &App, project: &ProjectRecord) {
    if app.loops.git_poll.errors.clear(project.id) >= FAILING_AFTER {
        notify(
            app,
            project.id,
            NotifyEvent::TriggerRecovered,
            "the git trigger works again",
        )
        .await;
    }
}

async fn notify(app: &App, project_id: i64, event: NotifyEvent, detail: &str) {
    let _slot = DB_SLOTS.acquire().await;
    match app
        .store
        .enqueue_notification(Some(project_id), event, detail)
        .await
    {
        Ok(n) if n > 0 => app.notifier.wake(),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "queueing a notification failed"),
    }
}

/// What a check that never ran (its tick was stopped) came to.
fn stopped() -> Checked {
    Checked::Error {
        error: "the tick was stopped".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooked_at(poller: &GitPoller, id: i64, hook_at: i64, looked_up_at: i64) {
        poller.hook_times.lock().unwrap().insert(
            id,
            HookTimes {
                hook_at,
                looked_up_at,
            },
        );
    }

    #[test]
    fn hooked_projects_are_polled_every_tenth_interval_until_hooks_stop() {
        let p = GitPoller::default();
        let every = 60;
        // No hook: polled on every due tick.
        assert!(!p.relaxed(1, 1_000, every));
        // A hook and its lookup just now: left out for 10 intervals.
        hooked_at(&p, 1, 1_000, 1_000);
        assert!(p.relaxed(1, 1_000 + every, every));
        assert!(p.relaxed(1, 1_000 + 9 * every, every));
        // Hooks keep coming, but nothing was looked up for 10 intervals:
        // the fallback poll runs.
        hooked_at(&p, 1, 1_000 + 9 * every, 1_000);
        assert!(!p.relaxed(1, 1_000 + 10 * every, every));
        // Hooks stopped 10 intervals ago: back to every interval.
        hooked_at(&p, 1, 1_000, 1_000 + 9 * every);
        assert!(!p.relaxed(1, 1_000 + 10 * every, every));
        assert!(p.hook_times.lock().unwrap().is_empty());
    }
}
