//! Applies migrations/<backend>/*.sql in name order, each once, each in its
//! own transaction. The files are compiled into the binary.

use sqlx::{AnyPool, Executor};

use super::db::Backend;
use super::{Result, StoreError, now};

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Both folders hold the same file names: one list names them once.
macro_rules! migrations {
    ($($name:literal),+ $(,)?) => {
        pub const SQLITE: &[Migration] = &[$(Migration {
            name: $name,
            sql: include_str!(concat!("../../../migrations/sqlite/", $name)),
        }),+];
        pub const POSTGRES: &[Migration] = &[$(Migration {
            name: $name,
            sql: include_str!(concat!("../../../migrations/postgres/", $name)),
        }),+];
    };
}

migrations!(
    "0001_initial.sql",
    "0002_image_projects.sql",
    "0003_trigger_history.sql",
    "0004_ssh_known_hosts.sql",
    "0005_node_scope.sql",
    "0006_project_labels.sql",
    "0007_decision_log.sql",
    "0008_replica_leases.sql",
    "0009_shared_policies.sql",
    "0010_list_paging.sql",
    "0011_deploy_state.sql",
    "0012_web_sessions.sql",
    "0013_policy_native_code.sql",
    "0014_git_webhooks.sql",
    "0015_notifications.sql",
    "0016_registry_credentials.sql",
);

/// The advisory lock replicas starting together take on PostgreSQL: one
/// applies the migrations, the others wait and then find them applied.
/// (`PERFORM`: the functions return `void`, which the `Any` driver cannot
/// decode.)
const POSTGRES_LOCK: &str = "DO $$ BEGIN PERFORM pg_advisory_lock(7316052301); END $$";
const POSTGRES_UNLOCK: &str = "DO $$ BEGIN PERFORM pg_advisory_unlock(7316052301); END $$";

pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let migrations = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => {
            conn.execute(POSTGRES_LOCK).await?;
            POSTGRES
        }
    };
    let applied = apply(&mut conn, migrations, backend).await;
    if backend == Backend::Postgres {
        conn.execute(POSTGRES_UNLOCK).await?;
    }
    applied
}

async fn apply(
    conn: &mut sqlx::AnyConnection,
    migrations: &[Migration],
    backend: Backend,
) -> Result<()> {
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await?;
    for m in migrations {
        // SQLite has no advisory lock: the write lock, taken before the
        // check, keeps two processes from applying one file twice.
        let mut tx = match backend {
            Backend::Sqlite => sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?,
            Backend::Postgres => sqlx::Connection::begin(&mut *conn).await?,
        };
        let applied: Option<(String,)> =
            sqlx::query_as("SELECT name FROM schema_migrations WHERE name = $1")
                .bind(m.name)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_some() {
            continue;
        }
        let fail = |source| StoreError::Migration {
            name: m.name.into(),
            source,
        };
        // The file holds several statements: run it as one script.
        tx.execute(m.sql).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)")
            .bind(m.name)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(migration = m.name, "applied migration");
    }
    Ok(())
}
