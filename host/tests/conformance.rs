//! The conformance vectors against the built components: the bundled 0.2.0
//! policy and the same policy built for 0.1.0 (a file, as an operator with an
//! old policy would load it).
//!
//! - 0.2.0 vectors against the 0.2.0 component, and against the 0.1.0
//!   component through the host's 0.1.0 adapter: the daemon reads both in
//!   0.2.0 terms, so both must pass, and answer identically, reasons
//!   included (the adapter's gates are worded as the default policy words
//!   them).
//! - 0.1.0 vectors against the 0.1.0 component in its own terms.
//!
//! The native comparison (the same code compiled natively) lives in the
//! guest's own tests: the daemon does not link the guest.

mod common;

use autodeploy::policy::selftest::{run_case, run_case_current, self_test};
use autodeploy::policy::{Policy, PolicyConfig, PolicyRuntime, WitVersion};
use autodeploy_policy_contract::vectors::{Version, cases, check};

fn v010() -> Policy {
    PolicyRuntime::new(PolicyConfig::default())
        .expect("policy runtime")
        .load_file(env!("AUTODEPLOY_POLICY_V010_WASM").as_ref())
        .expect("the 0.1.0 build loads")
}

fn assert_none(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn both_builds_declare_their_contract_version() {
    assert_eq!(common::bundled().wit_version(), WitVersion::V0_2_0);
    assert_eq!(common::bundled().info().wit_version, WitVersion::V0_2_0);
    assert_eq!(v010().wit_version(), WitVersion::V0_1_0);
}

#[test]
fn the_0_2_0_vectors_pass_on_both_builds_with_identical_answers() {
    let current = common::bundled();
    let old = v010();
    let all = cases(Version::V0_2_0);
    assert!(all.len() >= 80, "{} cases", all.len());
    let mut failures = Vec::new();
    for case in &all {
        let a = run_case_current(&current, case).expect("the 0.2.0 component answers");
        let b = run_case_current(&old, case).expect("the 0.1.0 component answers");
        failures.extend(check(case, &a).err().map(|e| format!("0.2.0: {e}")));
        failures.extend(check(case, &b).err().map(|e| format!("0.1.0 adapted: {e}")));
        if a != b {
            failures.push(format!(
                "case {:?}: 0.2.0 answered {a}, the adapted 0.1.0 build {b}",
                case.name
            ));
        }
    }
    assert_none("0.2.0 vectors", failures);
}

#[test]
fn the_0_1_0_vectors_pass_on_the_0_1_0_build_in_its_own_terms() {
    let old = v010();
    let all = cases(Version::V0_1_0);
    assert!(all.len() >= 40);
    let failures: Vec<String> = all
        .iter()
        .filter_map(|case| {
            let answer = run_case(&old, case).expect("the 0.1.0 component answers");
            check(case, &answer).err()
        })
        .collect();
    assert_none("0.1.0 vectors", failures);
    assert_none("0.1.0 self-test", self_test(&old));
}

#[test]
fn the_0_1_0_vectors_are_not_the_0_2_0_semantics() {
    // The self-test must pick the vectors of the policy's own version: a
    // 0.2.0 policy gates image decisions on the toggle, which the 0.1.0
    // vectors leave off, so some of them fail in 0.2.0 terms.
    let current = common::bundled();
    let failing = cases(Version::V0_1_0)
        .iter()
        .filter(|case| {
            let answer = run_case(&current, case).expect("answers");
            check(case, &answer).is_err()
        })
        .count();
    assert!(failing > 0);
    assert_none("0.2.0 self-test", self_test(&current));
}

#[test]
fn every_vector_and_the_self_test_pass_with_both_cores_saturated() {
    let current = common::bundled();
    let old = v010();
    let load = common::load::CpuLoad::saturate();
    while load.spins() == 0 {
        std::thread::yield_now();
    }
    assert_none("0.2.0 self-test under load", self_test(&current));
    assert_none("0.1.0 self-test under load", self_test(&old));
    for case in &cases(Version::V0_2_0) {
        let answer = run_case_current(&current, case)
            .unwrap_or_else(|e| panic!("case {:?}: {e}", case.name));
        assert!(check(case, &answer).is_ok(), "case {:?}", case.name);
    }
}
