//! Deploy nodes. On the control plane: a node that stops heartbeating goes
//! offline, and what it held is failed with a reason rather than lost. On a
//! node: the agent program (`runner`) that claims and runs deploys.

mod compose;
pub mod runner;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::store::{ProjectType, now};

pub const NODE_WATCH: &str = "node-watch";

/// The project types this version's agent deploys. The policy gets them as
/// a fact and refuses a deploy of any other type before it is queued.
pub const KINDS: [ProjectType; 2] = [ProjectType::Compose, ProjectType::Image];

/// Every few seconds, fails the queued and running deployments of nodes not
/// seen for `node_offline_after_seconds` (re-read each tick).
///
/// A node's silence counts only from this process's start: while the control
/// plane was down no node could heartbeat, so right after a restart every node
/// would look offline and healthy nodes' running deploys would be failed.
pub async fn watch_nodes(app: Arc<App>, cancel: CancellationToken) {
    let started = now();
    loop {
        let wait = match tick(&app, started).await {
            Ok(offline_after) => {
                app.loops.set(NODE_WATCH, "running", None);
                // Check a few times per timeout so a dead node is noticed soon
                // after it; at most 5 s apart so a lowered timeout applies soon.
                Duration::from_secs((offline_after / 4).clamp(1, 5))
            }
            Err(e) => {
                tracing::warn!(error = %e, "node watch tick failed");
                app.loops.set(NODE_WATCH, "running", Some(e.to_string()));
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    app.loops.set(NODE_WATCH, "stopped", None);
}

async fn tick(app: &App, started: i64) -> Result<u64, crate::store::StoreError> {
    let offline_after = app.store.settings().await?.node_offline_after_seconds;
    let seen_before = now() - offline_after as i64;
    if seen_before < started {
        // Nodes have not had `offline_after` seconds to reach this process yet.
        return Ok(offline_after);
    }
    for d in app
        .store
        .fail_deployments_of_offline_nodes(seen_before)
        .await?
    {
        tracing::warn!(
            project = d.project_id,
            deployment = d.id,
            error = d.error.as_deref().unwrap_or(""),
            "deployment failed: node offline"
        );
    }
    Ok(offline_after)
}
