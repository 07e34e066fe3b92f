//! Outbound notifications: the targets (config sealed) and the outbox the
//! sender drains. A message is queued in the transaction that changes what
//! it tells of, so a crash between the change and the send loses nothing.

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::db::{SqlStore, unique};
use super::text_enum::text_enum;
use super::{EventKind, Result, StoreError, events, now};

text_enum! {
    /// What a target can be told of.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum NotifyEvent {
        Succeeded = "succeeded",
        Failed = "failed",
        /// The policy refused a deploy (recorded as a failed deployment
        /// before any node).
        Refused = "refused",
        RolledBack = "rolled_back",
        /// A project's trigger (git lookup, image check) failed several
        /// ticks in a row.
        TriggerFailing = "trigger_failing",
        /// It works again after such a streak.
        TriggerRecovered = "trigger_recovered",
    }
}

impl NotifyEvent {
    /// Its bit in a target's `events` column.
    pub fn bit(self) -> i64 {
        let i = Self::ALL.iter().position(|e| *e == self).expect("in ALL");
        1 << i
    }

    pub fn mask(events: &[NotifyEvent]) -> i64 {
        events.iter().fold(0, |m, e| m | e.bit())
    }

    pub fn of_mask(mask: i64) -> Vec<NotifyEvent> {
        Self::ALL
            .iter()
            .copied()
            .filter(|e| mask & e.bit() != 0)
            .collect()
    }
}

text_enum! {
    /// How a target is reached.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum TargetKind {
        /// JSON, signed with HMAC-SHA256.
        Webhook = "webhook",
        Slack = "slack",
        Discord = "discord",
        /// The Matrix client-server API (a room message).
        Matrix = "matrix",
        Email = "email",
    }
}

text_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum OutboxState {
        Pending = "pending",
        Sent = "sent",
        /// Out of attempts; `last_error` says why.
        Dead = "dead",
    }
}

/// A target as the API shows it: never its config.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationTarget {
    pub id: i64,
    /// `None`: every project's events.
    pub project_id: Option<i64>,
    pub kind: TargetKind,
    pub name: String,
    pub events: Vec<NotifyEvent>,
    /// The host it sends to (no path, no credentials).
    pub host: String,
    pub max_attempts: i64,
    pub created_at: i64,
}

/// A target to add; its config already sealed.
#[derive(Debug, Clone)]
pub struct NewTarget {
    pub project_id: Option<i64>,
    pub kind: TargetKind,
    pub name: String,
    pub events: Vec<NotifyEvent>,
    pub host: String,
    pub max_attempts: i64,
    pub sealed_config: String,
}

/// A message the sender claimed, with its target.
#[derive(Debug, Clone)]
pub struct ClaimedNotification {
    pub id: i64,
    pub event: NotifyEvent,
    pub project_id: Option<i64>,
    pub deployment_id: Option<i64>,
    pub detail: String,
    /// Attempts made before this one.
    pub attempts: i64,
    pub target_id: i64,
    pub target_name: String,
    pub kind: TargetKind,
    pub max_attempts: i64,
    pub sealed_config: String,
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub enum Delivery {
    Sent,
    Retry { error: String, next_at_ms: i64 },
    Dead { error: String },
}

/// One queued message, as `GET /api/notifications/{id}/deliveries` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxEntry {
    pub id: i64,
    pub event: NotifyEvent,
    pub project_id: Option<i64>,
    pub deployment_id: Option<i64>,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_at_ms: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const TARGET_COLUMNS: &str = "id, project_id, kind, name, events, host, max_attempts, created_at";

fn target_from(r: &sqlx::any::AnyRow) -> Result<NotificationTarget> {
    Ok(NotificationTarget {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        events: NotifyEvent::of_mask(r.try_get("events")?),
        host: r.try_get("host")?,
        max_attempts: r.try_get("max_attempts")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Queues `event` for every target that wants it: the daemon's and the
/// project's own. Runs in the caller's transaction.
pub(super) async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    project_id: Option<i64>,
    event: NotifyEvent,
    deployment_id: Option<i64>,
    detail: &str,
) -> Result<u64> {
    let t = now();
    let done = sqlx::query(
        "INSERT INTO notification_outbox (target_id, event, project_id, deployment_id, detail, state, \
         attempts, next_at_ms, created_at) \
         SELECT id, CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT), CAST($4 AS TEXT), 'pending', 0, \
         CAST($5 AS BIGINT), CAST($6 AS BIGINT) FROM notification_targets \
         WHERE (project_id IS NULL OR project_id = $7) AND (events & $8) <> 0",
    )
    .bind(event)
    .bind(project_id)
    .bind(deployment_id)
    .bind(detail)
    .bind(now_ms())
    .bind(t)
    .bind(project_id)
    .bind(event.bit())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn enqueue_now(
    db: &SqlStore,
    project_id: Option<i64>,
    event: NotifyEvent,
    detail: &str,
) -> Result<u64> {
    let mut tx = db.begin_write().await?;
    let n = enqueue(&mut tx, project_id, event, None, detail).await?;
    tx.commit().await?;
    Ok(n)
}

pub(super) async fn add_target(db: &SqlStore, t: &NewTarget) -> Result<NotificationTarget> {
    let mut tx = db.begin_write().await?;
    if let Some(p) = t.project_id {
        let exists = sqlx::query("SELECT id FROM projects WHERE id = $1")
            .bind(p)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("project {p}")));
        }
    }
    let id: i64 = sqlx::query(
        "INSERT INTO notification_targets (project_id, kind, name, events, host, max_attempts, \
         sealed_config, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(t.project_id)
    .bind(t.kind)
    .bind(&t.name)
    .bind(NotifyEvent::mask(&t.events))
    .bind(&t.host)
    .bind(t.max_attempts)
    .bind(&t.sealed_config)
    .bind(now())
    .fetch_one(&mut *tx)
    .await
    .map_err(unique("a notification target with this name"))?
    .try_get("id")?;
    events::insert(
        &mut *tx,
        t.project_id,
        EventKind::NotificationTargetAdded,
        &format!("notification target {id} ({}) added", t.kind),
    )
    .await?;
    tx.commit().await?;
    target(db, id).await
}

pub(super) async fn targets(db: &SqlStore) -> Result<Vec<NotificationTarget>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM notification_targets ORDER BY id"
    )))
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(target_from)
    .collect()
}

pub(super) async fn target(db: &SqlStore, id: i64) -> Result<NotificationTarget> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM notification_targets WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("notification target {id}")))?;
    target_from(&row)
}

pub(super) async fn delete_target(db: &SqlStore, id: i64) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let row = sqlx::query("SELECT project_id, kind FROM notification_targets WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("notification target {id}")))?;
    let project_id: Option<i64> = row.try_get("project_id")?;
    let kind: TargetKind = row.try_get("kind")?;
    sqlx::query("DELETE FROM notification_outbox WHERE target_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM notification_targets WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::insert(
        &mut *tx,
        project_id,
        EventKind::NotificationTargetDeleted,
        &format!("notification target {id} ({kind}) deleted"),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Claims up to `limit` due messages: each one's next try moves to
/// `until_ms`, so no other sender (another replica) takes it meanwhile.
/// `SKIP LOCKED`: replicas claiming at once take different rows.
pub(super) async fn claim(
    db: &SqlStore,
    now_ms: i64,
    until_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedNotification>> {
    // Most drains find nothing: ask without the write lock first.
    let due = sqlx::query(
        "SELECT id FROM notification_outbox WHERE state = 'pending' AND next_at_ms <= $1 LIMIT 1",
    )
    .bind(now_ms)
    .fetch_optional(&db.pool)
    .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    let mut tx = db.begin_write().await?;
    let ids: Vec<i64> = sqlx::query(AssertSqlSafe(format!(
        "SELECT id FROM notification_outbox WHERE state = 'pending' AND next_at_ms <= $1 \
         ORDER BY next_at_ms, id LIMIT $2{}",
        db.lock(" FOR UPDATE SKIP LOCKED")
    )))
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // Numbers only: safe to write into the statement.
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE notification_outbox SET next_at_ms = $1 WHERE id IN ({list})"
    )))
    .bind(until_ms)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT o.id, o.event, o.project_id, o.deployment_id, o.detail, o.attempts, o.target_id, \
         t.name, t.kind, t.max_attempts, t.sealed_config \
         FROM notification_outbox o JOIN notification_targets t ON t.id = o.target_id \
         WHERE o.id IN ({list}) ORDER BY o.id"
    )))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(ClaimedNotification {
                id: r.try_get("id")?,
                event: r.try_get("event")?,
                project_id: r.try_get("project_id")?,
                deployment_id: r.try_get("deployment_id")?,
                detail: r.try_get("detail")?,
                attempts: r.try_get("attempts")?,
                target_id: r.try_get("target_id")?,
                target_name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                max_attempts: r.try_get("max_attempts")?,
                sealed_config: r.try_get("sealed_config")?,
            })
        })
        .collect()
}

pub(super) async fn finish(db: &SqlStore, id: i64, delivery: &Delivery) -> Result<()> {
    let t = now();
    let q = match delivery {
        Delivery::Sent => sqlx::query(
            "UPDATE notification_outbox SET state = 'sent', attempts = attempts + 1, \
             last_error = NULL, done_at = $1 WHERE id = $2",
        )
        .bind(t)
        .bind(id),
        Delivery::Retry { error, next_at_ms } => sqlx::query(
            "UPDATE notification_outbox SET attempts = attempts + 1, last_error = $1, \
             next_at_ms = $2 WHERE id = $3",
        )
        .bind(error.as_str())
        .bind(*next_at_ms)
        .bind(id),
        Delivery::Dead { error } => sqlx::query(
            "UPDATE notification_outbox SET state = 'dead', attempts = attempts + 1, \
             last_error = $1, done_at = $2 WHERE id = $3",
        )
        .bind(error.as_str())
        .bind(t)
        .bind(id),
    };
    q.execute(&db.pool).await?;
    Ok(())
}

/// The target's newest queued messages, newest first.
pub(super) async fn deliveries(
    db: &SqlStore,
    target_id: i64,
    limit: i64,
) -> Result<Vec<OutboxEntry>> {
    target(db, target_id).await?;
    Ok(sqlx::query_as(
        "SELECT id, event, project_id, deployment_id, state, attempts, next_at_ms, last_error, \
         created_at, done_at FROM notification_outbox WHERE target_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(target_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?)
}

/// Drops sent and dead messages finished before `before`.
pub(super) async fn prune(db: &SqlStore, before: i64) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM notification_outbox WHERE state <> 'pending' AND done_at < $1")
            .bind(before)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}
