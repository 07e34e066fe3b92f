//! Deployments: how a trigger becomes one (absorbed, folded or new, with the
//! project's tracked state in the same transaction), and reading them back.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, FromRow, Row};

use super::db::{SqlStore, digests_from, string_map_json};
use super::{
    Cancelled, DeploySource, DeployStatus, Deployment, EventKind, NotifyEvent, Result, StoreError,
    TriggerWrite, decisions, events, notifications, now,
};

pub(super) const COLUMNS: &str = "id, project_id, source, sources, status, target_commit, target_digests, reason, error, \
     trigger_count, repeat_count, last_seen_at, policy_name, policy_version, policy_sha256, node_id, log_tail, created_at, updated_at, finished_at, \
     ran_commit, ran_digests, from_deployment, cancel_requested";

/// How many of a project's latest failures a new one may fold into.
const FOLD_WINDOW: i64 = 16;

/// A deployment's sources as stored (a JSON list); rows written before the
/// list existed have only their `source`.
fn sources_from(s: &str, first: DeploySource) -> Result<Vec<DeploySource>> {
    let list: Vec<DeploySource> =
        serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("sources {s:?}")))?;
    Ok(if list.is_empty() { vec![first] } else { list })
}

fn sources_json(list: &[DeploySource]) -> String {
    serde_json::to_string(list).expect("unit enums serialize")
}

/// `list` with `source` added unless it is there already.
fn with_source(list: &[DeploySource], source: DeploySource) -> Vec<DeploySource> {
    let mut list = list.to_vec();
    if !list.contains(&source) {
        list.push(source);
    }
    list
}

/// A deployment row as stored: the JSON columns still text.
#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: i64,
    project_id: i64,
    source: DeploySource,
    sources: String,
    status: DeployStatus,
    target_commit: Option<String>,
    target_digests: Option<String>,
    reason: String,
    error: Option<String>,
    trigger_count: i64,
    repeat_count: i64,
    last_seen_at: i64,
    policy_name: String,
    policy_version: String,
    policy_sha256: String,
    node_id: Option<i64>,
    log_tail: Option<String>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    ran_commit: Option<String>,
    ran_digests: Option<String>,
    from_deployment: Option<i64>,
    /// 0 or 1 on every backend.
    cancel_requested: i64,
}

fn deployment_from(row: &AnyRow) -> Result<Deployment> {
    let r = DeploymentRow::from_row(row)?;
    Ok(Deployment {
        id: r.id,
        project_id: r.project_id,
        source: r.source,
        sources: sources_from(&r.sources, r.source)?,
        status: r.status,
        target_commit: r.target_commit,
        target_digests: r.target_digests.as_deref().map(digests_from).transpose()?,
        reason: r.reason,
        error: r.error,
        trigger_count: r.trigger_count,
        repeat_count: r.repeat_count,
        last_seen_at: r.last_seen_at,
        policy_name: r.policy_name,
        policy_version: r.policy_version,
        policy_sha256: r.policy_sha256,
        node_id: r.node_id,
        log_tail: r.log_tail,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
        ran_commit: r.ran_commit,
        ran_digests: r.ran_digests.as_deref().map(digests_from).transpose()?,
        from_deployment: r.from_deployment,
        cancel_requested: r.cancel_requested != 0,
        decision_ids: Vec::new(),
    })
}

/// A queued deployment that never reached its node gives the project back
/// the tracked state it had before, so the next tick tries the change again.
/// A queued deployment absorbs every later trigger, so nothing newer is undone.
pub(super) async fn give_back_tracked_state(
    conn: &mut sqlx::AnyConnection,
    deployment_id: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE projects SET \
         last_tracked_commit_sha = COALESCE((SELECT prior_commit FROM deployments WHERE id = $1), last_tracked_commit_sha), \
         last_tracked_image_digests = COALESCE((SELECT prior_digests FROM deployments WHERE id = $2), last_tracked_image_digests) \
         WHERE id = (SELECT project_id FROM deployments WHERE id = $3)",
    )
    .bind(deployment_id)
    .bind(deployment_id)
    .bind(deployment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fails a deployment that has not finished, with `error`.
pub(super) async fn fail(
    conn: &mut sqlx::AnyConnection,
    deployment_id: i64,
    error: &str,
) -> Result<()> {
    let t = now();
    sqlx::query(
        "UPDATE deployments SET status = 'failed', error = $1, updated_at = $2, finished_at = $3 WHERE id = $4",
    )
    .bind(error)
    .bind(t)
    .bind(t)
    .bind(deployment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Newest first, from below `before`: a keyset page on the
/// (project_id, id) index.
pub(super) async fn list(
    db: &SqlStore,
    project_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Deployment>> {
    let mut list = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployments WHERE project_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(project_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(deployment_from)
    .collect::<Result<Vec<_>>>()?;
    let ids: Vec<i64> = list.iter().map(|d| d.id).collect();
    let mut links = db.decision_ids_of(&ids).await?;
    for d in &mut list {
        d.decision_ids = links.remove(&d.id).unwrap_or_default();
    }
    Ok(list)
}

pub(super) async fn get(db: &SqlStore, id: i64) -> Result<Deployment> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
    let mut d = deployment_from(&row)?;
    d.decision_ids = db
        .decision_ids_of(&[id])
        .await?
        .remove(&id)
        .unwrap_or_default();
    Ok(d)
}

pub(super) async fn record_trigger(db: &SqlStore, w: &TriggerWrite) -> Result<Deployment> {
    let mut tx = db.begin_write().await?;
    let t = now();
    let tracked = sqlx::query(
        // Concurrent triggers for one project take turns from here on.
        AssertSqlSafe(format!(
            "SELECT last_tracked_commit_sha, last_tracked_image_digests, auto_deploy_enabled FROM projects WHERE id = $1{}",
            db.lock(" FOR UPDATE")
        )),
    )
    .bind(w.project_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("project {}", w.project_id)))?;
    let (prior_commit, prior_digests): (String, String) = (
        tracked.try_get("last_tracked_commit_sha")?,
        tracked.try_get("last_tracked_image_digests")?,
    );
    if w.decided_on_commit
        .as_ref()
        .is_some_and(|decided_on| *decided_on != prior_commit)
    {
        return Err(StoreError::Stale(w.project_id));
    }
    let auto_deploy = tracked.try_get::<i64, _>("auto_deploy_enabled")? != 0;
    if w.decided_with_auto_deploy
        .is_some_and(|saw| saw != auto_deploy)
    {
        return Err(StoreError::Stale(w.project_id));
    }
    let digests = w.target_digests.as_ref().map(string_map_json);
    let source = w.source;
    // The deployment this trigger goes into, if one takes it: a queued
    // one for a deploy, the newest one when it failed the same way.
    // A redeploy has an exact target of its own: it joins nothing, and
    // nothing joins it (a later trigger queues behind it).
    let joined: Option<Deployment> = match &w.failure {
        None if w.from_deployment.is_some() => None,
        None => sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deployments WHERE project_id = $1 AND status = 'queued' \
             AND from_deployment IS NULL ORDER BY id DESC LIMIT 1"
        )))
        .bind(w.project_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(deployment_from)
        .transpose()?,
        // Failures since the project's last deployment that did not
        // fail: the same failure again (error and target) folds into its
        // row, even when another trigger's failure came in between.
        Some(failure) => sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deployments WHERE project_id = $1 AND status = 'failed' \
             AND id > COALESCE((SELECT MAX(id) FROM deployments WHERE project_id = $2 AND status <> 'failed'), 0) \
             ORDER BY id DESC LIMIT {FOLD_WINDOW}"
        )))
        .bind(w.project_id)
        .bind(w.project_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(deployment_from)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .find(|d| {
            d.error.as_deref() == Some(failure.as_str())
                && d.target_commit == w.target_commit
                && d.target_digests == w.target_digests
        }),
    };
    let (id, event) = match (joined, &w.failure) {
        // Not yet claimed: it absorbs this trigger and moves to the
        // newest target, keeping the first source and reason.
        (Some(d), None) => {
            sqlx::query(
                "UPDATE deployments SET sources = $1, target_commit = COALESCE($2, target_commit), \
                 target_digests = COALESCE($3, target_digests), trigger_count = trigger_count + 1, \
                 policy_name = $4, policy_version = $5, policy_sha256 = $6, updated_at = $7, \
                 last_seen_at = $8 WHERE id = $9",
            )
            .bind(sources_json(&with_source(&d.sources, w.source)))
            .bind(&w.target_commit)
            .bind(&digests)
            .bind(&w.policy_name)
            .bind(&w.policy_version)
            .bind(&w.policy_sha256)
            .bind(t)
            .bind(t)
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
            (d.id, true)
        }
        // The same failure again: one row that counts it, not a new row
        // (and no new event) every tick.
        (Some(d), Some(_)) => {
            sqlx::query(
                "UPDATE deployments SET sources = $1, repeat_count = repeat_count + 1, \
                 last_seen_at = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(sources_json(&with_source(&d.sources, w.source)))
            .bind(t)
            .bind(t)
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
            (d.id, false)
        }
        (None, failure) => {
            let (status, finished) = match failure {
                Some(_) => (DeployStatus::Failed, Some(t)),
                None => (DeployStatus::Queued, None),
            };
            let id = sqlx::query(
                "INSERT INTO deployments (project_id, source, sources, status, target_commit, target_digests, \
                 reason, error, policy_name, policy_version, policy_sha256, node_id, created_at, updated_at, \
                 last_seen_at, finished_at, prior_commit, prior_digests, from_deployment) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
                 RETURNING id",
            )
            .bind(w.project_id)
            .bind(source)
            .bind(sources_json(&[w.source]))
            .bind(status)
            .bind(&w.target_commit)
            .bind(&digests)
            .bind(&w.reason)
            .bind(failure)
            .bind(&w.policy_name)
            .bind(&w.policy_version)
            .bind(&w.policy_sha256)
            .bind(w.node_id)
            .bind(t)
            .bind(t)
            .bind(t)
            .bind(finished)
            .bind(&prior_commit)
            .bind(&prior_digests)
            .bind(w.from_deployment)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            (id, true)
        }
    };
    // A deploy that cannot go ahead leaves the tracked state where it
    // was: the next tick sees the same change and tries again.
    if w.failure.is_none() {
        sqlx::query(
            "UPDATE projects SET last_tracked_commit_sha = COALESCE($1, last_tracked_commit_sha), \
             last_tracked_image_digests = COALESCE($2, last_tracked_image_digests) WHERE id = $3",
        )
        .bind(&w.track_commit)
        .bind(w.track_digests.as_ref().map(string_map_json))
        .bind(w.project_id)
        .execute(&mut *tx)
        .await?;
    }
    decisions::insert(&mut tx, &w.decisions, Some(id)).await?;
    // A refusal folded into an earlier one was told already.
    if event && w.failure.is_some() {
        notifications::enqueue(
            &mut tx,
            Some(w.project_id),
            NotifyEvent::Refused,
            Some(id),
            "",
        )
        .await?;
    }
    if event {
        let message = match &w.failure {
            Some(f) => format!("{source} deployment {id} failed: {f}"),
            None => format!("{source} deployment {id}: {}", w.reason),
        };
        events::insert(
            &mut *tx,
            Some(w.project_id),
            EventKind::DeployTriggered,
            &message,
        )
        .await?;
    }
    tx.commit().await?;
    get(db, id).await
}

/// The project's newest succeeded deployment other than `except`.
pub(super) async fn last_succeeded(
    conn: &mut sqlx::AnyConnection,
    project_id: i64,
    except: i64,
) -> Result<Option<Deployment>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployments WHERE project_id = $1 AND status = 'succeeded' AND id <> $2 \
         ORDER BY id DESC LIMIT 1"
    )))
    .bind(project_id)
    .bind(except)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(deployment_from)
    .transpose()
}

/// Cancels a queued deployment at once, or asks the node of a running one;
/// both with an event, in one transaction. Each step is one conditional
/// update, so a claim or report racing it is seen, not overwritten.
pub(super) async fn cancel(
    db: &SqlStore,
    project_id: i64,
    id: i64,
) -> Result<(Deployment, Cancelled)> {
    let mut tx = db.begin_write().await?;
    let t = now();
    let queued = sqlx::query(
        "UPDATE deployments SET status = 'cancelled', updated_at = $1, finished_at = $2 \
         WHERE id = $3 AND project_id = $4 AND status = 'queued'",
    )
    .bind(t)
    .bind(t)
    .bind(id)
    .bind(project_id)
    .execute(&mut *tx)
    .await?;
    let outcome = if queued.rows_affected() == 1 {
        Cancelled::Now
    } else {
        let running = sqlx::query(
            "UPDATE deployments SET cancel_requested = 1, updated_at = $1 \
             WHERE id = $2 AND project_id = $3 AND status = 'running'",
        )
        .bind(t)
        .bind(id)
        .bind(project_id)
        .execute(&mut *tx)
        .await?;
        if running.rows_affected() == 0 {
            let row =
                sqlx::query("SELECT status FROM deployments WHERE id = $1 AND project_id = $2")
                    .bind(id)
                    .bind(project_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match row {
                None => StoreError::NotFound(format!("deployment {id} of project {project_id}")),
                Some(r) => StoreError::Conflict(format!(
                    "deployment {id} is already {}: only a queued or running deployment can be cancelled",
                    r.try_get::<DeployStatus, _>("status")?
                )),
            });
        }
        Cancelled::Requested
    };
    let message = match outcome {
        Cancelled::Now => format!("deployment {id} cancelled before it ran"),
        Cancelled::Requested => format!("deployment {id}: cancel requested from its node"),
    };
    events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::DeployCancelled,
        &message,
    )
    .await?;
    tx.commit().await?;
    Ok((get(db, id).await?, outcome))
}
