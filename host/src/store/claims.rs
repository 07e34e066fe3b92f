//! What agents do with deployments: claim the next one a node may run,
//! report how it went; and what happens to those of nodes gone offline.

use sqlx::Row;

use super::db::{SqlStore, enum_str, string_map};
use super::{
    Claim, DeployStatus, Deployment, EventKind, Result, StoreError, deployments, events, nodes,
    now, projects, refuse_to_migrate, selector_matches,
};

pub(super) async fn claim(db: &SqlStore, node_id: i64) -> Result<Option<Claim>> {
    let mut tx = db.begin_write().await?;
    let t = now();
    nodes::heartbeat(&mut *tx, node_id, t).await?;
    let labels = sqlx::query("SELECT labels FROM nodes WHERE id = $1")
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {node_id}")))?;
    let labels = string_map("node labels", &labels.try_get::<String, _>("labels")?)?;
    // Assigned to this node, or free and of a project not pinned
    // elsewhere; never a second deploy of a project that is running one.
    // The project's node selector is matched here, not in SQL: the maps
    // are JSON text, read the same way on every backend.
    let rows = sqlx::query(
        "SELECT d.id, d.project_id, p.project_type, p.pinned_node_id, p.node_selector FROM deployments d \
         JOIN projects p ON p.id = d.project_id \
         WHERE d.status = 'queued' AND (d.node_id = $1 OR (d.node_id IS NULL AND \
         (p.pinned_node_id IS NULL OR p.pinned_node_id = $2))) \
         AND NOT EXISTS (SELECT 1 FROM deployments r WHERE r.project_id = d.project_id AND r.status = 'running') \
         ORDER BY d.id",
    )
    .bind(node_id)
    .bind(node_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut row = None;
    for r in rows {
        let selector: String = r.try_get("node_selector")?;
        match string_map("node selector", &selector) {
            Ok(selector) if selector_matches(&selector, &labels) => {
                row = Some(r);
                break;
            }
            Ok(_) => {}
            // A corrupt selector keeps its own project from deploying;
            // it never hands the project to a node it might exclude.
            Err(e) => {
                let project: i64 = r.try_get("project_id")?;
                tracing::warn!(project, error = %e, "skipping a deployment whose project cannot be read");
            }
        }
    }
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(None);
    };
    let (id, project_id): (i64, i64) = (row.try_get("id")?, row.try_get("project_id")?);
    let compose = row.try_get::<String, _>("project_type")? == "compose";
    if compose && row.try_get::<Option<i64>, _>("pinned_node_id")?.is_none() {
        // First deploy: the project's named volumes will live on this node.
        sqlx::query("UPDATE projects SET pinned_node_id = $1 WHERE id = $2")
            .bind(node_id)
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE deployments SET status = 'running', node_id = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(node_id)
    .bind(t)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::DeployClaimed,
        &format!("deployment {id} claimed by node {node_id}"),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Claim {
        deployment: deployments::get(db, id).await?,
        project: projects::get(db, project_id).await?,
    }))
}

pub(super) async fn report(
    db: &SqlStore,
    node_id: i64,
    deployment_id: i64,
    status: DeployStatus,
    log_tail: Option<&str>,
    error: Option<&str>,
) -> Result<Deployment> {
    let t = now();
    let finished = matches!(status, DeployStatus::Succeeded | DeployStatus::Failed).then_some(t);
    let done = sqlx::query(
        "UPDATE deployments SET status = $1, log_tail = COALESCE($2, log_tail), error = COALESCE($3, error), \
         updated_at = $4, finished_at = $5 WHERE id = $6 AND node_id = $7 AND status = 'running'",
    )
    .bind(enum_str(&status))
    .bind(log_tail)
    .bind(error)
    .bind(t)
    .bind(finished)
    .bind(deployment_id)
    .bind(node_id)
    .execute(&db.pool)
    .await?;
    let d = deployments::get(db, deployment_id).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "deployment {deployment_id} is not running on this node (it is {})",
            enum_str(&d.status)
        )));
    }
    nodes::heartbeat(&db.pool, node_id, t).await?;
    events::insert(
        &db.pool,
        Some(d.project_id),
        EventKind::DeployReported,
        &format!("deployment {deployment_id}: {}", enum_str(&status)),
    )
    .await?;
    Ok(d)
}

pub(super) async fn fail_of_offline_nodes(
    db: &SqlStore,
    seen_before: i64,
) -> Result<Vec<Deployment>> {
    let mut tx = db.begin_write().await?;
    let rows = sqlx::query(
        "SELECT d.id, d.status, n.name \
         FROM deployments d JOIN nodes n ON n.id = d.node_id \
         WHERE d.status IN ('queued', 'running') AND (n.last_seen_at IS NULL OR n.last_seen_at < $1)",
    )
    .bind(seen_before)
    .fetch_all(&mut *tx)
    .await?;
    let mut failed = Vec::new();
    for r in &rows {
        let (id, status, node): (i64, String, String) =
            (r.try_get("id")?, r.try_get("status")?, r.try_get("name")?);
        let error = if status == "running" {
            format!("node {node} went offline while running this deployment; it was not finished")
        } else {
            // Never reached its node: the tracked state goes back to what
            // it was before this deployment, so the next tick (once the
            // node is back) tries the change again. A queued deployment
            // absorbs every later trigger, so nothing newer is undone.
            deployments::give_back_tracked_state(&mut tx, id).await?;
            refuse_to_migrate(&node)
        };
        deployments::fail(&mut tx, id, &error).await?;
        failed.push(id);
    }
    tx.commit().await?;
    let mut out = Vec::new();
    for id in failed {
        let d = deployments::get(db, id).await?;
        events::insert(
            &db.pool,
            Some(d.project_id),
            EventKind::DeployFailed,
            d.error.as_deref().unwrap_or_default(),
        )
        .await?;
        out.push(d);
    }
    Ok(out)
}
