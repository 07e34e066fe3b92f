//! The policy every replica runs: components by sha256 with the config last
//! given to each, and the one `active_policy` row naming the active policy
//! and the one before it. Each change rewrites that row in one transaction
//! and tells the other replicas (see `notify`). Beside each component, its
//! native code per engine, so only the replica that accepted it compiles it
//! (authenticated by the policy runtime, not here).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::notify::{self, Change};
use super::{Result, SqlStore, StoreError, now};

/// The active policy as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePolicy {
    pub sha256: String,
    /// '' when none was given.
    pub config: String,
    pub previous_sha256: Option<String>,
    pub previous_config: Option<String>,
}

/// A component to keep, and to make active.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub sha256: String,
    pub wasm: Vec<u8>,
    /// Where it came from (a file, "api", "bundled"), shown with the policy.
    pub source: String,
    /// Its config; `None` keeps the one stored for it before, if any.
    pub config: Option<String>,
    /// Its native code for this replica's engine, written in the same
    /// transaction, so a replica told of the change finds the code too.
    pub native: Option<NativeCode>,
}

/// A component's native code for one engine, as the database keeps it. The
/// store neither makes nor checks `mac`: whoever may write the database may
/// write this row, so the reader checks it before using a byte of `code`.
#[derive(Clone, PartialEq, Eq)]
pub struct NativeCode {
    /// Hex sha256 of the engine's compatibility hash.
    pub engine_hash: String,
    pub code: Vec<u8>,
    pub mac: Vec<u8>,
}

impl std::fmt::Debug for NativeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeCode")
            .field("engine_hash", &self.engine_hash)
            .field("code_len", &self.code.len())
            .finish_non_exhaustive()
    }
}

/// A kept component.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub wasm: Vec<u8>,
    pub source: String,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl SqlStore {
    pub(super) async fn active_policy_row(&self) -> Result<Option<ActivePolicy>> {
        let mut conn = self.pool.acquire().await?;
        read_active(&mut conn, false).await
    }

    pub(super) async fn stored_policy_row(&self, sha256: &str) -> Result<Option<StoredPolicy>> {
        let row = sqlx::query("SELECT wasm, source FROM policies WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(StoredPolicy {
                wasm: r.try_get("wasm")?,
                source: r.try_get("source")?,
            })
        })
        .transpose()
    }

    pub(super) async fn native_code_row(
        &self,
        sha256: &str,
        engine_hash: &str,
    ) -> Result<Option<NativeCode>> {
        let row = sqlx::query(
            "SELECT code, mac FROM policy_native_code WHERE sha256 = $1 AND engine_hash = $2",
        )
        .bind(sha256)
        .bind(engine_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(NativeCode {
                engine_hash: engine_hash.to_string(),
                code: r.try_get("code")?,
                mac: r.try_get("mac")?,
            })
        })
        .transpose()
    }

    pub(super) async fn put_native_code_row(
        &self,
        sha256: &str,
        native: &NativeCode,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        put_native(&mut tx, sha256, native).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps `new` and makes it active when no policy is yet; returns the
    /// active policy either way (another replica's, if it was first).
    pub(super) async fn seed_policy_row(&self, new: &NewPolicy) -> Result<ActivePolicy> {
        let mut tx = self.begin_write().await?;
        let config = keep(&mut tx, new).await?;
        // A replica starting at the same moment may insert first: its
        // policy stays, and is read back below.
        sqlx::query(
            "INSERT INTO active_policy (id, sha256, config, changed_at) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.sha256)
        .bind(&config)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let active = read_active(&mut tx, self.is_postgres()).await?;
        notify::send(&mut tx, self.is_postgres(), Change::Policy).await?;
        tx.commit().await?;
        active.ok_or_else(|| StoreError::Corrupt("the active policy row vanished".into()))
    }

    /// Keeps `new` and makes it the active policy, the active one becoming
    /// the previous one (the same policy again only takes the config).
    pub(super) async fn switch_policy_row(&self, new: &NewPolicy) -> Result<ActivePolicy> {
        let mut tx = self.begin_write().await?;
        let config = keep(&mut tx, new).await?;
        let current = read_active(&mut tx, self.is_postgres()).await?;
        let next = match current {
            None => ActivePolicy {
                sha256: new.sha256.clone(),
                config,
                previous_sha256: None,
                previous_config: None,
            },
            Some(cur) if cur.sha256 == new.sha256 => ActivePolicy { config, ..cur },
            Some(cur) => ActivePolicy {
                sha256: new.sha256.clone(),
                config,
                previous_sha256: Some(cur.sha256),
                previous_config: Some(cur.config),
            },
        };
        write_active(&mut tx, &next).await?;
        notify::send(&mut tx, self.is_postgres(), Change::Policy).await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Gives the active policy `config`, if it is still `sha256`.
    pub(super) async fn set_policy_config_row(
        &self,
        sha256: &str,
        config: &str,
    ) -> Result<ActivePolicy> {
        let mut tx = self.begin_write().await?;
        let current = read_active(&mut tx, self.is_postgres()).await?;
        let Some(cur) = current.filter(|c| c.sha256 == sha256) else {
            return Err(StoreError::Conflict(format!(
                "the active policy is no longer {sha256}: another replica switched it; nothing was changed"
            )));
        };
        let next = ActivePolicy {
            config: config.to_string(),
            ..cur
        };
        set_stored_config(&mut tx, sha256, config).await?;
        write_active(&mut tx, &next).await?;
        notify::send(&mut tx, self.is_postgres(), Change::Policy).await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Makes the previous policy active again with the config it had (and
    /// the active one previous); `None` when there is no previous one.
    pub(super) async fn rollback_policy_row(&self) -> Result<Option<ActivePolicy>> {
        let mut tx = self.begin_write().await?;
        let current = read_active(&mut tx, self.is_postgres()).await?;
        let Some((cur, sha256)) = current.and_then(|c| {
            let sha = c.previous_sha256.clone()?;
            Some((c, sha))
        }) else {
            return Ok(None);
        };
        let next = ActivePolicy {
            sha256,
            config: cur.previous_config.clone().unwrap_or_default(),
            previous_sha256: Some(cur.sha256),
            previous_config: Some(cur.config),
        };
        // The restored config is the one a later swap to it brings.
        set_stored_config(&mut tx, &next.sha256, &next.config).await?;
        write_active(&mut tx, &next).await?;
        notify::send(&mut tx, self.is_postgres(), Change::Policy).await?;
        tx.commit().await?;
        Ok(Some(next))
    }
}

/// Reads the active row; `lock` (PostgreSQL) holds it until the transaction
/// ends, so two replicas' changes apply one after the other.
async fn read_active(conn: &mut sqlx::AnyConnection, lock: bool) -> Result<Option<ActivePolicy>> {
    let sql = if lock {
        "SELECT sha256, config, previous_sha256, previous_config FROM active_policy WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT sha256, config, previous_sha256, previous_config FROM active_policy WHERE id = 1"
    };
    let row: Option<AnyRow> = sqlx::query(sql).fetch_optional(&mut *conn).await?;
    row.map(|r| {
        Ok(ActivePolicy {
            sha256: r.try_get("sha256")?,
            config: r.try_get("config")?,
            previous_sha256: r.try_get("previous_sha256")?,
            previous_config: r.try_get("previous_config")?,
        })
    })
    .transpose()
}

async fn write_active(tx: &mut Tx, active: &ActivePolicy) -> Result<()> {
    sqlx::query(
        "INSERT INTO active_policy (id, sha256, config, previous_sha256, previous_config, changed_at) \
         VALUES (1, $1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256, \
         config = excluded.config, previous_sha256 = excluded.previous_sha256, \
         previous_config = excluded.previous_config, changed_at = excluded.changed_at",
    )
    .bind(&active.sha256)
    .bind(&active.config)
    .bind(&active.previous_sha256)
    .bind(&active.previous_config)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keeps the component (once per sha256) and, when given, its config;
/// returns the config now stored for it.
async fn keep(tx: &mut Tx, new: &NewPolicy) -> Result<String> {
    sqlx::query(
        "INSERT INTO policies (sha256, wasm, config, source, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(&new.sha256)
    .bind(new.wasm.as_slice())
    .bind(new.config.as_deref().unwrap_or(""))
    .bind(&new.source)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    if let Some(config) = &new.config {
        set_stored_config(tx, &new.sha256, config).await?;
    }
    if let Some(native) = &new.native {
        put_native(tx, &new.sha256, native).await?;
    }
    let row = sqlx::query("SELECT config FROM policies WHERE sha256 = $1")
        .bind(&new.sha256)
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get("config")?)
}

/// Writes (or replaces: a row that failed its check is rewritten) the
/// native code of `sha256` for one engine.
async fn put_native(tx: &mut Tx, sha256: &str, native: &NativeCode) -> Result<()> {
    sqlx::query(
        "INSERT INTO policy_native_code (sha256, engine_hash, code, mac, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256, engine_hash) DO UPDATE SET \
         code = excluded.code, mac = excluded.mac, created_at = excluded.created_at",
    )
    .bind(sha256)
    .bind(&native.engine_hash)
    .bind(native.code.as_slice())
    .bind(native.mac.as_slice())
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_stored_config(tx: &mut Tx, sha256: &str, config: &str) -> Result<()> {
    sqlx::query("UPDATE policies SET config = $1 WHERE sha256 = $2")
        .bind(config)
        .bind(sha256)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
