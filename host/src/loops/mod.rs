//! The background loops: the git poller, the image watcher and the node
//! watcher. Each is a component that owns its state (its lock against a
//! second tick, its error streaks, its status) behind one small trait,
//! [`Loop`], and one runner, [`run`], drives any of them: it waits for the
//! next tick (woken early by a settings change), logs a failed tick and goes
//! on, and stops when cancelled.
//!
//! Replicas share the work through the store: the git poller claims due
//! projects under a lease (each project is looked up once per interval
//! across the cluster), the image watcher ticks only while it leads.

pub mod git_poll;
pub mod image_watch;
pub mod node_watch;
mod schedule;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::policy::facts::FactBase;
use crate::policy::{Facts, WatchPlan};
use crate::store::{BrokenProject, ProjectRecord, Settings};

pub use git_poll::GitPoller;
pub use image_watch::ImageWatcher;
pub use node_watch::NodeWatcher;
pub use status::{LoopState, LoopStatus, RunState};

/// One background loop, as the runner sees it.
#[async_trait]
pub trait Loop: Send + Sync {
    type Error: std::fmt::Display + Send;

    /// Its name in logs and in `GET /api/status`.
    fn name(&self) -> &'static str;

    fn status(&self) -> &LoopStatus;

    /// Whether the first tick comes at once rather than one interval after
    /// start.
    fn first_at_once(&self) -> bool;

    /// Time from one tick's start to the next, on the current settings.
    fn interval(&self, app: &App, settings: &Settings) -> Duration;

    /// Runs once before the first tick; an error turns the loop off.
    async fn start(&self, _app: &App) -> Result<(), Self::Error> {
        Ok(())
    }

    /// One tick of the loop's own (not asked for through the API).
    async fn tick(&self, app: &Arc<App>, cancel: &CancellationToken)
    -> Result<Ticked, Self::Error>;
}

/// What the runner keeps of a tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ticked {
    /// Projects the tick looked at (`None`: the loop does not look at
    /// projects).
    pub watched: Option<usize>,
}

/// Drives the loop `pick` names in `app` until `cancel`.
pub async fn run<L: Loop>(app: Arc<App>, pick: fn(&App) -> &L, cancel: CancellationToken) {
    let l = pick(&app);
    let name = l.name();
    if let Err(e) = l.start(&app).await {
        tracing::warn!(loop = name, error = %e, "loop is off");
        l.status().state(RunState::Off, Some(e.to_string()));
        return;
    }
    // Running from here, not only from the first tick's end.
    l.status().state(RunState::Running, None);
    let mut schedule = schedule::Schedule::new(&app, l.first_at_once());
    while schedule.next(&app, l, &cancel).await {
        let started = std::time::Instant::now();
        let ticked = l.tick(&app, &cancel).await;
        app.metrics.tick(name, started.elapsed());
        match ticked {
            Ok(t) => l.status().ticked(t.watched, None),
            Err(e) => {
                tracing::warn!(loop = name, replica = %app.replica, error = %e, "tick failed");
                l.status().ticked(None, Some(e.to_string()));
            }
        }
        crate::serve::release_freed_memory();
    }
    l.status().state(RunState::Stopped, None);
}

/// A page of rows split into the projects that decode and the rows that do
/// not (an error for their own project, never for the whole tick; the
/// policy cannot judge a row that cannot be read, so each is reported,
/// whatever its toggle).
fn decodable(
    rows: Vec<Result<ProjectRecord, BrokenProject>>,
) -> (Vec<ProjectRecord>, Vec<BrokenProject>) {
    let (mut good, mut bad) = (Vec::with_capacity(rows.len()), Vec::new());
    for row in rows {
        match row {
            Ok(p) => good.push(p),
            Err(b) => {
                tracing::warn!(project = b.id, error = %b.error, "a project row does not decode");
                bad.push(b);
            }
        }
    }
    (good, bad)
}

/// What a row that does not decode is reported as.
fn unreadable(b: &BrokenProject) -> String {
    format!("the project's stored row is unreadable: {}", b.error)
}

/// The id of the last row of a page, the next page's cursor.
fn last_id(rows: &[Result<ProjectRecord, BrokenProject>]) -> Option<i64> {
    rows.last()
        .map(|r| r.as_ref().map_or_else(|b| b.id, |p| p.id))
}

/// The policy's watch plan for each project, on the tick's facts, with the
/// facts it was made on. A plan the policy failed to make is an error for
/// that project.
async fn watch_plans(
    app: &App,
    base: &FactBase,
    projects: Vec<ProjectRecord>,
) -> Vec<(ProjectRecord, Facts, Result<WatchPlan, String>)> {
    let facts: Vec<Facts> = projects.iter().map(|p| base.facts(p)).collect();
    let calls = projects
        .iter()
        .zip(&facts)
        .map(|(p, f)| crate::triggers::watch_plan_call(p, f.clone()))
        .collect();
    // One policy hand-off per thread for the whole batch.
    let decided = app.decide_calls(calls).await;
    projects
        .into_iter()
        .zip(facts)
        .zip(decided)
        .map(|((project, facts), decided)| {
            let plan = crate::triggers::plan_of(decided)
                .map_err(|e| format!("the policy could not plan what to watch: {e}"));
            (project, facts, plan)
        })
        .collect()
}

/// The components, for the API's "tick now" and status.
pub struct Loops {
    pub git_poll: GitPoller,
    pub image_watch: ImageWatcher,
    pub node_watch: NodeWatcher,
}

impl Loops {
    /// Every loop's status by name, for `GET /api/status`.
    pub fn snapshot(&self) -> BTreeMap<&'static str, LoopState> {
        [
            (self.git_poll.name(), self.git_poll.status().snapshot()),
            (
                self.image_watch.name(),
                self.image_watch.status().snapshot(),
            ),
            (self.node_watch.name(), self.node_watch.status().snapshot()),
        ]
        .into_iter()
        .collect()
    }

    /// Every loop's name, state and current interval, for `/readyz`.
    pub fn intervals(
        &self,
        app: &App,
        settings: &Settings,
    ) -> Vec<(&'static str, LoopState, Duration)> {
        vec![
            (
                self.git_poll.name(),
                self.git_poll.status().snapshot(),
                self.git_poll.interval(app, settings),
            ),
            (
                self.image_watch.name(),
                self.image_watch.status().snapshot(),
                self.image_watch.interval(app, settings),
            ),
            (
                self.node_watch.name(),
                self.node_watch.status().snapshot(),
                self.node_watch.interval(app, settings),
            ),
        ]
    }

    /// Starts every loop on `tasks`; each ends when `cancel` fires.
    pub fn spawn(app: &Arc<App>, tasks: &mut tokio::task::JoinSet<()>, cancel: &CancellationToken) {
        tasks.spawn(run(app.clone(), |a| &a.loops.node_watch, cancel.clone()));
        tasks.spawn(run(app.clone(), |a| &a.loops.git_poll, cancel.clone()));
        tasks.spawn(run(app.clone(), |a| &a.loops.image_watch, cancel.clone()));
    }
}

/// This process's name among the replicas sharing a database: random per
/// start, so a restarted replica never takes over a dead one's leases by
/// name; they expire instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn new() -> ReplicaId {
        use rand::Rng;
        let n: u64 = rand::rng().random();
        ReplicaId(format!("{}-{n:016x}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ReplicaId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
