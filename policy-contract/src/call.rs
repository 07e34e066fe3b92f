//! One policy call and its answer as data: what the decision log stores, what
//! replay and shadow re-run against another policy, and what the conformance
//! vectors describe. The serde form is `{"call": "decide-commit", "input":
//! {...}}`; an answer is `{"ok": ...}` or `{"error": "..."}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{
    CommitDecision, ComposeImages, Facts, ImageDecision, Lookup, PolicyMeta, Project,
    TriggerSource, Verdict, WatchPlan,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", content = "input", rename_all = "kebab-case")]
// Omitted arguments take their defaults (a default project, the facts of a
// plain running daemon, a manual source): the 0.1.0 vectors name no facts,
// and a vector only spells out what it is about.
pub enum Call {
    PolicyInfo,
    ParseCompose {
        yaml: String,
    },
    WatchPlan {
        #[serde(default)]
        project: Project,
        #[serde(default)]
        facts: Facts,
    },
    DecideCommit {
        #[serde(default)]
        project: Project,
        #[serde(default)]
        facts: Facts,
        #[serde(default)]
        source: TriggerSource,
        #[serde(default)]
        remote_head: Option<String>,
    },
    DecideImages {
        #[serde(default)]
        project: Project,
        #[serde(default)]
        facts: Facts,
        #[serde(default)]
        prior: BTreeMap<String, String>,
        #[serde(default)]
        lookups: BTreeMap<String, Lookup>,
    },
    CheckAutoDeploy {
        #[serde(default)]
        project: Project,
        #[serde(default)]
        facts: Facts,
        #[serde(default)]
        enable: bool,
    },
    CheckDeployable {
        #[serde(default)]
        project: Project,
        #[serde(default)]
        facts: Facts,
        #[serde(default)]
        source: TriggerSource,
    },
}

impl Call {
    /// The WIT function's name.
    pub fn name(&self) -> &'static str {
        match self {
            Call::PolicyInfo => "policy-info",
            Call::ParseCompose { .. } => "parse-compose",
            Call::WatchPlan { .. } => "watch-plan",
            Call::DecideCommit { .. } => "decide-commit",
            Call::DecideImages { .. } => "decide-images",
            Call::CheckAutoDeploy { .. } => "check-auto-deploy",
            Call::CheckDeployable { .. } => "check-deployable",
        }
    }

    /// The project the call is about, if any.
    pub fn project(&self) -> Option<&Project> {
        match self {
            Call::PolicyInfo | Call::ParseCompose { .. } => None,
            Call::WatchPlan { project, .. }
            | Call::DecideCommit { project, .. }
            | Call::DecideImages { project, .. }
            | Call::CheckAutoDeploy { project, .. }
            | Call::CheckDeployable { project, .. } => Some(project),
        }
    }

    /// The facts the call was made with, if any (replay swaps their config).
    pub fn facts_mut(&mut self) -> Option<&mut Facts> {
        match self {
            Call::PolicyInfo | Call::ParseCompose { .. } => None,
            Call::WatchPlan { facts, .. }
            | Call::DecideCommit { facts, .. }
            | Call::DecideImages { facts, .. }
            | Call::CheckAutoDeploy { facts, .. }
            | Call::CheckDeployable { facts, .. } => Some(facts),
        }
    }
}

/// A policy's answer to one [`Call`]; the variant matches the call's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    PolicyInfo(PolicyMeta),
    ParseCompose(Result<ComposeImages, String>),
    WatchPlan(WatchPlan),
    DecideCommit(Result<CommitDecision, String>),
    DecideImages(ImageDecision),
    CheckAutoDeploy(Verdict),
    CheckDeployable(Verdict),
}

impl Answer {
    /// The answer as the vectors and the decision log write it.
    pub fn to_json(&self) -> Value {
        fn ok<T: Serialize>(v: &T) -> Value {
            json!({ "ok": v })
        }
        fn res<T: Serialize>(r: &Result<T, String>) -> Value {
            match r {
                Ok(v) => ok(v),
                Err(e) => json!({ "error": e }),
            }
        }
        match self {
            Answer::PolicyInfo(v) => ok(v),
            Answer::ParseCompose(r) => res(r),
            Answer::WatchPlan(v) => ok(v),
            Answer::DecideCommit(r) => res(r),
            Answer::DecideImages(v) => ok(v),
            Answer::CheckAutoDeploy(v) | Answer::CheckDeployable(v) => ok(v),
        }
    }
}
