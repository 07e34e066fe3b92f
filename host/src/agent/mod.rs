//! Deploy nodes: the agent program (`runner`) that claims and runs deploys.
//! (The control plane's node watcher is `loops::node_watch`.)

mod checkout;
mod claim;
mod compose;
mod deploy;
mod docker;
mod files;
mod health;
mod link;
mod logs;
pub mod runner;

use crate::store::ProjectType;

/// The project types this version's agent deploys. The policy gets them as
/// a fact and refuses a deploy of any other type before it is queued.
pub const KINDS: [ProjectType; 3] = [
    ProjectType::Deployment,
    ProjectType::Compose,
    ProjectType::Image,
];
