//! Persistent state: projects, credentials, settings, deployments, deploy
//! nodes and the event log, behind the `Store` trait.
//!
//! `SqlStore` implements it once for every backend with sqlx's `Any` driver
//! and runtime queries, one module per aggregate; the schema lives in
//! migrations/<backend>/.

mod browse;
mod claims;
mod db;
mod decisions;
mod deployments;
mod events;
mod leases;
mod logs;
mod migrate;
mod nodes;
mod notifications;
pub mod notify;
mod policies;
mod projects;
mod registry_creds;
mod sessions;
mod settings;
mod sql;
mod text_enum;
mod webhooks;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

pub use db::SqlStore;
pub(crate) use db::enum_str;
pub use decisions::{
    DEPLOYMENT_DECISION_IDS, Decision, DecisionCall, DecisionQuery, DecisionRecord, Pruned,
};
pub use leases::{Leader, LeaseClaim};
pub use logs::MAX_LOG;
pub use notifications::{
    ClaimedNotification, Delivery, NewTarget, NotificationTarget, NotifyEvent, OutboxEntry,
    OutboxState, TargetKind, now_ms,
};
pub use policies::{ActivePolicy, NativeCode, NewPolicy, StoredPolicy};
pub use settings::{
    DECISION_LOG_MIN_ROWS, IMAGE_WATCH_MIN_SECONDS, POLL_MIN_SECONDS, SettingError, Settings,
    numeric_settings, set_image_watch_min,
};
pub use text_enum::UnknownValue;
use text_enum::text_enum;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration {name}: {source}")]
    Migration { name: String, source: sqlx::Error },
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl(String),
    /// The URL and the reason, both without the URL's password.
    #[error("connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A trigger decided on a tracked state that another trigger has since
    /// moved, or on an Auto Deploy toggle flipped since: nothing was
    /// written; decide again on the fresh state.
    #[error(
        "project {0}: the tracked state or the Auto Deploy toggle moved while this trigger was decided"
    )]
    Stale(i64),
    /// The work a new project needed inside its transaction (its hosted
    /// repository) failed: nothing was written.
    #[error("setting up the new project: {0}")]
    SetUp(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Seconds since the epoch; every timestamp in the store is one.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a pinned compose project's deployment cannot run while its node is offline.
pub fn refuse_to_migrate(node: &str) -> String {
    format!(
        "node {node} is offline; this compose project is pinned to it (its named volumes live there), refusing to migrate"
    )
}

text_enum! {
    /// What a project is, as stored and as the API and the agent name it. The
    /// policy has its own enum for this; [`ProjectRecord::policy_view`] converts.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum ProjectType {
        #[default]
        Deployment = "deployment",
        Compose = "compose",
        Image = "image",
        Tunnel = "tunnel",
        DomainOnly = "domain_only",
    }
}

text_enum! {
    /// Where a project's repository lives: served by the daemon, or elsewhere.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum GitSource {
        #[default]
        Hosted = "hosted",
        External = "external",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectRecord {
    pub id: i64,
    #[serde(flatten)]
    pub fields: ProjectFields,
    pub last_tracked_commit_sha: String,
    pub last_tracked_image_digests: BTreeMap<String, String>,
    pub pinned_node_id: Option<i64>,
    /// Labels a node must carry (all pairs) to claim this project's
    /// deployments; empty: any node.
    pub node_selector: BTreeMap<String, String>,
    pub credentials: Option<CredentialInfo>,
    /// SSH host keys pinned in known_hosts form; `None` accepts any.
    pub ssh_known_hosts: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProjectRecord {
    /// What the policy may know about the project.
    pub fn policy_view(&self) -> crate::policy::Project {
        crate::policy::Project {
            id: self.id.to_string(),
            last_tracked_commit: self.last_tracked_commit_sha.clone(),
            ..self.fields.policy_view()
        }
    }
}

/// A project row that does not decode (damaged, or written by hand): what
/// could be read of it, and why the rest could not.
#[derive(Debug, Clone)]
pub struct BrokenProject {
    pub id: i64,
    pub name: String,
    pub project_type: Option<ProjectType>,
    pub git_source: Option<GitSource>,
    pub auto_deploy_enabled: Option<bool>,
    pub error: String,
}

/// The fields a user sets; the tracked state is the pipeline's alone.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectFields {
    pub name: String,
    pub project_type: ProjectType,
    pub git_source: GitSource,
    /// Shown without any password a row from an older version may hold.
    #[serde(serialize_with = "shown_git_url")]
    pub git_url: Option<String>,
    pub git_branch: String,
    pub compose_file_path: String,
    pub expose_service: Option<String>,
    pub expose_port: Option<i64>,
    pub auto_deploy_enabled: bool,
    /// Image projects: the image to run and the port it serves on.
    pub image_ref: Option<String>,
    pub container_port: Option<i64>,
    /// The user's own labels; the policy sees them, the daemon does not
    /// interpret them.
    pub labels: BTreeMap<String, String>,
    /// How the agent builds and checks a deploy; not in the policy's view.
    #[serde(flatten)]
    pub deploy: DeploySettings,
}

/// A project's build and health-gate settings: the agent reads them with
/// the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploySettings {
    /// `deployment` projects: the Dockerfile, relative to the repository.
    pub dockerfile_path: String,
    /// An HTTP path on the exposed port that must answer 2xx/3xx after `up`.
    pub health_probe_path: Option<String>,
    /// How long the health gate waits for the services.
    pub health_timeout_seconds: i64,
    pub rollback: RollbackMode,
}

impl DeploySettings {
    pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";
    pub const DEFAULT_HEALTH_TIMEOUT: i64 = 60;
    pub const MIN_HEALTH_TIMEOUT: i64 = 5;
    pub const MAX_HEALTH_TIMEOUT: i64 = 3600;
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            dockerfile_path: Self::DEFAULT_DOCKERFILE.into(),
            health_probe_path: None,
            health_timeout_seconds: Self::DEFAULT_HEALTH_TIMEOUT,
            rollback: RollbackMode::Auto,
        }
    }
}

fn shown_git_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref().map(crate::git::shown_url).serialize(s)
}

impl ProjectFields {
    /// The policy's view of a project with these fields and no history.
    pub fn policy_view(&self) -> crate::policy::Project {
        crate::policy::Project {
            id: String::new(),
            name: self.name.clone(),
            kind: self.project_type.into(),
            git_source: self.git_source.into(),
            git_branch: self.git_branch.clone(),
            auto_deploy_enabled: self.auto_deploy_enabled,
            last_tracked_commit: String::new(),
            expose_service: self.expose_service.clone(),
            expose_port: self.expose_port.and_then(|p| u32::try_from(p).ok()),
            labels: self.labels.clone(),
        }
    }
}

// The one place where the store's enums become the policy's: the two evolve
// apart (a contract version is frozen once released; the store's is not).
impl From<ProjectType> for crate::policy::ProjectKind {
    fn from(t: ProjectType) -> Self {
        use crate::policy::ProjectKind as K;
        match t {
            ProjectType::Deployment => K::Deployment,
            ProjectType::Compose => K::Compose,
            ProjectType::Image => K::Image,
            ProjectType::Tunnel => K::Tunnel,
            ProjectType::DomainOnly => K::DomainOnly,
        }
    }
}

impl From<GitSource> for crate::policy::GitSource {
    fn from(s: GitSource) -> Self {
        match s {
            GitSource::Hosted => crate::policy::GitSource::Hosted,
            GitSource::External => crate::policy::GitSource::External,
        }
    }
}

/// A credential as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    pub kind: CredentialKind,
    pub username: Option<String>,
}

text_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CredentialKind {
        Https = "https",
        Ssh = "ssh",
    }
}

/// A project's credential for one registry host, the password sealed with
/// the daemon's key.
#[derive(Debug, Clone)]
pub struct SealedRegistryCredential {
    /// `host[:port]`, lower-cased (`docker.io` for Docker Hub).
    pub registry: String,
    pub username: String,
    pub sealed: String,
}

/// A credential as stored: the secret sealed with the daemon's key.
#[derive(Debug, Clone)]
pub struct SealedCredential {
    pub kind: CredentialKind,
    pub username: Option<String>,
    pub sealed: String,
}

text_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DeploySource {
        Manual = "manual",
        AutoPoll = "auto-poll",
        AutoPush = "auto-push",
        AutoImage = "auto-image",
    }
}

impl From<DeploySource> for crate::policy::TriggerSource {
    fn from(s: DeploySource) -> Self {
        use crate::policy::TriggerSource;
        match s {
            DeploySource::Manual => TriggerSource::Manual,
            DeploySource::AutoPoll => TriggerSource::AutoPoll,
            DeploySource::AutoPush => TriggerSource::AutoPush,
            DeploySource::AutoImage => TriggerSource::AutoImage,
        }
    }
}

text_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DeployStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// It failed its deploy or health gate and the node restored the
        /// previous successful deployment's state.
        RolledBack = "rolled_back",
        Cancelled = "cancelled",
    }
}

impl DeployStatus {
    /// Whether a deployment with this status is over: nothing changes it
    /// any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, DeployStatus::Queued | DeployStatus::Running)
    }
}

text_enum! {
    /// What the agent does when a deployment fails its deploy or health gate.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum RollbackMode {
        /// Report the failure; change nothing.
        Off = "off",
        /// Report the failure and name the deployment to roll back to.
        Notify = "notify",
        /// Restore the previous successful deployment's state.
        #[default]
        Auto = "auto",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub project_id: i64,
    /// The first source that fed this deployment.
    pub source: DeploySource,
    /// Every source that fed it, in the order they first did.
    pub sources: Vec<DeploySource>,
    pub status: DeployStatus,
    pub target_commit: Option<String>,
    pub target_digests: Option<BTreeMap<String, String>>,
    pub reason: String,
    pub error: Option<String>,
    /// Triggers this deployment absorbed while it was queued, itself included.
    pub trigger_count: i64,
    /// A failure before the node: how many identical consecutive failures
    /// were folded into this row, itself included, and when the last was.
    pub repeat_count: i64,
    pub last_seen_at: i64,
    pub policy_name: String,
    pub policy_version: String,
    pub policy_sha256: String,
    pub node_id: Option<i64>,
    pub log_tail: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// What the node reported running after `up`: the commit checked out
    /// and each image's digest (a built image: its local image id).
    pub ran_commit: Option<String>,
    pub ran_digests: Option<BTreeMap<String, String>>,
    /// A manual redeploy: the deployment whose recorded state it deploys.
    pub from_deployment: Option<i64>,
    /// A person asked to cancel it while it ran; the node sees it on its
    /// next log post.
    pub cancel_requested: bool,
    /// The decisions that made this deployment (every trigger it absorbed
    /// or folded), oldest first; at most [`DEPLOYMENT_DECISION_IDS`].
    pub decision_ids: Vec<i64>,
}

impl Deployment {
    /// What it ran, as a restore or a redeploy deploys it again: the
    /// node's report, or its target where the node did not say.
    pub fn recorded_state(&self) -> Restore {
        Restore {
            deployment: self.id,
            commit: self
                .ran_commit
                .clone()
                .or_else(|| self.target_commit.clone()),
            digests: self
                .ran_digests
                .clone()
                .or_else(|| self.target_digests.clone()),
        }
    }
}

/// One trigger, as the pipeline hands it to the store: written with the
/// project's new tracked state in one transaction.
#[derive(Debug, Clone)]
pub struct TriggerWrite {
    pub project_id: i64,
    pub source: DeploySource,
    pub target_commit: Option<String>,
    pub target_digests: Option<BTreeMap<String, String>>,
    pub reason: String,
    /// Set when the deploy cannot go ahead: recorded as a failed deployment.
    pub failure: Option<String>,
    /// The node a pinned project's deployment must run on.
    pub node_id: Option<i64>,
    pub policy_name: String,
    pub policy_version: String,
    pub policy_sha256: String,
    pub track_commit: Option<String>,
    pub track_digests: Option<BTreeMap<String, String>>,
    /// The tracked commit this trigger was decided on: when set and the
    /// project's differs, nothing is written ([`StoreError::Stale`]).
    pub decided_on_commit: Option<String>,
    /// The Auto Deploy toggle the decision saw: when set and the project's
    /// differs, nothing is written ([`StoreError::Stale`]), so a project
    /// switched off while a tick was deciding on it is not deployed.
    pub decided_with_auto_deploy: Option<bool>,
    /// The policy decisions that made this trigger: written in the same
    /// transaction as the deployment and linked to it.
    pub decisions: Vec<DecisionRecord>,
    /// A manual redeploy of this deployment's recorded state: always a new
    /// row (it absorbs no trigger and no trigger absorbs it).
    pub from_deployment: Option<i64>,
}

/// What `/metrics` reads from the store at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// Deployments queued, not yet claimed by a node.
    pub queued: i64,
    /// Nodes seen at or after `online_since`.
    pub nodes_online: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
}

impl Node {
    pub fn online(&self, now: i64, offline_after: i64) -> bool {
        self.last_seen_at
            .is_some_and(|seen| now - seen <= offline_after)
    }
}

/// Whether a node with `labels` may run a project with `selector`: every
/// pair of the selector is among the labels.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What deleting a node did.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDeletion {
    pub node: Node,
    /// Names of the projects that were pinned to it (with `force` only).
    pub unpinned: Vec<String>,
    /// Ids of the deployments it held, now failed.
    pub failed_deployments: Vec<i64>,
}

/// A claimed deployment with what the agent needs to run it.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub deployment: Deployment,
    pub project: ProjectRecord,
    /// The state to go back to when this deploy fails or is cancelled.
    pub restore: Option<Restore>,
}

/// The project's newest succeeded deployment (other than the claimed one):
/// what it ran, or what it targeted when the node did not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restore {
    pub deployment: i64,
    pub commit: Option<String>,
    pub digests: Option<BTreeMap<String, String>>,
}

/// A node's report on a deployment it runs.
#[derive(Debug, Clone)]
pub struct DeployReport<'a> {
    pub status: DeployStatus,
    pub log_tail: Option<&'a str>,
    pub error: Option<&'a str>,
    pub ran_commit: Option<&'a str>,
    pub ran_digests: Option<&'a BTreeMap<String, String>>,
}

/// What cancelling a deployment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued: it is cancelled and will never run.
    Now,
    /// It runs: its node is told on its next log post.
    Requested,
}

/// What a log chunk from a node came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// Stored (or already there); whether a cancel was requested.
    Stored { cancel: bool },
    /// The chunk starts past what was received: bytes are missing.
    Gap { received: i64 },
}

/// A piece of a deployment's stored log, from byte `offset` to `next`.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    pub offset: i64,
    pub next: i64,
    pub text: String,
    /// The deployment is over: no more text will come.
    pub done: bool,
}

/// A deployment was queued or its status changed: what the web UI's live
/// view hears. Sent by the replica that made the change, after it
/// committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeploymentChange {
    pub project_id: i64,
    pub deployment_id: i64,
    pub status: DeployStatus,
}

impl From<&Deployment> for DeploymentChange {
    fn from(d: &Deployment) -> Self {
        DeploymentChange {
            project_id: d.project_id,
            deployment_id: d.id,
            status: d.status,
        }
    }
}

/// A project as a line of a list (the web UI's, the CLI's table): with its
/// newest deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectSummary {
    pub id: i64,
    pub name: String,
    pub project_type: ProjectType,
    pub git_source: GitSource,
    pub auto_deploy_enabled: bool,
    pub created_at: i64,
    pub last_status: Option<DeployStatus>,
    /// When the newest deployment last changed.
    pub last_at: Option<i64>,
}

/// Which projects a list shows; `None` does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFilter {
    /// Part of the name, any case.
    pub name_contains: Option<String>,
    pub project_type: Option<ProjectType>,
    pub auto_deploy_enabled: Option<bool>,
}

/// A web UI sign-in, kept by the sha256 of its cookie's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// The token every form of the session carries.
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub project_id: Option<i64>,
    pub kind: EventKind,
    pub message: String,
}

text_enum! {
    /// Every kind of event the daemon records; stored and served as its text.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum EventKind {
        ProjectCreated = "project.created",
        ProjectDeleted = "project.deleted",
        AutoDeployToggled = "auto-deploy.toggled",
        PushTokenRotated = "push-token.rotated",
        SettingsChanged = "settings.changed",
        PolicySwitched = "policy.switched",
        PolicyRolledBack = "policy.rolled-back",
        PolicyShadowStarted = "policy.shadow-started",
        PolicyShadowStopped = "policy.shadow-stopped",
        PolicyConfigChanged = "policy.config-changed",
        NodeAdded = "node.added",
        NodeDeleted = "node.deleted",
        ProjectUnpinned = "project.unpinned",
        DeployTriggered = "deploy.triggered",
        DeployClaimed = "deploy.claimed",
        DeployReported = "deploy.reported",
        DeployFailed = "deploy.failed",
        DeployCancelled = "deploy.cancelled",
        Push = "push",
        PollFailed = "poll.failed",
        ReconcileFailed = "reconcile.failed",
        ImageWatchFailed = "image-watch.failed",
        SshKnownHostsChanged = "ssh-known-hosts.changed",
        WebhookSecretRotated = "webhook.secret-rotated",
        NotificationTargetAdded = "notification.target-added",
        NotificationTargetDeleted = "notification.target-deleted",
        /// A project's registry credential was set or replaced (the
        /// registry and username are named; never the password).
        RegistryCredentialSet = "registry-credential.set",
        RegistryCredentialDeleted = "registry-credential.deleted",
        /// A git host webhook was refused (bad signature, unknown project,
        /// wrong event, oversized body): a security event.
        WebhookRefused = "webhook.refused",
        /// A registry notification was refused (wrong secret, malformed or
        /// oversized body): a security event.
        RegistryHookRefused = "registry-hook.refused",
    }
}

/// A project to create, with everything a user may set at creation.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub fields: ProjectFields,
    pub push_token_hash: Option<String>,
    pub credential: Option<SealedCredential>,
    pub ssh_known_hosts: Option<String>,
    pub node_selector: BTreeMap<String, String>,
}

/// Work a new project needs done before it may exist (its hosted
/// repository), run inside its transaction with its id; an `Err` writes
/// nothing.
pub type SetUp =
    dyn Fn(i64) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync;

/// One user action on a project, written in one transaction: every part
/// present is written, or none is. `None` leaves a part as it is.
#[derive(Debug, Clone, Default)]
pub struct ProjectChange {
    pub fields: Option<ProjectFields>,
    /// `Some(None)` removes the credential.
    pub credential: Option<Option<SealedCredential>>,
    /// `Some(None)` accepts any SSH host key again.
    pub ssh_known_hosts: Option<Option<String>>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub push_token_hash: Option<String>,
    /// Logged with the change.
    pub events: Vec<(EventKind, String)>,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn create_project(
        &self,
        fields: &ProjectFields,
        push_token_hash: Option<&str>,
        credential: Option<&SealedCredential>,
    ) -> Result<ProjectRecord>;
    async fn project(&self, id: i64) -> Result<ProjectRecord>;
    /// Up to `limit` projects with an id above `after`, in id order, each
    /// row decoded on its own: a corrupt row is an error for that project
    /// only.
    async fn projects_checked(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>>;
    /// Claims the next batch of projects above `after` for a git poll
    /// check under a lease (see [`LeaseClaim`]).
    async fn claim_projects(
        &self,
        claim: &LeaseClaim,
        after: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>>;
    /// Ends every lease `owner` holds; with `checked_at`, stamps those
    /// projects checked then.
    async fn release_projects(&self, owner: &str, checked_at: Option<i64>) -> Result<()>;
    /// Extends every lease `owner` holds to `lease_until` (a tick still
    /// running); the number of projects renewed.
    async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<u64>;
    /// The leadership of `role`, when no other replica holds it.
    async fn lead(&self, role: &str) -> Result<Option<Leader>>;
    async fn update_project(&self, id: i64, fields: &ProjectFields) -> Result<ProjectRecord>;
    /// Creates a project with its credential, pins, selector and event in
    /// one transaction; `set_up` runs inside it (see [`SetUp`]).
    async fn create_project_with(
        &self,
        new: &NewProject,
        set_up: Option<&SetUp>,
    ) -> Result<ProjectRecord>;
    /// Applies one user action to a project in one transaction.
    async fn change_project(&self, id: i64, change: &ProjectChange) -> Result<ProjectRecord>;
    /// Up to `limit` projects with ids above `after`, by id.
    async fn projects_page(&self, after: Option<i64>, limit: i64) -> Result<Vec<ProjectRecord>>;
    async fn delete_project(&self, id: i64) -> Result<()>;
    async fn credential(&self, project_id: i64) -> Result<Option<SealedCredential>>;
    async fn project_by_push_token_hash(&self, project_id: i64, hash: &str) -> Result<bool>;

    async fn settings(&self) -> Result<Settings>;
    async fn put_settings(&self, values: &BTreeMap<String, String>) -> Result<Settings>;

    async fn admin_token_count(&self) -> Result<i64>;
    async fn add_admin_token(&self, hash: &str) -> Result<()>;
    async fn admin_token_exists(&self, hash: &str) -> Result<bool>;

    /// Writes a trigger in one transaction. A `failure` (before any node) is
    /// a failed deployment, folded into the newest deployment when that one
    /// failed the same way for the same target, and leaves the tracked state
    /// alone so the next tick tries again. Otherwise the project's queued
    /// deployment absorbs the trigger (keeping its first reason, adding the
    /// source) or a new one is queued, and the tracked state is recorded.
    async fn record_trigger(&self, write: &TriggerWrite) -> Result<Deployment>;
    /// Records image digests that deploy nothing (a first watch, an added or
    /// removed image, a failed lookup keeping the old digest).
    async fn set_image_digests(
        &self,
        project_id: i64,
        digests: &BTreeMap<String, String>,
    ) -> Result<()>;
    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>>;
    /// Up to `limit` of a project's deployments with ids below `before`,
    /// newest first.
    async fn deployments_page(
        &self,
        project_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Deployment>>;
    async fn deployment(&self, id: i64) -> Result<Deployment>;

    /// Adds a node and logs it, in one transaction.
    async fn add_node(
        &self,
        name: &str,
        token_hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Node>;
    async fn nodes(&self) -> Result<Vec<Node>>;
    /// The numbers `/metrics` reads at scrape time: two counts on indexed
    /// columns, whatever the number of projects.
    async fn observed(&self, online_since: i64) -> Result<Observed>;
    /// Up to `limit` nodes with ids above `after`, by id.
    async fn nodes_page(&self, after: Option<i64>, limit: i64) -> Result<Vec<Node>>;
    async fn node(&self, id: i64) -> Result<Node>;
    async fn node_by_token_hash(&self, hash: &str) -> Result<Option<Node>>;
    /// Deletes a node. Projects pinned to it make this a conflict naming
    /// them, unless `force`: then they are unpinned, each with an event. The
    /// deployments it held (queued for it or running) are failed with a
    /// reason. All in one transaction.
    async fn delete_node(&self, id: i64, force: bool) -> Result<NodeDeletion>;
    /// Whether the node runs a deployment of the project right now: only
    /// then may its token fetch the project's hosted repository.
    async fn node_holds_project(&self, node_id: i64, project_id: i64) -> Result<bool>;
    async fn heartbeat(&self, node_id: i64, at: i64) -> Result<()>;
    /// Hands the oldest deployment this node may run to it (its project's
    /// node selector must match the node's labels), pinning an unpinned
    /// compose project to the node.
    async fn claim(&self, node_id: i64) -> Result<Option<Claim>>;
    async fn report(
        &self,
        node_id: i64,
        deployment_id: i64,
        status: DeployStatus,
        log_tail: Option<&str>,
        error: Option<&str>,
    ) -> Result<Deployment> {
        let report = DeployReport {
            status,
            log_tail,
            error,
            ran_commit: None,
            ran_digests: None,
        };
        self.report_deploy(node_id, deployment_id, &report).await
    }
    /// Records a node's report on a deployment it runs; a conflict when it
    /// is not running there (another node's, or already over).
    async fn report_deploy(
        &self,
        node_id: i64,
        deployment_id: i64,
        report: &DeployReport<'_>,
    ) -> Result<Deployment>;
    /// Cancels deployment `id` of project `project_id`: a queued one at
    /// once, a running one by asking its node. A conflict when it is over.
    async fn cancel_deployment(&self, project_id: i64, id: i64) -> Result<(Deployment, Cancelled)>;
    /// Adds a chunk of a running deployment's log that its node sent,
    /// starting at byte `offset` of the whole log; the part already
    /// received is skipped, so a retried chunk is stored once.
    async fn append_log(
        &self,
        node_id: i64,
        deployment_id: i64,
        offset: i64,
        chunk: &str,
    ) -> Result<LogAppend>;
    /// Deployment `id`'s stored log from byte `after`, at most `limit`
    /// bytes.
    async fn deployment_log(&self, id: i64, after: i64, limit: usize) -> Result<LogPage>;
    /// Fails the queued and running deployments of nodes not seen since
    /// `seen_before`; returns them.
    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>>;

    async fn log_event(
        &self,
        project_id: Option<i64>,
        kind: EventKind,
        message: &str,
    ) -> Result<()>;
    async fn events(&self, project_id: Option<i64>, limit: i64) -> Result<Vec<Event>>;
    /// Up to `limit` events (all, or one project's) with ids below
    /// `before`, newest first.
    async fn events_page(
        &self,
        project_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Event>>;

    /// Writes decisions that made no deployment, in one transaction.
    async fn record_decisions(&self, records: &[DecisionRecord]) -> Result<()>;
    /// Decisions, newest first.
    async fn decisions(&self, query: &DecisionQuery) -> Result<Vec<Decision>>;
    /// Deletes decisions made before `older_than` (Unix seconds), then all
    /// but the newest `max_rows`.
    async fn prune_decisions(&self, max_rows: u64, older_than: i64) -> Result<Pruned>;

    /// The policy every replica runs, if one was stored yet.
    async fn active_policy(&self) -> Result<Option<ActivePolicy>>;
    async fn stored_policy(&self, sha256: &str) -> Result<Option<StoredPolicy>>;
    /// The native code kept for `sha256` and the engine `engine_hash`, as
    /// stored: unchecked.
    async fn native_code(&self, sha256: &str, engine_hash: &str) -> Result<Option<NativeCode>>;
    /// Keeps (or replaces) the native code of a stored policy for one engine.
    async fn put_native_code(&self, sha256: &str, native: &NativeCode) -> Result<()>;
    /// Keeps `new` and makes it active when no policy is yet; returns the
    /// active one either way. Tells the other replicas.
    async fn seed_policy(&self, new: &NewPolicy) -> Result<ActivePolicy>;
    /// Keeps `new` and makes it active, the active one becoming previous,
    /// in one transaction. Tells the other replicas.
    async fn switch_policy(&self, new: &NewPolicy) -> Result<ActivePolicy>;
    /// Gives the active policy `config`; a conflict when the active policy
    /// is no longer `sha256`. Tells the other replicas.
    async fn set_policy_config(&self, sha256: &str, config: &str) -> Result<ActivePolicy>;
    /// Makes the previous policy active again; `None` when there is none.
    /// Tells the other replicas.
    async fn rollback_policy(&self) -> Result<Option<ActivePolicy>>;

    /// Deployment changes made through this store from now on.
    fn deployment_changes(&self) -> tokio::sync::broadcast::Receiver<DeploymentChange>;
    /// Hands live views a change another replica told (`origin` is that
    /// replica's store id; this store's own are already sent).
    fn relay_deployment_change(&self, origin: u64, change: DeploymentChange);
    /// Up to `limit` project lines with ids above `after` that pass
    /// `filter`, by id.
    async fn project_summaries(
        &self,
        filter: &ProjectFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ProjectSummary>>;
    /// (node id, project id, project name) of every project pinned to a node.
    async fn pinned_projects(&self) -> Result<Vec<(i64, i64, String)>>;
    /// Keeps a new web session (and drops the expired ones).
    async fn create_web_session(&self, id_hash: &str, session: &WebSession) -> Result<()>;
    /// The session with this token hash, expired or not.
    async fn web_session(&self, id_hash: &str) -> Result<Option<WebSession>>;
    async fn delete_web_session(&self, id_hash: &str) -> Result<()>;

    /// Replaces a project's webhook secret (sealed) and logs it.
    async fn set_webhook_secret(&self, project_id: i64, sealed: &str) -> Result<()>;
    /// The project's sealed webhook secret, if it has one.
    async fn webhook_secret(&self, project_id: i64) -> Result<Option<String>>;
    /// Records a webhook delivery id until `expires_at`; false for a replay.
    async fn note_webhook_delivery(
        &self,
        project_id: i64,
        delivery_id: &str,
        expires_at: i64,
    ) -> Result<bool>;

    /// Adds a notification target (config sealed) and logs it.
    async fn add_notification_target(&self, target: &NewTarget) -> Result<NotificationTarget>;
    async fn notification_targets(&self) -> Result<Vec<NotificationTarget>>;
    async fn notification_target(&self, id: i64) -> Result<NotificationTarget>;
    /// Deletes a target with its queued messages, and logs it.
    async fn delete_notification_target(&self, id: i64) -> Result<()>;
    /// Queues `event` of a project (no deployment) for every target that
    /// wants it; the number of messages queued.
    async fn enqueue_notification(
        &self,
        project_id: Option<i64>,
        event: NotifyEvent,
        detail: &str,
    ) -> Result<u64>;
    /// Claims up to `limit` messages due at `now_ms`; none is due again
    /// before `until_ms` unless [`Store::finish_notification`] says so.
    async fn claim_notifications(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotification>>;
    async fn finish_notification(&self, id: i64, delivery: &Delivery) -> Result<()>;
    /// A target's newest queued messages, newest first.
    async fn notification_deliveries(&self, target_id: i64, limit: i64)
    -> Result<Vec<OutboxEntry>>;
    /// Drops messages sent or dead before `before` (Unix seconds).
    async fn prune_notifications(&self, before: i64) -> Result<u64>;
    /// Sets a project's credential for one registry host, replacing any.
    async fn set_registry_credential(
        &self,
        project_id: i64,
        credential: &SealedRegistryCredential,
    ) -> Result<()>;
    /// Whether the project had a credential for `registry` to delete.
    async fn delete_registry_credential(&self, project_id: i64, registry: &str) -> Result<bool>;
    async fn registry_credentials(&self, project_id: i64) -> Result<Vec<SealedRegistryCredential>>;
    /// Every project's registry credentials, by project.
    async fn all_registry_credentials(&self) -> Result<Vec<(i64, SealedRegistryCredential)>>;
}
