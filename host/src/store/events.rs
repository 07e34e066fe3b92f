//! The event log: what happened to projects, nodes and settings, newest first.

use sqlx::FromRow;

use super::db::SqlStore;
use super::{Event, EventKind, Result, StoreError, now};

/// Appends an event through `exec` (the pool, or a transaction the caller
/// commits together with what the event describes).
pub(super) async fn insert<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    exec: E,
    project_id: Option<i64>,
    kind: EventKind,
    message: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO events (at, project_id, kind, message) VALUES ($1, $2, $3, $4)")
        .bind(now())
        .bind(project_id)
        .bind(kind)
        .bind(message)
        .execute(exec)
        .await?;
    Ok(())
}

pub(super) async fn list(db: &SqlStore, project_id: Option<i64>, limit: i64) -> Result<Vec<Event>> {
    let rows = match project_id {
        Some(p) => {
            sqlx::query("SELECT id, at, project_id, kind, message FROM events WHERE project_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(p)
                .bind(limit)
                .fetch_all(&db.pool)
                .await?
        }
        None => {
            sqlx::query("SELECT id, at, project_id, kind, message FROM events ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&db.pool)
                .await?
        }
    };
    rows.iter()
        .map(|r| Event::from_row(r).map_err(StoreError::from))
        .collect()
}
