//! The conformance vectors against the built component: each answer must meet
//! the vector and equal the native answer of the guest crate, reasons included.

mod common;

use autodeploy::policy::selftest::{run_case, self_test};
use autodeploy_guest::vectors::{cases, check, run_native};

#[test]
fn component_meets_every_vector_and_matches_native() {
    let policy = common::bundled();
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let component = run_case(&policy, case).expect("the component answers");
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

#[test]
fn every_vector_and_the_self_test_pass_with_both_cores_saturated() {
    let policy = common::bundled();
    let load = common::load::CpuLoad::saturate();
    while load.spins() == 0 {
        std::thread::yield_now();
    }
    let failures = self_test(&policy);
    assert!(
        failures.is_empty(),
        "the self-test failed under load: {failures:?}"
    );
    for case in &cases() {
        let component =
            run_case(&policy, case).unwrap_or_else(|e| panic!("case {:?}: {e}", case.name));
        assert_eq!(component, run_native(case), "case {:?}", case.name);
    }
}
