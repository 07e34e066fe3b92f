//! Keeps this replica in step with the others sharing its PostgreSQL
//! database: a settings change wakes the loops (they re-read intervals and
//! the master switch), a policy change loads the policy the database names,
//! a deployment's change reaches the live views of this replica's browsers.
//! With SQLite there is one process, which tells itself directly.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::store::notify::{self, Change};

/// How often the active policy is read again without being told.
const RECHECK: Duration = Duration::from_secs(30);

/// Sets that recheck period, in seconds: a test raises it to show a change
/// arrives by notification, not by the recheck.
pub const TEST_ONLY_POLICY_RECHECK: &str = "AUTODEPLOY_TEST_ONLY_POLICY_RECHECK_SECONDS";

fn recheck_period() -> Duration {
    let Ok(value) = std::env::var(TEST_ONLY_POLICY_RECHECK) else {
        return RECHECK;
    };
    match value.trim().parse::<u64>() {
        Ok(s) if s >= 1 => {
            tracing::warn!(
                "{TEST_ONLY_POLICY_RECHECK} is set: the policy is read again every {s} s unless told"
            );
            Duration::from_secs(s)
        }
        _ => {
            tracing::warn!(
                "{TEST_ONLY_POLICY_RECHECK} must be a whole number of seconds, at least 1; ignored"
            );
            RECHECK
        }
    }
}

/// Follows the changes other replicas make until `cancel`.
pub async fn follow(app: Arc<App>, database_url: String, cancel: CancellationToken) {
    if !notify::is_postgres(&database_url) {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let listener = tokio::spawn(notify::listen(database_url, cancel.clone(), tx));
    // Also now and then, whatever was heard: a policy that could not be
    // loaded when told (the database was away) is loaded then.
    let mut recheck = tokio::time::interval(recheck_period());
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let change = tokio::select! {
            change = rx.recv() => match change {
                Some(change) => change,
                // The listener stopped: the daemon is shutting down.
                None => break,
            },
            _ = recheck.tick() => Change::Policy,
        };
        tracing::debug!(?change, "a replica changed shared state");
        if let Change::Deployment { origin, change } = change {
            app.store.relay_deployment_change(origin, change);
            continue;
        }
        if matches!(change, Change::Settings | Change::All) {
            app.settings_changed.send_replace(());
        }
        if matches!(change, Change::Policy | Change::All)
            && let Err(e) = app.policy.refresh().await
        {
            // The running policy stays; the next change or recheck retries.
            tracing::error!(error = %e, "cannot load the policy another replica made active");
        }
    }
    let _ = listener.await;
}
