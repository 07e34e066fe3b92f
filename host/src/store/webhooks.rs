//! Git host webhooks: each project's sealed secret and the delivery ids
//! seen lately (replays are ignored).

use sqlx::Row;

use super::db::SqlStore;
use super::{EventKind, Result, StoreError, now};

/// Replaces the project's secret (sealed) and logs it, in one transaction.
pub(super) async fn set_secret(db: &SqlStore, project_id: i64, sealed: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let exists = sqlx::query("SELECT id FROM projects WHERE id = $1")
        .bind(project_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("project {project_id}")));
    }
    sqlx::query("DELETE FROM webhook_secrets WHERE project_id = $1")
        .bind(project_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO webhook_secrets (project_id, sealed, created_at) VALUES ($1, $2, $3)")
        .bind(project_id)
        .bind(sealed)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    super::events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::WebhookSecretRotated,
        "webhook secret created or rotated",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn secret(db: &SqlStore, project_id: i64) -> Result<Option<String>> {
    let row = sqlx::query("SELECT sealed FROM webhook_secrets WHERE project_id = $1")
        .bind(project_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("sealed")).transpose()?)
}

/// Records a delivery id until `expires_at`; false when it was already
/// recorded and has not expired (a replay). Expired ids go at the same
/// time, so the table holds only the last window's deliveries.
pub(super) async fn note_delivery(
    db: &SqlStore,
    project_id: i64,
    delivery_id: &str,
    expires_at: i64,
) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE expires_at <= $1")
        .bind(now())
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries (project_id, delivery_id, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id, delivery_id) DO NOTHING",
    )
    .bind(project_id)
    .bind(delivery_id)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted == 1)
}
