//! The operator's configuration: the opaque `facts.config` string, read as JSON.
//!
//! ```json
//! {"windows": [{"name": "night freeze", "kind": "deny", "schedule": "0 22 * * *",
//!   "duration": "8h", "time_zone": "Europe/Berlin",
//!   "match_labels": {"env": "prod"}, "manual": false}]}
//! ```
//!
//! An empty string (or `{}`) has no windows. Anything that does not read
//! cleanly is an error naming the window and the field: a typo must never
//! quietly drop a freeze.

use std::collections::BTreeMap;

use chrono_tz::Tz;
use serde::Deserialize;
use thiserror::Error;

use crate::cron::{CronError, Schedule};
use crate::recurrence::Recurrence;

/// The longest window: ten years is far past any schedule's period and keeps
/// instant arithmetic far from overflow.
const MAX_DURATION_SECONDS: i64 = 10 * 366 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Allow,
    Deny,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The operator's name for it, or `window N` (1-based, in config order).
    pub name: String,
    pub kind: WindowKind,
    /// The schedule as written, for reasons.
    pub schedule_text: String,
    /// The duration as written, for reasons.
    pub duration_text: String,
    pub recurrence: Recurrence,
    /// Every listed label must be set on the project to this value; empty
    /// matches every project.
    pub match_labels: BTreeMap<String, String>,
    /// The window also applies to manual deploys (automatic ones always).
    pub manual: bool,
}

impl Window {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub windows: Vec<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("sync-windows config is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("sync-windows config, window {index} ({name:?}): {problem}")]
    Window {
        /// 1-based, in config order.
        index: usize,
        name: String,
        problem: WindowProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WindowProblem {
    #[error("schedule {text:?}: {error}")]
    Schedule { text: String, error: CronError },
    #[error("duration {0:?}: {1}")]
    Duration(String, DurationError),
    #[error("time_zone {0:?} is not an IANA time zone name (like \"Europe/Berlin\" or \"UTC\")")]
    TimeZone(String),
    #[error("match_labels has an empty key")]
    EmptyLabelKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error(
        "write it as a number and a unit, like \"8h\", \"30m\" or \"1h30m\" (units d, h, m, s)"
    )]
    Syntax,
    #[error("must be longer than zero")]
    Zero,
    #[error("is longer than ten years")]
    TooLong,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    windows: Vec<RawWindow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    name: Option<String>,
    kind: WindowKind,
    schedule: String,
    duration: String,
    #[serde(default = "utc")]
    time_zone: String,
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    manual: bool,
}

fn utc() -> String {
    "UTC".into()
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let windows = raw
            .windows
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let index = i + 1;
                let name = w
                    .name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| format!("window {index}"));
                window(w, name.clone()).map_err(|problem| ConfigError::Window {
                    index,
                    name,
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Config { windows })
    }
}

fn window(w: RawWindow, name: String) -> Result<Window, WindowProblem> {
    let schedule = Schedule::parse(&w.schedule).map_err(|error| WindowProblem::Schedule {
        text: w.schedule.clone(),
        error,
    })?;
    let duration_seconds =
        parse_duration(&w.duration).map_err(|e| WindowProblem::Duration(w.duration.clone(), e))?;
    let zone: Tz = w
        .time_zone
        .parse()
        .map_err(|_| WindowProblem::TimeZone(w.time_zone.clone()))?;
    if w.match_labels.keys().any(|k| k.is_empty()) {
        return Err(WindowProblem::EmptyLabelKey);
    }
    Ok(Window {
        name,
        kind: w.kind,
        schedule_text: w.schedule.split_whitespace().collect::<Vec<_>>().join(" "),
        duration_text: w.duration.trim().to_string(),
        recurrence: Recurrence {
            schedule,
            duration_seconds,
            zone,
        },
        match_labels: w.match_labels,
        manual: w.manual,
    })
}

/// `8h`, `30m`, `1h30m`, `90s`, `1d`: Go-style duration terms, summed.
pub fn parse_duration(text: &str) -> Result<i64, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Syntax);
        }
        let number: i64 = rest[..digits].parse().map_err(|_| DurationError::TooLong)?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b'd') => 86_400,
            Some(b'h') => 3_600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return Err(DurationError::Syntax),
        };
        total = number
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .filter(|t| *t <= MAX_DURATION_SECONDS)
            .ok_or(DurationError::TooLong)?;
        rest = &rest[digits + 1..];
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_no_windows() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse("  \n").unwrap(), Config::default());
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        assert_eq!(
            Config::parse(r#"{"windows":[]}"#).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_full_window_reads_with_defaults() {
        let c = Config::parse(
            r#"{"windows":[
                {"name":"night freeze","kind":"deny","schedule":"0  22 * * *","duration":"8h",
                 "time_zone":"Europe/Berlin","match_labels":{"env":"prod"},"manual":true},
                {"kind":"allow","schedule":"0 9 * * mon-fri","duration":"8h30m"}
            ]}"#,
        )
        .unwrap();
        let [freeze, hours] = &c.windows[..] else {
            panic!("two windows")
        };
        assert_eq!(freeze.name, "night freeze");
        assert_eq!(freeze.kind, WindowKind::Deny);
        assert_eq!(freeze.schedule_text, "0 22 * * *");
        assert_eq!(freeze.recurrence.duration_seconds, 8 * 3600);
        assert_eq!(freeze.recurrence.zone, chrono_tz::Europe::Berlin);
        assert!(freeze.manual);
        assert_eq!(hours.name, "window 2");
        assert_eq!(hours.kind, WindowKind::Allow);
        assert_eq!(hours.recurrence.zone, chrono_tz::UTC);
        assert_eq!(hours.recurrence.duration_seconds, 8 * 3600 + 30 * 60);
        assert!(hours.match_labels.is_empty());
        assert!(!hours.manual);
    }

    #[test]
    fn labels_match_when_all_listed_are_equal() {
        let c = Config::parse(
            r#"{"windows":[{"kind":"deny","schedule":"* * * * *","duration":"1m",
                "match_labels":{"env":"prod","team":"web"}}]}"#,
        )
        .unwrap();
        let w = &c.windows[0];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(w.matches(&labels(&[("env", "prod"), ("team", "web")])));
        assert!(w.matches(&labels(&[("env", "prod"), ("team", "web"), ("x", "y")])));
        assert!(!w.matches(&labels(&[("env", "prod")])));
        assert!(!w.matches(&labels(&[("env", "staging"), ("team", "web")])));
        assert!(!w.matches(&labels(&[("env", "Prod"), ("team", "web")])));
        assert!(!w.matches(&labels(&[])));
        let every = Config::parse(
            r#"{"windows":[{"kind":"deny","schedule":"* * * * *","duration":"1m"}]}"#,
        )
        .unwrap();
        assert!(every.windows[0].matches(&labels(&[])));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8h"), Ok(8 * 3600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration(" 2d "), Ok(2 * 86_400));
        assert_eq!(parse_duration("0h"), Err(DurationError::Zero));
        assert_eq!(parse_duration("8"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("h"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("8 h"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("-1h"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("1.5h"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("1w"), Err(DurationError::Syntax));
        assert_eq!(parse_duration(""), Err(DurationError::Syntax));
        assert_eq!(parse_duration("4000d"), Err(DurationError::TooLong));
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn errors_name_the_window_and_the_problem() {
        let err = |json: &str| Config::parse(json).unwrap_err().to_string();
        assert_eq!(
            err(
                r#"{"windows":[{"kind":"allow","schedule":"* * * * *","duration":"1h"},
                {"name":"freeze","kind":"deny","schedule":"0 25 * * *","duration":"8h"}]}"#
            ),
            "sync-windows config, window 2 (\"freeze\"): schedule \"0 25 * * *\": \
             hour: 25 is out of range 0-23"
        );
        assert_eq!(
            err(r#"{"windows":[{"kind":"deny","schedule":"0 22 * * *","duration":"8 hours"}]}"#),
            "sync-windows config, window 1 (\"window 1\"): duration \"8 hours\": write it as a \
             number and a unit, like \"8h\", \"30m\" or \"1h30m\" (units d, h, m, s)"
        );
        assert_eq!(
            err(
                r#"{"windows":[{"kind":"deny","schedule":"0 22 * * *","duration":"8h",
                "time_zone":"Mars/Olympus"}]}"#
            ),
            "sync-windows config, window 1 (\"window 1\"): time_zone \"Mars/Olympus\" is not \
             an IANA time zone name (like \"Europe/Berlin\" or \"UTC\")"
        );
        assert_eq!(
            err(
                r#"{"windows":[{"kind":"deny","schedule":"0 22 * * *","duration":"8h",
                "match_labels":{"":"x"}}]}"#
            ),
            "sync-windows config, window 1 (\"window 1\"): match_labels has an empty key"
        );
        let e = err(r#"{"windows":[{"kind":"block","schedule":"0 22 * * *","duration":"8h"}]}"#);
        assert!(
            e.starts_with("sync-windows config is not valid JSON of the expected shape: ")
                && e.contains("unknown variant `block`"),
            "{e}"
        );
        let e = err(
            r#"{"windows":[{"kind":"deny","schedule":"0 22 * * *","duration":"8h","timezone":"UTC"}]}"#,
        );
        assert!(e.contains("unknown field `timezone`"), "{e}");
        let e = err(r#"{"window":[]}"#);
        assert!(e.contains("unknown field `window`"), "{e}");
        let e = err(r#"{"windows":[{"kind":"deny","duration":"8h"}]}"#);
        assert!(e.contains("missing field `schedule`"), "{e}");
        let e = err("windows: []");
        assert!(
            e.starts_with("sync-windows config is not valid JSON"),
            "{e}"
        );
    }
}
