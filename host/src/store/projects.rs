//! Projects: their user-set fields, credentials, push token, SSH host keys,
//! node selector and tracked image digests.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, FromRow, Row};

use super::db::{SqlStore, digests_from, found, string_map, string_map_json, unique};
use super::{
    BrokenProject, CredentialInfo, CredentialKind, DeploySettings, EventKind, GitSource,
    NewProject, ProjectChange, ProjectFields, ProjectRecord, ProjectType, Result, RollbackMode,
    SealedCredential, SetUp, StoreError, events, now,
};

pub(super) const COLUMNS: &str = "p.id, p.name, p.project_type, p.git_source, p.git_url, p.git_branch, \
     p.compose_file_path, p.expose_service, p.expose_port, p.auto_deploy_enabled, p.image_ref, p.container_port, \
     p.labels, p.dockerfile_path, p.health_probe_path, p.health_timeout_seconds, p.rollback, p.last_tracked_commit_sha, p.last_tracked_image_digests, p.pinned_node_id, p.node_selector, \
     p.ssh_known_hosts, p.created_at, p.updated_at, c.kind AS credential_kind, c.username AS credential_username";
pub(super) const FROM: &str =
    "FROM projects p LEFT JOIN project_credentials c ON c.project_id = p.id";

/// A project row as stored: the JSON columns still text.
#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: i64,
    name: String,
    project_type: ProjectType,
    git_source: GitSource,
    git_url: Option<String>,
    git_branch: String,
    compose_file_path: String,
    expose_service: Option<String>,
    expose_port: Option<i64>,
    /// 0 or 1 on every backend.
    auto_deploy_enabled: i64,
    image_ref: Option<String>,
    container_port: Option<i64>,
    labels: String,
    dockerfile_path: String,
    health_probe_path: Option<String>,
    health_timeout_seconds: i64,
    rollback: RollbackMode,
    last_tracked_commit_sha: String,
    last_tracked_image_digests: String,
    pinned_node_id: Option<i64>,
    node_selector: String,
    ssh_known_hosts: Option<String>,
    created_at: i64,
    updated_at: i64,
    credential_kind: Option<CredentialKind>,
    credential_username: Option<String>,
}

impl ProjectRow {
    fn into_record(self) -> Result<ProjectRecord> {
        Ok(ProjectRecord {
            id: self.id,
            fields: ProjectFields {
                name: self.name,
                project_type: self.project_type,
                git_source: self.git_source,
                git_url: self.git_url,
                git_branch: self.git_branch,
                compose_file_path: self.compose_file_path,
                expose_service: self.expose_service,
                expose_port: self.expose_port,
                auto_deploy_enabled: self.auto_deploy_enabled != 0,
                image_ref: self.image_ref,
                container_port: self.container_port,
                labels: string_map("labels", &self.labels)?,
                deploy: DeploySettings {
                    dockerfile_path: self.dockerfile_path,
                    health_probe_path: self.health_probe_path,
                    health_timeout_seconds: self.health_timeout_seconds,
                    rollback: self.rollback,
                },
            },
            last_tracked_commit_sha: self.last_tracked_commit_sha,
            last_tracked_image_digests: digests_from(&self.last_tracked_image_digests)?,
            pinned_node_id: self.pinned_node_id,
            node_selector: string_map("node selector", &self.node_selector)?,
            credentials: self.credential_kind.map(|kind| CredentialInfo {
                kind,
                username: self.credential_username,
            }),
            ssh_known_hosts: self.ssh_known_hosts,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Decodes a project row; any failure names the project.
pub(super) fn project_from(row: &AnyRow) -> Result<ProjectRecord> {
    let id: i64 = row.try_get("id")?;
    ProjectRow::from_row(row)
        .map_err(StoreError::from)
        .and_then(ProjectRow::into_record)
        .map_err(|e| match e {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("project {id}: {m}")),
            StoreError::Db(e) => StoreError::Corrupt(format!("project {id}: {e}")),
            other => other,
        })
}

/// What can still be read of a row `project_from` refused.
pub(super) fn broken_project(row: &AnyRow, error: StoreError) -> BrokenProject {
    BrokenProject {
        id: row.try_get("id").unwrap_or(0),
        name: row.try_get("name").unwrap_or_default(),
        project_type: row.try_get("project_type").ok(),
        git_source: row.try_get("git_source").ok(),
        auto_deploy_enabled: row
            .try_get::<i64, _>("auto_deploy_enabled")
            .ok()
            .map(|v| v != 0),
        error: error.to_string(),
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds a project's user-set fields as `$1`..`$16`, in column order.
fn bind_fields<'q>(q: AnyQuery<'q>, f: &'q ProjectFields) -> AnyQuery<'q> {
    q.bind(&f.name)
        .bind(f.project_type)
        .bind(f.git_source)
        .bind(&f.git_url)
        .bind(&f.git_branch)
        .bind(&f.compose_file_path)
        .bind(&f.expose_service)
        .bind(f.expose_port)
        .bind(f.auto_deploy_enabled as i64)
        .bind(&f.image_ref)
        .bind(f.container_port)
        .bind(string_map_json(&f.labels))
        .bind(&f.deploy.dockerfile_path)
        .bind(&f.deploy.health_probe_path)
        .bind(f.deploy.health_timeout_seconds)
        .bind(f.deploy.rollback)
}

/// Writes the project's credential, replacing any.
async fn insert_credential(
    conn: &mut sqlx::AnyConnection,
    project_id: i64,
    c: &SealedCredential,
) -> Result<()> {
    // An upsert: two replicas setting one project's credential never
    // clash on its key.
    sqlx::query(
        "INSERT INTO project_credentials (project_id, kind, username, sealed) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (project_id) DO UPDATE SET kind = excluded.kind, username = excluded.username, \
         sealed = excluded.sealed",
    )
    .bind(project_id)
    .bind(c.kind)
    .bind(&c.username)
    .bind(&c.sealed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates a project with its credential, pins, selector and event in one
/// transaction. `set_up` runs inside it once the id is known; when it
/// fails nothing is committed.
pub(super) async fn create(
    db: &SqlStore,
    new: &NewProject,
    set_up: Option<&SetUp>,
) -> Result<ProjectRecord> {
    let f = &new.fields;
    let mut tx = db.begin_write().await?;
    let t = now();
    let query = sqlx::query(
        "INSERT INTO projects (name, project_type, git_source, git_url, git_branch, compose_file_path, \
         expose_service, expose_port, auto_deploy_enabled, image_ref, container_port, labels, dockerfile_path, \
         health_probe_path, health_timeout_seconds, rollback, push_token_hash, ssh_known_hosts, node_selector, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
         RETURNING id",
    );
    let row = bind_fields(query, f)
        .bind(&new.push_token_hash)
        .bind(&new.ssh_known_hosts)
        .bind(string_map_json(&new.node_selector))
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await
        .map_err(unique(&format!("a project named {:?}", f.name)))?;
    let id: i64 = row.try_get("id")?;
    if let Some(c) = &new.credential {
        insert_credential(&mut tx, id, c).await?;
    }
    events::insert(
        &mut *tx,
        Some(id),
        EventKind::ProjectCreated,
        &format!("project {:?} created", f.name),
    )
    .await?;
    if let Some(set_up) = set_up {
        set_up(id).await.map_err(StoreError::SetUp)?;
    }
    tx.commit().await?;
    get(db, id).await
}

pub(super) async fn get(db: &SqlStore, id: i64) -> Result<ProjectRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE p.id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("project {id}")))?;
    project_from(&row)
}

/// By id, from above `after`: a keyset page on the primary key.
pub(super) async fn page(
    db: &SqlStore,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<ProjectRecord>> {
    page_rows(db, after.unwrap_or(0), limit)
        .await?
        .iter()
        .map(project_from)
        .collect()
}

/// Up to `limit` project rows with an id above `after`, in id order.
async fn page_rows(db: &SqlStore, after: i64, limit: i64) -> Result<Vec<sqlx::any::AnyRow>> {
    Ok(sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE p.id > $1 ORDER BY p.id LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?)
}

/// Up to `limit` projects with an id above `after`, each row decoded on its
/// own.
pub(super) async fn list_checked(
    db: &SqlStore,
    after: i64,
    limit: i64,
) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
    Ok(page_rows(db, after, limit)
        .await?
        .iter()
        .map(|row| project_from(row).map_err(|e| broken_project(row, e)))
        .collect())
}

/// Applies every part of `c` in one transaction; the first failure (a
/// name another project holds, a project deleted meanwhile) writes none.
pub(super) async fn change(db: &SqlStore, id: i64, c: &ProjectChange) -> Result<ProjectRecord> {
    let mut tx = db.begin_write().await?;
    let t = now();
    // Proves the project exists and holds its row for the rest.
    let done = sqlx::query("UPDATE projects SET updated_at = $1 WHERE id = $2")
        .bind(t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    found(done, format!("project {id}"))?;
    if let Some(f) = &c.fields {
        let query = sqlx::query(
            "UPDATE projects SET name = $1, project_type = $2, git_source = $3, git_url = $4, git_branch = $5, \
             compose_file_path = $6, expose_service = $7, expose_port = $8, auto_deploy_enabled = $9, \
             image_ref = $10, container_port = $11, labels = $12, dockerfile_path = $13, health_probe_path = $14, \
             health_timeout_seconds = $15, rollback = $16 WHERE id = $17",
        );
        bind_fields(query, f)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unique(&format!("a project named {:?}", f.name)))?;
    }
    match &c.credential {
        Some(Some(credential)) => insert_credential(&mut tx, id, credential).await?,
        Some(None) => {
            sqlx::query("DELETE FROM project_credentials WHERE project_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        None => {}
    }
    if let Some(lines) = &c.ssh_known_hosts {
        sqlx::query("UPDATE projects SET ssh_known_hosts = $1 WHERE id = $2")
            .bind(lines)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(selector) = &c.node_selector {
        sqlx::query("UPDATE projects SET node_selector = $1 WHERE id = $2")
            .bind(string_map_json(selector))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(hash) = &c.push_token_hash {
        sqlx::query("UPDATE projects SET push_token_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for (kind, message) in &c.events {
        events::insert(&mut *tx, Some(id), *kind, message).await?;
    }
    tx.commit().await?;
    get(db, id).await
}

/// Deletes a project (its credential and deployments go with it) and logs
/// it, in one transaction.
pub(super) async fn delete(db: &SqlStore, id: i64) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    found(done, format!("project {id}"))?;
    events::insert(
        &mut *tx,
        Some(id),
        EventKind::ProjectDeleted,
        &format!("project {id} deleted"),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn credential(db: &SqlStore, project_id: i64) -> Result<Option<SealedCredential>> {
    let row =
        sqlx::query("SELECT kind, username, sealed FROM project_credentials WHERE project_id = $1")
            .bind(project_id)
            .fetch_optional(&db.pool)
            .await?;
    row.map(|r| {
        Ok(SealedCredential {
            kind: r.try_get("kind")?,
            username: r.try_get("username")?,
            sealed: r.try_get("sealed")?,
        })
    })
    .transpose()
}

pub(super) async fn has_push_token_hash(
    db: &SqlStore,
    project_id: i64,
    hash: &str,
) -> Result<bool> {
    let row = sqlx::query("SELECT id FROM projects WHERE id = $1 AND push_token_hash = $2")
        .bind(project_id)
        .bind(hash)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

pub(super) async fn set_image_digests(
    db: &SqlStore,
    project_id: i64,
    digests: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("UPDATE projects SET last_tracked_image_digests = $1 WHERE id = $2")
        .bind(string_map_json(digests))
        .bind(project_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
