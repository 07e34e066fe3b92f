//! The 0.2.0 decisions as a Rust trait over the contract's plain types: a
//! policy implements it once, and gets [`Decisions::answer`] (native runs of
//! a [`Call`]) and, through the default policy's export macro, its component
//! exports without writing either dispatch itself.

use std::collections::BTreeMap;

use crate::call::{Answer, Call};
use crate::model::{
    CommitDecision, ComposeImages, Facts, ImageDecision, Lookup, PolicyMeta, Project,
    TriggerSource, Verdict, WatchPlan,
};

/// The functions of `autodeploy:policy/decisions@0.2.0`, one per WIT function.
pub trait Decisions {
    fn policy_info() -> PolicyMeta;

    fn parse_compose(yaml: &str) -> Result<ComposeImages, String>;

    fn watch_plan(project: &Project, facts: &Facts) -> WatchPlan;

    fn decide_commit(
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<CommitDecision, String>;

    fn decide_images(
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> ImageDecision;

    fn check_auto_deploy(project: &Project, facts: &Facts, enable: bool) -> Verdict;

    fn check_deployable(project: &Project, facts: &Facts, source: TriggerSource) -> Verdict;

    /// Answers one call as the 0.2.0 component does.
    fn answer(call: &Call) -> Answer {
        match call {
            Call::PolicyInfo => Answer::PolicyInfo(Self::policy_info()),
            Call::ParseCompose { yaml } => Answer::ParseCompose(Self::parse_compose(yaml)),
            Call::WatchPlan { project, facts } => {
                Answer::WatchPlan(Self::watch_plan(project, facts))
            }
            Call::DecideCommit {
                project,
                facts,
                source,
                remote_head,
            } => Answer::DecideCommit(Self::decide_commit(
                project,
                facts,
                *source,
                remote_head.as_deref(),
            )),
            Call::DecideImages {
                project,
                facts,
                prior,
                lookups,
            } => Answer::DecideImages(Self::decide_images(project, facts, prior, lookups)),
            Call::CheckAutoDeploy {
                project,
                facts,
                enable,
            } => Answer::CheckAutoDeploy(Self::check_auto_deploy(project, facts, *enable)),
            Call::CheckDeployable {
                project,
                facts,
                source,
            } => Answer::CheckDeployable(Self::check_deployable(project, facts, *source)),
        }
    }
}
