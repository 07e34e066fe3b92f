//! Deploy node actions: add (its token is shown once), delete, the list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Result;
use super::checks;
use super::page::{List, Page, PageRequest};
use crate::app::App;
use crate::secrets::{Secret, new_token, token_hash};
use crate::store::{Node, NodeDeletion, now};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub name: String,
    /// Matched against projects' `node_selector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A node with whether it was heard from recently enough to count as online.
#[derive(Serialize)]
pub struct NodeState {
    #[serde(flatten)]
    pub node: Node,
    pub online: bool,
}

pub async fn list(app: &App, page: PageRequest) -> Result<Page<NodeState>> {
    let offline_after = app.store.settings().await?.node_offline_after_seconds as i64;
    let t = now();
    let rows = app.store.nodes_page(page.after, page.fetch()).await?;
    Ok(
        Page::of(List::Nodes, page, rows, |n| n.id).map(|node| NodeState {
            online: node.online(t, offline_after),
            node,
        }),
    )
}

/// Adds a node with its event; the store keeps only the token's hash.
pub async fn add(app: &App, req: NewNode) -> Result<(Node, Secret)> {
    checks::name("node name", &req.name)?;
    checks::labels("labels", &req.labels)?;
    let token = new_token("adn");
    let node = app
        .store
        .add_node(&req.name, &token_hash(token.expose()), &req.labels)
        .await?;
    Ok((node, token))
}

/// Deletes a node: see [`crate::store::Store::delete_node`].
pub async fn delete(app: &App, id: i64, force: bool) -> Result<NodeDeletion> {
    let done = app.store.delete_node(id, force).await?;
    for name in &done.unpinned {
        tracing::warn!(node = %done.node.name, project = %name, "node deleted with force: project unpinned");
    }
    tracing::info!(node = %done.node.name, failed = ?done.failed_deployments, "node deleted");
    Ok(done)
}

/// The projects pinned to each node (id and name), by node id.
pub async fn pinned(app: &App) -> Result<BTreeMap<i64, Vec<(i64, String)>>> {
    let mut out: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for (node, id, name) in app.store.pinned_projects().await? {
        out.entry(node).or_default().push((id, name));
    }
    Ok(out)
}
