//! The conformance vectors (tests/conformance/vectors.json) and how to judge
//! an answer against them. The guest's tests run them natively; the host's
//! tests run them against the built component and compare both answers.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{Lookup, Project};

pub const VECTORS: &str = include_str!("../../tests/conformance/vectors.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub call: String,
    pub input: Input,
    #[serde(default)]
    pub expect: Option<Value>,
    #[serde(default)]
    pub expect_error: Option<String>,
    #[serde(default)]
    pub reason_contains: Option<String>,
}

/// The union of every call's arguments; each call reads its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub yaml: String,
    #[serde(default)]
    pub project: Project,
    #[serde(default)]
    pub remote_head: Option<String>,
    #[serde(default)]
    pub prior: BTreeMap<String, String>,
    #[serde(default)]
    pub lookups: BTreeMap<String, Lookup>,
    #[serde(default)]
    pub enable: bool,
}

pub fn cases() -> Vec<Case> {
    #[derive(Deserialize)]
    struct File {
        cases: Vec<Case>,
    }
    serde_json::from_str::<File>(VECTORS)
        .expect("tests/conformance/vectors.json is valid")
        .cases
}

/// An answer in the vectors' terms: `{"ok": ...}` or `{"error": "..."}`.
pub fn outcome<T: serde::Serialize>(result: Result<T, String>) -> Value {
    match result {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e }),
    }
}

/// Runs one case against this crate's functions, natively.
pub fn run_native(case: &Case) -> Value {
    let i = &case.input;
    match case.call.as_str() {
        "policy-info" => outcome(Ok(json!({
            "name": crate::POLICY_NAME,
            "version": crate::POLICY_VERSION,
        }))),
        "parse-compose" => outcome(crate::parse_compose(&i.yaml)),
        "decide-commit" => outcome(crate::decide_commit(&i.project, i.remote_head.as_deref())),
        "decide-images" => outcome(Ok(crate::decide_images(&i.project, &i.prior, &i.lookups))),
        "check-auto-deploy" => outcome(Ok(crate::check_auto_deploy(&i.project, i.enable))),
        "check-deployable" => outcome(Ok(crate::check_deployable(&i.project))),
        other => panic!("case {:?}: unknown call {other:?}", case.name),
    }
}

/// Judges an answer against the case's expectations.
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

    fn case(json: Value) -> Case {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn check_rejects_wrong_answers() {
        let c = case(json!({"name": "n", "call": "decide-commit", "input": {},
                            "expect": {"trigger": true, "record": null}, "reason_contains": "moved"}));
        assert!(
            check(
                &c,
                &json!({"ok": {"trigger": true, "record": null, "reason": "moved"}})
            )
            .is_ok()
        );
        assert!(
            check(
                &c,
                &json!({"ok": {"trigger": false, "record": null, "reason": "moved"}})
            )
            .is_err()
        );
        assert!(
            check(
                &c,
                &json!({"ok": {"trigger": true, "record": "abc", "reason": "moved"}})
            )
            .is_err()
        );
        assert!(
            check(
                &c,
                &json!({"ok": {"trigger": true, "record": null, "reason": "still"}})
            )
            .is_err()
        );
        assert!(check(&c, &json!({"error": "boom"})).is_err());
        let any = case(
            json!({"name": "n", "call": "check-deployable", "input": {}, "expect": {"refused": "*"}}),
        );
        assert!(check(&any, &json!({"ok": {"refused": "why"}})).is_ok());
        assert!(check(&any, &json!({"ok": {"allowed": "why"}})).is_err());
        let err = case(
            json!({"name": "n", "call": "parse-compose", "input": {}, "expect_error": "YAML"}),
        );
        assert!(check(&err, &json!({"error": "invalid YAML"})).is_ok());
        assert!(check(&err, &json!({"ok": {}})).is_err());
    }
}
