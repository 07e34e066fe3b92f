//! The only modules that see wasmtime's generated bindings: one per released
//! version of `autodeploy:policy`. A loaded component is checked for the
//! interface it exports and wrapped in the matching module; everything
//! crossing this boundary is the contract's plain types, in 0.2.0 terms (a
//! 0.1.0 component gets the host's old gates around its answers).

mod v0_1_0;
mod v0_2_0;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{AsContextMut, Engine, Result};

pub use autodeploy_policy_contract::WitVersion;

use super::{Answer, Call, PolicyError, PolicyMeta};

/// Which contract version `component` implements, after checking it imports
/// nothing and exports every function of that version. Names every import,
/// and every missing function, at once: more use to a policy author than the
/// first type error. A component exporting several versions is run as the
/// newest.
pub fn check_shape(engine: &Engine, component: &Component) -> Result<WitVersion, PolicyError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if !imports.is_empty() {
        return Err(PolicyError::Imports(imports));
    }
    let mut found = None;
    let mut unknown = Vec::new();
    for (name, item) in ty.exports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        match WitVersion::from_interface(name) {
            Some(v) if found.as_ref().is_none_or(|(f, _)| v > *f) => found = Some((v, instance)),
            Some(_) => {}
            None if name.starts_with("autodeploy:policy/") => unknown.push(name.to_string()),
            None => {}
        }
    }
    let Some((version, instance)) = found else {
        let known: Vec<&str> = WitVersion::ALL
            .iter()
            .rev()
            .map(|v| v.interface())
            .collect();
        let mut missing = vec!["an exported interface".to_string()];
        if !unknown.is_empty() {
            missing.push(format!(
                "(it exports {}, which this daemon does not know)",
                unknown.join(", ")
            ));
        }
        return Err(PolicyError::Missing {
            interface: known.join(" or "),
            missing,
        });
    };
    let present: Vec<String> = instance
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let missing: Vec<String> = version
        .functions()
        .iter()
        .filter(|f| !present.iter().any(|p| p == *f))
        .map(|f| f.to_string())
        .collect();
    if missing.is_empty() {
        Ok(version)
    } else {
        Err(PolicyError::Missing {
            interface: version.interface().to_string(),
            missing,
        })
    }
}

/// A type-checked, ready-to-instantiate policy of either version.
pub enum Pre<T: 'static> {
    V0_1_0(v0_1_0::Pre<T>),
    V0_2_0(v0_2_0::Pre<T>),
}

/// One instance of a policy.
pub enum Instance {
    V0_1_0(v0_1_0::Instance),
    V0_2_0(v0_2_0::Instance),
}

impl<T: 'static> Pre<T> {
    /// Checks the component's exports against `version`'s types.
    pub fn new(version: WitVersion, pre: InstancePre<T>) -> Result<Self> {
        Ok(match version {
            WitVersion::V0_1_0 => Pre::V0_1_0(v0_1_0::Pre::new(pre)?),
            WitVersion::V0_2_0 => Pre::V0_2_0(v0_2_0::Pre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> Result<Instance> {
        Ok(match self {
            Pre::V0_1_0(p) => Instance::V0_1_0(p.instantiate(store)?),
            Pre::V0_2_0(p) => Instance::V0_2_0(p.instantiate(store)?),
        })
    }
}

/// Calls the same method on whichever version's instance this is.
macro_rules! each {
    ($self:ident, $i:ident => $call:expr) => {
        match $self {
            Instance::V0_1_0($i) => $call,
            Instance::V0_2_0($i) => $call,
        }
    };
}

impl Instance {
    pub fn policy_info(&self, store: impl AsContextMut) -> Result<(String, String)> {
        each!(self, i => i.policy_info(store))
    }

    pub fn parse_compose(
        &self,
        store: impl AsContextMut,
        yaml: &str,
    ) -> Result<Result<super::ComposeImages, String>> {
        each!(self, i => i.parse_compose(store, yaml))
    }

    pub fn watch_plan(
        &self,
        store: impl AsContextMut,
        project: &super::Project,
        facts: &super::Facts,
    ) -> Result<super::WatchPlan> {
        each!(self, i => i.watch_plan(store, project, facts))
    }

    pub fn decide_commit(
        &self,
        store: impl AsContextMut,
        project: &super::Project,
        facts: &super::Facts,
        source: super::TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<Result<super::CommitDecision, String>> {
        each!(self, i => i.decide_commit(store, project, facts, source, remote_head))
    }

    pub fn decide_images(
        &self,
        store: impl AsContextMut,
        project: &super::Project,
        facts: &super::Facts,
        prior: &std::collections::BTreeMap<String, String>,
        lookups: &std::collections::BTreeMap<String, super::Lookup>,
    ) -> Result<super::ImageDecision> {
        each!(self, i => i.decide_images(store, project, facts, prior, lookups))
    }

    pub fn check_auto_deploy(
        &self,
        store: impl AsContextMut,
        project: &super::Project,
        facts: &super::Facts,
        enable: bool,
    ) -> Result<super::Verdict> {
        each!(self, i => i.check_auto_deploy(store, project, facts, enable))
    }

    pub fn check_deployable(
        &self,
        store: impl AsContextMut,
        project: &super::Project,
        facts: &super::Facts,
        source: super::TriggerSource,
    ) -> Result<super::Verdict> {
        each!(self, i => i.check_deployable(store, project, facts, source))
    }

    /// Answers one call in 0.2.0 terms, whatever the component's version.
    pub fn run(&self, store: impl AsContextMut, call: &Call) -> Result<Answer> {
        Ok(match call {
            Call::PolicyInfo => {
                let (name, version) = self.policy_info(store)?;
                Answer::PolicyInfo(PolicyMeta { name, version })
            }
            Call::ParseCompose { yaml } => Answer::ParseCompose(self.parse_compose(store, yaml)?),
            Call::WatchPlan { project, facts } => {
                Answer::WatchPlan(self.watch_plan(store, project, facts)?)
            }
            Call::DecideCommit {
                project,
                facts,
                source,
                remote_head,
            } => Answer::DecideCommit(self.decide_commit(
                store,
                project,
                facts,
                *source,
                remote_head.as_deref(),
            )?),
            Call::DecideImages {
                project,
                facts,
                prior,
                lookups,
            } => Answer::DecideImages(self.decide_images(store, project, facts, prior, lookups)?),
            Call::CheckAutoDeploy {
                project,
                facts,
                enable,
            } => Answer::CheckAutoDeploy(self.check_auto_deploy(store, project, facts, *enable)?),
            Call::CheckDeployable {
                project,
                facts,
                source,
            } => Answer::CheckDeployable(self.check_deployable(store, project, facts, *source)?),
        })
    }

    /// Answers one call in the terms of the component's own version: a 0.1.0
    /// component without the host's gates (facts, sources and labels unused),
    /// as its own conformance vectors expect. `watch-plan`, which 0.1.0 does
    /// not have, gets the host's answer.
    pub fn run_own(&self, store: impl AsContextMut, call: &Call) -> Result<Answer> {
        let Instance::V0_1_0(i) = self else {
            return self.run(store, call);
        };
        Ok(match call {
            Call::DecideCommit {
                project,
                remote_head,
                ..
            } => Answer::DecideCommit(i.decide_commit_ungated(
                store,
                project,
                remote_head.as_deref(),
            )?),
            Call::DecideImages {
                project,
                prior,
                lookups,
                ..
            } => Answer::DecideImages(i.decide_images_ungated(store, project, prior, lookups)?),
            Call::CheckDeployable { project, .. } => {
                Answer::CheckDeployable(i.check_deployable_ungated(store, project)?)
            }
            Call::PolicyInfo
            | Call::ParseCompose { .. }
            | Call::WatchPlan { .. }
            | Call::CheckAutoDeploy { .. } => self.run(store, call)?,
        })
    }
}
