//! The facts a decision is made on.
//!
//! For now one function builds them from what a call site can read at once
//! (the settings, the project's pinned node, the system clock); the real
//! gathering (the operator's policy config, a test clock, labels) replaces
//! it.

use super::{Facts, NodeState, PinnedNode, ProjectKind};
use crate::app::App;
use crate::store::{StoreError, now};

/// The project kinds the daemon lets the policy deploy today. The agents run
/// compose and image projects; `deployment` projects are queued all the same
/// (the agent reports why it cannot run them), as before facts existed.
const AGENT_KINDS: [ProjectKind; 3] = [
    ProjectKind::Deployment,
    ProjectKind::Compose,
    ProjectKind::Image,
];

/// Facts for a decision about a project of `kind`, pinned to node
/// `pinned_node_id` if any: the master switch from the settings, the pinned
/// node's state for a compose project (only compose projects stay on a node),
/// the time now, no policy config.
pub async fn placeholder(
    app: &App,
    kind: ProjectKind,
    pinned_node_id: Option<i64>,
) -> Result<Facts, StoreError> {
    let settings = app.store.settings().await?;
    let now = now();
    let pinned_node = match pinned_node_id {
        Some(id) if kind == ProjectKind::Compose => {
            let node = app.store.node(id).await?;
            let offline_after = settings.node_offline_after_seconds as i64;
            let state = if node.online(now, offline_after) {
                NodeState::Online
            } else {
                NodeState::Offline
            };
            Some(PinnedNode {
                name: node.name,
                state,
            })
        }
        _ => None,
    };
    Ok(Facts {
        auto_deploy_master_enabled: settings.auto_deploy_master_enabled,
        now_unix_seconds: now,
        config: String::new(),
        pinned_node,
        agent_kinds: AGENT_KINDS.to_vec(),
    })
}
