//! The node watcher: every few seconds, fails the queued and running
//! deployments of nodes not seen for `node_offline_after_seconds` (re-read
//! each tick), so what an offline node held is failed with a reason rather
//! than lost.
//!
//! Every replica runs it: the update only fails what is still open, so two
//! replicas failing the same deployment change it once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Loop, LoopStatus, Ticked};
use crate::app::App;
use crate::store::{Settings, StoreError, now};

pub const NODE_WATCH: &str = "node-watch";

pub struct NodeWatcher {
    /// When this process started (Unix seconds).
    ///
    /// A node's silence counts only from then: while the control plane was
    /// down no node could heartbeat, so right after a restart every node
    /// would look offline and healthy nodes' running deploys would be failed.
    started: i64,
    status: LoopStatus,
}

impl Default for NodeWatcher {
    fn default() -> Self {
        NodeWatcher {
            started: now(),
            status: LoopStatus::default(),
        }
    }
}

#[async_trait]
impl Loop for NodeWatcher {
    type Error = StoreError;

    fn name(&self) -> &'static str {
        NODE_WATCH
    }

    fn status(&self) -> &LoopStatus {
        &self.status
    }

    fn first_at_once(&self) -> bool {
        true
    }

    /// A few checks per timeout, so a dead node is noticed soon after it;
    /// at most 5 s apart, so a lowered timeout applies soon.
    fn interval(&self, _app: &App, settings: &Settings) -> Duration {
        Duration::from_secs((settings.node_offline_after_seconds / 4).clamp(1, 5))
    }

    async fn tick(
        &self,
        app: &Arc<App>,
        _cancel: &CancellationToken,
    ) -> Result<Ticked, StoreError> {
        let offline_after = app.store.settings().await?.node_offline_after_seconds;
        let seen_before = now() - offline_after as i64;
        if seen_before < self.started {
            // Nodes have not had `offline_after` seconds to reach this process yet.
            return Ok(Ticked::default());
        }
        let failed = app
            .store
            .fail_deployments_of_offline_nodes(seen_before)
            .await?;
        for d in &failed {
            tracing::warn!(
                project = d.project_id,
                deployment = d.id,
                error = d.error.as_deref().unwrap_or(""),
                "deployment failed: node offline"
            );
        }
        Ok(Ticked::default())
    }
}
