//! When a loop ticks: one interval after its previous tick began, the
//! interval read again whenever the settings change. So a new interval
//! applies from the next tick (not after a wait already begun with the old
//! one). The master switch does not stop the loop: it is one of the facts
//! each tick hands the policy, whose watch plan then says what (if
//! anything) to look at.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Loop;
use crate::app::App;

/// How long to wait before reading settings again after the store failed.
const RETRY: Duration = Duration::from_secs(5);

pub struct Schedule {
    changes: watch::Receiver<()>,
    /// When the previous tick began; `None`: the first tick is due at once.
    last: Option<Instant>,
}

impl Schedule {
    /// `first_at_once`: tick at once, rather than one interval after now.
    pub fn new(app: &App, first_at_once: bool) -> Schedule {
        Schedule {
            changes: app.settings_changed.subscribe(),
            last: (!first_at_once).then(Instant::now),
        }
    }

    /// Waits until the next tick of `l` is due; `false` when cancelled first.
    pub async fn next<L: Loop>(&mut self, app: &App, l: &L, cancel: &CancellationToken) -> bool {
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            // Marked seen before the read: a change made after it wakes us.
            self.changes.borrow_and_update();
            let settings = match app.store.settings().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(loop = l.name(), error = %e, "cannot read the settings");
                    l.status().state(
                        super::RunState::Running,
                        Some(format!("reading settings: {e}")),
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            let now = Instant::now();
            let due = self.last.map_or(now, |t| t + l.interval(app, &settings));
            if due <= now {
                self.last = Some(now);
                return true;
            }
            l.status().waiting(
                crate::store::now()
                    + due.saturating_duration_since(now).as_secs_f64().ceil() as i64,
            );
            tokio::select! {
                _ = cancel.cancelled() => return false,
                // The sender lives in `App`, which outlives this loop.
                _ = self.changes.changed() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
    }
}
