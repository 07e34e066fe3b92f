//! The default autodeploy policy.
//!
//! Every decision is a plain function over plain data (the contract's
//! `model`), so it can be unit tested natively and reused by other policies
//! (depend on this crate with `default-features = false`). `decide` answers
//! `autodeploy:policy@0.2.0`, gates included, as [`DefaultPolicy`]; `v0_1_0`
//! answers 0.1.0, where the host gates. `component` is the thin wit-bindgen
//! layer that exports one of them when built for wasm32: 0.2.0 (through
//! [`export_policy_v0_2_0!`], which other policy crates use too), or 0.1.0
//! with the `wit-0-1-0` feature.

pub mod compose;
pub mod decide;
mod export;
pub mod model;
pub mod v0_1_0;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;

use std::collections::BTreeMap;

use autodeploy_policy_contract::{Answer, Call};

pub use autodeploy_policy_contract::Decisions;
pub use compose::parse_compose;
pub use decide::{check_auto_deploy, check_deployable, decide_commit, decide_images, watch_plan};

/// The name this policy reports through `policy-info`.
pub const POLICY_NAME: &str = "autodeploy-default";
/// The version this policy reports through `policy-info`.
pub const POLICY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `policy-info` answers.
pub fn policy_meta() -> model::PolicyMeta {
    model::PolicyMeta {
        name: POLICY_NAME.into(),
        version: POLICY_VERSION.into(),
    }
}

/// The default policy, as the contract's 0.2.0 [`Decisions`]: the functions
/// of `decide` (and `compose`).
pub struct DefaultPolicy;

impl Decisions for DefaultPolicy {
    fn policy_info() -> model::PolicyMeta {
        policy_meta()
    }

    fn parse_compose(yaml: &str) -> Result<model::ComposeImages, String> {
        parse_compose(yaml)
    }

    fn watch_plan(project: &model::Project, facts: &model::Facts) -> model::WatchPlan {
        watch_plan(project, facts)
    }

    fn decide_commit(
        project: &model::Project,
        facts: &model::Facts,
        source: model::TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<model::CommitDecision, String> {
        decide_commit(project, facts, source, remote_head)
    }

    fn decide_images(
        project: &model::Project,
        facts: &model::Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, model::Lookup>,
    ) -> model::ImageDecision {
        decide_images(project, facts, prior, lookups)
    }

    fn check_auto_deploy(
        project: &model::Project,
        facts: &model::Facts,
        enable: bool,
    ) -> model::Verdict {
        check_auto_deploy(project, facts, enable)
    }

    fn check_deployable(
        project: &model::Project,
        facts: &model::Facts,
        source: model::TriggerSource,
    ) -> model::Verdict {
        check_deployable(project, facts, source)
    }
}

/// Answers one call as the 0.1.0 component does: facts, sources and labels
/// are not part of 0.1.0 and are ignored. `None` for `watch-plan`, which
/// 0.1.0 does not have.
pub fn answer_v0_1_0(call: &Call) -> Option<Answer> {
    Some(match call {
        Call::PolicyInfo => Answer::PolicyInfo(policy_meta()),
        Call::ParseCompose { yaml } => Answer::ParseCompose(parse_compose(yaml)),
        Call::WatchPlan { .. } => return None,
        Call::DecideCommit {
            project,
            remote_head,
            ..
        } => Answer::DecideCommit(v0_1_0::decide_commit(project, remote_head.as_deref())),
        Call::DecideImages {
            project,
            prior,
            lookups,
            ..
        } => Answer::DecideImages(v0_1_0::decide_images(project, prior, lookups)),
        Call::CheckAutoDeploy {
            project, enable, ..
        } => Answer::CheckAutoDeploy(v0_1_0::check_auto_deploy(project, *enable)),
        Call::CheckDeployable { project, .. } => {
            Answer::CheckDeployable(v0_1_0::check_deployable(project))
        }
    })
}
