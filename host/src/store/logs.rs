//! Deployment logs as their nodes stream them: appended chunk by chunk at
//! byte offsets (a retried chunk is stored once), kept up to a cap, read
//! back in pages from any offset.

use sqlx::{AssertSqlSafe, Row};

use super::db::SqlStore;
use super::{DeployStatus, LogAppend, LogPage, Result, StoreError};

/// What is kept of one deployment's log; beyond it, one marker line.
pub const MAX_LOG: usize = 1 << 20;
const DROPPED: &str = "\n[autodeploy: this log is longer than 1 MiB; the rest was dropped]\n";

/// The first char boundary of `s` at or after `i` (or its length).
fn boundary_up(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

/// The last char boundary of `s` at or before `i`.
fn boundary_down(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `stored` with `new` appended as far as the cap allows: once full, the
/// marker ends it and later text is dropped.
fn kept(stored: &str, new: &str) -> Option<String> {
    if new.is_empty() || stored.len() >= MAX_LOG {
        return None;
    }
    let room = MAX_LOG - stored.len();
    let mut out = String::with_capacity(stored.len() + new.len().min(room) + DROPPED.len());
    out.push_str(stored);
    if new.len() <= room {
        out.push_str(new);
    } else {
        out.push_str(&new[..boundary_down(new, room)]);
        out.push_str(DROPPED);
    }
    Some(out)
}

pub(super) async fn append(
    db: &SqlStore,
    node_id: i64,
    deployment_id: i64,
    offset: i64,
    chunk: &str,
) -> Result<LogAppend> {
    let mut tx = db.begin_write().await?;
    // Locks the deployment: chunks and a report of one deployment take turns.
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT status, node_id, cancel_requested FROM deployments WHERE id = $1{}",
        db.lock(" FOR UPDATE")
    )))
    .bind(deployment_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("deployment {deployment_id}")))?;
    let status: DeployStatus = row.try_get("status")?;
    let holder: Option<i64> = row.try_get("node_id")?;
    if status != DeployStatus::Running || holder != Some(node_id) {
        return Err(StoreError::Conflict(format!(
            "deployment {deployment_id} is not running on this node (it is {status})"
        )));
    }
    let cancel = row.try_get::<i64, _>("cancel_requested")? != 0;
    sqlx::query(
        "INSERT INTO deployment_logs (deployment_id, received, text) VALUES ($1, 0, '') \
         ON CONFLICT (deployment_id) DO NOTHING",
    )
    .bind(deployment_id)
    .execute(&mut *tx)
    .await?;
    let log = sqlx::query("SELECT received, text FROM deployment_logs WHERE deployment_id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *tx)
        .await?;
    let (received, text): (i64, String) = (log.try_get("received")?, log.try_get("text")?);
    if offset > received {
        return Ok(LogAppend::Gap { received });
    }
    let end = offset + chunk.len() as i64;
    if end <= received {
        // All of it was stored before: a retry.
        tx.commit().await?;
        return Ok(LogAppend::Stored { cancel });
    }
    // The part not received yet; a retry split inside a character skips
    // the rest of that character (it was stored whole before).
    let new = &chunk[boundary_up(chunk, (received - offset) as usize)..];
    let text = kept(&text, new);
    sqlx::query(
        "UPDATE deployment_logs SET received = $1, text = COALESCE($2, text) WHERE deployment_id = $3",
    )
    .bind(end)
    .bind(text)
    .bind(deployment_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LogAppend::Stored { cancel })
}

pub(super) async fn read(db: &SqlStore, id: i64, after: i64, limit: usize) -> Result<LogPage> {
    let row = sqlx::query(
        "SELECT d.status, l.text FROM deployments d \
         LEFT JOIN deployment_logs l ON l.deployment_id = d.id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
    let status: DeployStatus = row.try_get("status")?;
    let text: String = row
        .try_get::<Option<String>, _>("text")?
        .unwrap_or_default();
    let start = boundary_up(&text, usize::try_from(after).unwrap_or(0).min(text.len()));
    let mut end = boundary_down(&text, start.saturating_add(limit));
    if end == start && start < text.len() {
        // A limit inside the first character: still make progress.
        end = boundary_up(&text, start + 1);
    }
    Ok(LogPage {
        offset: start as i64,
        next: end as i64,
        text: text[start..end].to_string(),
        done: status.is_terminal() && end == text.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_start_and_one_marker() {
        let stored = "a".repeat(MAX_LOG - 2);
        let full = kept(&stored, "bcdé").unwrap();
        assert!(full.starts_with(&stored));
        assert!(full.ends_with(DROPPED));
        assert_eq!(full.len(), MAX_LOG + DROPPED.len());
        assert_eq!(kept(&full, "more"), None);
    }

    #[test]
    fn boundaries_never_split_a_character() {
        let s = "aé";
        assert_eq!(boundary_up(s, 2), 3);
        assert_eq!(boundary_down(s, 2), 1);
    }
}
