//! `autodeploy:policy@0.2.0`: the facts go in, every answer comes from the
//! component. This module only converts between the generated types and the
//! contract's plain ones.

use std::collections::BTreeMap;

use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Result};

use super::super::{
    CommitDecision, ComposeImages, DigestChange, Facts, GitSource, ImageDecision, Lookup,
    NodeState, Project, ProjectKind, TriggerSource, Verdict, WatchPlan,
};

mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../policy-contract/wit/policy@0.2.0",
    });
}

use generated::exports::autodeploy::policy::decisions as wit;

/// A type-checked, ready-to-instantiate 0.2.0 policy.
pub struct Pre<T: 'static>(generated::PolicyPre<T>);

/// One instance of a 0.2.0 policy.
pub struct Instance(generated::Policy);

impl<T: 'static> Pre<T> {
    /// Checks the component's exports against the 0.2.0 types.
    pub fn new(pre: InstancePre<T>) -> Result<Self> {
        generated::PolicyPre::new(pre).map(Pre)
    }

    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> Result<Instance> {
        self.0.instantiate(store).map(Instance)
    }
}

impl Instance {
    fn api(&self) -> &wit::Guest {
        self.0.autodeploy_policy_decisions()
    }

    pub fn policy_info(&self, store: impl AsContextMut) -> Result<(String, String)> {
        let meta = self.api().call_policy_info(store)?;
        Ok((meta.name, meta.version))
    }

    pub fn parse_compose(
        &self,
        store: impl AsContextMut,
        yaml: &str,
    ) -> Result<Result<ComposeImages, String>> {
        Ok(self
            .api()
            .call_parse_compose(store, yaml)?
            .map(|c| ComposeImages {
                images: c.images,
                skipped: c.skipped,
            }))
    }

    pub fn watch_plan(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
    ) -> Result<WatchPlan> {
        let p = self
            .api()
            .call_watch_plan(store, &project.into(), &facts.into())?;
        Ok(WatchPlan {
            poll_commits: p.poll_commits,
            reconcile_pushes: p.reconcile_pushes,
            watch_images: p.watch_images,
            reason: p.reason,
        })
    }

    pub fn decide_commit(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<Result<CommitDecision, String>> {
        let decision = self.api().call_decide_commit(
            store,
            &project.into(),
            &facts.into(),
            source.into(),
            remote_head,
        )?;
        Ok(decision.map(|d| CommitDecision {
            trigger: d.trigger,
            record: d.record,
            reason: d.reason,
        }))
    }

    pub fn decide_images(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> Result<ImageDecision> {
        let prior: Vec<wit::ImageDigest> = prior
            .iter()
            .map(|(image, digest)| wit::ImageDigest {
                image: image.clone(),
                digest: digest.clone(),
            })
            .collect();
        let lookups: Vec<wit::ImageLookup> = lookups
            .iter()
            .map(|(image, lookup)| wit::ImageLookup {
                image: image.clone(),
                result: match lookup {
                    Lookup::Digest(d) => wit::LookupResult::Digest(d.clone()),
                    Lookup::Failed(e) => wit::LookupResult::Failed(e.clone()),
                },
            })
            .collect();
        let d = self.api().call_decide_images(
            store,
            &project.into(),
            &facts.into(),
            &prior,
            &lookups,
        )?;
        Ok(ImageDecision {
            trigger: d.trigger,
            record: d.record.into_iter().map(|r| (r.image, r.digest)).collect(),
            moved: d
                .moved
                .into_iter()
                .map(|m| DigestChange {
                    image: m.image,
                    previous: m.previous,
                    current: m.current,
                })
                .collect(),
            added: d.added,
            reason: d.reason,
        })
    }

    pub fn check_auto_deploy(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        enable: bool,
    ) -> Result<Verdict> {
        let v = self
            .api()
            .call_check_auto_deploy(store, &project.into(), &facts.into(), enable)?;
        Ok(v.into())
    }

    pub fn check_deployable(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
    ) -> Result<Verdict> {
        let v = self.api().call_check_deployable(
            store,
            &project.into(),
            &facts.into(),
            source.into(),
        )?;
        Ok(v.into())
    }
}

impl From<ProjectKind> for wit::ProjectKind {
    fn from(k: ProjectKind) -> Self {
        match k {
            ProjectKind::Deployment => wit::ProjectKind::Deployment,
            ProjectKind::Compose => wit::ProjectKind::Compose,
            ProjectKind::Image => wit::ProjectKind::Image,
            ProjectKind::Tunnel => wit::ProjectKind::Tunnel,
            ProjectKind::DomainOnly => wit::ProjectKind::DomainOnly,
        }
    }
}

impl From<&Project> for wit::Project {
    fn from(p: &Project) -> Self {
        wit::Project {
            id: p.id.clone(),
            name: p.name.clone(),
            kind: p.kind.into(),
            git_source: match p.git_source {
                GitSource::Hosted => wit::GitSource::Hosted,
                GitSource::External => wit::GitSource::External,
            },
            git_branch: p.git_branch.clone(),
            auto_deploy_enabled: p.auto_deploy_enabled,
            last_tracked_commit: p.last_tracked_commit.clone(),
            expose_service: p.expose_service.clone(),
            expose_port: p.expose_port,
            // A BTreeMap iterates sorted by key, as the contract promises.
            labels: p
                .labels
                .iter()
                .map(|(key, value)| wit::Label {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

impl From<&Facts> for wit::Facts {
    fn from(f: &Facts) -> Self {
        wit::Facts {
            auto_deploy_master_enabled: f.auto_deploy_master_enabled,
            now_unix_seconds: f.now_unix_seconds,
            config: f.config.clone(),
            pinned_node: f.pinned_node.as_ref().map(|n| wit::PinnedNode {
                name: n.name.clone(),
                state: match n.state {
                    NodeState::Online => wit::NodeState::Online,
                    NodeState::Offline => wit::NodeState::Offline,
                },
            }),
            agent_kinds: f.agent_kinds.iter().map(|k| (*k).into()).collect(),
        }
    }
}

impl From<TriggerSource> for wit::TriggerSource {
    fn from(s: TriggerSource) -> Self {
        match s {
            TriggerSource::Manual => wit::TriggerSource::Manual,
            TriggerSource::AutoPoll => wit::TriggerSource::AutoPoll,
            TriggerSource::AutoPush => wit::TriggerSource::AutoPush,
            TriggerSource::AutoImage => wit::TriggerSource::AutoImage,
        }
    }
}

impl From<wit::Verdict> for Verdict {
    fn from(v: wit::Verdict) -> Self {
        match v {
            wit::Verdict::Allowed(r) => Verdict::Allowed(r),
            wit::Verdict::Refused(r) => Verdict::Refused(r),
        }
    }
}
