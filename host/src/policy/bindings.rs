//! The one module that sees wasmtime's generated bindings. Everything crossing
//! it is converted to or from `autodeploy_guest::model`, the plain data types
//! of the contract.

use std::collections::BTreeMap;

use autodeploy_guest::model::{
    CommitDecision, ComposeImages, DigestChange, GitSource, ImageDecision, Lookup, Project,
    ProjectKind, Verdict,
};
use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Result};

mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/policy@0.1.0",
    });
}

use generated::exports::autodeploy::policy::decisions as wit;

/// The name under which a component exports the contract's interface.
pub const INTERFACE: &str = "autodeploy:policy/decisions@0.1.0";
/// The functions that interface must export.
pub const FUNCTIONS: [&str; 6] = [
    "policy-info",
    "parse-compose",
    "decide-commit",
    "decide-images",
    "check-auto-deploy",
    "check-deployable",
];

/// A type-checked, ready-to-instantiate policy.
pub struct Pre<T: 'static>(generated::PolicyPre<T>);

/// One instance of a policy.
pub struct Instance(generated::Policy);

impl<T: 'static> Pre<T> {
    /// Checks the component's exports against the contract's types.
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

    pub fn decide_commit(
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

    pub fn decide_images(
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

    pub fn check_auto_deploy(
        &self,
        store: impl AsContextMut,
        project: &Project,
        enable: bool,
    ) -> Result<Verdict> {
        let v = self
            .api()
            .call_check_auto_deploy(store, &project.into(), enable)?;
        Ok(v.into())
    }

    pub fn check_deployable(&self, store: impl AsContextMut, project: &Project) -> Result<Verdict> {
        let v = self.api().call_check_deployable(store, &project.into())?;
        Ok(v.into())
    }
}

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
