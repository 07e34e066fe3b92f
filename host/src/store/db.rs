//! The connection pool and what every aggregate's queries share: the write
//! transaction, enum and JSON column helpers, constraint errors.
//!
//! Queries use `$N` placeholders in order of appearance, which SQLite and
//! PostgreSQL both accept through sqlx's `Any` driver.

use std::collections::BTreeMap;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::{Result, StoreError};

/// Which database server a URL names; each has its migrations folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }
}

pub struct SqlStore {
    pub(super) pool: AnyPool,
    backend: Backend,
    /// Deployment changes written through this store or told by another
    /// replica, for live views.
    pub(super) deployment_changes: tokio::sync::broadcast::Sender<super::DeploymentChange>,
    /// This store's random id in deployment notifications, so it skips its own.
    pub(super) origin: u64,
    /// On PostgreSQL: where this store's deployment changes queue to be told
    /// to the other replicas.
    pub(super) tell_replicas: Option<tokio::sync::mpsc::Sender<super::DeploymentChange>>,
}

impl SqlStore {
    /// Connects and brings the schema up to date. `url` is `sqlite://PATH`
    /// (the file is created when missing) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (the database must exist).
    pub async fn connect(url: &str) -> Result<SqlStore> {
        let store = Self::open(url, "rwc", 8).await?;
        super::migrate::run(&store.pool, store.backend).await?;
        Ok(store)
    }

    /// Opens an existing database as it is: nothing is created and no
    /// migration runs (a replay reads a daemon's database, perhaps while
    /// that daemon runs, and must not change its schema under it).
    pub async fn connect_existing(url: &str) -> Result<SqlStore> {
        Self::open(url, "rw", 2).await
    }

    /// `sqlite_mode` says whether a missing SQLite file is created.
    async fn open(url: &str, sqlite_mode: &str, connections: u32) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let options = AnyPoolOptions::new().max_connections(connections);
        let pool = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode={sqlite_mode}")
                };
                options
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            // WAL lets readers run beside the writer; foreign
                            // keys make deletes cascade.
                            // A page cache of 1 MiB per connection, not the
                            // default 2: eight of them fill as the decision
                            // log grows, and the OS caches the file anyway.
                            conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -1024;")
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            // The driver's errors may quote what it was given: none of it
            // reaches an error message unredacted.
            Backend::Postgres => options
                .connect(url)
                .await
                .map_err(|e| StoreError::Connect {
                    url: redact_url(url),
                    reason: redact(&e.to_string(), url),
                })?,
        };
        let origin = rand::random::<u64>();
        let tell_replicas = (backend == Backend::Postgres).then(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(super::notify::tell_deployments(pool.clone(), origin, rx));
            tx
        });
        Ok(SqlStore {
            pool,
            backend,
            // A live view that falls this far behind is told it lagged and
            // reloads; nothing waits on a slow one.
            deployment_changes: tokio::sync::broadcast::channel(1024).0,
            origin,
            tell_replicas,
        })
    }

    pub(super) fn is_sqlite(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// Whether the database is PostgreSQL (shared by replicas).
    pub(super) fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// A write transaction. SQLite takes the write lock up front: two
    /// deferred transactions that both read then write would deadlock.
    /// PostgreSQL keeps its default isolation; the queries that read a row
    /// and then change it lock it ([`SqlStore::for_update`]).
    pub(super) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// `clause` (a row lock such as `FOR UPDATE`) on PostgreSQL; nothing on
    /// SQLite, whose write transaction holds the whole database already.
    pub(super) fn lock(&self, clause: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => clause,
        }
    }
}

/// `text` with the URL's password, if any, starred out.
pub(super) fn redact(text: &str, url: &str) -> String {
    match password(url) {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text.to_string(),
    }
}

fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
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

/// A unit enum's serde name (the policy's enums, which the store does not
/// keep).
pub(crate) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("unit enums serialize to strings"),
    }
}

pub(super) fn digests_from(s: &str) -> Result<BTreeMap<String, String>> {
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
pub(super) fn string_map(what: &str, s: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

/// A digest map, node labels or a node selector, as stored (JSON).
pub(super) fn string_map_json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).expect("string maps serialize")
}

/// Unique-constraint violations become a conflict naming what clashed.
pub(super) fn unique(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        _ => StoreError::Db(e),
    }
}

/// A row count of zero means the row was not there.
pub(super) fn found(done: sqlx::any::AnyQueryResult, what: String) -> Result<()> {
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}
