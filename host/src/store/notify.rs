//! Replicas tell each other what changed through PostgreSQL's
//! `LISTEN/NOTIFY`: a write that others must see (settings, the active
//! policy) sends a notification from its own transaction, so it goes out
//! exactly when the change commits. On SQLite there is one process and
//! nothing to send.

use std::time::Duration;

use sqlx::Executor;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Result;

/// The channel every replica listens on.
pub const CHANNEL: &str = "autodeploy_changes";

/// What changed; the payload names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Settings,
    Policy,
    /// The connection was (re)made: notifications may have been missed, so
    /// anything may have changed.
    All,
}

impl Change {
    fn from_payload(payload: &str) -> Change {
        match payload {
            "settings" => Change::Settings,
            "policy" => Change::Policy,
            // From a newer version: re-reading everything is always right.
            _ => Change::All,
        }
    }

    fn statement(self) -> Option<&'static str> {
        match self {
            Change::Settings => Some("NOTIFY autodeploy_changes, 'settings'"),
            Change::Policy => Some("NOTIFY autodeploy_changes, 'policy'"),
            Change::All => None,
        }
    }
}

/// Queues `change` for the other replicas; PostgreSQL delivers it when the
/// transaction on `conn` commits (and drops it on a rollback).
pub(super) async fn send(
    conn: &mut sqlx::AnyConnection,
    postgres: bool,
    change: Change,
) -> Result<()> {
    if let (true, Some(sql)) = (postgres, change.statement()) {
        conn.execute(sql).await?;
    }
    Ok(())
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Listens on [`CHANNEL`] until `cancel`, handing each change to `changes`.
/// A lost connection is made again (with a growing pause while the server
/// is away), and each new connection reports [`Change::All`].
pub async fn listen(
    url: String,
    cancel: CancellationToken,
    changes: tokio::sync::mpsc::Sender<Change>,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        let listener = tokio::select! {
            _ = cancel.cancelled() => return,
            l = connect(&url) => l,
        };
        match listener {
            Ok(mut listener) => {
                pause = Duration::from_millis(200);
                if changes.send(Change::All).await.is_err() {
                    return;
                }
                tracing::info!(channel = CHANNEL, "listening for other replicas' changes");
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return,
                        n = listener.try_recv() => n,
                    };
                    let change = match next {
                        Ok(Some(n)) => Change::from_payload(n.payload()),
                        // The connection dropped; the next call makes it
                        // again. What was sent meanwhile is lost.
                        Ok(None) => {
                            tracing::warn!("lost the notification connection; reconnecting");
                            Change::All
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for changes failed; reconnecting");
                            break;
                        }
                    };
                    if changes.send(change).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for other replicas' changes"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn connect(url: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
