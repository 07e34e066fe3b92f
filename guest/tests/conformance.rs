//! The shared conformance vectors, run natively against the guest's functions.

use autodeploy_guest::vectors::{cases, check, run_native};

#[test]
fn every_vector_passes_natively() {
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the contract asks for at least 40 vectors"
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case, &run_native(case)).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
