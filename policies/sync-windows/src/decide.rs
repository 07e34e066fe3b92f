//! The decisions: the default policy's, held back while a sync window says no.
//!
//! A held change is left exactly where the next tick finds it again: a commit
//! is not recorded, a moved digest keeps its previous value. Once the window
//! closes (or an allow window opens), the next tick deploys it.

use std::collections::BTreeMap;

use autodeploy_guest as default;
use autodeploy_policy_contract::Decisions;
use autodeploy_policy_contract::model::{
    CommitDecision, ComposeImages, Facts, ImageDecision, Lookup, PolicyMeta, Project,
    TriggerSource, Verdict, WatchPlan,
};

use crate::config::Config;
use crate::gate::{Gate, gate};

/// The name this policy reports through `policy-info`.
pub const POLICY_NAME: &str = "autodeploy-sync-windows";
/// The version this policy reports through `policy-info`.
pub const POLICY_VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn policy_meta() -> PolicyMeta {
    PolicyMeta {
        name: POLICY_NAME.into(),
        version: POLICY_VERSION.into(),
    }
}

/// Pure in the file's text, as the default policy: windows do not apply.
pub fn parse_compose(yaml: &str) -> Result<ComposeImages, String> {
    default::parse_compose(yaml)
}

/// The default plan: a held project is still watched, so its change is seen
/// (and deployed) on the first tick after the window lets it through.
pub fn watch_plan(project: &Project, facts: &Facts) -> WatchPlan {
    let mut plan = default::watch_plan(project, facts);
    if let Err(e) = Config::parse(&facts.config) {
        plan.reason = format!(
            "{}; {e}: every deploy is refused until it is fixed",
            plan.reason
        );
    }
    plan
}

pub fn decide_commit(
    project: &Project,
    facts: &Facts,
    source: TriggerSource,
    remote_head: Option<&str>,
) -> Result<CommitDecision, String> {
    let config = Config::parse(&facts.config).map_err(|e| e.to_string())?;
    let decision = default::decide_commit(project, facts, source, remote_head)?;
    if !decision.trigger {
        return Ok(decision);
    }
    match gate(&config, &project.labels, source, facts.now_unix_seconds)
        .map_err(|e| e.to_string())?
    {
        Gate::Pass { note: None } => Ok(decision),
        Gate::Pass { note: Some(note) } => Ok(CommitDecision {
            reason: format!("{}; {note}", decision.reason),
            ..decision
        }),
        // Nothing recorded: the tracked commit stays, so the next tick sees
        // the same move and decides again.
        Gate::Held { reason } => Ok(CommitDecision {
            trigger: false,
            record: None,
            reason: format!("{reason}; not deploying yet: {}", decision.reason),
        }),
    }
}

pub fn decide_images(
    project: &Project,
    facts: &Facts,
    prior: &BTreeMap<String, String>,
    lookups: &BTreeMap<String, Lookup>,
) -> ImageDecision {
    let unchanged = |reason: String| ImageDecision {
        trigger: false,
        record: prior.clone(),
        moved: vec![],
        added: vec![],
        reason,
    };
    let config = match Config::parse(&facts.config) {
        Ok(c) => c,
        Err(e) => return unchanged(format!("{e}; digests not compared, nothing deployed")),
    };
    let mut decision = default::decide_images(project, facts, prior, lookups);
    if !decision.trigger {
        return decision;
    }
    let held = match gate(
        &config,
        &project.labels,
        TriggerSource::AutoImage,
        facts.now_unix_seconds,
    ) {
        Err(e) => return unchanged(format!("{e}; digests not compared, nothing deployed")),
        Ok(Gate::Pass { note: None }) => return decision,
        Ok(Gate::Pass { note: Some(note) }) => {
            decision.reason = format!("{}; {note}", decision.reason);
            return decision;
        }
        Ok(Gate::Held { reason }) => reason,
    };
    // Each moved image keeps its previous digest, so the next tick sees the
    // move again; what else the default recorded (new images, failed
    // lookups, images gone from the file) deploys nothing and stands.
    for m in &decision.moved {
        decision.record.insert(m.image.clone(), m.previous.clone());
    }
    decision.trigger = false;
    decision.reason = format!("{held}; not deploying yet: {}", decision.reason);
    decision
}

/// The default rules. The windows do not restrict the toggle; a config that
/// does not read refuses turning it on.
pub fn check_auto_deploy(project: &Project, facts: &Facts, enable: bool) -> Verdict {
    let verdict = default::check_auto_deploy(project, facts, enable);
    match Config::parse(&facts.config) {
        Ok(_) => verdict,
        Err(e) if enable => Verdict::Refused(e.to_string()),
        Err(e) => Verdict::Allowed(format!("{}; {e}", verdict.reason())),
    }
}

/// The default rules, then the windows for manual deploys: only those marked
/// `manual` refuse one. Automatic deploys were held in `decide-*` already;
/// refusing one here would record a failed deployment and lose the change.
pub fn check_deployable(project: &Project, facts: &Facts, source: TriggerSource) -> Verdict {
    let config = match Config::parse(&facts.config) {
        Ok(c) => c,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    let verdict = default::check_deployable(project, facts, source);
    if !verdict.is_allowed() || source.is_automatic() {
        return verdict;
    }
    match gate(&config, &project.labels, source, facts.now_unix_seconds) {
        Err(e) => Verdict::Refused(e.to_string()),
        Ok(Gate::Pass { note: None }) => verdict,
        Ok(Gate::Pass { note: Some(note) }) => {
            Verdict::Allowed(format!("{}; {note}", verdict.reason()))
        }
        Ok(Gate::Held { reason }) => Verdict::Refused(format!(
            "{reason}; the window holds manual deploys too (manual: true)"
        )),
    }
}

/// This policy, as the contract's 0.2.0 [`Decisions`]: the functions above.
pub struct SyncWindows;

impl Decisions for SyncWindows {
    fn policy_info() -> PolicyMeta {
        policy_meta()
    }

    fn parse_compose(yaml: &str) -> Result<ComposeImages, String> {
        parse_compose(yaml)
    }

    fn watch_plan(project: &Project, facts: &Facts) -> WatchPlan {
        watch_plan(project, facts)
    }

    fn decide_commit(
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<CommitDecision, String> {
        decide_commit(project, facts, source, remote_head)
    }

    fn decide_images(
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> ImageDecision {
        decide_images(project, facts, prior, lookups)
    }

    fn check_auto_deploy(project: &Project, facts: &Facts, enable: bool) -> Verdict {
        check_auto_deploy(project, facts, enable)
    }

    fn check_deployable(project: &Project, facts: &Facts, source: TriggerSource) -> Verdict {
        check_deployable(project, facts, source)
    }
}
