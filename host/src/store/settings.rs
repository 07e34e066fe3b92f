//! Admin settings: typed, with defaults and minimums, stored as key/value rows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

pub(super) mod rows;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Pauses both triggers; every project keeps its toggle.
    pub auto_deploy_master_enabled: bool,
    pub auto_deploy_poll_interval_seconds: u64,
    pub auto_deploy_image_watch_interval_seconds: u64,
    /// External repositories polled at once.
    pub auto_deploy_poll_concurrency: u64,
    /// A node not seen for this long is offline.
    pub node_offline_after_seconds: u64,
    /// The decision log keeps at most this many decisions (the newest).
    pub decision_log_max_rows: u64,
    /// The decision log drops decisions older than this.
    pub decision_log_max_age_days: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            auto_deploy_master_enabled: true,
            auto_deploy_poll_interval_seconds: 60,
            auto_deploy_image_watch_interval_seconds: 600,
            auto_deploy_poll_concurrency: 16,
            node_offline_after_seconds: 120,
            decision_log_max_rows: 100_000,
            decision_log_max_age_days: 30,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("unknown setting {0:?}")]
    Unknown(String),
    #[error("{key} must be {expected}")]
    Type { key: String, expected: &'static str },
    #[error("{key} must be at least {min}, got {value}")]
    BelowMinimum { key: String, min: u64, value: u64 },
    #[error("{key} must be at most {max}, got {value}")]
    AboveMaximum { key: String, max: u64, value: u64 },
}

/// The shortest poll interval: the loop never ticks more often.
pub const POLL_MIN_SECONDS: u64 = 10;
/// The shortest image watch interval users may set (Docker Hub's anonymous
/// pull limit); only a test-only setting of the daemon lowers it.
pub const IMAGE_WATCH_MIN_SECONDS: u64 = 60;

/// The image watch minimum in force in this process: 60 s unless the daemon
/// lowered it for tests at start. Process-wide because stored values are
/// clamped to it when read, wherever they are read.
static IMAGE_WATCH_MIN: AtomicU64 = AtomicU64::new(IMAGE_WATCH_MIN_SECONDS);

/// Lowers the image watch minimum (the daemon's test-only setting).
pub fn set_image_watch_min(seconds: u64) {
    IMAGE_WATCH_MIN.store(seconds, Ordering::Relaxed);
}

pub fn image_watch_min() -> u64 {
    IMAGE_WATCH_MIN.load(Ordering::Relaxed)
}
const IMAGE_WATCH: &str = "auto_deploy_image_watch_interval_seconds";

/// The fewest decisions the log may be told to keep: enough to see what
/// the last ticks decided.
pub const DECISION_LOG_MIN_ROWS: u64 = 100;

/// (name, minimum, maximum) of each numeric setting.
const NUMBERS: [(&str, u64, u64); 6] = [
    (
        "auto_deploy_poll_interval_seconds",
        POLL_MIN_SECONDS,
        86_400,
    ),
    (IMAGE_WATCH, IMAGE_WATCH_MIN_SECONDS, 86_400),
    ("auto_deploy_poll_concurrency", 1, 256),
    ("node_offline_after_seconds", 5, 86_400),
    ("decision_log_max_rows", DECISION_LOG_MIN_ROWS, 100_000_000),
    ("decision_log_max_age_days", 1, 3_650),
];
const MASTER: &str = "auto_deploy_master_enabled";

/// The numeric settings' names with their (minimum, maximum), in the
/// order they are listed; the image watch minimum as `image_watch_min`.
pub fn numeric_settings(image_watch_min: u64) -> Vec<(&'static str, u64, u64)> {
    NUMBERS
        .iter()
        .map(|&(name, min, max)| {
            let min = if name == IMAGE_WATCH {
                image_watch_min
            } else {
                min
            };
            (name, min, max)
        })
        .collect()
}

impl Settings {
    /// Validates a JSON update from the API into stored string values.
    /// Nothing is applied unless every key is valid.
    pub fn validate_update(
        update: &serde_json::Map<String, Value>,
    ) -> Result<BTreeMap<String, String>, SettingError> {
        Self::validate_update_with(update, IMAGE_WATCH_MIN_SECONDS)
    }

    /// As `validate_update`, with `image_watch_min` as the image watch
    /// interval's minimum (lowered only by the daemon's test-only setting).
    pub fn validate_update_with(
        update: &serde_json::Map<String, Value>,
        image_watch_min: u64,
    ) -> Result<BTreeMap<String, String>, SettingError> {
        let mut out = BTreeMap::new();
        for (key, value) in update {
            if key == MASTER {
                let b = value.as_bool().ok_or_else(|| SettingError::Type {
                    key: key.clone(),
                    expected: "true or false",
                })?;
                out.insert(key.clone(), b.to_string());
                continue;
            }
            let Some(&(_, min, max)) = NUMBERS.iter().find(|(name, ..)| name == key) else {
                return Err(SettingError::Unknown(key.clone()));
            };
            let min = if key == IMAGE_WATCH {
                image_watch_min
            } else {
                min
            };
            let n = value.as_u64().ok_or_else(|| SettingError::Type {
                key: key.clone(),
                expected: "a whole number of seconds or count",
            })?;
            if n < min {
                return Err(SettingError::BelowMinimum {
                    key: key.clone(),
                    min,
                    value: n,
                });
            }
            if n > max {
                return Err(SettingError::AboveMaximum {
                    key: key.clone(),
                    max,
                    value: n,
                });
            }
            out.insert(key.clone(), n.to_string());
        }
        Ok(out)
    }

    /// Builds settings from stored rows. Values are clamped to their minimum
    /// and maximum here, whatever wrote them (an old version, an operator
    /// with sqlite3): a concurrency of 0 would stall every tick. A row that
    /// no longer parses (or an unknown one) falls back to the default rather
    /// than stopping the daemon.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> Settings {
        let mut s = Settings::default();
        for (key, value) in rows {
            let value = value.trim();
            if key == MASTER {
                s.auto_deploy_master_enabled =
                    value.parse().unwrap_or(s.auto_deploy_master_enabled);
                continue;
            }
            let Some(&(name, min, max)) = NUMBERS.iter().find(|(name, ..)| *name == key) else {
                continue;
            };
            let slot = match name {
                "auto_deploy_poll_interval_seconds" => &mut s.auto_deploy_poll_interval_seconds,
                "auto_deploy_image_watch_interval_seconds" => {
                    &mut s.auto_deploy_image_watch_interval_seconds
                }
                "auto_deploy_poll_concurrency" => &mut s.auto_deploy_poll_concurrency,
                "decision_log_max_rows" => &mut s.decision_log_max_rows,
                "decision_log_max_age_days" => &mut s.decision_log_max_age_days,
                _ => &mut s.node_offline_after_seconds,
            };
            let min = if name == "auto_deploy_image_watch_interval_seconds" {
                image_watch_min()
            } else {
                min
            };
            if let Some(v) = parse_number(value) {
                *slot = v.clamp(min, max);
            }
        }
        s
    }
}

/// A stored number; a negative one counts as below any minimum, so it is
/// clamped up rather than ignored.
fn parse_number(value: &str) -> Option<u64> {
    match value.parse::<i128>() {
        Ok(v) => Some(u64::try_from(v.max(0)).unwrap_or(u64::MAX)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(v: Value) -> Result<BTreeMap<String, String>, SettingError> {
        Settings::validate_update(v.as_object().unwrap())
    }

    #[test]
    fn minimums_types_and_unknown_keys_are_refused() {
        assert_eq!(
            update(json!({"auto_deploy_poll_interval_seconds": 9}))
                .unwrap_err()
                .to_string(),
            "auto_deploy_poll_interval_seconds must be at least 10, got 9"
        );
        assert!(
            update(json!({"auto_deploy_image_watch_interval_seconds": 59}))
                .unwrap_err()
                .to_string()
                .contains("at least 60")
        );
        assert!(matches!(
            update(json!({"auto_deploy_master_enabled": "yes"})),
            Err(SettingError::Type { .. })
        ));
        assert!(matches!(
            update(json!({"auto_deploy_poll_interval_seconds": -5})),
            Err(SettingError::Type { .. })
        ));
        assert!(matches!(
            update(json!({"poll": 10})),
            Err(SettingError::Unknown(_))
        ));
        let ok = update(
            json!({"auto_deploy_poll_interval_seconds": 10, "auto_deploy_master_enabled": false}),
        )
        .unwrap();
        let s = Settings::from_rows(ok);
        assert_eq!(
            (
                s.auto_deploy_poll_interval_seconds,
                s.auto_deploy_master_enabled
            ),
            (10, false)
        );
    }

    #[test]
    fn stored_values_are_clamped_when_read() {
        let rows = |pairs: &[(&str, &str)]| {
            Settings::from_rows(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let s = rows(&[
            ("auto_deploy_poll_concurrency", "0"),
            ("auto_deploy_poll_interval_seconds", "-3"),
            (
                "auto_deploy_image_watch_interval_seconds",
                "99999999999999999999999",
            ),
            ("node_offline_after_seconds", "1"),
            ("decision_log_max_rows", "3"),
            ("decision_log_max_age_days", "0"),
        ]);
        assert_eq!(s.auto_deploy_poll_concurrency, 1);
        assert_eq!(s.auto_deploy_poll_interval_seconds, 10);
        assert_eq!(s.auto_deploy_image_watch_interval_seconds, 86_400);
        assert_eq!(s.node_offline_after_seconds, 5);
        assert_eq!(s.decision_log_max_rows, DECISION_LOG_MIN_ROWS);
        assert_eq!(s.decision_log_max_age_days, 1);
        let s = rows(&[("auto_deploy_poll_concurrency", "many")]);
        assert_eq!(
            s.auto_deploy_poll_concurrency, 16,
            "unparsable: the default"
        );
    }

    #[test]
    fn a_lowered_image_watch_minimum_moves_only_that_minimum() {
        let with = |v: Value, min| Settings::validate_update_with(v.as_object().unwrap(), min);
        assert!(with(json!({"auto_deploy_image_watch_interval_seconds": 10}), 10).is_ok());
        assert_eq!(
            with(json!({"auto_deploy_image_watch_interval_seconds": 9}), 10)
                .unwrap_err()
                .to_string(),
            "auto_deploy_image_watch_interval_seconds must be at least 10, got 9"
        );
        assert!(
            with(json!({"auto_deploy_poll_interval_seconds": 9}), 1).is_err(),
            "the poll interval keeps its own minimum"
        );
        assert!(
            update(json!({"auto_deploy_image_watch_interval_seconds": 10})).is_err(),
            "without the test-only setting the minimum is 60"
        );
    }
}
