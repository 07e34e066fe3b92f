//! How replicas sharing one database share the background work: leases on
//! projects for the git poll (claimed `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), and a leader per loop that one replica runs at a time (a
//! PostgreSQL advisory lock held on a connection of its own). On SQLite one
//! process owns the database: the same claims without row locks (its write
//! transaction serializes them), and that process always leads.

use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row};

use super::db::SqlStore;
use super::projects::{COLUMNS, FROM, broken_project, project_from};
use super::{BrokenProject, ProjectRecord, Result};

/// A claim of projects for one git poll batch.
#[derive(Debug, Clone)]
pub struct LeaseClaim {
    /// The claiming replica.
    pub owner: String,
    /// Only projects checked at or before this (Unix seconds), or never,
    /// and stamped `checked_at`; `None`: any project, its schedule left as
    /// it was (a tick asked for through the API).
    pub due_before: Option<i64>,
    /// The tick's start, stamped on a due claim: the next tick's `due_before`
    /// is compared with it.
    pub checked_at: i64,
    /// The lease's end (Unix seconds): another replica may claim the project
    /// after it, should this one die before releasing it.
    pub lease_until: i64,
    pub limit: i64,
}

/// A replica's leadership of one loop: on PostgreSQL, the connection that
/// holds the advisory lock (closing it, or losing it, ends the leadership).
pub struct Leader {
    conn: Option<AnyConnection>,
}

impl Leader {
    /// Whether the leadership still holds: the lock's connection answers.
    pub async fn still_leads(&mut self) -> bool {
        match self.conn.as_mut() {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("advisory_lock", &self.conn.is_some())
            .finish()
    }
}

/// The advisory lock key of a role: stable across versions and replicas.
fn lock_key(role: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("autodeploy:{role}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Claims up to `c.limit` projects with an id above `after`, in id
/// order, that no other replica holds a live lease on (and, for a due
/// claim, not checked within the interval); each row decoded on its own.
pub(super) async fn claim(
    db: &SqlStore,
    c: &LeaseClaim,
    after: i64,
) -> Result<Vec<std::result::Result<ProjectRecord, BrokenProject>>> {
    let now = super::now();
    // A due claim stamps the check; an asked-for one leaves the
    // schedule as it was.
    let (stamp, due) = match c.due_before {
        Some(_) => (
            "checked_at = $6,",
            "AND (checked_at IS NULL OR checked_at <= $7)",
        ),
        None => ("", ""),
    };
    // Rows another replica is claiming right now are skipped, not
    // waited for; SQLite's write transaction already serializes claims.
    let lock = db.lock("FOR UPDATE SKIP LOCKED");
    let mut tx = db.begin_write().await?;
    let mut claim = sqlx::query(AssertSqlSafe(format!(
        "UPDATE projects SET {stamp} lease_owner = $1, lease_until = $2 WHERE id IN (\
         SELECT id FROM projects WHERE id > $3 \
         AND (lease_until IS NULL OR lease_until <= $4 OR lease_owner = $1) {due} \
         ORDER BY id LIMIT $5 {lock}) RETURNING id"
    )))
    .bind(&c.owner)
    .bind(c.lease_until)
    .bind(after)
    .bind(now)
    .bind(c.limit);
    if let Some(due_before) = c.due_before {
        claim = claim.bind(c.checked_at).bind(due_before);
    }
    let claimed = claim.fetch_all(&mut *tx).await?;
    let mut ids = claimed
        .iter()
        .map(|r| r.try_get::<i64, _>("id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(vec![]);
    }
    ids.sort_unstable();
    // Integers only: nothing a user wrote reaches the statement.
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE p.id IN ({list}) ORDER BY p.id"
    )))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|row| project_from(row).map_err(|e| broken_project(row, e)))
        .collect())
}

/// Ends every lease `owner` holds. With `checked_at`, the projects are
/// stamped checked then: a due tick stamps its claims again at its end, so
/// the next check of a project looked up late in a long tick still waits a
/// whole interval from that lookup, not from the tick's start.
pub(super) async fn release(db: &SqlStore, owner: &str, checked_at: Option<i64>) -> Result<()> {
    sqlx::query(
        "UPDATE projects SET checked_at = COALESCE($2, checked_at), lease_owner = NULL, \
         lease_until = NULL WHERE lease_owner = $1",
    )
    .bind(owner)
    .bind(checked_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Extends the leases `owner` holds to `lease_until`: a tick renews its
/// claims while it runs, so one that takes longer than its lease never
/// lets another replica look its projects up again meanwhile, and a
/// replica that dies stops renewing (its leases run out within a lease).
pub(super) async fn renew(db: &SqlStore, owner: &str, lease_until: i64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE projects SET lease_until = $2 WHERE lease_owner = $1 AND lease_until < $2",
    )
    .bind(owner)
    .bind(lease_until)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

/// Takes the leadership of `role` if no other replica holds it.
pub(super) async fn lead(db: &SqlStore, role: &str) -> Result<Option<Leader>> {
    if db.is_sqlite() {
        return Ok(Some(Leader { conn: None }));
    }
    // A connection of its own, out of the pool: the lock lives as long
    // as the session, and a pooled connection would be handed to others.
    let mut conn = db.pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(role))
        .fetch_one(&mut conn)
        .await?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    Ok(Some(Leader { conn: Some(conn) }))
}
