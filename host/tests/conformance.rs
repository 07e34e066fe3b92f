//! The conformance vectors against the built component: each answer must meet
//! the vector and equal the native answer of the guest crate, reasons included.

mod common;

use autodeploy::policy::PolicyError;
use autodeploy_guest::vectors::{Case, cases, check, outcome, run_native};
use serde_json::{Value, json};

fn run_component(policy: &autodeploy::policy::Policy, case: &Case) -> Value {
    let i = &case.input;
    match case.call.as_str() {
        "policy-info" => {
            let info = policy.info();
            outcome(Ok(json!({ "name": info.name, "version": info.version })))
        }
        "parse-compose" => outcome(rejected(&case.name, policy.parse_compose(&i.yaml))),
        "decide-commit" => outcome(rejected(
            &case.name,
            policy.decide_commit(&i.project, i.remote_head.as_deref()),
        )),
        "decide-images" => outcome(rejected(
            &case.name,
            policy.decide_images(&i.project, &i.prior, &i.lookups),
        )),
        "check-auto-deploy" => outcome(rejected(
            &case.name,
            policy.check_auto_deploy(&i.project, i.enable),
        )),
        "check-deployable" => outcome(rejected(&case.name, policy.check_deployable(&i.project))),
        other => panic!("case {:?}: unknown call {other:?}", case.name),
    }
}

/// The policy's own error value is an answer; any other failure fails the test.
fn rejected<T>(case: &str, r: Result<T, PolicyError>) -> Result<Value, String>
where
    T: serde::Serialize,
{
    match r {
        Ok(v) => Ok(serde_json::to_value(v).expect("answers serialize")),
        Err(PolicyError::Rejected { message, .. }) => Err(message),
        Err(other) => panic!("case {case:?}: the component failed: {other}"),
    }
}

#[test]
fn component_meets_every_vector_and_matches_native() {
    let policy = common::bundled();
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let component = run_component(&policy, case);
        if let Err(e) = check(case, &component) {
            failures.push(e);
        }
        let native = run_native(case);
        if native != component {
            failures.push(format!(
                "case {:?}: native {native} != component {component}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
