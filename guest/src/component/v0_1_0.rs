//! Exports `autodeploy:policy/decisions@0.1.0` (the `wit-0-1-0` feature):
//! today's rules with no facts; the host applies the gates.

use std::collections::BTreeMap;

use crate::model;

wit_bindgen::generate!({
    path: "../policy-contract/wit/policy@0.1.0",
    world: "policy",
});

use exports::autodeploy::policy::decisions as wit;

struct DefaultPolicy;

impl wit::Guest for DefaultPolicy {
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

    fn decide_commit(
        project: wit::Project,
        remote_head: Option<String>,
    ) -> Result<wit::CommitDecision, String> {
        crate::v0_1_0::decide_commit(&project.into(), remote_head.as_deref()).map(|d| {
            wit::CommitDecision {
                trigger: d.trigger,
                record: d.record,
                reason: d.reason,
            }
        })
    }

    fn decide_images(
        project: wit::Project,
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
        let d = crate::v0_1_0::decide_images(&project.into(), &prior, &lookups);
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

    fn check_auto_deploy(project: wit::Project, enable: bool) -> wit::Verdict {
        crate::v0_1_0::check_auto_deploy(&project.into(), enable).into()
    }

    fn check_deployable(project: wit::Project) -> wit::Verdict {
        crate::v0_1_0::check_deployable(&project.into()).into()
    }
}

impl From<wit::Project> for model::Project {
    fn from(p: wit::Project) -> Self {
        model::Project {
            id: p.id,
            name: p.name,
            kind: match p.kind {
                wit::ProjectKind::Deployment => model::ProjectKind::Deployment,
                wit::ProjectKind::Compose => model::ProjectKind::Compose,
                wit::ProjectKind::Image => model::ProjectKind::Image,
                wit::ProjectKind::Tunnel => model::ProjectKind::Tunnel,
                wit::ProjectKind::DomainOnly => model::ProjectKind::DomainOnly,
            },
            git_source: match p.git_source {
                wit::GitSource::Hosted => model::GitSource::Hosted,
                wit::GitSource::External => model::GitSource::External,
            },
            git_branch: p.git_branch,
            auto_deploy_enabled: p.auto_deploy_enabled,
            last_tracked_commit: p.last_tracked_commit,
            expose_service: p.expose_service,
            expose_port: p.expose_port,
            labels: Default::default(),
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

export!(DefaultPolicy);
