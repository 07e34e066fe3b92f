//! The data a policy sees and returns: the contract's plain types, so that
//! the host, this policy and any other share one definition.

pub use autodeploy_policy_contract::model::*;
