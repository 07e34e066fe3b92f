//! `Store` for SQLite (and, with the same queries, PostgreSQL) through sqlx's
//! `Any` driver. Queries use `$N` placeholders in order of appearance, which
//! both backends accept.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::decisions;
use super::*;

pub(super) const PROJECT_COLUMNS: &str = "p.id, p.name, p.project_type, p.git_source, p.git_url, p.git_branch, \
     p.compose_file_path, p.expose_service, p.expose_port, p.auto_deploy_enabled, p.image_ref, p.container_port, \
     p.labels, p.last_tracked_commit_sha, p.last_tracked_image_digests, p.pinned_node_id, p.node_selector, \
     p.ssh_known_hosts, p.created_at, p.updated_at, c.kind AS credential_kind, c.username AS credential_username";
pub(super) const PROJECT_FROM: &str =
    "FROM projects p LEFT JOIN project_credentials c ON c.project_id = p.id";
const NODE_COLUMNS: &str = "id, name, labels, last_seen_at, created_at";
const DEPLOYMENT_COLUMNS: &str = "id, project_id, source, sources, status, target_commit, target_digests, reason, error, \
     trigger_count, repeat_count, last_seen_at, policy_name, policy_version, policy_sha256, node_id, log_tail, created_at, updated_at, finished_at";

/// How many of a project's latest failures a new one may fold into.
const FOLD_WINDOW: i64 = 16;

pub struct SqlStore {
    pub(super) pool: AnyPool,
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

    /// Opens an existing database as it is: nothing is created and no
    /// migration runs (a replay reads a daemon's database, perhaps while
    /// that daemon runs, and must not change its schema under it).
    pub async fn connect_existing(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        }
        let url = if url.contains('?') {
            url.to_string()
        } else {
            format!("{url}?mode=rw")
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 10000;").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(SqlStore { pool, sqlite: true })
    }

    pub(super) fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// A write transaction. SQLite takes the write lock up front: two
    /// deferred transactions that both read then write would deadlock.
    pub(super) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
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

/// A node's labels, a project's labels or its node selector.
fn string_map(what: &str, s: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

/// A digest map, node labels or a node selector, as stored (JSON).
fn string_map_json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).expect("string maps serialize")
}

/// Decodes a project row; any failure names the project.
pub(super) fn project_from(row: &AnyRow) -> Result<ProjectRecord> {
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
            labels: string_map("labels", &row.try_get::<String, _>("labels")?)?,
        },
        last_tracked_commit_sha: row.try_get("last_tracked_commit_sha")?,
        last_tracked_image_digests: digests_from(
            &row.try_get::<String, _>("last_tracked_image_digests")?,
        )?,
        pinned_node_id: row.try_get("pinned_node_id")?,
        node_selector: string_map("node selector", &row.try_get::<String, _>("node_selector")?)?,
        credentials: match kind {
            Some(k) => Some(CredentialInfo {
                kind: enum_from("credential kind", &k)?,
                username: row.try_get("credential_username")?,
            }),
            None => None,
        },
        ssh_known_hosts: row.try_get("ssh_known_hosts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

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

/// What can still be read of a row `project_from` refused.
pub(super) fn broken_project(row: &AnyRow, error: StoreError) -> BrokenProject {
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
    let source = enum_from("source", &row.try_get::<String, _>("source")?)?;
    Ok(Deployment {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        source,
        sources: sources_from(&row.try_get::<String, _>("sources")?, source)?,
        status: enum_from("status", &row.try_get::<String, _>("status")?)?,
        target_commit: row.try_get("target_commit")?,
        target_digests: digests.as_deref().map(digests_from).transpose()?,
        reason: row.try_get("reason")?,
        error: row.try_get("error")?,
        trigger_count: row.try_get("trigger_count")?,
        repeat_count: row.try_get("repeat_count")?,
        last_seen_at: row.try_get("last_seen_at")?,
        policy_name: row.try_get("policy_name")?,
        policy_version: row.try_get("policy_version")?,
        policy_sha256: row.try_get("policy_sha256")?,
        node_id: row.try_get("node_id")?,
        log_tail: row.try_get("log_tail")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        decision_ids: Vec::new(),
    })
}

fn node_from(row: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: string_map("node labels", &row.try_get::<String, _>("labels")?)?,
        last_seen_at: row.try_get("last_seen_at")?,
        created_at: row.try_get("created_at")?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds a project's user-set fields as `$1`..`$12`, in column order.
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
        .bind(string_map_json(&f.labels))
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
    kind: EventKind,
    message: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO events (at, project_id, kind, message) VALUES ($1, $2, $3, $4)")
        .bind(now())
        .bind(project_id)
        .bind(kind.as_str())
        .bind(message)
        .execute(exec)
        .await?;
    Ok(())
}

/// A queued deployment that never reached its node gives the project back
/// the tracked state it had before, so the next tick tries the change again.
/// A queued deployment absorbs every later trigger, so nothing newer is undone.
async fn give_back_tracked_state(conn: &mut sqlx::AnyConnection, deployment_id: i64) -> Result<()> {
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
             expose_service, expose_port, auto_deploy_enabled, image_ref, container_port, labels, push_token_hash, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
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
            EventKind::ProjectCreated,
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

    async fn projects_checked(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} {PROJECT_FROM} WHERE p.id > $1 ORDER BY p.id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| project_from(row).map_err(|e| broken_project(row, e)))
        .collect())
    }

    async fn claim_projects(
        &self,
        claim: &LeaseClaim,
        after: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
        self.claim_projects_impl(claim, after).await
    }

    async fn release_projects(&self, owner: &str) -> Result<()> {
        self.release_projects_impl(owner).await
    }

    async fn lead(&self, role: &str) -> Result<Option<Leader>> {
        self.lead_impl(role).await
    }

    async fn update_project(&self, id: i64, f: &ProjectFields) -> Result<ProjectRecord> {
        let query = sqlx::query(
            "UPDATE projects SET name = $1, project_type = $2, git_source = $3, git_url = $4, git_branch = $5, \
             compose_file_path = $6, expose_service = $7, expose_port = $8, auto_deploy_enabled = $9, \
             image_ref = $10, container_port = $11, labels = $12, updated_at = $13 WHERE id = $14",
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
            EventKind::ProjectDeleted,
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

    async fn set_ssh_known_hosts(&self, project_id: i64, lines: Option<&str>) -> Result<()> {
        let done = sqlx::query("UPDATE projects SET ssh_known_hosts = $1 WHERE id = $2")
            .bind(lines)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("project {project_id}")));
        }
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
                EventKind::SettingsChanged,
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
        let tracked = sqlx::query(
            "SELECT last_tracked_commit_sha, last_tracked_image_digests FROM projects WHERE id = $1",
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
        let digests = w.target_digests.as_ref().map(string_map_json);
        let source = enum_str(&w.source);
        // The deployment this trigger goes into, if one takes it: a queued
        // one for a deploy, the newest one when it failed the same way.
        let joined: Option<Deployment> = match &w.failure {
            None => sqlx::query(AssertSqlSafe(format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE project_id = $1 AND status = 'queued' \
                 ORDER BY id DESC LIMIT 1"
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
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE project_id = $1 AND status = 'failed' \
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
                let mut sources = d.sources.clone();
                if !sources.contains(&w.source) {
                    sources.push(w.source);
                }
                sqlx::query(
                    "UPDATE deployments SET sources = $1, target_commit = COALESCE($2, target_commit), \
                     target_digests = COALESCE($3, target_digests), trigger_count = trigger_count + 1, \
                     policy_name = $4, policy_version = $5, policy_sha256 = $6, updated_at = $7, \
                     last_seen_at = $8 WHERE id = $9",
                )
                .bind(sources_json(&sources))
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
                let mut sources = d.sources.clone();
                if !sources.contains(&w.source) {
                    sources.push(w.source);
                }
                sqlx::query(
                    "UPDATE deployments SET sources = $1, repeat_count = repeat_count + 1, \
                     last_seen_at = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(sources_json(&sources))
                .bind(t)
                .bind(t)
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
                (d.id, false)
            }
            (None, failure) => {
                let (status, finished) = match failure {
                    Some(_) => ("failed", Some(t)),
                    None => ("queued", None),
                };
                let id = sqlx::query(
                    "INSERT INTO deployments (project_id, source, sources, status, target_commit, target_digests, \
                     reason, error, policy_name, policy_version, policy_sha256, node_id, created_at, updated_at, \
                     last_seen_at, finished_at, prior_commit, prior_digests) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                     RETURNING id",
                )
                .bind(w.project_id)
                .bind(&source)
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
        if event {
            let message = match &w.failure {
                Some(f) => format!("{source} deployment {id} failed: {f}"),
                None => format!("{source} deployment {id}: {}", w.reason),
            };
            insert_event(
                &mut *tx,
                Some(w.project_id),
                EventKind::DeployTriggered,
                &message,
            )
            .await?;
        }
        tx.commit().await?;
        self.deployment(id).await
    }

    async fn set_image_digests(
        &self,
        project_id: i64,
        digests: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query("UPDATE projects SET last_tracked_image_digests = $1 WHERE id = $2")
            .bind(string_map_json(digests))
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>> {
        let mut list = sqlx::query(AssertSqlSafe(format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE project_id = $1 ORDER BY id DESC LIMIT $2")))
            .bind(project_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(deployment_from)
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<i64> = list.iter().map(|d| d.id).collect();
        let mut links = self.decision_ids_of(&ids).await?;
        for d in &mut list {
            d.decision_ids = links.remove(&d.id).unwrap_or_default();
        }
        Ok(list)
    }

    async fn deployment(&self, id: i64) -> Result<Deployment> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let mut d = deployment_from(&row)?;
        d.decision_ids = self
            .decision_ids_of(&[id])
            .await?
            .remove(&id)
            .unwrap_or_default();
        Ok(d)
    }

    async fn add_node(
        &self,
        name: &str,
        token_hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Node> {
        let row = sqlx::query(
            "INSERT INTO nodes (name, token_hash, labels, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(string_map_json(labels))
        .bind(now())
        .fetch_one(&self.pool)
        .await
        .map_err(unique(&format!("a node named {name:?}")))?;
        self.node(row.try_get("id")?).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(node_from)
        .collect()
    }

    async fn node(&self, id: i64) -> Result<Node> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        node_from(&row)
    }

    async fn node_by_token_hash(&self, hash: &str) -> Result<Option<Node>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE token_hash = $1"
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(node_from)
        .transpose()
    }

    async fn delete_node(&self, id: i64, force: bool) -> Result<NodeDeletion> {
        let mut tx = self.begin_write().await?;
        let node = sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        let node = node_from(&node)?;
        let pinned =
            sqlx::query("SELECT id, name FROM projects WHERE pinned_node_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>("id")?, r.try_get::<String, _>("name")?)))
                .collect::<Result<Vec<_>>>()?;
        if !pinned.is_empty() && !force {
            let names: Vec<String> = pinned.iter().map(|(_, n)| format!("{n:?}")).collect();
            return Err(StoreError::Conflict(format!(
                "node {} has pinned compose projects: {}; their named volumes live on it. \
                 Delete with ?force=true to unpin them: each then deploys on whichever node claims it next, without those volumes",
                node.name,
                names.join(", ")
            )));
        }
        let t = now();
        let mut unpinned = Vec::new();
        for (project_id, name) in pinned {
            sqlx::query("UPDATE projects SET pinned_node_id = NULL, updated_at = $1 WHERE id = $2")
                .bind(t)
                .bind(project_id)
                .execute(&mut *tx)
                .await?;
            insert_event(
                &mut *tx,
                Some(project_id),
                EventKind::ProjectUnpinned,
                &format!(
                    "project {name:?} unpinned from node {} because the node was deleted with force; its named volumes stay there",
                    node.name
                ),
            )
            .await?;
            unpinned.push(name);
        }
        let held = sqlx::query(
            "SELECT id, project_id, status FROM deployments WHERE node_id = $1 AND status IN ('queued', 'running') ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let mut failed_deployments = Vec::new();
        for r in &held {
            let (dep, project_id, status): (i64, i64, String) = (
                r.try_get("id")?,
                r.try_get("project_id")?,
                r.try_get("status")?,
            );
            let error = if status == "running" {
                format!(
                    "node {} was deleted while running this deployment; it was not finished",
                    node.name
                )
            } else {
                // As for an offline node: the change is tried again later.
                give_back_tracked_state(&mut tx, dep).await?;
                format!(
                    "node {} was deleted while this deployment was queued for it",
                    node.name
                )
            };
            sqlx::query("UPDATE deployments SET status = 'failed', error = $1, updated_at = $2, finished_at = $3 WHERE id = $4")
                .bind(&error)
                .bind(t)
                .bind(t)
                .bind(dep)
                .execute(&mut *tx)
                .await?;
            insert_event(
                &mut *tx,
                Some(project_id),
                EventKind::DeployFailed,
                &format!("deployment {dep} failed: {error}"),
            )
            .await?;
            failed_deployments.push(dep);
        }
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut *tx,
            None,
            EventKind::NodeDeleted,
            &format!("node {} deleted", node.name),
        )
        .await?;
        tx.commit().await?;
        Ok(NodeDeletion {
            node,
            unpinned,
            failed_deployments,
        })
    }

    async fn node_holds_project(&self, node_id: i64, project_id: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT id FROM deployments WHERE project_id = $1 AND node_id = $2 AND status = 'running' LIMIT 1",
        )
        .bind(project_id)
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn set_node_selector(
        &self,
        project_id: i64,
        selector: &BTreeMap<String, String>,
    ) -> Result<()> {
        let done =
            sqlx::query("UPDATE projects SET node_selector = $1, updated_at = $2 WHERE id = $3")
                .bind(string_map_json(selector))
                .bind(now())
                .bind(project_id)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("project {project_id}")));
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
            "SELECT d.id, d.project_id, p.project_type, p.pinned_node_id, p.node_selector FROM deployments d \
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
        let mut row = None;
        for r in rows {
            let selector: String = r.try_get("node_selector")?;
            match string_map("node selector", &selector) {
                Ok(selector) if selector_matches(&selector, &labels) => {
                    row = Some(r);
                    break;
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
            EventKind::DeployClaimed,
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
            EventKind::DeployReported,
            &format!("deployment {deployment_id}: {}", enum_str(&status)),
        )
        .await?;
        Ok(d)
    }

    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT d.id, d.status, n.name \
             FROM deployments d JOIN nodes n ON n.id = d.node_id \
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
                // Never reached its node: the tracked state goes back to what
                // it was before this deployment, so the next tick (once the
                // node is back) tries the change again. A queued deployment
                // absorbs every later trigger, so nothing newer is undone.
                give_back_tracked_state(&mut tx, id).await?;
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
                EventKind::DeployFailed,
                d.error.as_deref().unwrap_or_default(),
            )
            .await?;
            out.push(d);
        }
        Ok(out)
    }

    async fn log_event(
        &self,
        project_id: Option<i64>,
        kind: EventKind,
        message: &str,
    ) -> Result<()> {
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
                    kind: r
                        .try_get::<String, _>("kind")?
                        .parse()
                        .map_err(|e: UnknownEventKind| StoreError::Corrupt(e.to_string()))?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    async fn record_decisions(&self, records: &[DecisionRecord]) -> Result<()> {
        self.record_decisions_impl(records).await
    }

    async fn decisions(&self, query: &DecisionQuery) -> Result<Vec<Decision>> {
        self.decisions_impl(query).await
    }

    async fn prune_decisions(&self, max_rows: u64, older_than: i64) -> Result<Pruned> {
        self.prune_decisions_impl(max_rows, older_than).await
    }
}
