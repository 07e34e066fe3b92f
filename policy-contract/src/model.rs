//! The data a policy sees and returns, mirroring the WIT records of
//! `autodeploy:policy@0.2.0` (0.1.0 is the same without `facts`, `labels`,
//! `trigger-source` and `watch-plan`).
//!
//! The serde forms are the JSON shapes of the conformance vectors and of the
//! decision log, so a recorded call can be read back and replayed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ProjectKind {
    #[default]
    Deployment,
    Compose,
    Image,
    Tunnel,
    DomainOnly,
}

impl ProjectKind {
    /// The kind's name as the API and the policy's reasons write it.
    pub fn name(self) -> &'static str {
        match self {
            ProjectKind::Deployment => "deployment",
            ProjectKind::Compose => "compose",
            ProjectKind::Image => "image",
            ProjectKind::Tunnel => "tunnel",
            ProjectKind::DomainOnly => "domain_only",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitSource {
    #[default]
    Hosted,
    External,
}

/// What fired a decision; the same names as a deployment's `source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerSource {
    #[default]
    Manual,
    AutoPoll,
    AutoPush,
    AutoImage,
}

impl TriggerSource {
    pub fn is_automatic(self) -> bool {
        self != TriggerSource::Manual
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub kind: ProjectKind,
    pub git_source: GitSource,
    pub git_branch: String,
    pub auto_deploy_enabled: bool,
    pub last_tracked_commit: String,
    pub expose_service: Option<String>,
    pub expose_port: Option<u32>,
    /// The user's labels; a 0.1.0 policy never sees them.
    pub labels: BTreeMap<String, String>,
}

impl Default for Project {
    fn default() -> Self {
        Project {
            id: String::new(),
            name: String::new(),
            kind: ProjectKind::default(),
            git_source: GitSource::default(),
            git_branch: "main".into(),
            auto_deploy_enabled: false,
            last_tracked_commit: String::new(),
            expose_service: None,
            expose_port: None,
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedNode {
    pub name: String,
    pub state: NodeState,
}

/// The state of the world at the moment of a decision, gathered by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Facts {
    pub auto_deploy_master_enabled: bool,
    /// Whole seconds since the Unix epoch, UTC.
    pub now_unix_seconds: i64,
    /// The operator's configuration for the policy; empty when none.
    pub config: String,
    pub pinned_node: Option<PinnedNode>,
    /// The project kinds the deploy agents can run.
    pub agent_kinds: Vec<ProjectKind>,
}

impl Default for Facts {
    /// The facts of a plain running daemon: master switch on, no config, not
    /// pinned, and agents that run compose and image projects.
    fn default() -> Self {
        Facts {
            auto_deploy_master_enabled: true,
            now_unix_seconds: 0,
            config: String::new(),
            pinned_node: None,
            agent_kinds: vec![ProjectKind::Compose, ProjectKind::Image],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMeta {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeImages {
    pub images: Vec<String>,
    pub skipped: Vec<String>,
}

/// Which automatic triggers look at a project at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchPlan {
    pub poll_commits: bool,
    pub reconcile_pushes: bool,
    pub watch_images: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitDecision {
    pub trigger: bool,
    pub record: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    Digest(String),
    #[serde(rename = "error")]
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestChange {
    pub image: String,
    pub previous: String,
    pub current: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDecision {
    pub trigger: bool,
    pub record: BTreeMap<String, String>,
    pub moved: Vec<DigestChange>,
    pub added: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed(String),
    Refused(String),
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Allowed(r) | Verdict::Refused(r) => r,
        }
    }
}
