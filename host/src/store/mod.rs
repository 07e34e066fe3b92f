//! Persistent state: projects, credentials, settings, deployments, deploy
//! nodes and the event log, behind the `Store` trait.
//!
//! `SqlStore` implements it once for every backend with sqlx's `Any` driver
//! and runtime queries; the schema lives in migrations/<backend>/.

mod migrate;
mod settings;
mod sql;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::policy::{GitSource, ProjectKind};
pub use settings::{SettingError, Settings};
pub use sql::SqlStore;
pub(crate) use sql::enum_str;

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
    #[error("unsupported database URL {0:?}: use sqlite://PATH")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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

#[derive(Debug, Clone, Serialize)]
pub struct ProjectRecord {
    pub id: i64,
    #[serde(flatten)]
    pub fields: ProjectFields,
    pub last_tracked_commit_sha: String,
    pub last_tracked_image_digests: BTreeMap<String, String>,
    pub pinned_node_id: Option<i64>,
    pub credentials: Option<CredentialInfo>,
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
    pub project_type: Option<ProjectKind>,
    pub git_source: Option<GitSource>,
    pub auto_deploy_enabled: Option<bool>,
    pub error: String,
}

/// The fields a user sets; the tracked state is the pipeline's alone.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectFields {
    pub name: String,
    pub project_type: ProjectKind,
    pub git_source: GitSource,
    pub git_url: Option<String>,
    pub git_branch: String,
    pub compose_file_path: String,
    pub expose_service: Option<String>,
    pub expose_port: Option<i64>,
    pub auto_deploy_enabled: bool,
    /// Image projects: the image to run and the port it serves on.
    pub image_ref: Option<String>,
    pub container_port: Option<i64>,
}

impl ProjectFields {
    /// The policy's view of a project with these fields and no history.
    pub fn policy_view(&self) -> crate::policy::Project {
        crate::policy::Project {
            id: String::new(),
            name: self.name.clone(),
            kind: self.project_type,
            git_source: self.git_source,
            git_branch: self.git_branch.clone(),
            auto_deploy_enabled: self.auto_deploy_enabled,
            last_tracked_commit: String::new(),
            expose_service: self.expose_service.clone(),
            expose_port: self.expose_port.and_then(|p| u32::try_from(p).ok()),
        }
    }
}

/// A credential as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    pub kind: CredentialKind,
    pub username: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Https,
    Ssh,
}

/// A credential as stored: the secret sealed with the daemon's key.
#[derive(Debug, Clone)]
pub struct SealedCredential {
    pub kind: CredentialKind,
    pub username: Option<String>,
    pub sealed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploySource {
    Manual,
    AutoPoll,
    AutoPush,
    AutoImage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub project_id: i64,
    pub source: DeploySource,
    pub status: DeployStatus,
    pub target_commit: Option<String>,
    pub target_digests: Option<BTreeMap<String, String>>,
    pub reason: String,
    pub error: Option<String>,
    /// Triggers this deployment absorbed while it was queued, itself included.
    pub trigger_count: i64,
    pub policy_name: String,
    pub policy_version: String,
    pub policy_sha256: String,
    pub node_id: Option<i64>,
    pub log_tail: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
}

impl Node {
    pub fn online(&self, now: i64, offline_after: i64) -> bool {
        self.last_seen_at
            .is_some_and(|seen| now - seen <= offline_after)
    }
}

/// A claimed deployment with what the agent needs to run it.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub deployment: Deployment,
    pub project: ProjectRecord,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub project_id: Option<i64>,
    pub kind: String,
    pub message: String,
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
    async fn projects(&self) -> Result<Vec<ProjectRecord>>;
    /// Every project, each row decoded on its own: a corrupt row is an
    /// error for that project only.
    async fn projects_checked(&self) -> Result<Vec<Result<ProjectRecord, BrokenProject>>>;
    async fn update_project(&self, id: i64, fields: &ProjectFields) -> Result<ProjectRecord>;
    async fn delete_project(&self, id: i64) -> Result<()>;
    /// `None` removes the credential.
    async fn set_credential(
        &self,
        project_id: i64,
        credential: Option<&SealedCredential>,
    ) -> Result<()>;
    async fn credential(&self, project_id: i64) -> Result<Option<SealedCredential>>;
    async fn set_push_token_hash(&self, project_id: i64, hash: &str) -> Result<()>;
    async fn project_by_push_token_hash(&self, project_id: i64, hash: &str) -> Result<bool>;

    async fn settings(&self) -> Result<Settings>;
    async fn put_settings(&self, values: &BTreeMap<String, String>) -> Result<Settings>;

    async fn admin_token_count(&self) -> Result<i64>;
    async fn add_admin_token(&self, hash: &str) -> Result<()>;
    async fn admin_token_exists(&self, hash: &str) -> Result<bool>;

    /// Writes a trigger: a failed deployment when `failure` is set; else it
    /// updates the project's queued deployment if there is one, or queues a
    /// new one; and records the tracked state. All in one transaction.
    async fn record_trigger(&self, write: &TriggerWrite) -> Result<Deployment>;
    /// Records image digests that deploy nothing (a first watch, an added or
    /// removed image, a failed lookup keeping the old digest).
    async fn set_image_digests(
        &self,
        project_id: i64,
        digests: &BTreeMap<String, String>,
    ) -> Result<()>;
    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>>;
    async fn deployment(&self, id: i64) -> Result<Deployment>;

    async fn add_node(&self, name: &str, token_hash: &str) -> Result<Node>;
    async fn nodes(&self) -> Result<Vec<Node>>;
    async fn node(&self, id: i64) -> Result<Node>;
    async fn node_by_token_hash(&self, hash: &str) -> Result<Option<Node>>;
    async fn delete_node(&self, id: i64) -> Result<()>;
    async fn heartbeat(&self, node_id: i64, at: i64) -> Result<()>;
    /// Hands the oldest deployment this node may run to it, pinning an
    /// unpinned compose project to the node.
    async fn claim(&self, node_id: i64) -> Result<Option<Claim>>;
    async fn report(
        &self,
        node_id: i64,
        deployment_id: i64,
        status: DeployStatus,
        log_tail: Option<&str>,
        error: Option<&str>,
    ) -> Result<Deployment>;
    /// Fails the queued and running deployments of nodes not seen since
    /// `seen_before`; returns them.
    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>>;

    async fn log_event(&self, project_id: Option<i64>, kind: &str, message: &str) -> Result<()>;
    async fn events(&self, project_id: Option<i64>, limit: i64) -> Result<Vec<Event>>;
}
