//! `Store` for SQLite (and, with the same queries, PostgreSQL) through sqlx's
//! `Any` driver. Queries use `$N` placeholders in order of appearance, which
//! both backends accept.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::*;

const PROJECT_COLUMNS: &str = "p.id, p.name, p.project_type, p.git_source, p.git_url, p.git_branch, \
     p.compose_file_path, p.expose_service, p.expose_port, p.auto_deploy_enabled, p.image_ref, p.container_port, \
     p.last_tracked_commit_sha, p.last_tracked_image_digests, p.pinned_node_id, \
     p.created_at, p.updated_at, c.kind AS credential_kind, c.username AS credential_username";
const PROJECT_FROM: &str = "FROM projects p LEFT JOIN project_credentials c ON c.project_id = p.id";
const DEPLOYMENT_COLUMNS: &str = "id, project_id, source, status, target_commit, target_digests, reason, error, \
     trigger_count, policy_name, policy_version, policy_sha256, node_id, log_tail, created_at, updated_at, finished_at";

pub struct SqlStore {
    pool: AnyPool,
    sqlite: bool,
}

impl SqlStore {
    /// Connects and brings the schema up to date. `url` is `sqlite://PATH`
    /// (the file is created when missing).
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        }
        let url = if url.contains('?') {
            url.to_string()
        } else {
            format!("{url}?mode=rwc")
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // WAL lets readers run beside the writer; foreign keys
                    // make deletes cascade.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrate::run(&pool, migrate::SQLITE).await?;
        Ok(SqlStore { pool, sqlite })
    }

    /// A write transaction. SQLite takes the write lock up front: two
    /// deferred transactions that both read then write would deadlock.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        })
    }
}

/// A database URL without its password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn enum_from<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

pub(crate) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("unit enums serialize to strings"),
    }
}

fn digests_from(s: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(s).map_err(|_| {
        // A short prefix is enough to recognise the damage.
        let head: String = s.chars().take(40).collect();
        let more = if head.len() < s.len() { "…" } else { "" };
        StoreError::Corrupt(format!(
            "last_tracked_image_digests is not a JSON map of image to digest: {head:?}{more}"
        ))
    })
}

fn digests_json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).expect("string maps serialize")
}

/// Decodes a project row; any failure names the project.
fn project_from(row: &AnyRow) -> Result<ProjectRecord> {
    let id: i64 = row.try_get("id")?;
    decode_project(id, row).map_err(|e| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("project {id}: {m}")),
        StoreError::Db(e) => StoreError::Corrupt(format!("project {id}: {e}")),
        other => other,
    })
}

fn decode_project(id: i64, row: &AnyRow) -> Result<ProjectRecord> {
    let kind: Option<String> = row.try_get("credential_kind")?;
    Ok(ProjectRecord {
        id,
        fields: ProjectFields {
            name: row.try_get("name")?,
            project_type: enum_from("project_type", &row.try_get::<String, _>("project_type")?)?,
            git_source: enum_from("git_source", &row.try_get::<String, _>("git_source")?)?,
            git_url: row.try_get("git_url")?,
            git_branch: row.try_get("git_branch")?,
            compose_file_path: row.try_get("compose_file_path")?,
            expose_service: row.try_get("expose_service")?,
            expose_port: row.try_get("expose_port")?,
            auto_deploy_enabled: row.try_get::<i64, _>("auto_deploy_enabled")? != 0,
            image_ref: row.try_get("image_ref")?,
            container_port: row.try_get("container_port")?,
        },
        last_tracked_commit_sha: row.try_get("last_tracked_commit_sha")?,
        last_tracked_image_digests: digests_from(
            &row.try_get::<String, _>("last_tracked_image_digests")?,
        )?,
        pinned_node_id: row.try_get("pinned_node_id")?,
        credentials: match kind {
            Some(k) => Some(CredentialInfo {
                kind: enum_from("credential kind", &k)?,
                username: row.try_get("credential_username")?,
            }),
            None => None,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What can still be read of a row `project_from` refused.
fn broken_project(row: &AnyRow, error: StoreError) -> BrokenProject {
    let text = |col: &str| row.try_get::<String, _>(col).ok();
    BrokenProject {
        id: row.try_get("id").unwrap_or(0),
        name: text("name").unwrap_or_default(),
        project_type: text("project_type").and_then(|s| enum_from("project_type", &s).ok()),
        git_source: text("git_source").and_then(|s| enum_from("git_source", &s).ok()),
        auto_deploy_enabled: row
            .try_get::<i64, _>("auto_deploy_enabled")
            .ok()
            .map(|v| v != 0),
        error: error.to_string(),
    }
}

fn deployment_from(row: &AnyRow) -> Result<Deployment> {
    let digests: Option<String> = row.try_get("target_digests")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        source: enum_from("source", &row.try_get::<String, _>("source")?)?,
        status: enum_from("status", &row.try_get::<String, _>("status")?)?,
        target_commit: row.try_get("target_commit")?,
        target_digests: digests.as_deref().map(digests_from).transpose()?,
        reason: row.try_get("reason")?,
        error: row.try_get("error")?,
        trigger_count: row.try_get("trigger_count")?,
        policy_name: row.try_get("policy_name")?,
        policy_version: row.try_get("policy_version")?,
        policy_sha256: row.try_get("policy_sha256")?,
        node_id: row.try_get("node_id")?,
        log_tail: row.try_get("log_tail")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn node_from(row: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        last_seen_at: row.try_get("last_seen_at")?,
        created_at: row.try_get("created_at")?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds a project's user-set fields as `$1`..`$11`, in column order.
fn bind_fields<'q>(q: AnyQuery<'q>, f: &'q ProjectFields) -> AnyQuery<'q> {
    q.bind(&f.name)
        .bind(enum_str(&f.project_type))
        .bind(enum_str(&f.git_source))
        .bind(&f.git_url)
        .bind(&f.git_branch)
        .bind(&f.compose_file_path)
        .bind(&f.expose_service)
        .bind(f.expose_port)
        .bind(f.auto_deploy_enabled as i64)
        .bind(&f.image_ref)
        .bind(f.container_port)
}

/// Unique-constraint violations become a conflict naming what clashed.
fn unique(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        _ => StoreError::Db(e),
    }
}

async fn insert_event<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    exec: E,
    project_id: Option<i64>,
    kind: &str,
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

#[async_trait]
impl Store for SqlStore {
    async fn create_project(
        &self,
        f: &ProjectFields,
        push_token_hash: Option<&str>,
        credential: Option<&SealedCredential>,
    ) -> Result<ProjectRecord> {
        let mut tx = self.begin_write().await?;
        let t = now();
        let query = sqlx::query(
            "INSERT INTO projects (name, project_type, git_source, git_url, git_branch, compose_file_path, \
             expose_service, expose_port, auto_deploy_enabled, image_ref, container_port, push_token_hash, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
        );
        let row = bind_fields(query, f)
            .bind(push_token_hash)
            .bind(t)
            .bind(t)
            .fetch_one(&mut *tx)
            .await
            .map_err(unique(&format!("a project named {:?}", f.name)))?;
        let id: i64 = row.try_get("id")?;
        if let Some(c) = credential {
            sqlx::query("INSERT INTO project_credentials (project_id, kind, username, sealed) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(enum_str(&c.kind))
                .bind(&c.username)
                .bind(&c.sealed)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(
            &mut *tx,
            Some(id),
            "project.created",
            &format!("project {:?} created", f.name),
        )
        .await?;
        tx.commit().await?;
        self.project(id).await
    }

    async fn project(&self, id: i64) -> Result<ProjectRecord> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} {PROJECT_FROM} WHERE p.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("project {id}")))?;
        project_from(&row)
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} {PROJECT_FROM} ORDER BY p.id"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(project_from)
        .collect()
    }

    async fn projects_checked(&self) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} {PROJECT_FROM} ORDER BY p.id"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| project_from(row).map_err(|e| broken_project(row, e)))
        .collect())
    }

    async fn update_project(&self, id: i64, f: &ProjectFields) -> Result<ProjectRecord> {
        let query = sqlx::query(
            "UPDATE projects SET name = $1, project_type = $2, git_source = $3, git_url = $4, git_branch = $5, \
             compose_file_path = $6, expose_service = $7, expose_port = $8, auto_deploy_enabled = $9, \
             image_ref = $10, container_port = $11, updated_at = $12 WHERE id = $13",
        );
        let done = bind_fields(query, f)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unique(&format!("a project named {:?}", f.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("project {id}")));
        }
        self.project(id).await
    }

    async fn delete_project(&self, id: i64) -> Result<()> {
        let done = sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("project {id}")));
        }
        insert_event(
            &self.pool,
            Some(id),
            "project.deleted",
            &format!("project {id} deleted"),
        )
        .await
    }

    async fn set_credential(&self, project_id: i64, c: Option<&SealedCredential>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM project_credentials WHERE project_id = $1")
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
        if let Some(c) = c {
            sqlx::query("INSERT INTO project_credentials (project_id, kind, username, sealed) VALUES ($1, $2, $3, $4)")
                .bind(project_id)
                .bind(enum_str(&c.kind))
                .bind(&c.username)
                .bind(&c.sealed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn credential(&self, project_id: i64) -> Result<Option<SealedCredential>> {
        let row = sqlx::query(
            "SELECT kind, username, sealed FROM project_credentials WHERE project_id = $1",
        )
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SealedCredential {
                kind: enum_from("credential kind", &r.try_get::<String, _>("kind")?)?,
                username: r.try_get("username")?,
                sealed: r.try_get("sealed")?,
            })
        })
        .transpose()
    }

    async fn set_push_token_hash(&self, project_id: i64, hash: &str) -> Result<()> {
        let done = sqlx::query("UPDATE projects SET push_token_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("project {project_id}")));
        }
        Ok(())
    }

    async fn project_by_push_token_hash(&self, project_id: i64, hash: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM projects WHERE id = $1 AND push_token_hash = $2")
            .bind(project_id)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn settings(&self) -> Result<Settings> {
        let rows = sqlx::query("SELECT key, value FROM settings")
            .fetch_all(&self.pool)
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

    async fn put_settings(&self, values: &BTreeMap<String, String>) -> Result<Settings> {
        let mut tx = self.begin_write().await?;
        for (key, value) in values {
            sqlx::query("DELETE FROM settings WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            insert_event(
                &mut *tx,
                None,
                "settings.changed",
                &format!("{key} = {value}"),
            )
            .await?;
        }
        tx.commit().await?;
        self.settings().await
    }

    async fn admin_token_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    async fn add_admin_token(&self, hash: &str) -> Result<()> {
        sqlx::query("INSERT INTO admin_tokens (token_hash, created_at) VALUES ($1, $2)")
            .bind(hash)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn admin_token_exists(&self, hash: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM admin_tokens WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn record_trigger(&self, w: &TriggerWrite) -> Result<Deployment> {
        let mut tx = self.begin_write().await?;
        let t = now();
        let digests = w.target_digests.as_ref().map(digests_json);
        let queued: Option<i64> = if w.failure.is_some() {
            None
        } else {
            sqlx::query("SELECT id FROM deployments WHERE project_id = $1 AND status = 'queued' ORDER BY id DESC LIMIT 1")
                .bind(w.project_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("id"))
                .transpose()?
        };
        let id: i64 = match queued {
            // Not yet claimed: it absorbs this trigger and moves to the newest target.
            Some(id) => {
                sqlx::query(
                    "UPDATE deployments SET source = $1, target_commit = COALESCE($2, target_commit), \
                     target_digests = COALESCE($3, target_digests), reason = $4, trigger_count = trigger_count + 1, \
                     policy_name = $5, policy_version = $6, policy_sha256 = $7, updated_at = $8 WHERE id = $9",
                )
                .bind(enum_str(&w.source))
                .bind(&w.target_commit)
                .bind(&digests)
                .bind(&w.reason)
                .bind(&w.policy_name)
                .bind(&w.policy_version)
                .bind(&w.policy_sha256)
                .bind(t)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                id
            }
            None => {
                let (status, finished) = match w.failure {
                    Some(_) => ("failed", Some(t)),
                    None => ("queued", None),
                };
                sqlx::query(
                    "INSERT INTO deployments (project_id, source, status, target_commit, target_digests, reason, error, \
                     policy_name, policy_version, policy_sha256, node_id, created_at, updated_at, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
                )
                .bind(w.project_id)
                .bind(enum_str(&w.source))
                .bind(status)
                .bind(&w.target_commit)
                .bind(&digests)
                .bind(&w.reason)
                .bind(&w.failure)
                .bind(&w.policy_name)
                .bind(&w.policy_version)
                .bind(&w.policy_sha256)
                .bind(w.node_id)
                .bind(t)
                .bind(t)
                .bind(finished)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?
            }
        };
        sqlx::query(
            "UPDATE projects SET last_tracked_commit_sha = COALESCE($1, last_tracked_commit_sha), \
             last_tracked_image_digests = COALESCE($2, last_tracked_image_digests) WHERE id = $3",
        )
        .bind(&w.track_commit)
        .bind(w.track_digests.as_ref().map(digests_json))
        .bind(w.project_id)
        .execute(&mut *tx)
        .await?;
        let message = match &w.failure {
            Some(f) => format!("{} deployment {id} failed: {f}", enum_str(&w.source)),
            None => format!("{} deployment {id}: {}", enum_str(&w.source), w.reason),
        };
        insert_event(&mut *tx, Some(w.project_id), "deploy.triggered", &message).await?;
        tx.commit().await?;
        self.deployment(id).await
    }

    async fn set_image_digests(
        &self,
        project_id: i64,
        digests: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query("UPDATE projects SET last_tracked_image_digests = $1 WHERE id = $2")
            .bind(digests_json(digests))
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>> {
        sqlx::query(AssertSqlSafe(format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE project_id = $1 ORDER BY id DESC LIMIT $2")))
            .bind(project_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(deployment_from)
            .collect()
    }

    async fn deployment(&self, id: i64) -> Result<Deployment> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        deployment_from(&row)
    }

    async fn add_node(&self, name: &str, token_hash: &str) -> Result<Node> {
        let row = sqlx::query(
            "INSERT INTO nodes (name, token_hash, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .fetch_one(&self.pool)
        .await
        .map_err(unique(&format!("a node named {name:?}")))?;
        self.node(row.try_get("id")?).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        sqlx::query("SELECT id, name, last_seen_at, created_at FROM nodes ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(node_from)
            .collect()
    }

    async fn node(&self, id: i64) -> Result<Node> {
        let row = sqlx::query("SELECT id, name, last_seen_at, created_at FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        node_from(&row)
    }

    async fn node_by_token_hash(&self, hash: &str) -> Result<Option<Node>> {
        sqlx::query("SELECT id, name, last_seen_at, created_at FROM nodes WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(node_from)
            .transpose()
    }

    async fn delete_node(&self, id: i64) -> Result<()> {
        let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("node {id}")));
        }
        Ok(())
    }

    async fn heartbeat(&self, node_id: i64, at: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE id = $2")
            .bind(at)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim(&self, node_id: i64) -> Result<Option<Claim>> {
        let mut tx = self.begin_write().await?;
        let t = now();
        sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE id = $2")
            .bind(t)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        // Assigned to this node, or free and of a project not pinned
        // elsewhere; never a second deploy of a project that is running one.
        let row = sqlx::query(
            "SELECT d.id, d.project_id, p.project_type, p.pinned_node_id FROM deployments d \
             JOIN projects p ON p.id = d.project_id \
             WHERE d.status = 'queued' AND (d.node_id = $1 OR (d.node_id IS NULL AND \
             (p.pinned_node_id IS NULL OR p.pinned_node_id = $2))) \
             AND NOT EXISTS (SELECT 1 FROM deployments r WHERE r.project_id = d.project_id AND r.status = 'running') \
             ORDER BY d.id LIMIT 1",
        )
        .bind(node_id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let (id, project_id): (i64, i64) = (row.try_get("id")?, row.try_get("project_id")?);
        let compose = row.try_get::<String, _>("project_type")? == "compose";
        if compose && row.try_get::<Option<i64>, _>("pinned_node_id")?.is_none() {
            // First deploy: the project's named volumes will live on this node.
            sqlx::query("UPDATE projects SET pinned_node_id = $1 WHERE id = $2")
                .bind(node_id)
                .bind(project_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE deployments SET status = 'running', node_id = $1, updated_at = $2 WHERE id = $3")
            .bind(node_id)
            .bind(t)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut *tx,
            Some(project_id),
            "deploy.claimed",
            &format!("deployment {id} claimed by node {node_id}"),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Claim {
            deployment: self.deployment(id).await?,
            project: self.project(project_id).await?,
        }))
    }

    async fn report(
        &self,
        node_id: i64,
        deployment_id: i64,
        status: DeployStatus,
        log_tail: Option<&str>,
        error: Option<&str>,
    ) -> Result<Deployment> {
        let t = now();
        let finished =
            matches!(status, DeployStatus::Succeeded | DeployStatus::Failed).then_some(t);
        let done = sqlx::query(
            "UPDATE deployments SET status = $1, log_tail = COALESCE($2, log_tail), error = COALESCE($3, error), \
             updated_at = $4, finished_at = $5 WHERE id = $6 AND node_id = $7 AND status = 'running'",
        )
        .bind(enum_str(&status))
        .bind(log_tail)
        .bind(error)
        .bind(t)
        .bind(finished)
        .bind(deployment_id)
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        let d = self.deployment(deployment_id).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "deployment {deployment_id} is not running on this node (it is {})",
                enum_str(&d.status)
            )));
        }
        self.heartbeat(node_id, t).await?;
        insert_event(
            &self.pool,
            Some(d.project_id),
            "deploy.reported",
            &format!("deployment {deployment_id}: {}", enum_str(&status)),
        )
        .await?;
        Ok(d)
    }

    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT d.id, d.status, n.name FROM deployments d JOIN nodes n ON n.id = d.node_id \
             WHERE d.status IN ('queued', 'running') AND (n.last_seen_at IS NULL OR n.last_seen_at < $1)",
        )
        .bind(seen_before)
        .fetch_all(&mut *tx)
        .await?;
        let t = now();
        let mut failed = Vec::new();
        for r in &rows {
            let (id, status, node): (i64, String, String) =
                (r.try_get("id")?, r.try_get("status")?, r.try_get("name")?);
            let error = if status == "running" {
                format!(
                    "node {node} went offline while running this deployment; it was not finished"
                )
            } else {
                refuse_to_migrate(&node)
            };
            sqlx::query("UPDATE deployments SET status = 'failed', error = $1, updated_at = $2, finished_at = $3 WHERE id = $4")
                .bind(&error)
                .bind(t)
                .bind(t)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            failed.push(id);
        }
        tx.commit().await?;
        let mut out = Vec::new();
        for id in failed {
            let d = self.deployment(id).await?;
            insert_event(
                &self.pool,
                Some(d.project_id),
                "deploy.failed",
                d.error.as_deref().unwrap_or_default(),
            )
            .await?;
            out.push(d);
        }
        Ok(out)
    }

    async fn log_event(&self, project_id: Option<i64>, kind: &str, message: &str) -> Result<()> {
        insert_event(&self.pool, project_id, kind, message).await
    }

    async fn events(&self, project_id: Option<i64>, limit: i64) -> Result<Vec<Event>> {
        let rows = match project_id {
            Some(p) => {
                sqlx::query("SELECT id, at, project_id, kind, message FROM events WHERE project_id = $1 ORDER BY id DESC LIMIT $2")
                    .bind(p)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT id, at, project_id, kind, message FROM events ORDER BY id DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    project_id: r.try_get("project_id")?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }
}
