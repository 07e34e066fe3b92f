//! What agents do with deployments: claim the next one a node may run,
//! report how it went; and what happens to those of nodes gone offline.

use sqlx::{AssertSqlSafe, Row};

use super::db::{SqlStore, string_map, string_map_json};
use super::{
    Claim, DeployReport, DeployStatus, Deployment, EventKind, ProjectType, Result, StoreError,
    deployments, events, nodes, notifications, now, projects, refuse_to_migrate, selector_matches,
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
    let restore = deployments::last_succeeded(&mut tx, project_id, id)
        .await?
        .as_ref()
        .map(Deployment::recorded_state);
    tx.commit().await?;
    Ok(Some(Claim {
        deployment: deployments::get(db, id).await?,
        project: projects::get(db, project_id).await?,
        restore,
    }))
}

/// Hands deployment `id` (`assigned` to this node, or not) to the node if
/// it is still queued, its project runs nothing and is not pinned
/// elsewhere; false when another claim got there first. On PostgreSQL the
/// project row is locked first: two replicas never hand out one deployment,
/// or two of one project (SQLite's write transaction runs one at a time).
/// The claim waits for the lock rather than skipping the project: a poll
/// tick or a trigger holds the row only for a statement or two, and a
/// skip would send the node away empty-handed with a deployment queued.
/// Every writer locks node, then project, then deployment rows, so the
/// wait cannot deadlock.
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
    .fetch_optional(&mut *tx)
    .await?;
    let Some(project) = project else {
        return Ok(false);
    };
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
    r: &DeployReport<'_>,
) -> Result<Deployment> {
    let t = now();
    let status = r.status;
    let finished = status.is_terminal().then_some(t);
    // The status change, its event and its notifications: one transaction.
    let mut tx = db.begin_write().await?;
    let done = sqlx::query(
        "UPDATE deployments SET status = $1, log_tail = COALESCE($2, log_tail), error = COALESCE($3, error), \
         ran_commit = COALESCE($4, ran_commit), ran_digests = COALESCE($5, ran_digests), \
         updated_at = $6, finished_at = $7 WHERE id = $8 AND node_id = $9 AND status = 'running'",
    )
    .bind(status)
    .bind(r.log_tail)
    .bind(r.error)
    .bind(r.ran_commit)
    .bind(r.ran_digests.map(string_map_json))
    .bind(t)
    .bind(finished)
    .bind(deployment_id)
    .bind(node_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        drop(tx);
        let d = deployments::get(db, deployment_id).await?;
        return Err(StoreError::Conflict(format!(
            "deployment {deployment_id} is not running on this node (it is {})",
            d.status
        )));
    }
    let project_id: i64 = sqlx::query("SELECT project_id FROM deployments WHERE id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("project_id")?;
    nodes::heartbeat(&mut *tx, node_id, t).await?;
    events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::DeployReported,
        &format!("deployment {deployment_id}: {}", status),
    )
    .await?;
    let event = match status {
        DeployStatus::Succeeded => Some(super::NotifyEvent::Succeeded),
        DeployStatus::Failed => Some(super::NotifyEvent::Failed),
        DeployStatus::RolledBack => Some(super::NotifyEvent::RolledBack),
        _ => None,
    };
    if let Some(event) = event {
        notifications::enqueue(&mut tx, Some(project_id), event, Some(deployment_id), "").await?;
    }
    tx.commit().await?;
    deployments::get(db, deployment_id).await
}

pub(super) async fn fail_of_offline_nodes(
    db: &SqlStore,
    seen_before: i64,
) -> Result<Vec<Deployment>> {
    let mut tx = db.begin_write().await?;
    const OFFLINE: &str = "FROM deployments d JOIN nodes n ON n.id = d.node_id \
         WHERE d.status IN ('queued', 'running') AND (n.last_seen_at IS NULL OR n.last_seen_at < $1)";
    let candidates = sqlx::query(AssertSqlSafe(format!(
        "SELECT d.id, d.project_id {OFFLINE} ORDER BY d.project_id, d.id"
    )))
    .bind(seen_before)
    .fetch_all(&mut *tx)
    .await?;
    let mut failed = Vec::new();
    for c in &candidates {
        let (id, project_id): (i64, i64) = (c.try_get("id")?, c.try_get("project_id")?);
        // The project row first, then the deployment's: the order a claim
        // locks them in (see `take`). The other way round, a claim holding
        // the project and waiting for the deployment would deadlock with
        // this, and PostgreSQL would fail one of the two.
        sqlx::query(AssertSqlSafe(format!(
            "SELECT id FROM projects WHERE id = $1{}",
            db.lock(" FOR UPDATE")
        )))
        .bind(project_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Read again under its lock: its node may have come back, or the
        // deployment moved on, since the list was read.
        let Some(r) = sqlx::query(AssertSqlSafe(format!(
            "SELECT d.status, n.name {OFFLINE} AND d.id = $2{}",
            db.lock(" FOR UPDATE OF d")
        )))
        .bind(seen_before)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            continue;
        };
        let (status, node): (DeployStatus, String) = (r.try_get("status")?, r.try_get("name")?);
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
        notifications::enqueue(
            &mut tx,
            Some(project_id),
            super::NotifyEvent::Failed,
            Some(id),
            "",
        )
        .await?;
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
