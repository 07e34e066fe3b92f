//! The web UI's sign-in sessions, by the sha256 of the cookie's token.

use sqlx::Row;

use super::db::SqlStore;
use super::{Result, WebSession};

/// Keeps a new session; expired ones go at the same time, so the table
/// holds only live sessions and a few just ended.
pub(super) async fn create(db: &SqlStore, id_hash: &str, s: &WebSession) -> Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
        .bind(s.created_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO web_sessions (id_hash, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id_hash)
    .bind(&s.csrf)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The session, expired or not: the caller judges its expiry.
pub(super) async fn get(db: &SqlStore, id_hash: &str) -> Result<Option<WebSession>> {
    let row =
        sqlx::query("SELECT csrf, created_at, expires_at FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&db.pool)
            .await?;
    row.map(|r| {
        Ok(WebSession {
            csrf: r.try_get("csrf")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

pub(super) async fn delete(db: &SqlStore, id_hash: &str) -> Result<()> {
    sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&db.pool)
        .await?;
    Ok(())
}
