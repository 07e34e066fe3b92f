//! The stored settings and the admin tokens' hashes.

use std::collections::BTreeMap;

use sqlx::Row;

use super::Settings;
use crate::store::db::SqlStore;
use crate::store::{EventKind, Result, events, now};

pub async fn get(db: &SqlStore) -> Result<Settings> {
    let rows = sqlx::query("SELECT key, value FROM settings")
        .fetch_all(&db.pool)
        .await?;
    let pairs = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("key")?,
                r.try_get::<String, _>("value")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Settings::from_rows(pairs))
}

pub async fn put(db: &SqlStore, values: &BTreeMap<String, String>) -> Result<Settings> {
    let mut tx = db.begin_write().await?;
    for (key, value) in values {
        // An upsert: two replicas writing one key never clash on it.
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        events::insert(
            &mut *tx,
            None,
            EventKind::SettingsChanged,
            &format!("{key} = {value}"),
        )
        .await?;
    }
    tx.commit().await?;
    get(db).await
}

pub async fn admin_token_count(db: &SqlStore) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens")
        .fetch_one(&db.pool)
        .await?;
    Ok(row.try_get("n")?)
}

pub async fn add_admin_token(db: &SqlStore, hash: &str) -> Result<()> {
    sqlx::query("INSERT INTO admin_tokens (token_hash, created_at) VALUES ($1, $2)")
        .bind(hash)
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn admin_token_exists(db: &SqlStore, hash: &str) -> Result<bool> {
    let row = sqlx::query("SELECT id FROM admin_tokens WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}
