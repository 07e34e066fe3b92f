//! The default autodeploy policy.
//!
//! Every decision is a plain function over plain data (`model`), so it can be
//! unit tested natively; `component` is the thin wit-bindgen layer that exports
//! these functions as `autodeploy:policy/decisions@0.1.0` when built for wasm32.

pub mod compose;
pub mod decide;
pub mod model;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(not(target_arch = "wasm32"))]
pub mod vectors;

pub use compose::parse_compose;
pub use decide::{check_auto_deploy, check_deployable, decide_commit, decide_images};

/// The name this policy reports through `policy-info`.
pub const POLICY_NAME: &str = "autodeploy-default";
/// The version this policy reports through `policy-info`.
pub const POLICY_VERSION: &str = env!("CARGO_PKG_VERSION");
