//! The data a policy sees and returns, mirroring the WIT records.
//!
//! The serde forms are the JSON shapes of the conformance vectors
//! (tests/conformance/vectors.json); the host's own types serialize the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectKind {
    #[default]
    Deployment,
    Compose,
    Image,
    Tunnel,
    DomainOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitSource {
    #[default]
    Hosted,
    External,
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
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeImages {
    pub images: Vec<String>,
    pub skipped: Vec<String>,
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
