//! The conformance vectors of each contract version (`vectors/v<version>.json`)
//! and how to judge an answer against them.
//!
//! A case names a call, its input and what the answer must show: `expect` is
//! matched as a subset (the string `"*"` means: present, any value),
//! `expect_error` is a substring of the policy's error value, and
//! `reason_contains` a substring of the answer. Omitted inputs take their
//! defaults ([`Facts::default`](crate::model::Facts), a default project, a
//! manual source).
//!
//! A guest runs them natively with [`run_native`]; the host runs them against
//! a built component as its self-test.

use serde::Deserialize;
use serde_json::{Value, json};

pub use crate::WitVersion as Version;
use crate::call::{Answer, Call};

const V0_1_0: &str = include_str!("../vectors/v0.1.0.json");
const V0_2_0: &str = include_str!("../vectors/v0.2.0.json");

/// The vector file of `version`, as JSON text.
pub fn source(version: Version) -> &'static str {
    match version {
        Version::V0_1_0 => V0_1_0,
        Version::V0_2_0 => V0_2_0,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    pub call: Call,
    pub expect: Option<Value>,
    pub expect_error: Option<String>,
    pub reason_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    call: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    expect: Option<Value>,
    #[serde(default)]
    expect_error: Option<String>,
    #[serde(default)]
    reason_contains: Option<String>,
}

#[derive(Deserialize)]
struct File {
    cases: Vec<RawCase>,
}

/// Every case of `version`'s vectors, in file order.
pub fn cases(version: Version) -> Vec<Case> {
    parse(source(version)).unwrap_or_else(|e| panic!("vectors v{version} are invalid: {e}"))
}

/// Reads a vector file; an unknown call or input field is an error, so a typo
/// in a case cannot silently test a default instead.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    file.cases
        .into_iter()
        .map(|raw| {
            let call =
                to_call(&raw.call, &raw.input).map_err(|e| format!("case {:?}: {e}", raw.name))?;
            Ok(Case {
                name: raw.name,
                call,
                expect: raw.expect,
                expect_error: raw.expect_error,
                reason_contains: raw.reason_contains,
            })
        })
        .collect()
}

fn to_call(name: &str, input: &Value) -> Result<Call, String> {
    let empty = match input {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if name == "policy-info" {
        // A unit variant carries no input at all.
        return if empty {
            Ok(Call::PolicyInfo)
        } else {
            Err("policy-info takes no input".into())
        };
    }
    let input = if empty { json!({}) } else { input.clone() };
    let call: Call = serde_json::from_value(json!({ "call": name, "input": input }))
        .map_err(|e| format!("call {name:?}: {e}"))?;
    let written = serde_json::to_value(&call).map_err(|e| e.to_string())?;
    if let (Value::Object(given), Some(Value::Object(known))) = (&input, written.get("input")) {
        let unknown: Vec<&String> = given.keys().filter(|k| !known.contains_key(*k)).collect();
        if !unknown.is_empty() {
            return Err(format!("{name} has no input {unknown:?}"));
        }
    }
    Ok(call)
}

/// Runs one case against a native implementation: `policy` answers a call as
/// the component would. Returns the answer in the vectors' terms.
pub fn run_native(case: &Case, policy: impl FnOnce(&Call) -> Answer) -> Value {
    policy(&case.call).to_json()
}

/// Every failing case of `version` against a native implementation, described;
/// empty when all pass.
pub fn failures_native(version: Version, mut policy: impl FnMut(&Call) -> Answer) -> Vec<String> {
    cases(version)
        .iter()
        .filter_map(|case| check(case, &run_native(case, &mut policy)).err())
        .collect()
}

/// Judges an answer (`{"ok": ...}` or `{"error": "..."}`, as
/// [`Answer::to_json`] writes it) against the case's expectations.
pub fn check(case: &Case, outcome: &Value) -> Result<(), String> {
    let fail = |why: String| Err(format!("case {:?}: {why}; got {outcome}", case.name));
    if let Some(wanted) = &case.expect_error {
        return match outcome.get("error").and_then(Value::as_str) {
            Some(e) if e.contains(wanted.as_str()) => Ok(()),
            _ => fail(format!("expected an error containing {wanted:?}")),
        };
    }
    let Some(ok) = outcome.get("ok") else {
        return fail("expected an answer, not an error".into());
    };
    if let Some(Err(path)) = case.expect.as_ref().map(|e| subset(e, ok, String::new())) {
        return fail(format!("mismatch at {path}"));
    }
    if let Some(wanted) = &case.reason_contains
        && !ok.to_string().contains(wanted.as_str())
    {
        return fail(format!("expected the reason to contain {wanted:?}"));
    }
    Ok(())
}

/// [`check`] for an answer still in its typed form.
pub fn check_answer(case: &Case, answer: &Answer) -> Result<(), String> {
    check(case, &answer.to_json())
}

/// Every key of `expect` must be in `got` with an equal value; the string
/// `"*"` in `expect` only asks that the key be present.
fn subset(expect: &Value, got: &Value, path: String) -> Result<(), String> {
    match (expect, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (key, want) in e {
                let here = format!("{path}.{key}");
                match g.get(key) {
                    None => return Err(here),
                    Some(_) if want == "*" => {}
                    Some(have) => subset(want, have, here)?,
                }
            }
            Ok(())
        }
        (e, g) if e == g => Ok(()),
        _ => Err(if path.is_empty() { ".".into() } else { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Facts, ProjectKind, TriggerSource};

    fn case(json: Value) -> Case {
        let text = json!({ "cases": [json] }).to_string();
        parse(&text).unwrap().remove(0)
    }

    #[test]
    fn both_vector_files_load_and_name_distinct_cases() {
        for version in Version::ALL {
            let all = cases(version);
            assert!(all.len() >= 40, "v{version}: {} cases", all.len());
            let mut names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), all.len(), "v{version}: case names repeat");
            for c in &all {
                assert!(
                    c.expect.is_some() || c.expect_error.is_some() || c.reason_contains.is_some(),
                    "v{version} case {:?} expects nothing",
                    c.name
                );
            }
        }
    }

    #[test]
    fn omitted_inputs_take_their_defaults() {
        let c = case(json!({"name": "n", "call": "check-deployable", "input": {}, "expect": {}}));
        let Call::CheckDeployable {
            project,
            facts,
            source,
        } = c.call
        else {
            panic!("{:?}", c.call)
        };
        assert_eq!(project.kind, ProjectKind::Deployment);
        assert_eq!(facts, Facts::default());
        assert_eq!(source, TriggerSource::Manual);
        assert_eq!(
            case(json!({"name": "n", "call": "policy-info", "input": {}, "expect": {}})).call,
            Call::PolicyInfo
        );
    }

    #[test]
    fn unknown_calls_and_inputs_are_refused() {
        let bad = |c: Value| parse(&json!({ "cases": [c] }).to_string()).unwrap_err();
        assert!(
            bad(json!({"name": "n", "call": "decide-everything", "input": {}}))
                .contains("decide-everything")
        );
        assert!(
            bad(json!({"name": "n", "call": "decide-commit", "input": {"remote_heads": null}}))
                .contains("remote_heads")
        );
        assert!(
            bad(json!({"name": "n", "call": "policy-info", "input": {"x": 1}}))
                .contains("no input")
        );
        assert!(
            bad(
                json!({"name": "n", "call": "decide-commit", "input": {"facts": {"master": true}}})
            )
            .contains("master")
        );
    }

    #[test]
    fn check_rejects_wrong_answers() {
        let c = case(json!({"name": "n", "call": "decide-commit", "input": {},
                            "expect": {"trigger": true, "record": null}, "reason_contains": "moved"}));
        let ok = |v: Value| check(&c, &json!({ "ok": v }));
        assert!(ok(json!({"trigger": true, "record": null, "reason": "moved"})).is_ok());
        assert!(ok(json!({"trigger": false, "record": null, "reason": "moved"})).is_err());
        assert!(ok(json!({"trigger": true, "record": "abc", "reason": "moved"})).is_err());
        assert!(ok(json!({"trigger": true, "record": null, "reason": "still"})).is_err());
        assert!(check(&c, &json!({"error": "boom"})).is_err());
        let any = case(
            json!({"name": "n", "call": "check-deployable", "input": {}, "expect": {"refused": "*"}}),
        );
        assert!(check(&any, &json!({"ok": {"refused": "why"}})).is_ok());
        assert!(check(&any, &json!({"ok": {"allowed": "why"}})).is_err());
        let err = case(
            json!({"name": "n", "call": "parse-compose", "input": {"yaml": ":"}, "expect_error": "YAML"}),
        );
        assert!(check(&err, &json!({"error": "invalid YAML"})).is_ok());
        assert!(check(&err, &json!({"ok": {}})).is_err());
    }

    #[test]
    fn typed_answers_are_judged_in_the_same_terms() {
        use crate::model::Verdict;
        let c = case(json!({"name": "n", "call": "check-deployable", "input": {},
                            "expect": {"refused": "*"}, "reason_contains": "offline"}));
        assert!(
            check_answer(
                &c,
                &Answer::CheckDeployable(Verdict::Refused("node offline".into()))
            )
            .is_ok()
        );
        assert!(
            check_answer(
                &c,
                &Answer::CheckDeployable(Verdict::Allowed("node offline".into()))
            )
            .is_err()
        );
        assert!(check_answer(&c, &Answer::CheckDeployable(Verdict::Refused("no".into()))).is_err());
    }
}
