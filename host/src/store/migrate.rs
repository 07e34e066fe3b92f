//! Applies migrations/<backend>/*.sql in name order, each once, each in its
//! own transaction. The files are compiled into the binary.

use sqlx::{AnyPool, Executor};

use super::{Result, StoreError, now};

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        name: "0001_initial.sql",
        sql: include_str!("../../../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        name: "0002_image_projects.sql",
        sql: include_str!("../../../migrations/sqlite/0002_image_projects.sql"),
    },
    Migration {
        name: "0003_trigger_history.sql",
        sql: include_str!("../../../migrations/sqlite/0003_trigger_history.sql"),
    },
    Migration {
        name: "0004_ssh_known_hosts.sql",
        sql: include_str!("../../../migrations/sqlite/0004_ssh_known_hosts.sql"),
    },
    Migration {
        name: "0005_node_scope.sql",
        sql: include_str!("../../../migrations/sqlite/0005_node_scope.sql"),
    },
    Migration {
        name: "0006_project_labels.sql",
        sql: include_str!("../../../migrations/sqlite/0006_project_labels.sql"),
    },
    Migration {
        name: "0007_decision_log.sql",
        sql: include_str!("../../../migrations/sqlite/0007_decision_log.sql"),
    },
    Migration {
        name: "0008_replica_leases.sql",
        sql: include_str!("../../../migrations/sqlite/0008_replica_leases.sql"),
    },
];

pub async fn run(pool: &AnyPool, migrations: &[Migration]) -> Result<()> {
    pool.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await?;
    for m in migrations {
        let applied: Option<(String,)> =
            sqlx::query_as("SELECT name FROM schema_migrations WHERE name = $1")
                .bind(m.name)
                .fetch_optional(pool)
                .await?;
        if applied.is_some() {
            continue;
        }
        let fail = |source| StoreError::Migration {
            name: m.name.into(),
            source,
        };
        let mut tx = pool.begin().await?;
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
