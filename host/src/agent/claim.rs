//! What the agent reads of a claim: the deployment, its project's settings,
//! the state to restore when it fails, and the git credential for this one
//! deploy (never stored by the agent).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::AgentCredential;
use crate::store::{GitSource, ProjectType};

#[derive(Deserialize)]
pub struct Claimed {
    pub deployment: ClaimedDeployment,
    pub project: ClaimedProject,
    /// The previous successful deployment's state; `None` when there is none.
    #[serde(default)]
    pub restore: Option<Restore>,
    pub credential: Option<AgentCredential>,
}

#[derive(Deserialize)]
pub struct ClaimedDeployment {
    pub id: i64,
    pub target_commit: Option<String>,
    /// Image reference → the digest the policy decided on.
    #[serde(default)]
    pub target_digests: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
pub struct ClaimedProject {
    pub id: i64,
    pub name: String,
    pub project_type: ProjectType,
    pub git_source: GitSource,
    pub git_url: Option<String>,
    pub git_branch: String,
    pub compose_file_path: String,
    #[serde(default)]
    pub expose_service: Option<String>,
    pub expose_port: Option<i64>,
    pub image_ref: Option<String>,
    pub container_port: Option<i64>,
    #[serde(default)]
    pub ssh_known_hosts: Option<String>,
    #[serde(default = "default_dockerfile")]
    pub dockerfile_path: String,
    #[serde(default)]
    pub health_probe_path: Option<String>,
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u64,
    #[serde(default)]
    pub rollback: Rollback,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_health_timeout() -> u64 {
    60
}

/// What the agent does when a deploy fails its deploy or health gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rollback {
    Off,
    /// Fail, and name the deployment to roll back to.
    Notify,
    #[default]
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Restore {
    pub deployment: i64,
    pub commit: Option<String>,
    pub digests: Option<BTreeMap<String, String>>,
}

/// A state to bring up: a commit (compose and deployment projects) and the
/// image digests to pin.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub commit: Option<String>,
    pub digests: Option<BTreeMap<String, String>>,
}

impl Claimed {
    pub fn target(&self) -> Target {
        Target {
            commit: self.deployment.target_commit.clone(),
            digests: self.deployment.target_digests.clone(),
        }
    }
}

impl Restore {
    pub fn target(&self) -> Target {
        Target {
            commit: self.commit.clone(),
            digests: self.digests.clone(),
        }
    }
}
