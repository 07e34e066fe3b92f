//! The wit-bindgen layer: converts WIT types to the contract's plain types and
//! back. No decision is made here. One contract version is exported per build.

#[cfg(not(feature = "wit-0-1-0"))]
mod v0_2_0 {
    crate::export_policy_v0_2_0!("../policy-contract/wit/policy@0.2.0", crate::DefaultPolicy);
}

#[cfg(feature = "wit-0-1-0")]
mod v0_1_0;
