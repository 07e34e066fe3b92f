//! The decisions as `autodeploy:policy@0.2.0` asks them: the host passes the
//! state of the world in (`Facts`) and this policy decides everything,
//! including what the host decided itself under 0.1.0: the master switch and
//! the per-project toggle, which triggers watch a project, refuse-to-migrate
//! and which project kinds the agents can run.
//!
//! The rules of 0.1.0 (`crate::v0_1_0`) still decide whether a commit or a
//! digest moved and whether a project is complete enough to deploy; this
//! module puts the gates in front of them.

use std::collections::BTreeMap;

use crate::model::{
    CommitDecision, Facts, ImageDecision, Lookup, NodeState, Project, ProjectKind, TriggerSource,
    Verdict,
};
use crate::v0_1_0::{self, kind_name};
pub use autodeploy_policy_contract::gates::{paused, watch_plan};

/// Compares the tracked branch's remote head with the last deployed commit
/// (see [`v0_1_0::decide_commit`]). An automatic trigger while auto-deploy is
/// paused or off deploys nothing and records nothing, so the change is seen
/// again once it is on; a person's deploy is not held.
pub fn decide_commit(
    project: &Project,
    facts: &Facts,
    source: TriggerSource,
    remote_head: Option<&str>,
) -> Result<CommitDecision, String> {
    if source.is_automatic()
        && let Some(why) = paused(project, facts)
    {
        return Ok(CommitDecision {
            trigger: false,
            record: None,
            reason: format!("{why}; not deploying"),
        });
    }
    v0_1_0::decide_commit(project, remote_head)
}

/// Compares fresh registry lookups with the recorded digests (see
/// [`v0_1_0::decide_images`]). Image lookups are always automatic: while
/// auto-deploy is paused or off the recorded map stays as it was, so a digest
/// that moved meanwhile deploys once it is on.
pub fn decide_images(
    project: &Project,
    facts: &Facts,
    prior: &BTreeMap<String, String>,
    lookups: &BTreeMap<String, Lookup>,
) -> ImageDecision {
    if let Some(why) = paused(project, facts) {
        return ImageDecision {
            trigger: false,
            record: prior.clone(),
            moved: vec![],
            added: vec![],
            reason: format!("{why}; digests not compared"),
        };
    }
    v0_1_0::decide_images(project, prior, lookups)
}

/// May the toggle be set to `enable`? The same rules as 0.1.0: the master
/// switch pauses deploys but leaves every toggle settable.
pub fn check_auto_deploy(project: &Project, _facts: &Facts, enable: bool) -> Verdict {
    v0_1_0::check_auto_deploy(project, enable)
}

/// May a deployment be queued now? An automatic one not while auto-deploy is
/// paused or off; none for a project that is incomplete
/// ([`v0_1_0::check_deployable`]), of a kind no agent runs, or pinned to a node
/// that is offline (a compose project's named volumes live on its node, so it
/// never moves to another).
pub fn check_deployable(project: &Project, facts: &Facts, source: TriggerSource) -> Verdict {
    if source.is_automatic()
        && let Some(why) = paused(project, facts)
    {
        return Verdict::Refused(format!("{why}; not deploying"));
    }
    let verdict = v0_1_0::check_deployable(project);
    if !verdict.is_allowed() {
        return verdict;
    }
    if !facts.agent_kinds.contains(&project.kind) {
        return Verdict::Refused(no_agent_runs(project.kind, &facts.agent_kinds));
    }
    if let Some(node) = &facts.pinned_node
        && node.state == NodeState::Offline
    {
        return Verdict::Refused(refuse_to_migrate(&node.name));
    }
    verdict
}

/// Why a project of `kind` cannot be deployed by agents that run `kinds`.
pub fn no_agent_runs(kind: ProjectKind, kinds: &[ProjectKind]) -> String {
    let runs: Vec<&str> = kinds.iter().map(|k| kind_name(*k)).collect();
    format!(
        "no deploy agent runs {} projects; the agents run: {}",
        kind_name(kind),
        if runs.is_empty() {
            "nothing".to_string()
        } else {
            runs.join(", ")
        }
    )
}

/// Why a pinned project's deployment cannot run while its node is offline.
pub fn refuse_to_migrate(node: &str) -> String {
    format!(
        "node {node} is offline; this compose project is pinned to it (its named volumes live there), refusing to migrate"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GitSource, PinnedNode, WatchPlan};

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn enabled(kind: ProjectKind, git_source: GitSource) -> Project {
        Project {
            kind,
            git_source,
            auto_deploy_enabled: true,
            last_tracked_commit: A.into(),
            expose_service: Some("web".into()),
            expose_port: Some(80),
            ..Project::default()
        }
    }

    fn master_off() -> Facts {
        Facts {
            auto_deploy_master_enabled: false,
            ..Facts::default()
        }
    }

    fn plan(p: &WatchPlan) -> (bool, bool, bool) {
        (p.poll_commits, p.reconcile_pushes, p.watch_images)
    }

    #[test]
    fn the_watch_plan_follows_source_and_kind() {
        let f = Facts::default();
        use GitSource::*;
        use ProjectKind::*;
        let cases = [
            (Deployment, External, (true, false, false)),
            (Deployment, Hosted, (false, true, false)),
            (Compose, External, (true, false, true)),
            (Compose, Hosted, (false, true, true)),
            (Image, Hosted, (false, true, false)),
            (Tunnel, External, (false, false, false)),
            (DomainOnly, Hosted, (false, false, false)),
        ];
        for (kind, source, want) in cases {
            assert_eq!(
                plan(&watch_plan(&enabled(kind, source), &f)),
                want,
                "{kind:?} {source:?}"
            );
        }
    }

    #[test]
    fn the_master_switch_and_the_toggle_empty_the_watch_plan() {
        let p = enabled(ProjectKind::Compose, GitSource::External);
        let off = watch_plan(&p, &master_off());
        assert_eq!(plan(&off), (false, false, false));
        assert!(off.reason.contains("master switch off"), "{}", off.reason);
        let toggled = Project {
            auto_deploy_enabled: false,
            ..p
        };
        let off = watch_plan(&toggled, &Facts::default());
        assert_eq!(plan(&off), (false, false, false));
        assert!(
            off.reason.contains("off for this project"),
            "{}",
            off.reason
        );
    }

    #[test]
    fn automatic_commits_wait_for_the_switches_and_manual_ones_do_not() {
        let p = enabled(ProjectKind::Deployment, GitSource::Hosted);
        let held = decide_commit(&p, &master_off(), TriggerSource::AutoPoll, Some(B)).unwrap();
        assert!(!held.trigger && held.record.is_none(), "{held:?}");
        let toggled = Project {
            auto_deploy_enabled: false,
            ..p.clone()
        };
        let held = decide_commit(
            &toggled,
            &Facts::default(),
            TriggerSource::AutoPush,
            Some(B),
        )
        .unwrap();
        assert!(!held.trigger && held.reason.contains("off for this project"));
        let manual =
            decide_commit(&toggled, &master_off(), TriggerSource::Manual, Some(B)).unwrap();
        assert!(manual.trigger && manual.record.as_deref() == Some(B));
        let on = decide_commit(&p, &Facts::default(), TriggerSource::AutoPoll, Some(B)).unwrap();
        assert!(on.trigger);
    }

    #[test]
    fn a_held_image_decision_keeps_the_recorded_digests() {
        let p = enabled(ProjectKind::Compose, GitSource::Hosted);
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let prior = BTreeMap::from([("x:1".to_string(), a.clone())]);
        let lookups = BTreeMap::from([("x:1".to_string(), Lookup::Digest(b.clone()))]);
        let held = decide_images(&p, &master_off(), &prior, &lookups);
        assert!(!held.trigger);
        assert_eq!(held.record, prior);
        let on = decide_images(&p, &Facts::default(), &prior, &lookups);
        assert!(on.trigger);
        assert_eq!(on.record["x:1"], b);
    }

    #[test]
    fn deployability_weighs_switches_kinds_and_the_pinned_node() {
        let p = enabled(ProjectKind::Compose, GitSource::Hosted);
        let f = Facts::default();
        assert!(check_deployable(&p, &f, TriggerSource::AutoImage).is_allowed());
        let off = check_deployable(&p, &master_off(), TriggerSource::AutoImage);
        assert!(off.reason().contains("master switch off"), "{off:?}");
        assert!(!off.is_allowed());
        assert!(check_deployable(&p, &master_off(), TriggerSource::Manual).is_allowed());

        let pinned = |state| Facts {
            pinned_node: Some(PinnedNode {
                name: "n1".into(),
                state,
            }),
            ..Facts::default()
        };
        let refused = check_deployable(&p, &pinned(NodeState::Offline), TriggerSource::Manual);
        assert!(!refused.is_allowed());
        assert!(
            refused.reason().contains("refusing to migrate"),
            "{refused:?}"
        );
        assert!(refused.reason().contains("n1"), "{refused:?}");
        assert!(
            check_deployable(&p, &pinned(NodeState::Online), TriggerSource::Manual).is_allowed()
        );

        let deployment = enabled(ProjectKind::Deployment, GitSource::Hosted);
        let no_agent = check_deployable(&deployment, &f, TriggerSource::Manual);
        assert!(!no_agent.is_allowed());
        assert!(
            no_agent
                .reason()
                .contains("no deploy agent runs deployment projects"),
            "{no_agent:?}"
        );
        let all = Facts {
            agent_kinds: vec![ProjectKind::Deployment],
            ..Facts::default()
        };
        assert!(check_deployable(&deployment, &all, TriggerSource::Manual).is_allowed());
        // An incomplete project is refused for what it lacks, before the agents.
        let bare = Project {
            expose_service: None,
            ..p
        };
        let incomplete = check_deployable(
            &bare,
            &Facts {
                agent_kinds: vec![],
                ..f
            },
            TriggerSource::Manual,
        );
        assert!(
            incomplete.reason().contains("expose_service"),
            "{incomplete:?}"
        );
    }

    #[test]
    fn labels_change_no_default_decision() {
        let mut p = enabled(ProjectKind::Compose, GitSource::External);
        let f = Facts::default();
        let before = (
            watch_plan(&p, &f),
            decide_commit(&p, &f, TriggerSource::AutoPoll, Some(B)),
            check_deployable(&p, &f, TriggerSource::AutoPoll),
        );
        p.labels.insert("team".into(), "payments".into());
        let after = (
            watch_plan(&p, &f),
            decide_commit(&p, &f, TriggerSource::AutoPoll, Some(B)),
            check_deployable(&p, &f, TriggerSource::AutoPoll),
        );
        assert_eq!(before, after);
    }
}
