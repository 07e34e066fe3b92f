//! Runs the contract's conformance vectors against a policy: the self-test a
//! new policy must pass before the daemon switches to it. A policy is tested
//! against the vectors of the contract version it implements, in that
//! version's own terms.

use autodeploy_policy_contract::vectors::{Case, cases, check};
use serde_json::Value;

use super::{Call, Policy, PolicyError};

/// One case's answer from `policy`, in the vectors' terms, read in the terms
/// of the policy's own contract version ([`Policy::run_own`]). A failure of
/// the component itself (trap, budget, deadline) is returned as `Err`.
pub fn run_case(policy: &Policy, case: &Case) -> Result<Value, PolicyError> {
    policy.run_own(&case.call).map(|a| a.to_json())
}

/// One case's answer in 0.2.0 terms ([`Policy::run`]): how the daemon reads
/// the policy, with the host's gates around a 0.1.0 component.
pub fn run_case_current(policy: &Policy, case: &Case) -> Result<Value, PolicyError> {
    policy.run(&case.call).map(|a| a.to_json())
}

/// Every failing case, described; empty when the policy passes. The
/// `policy-info` name is the policy's own business and is not checked. The
/// first trap or exhausted budget ends the test: one is reason enough to
/// refuse, and a looping policy would otherwise burn a budget per case.
pub fn self_test(policy: &Policy) -> Vec<String> {
    let mut failures = Vec::new();
    let all = cases(policy.wit_version());
    for case in all.iter().filter(|case| case.call != Call::PolicyInfo) {
        match run_case(policy, case) {
            Ok(answer) => failures.extend(check(case, &answer).err()),
            Err(e) => {
                failures.push(format!("case {:?}: {e}", case.name));
                break;
            }
        }
    }
    failures
}

/// A digest of the vectors [`self_test`] runs against `policy`: a
/// remembered pass holds for these vectors only.
pub fn vectors_digest(policy: &Policy) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{:?}", cases(policy.wit_version()))).into()
}
