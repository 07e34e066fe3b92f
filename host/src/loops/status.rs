//! A loop's state as `GET /api/status` shows it.

use std::sync::Mutex;

use serde::Serialize;

/// Where a loop is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Not started yet (the process is starting).
    #[default]
    Starting,
    /// Ticking, or waiting for its next tick.
    Running,
    /// Its start-up failed: it does not tick in this process.
    Off,
    /// Stopped by shutdown.
    Stopped,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopState {
    pub state: RunState,
    pub last_tick_at: Option<i64>,
    pub last_error: Option<String>,
    /// Ticks the loop ran on its own (ticks asked for through the API not
    /// counted).
    pub ticks: u64,
    /// When the next tick is due (Unix seconds); `None` while a tick runs
    /// or the loop is stopped.
    pub next_tick_at: Option<i64>,
    /// Projects the last tick looked at: those the policy's watch plan named
    /// for this loop. 0 when the policy watches nothing (e.g. with the
    /// master switch off).
    pub last_tick_watched: Option<usize>,
    /// For a loop one replica runs at a time: whether this one leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// When it started running (Unix seconds): `/readyz` measures a loop
    /// that has not ticked yet from here.
    #[serde(skip)]
    pub running_since: Option<i64>,
}

/// One loop's state, owned by the loop.
#[derive(Default)]
pub struct LoopStatus(Mutex<LoopState>);

impl LoopStatus {
    fn with<T>(&self, f: impl FnOnce(&mut LoopState) -> T) -> T {
        // Every change is one assignment: a panic never leaves it half made.
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A tick the loop ran on its own has ended, having looked at
    /// `watched` projects (`None`: it failed before it knew).
    pub fn ticked(&self, watched: Option<usize>, error: Option<String>) {
        self.with(|s| {
            s.state = RunState::Running;
            s.last_tick_at = Some(crate::store::now());
            s.last_error = error;
            s.ticks += 1;
            s.next_tick_at = None;
            s.last_tick_watched = watched;
        })
    }

    /// The loop waits for its next tick at `next` (Unix seconds).
    pub fn waiting(&self, next: i64) {
        self.with(|s| {
            s.state = RunState::Running;
            s.next_tick_at = Some(next);
        })
    }

    /// A state that is not a tick (stopped, off); the last tick stays shown.
    pub fn state(&self, state: RunState, error: Option<String>) {
        self.with(|s| {
            s.state = state;
            s.next_tick_at = None;
            if state == RunState::Running && s.running_since.is_none() {
                s.running_since = Some(crate::store::now());
            }
            if error.is_some() {
                s.last_error = error;
            }
        })
    }

    pub fn set_leader(&self, leads: bool) {
        self.with(|s| s.leader = Some(leads))
    }

    pub fn snapshot(&self) -> LoopState {
        self.with(|s| s.clone())
    }
}
