//! Per-project registry credentials: the password sealed, one row per
//! (project, registry host).

use sqlx::Row;

use super::db::SqlStore;
use super::{EventKind, Result, SealedRegistryCredential, StoreError, events, now};

/// Sets the project's credential for `c.registry`, replacing one there was.
pub(super) async fn set(
    db: &SqlStore,
    project_id: i64,
    c: &SealedRegistryCredential,
) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let exists = sqlx::query("SELECT id FROM projects WHERE id = $1")
        .bind(project_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("project {project_id}")));
    }
    sqlx::query("DELETE FROM project_registry_credentials WHERE project_id = $1 AND registry = $2")
        .bind(project_id)
        .bind(&c.registry)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO project_registry_credentials (project_id, registry, username, sealed, updated_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(project_id)
    .bind(&c.registry)
    .bind(&c.username)
    .bind(&c.sealed)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::RegistryCredentialSet,
        &format!(
            "registry credential for {} set (user {:?})",
            c.registry, c.username
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether there was a credential to delete.
pub(super) async fn delete(db: &SqlStore, project_id: i64, registry: &str) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query(
        "DELETE FROM project_registry_credentials WHERE project_id = $1 AND registry = $2",
    )
    .bind(project_id)
    .bind(registry)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    events::insert(
        &mut *tx,
        Some(project_id),
        EventKind::RegistryCredentialDeleted,
        &format!("registry credential for {registry} deleted"),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

fn row(r: &sqlx::any::AnyRow) -> Result<(i64, SealedRegistryCredential)> {
    Ok((
        r.try_get("project_id")?,
        SealedRegistryCredential {
            registry: r.try_get("registry")?,
            username: r.try_get("username")?,
            sealed: r.try_get("sealed")?,
        },
    ))
}

/// One project's credentials, by registry.
pub(super) async fn of_project(
    db: &SqlStore,
    project_id: i64,
) -> Result<Vec<SealedRegistryCredential>> {
    let rows = sqlx::query(
        "SELECT project_id, registry, username, sealed FROM project_registry_credentials \
         WHERE project_id = $1 ORDER BY registry",
    )
    .bind(project_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| row(r).map(|(_, c)| c)).collect()
}

/// Every project's credentials, for one image-watch tick (one query
/// whatever the number of projects).
pub(super) async fn all(db: &SqlStore) -> Result<Vec<(i64, SealedRegistryCredential)>> {
    let rows = sqlx::query(
        "SELECT project_id, registry, username, sealed FROM project_registry_credentials \
         ORDER BY project_id, registry",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(row).collect()
}
