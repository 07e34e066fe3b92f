//! Keeps this replica in step with the others sharing its PostgreSQL
//! database: a settings change wakes the loops (they re-read intervals and
//! the master switch), a policy change loads the policy the database names.
//! With SQLite there is one process, which tells itself directly.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::store::notify::{self, Change};

/// Follows the changes other replicas make until `cancel`.
pub async fn follow(app: Arc<App>, database_url: String, cancel: CancellationToken) {
    if !notify::is_postgres(&database_url) {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let listener = tokio::spawn(notify::listen(database_url, cancel.clone(), tx));
    while let Some(change) = rx.recv().await {
        tracing::debug!(?change, "a replica changed shared state");
        if matches!(change, Change::Settings | Change::All) {
            app.settings_changed.send_replace(());
        }
        if matches!(change, Change::Policy | Change::All)
            && let Err(e) = app.policy.refresh().await
        {
            // The running policy stays; the next change or reconnect retries.
            tracing::error!(error = %e, "cannot load the policy another replica made active");
        }
    }
    let _ = listener.await;
}
