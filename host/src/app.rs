//! What every part of the daemon shares: the store, the active policy, the
//! secret key and the state of the background loops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::policy::{Policy, PolicyError, PolicyHandle, PolicyInfo};
use crate::secrets::{SecretKey, token_hash};
use crate::store::{Store, StoreError};

pub struct App {
    pub store: Arc<dyn Store>,
    /// Hosted repositories and accepted policies live here.
    pub data_dir: PathBuf,
    pub policy: PolicyHandle,
    pub key: SecretKey,
    /// Hash of `AUTODEPLOY_ADMIN_TOKEN`, when it is set.
    pub admin_env_hash: Option<String>,
    pub loops: LoopStates,
    /// Cap on one remote git lookup.
    pub git_timeout: Duration,
    /// Keeps a "tick now" from running beside the loop's own tick.
    pub git_poll_lock: tokio::sync::Mutex<()>,
    pub registry: crate::registry::Registry,
    /// `REGISTRY_ADDR`, probed at start.
    pub registry_addr: Option<String>,
    /// Why the image trigger is off, when the start-up probe failed.
    pub image_watch_off: Mutex<Option<String>>,
    pub image_watch_lock: tokio::sync::Mutex<()>,
    /// Bumped on every settings change, so a loop waiting for its next tick
    /// re-reads its interval and the master switch at once.
    pub settings_changed: tokio::sync::watch::Sender<()>,
    /// The lowest image watch interval accepted: 60 s, unless the test-only
    /// `AUTODEPLOY_TEST_ONLY_MIN_IMAGE_WATCH_INTERVAL_SECONDS` lowers it.
    pub image_watch_min_seconds: u64,
}

impl App {
    /// Runs one policy decision off the async threads; returns it with the
    /// policy that made it.
    pub async fn decide<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Policy) -> Result<T, PolicyError> + Send + 'static,
    ) -> (Result<T, PolicyError>, PolicyInfo) {
        let policy = self.policy.current();
        let info = policy.info().clone();
        let result = tokio::task::spawn_blocking(move || f(&policy))
            .await
            .unwrap_or_else(|e| {
                Err(PolicyError::Trap {
                    call: "host",
                    message: format!("decision task failed: {e}"),
                })
            });
        (result, info)
    }

    pub async fn is_admin(&self, token: &str) -> Result<bool, StoreError> {
        let hash = token_hash(token);
        if self.admin_env_hash.as_deref() == Some(hash.as_str()) {
            return Ok(true);
        }
        self.store.admin_token_exists(&hash).await
    }
}

/// Each background loop's last tick, for `GET /api/status`.
#[derive(Default)]
pub struct LoopStates(Mutex<BTreeMap<&'static str, LoopState>>);

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopState {
    pub state: String,
    pub last_tick_at: Option<i64>,
    pub last_error: Option<String>,
    /// Ticks the loop ran on its own (ticks asked for through the API not
    /// counted).
    pub ticks: u64,
    /// When the next tick is due (Unix seconds); `None` while paused.
    pub next_tick_at: Option<i64>,
}

impl LoopStates {
    pub fn set(&self, name: &'static str, state: &str, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = state.to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
    }

    /// A tick the loop ran on its own has ended.
    pub fn ticked(&self, name: &'static str, paused: bool, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = if paused { "paused" } else { "running" }.to_string();
        entry.last_tick_at = Some(crate::store::now());
        entry.last_error = error;
        entry.ticks += 1;
        entry.next_tick_at = None;
    }

    /// The loop waits: for its next tick at `next` (Unix seconds), or, with
    /// `None`, for the master switch to be turned on again.
    pub fn waiting(&self, name: &'static str, next: Option<i64>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = if next.is_some() { "running" } else { "paused" }.to_string();
        entry.next_tick_at = next;
    }

    /// A state that is not a tick (stopped, off); the last tick stays shown.
    pub fn state(&self, name: &'static str, state: &str, error: Option<String>) {
        let mut all = self.0.lock().expect("loop state lock");
        let entry = all.entry(name).or_default();
        entry.state = state.to_string();
        entry.next_tick_at = None;
        if error.is_some() {
            entry.last_error = error;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, LoopState> {
        self.0.lock().expect("loop state lock").clone()
    }
}
