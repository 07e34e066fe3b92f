//! The sync-windows policy: the default policy's decisions, held back while
//! Argo CD-style sync windows say no.
//!
//! The operator's config (the opaque `facts.config`, JSON, see `config`)
//! lists allow and deny windows, each a cron schedule, a duration and a time
//! zone, matched to projects by label. Time comes only from
//! `facts.now_unix_seconds`: the component imports nothing, not even a clock.
//! With an empty config it decides exactly as the default policy does.

pub mod config;
pub mod cron;
pub mod decide;
pub mod gate;
pub mod recurrence;

// The wit-bindgen layer, shared with the default policy: it converts the WIT
// types to the contract's plain types and back, and decides nothing.
#[cfg(target_arch = "wasm32")]
mod component {
    autodeploy_guest::export_policy_v0_2_0!(
        "../../policy-contract/wit/policy@0.2.0",
        crate::SyncWindows
    );
}

pub use autodeploy_policy_contract::Decisions;
pub use decide::{
    POLICY_NAME, POLICY_VERSION, SyncWindows, check_auto_deploy, check_deployable, decide_commit,
    decide_images, parse_compose, policy_meta, watch_plan,
};
