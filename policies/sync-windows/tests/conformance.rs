//! The contract's 0.2.0 conformance vectors, natively: with an empty config,
//! or windows that match no project, this policy answers as the default one.

use autodeploy_guest::DefaultPolicy;
use autodeploy_policy_contract::vectors::{self, Version};
use autodeploy_policy_contract::{Answer, Call, Decisions};
use autodeploy_sync_windows::SyncWindows;

/// Windows of every kind, none of which matches a project of the vectors (they
/// have no labels).
const UNMATCHED: &str = r#"{"windows":[
    {"kind":"deny","schedule":"* * * * *","duration":"1h","match_labels":{"env":"prod"},"manual":true},
    {"kind":"allow","schedule":"0 9 * * *","duration":"1h","match_labels":{"env":"prod"},"manual":true}]}"#;

/// The vectors' calls with `config` set to `config`; the name `policy-info`
/// reports is each policy's own.
fn calls(config: &str) -> Vec<(vectors::Case, Call)> {
    vectors::cases(Version::V0_2_0)
        .into_iter()
        .filter(|case| case.call != Call::PolicyInfo)
        .map(|case| {
            let mut call = case.call.clone();
            if let Some(facts) = call.facts_mut() {
                facts.config = config.into();
            }
            (case, call)
        })
        .collect()
}

fn failures(config: &str) -> Vec<String> {
    calls(config)
        .iter()
        .filter_map(|(case, call)| vectors::check_answer(case, &SyncWindows::answer(call)).err())
        .collect()
}

#[test]
fn vectors_pass_as_written() {
    // What the daemon's self-test runs before it switches to this policy.
    let failed: Vec<String> = vectors::cases(Version::V0_2_0)
        .iter()
        .filter(|case| case.call != Call::PolicyInfo)
        .filter_map(|case| vectors::check_answer(case, &SyncWindows::answer(&case.call)).err())
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn vectors_pass_with_an_empty_config() {
    let failed = failures("");
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn vectors_pass_with_windows_that_match_no_project() {
    let failed = failures(UNMATCHED);
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn with_an_empty_config_every_answer_is_the_default_policys() {
    let calls = calls("");
    assert!(calls.len() >= 40, "{} cases", calls.len());
    for (case, call) in &calls {
        let ours: Answer = SyncWindows::answer(call);
        assert_eq!(ours, DefaultPolicy::answer(call), "case {:?}", case.name);
    }
}
