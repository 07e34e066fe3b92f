//! Whether the windows let a deploy of a project through now.
//!
//! The windows that apply are those whose labels the project carries; for a
//! manual deploy, only those among them marked `manual`. Of those, an open
//! deny window holds the deploy; otherwise, if any allow windows apply, one of
//! them must be open. Deny wins over allow.

use std::collections::BTreeMap;

use autodeploy_policy_contract::model::TriggerSource;

use crate::config::{Config, Window, WindowKind};
use crate::recurrence::Open;

/// The instants the policy reasons about: years 1970 to 9999, far inside what
/// the date arithmetic handles.
const LAST_INSTANT: i64 = 253_402_300_799;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// No window stands in the way. `note` says which allow window let it
    /// through, if one did.
    Pass { note: Option<String> },
    /// Held back; the reason names the window and when that changes.
    Held { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("facts.now_unix_seconds {0} is outside the years 1970 to 9999")]
pub struct TimeOutOfRange(pub i64);

pub fn gate(
    config: &Config,
    labels: &BTreeMap<String, String>,
    source: TriggerSource,
    now: i64,
) -> Result<Gate, TimeOutOfRange> {
    let applying: Vec<&Window> = config
        .windows
        .iter()
        .filter(|w| w.matches(labels) && (source.is_automatic() || w.manual))
        .collect();
    if applying.is_empty() {
        return Ok(Gate::Pass { note: None });
    }
    if !(0..=LAST_INSTANT).contains(&now) {
        return Err(TimeOutOfRange(now));
    }
    let open: Vec<(&Window, Open)> = applying
        .iter()
        .filter_map(|w| w.recurrence.open_at(now).map(|o| (*w, o)))
        .collect();

    let denying = open.iter().filter(|(w, _)| w.kind == WindowKind::Deny);
    // The deny window that stays open longest is the one to wait for.
    if let Some((w, o)) = denying.max_by_key(|(_, o)| (o.until_at_least, o.until)) {
        let until = if o.until_at_least { "at least " } else { "" };
        return Ok(Gate::Held {
            reason: format!(
                "held by deny window {:?} ({}) until {until}{}",
                w.name,
                describe(w),
                w.recurrence.describe(o.until)
            ),
        });
    }

    let allows: Vec<&Window> = applying
        .iter()
        .copied()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    if allows.is_empty() {
        return Ok(Gate::Pass { note: None });
    }
    let allowing = open.iter().filter(|(w, _)| w.kind == WindowKind::Allow);
    if let Some((w, o)) = allowing.max_by_key(|(_, o)| (o.until_at_least, o.until)) {
        return Ok(Gate::Pass {
            note: Some(format!(
                "inside allow window {:?} until {}{}",
                w.name,
                if o.until_at_least { "at least " } else { "" },
                w.recurrence.describe(o.until)
            )),
        });
    }
    let next = allows
        .iter()
        .filter_map(|w| w.recurrence.next_start(now).map(|t| (t, *w)))
        .min_by_key(|(t, _)| *t);
    let names: Vec<String> = allows.iter().map(|w| format!("{:?}", w.name)).collect();
    let when = match next {
        Some((t, w)) => format!(
            "; the next to open is {:?} at {}",
            w.name,
            w.recurrence.describe(t)
        ),
        None => "; none of them opens again".to_string(),
    };
    Ok(Gate::Held {
        reason: format!(
            "held: outside every allow window ({}){when}",
            names.join(", ")
        ),
    })
}

fn describe(w: &Window) -> String {
    format!(
        "{} for {}, {}",
        w.schedule_text,
        w.duration_text,
        w.recurrence.zone.name()
    )
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDateTime;

    use super::*;

    fn utc(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn prod() -> BTreeMap<String, String> {
        labels(&[("env", "prod")])
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    const NIGHT_FREEZE: &str = r#"{"windows":[{"name":"night freeze","kind":"deny",
        "schedule":"0 22 * * *","duration":"8h","time_zone":"Europe/Berlin",
        "match_labels":{"env":"prod"}}]}"#;

    #[test]
    fn no_windows_pass_everything() {
        let g = gate(&Config::default(), &prod(), TriggerSource::AutoPush, 0).unwrap();
        assert_eq!(g, Gate::Pass { note: None });
    }

    #[test]
    fn an_open_deny_window_holds_automatic_deploys_of_matching_projects() {
        let c = config(NIGHT_FREEZE);
        let night = utc("2026-11-26 23:00");
        for source in [
            TriggerSource::AutoPoll,
            TriggerSource::AutoPush,
            TriggerSource::AutoImage,
        ] {
            assert_eq!(
                gate(&c, &prod(), source, night).unwrap(),
                Gate::Held {
                    reason: "held by deny window \"night freeze\" (0 22 * * * for 8h, \
                             Europe/Berlin) until 2026-11-27 06:00 CET"
                        .into()
                }
            );
        }
        // Other projects, the daytime, and manual deploys pass.
        let staging = labels(&[("env", "staging")]);
        assert_eq!(
            gate(&c, &staging, TriggerSource::AutoPush, night).unwrap(),
            Gate::Pass { note: None }
        );
        assert_eq!(
            gate(
                &c,
                &prod(),
                TriggerSource::AutoPush,
                utc("2026-11-27 05:00")
            )
            .unwrap(),
            Gate::Pass { note: None }
        );
        assert_eq!(
            gate(&c, &prod(), TriggerSource::Manual, night).unwrap(),
            Gate::Pass { note: None }
        );
    }

    #[test]
    fn a_manual_deny_window_holds_manual_deploys_too() {
        let c =
            config(&NIGHT_FREEZE.replace(r#""match_labels""#, r#""manual":true,"match_labels""#));
        let g = gate(&c, &prod(), TriggerSource::Manual, utc("2026-11-26 23:00")).unwrap();
        assert!(matches!(g, Gate::Held { .. }), "{g:?}");
        let g = gate(&c, &prod(), TriggerSource::Manual, utc("2026-11-27 12:00")).unwrap();
        assert_eq!(g, Gate::Pass { note: None });
    }

    const BUSINESS_HOURS: &str = r#"{"windows":[
        {"name":"mornings","kind":"allow","schedule":"0 9 * * mon-fri","duration":"3h"},
        {"name":"afternoons","kind":"allow","schedule":"0 14 * * mon-fri","duration":"3h"},
        {"name":"lunch freeze","kind":"deny","schedule":"30 11 * * *","duration":"1h"}]}"#;

    #[test]
    fn allow_windows_let_automatic_deploys_through_only_while_one_is_open() {
        let c = config(BUSINESS_HOURS);
        let none = labels(&[]);
        // Thursday 10:00 UTC: inside "mornings".
        assert_eq!(
            gate(&c, &none, TriggerSource::AutoPoll, utc("2026-11-26 10:00")).unwrap(),
            Gate::Pass {
                note: Some("inside allow window \"mornings\" until 2026-11-26 12:00 UTC".into())
            }
        );
        // 13:00: between the two.
        assert_eq!(
            gate(&c, &none, TriggerSource::AutoPoll, utc("2026-11-26 13:00")).unwrap(),
            Gate::Held {
                reason: "held: outside every allow window (\"mornings\", \"afternoons\"); \
                         the next to open is \"afternoons\" at 2026-11-26 14:00 UTC"
                    .into()
            }
        );
        // Friday evening: the next opening is Monday morning.
        let g = gate(&c, &none, TriggerSource::AutoPoll, utc("2026-11-27 18:00")).unwrap();
        assert!(
            matches!(&g, Gate::Held { reason } if reason.ends_with("\"mornings\" at 2026-11-30 09:00 UTC")),
            "{g:?}"
        );
        // Allow windows without `manual` leave manual deploys alone.
        assert_eq!(
            gate(&c, &none, TriggerSource::Manual, utc("2026-11-27 18:00")).unwrap(),
            Gate::Pass { note: None }
        );
    }

    #[test]
    fn deny_wins_over_an_open_allow_window() {
        let c = config(BUSINESS_HOURS);
        let g = gate(
            &c,
            &labels(&[]),
            TriggerSource::AutoPoll,
            utc("2026-11-26 11:45"),
        )
        .unwrap();
        assert_eq!(
            g,
            Gate::Held {
                reason: "held by deny window \"lunch freeze\" (30 11 * * * for 1h, UTC) until \
                         2026-11-26 12:30 UTC"
                    .into()
            }
        );
    }

    #[test]
    fn allow_windows_for_other_labels_do_not_restrict_a_project() {
        let c = config(
            r#"{"windows":[{"kind":"allow","schedule":"0 9 * * *","duration":"1h",
                "match_labels":{"env":"prod"}}]}"#,
        );
        let t = utc("2026-11-26 13:00");
        assert!(matches!(
            gate(&c, &prod(), TriggerSource::AutoPush, t).unwrap(),
            Gate::Held { .. }
        ));
        assert_eq!(
            gate(&c, &labels(&[("env", "dev")]), TriggerSource::AutoPush, t).unwrap(),
            Gate::Pass { note: None }
        );
    }

    #[test]
    fn a_manual_allow_window_restricts_manual_deploys() {
        let c = config(
            r#"{"windows":[{"name":"change slot","kind":"allow","schedule":"0 9 * * *",
                "duration":"1h","manual":true}]}"#,
        );
        assert!(matches!(
            gate(&c, &prod(), TriggerSource::Manual, utc("2026-11-26 13:00")).unwrap(),
            Gate::Held { .. }
        ));
        assert!(matches!(
            gate(&c, &prod(), TriggerSource::Manual, utc("2026-11-26 09:30")).unwrap(),
            Gate::Pass { .. }
        ));
    }

    #[test]
    fn the_longest_open_deny_window_is_named() {
        let c = config(
            r#"{"windows":[
                {"name":"short","kind":"deny","schedule":"0 22 * * *","duration":"1h"},
                {"name":"long","kind":"deny","schedule":"0 21 * * *","duration":"4h"}]}"#,
        );
        let g = gate(
            &c,
            &prod(),
            TriggerSource::AutoPush,
            utc("2026-11-26 22:30"),
        )
        .unwrap();
        assert!(
            matches!(&g, Gate::Held { reason } if reason.starts_with("held by deny window \"long\"")
                && reason.ends_with("until 2026-11-27 01:00 UTC")),
            "{g:?}"
        );
    }

    #[test]
    fn a_time_out_of_range_is_an_error_only_when_a_window_applies() {
        let c = config(NIGHT_FREEZE);
        assert_eq!(
            gate(&c, &prod(), TriggerSource::AutoPush, -1),
            Err(TimeOutOfRange(-1))
        );
        assert_eq!(
            gate(&c, &prod(), TriggerSource::AutoPush, i64::MAX)
                .unwrap_err()
                .to_string(),
            format!(
                "facts.now_unix_seconds {} is outside the years 1970 to 9999",
                i64::MAX
            )
        );
        assert_eq!(
            gate(&c, &labels(&[]), TriggerSource::AutoPush, i64::MAX),
            Ok(Gate::Pass { note: None })
        );
        // The last second of 9999 works, and finds no start past it.
        assert!(gate(&c, &prod(), TriggerSource::AutoPush, LAST_INSTANT).is_ok());
    }
}
