//! The connection pool and what every aggregate's queries share: the write
//! transaction, enum and JSON column helpers, constraint errors.
//!
//! Queries use `$N` placeholders in order of appearance, which SQLite and
//! PostgreSQL both accept through sqlx's `Any` driver.

use std::collections::BTreeMap;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::{Result, StoreError};

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
        super::migrate::run(&pool, super::migrate::SQLITE).await?;
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

pub(super) fn enum_from<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

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
