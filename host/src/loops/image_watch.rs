//! The image-digest watcher: every
//! `auto_deploy_image_watch_interval_seconds` (a changed interval applies
//! from the next tick) it asks the policy's watch plan for every project,
//! reads the compose file at the branch tip of each one whose plan watches
//! images, lets the policy list the images, looks up each distinct image's
//! digest once for all projects, and lets the policy decide per project. A moved digest triggers `auto-image`;
//! the recorded map is written with the deployment, or on its own when
//! nothing deploys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use autodeploy_policy_contract::{Answer, Call};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Loop, LoopStatus, Ticked};
use crate::app::App;
use crate::git::GitError;
use crate::pipeline::{self, Trigger};
use crate::policy::facts::FactBase;
use crate::policy::{Facts, Lookup};
use crate::registry::{Credential, ImageRef, Registry, same_host};
use crate::service::registry_hooks::HookAuth;
use crate::store::{
    DeploySource, DeployStatus, EventKind, GitSource, Leader, ProjectRecord, Settings, StoreError,
};

pub const IMAGE_WATCH: &str = "image-watch";
/// Lookups (and compose-file reads) in flight at once.
const CONCURRENCY: usize = 8;
/// Projects read from the store at once.
const PAGE: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the image trigger is off: {0}")]
    Off(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Serialize)]
pub struct ImageTick {
    /// The master switch was off during this tick (the policy decided what
    /// that meant; the default policy then watches nothing).
    pub paused: bool,
    /// Projects the policy's watch plan left out of this trigger.
    pub not_watched: usize,
    /// Distinct images looked up (each once, whatever number of projects use it).
    pub lookups: usize,
    pub lookup_failures: usize,
    /// Deployments queued (or coalesced into a queued one).
    pub triggered: usize,
    /// Deployments that failed before reaching a node; retried next tick.
    pub failed: usize,
    pub elapsed_ms: u128,
    pub projects: Vec<ProjectWatch>,
}

#[derive(Debug, Serialize)]
pub struct ProjectWatch {
    pub project_id: i64,
    pub name: String,
    pub images: Vec<String>,
    pub skipped: Vec<String>,
    /// Why an image of this project could not be looked up this tick (its
    /// previous digest is kept).
    pub image_errors: BTreeMap<String, String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What one project came to; `Failed`: its deployment failed before it
/// reached a node, and the recorded digests stay so the next tick retries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Triggered { deployment: i64, reason: String },
    Failed { deployment: i64, error: String },
    Unchanged { reason: String },
    Recorded { reason: String },
    NoComposeFile { reason: String },
    Error { error: String },
}

/// The image watcher's own state: the registries it asks and whether it
/// may, and, with replicas, whether this one leads.
pub struct ImageWatcher {
    pub registry: Registry,
    /// `REGISTRY_ADDR`, probed at start.
    registry_addr: Option<String>,
    /// Why the image trigger is off, when the start-up probe failed.
    off: Mutex<Option<String>>,
    /// Keeps a "tick now" from running beside the loop's own tick.
    lock: tokio::sync::Mutex<()>,
    /// Held while this replica leads: only the leader's own ticks run, so
    /// each distinct image is looked up once per tick across the cluster.
    leader: tokio::sync::Mutex<Option<Leader>>,
    status: LoopStatus,
    /// How `POST /hooks/registry` is authenticated.
    hook_auth: HookAuth,
    /// Images a registry notification asked about and not yet checked, and
    /// whether a task is checking them.
    pushed: Mutex<(BTreeSet<ImageRef>, bool)>,
}

impl ImageWatcher {
    pub fn new(registry: Registry, registry_addr: Option<String>) -> ImageWatcher {
        ImageWatcher {
            registry,
            registry_addr,
            off: Mutex::new(None),
            lock: Default::default(),
            leader: Default::default(),
            status: LoopStatus::default(),
            hook_auth: HookAuth::default(),
            pushed: Default::default(),
        }
    }

    /// Enables registry notifications with this secret.
    pub fn with_hook_auth(mut self, auth: HookAuth) -> ImageWatcher {
        self.hook_auth = auth;
        self
    }

    pub fn hook_auth(&self) -> &HookAuth {
        &self.hook_auth
    }

    /// Schedules a digest check of `images` for the projects using them,
    /// at once. Images already waiting for a check are folded into it;
    /// returns how many were. One task checks at a time, taking every image
    /// pushed meanwhile into its next round.
    pub fn check_soon(&self, app: &Arc<App>, images: BTreeSet<ImageRef>) -> usize {
        let mut pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner());
        let before = pushed.0.len();
        let n = images.len();
        pushed.0.extend(images);
        let coalesced = n - (pushed.0.len() - before);
        if pushed.1 {
            return coalesced;
        }
        pushed.1 = true;
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                let round = {
                    let watcher = &app.loops.image_watch;
                    let mut pushed = watcher.pushed.lock().unwrap_or_else(|e| e.into_inner());
                    if pushed.0.is_empty() {
                        pushed.1 = false;
                        return;
                    }
                    std::mem::take(&mut pushed.0)
                };
                let names: Vec<String> = round.iter().map(ToString::to_string).collect();
                let watcher = &app.loops.image_watch;
                let checked = match watcher.off() {
                    Some(reason) => Err(WatchError::Off(reason)),
                    None => {
                        let _one_at_a_time = watcher.lock.lock().await;
                        tick_only(&app, Some(&round)).await
                    }
                };
                match checked {
                    Ok(t) => tracing::info!(
                        images = ?names,
                        projects = t.projects.len(),
                        triggered = t.triggered,
                        elapsed_ms = t.elapsed_ms as u64,
                        "registry notification: images checked"
                    ),
                    Err(e) => {
                        tracing::warn!(images = ?names, error = %e, "registry notification: check failed")
                    }
                }
            }
        });
        coalesced
    }

    /// Why the image trigger is off, if it is.
    pub fn off(&self) -> Option<String> {
        self.off.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this replica leads now: the leadership it holds is checked,
    /// or, without one, it tries to take it (followers try each tick, so a
    /// dead leader's place is taken within one interval).
    async fn leads(&self, app: &App) -> Result<bool, StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(leader) = held.as_mut() {
            if leader.still_leads().await {
                return Ok(true);
            }
            tracing::warn!(replica = %app.replica, "image watch: leadership lost");
            *held = None;
        }
        *held = app.store.lead(IMAGE_WATCH).await?;
        if held.is_some() {
            tracing::info!(replica = %app.replica, "image watch: this replica leads");
        }
        Ok(held.is_some())
    }
}

#[async_trait]
impl Loop for ImageWatcher {
    type Error = WatchError;

    fn name(&self) -> &'static str {
        IMAGE_WATCH
    }

    fn status(&self) -> &LoopStatus {
        &self.status
    }

    /// The first tick comes one interval after start (the git poller's at
    /// once): lookups count against registries' pull limits, and a daemon
    /// restarted often should not spend them on every start.
    fn first_at_once(&self) -> bool {
        false
    }

    fn interval(&self, app: &App, settings: &Settings) -> Duration {
        Duration::from_secs(
            settings
                .auto_deploy_image_watch_interval_seconds
                .max(app.image_watch_min_seconds),
        )
    }

    /// Probes `REGISTRY_ADDR` once. A failed probe leaves the image trigger
    /// off (and says why in the status API); nothing else is affected.
    async fn start(&self, _app: &App) -> Result<(), WatchError> {
        let Some(addr) = self.registry_addr.as_deref() else {
            return Ok(());
        };
        match self.registry.probe(addr).await {
            Ok(status) => {
                tracing::info!(registry = %addr, status, "registry reachable; image watcher on");
                Ok(())
            }
            Err(e) => {
                let reason = format!("registry {addr} is unreachable from the control plane: {e}");
                tracing::warn!("image trigger disabled: {reason}");
                *self.off.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
                Err(WatchError::Off(reason))
            }
        }
    }

    /// A follower's tick looks at nothing.
    async fn tick(
        &self,
        app: &Arc<App>,
        _cancel: &CancellationToken,
    ) -> Result<Ticked, WatchError> {
        let leads = self.leads(app).await?;
        self.status.set_leader(leads);
        if !leads {
            return Ok(Ticked { watched: Some(0) });
        }
        let t = self.tick_now(app).await?;
        Ok(Ticked {
            watched: Some(t.projects.len()),
        })
    }
}

/// What one project's compose file says, before any lookup.
struct Watched {
    project: ProjectRecord,
    /// What the watch plan was made on; the decision uses them too.
    facts: Facts,
    images: Vec<String>,
    skipped: Vec<String>,
}

impl ImageWatcher {
    /// One tick now, whether this replica leads or not (`POST
    /// /api/ticks/image-watch`, and the leader's own ticks).
    pub async fn tick_now(&self, app: &Arc<App>) -> Result<ImageTick, WatchError> {
        if let Some(reason) = self.off() {
            return Err(WatchError::Off(reason));
        }
        let _one_at_a_time = self.lock.lock().await;
        tick(app).await
    }
}

async fn tick(app: &Arc<App>) -> Result<ImageTick, WatchError> {
    tick_only(app, None).await
}

/// A tick; with `only`, just for the projects whose compose file uses one
/// of those images (all of such a project's images are looked up, since
/// `decide-images` takes a lookup for each).
async fn tick_only(
    app: &Arc<App>,
    only: Option<&BTreeSet<ImageRef>>,
) -> Result<ImageTick, WatchError> {
    let started = Instant::now();
    let base = FactBase::read(app).await?;
    let mut results = Vec::new();
    let mut not_watched = 0;
    // 1. Every compose file the watch plans name, read and parsed by the
    // policy; the projects are read a page at a time.
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut reads = tokio::task::JoinSet::new();
    let mut after = 0;
    loop {
        let page = app.store.projects_checked(after, PAGE).await?;
        let Some(last) = super::last_id(&page) else {
            break;
        };
        after = last;
        let (good, broken) = super::decodable(page);
        for b in broken {
            let error = super::unreadable(&b);
            let _ = app
                .store
                .log_event(Some(b.id), EventKind::ImageWatchFailed, &error)
                .await;
            results.push(ProjectWatch {
                project_id: b.id,
                name: b.name,
                images: vec![],
                skipped: vec![],
                image_errors: BTreeMap::new(),
                outcome: Outcome::Error { error },
            });
        }
        for (project, facts, plan) in super::watch_plans(app, &base, good).await {
            match plan {
                Ok(plan) if plan.watch_images => {
                    let (app, permits) = (app.clone(), permits.clone());
                    reads.spawn(async move {
                        let listed = match permits.acquire_owned().await {
                            Ok(_permit) => list_images(&app, &project).await,
                            Err(_) => Err("the tick was stopped".to_string()),
                        };
                        (project, facts, listed)
                    });
                }
                Ok(_) => not_watched += 1,
                Err(error) => {
                    let _ = app
                        .store
                        .log_event(Some(project.id), EventKind::ImageWatchFailed, &error)
                        .await;
                    results.push(result(&project, vec![], vec![], Outcome::Error { error }));
                }
            }
        }
    }
    let mut watched = Vec::new();
    while let Some(joined) = reads.join_next().await {
        let (project, facts, listed) = match joined {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "a compose read task failed");
                continue;
            }
        };
        match listed {
            Ok(Some((images, skipped))) => watched.push(Watched {
                project,
                facts,
                images,
                skipped,
            }),
            Ok(None) => results.push(result(
                &project,
                vec![],
                vec![],
                Outcome::NoComposeFile {
                    reason: format!(
                        "{} is not on {}: nothing to watch",
                        project.fields.compose_file_path, project.fields.git_branch
                    ),
                },
            )),
            Err(error) => {
                let _ = app
                    .store
                    .log_event(Some(project.id), EventKind::ImageWatchFailed, &error)
                    .await;
                results.push(result(&project, vec![], vec![], Outcome::Error { error }));
            }
        }
    }

    if let Some(only) = only {
        watched.retain(|w| {
            w.images
                .iter()
                .any(|i| ImageRef::parse(i).is_ok_and(|r| only.contains(&r)))
        });
    }

    // 2. Each distinct (image, credential) once, for every project that
    // uses it: projects with no credential of their own for an image's
    // registry share the daemon's lookup; a project's own credential gets
    // its own lookup (shared only with projects holding the very same
    // credential), so one project's access never answers for another.
    let own = project_credentials(app, &watched).await?;
    let mut invalid: BTreeMap<String, Lookup> = BTreeMap::new();
    let mut keys: BTreeSet<(ImageRef, Whose)> = BTreeSet::new();
    for w in &watched {
        for image in &w.images {
            match ImageRef::parse(image) {
                Ok(r) => {
                    let whose = own.whose(w.project.id, &r);
                    keys.insert((r, whose));
                }
                Err(e) => {
                    if !invalid.contains_key(image) {
                        tracing::warn!(image = %image, error = %e, "not a valid image reference; previous digests are kept");
                        invalid.insert(image.clone(), Lookup::Failed(e));
                    }
                }
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending: BTreeMap<tokio::task::Id, (ImageRef, Whose)> = BTreeMap::new();
    for (key_image, whose) in &keys {
        let (app, permits, image) = (app.clone(), permits.clone(), key_image.clone());
        let credential = own.credential(whose);
        let handle = tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return Lookup::Failed("the tick was stopped".into());
            };
            let credential = match credential {
                Ok(c) => c,
                Err(e) => return Lookup::Failed(e),
            };
            match app
                .loops
                .image_watch
                .registry
                .manifest_digest(&image, credential.as_ref())
                .await
            {
                Ok(d) => Lookup::Digest(d),
                Err(e) => {
                    tracing::warn!(image = %image, error = %e, "digest lookup failed; previous digests are kept");
                    Lookup::Failed(e.to_string())
                }
            }
        });
        pending.insert(handle.id(), (key_image.clone(), whose.clone()));
    }
    let mut looked_up: BTreeMap<(ImageRef, Whose), Lookup> = BTreeMap::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        // A lookup that panicked is a failed lookup for its images (their
        // previous digests are kept), never a silent gap in the map.
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => {
                tracing::error!(error = %e, "a digest lookup task failed");
                (e.id(), Lookup::Failed(format!("the lookup failed: {e}")))
            }
        };
        if let Some(key) = pending.remove(&id) {
            looked_up.insert(key, result);
        }
    }
    let lookup_failures = looked_up
        .values()
        .filter(|l| matches!(l, Lookup::Failed(_)))
        .count();
    let lookups_made = looked_up.len();
    let project_lookups = |w: &Watched| -> BTreeMap<String, Lookup> {
        w.images
            .iter()
            .filter_map(|i| {
                let found = match ImageRef::parse(i) {
                    Ok(r) => {
                        let whose = own.whose(w.project.id, &r);
                        looked_up.get(&(r, whose)).cloned()
                    }
                    Err(_) => invalid.get(i).cloned(),
                };
                found.map(|l| (i.clone(), l))
            })
            .collect()
    };

    // 3. The policy decides for each project.
    for w in watched {
        let span = tracing::info_span!("trigger", project = w.project.id, source = "auto-image");
        let lookups = project_lookups(&w);
        let image_errors = lookups
            .iter()
            .filter_map(|(i, l)| match l {
                Lookup::Failed(e) => Some((i.clone(), e.clone())),
                _ => None,
            })
            .collect();
        let outcome = decide(app, &w, lookups).instrument(span).await;
        let mut watch = result(&w.project, w.images, w.skipped, outcome);
        watch.image_errors = image_errors;
        results.push(watch);
    }
    results.sort_by_key(|r| r.project_id);
    Ok(ImageTick {
        paused: !base.master_enabled(),
        not_watched,
        lookups: lookups_made,
        lookup_failures,
        triggered: results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Triggered { .. }))
            .count(),
        failed: results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
            .count(),
        elapsed_ms: started.elapsed().as_millis(),
        projects: results,
    })
}

fn result(
    p: &ProjectRecord,
    images: Vec<String>,
    skipped: Vec<String>,
    outcome: Outcome,
) -> ProjectWatch {
    ProjectWatch {
        project_id: p.id,
        name: p.fields.name.clone(),
        images,
        skipped,
        image_errors: BTreeMap::new(),
        outcome,
    }
}

/// The compose file at the branch tip, parsed by the policy: `Ok(None)`
/// when the file is not there.
async fn list_images(
    app: &Arc<App>,
    project: &ProjectRecord,
) -> Result<Option<(Vec<String>, Vec<String>)>, String> {
    let f = &project.fields;
    let (branch, file) = (f.git_branch.clone(), f.compose_file_path.clone());
    let cap = app.git_timeout;
    let read = match f.git_source {
        GitSource::Hosted => {
            // A local read: a blocking thread, back soon whatever the file.
            let path = crate::git::hosted_path(&app.repo_dir, project.id);
            let local =
                tokio::task::spawn_blocking(move || crate::git::hosted_file(&path, &branch, &file));
            match tokio::time::timeout(cap, local).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => return Err(format!("reading the compose file failed: {e}")),
                Err(_) => {
                    return Err(format!(
                        "reading the compose file did not finish within {cap:?}"
                    ));
                }
            }
        }
        GitSource::External => {
            // Over the network: a child process, killed at the cap.
            let credential = crate::triggers::credential(app, project.id)
                .await
                .map_err(|e| e.to_string())?;
            let url = f.git_url.clone().unwrap_or_default();
            let scratch = app.data_dir.join("tmp");
            crate::git::isolated::remote_file(
                &url,
                &branch,
                &file,
                credential.as_ref(),
                project.ssh_known_hosts.as_deref(),
                &scratch,
                cap,
            )
            .await
        }
    };
    let yaml = match read {
        Ok(Some(yaml)) => yaml,
        Ok(None) => return Ok(None),
        Err(GitError::Timeout { timeout, .. }) => {
            return Err(format!(
                "reading the compose file did not finish within {timeout:?}"
            ));
        }
        Err(e) => return Err(read_error(e)),
    };
    let file = &project.fields.compose_file_path;
    // An unchanged file is answered from the memo here, without a trip to a
    // decision thread; only a call that really ran is logged.
    let memo = app.policy.memo();
    let active = app.policy.current().info().sha256.clone();
    let parsed = match memo.cached(&active, &yaml) {
        Some(answer) => answer.map_err(|e| format!("{file}: {e}"))?,
        None => {
            let generation = memo.generation();
            let decided = app
                .decide_call(Call::ParseCompose { yaml: yaml.clone() })
                .await;
            match decided.answer {
                Ok(Answer::ParseCompose(answer)) => {
                    memo.remember(&decided.policy.sha256, &yaml, &answer, generation);
                    answer.map_err(|e| format!("{file}: {e}"))?
                }
                Ok(other) => {
                    return Err(format!(
                        "{file}: the policy answered parse-compose with {}",
                        other.to_json()
                    ));
                }
                Err(e) => return Err(format!("{file}: {e}")),
            }
        }
    };
    if !parsed.skipped.is_empty() {
        tracing::info!(project = project.id, skipped = ?parsed.skipped, "images using variables are not watched");
    }
    Ok(Some((parsed.images, parsed.skipped)))
}

fn read_error(e: GitError) -> String {
    format!("cannot read the compose file: {e}")
}

async fn decide(app: &Arc<App>, w: &Watched, lookups: BTreeMap<String, Lookup>) -> Outcome {
    let prior = w.project.last_tracked_image_digests.clone();
    let decided = app
        .decide_call(Call::DecideImages {
            project: w.project.policy_view(),
            facts: w.facts.clone(),
            prior: prior.clone(),
            lookups,
        })
        .await;
    let d = match decided.answer {
        Ok(Answer::DecideImages(d)) => d,
        Ok(other) => {
            return Outcome::Error {
                error: format!("the policy answered decide-images with {}", other.to_json()),
            };
        }
        Err(e) => {
            return Outcome::Error {
                error: format!("the policy could not decide: {e}"),
            };
        }
    };
    if d.trigger {
        let t = Trigger {
            source: DeploySource::AutoImage,
            target_commit: None,
            target_digests: Some(d.record.clone()),
            reason: d.reason.clone(),
            track_commit: None,
            track_digests: Some(d.record),
            decided_on_commit: None,
            decisions: vec![decided.decision],
            from_deployment: None,
        };
        return match pipeline::trigger(app, &w.project, t).await {
            Ok(dep) if dep.status == DeployStatus::Failed => Outcome::Failed {
                deployment: dep.id,
                error: dep.error.unwrap_or_default(),
            },
            Ok(dep) => Outcome::Triggered {
                deployment: dep.id,
                reason: d.reason,
            },
            // The project changed (say, Auto Deploy switched off) while
            // this tick decided: nothing was written, the next tick decides
            // on the new state. Not a failure of the trigger.
            Err(StoreError::Stale(_)) => Outcome::Unchanged {
                reason: "the project changed while this tick decided; the next tick decides again"
                    .into(),
            },
            Err(e) => Outcome::Error {
                error: e.to_string(),
            },
        };
    }
    if d.record != prior {
        if let Err(e) = app.store.set_image_digests(w.project.id, &d.record).await {
            return Outcome::Error {
                error: e.to_string(),
            };
        }
        return Outcome::Recorded { reason: d.reason };
    }
    Outcome::Unchanged { reason: d.reason }
}

/// Whose credential an image lookup is made with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Whose {
    /// The daemon's (REGISTRY_ADDR, docker config, helpers), or none.
    Daemon,
    /// A project's own, by its fingerprint.
    Project(String),
    /// A project's own that cannot be unsealed.
    Unsealable { project: i64, registry: String },
}

/// The watched projects' own registry credentials, unsealed for this tick.
#[derive(Default)]
struct OwnCredentials {
    /// Project → (registry host, its credential; `None`: unsealable).
    by_project: BTreeMap<i64, Vec<(String, Option<Credential>)>>,
    by_fingerprint: BTreeMap<String, Credential>,
}

impl OwnCredentials {
    fn whose(&self, project: i64, image: &ImageRef) -> Whose {
        let Some((registry, c)) = self
            .by_project
            .get(&project)
            .and_then(|all| all.iter().find(|(r, _)| same_host(r, &image.registry)))
        else {
            return Whose::Daemon;
        };
        match c {
            Some(c) => Whose::Project(c.fingerprint()),
            None => Whose::Unsealable {
                project,
                registry: registry.clone(),
            },
        }
    }

    fn credential(&self, whose: &Whose) -> Result<Option<Credential>, String> {
        match whose {
            Whose::Daemon => Ok(None),
            Whose::Project(f) => Ok(self.by_fingerprint.get(f).cloned()),
            Whose::Unsealable { project, registry } => Err(format!(
                "project {project}'s credential for {registry} cannot be unsealed (wrong AUTODEPLOY_SECRET_KEY, or the database was altered)"
            )),
        }
    }
}

/// Every watched project's own registry credentials, read in one query.
async fn project_credentials(app: &App, watched: &[Watched]) -> Result<OwnCredentials, StoreError> {
    let mut own = OwnCredentials::default();
    if watched.is_empty() {
        return Ok(own);
    }
    let ids: BTreeSet<i64> = watched.iter().map(|w| w.project.id).collect();
    for (project, c) in app.store.all_registry_credentials().await? {
        if !ids.contains(&project) {
            continue;
        }
        let credential = match app.key.unseal(&c.sealed) {
            Ok(password) => {
                let credential = Credential::Basic {
                    user: c.username,
                    password,
                };
                own.by_fingerprint
                    .insert(credential.fingerprint(), credential.clone());
                Some(credential)
            }
            Err(e) => {
                tracing::error!(project, registry = %c.registry, error = %e, "cannot unseal the project's registry credential");
                None
            }
        };
        own.by_project
            .entry(project)
            .or_default()
            .push((c.registry, credential));
    }
    Ok(own)
}
