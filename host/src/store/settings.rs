//! Admin settings: typed, with defaults and minimums, stored as key/value rows.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            auto_deploy_master_enabled: true,
            auto_deploy_poll_interval_seconds: 60,
            auto_deploy_image_watch_interval_seconds: 600,
            auto_deploy_poll_concurrency: 16,
            node_offline_after_seconds: 120,
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
const IMAGE_WATCH: &str = "auto_deploy_image_watch_interval_seconds";

/// (name, minimum, maximum) of each numeric setting.
const NUMBERS: [(&str, u64, u64); 4] = [
    (
        "auto_deploy_poll_interval_seconds",
        POLL_MIN_SECONDS,
        86_400,
    ),
    (IMAGE_WATCH, IMAGE_WATCH_MIN_SECONDS, 86_400),
    ("auto_deploy_poll_concurrency", 1, 256),
    ("node_offline_after_seconds", 5, 86_400),
];
const MASTER: &str = "auto_deploy_master_enabled";

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

    /// Builds settings from stored rows; a row that no longer parses (or an
    /// unknown one) falls back to the default rather than stopping the daemon.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> Settings {
        let mut s = Settings::default();
        for (key, value) in rows {
            match key.as_str() {
                MASTER => {
                    s.auto_deploy_master_enabled =
                        value.parse().unwrap_or(s.auto_deploy_master_enabled)
                }
                "auto_deploy_poll_interval_seconds" => {
                    parse_into(&mut s.auto_deploy_poll_interval_seconds, &value)
                }
                "auto_deploy_image_watch_interval_seconds" => {
                    parse_into(&mut s.auto_deploy_image_watch_interval_seconds, &value)
                }
                "auto_deploy_poll_concurrency" => {
                    parse_into(&mut s.auto_deploy_poll_concurrency, &value)
                }
                "node_offline_after_seconds" => {
                    parse_into(&mut s.node_offline_after_seconds, &value)
                }
                _ => {}
            }
        }
        s
    }
}

fn parse_into(slot: &mut u64, value: &str) {
    if let Ok(v) = value.parse() {
        *slot = v;
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
