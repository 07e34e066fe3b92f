//! Replicas tell each other what changed through PostgreSQL's
//! `LISTEN/NOTIFY`: a write that others must see (settings, the active
//! policy) sends a notification from its own transaction, so it goes out
//! exactly when the change commits. A deployment's change is told after it
//! committed, for the live views of browsers connected to other replicas.
//! On SQLite there is one process and nothing to send.

use std::time::Duration;

use sqlx::Executor;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::{DeployStatus, DeploymentChange, Result};

/// The channel every replica listens on.
pub const CHANNEL: &str = "autodeploy_changes";

/// What changed; the payload names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Settings,
    Policy,
    /// A deployment was queued or changed status on the replica `origin`
    /// (each store's random id, so a replica skips its own).
    Deployment {
        origin: u64,
        change: DeploymentChange,
    },
    /// The connection was (re)made: notifications may have been missed, so
    /// anything may have changed.
    All,
}

impl Change {
    fn from_payload(payload: &str) -> Change {
        match payload {
            "settings" => Change::Settings,
            "policy" => Change::Policy,
            p if p.starts_with(DEPLOYMENT_PREFIX) => {
                // A payload this version cannot read: live views refetch on
                // the next change they do read.
                parse_deployment(&p[DEPLOYMENT_PREFIX.len()..]).unwrap_or(Change::All)
            }
            // From a newer version: re-reading everything is always right.
            _ => Change::All,
        }
    }

    fn statement(self) -> Option<&'static str> {
        match self {
            Change::Settings => Some("NOTIFY autodeploy_changes, 'settings'"),
            Change::Policy => Some("NOTIFY autodeploy_changes, 'policy'"),
            Change::Deployment { .. } | Change::All => None,
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

const DEPLOYMENT_PREFIX: &str = "deployment:";

/// `deployment:ORIGIN:PROJECT:DEPLOYMENT:STATUS`, the payload of a
/// [`Change::Deployment`].
pub(super) fn deployment_payload(origin: u64, change: &DeploymentChange) -> String {
    format!(
        "{DEPLOYMENT_PREFIX}{origin}:{}:{}:{}",
        change.project_id, change.deployment_id, change.status
    )
}

fn parse_deployment(rest: &str) -> Option<Change> {
    let mut parts = rest.split(':');
    let origin = parts.next()?.parse().ok()?;
    let project_id = parts.next()?.parse().ok()?;
    let deployment_id = parts.next()?.parse().ok()?;
    let status: DeployStatus = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Change::Deployment {
        origin,
        change: DeploymentChange {
            project_id,
            deployment_id,
            status,
        },
    })
}

/// Sends each deployment change from `changes` to the other replicas, one
/// after another so they hear them in the order they were made. A failed
/// send is logged and dropped: a live view refetches on the next one.
pub(super) async fn tell_deployments(
    pool: sqlx::AnyPool,
    origin: u64,
    mut changes: tokio::sync::mpsc::Receiver<DeploymentChange>,
) {
    while let Some(change) = changes.recv().await {
        let payload = deployment_payload(origin, &change);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "cannot tell other replicas of a deployment change");
        }
    }
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
                            let error = super::db::redact(&e.to_string(), &url);
                            tracing::warn!(%error, "listening for changes failed; reconnecting");
                            break;
                        }
                    };
                    if changes.send(change).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // The driver may quote what it was given: never the password.
                let error = super::db::redact(&e.to_string(), &url);
                tracing::warn!(%error, "cannot listen for other replicas' changes");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_change_survives_its_payload() {
        let change = DeploymentChange {
            project_id: 7,
            deployment_id: 42,
            status: DeployStatus::RolledBack,
        };
        let payload = deployment_payload(u64::MAX, &change);
        assert_eq!(
            Change::from_payload(&payload),
            Change::Deployment {
                origin: u64::MAX,
                change
            }
        );
    }

    #[test]
    fn an_unreadable_deployment_payload_means_reload_everything() {
        for payload in [
            "deployment:",
            "deployment:1:2:3",
            "deployment:1:2:3:exploded",
            "deployment:1:2:3:queued:extra",
            "deployment:x:2:3:queued",
        ] {
            assert_eq!(Change::from_payload(payload), Change::All, "{payload}");
        }
    }
}
