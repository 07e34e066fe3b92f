//! The log's JSON for the calls a poll tick makes by the thousand
//! (`watch-plan`, `decide-commit`) and their answers, written straight to a
//! string: the same bytes as through `serde_json::Value` (keys sorted,
//! compact), without building a tree of maps first. Any other call or
//! answer goes through `Value` (see `input_json` and `outcome`); the tests
//! below hold the two paths to the same bytes.

use autodeploy_policy_contract::{Answer, Call};
use serde::Serialize;

use crate::policy::{Facts, Project};

/// Writing JSON to a `Vec` fails only for values that cannot serialize,
/// which plain strings, numbers and unit enums never are.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("plain values serialize");
}

fn raw(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn facts(out: &mut Vec<u8>, f: &Facts) {
    raw(out, "{\"agent_kinds\":");
    put(out, &f.agent_kinds);
    raw(out, ",\"auto_deploy_master_enabled\":");
    put(out, &f.auto_deploy_master_enabled);
    raw(out, ",\"config\":");
    put(out, &f.config);
    raw(out, ",\"now_unix_seconds\":");
    put(out, &f.now_unix_seconds);
    raw(out, ",\"pinned_node\":");
    match &f.pinned_node {
        Some(n) => {
            raw(out, "{\"name\":");
            put(out, &n.name);
            raw(out, ",\"state\":");
            put(out, &n.state);
            raw(out, "}");
        }
        None => raw(out, "null"),
    }
    raw(out, "}");
}

fn project(out: &mut Vec<u8>, p: &Project) {
    raw(out, "{\"auto_deploy_enabled\":");
    put(out, &p.auto_deploy_enabled);
    raw(out, ",\"expose_port\":");
    put(out, &p.expose_port);
    raw(out, ",\"expose_service\":");
    put(out, &p.expose_service);
    raw(out, ",\"git_branch\":");
    put(out, &p.git_branch);
    raw(out, ",\"git_source\":");
    put(out, &p.git_source);
    raw(out, ",\"id\":");
    put(out, &p.id);
    raw(out, ",\"kind\":");
    put(out, &p.kind);
    // A BTreeMap of strings: written in key order, as `Value` writes it.
    raw(out, ",\"labels\":");
    put(out, &p.labels);
    raw(out, ",\"last_tracked_commit\":");
    put(out, &p.last_tracked_commit);
    raw(out, ",\"name\":");
    put(out, &p.name);
    raw(out, "}");
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `input_json(call).to_string()` for a `watch-plan` or `decide-commit`
/// call; `None` for any other.
pub(super) fn input(call: &Call) -> Option<String> {
    let mut out = Vec::with_capacity(512);
    match call {
        Call::WatchPlan {
            project: p,
            facts: f,
        } => {
            raw(&mut out, "{\"call\":\"watch-plan\",\"input\":{\"facts\":");
            facts(&mut out, f);
            raw(&mut out, ",\"project\":");
            project(&mut out, p);
            raw(&mut out, "}}");
        }
        Call::DecideCommit {
            project: p,
            facts: f,
            source,
            remote_head,
        } => {
            raw(
                &mut out,
                "{\"call\":\"decide-commit\",\"input\":{\"facts\":",
            );
            facts(&mut out, f);
            raw(&mut out, ",\"project\":");
            project(&mut out, p);
            raw(&mut out, ",\"remote_head\":");
            put(&mut out, remote_head);
            raw(&mut out, ",\"source\":");
            put(&mut out, source);
            raw(&mut out, "}}");
        }
        _ => return None,
    }
    Some(text(out))
}

/// `outcome(answer).to_string()` for a `watch-plan` or `decide-commit`
/// answer; `None` for any other.
pub(super) fn output(answer: &Answer) -> Option<String> {
    let mut out = Vec::with_capacity(160);
    match answer {
        Answer::WatchPlan(p) => {
            raw(&mut out, "{\"ok\":{\"poll_commits\":");
            put(&mut out, &p.poll_commits);
            raw(&mut out, ",\"reason\":");
            put(&mut out, &p.reason);
            raw(&mut out, ",\"reconcile_pushes\":");
            put(&mut out, &p.reconcile_pushes);
            raw(&mut out, ",\"watch_images\":");
            put(&mut out, &p.watch_images);
            raw(&mut out, "}}");
        }
        Answer::DecideCommit(Ok(d)) => {
            raw(&mut out, "{\"ok\":{\"reason\":");
            put(&mut out, &d.reason);
            raw(&mut out, ",\"record\":");
            put(&mut out, &d.record);
            raw(&mut out, ",\"trigger\":");
            put(&mut out, &d.trigger);
            raw(&mut out, "}}");
        }
        Answer::DecideCommit(Err(e)) => {
            raw(&mut out, "{\"error\":");
            put(&mut out, e);
            raw(&mut out, "}");
        }
        _ => return None,
    }
    Some(text(out))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{
        CommitDecision, NodeState, PinnedNode, ProjectKind, TriggerSource, WatchPlan,
    };

    fn projects() -> Vec<Project> {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "a \"b\"\n\u{7}é".to_string());
        labels.insert("env".to_string(), "prod".to_string());
        vec![
            Project::default(),
            Project {
                id: "42".into(),
                name: "web \\ \"x\"".into(),
                kind: ProjectKind::DomainOnly,
                git_source: crate::policy::GitSource::External,
                git_branch: "feature/ü".into(),
                auto_deploy_enabled: true,
                last_tracked_commit: "a".repeat(40),
                expose_service: Some("web".into()),
                expose_port: Some(8080),
                labels,
            },
        ]
    }

    fn all_facts() -> Vec<Facts> {
        vec![
            Facts::default(),
            Facts {
                auto_deploy_master_enabled: false,
                now_unix_seconds: -5,
                config: "{\"windows\": [1, 2]}\t".into(),
                pinned_node: Some(PinnedNode {
                    name: "node \"1\"".into(),
                    state: NodeState::Offline,
                }),
                agent_kinds: vec![],
            },
        ]
    }

    #[test]
    fn inputs_are_the_bytes_value_writes() {
        let mut calls = Vec::new();
        for p in projects() {
            for f in all_facts() {
                calls.push(Call::WatchPlan {
                    project: p.clone(),
                    facts: f.clone(),
                });
                for (source, remote_head) in [
                    (TriggerSource::AutoPoll, Some("b".repeat(40))),
                    (TriggerSource::Manual, None),
                ] {
                    calls.push(Call::DecideCommit {
                        project: p.clone(),
                        facts: f.clone(),
                        source,
                        remote_head,
                    });
                }
            }
        }
        for call in &calls {
            let via_value = serde_json::to_value(call).unwrap().to_string();
            assert_eq!(input(call).as_deref(), Some(via_value.as_str()), "{call:?}");
        }
        assert_eq!(input(&Call::PolicyInfo), None);
    }

    #[test]
    fn outputs_are_the_bytes_value_writes() {
        let answers = [
            Answer::WatchPlan(WatchPlan {
                poll_commits: true,
                reconcile_pushes: false,
                watch_images: true,
                reason: "on \"x\"".into(),
            }),
            Answer::DecideCommit(Ok(CommitDecision {
                trigger: false,
                record: None,
                reason: "unchanged".into(),
            })),
            Answer::DecideCommit(Ok(CommitDecision {
                trigger: true,
                record: Some("c".repeat(40)),
                reason: "moved\n".into(),
            })),
            Answer::DecideCommit(Err("no branch \u{1}".into())),
        ];
        for a in &answers {
            assert_eq!(output(a), Some(a.to_json().to_string()), "{a:?}");
        }
    }
}
