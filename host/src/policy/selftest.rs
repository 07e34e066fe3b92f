//! Runs the contract's conformance vectors against a policy: the self-test a
//! new policy must pass before the daemon switches to it.

use autodeploy_guest::vectors::{Case, cases, check, outcome};
use serde_json::{Value, json};

use super::{Policy, PolicyError};

/// One case's answer from `policy`, in the vectors' terms. A failure of the
/// component itself (trap, budget, deadline) is returned as `Err`.
pub fn run_case(policy: &Policy, case: &Case) -> Result<Value, PolicyError> {
    fn answer<T: serde::Serialize>(r: Result<T, PolicyError>) -> Result<Value, PolicyError> {
        match r {
            Ok(v) => Ok(outcome(Ok(v))),
            Err(PolicyError::Rejected { message, .. }) => Ok(outcome::<()>(Err(message))),
            Err(other) => Err(other),
        }
    }
    let i = &case.input;
    match case.call.as_str() {
        "policy-info" => {
            let info = policy.info();
            Ok(outcome(Ok(
                json!({ "name": info.name, "version": info.version }),
            )))
        }
        "parse-compose" => answer(policy.parse_compose(&i.yaml)),
        "decide-commit" => answer(policy.decide_commit(&i.project, i.remote_head.as_deref())),
        "decide-images" => answer(policy.decide_images(&i.project, &i.prior, &i.lookups)),
        "check-auto-deploy" => answer(policy.check_auto_deploy(&i.project, i.enable)),
        "check-deployable" => answer(policy.check_deployable(&i.project)),
        other => Ok(outcome::<()>(Err(format!("unknown call {other:?}")))),
    }
}

/// Every failing case, described; empty when the policy passes. The
/// `policy-info` name is the policy's own business and is not checked. The
/// first trap or exhausted budget ends the test: one is reason enough to
/// refuse, and a looping policy would otherwise burn a budget per case.
pub fn self_test(policy: &Policy) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases().iter().filter(|case| case.call != "policy-info") {
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

/// A digest of the vectors [`self_test`] runs: a remembered pass holds for
/// these vectors only.
pub fn vectors_digest() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{:?}", cases())).into()
}
