//! Runs a contract `Call` on today's 0.1.0 policy API. Temporary: replaced
//! by `Policy::run` once the per-version bindings land.

use autodeploy_policy_contract::model as contract;
use autodeploy_policy_contract::{Answer, Call};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::policy::{Policy, PolicyError};

fn convert<A: Serialize, B: DeserializeOwned>(call: &'static str, a: &A) -> Result<B, PolicyError> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| PolicyError::Trap {
            call,
            message: format!("the host could not convert the call: {e}"),
        })
}

fn project(
    call: &'static str,
    p: &contract::Project,
) -> Result<crate::policy::Project, PolicyError> {
    let mut v = serde_json::to_value(p).map_err(|e| PolicyError::Trap {
        call,
        message: e.to_string(),
    })?;
    if let Some(m) = v.as_object_mut() {
        m.remove("labels");
    }
    convert(call, &v)
}

pub fn run_call(policy: &Policy, call: &Call) -> Result<Answer, PolicyError> {
    let name = call.name();
    fn rejected<T>(r: Result<T, PolicyError>) -> Result<Result<T, String>, PolicyError> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(PolicyError::Rejected { message, .. }) => Ok(Err(message)),
            Err(e) => Err(e),
        }
    }
    match call {
        Call::PolicyInfo => Ok(Answer::PolicyInfo(contract::PolicyMeta {
            name: policy.info().name.clone(),
            version: policy.info().version.clone(),
        })),
        Call::ParseCompose { yaml } => {
            let r = rejected(policy.parse_compose(yaml))?;
            Ok(Answer::ParseCompose(match r {
                Ok(v) => Ok(convert(name, &v)?),
                Err(e) => Err(e),
            }))
        }
        Call::DecideCommit {
            project: p,
            remote_head,
            ..
        } => {
            let r = rejected(policy.decide_commit(&project(name, p)?, remote_head.as_deref()))?;
            Ok(Answer::DecideCommit(match r {
                Ok(v) => Ok(convert(name, &v)?),
                Err(e) => Err(e),
            }))
        }
        Call::DecideImages {
            project: p,
            prior,
            lookups,
            ..
        } => {
            let lookups = convert(name, lookups)?;
            let d = policy.decide_images(&project(name, p)?, prior, &lookups)?;
            Ok(Answer::DecideImages(convert(name, &d)?))
        }
        Call::CheckAutoDeploy {
            project: p, enable, ..
        } => Ok(Answer::CheckAutoDeploy(convert(
            name,
            &policy.check_auto_deploy(&project(name, p)?, *enable)?,
        )?)),
        Call::CheckDeployable { project: p, .. } => Ok(Answer::CheckDeployable(convert(
            name,
            &policy.check_deployable(&project(name, p)?)?,
        )?)),
        Call::WatchPlan { .. } => Err(PolicyError::Trap {
            call: name,
            message: "watch-plan is not part of this policy's contract".into(),
        }),
    }
}

/// A host project in the contract's terms.
pub fn contract_project(p: &crate::policy::Project) -> contract::Project {
    serde_json::to_value(p)
        .and_then(serde_json::from_value)
        .expect("the host's project converts to the contract's")
}

/// The facts a 0.1.0-era call site knows: the master switch is on (the host
/// gates before asking) and the time is now.
pub fn placeholder_facts() -> contract::Facts {
    contract::Facts {
        now_unix_seconds: crate::store::now(),
        ..contract::Facts::default()
    }
}

pub fn trigger_source(s: crate::store::DeploySource) -> contract::TriggerSource {
    use crate::store::DeploySource as D;
    use contract::TriggerSource as T;
    match s {
        D::Manual => T::Manual,
        D::AutoPoll => T::AutoPoll,
        D::AutoPush => T::AutoPush,
        D::AutoImage => T::AutoImage,
    }
}

pub fn contract_lookups(
    l: &std::collections::BTreeMap<String, crate::policy::Lookup>,
) -> std::collections::BTreeMap<String, contract::Lookup> {
    serde_json::to_value(l)
        .and_then(serde_json::from_value)
        .expect("the host's lookups convert to the contract's")
}
