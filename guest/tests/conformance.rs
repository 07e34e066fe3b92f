//! The contract's conformance vectors, run natively against the guest's
//! functions: 0.2.0 against `decide`, 0.1.0 against `v0_1_0`.

use autodeploy_guest::{Decisions, DefaultPolicy, answer_v0_1_0};
use autodeploy_policy_contract::Answer;
use autodeploy_policy_contract::vectors::{Version, cases, failures_native};

fn assert_passes(version: Version, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "v{version}: {} failing vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_0_2_0_vector_passes_natively() {
    assert!(cases(Version::V0_2_0).len() >= 80);
    assert_passes(
        Version::V0_2_0,
        failures_native(Version::V0_2_0, DefaultPolicy::answer),
    );
}

#[test]
fn every_0_1_0_vector_passes_natively() {
    assert!(
        cases(Version::V0_1_0).len() >= 40,
        "the contract asks for at least 40 vectors"
    );
    let failures = failures_native(Version::V0_1_0, |call| {
        answer_v0_1_0(call).unwrap_or_else(|| Answer::PolicyInfo(autodeploy_guest::policy_meta()))
    });
    assert_passes(Version::V0_1_0, failures);
}

#[test]
fn the_0_2_0_gates_change_0_1_0_answers_as_the_vectors_say() {
    // The 0.1.0 rules alone must fail the 0.2.0 gating vectors, or those
    // vectors test nothing the gates add.
    let ungated = failures_native(Version::V0_2_0, |call| {
        answer_v0_1_0(call).unwrap_or_else(|| DefaultPolicy::answer(call))
    });
    for gate in [
        "master switch off",
        "toggle off",
        "refuses to migrate",
        "no agent runs",
    ] {
        assert!(
            ungated.iter().any(|f| f.contains(gate)),
            "no vector about {gate:?} fails without the gates: {ungated:#?}"
        );
    }
}
