//! The default autodeploy policy.
//!
//! Every decision is a plain function over plain data (the contract's
//! `model`), so it can be unit tested natively and reused by other policies
//! (depend on this crate with `default-features = false`). `decide` answers
//! `autodeploy:policy@0.2.0`, gates included; `v0_1_0` answers 0.1.0, where
//! the host gates. `component` is the thin wit-bindgen layer that exports one
//! of them when built for wasm32: 0.2.0, or 0.1.0 with the `wit-0-1-0`
//! feature.

pub mod compose;
pub mod decide;
pub mod model;
pub mod v0_1_0;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;

use autodeploy_policy_contract::{Answer, Call};

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

/// Answers one call as the 0.2.0 component does.
pub fn answer(call: &Call) -> Answer {
    match call {
        Call::PolicyInfo => Answer::PolicyInfo(policy_meta()),
        Call::ParseCompose { yaml } => Answer::ParseCompose(parse_compose(yaml)),
        Call::WatchPlan { project, facts } => Answer::WatchPlan(watch_plan(project, facts)),
        Call::DecideCommit {
            project,
            facts,
            source,
            remote_head,
        } => Answer::DecideCommit(decide_commit(
            project,
            facts,
            *source,
            remote_head.as_deref(),
        )),
        Call::DecideImages {
            project,
            facts,
            prior,
            lookups,
        } => Answer::DecideImages(decide_images(project, facts, prior, lookups)),
        Call::CheckAutoDeploy {
            project,
            facts,
            enable,
        } => Answer::CheckAutoDeploy(check_auto_deploy(project, facts, *enable)),
        Call::CheckDeployable {
            project,
            facts,
            source,
        } => Answer::CheckDeployable(check_deployable(project, facts, *source)),
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
