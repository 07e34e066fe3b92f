//! `autodeploy:policy@0.1.0`: a policy from before facts. The host answers in
//! 0.2.0 terms for it by applying the gates it applied itself under 0.1.0
//! (the master switch, the project's toggle, which triggers watch which
//! projects, refuse-to-migrate and the agents' kinds) around the component's
//! own answers, so the rest of the daemon sees one set of semantics.
//!
//! The gates' reasons are worded as the default 0.2.0 policy words them, so
//! the default policy built for either version answers the same.

use std::collections::BTreeMap;

use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Result};

use crate::policy::{
    CommitDecision, ComposeImages, DigestChange, Facts, GitSource, ImageDecision, Lookup,
    NodeState, Project, ProjectKind, TriggerSource, Verdict, WatchPlan,
};
use autodeploy_policy_contract::gates::{paused, watch_plan};

use crate::store::{enum_str, refuse_to_migrate};

mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../policy-contract/wit/policy@0.1.0",
    });
}

use generated::exports::autodeploy::policy::decisions as wit;

/// A type-checked, ready-to-instantiate 0.1.0 policy.
pub struct Pre<T: 'static>(generated::PolicyPre<T>);

/// One instance of a 0.1.0 policy.
pub struct Instance(generated::Policy);

impl<T: 'static> Pre<T> {
    /// Checks the component's exports against the 0.1.0 types.
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

    /// 0.1.0 has no `watch-plan`: the host's answer, without the component.
    pub fn watch_plan(
        &self,
        _store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
    ) -> Result<WatchPlan> {
        Ok(watch_plan(project, facts))
    }

    /// The component's decision, held while an automatic trigger is paused.
    pub fn decide_commit(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<Result<CommitDecision, String>> {
        if source.is_automatic()
            && let Some(why) = paused(project, facts)
        {
            return Ok(Ok(CommitDecision {
                trigger: false,
                record: None,
                reason: format!("{why}; not deploying"),
            }));
        }
        self.decide_commit_ungated(store, project, remote_head)
    }

    /// The component's own 0.1.0 answer.
    pub fn decide_commit_ungated(
        &self,
        store: impl AsContextMut,
        project: &Project,
        remote_head: Option<&str>,
    ) -> Result<Result<CommitDecision, String>> {
        let decision = self
            .api()
            .call_decide_commit(store, &project.into(), remote_head)?;
        Ok(decision.map(|d| CommitDecision {
            trigger: d.trigger,
            record: d.record,
            reason: d.reason,
        }))
    }

    /// The component's decision; while paused, the recorded digests stay.
    pub fn decide_images(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> Result<ImageDecision> {
        if let Some(why) = paused(project, facts) {
            return Ok(ImageDecision {
                trigger: false,
                record: prior.clone(),
                moved: vec![],
                added: vec![],
                reason: format!("{why}; digests not compared"),
            });
        }
        self.decide_images_ungated(store, project, prior, lookups)
    }

    /// The component's own 0.1.0 answer.
    pub fn decide_images_ungated(
        &self,
        store: impl AsContextMut,
        project: &Project,
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
        let d = self
            .api()
            .call_decide_images(store, &project.into(), &prior, &lookups)?;
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

    /// The toggle took no facts under 0.1.0, and takes none here.
    pub fn check_auto_deploy(
        &self,
        store: impl AsContextMut,
        project: &Project,
        _facts: &Facts,
        enable: bool,
    ) -> Result<Verdict> {
        let v = self
            .api()
            .call_check_auto_deploy(store, &project.into(), enable)?;
        Ok(v.into())
    }

    /// An automatic deploy while paused is refused; then the component's own
    /// verdict; then what the host checked itself under 0.1.0: an agent that
    /// runs the kind, and the pinned node being online.
    pub fn check_deployable(
        &self,
        store: impl AsContextMut,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
    ) -> Result<Verdict> {
        if source.is_automatic()
            && let Some(why) = paused(project, facts)
        {
            return Ok(Verdict::Refused(format!("{why}; not deploying")));
        }
        let verdict = self.check_deployable_ungated(store, project)?;
        if !verdict.is_allowed() {
            return Ok(verdict);
        }
        if !facts.agent_kinds.contains(&project.kind) {
            let runs: Vec<String> = facts.agent_kinds.iter().map(enum_str).collect();
            return Ok(Verdict::Refused(format!(
                "no deploy agent runs {} projects; the agents run: {}",
                enum_str(&project.kind),
                if runs.is_empty() {
                    "nothing".to_string()
                } else {
                    runs.join(", ")
                }
            )));
        }
        if let Some(node) = &facts.pinned_node
            && node.state == NodeState::Offline
        {
            return Ok(Verdict::Refused(refuse_to_migrate(&node.name)));
        }
        Ok(verdict)
    }

    /// The component's own 0.1.0 answer.
    pub fn check_deployable_ungated(
        &self,
        store: impl AsContextMut,
        project: &Project,
    ) -> Result<Verdict> {
        let v = self.api().call_check_deployable(store, &project.into())?;
        Ok(v.into())
    }
}

/// A 0.1.0 project has no labels: they stay with the host.
impl From<&Project> for wit::Project {
    fn from(p: &Project) -> Self {
        wit::Project {
            id: p.id.clone(),
            name: p.name.clone(),
            kind: match p.kind {
                ProjectKind::Deployment => wit::ProjectKind::Deployment,
                ProjectKind::Compose => wit::ProjectKind::Compose,
                ProjectKind::Image => wit::ProjectKind::Image,
                ProjectKind::Tunnel => wit::ProjectKind::Tunnel,
                ProjectKind::DomainOnly => wit::ProjectKind::DomainOnly,
            },
            git_source: match p.git_source {
                GitSource::Hosted => wit::GitSource::Hosted,
                GitSource::External => wit::GitSource::External,
            },
            git_branch: p.git_branch.clone(),
            auto_deploy_enabled: p.auto_deploy_enabled,
            last_tracked_commit: p.last_tracked_commit.clone(),
            expose_service: p.expose_service.clone(),
            expose_port: p.expose_port,
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
