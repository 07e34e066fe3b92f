//! The wit-bindgen layer: exports `autodeploy:policy/decisions@0.2.0` by
//! converting the WIT types to the contract's plain types and back. No
//! decision is made here.

use std::collections::BTreeMap;

use autodeploy_policy_contract::model;

wit_bindgen::generate!({
    path: "../../policy-contract/wit/policy@0.2.0",
    world: "policy",
});

use exports::autodeploy::policy::decisions as wit;

struct SyncWindows;

impl wit::Guest for SyncWindows {
    fn policy_info() -> wit::PolicyMeta {
        let meta = crate::policy_meta();
        wit::PolicyMeta {
            name: meta.name,
            version: meta.version,
        }
    }

    fn parse_compose(yaml: String) -> Result<wit::ComposeImages, String> {
        crate::parse_compose(&yaml).map(|c| wit::ComposeImages {
            images: c.images,
            skipped: c.skipped,
        })
    }

    fn watch_plan(project: wit::Project, facts: wit::Facts) -> wit::WatchedTriggers {
        let p = crate::watch_plan(&project.into(), &facts.into());
        wit::WatchedTriggers {
            poll_commits: p.poll_commits,
            reconcile_pushes: p.reconcile_pushes,
            watch_images: p.watch_images,
            reason: p.reason,
        }
    }

    fn decide_commit(
        project: wit::Project,
        facts: wit::Facts,
        source: wit::TriggerSource,
        remote_head: Option<String>,
    ) -> Result<wit::CommitDecision, String> {
        crate::decide_commit(
            &project.into(),
            &facts.into(),
            source.into(),
            remote_head.as_deref(),
        )
        .map(|d| wit::CommitDecision {
            trigger: d.trigger,
            record: d.record,
            reason: d.reason,
        })
    }

    fn decide_images(
        project: wit::Project,
        facts: wit::Facts,
        prior: Vec<wit::ImageDigest>,
        lookups: Vec<wit::ImageLookup>,
    ) -> wit::ImageDecision {
        let prior: BTreeMap<String, String> =
            prior.into_iter().map(|d| (d.image, d.digest)).collect();
        let lookups: BTreeMap<String, model::Lookup> = lookups
            .into_iter()
            .map(|l| {
                let result = match l.result {
                    wit::LookupResult::Digest(d) => model::Lookup::Digest(d),
                    wit::LookupResult::Failed(e) => model::Lookup::Failed(e),
                };
                (l.image, result)
            })
            .collect();
        let d = crate::decide_images(&project.into(), &facts.into(), &prior, &lookups);
        wit::ImageDecision {
            trigger: d.trigger,
            record: d
                .record
                .into_iter()
                .map(|(image, digest)| wit::ImageDigest { image, digest })
                .collect(),
            moved: d
                .moved
                .into_iter()
                .map(|m| wit::DigestChange {
                    image: m.image,
                    previous: m.previous,
                    current: m.current,
                })
                .collect(),
            added: d.added,
            reason: d.reason,
        }
    }

    fn check_auto_deploy(project: wit::Project, facts: wit::Facts, enable: bool) -> wit::Verdict {
        crate::check_auto_deploy(&project.into(), &facts.into(), enable).into()
    }

    fn check_deployable(
        project: wit::Project,
        facts: wit::Facts,
        source: wit::TriggerSource,
    ) -> wit::Verdict {
        crate::check_deployable(&project.into(), &facts.into(), source.into()).into()
    }
}

impl From<wit::ProjectKind> for model::ProjectKind {
    fn from(k: wit::ProjectKind) -> Self {
        match k {
            wit::ProjectKind::Deployment => model::ProjectKind::Deployment,
            wit::ProjectKind::Compose => model::ProjectKind::Compose,
            wit::ProjectKind::Image => model::ProjectKind::Image,
            wit::ProjectKind::Tunnel => model::ProjectKind::Tunnel,
            wit::ProjectKind::DomainOnly => model::ProjectKind::DomainOnly,
        }
    }
}

impl From<wit::Project> for model::Project {
    fn from(p: wit::Project) -> Self {
        model::Project {
            id: p.id,
            name: p.name,
            kind: p.kind.into(),
            git_source: match p.git_source {
                wit::GitSource::Hosted => model::GitSource::Hosted,
                wit::GitSource::External => model::GitSource::External,
            },
            git_branch: p.git_branch,
            auto_deploy_enabled: p.auto_deploy_enabled,
            last_tracked_commit: p.last_tracked_commit,
            expose_service: p.expose_service,
            expose_port: p.expose_port,
            labels: p.labels.into_iter().map(|l| (l.key, l.value)).collect(),
        }
    }
}

impl From<wit::Facts> for model::Facts {
    fn from(f: wit::Facts) -> Self {
        model::Facts {
            auto_deploy_master_enabled: f.auto_deploy_master_enabled,
            now_unix_seconds: f.now_unix_seconds,
            config: f.config,
            pinned_node: f.pinned_node.map(|n| model::PinnedNode {
                name: n.name,
                state: match n.state {
                    wit::NodeState::Online => model::NodeState::Online,
                    wit::NodeState::Offline => model::NodeState::Offline,
                },
            }),
            agent_kinds: f.agent_kinds.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<wit::TriggerSource> for model::TriggerSource {
    fn from(s: wit::TriggerSource) -> Self {
        match s {
            wit::TriggerSource::Manual => model::TriggerSource::Manual,
            wit::TriggerSource::AutoPoll => model::TriggerSource::AutoPoll,
            wit::TriggerSource::AutoPush => model::TriggerSource::AutoPush,
            wit::TriggerSource::AutoImage => model::TriggerSource::AutoImage,
        }
    }
}

impl From<model::Verdict> for wit::Verdict {
    fn from(v: model::Verdict) -> Self {
        match v {
            model::Verdict::Allowed(r) => wit::Verdict::Allowed(r),
            model::Verdict::Refused(r) => wit::Verdict::Refused(r),
        }
    }
}

export!(SyncWindows);
