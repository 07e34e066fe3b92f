//! What agents do with deployments: claim the next one a node may run,
//! report how it went; and what happens to those of nodes gone offline.

use sqlx::{AssertSqlSafe, Row};

use super::db::{SqlStore, string_map};
use super::{
    Claim, DeployStatus, Deployment, EventKind, ProjectType, Result, StoreError, deployments,
    events, nodes, now, projects, refuse_to_migrate, selector_matches,
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
        "SELECT d.id, d.project_id, d.node_id, p.project_type, p.pinned_node_id, p.node_selector FROM deployments d \
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
    let mut taken = None;
    for r in rows {
        let selector: String = r.try_get("node_selector")?;
        match string_map("node selector", &selector) {
            Ok(selector) if selector_matches(&selector, &labels) => {
                let (id, project_id): (i64, i64) = (r.try_get("id")?, r.try_get("project_id")?);
                let assigned = r.try_get::<Option<i64>, _>("node_id")? == Some(node_id);
                if take(db, &mut tx, node_id, (id, assigned), project_id, t).await? {
                    taken = Some((id, project_id));
                    break;
                }
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
    let Some((id, project_id)) = taken else {
        tx.commit().await?;
        return Ok(None);
    };
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

/// Hands deployment `id` (`assigned` to this node, or not) to the node if
/// it is still queued, its project runs nothing and is not pinned
/// elsewhere; false when another claim got
/// there first. On PostgreSQL the project row is locked first, so two
/// replicas claiming for one project take turns (SQLite's write
/// transaction already does that).
async fn take(
    db: &SqlStore,
    tx: &mut sqlx::AnyConnection,
    node_id: i64,
    (id, assigned): (i64, bool),
    project_id: i64,
    t: i64,
) -> Result<bool> {
    let project = sqlx::query(AssertSqlSafe(format!(
        "SELECT project_type, pinned_node_id FROM projects WHERE id = $1{}",
        db.lock(" FOR UPDATE")
    )))
    .bind(project_id)
    .fetch_one(&mut *tx)
    .await?;
    let pinned: Option<i64> = project.try_get("pinned_node_id")?;
    if !assigned && pinned.is_some_and(|p| p != node_id) {
        return Ok(false);
    }
    let done = sqlx::query(
        "UPDATE deployments SET status = 'running', node_id = $1, updated_at = $2 \
         WHERE id = $3 AND status = 'queued' \
         AND NOT EXISTS (SELECT 1 FROM deployments r WHERE r.project_id = $4 AND r.status = 'running')",
    )
    .bind(node_id)
    .bind(t)
    .bind(id)
    .bind(project_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let compose = project.try_get::<ProjectType, _>("project_type")? == ProjectType::Compose;
    if compose && pinned.is_none() {
        // First deploy: the project's named volumes will live on this node.
        sqlx::query("UPDATE projects SET pinned_node_id = $1 WHERE id = $2")
            .bind(node_id)
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(true)
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
    .bind(status)
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
            d.status
        )));
    }
    nodes::heartbeat(&db.pool, node_id, t).await?;
    events::insert(
        &db.pool,
        Some(d.project_id),
        EventKind::DeployReported,
        &format!("deployment {deployment_id}: {}", status),
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
        AssertSqlSafe(format!("SELECT d.id, d.status, n.name \
         FROM deployments d JOIN nodes n ON n.id = d.node_id \
         WHERE d.status IN ('queued', 'running') AND (n.last_seen_at IS NULL OR n.last_seen_at < $1){}",
         db.lock(" FOR UPDATE OF d"))),
    )
    .bind(seen_before)
    .fetch_all(&mut *tx)
    .await?;
    let mut failed = Vec::new();
    for r in &rows {
        let (id, status, node): (i64, DeployStatus, String) =
            (r.try_get("id")?, r.try_get("status")?, r.try_get("name")?);
        let error = if status == DeployStatus::Running {
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
