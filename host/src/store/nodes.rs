//! Deploy nodes: registration, labels, heartbeats and deletion.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::db::{SqlStore, string_map, string_map_json, unique};
use super::{
    DeployStatus, EventKind, Node, NodeDeletion, Result, StoreError, deployments, events, now,
};

const COLUMNS: &str = "id, name, labels, last_seen_at, created_at";

fn node_from(row: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: string_map("node labels", &row.try_get::<String, _>("labels")?)?,
        last_seen_at: row.try_get("last_seen_at")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn add(
    db: &SqlStore,
    name: &str,
    token_hash: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Node> {
    let mut tx = db.begin_write().await?;
    let row = sqlx::query(
        "INSERT INTO nodes (name, token_hash, labels, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(name)
    .bind(token_hash)
    .bind(string_map_json(labels))
    .bind(now())
    .fetch_one(&mut *tx)
    .await
    .map_err(unique(&format!("a node named {name:?}")))?;
    let node = find(&mut *tx, row.try_get("id")?).await?;
    events::insert(
        &mut *tx,
        None,
        EventKind::NodeAdded,
        &format!("node {name} added"),
    )
    .await?;
    tx.commit().await?;
    Ok(node)
}

pub(super) async fn list(db: &SqlStore) -> Result<Vec<Node>> {
    page(db, None, i64::MAX).await
}

/// By id, from above `after`: a keyset page on the primary key.
pub(super) async fn page(db: &SqlStore, after: Option<i64>, limit: i64) -> Result<Vec<Node>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM nodes WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(node_from)
    .collect()
}

async fn find<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(exec: E, id: i64) -> Result<Node> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM nodes WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(exec)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
    node_from(&row)
}

pub(super) async fn get(db: &SqlStore, id: i64) -> Result<Node> {
    find(&db.pool, id).await
}

pub(super) async fn by_token_hash(db: &SqlStore, hash: &str) -> Result<Option<Node>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM nodes WHERE token_hash = $1"
    )))
    .bind(hash)
    .fetch_optional(&db.pool)
    .await?
    .as_ref()
    .map(node_from)
    .transpose()
}

pub(super) async fn delete(db: &SqlStore, id: i64, force: bool) -> Result<NodeDeletion> {
    let mut tx = db.begin_write().await?;
    // A claim by this node (which heartbeats it first) waits for the delete.
    sqlx::query(AssertSqlSafe(format!(
        "SELECT id FROM nodes WHERE id = $1{}",
        db.lock(" FOR UPDATE")
    )))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let node = find(&mut *tx, id).await?;
    let pinned = sqlx::query("SELECT id, name FROM projects WHERE pinned_node_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("id")?, r.try_get::<String, _>("name")?)))
        .collect::<Result<Vec<_>>>()?;
    if !pinned.is_empty() && !force {
        let names: Vec<String> = pinned.iter().map(|(_, n)| format!("{n:?}")).collect();
        return Err(StoreError::Conflict(format!(
            "node {} has pinned compose projects: {}; their named volumes live on it. \
             Delete with ?force=true to unpin them: each then deploys on whichever node claims it next, without those volumes",
            node.name,
            names.join(", ")
        )));
    }
    let t = now();
    let mut unpinned = Vec::new();
    for (project_id, name) in pinned {
        sqlx::query("UPDATE projects SET pinned_node_id = NULL, updated_at = $1 WHERE id = $2")
            .bind(t)
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
        events::insert(
            &mut *tx,
            Some(project_id),
            EventKind::ProjectUnpinned,
            &format!(
                "project {name:?} unpinned from node {} because the node was deleted with force; its named volumes stay there",
                node.name
            ),
        )
        .await?;
        unpinned.push(name);
    }
    let held = sqlx::query(
        AssertSqlSafe(format!("SELECT id, project_id, status FROM deployments WHERE node_id = $1 AND status IN ('queued', 'running') ORDER BY id{}",
        db.lock(" FOR UPDATE"))),
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let mut failed_deployments = Vec::new();
    for r in &held {
        let (dep, project_id, status): (i64, i64, DeployStatus) = (
            r.try_get("id")?,
            r.try_get("project_id")?,
            r.try_get("status")?,
        );
        let error = if status == DeployStatus::Running {
            format!(
                "node {} was deleted while running this deployment; it was not finished",
                node.name
            )
        } else {
            // As for an offline node: the change is tried again later.
            deployments::give_back_tracked_state(&mut tx, dep).await?;
            format!(
                "node {} was deleted while this deployment was queued for it",
                node.name
            )
        };
        deployments::fail(&mut tx, dep, &error).await?;
        events::insert(
            &mut *tx,
            Some(project_id),
            EventKind::DeployFailed,
            &format!("deployment {dep} failed: {error}"),
        )
        .await?;
        failed_deployments.push(dep);
    }
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::insert(
        &mut *tx,
        None,
        EventKind::NodeDeleted,
        &format!("node {} deleted", node.name),
    )
    .await?;
    tx.commit().await?;
    Ok(NodeDeletion {
        node,
        unpinned,
        failed_deployments,
    })
}

pub(super) async fn holds_project(db: &SqlStore, node_id: i64, project_id: i64) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM deployments WHERE project_id = $1 AND node_id = $2 AND status = 'running' LIMIT 1",
    )
    .bind(project_id)
    .bind(node_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.is_some())
}

pub(super) async fn heartbeat<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    exec: E,
    node_id: i64,
    at: i64,
) -> Result<()> {
    sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE id = $2")
        .bind(at)
        .bind(node_id)
        .execute(exec)
        .await?;
    Ok(())
}

/// The queue depth and the nodes online, in one round trip.
pub async fn observed(db: &SqlStore, online_since: i64) -> Result<super::Observed> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM deployments WHERE status = 'queued') AS queued, \
         (SELECT COUNT(*) FROM nodes WHERE last_seen_at >= $1) AS online",
    )
    .bind(online_since)
    .fetch_one(&db.pool)
    .await?;
    Ok(super::Observed {
        queued: row.try_get("queued")?,
        nodes_online: row.try_get("online")?,
    })
}
