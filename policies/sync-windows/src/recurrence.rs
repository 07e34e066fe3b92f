//! A window's recurrence: a cron schedule read on the wall clock of a named
//! time zone, each start opening the window for a fixed elapsed duration.
//!
//! Daylight saving time: a start that falls in the hour the clocks skip opens
//! the window when the skip ends (02:30 on the spring-forward night opens at
//! 03:00 new time); a start that falls in the hour the clocks repeat opens it
//! once, the first time. The duration is elapsed time, as in Argo CD: `0 22 *
//! * *` for 8h closes at 05:00 on the night the clocks go back.

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::cron::Schedule;

/// The longest stretch of wall-clock time a zone repeats when its clocks go
/// back; every transition in the database is an hour or two.
const MAX_REPEAT_SECONDS: i64 = 3 * 3600;
/// How many occurrences that overlap one another are followed to find when
/// a window really closes.
const MAX_CHAINED: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    pub schedule: Schedule,
    pub duration_seconds: i64,
    pub zone: Tz,
}

/// A window that is open at some instant, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// The start of the occurrence open now.
    pub since: i64,
    /// When it closes, following later occurrences that start before it ends.
    pub until: i64,
    /// Occurrences overlap so far ahead that `until` is only a lower bound.
    pub until_at_least: bool,
}

impl Recurrence {
    /// The window's state at `now`: `Some` while one of its occurrences runs.
    /// `now` must be one `checked_instant` accepts.
    pub fn open_at(&self, now: i64) -> Option<Open> {
        let since = self.last_start(now)?;
        let mut until = since.saturating_add(self.duration_seconds);
        if now >= until {
            return None;
        }
        let mut current = since;
        for _ in 0..MAX_CHAINED {
            match self.next_start(current) {
                Some(next) if next <= until => {
                    until = until.max(next.saturating_add(self.duration_seconds));
                    current = next;
                }
                _ => {
                    return Some(Open {
                        since,
                        until,
                        until_at_least: false,
                    });
                }
            }
        }
        Some(Open {
            since,
            until,
            until_at_least: true,
        })
    }

    /// The latest start at or before `t`.
    pub fn last_start(&self, t: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(t, 0)?.naive_utc();
        let offset_now = self.offset_seconds(utc);
        let local = utc.checked_add_signed(Duration::seconds(offset_now))?;
        // After the clocks went back, wall-clock times later than `local` may
        // already have happened once, under the earlier (larger) offset.
        let earlier = utc.checked_sub_signed(Duration::seconds(MAX_REPEAT_SECONDS))?;
        let repeated = (self.offset_seconds(earlier) - offset_now).max(0);
        let upper = local.checked_add_signed(Duration::seconds(repeated))?;
        let mut candidate = self.schedule.prev_from(upper)?;
        // Starts are monotonic in wall-clock time, and every wall-clock time
        // up to `local` started by `t`: this ends within `repeated` minutes.
        loop {
            let start = self.start_of(candidate)?;
            if start <= t {
                return Some(start);
            }
            candidate = self
                .schedule
                .prev_from(candidate.checked_sub_signed(Duration::minutes(1))?)?;
        }
    }

    /// The first start strictly after `t`.
    pub fn next_start(&self, t: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(t, 0)?.naive_utc();
        let local = utc.checked_add_signed(Duration::seconds(self.offset_seconds(utc)))?;
        let mut candidate = self.schedule.next_from(local)?;
        // Wall-clock times before `local` all started by `t`; those after it
        // did too only if the clocks went back, at most a few hours' worth.
        for _ in 0..=(MAX_REPEAT_SECONDS / 60) {
            let start = self.start_of(candidate)?;
            if start > t {
                return Some(start);
            }
            candidate = self
                .schedule
                .next_from(candidate.checked_add_signed(Duration::minutes(1))?)?;
        }
        None
    }

    /// The instant a wall-clock minute of the schedule starts the window.
    fn start_of(&self, local: NaiveDateTime) -> Option<i64> {
        if let Some(t) = self.zone.from_local_datetime(&local).earliest() {
            return Some(t.timestamp());
        }
        // Skipped by the clocks going forward: open when the skip ends, at
        // the first wall-clock minute that exists (gaps last at most a day).
        let mut minute = local;
        for _ in 0..(26 * 60) {
            minute = minute.checked_add_signed(Duration::minutes(1))?;
            if let Some(t) = self.zone.from_local_datetime(&minute).earliest() {
                return Some(t.timestamp());
            }
        }
        None
    }

    fn offset_seconds(&self, utc: NaiveDateTime) -> i64 {
        i64::from(
            self.zone
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        )
    }

    /// An instant on this window's wall clock, for reasons: `2026-11-27 06:00 CET`.
    pub fn describe(&self, t: i64) -> String {
        match DateTime::<Utc>::from_timestamp(t, 0) {
            Some(utc) => utc
                .with_timezone(&self.zone)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
            None => format!("{t} (Unix seconds)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp()
    }

    fn rec(schedule: &str, hours: i64, zone: &str) -> Recurrence {
        Recurrence {
            schedule: Schedule::parse(schedule).unwrap(),
            duration_seconds: hours * 3600,
            zone: zone.parse().unwrap(),
        }
    }

    fn show(t: Option<i64>) -> String {
        let t = t.expect("an instant");
        DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M UTC")
            .to_string()
    }

    #[test]
    fn open_from_start_until_duration_elapsed() {
        // 22:00 in Berlin in November is 21:00 UTC.
        let r = rec("0 22 * * *", 8, "Europe/Berlin");
        assert_eq!(r.open_at(utc("2026-11-26 20:59")), None);
        let open = r
            .open_at(utc("2026-11-26 21:00"))
            .expect("open at its start");
        assert_eq!(show(Some(open.since)), "2026-11-26 21:00 UTC");
        assert_eq!(show(Some(open.until)), "2026-11-27 05:00 UTC");
        assert!(r.open_at(utc("2026-11-27 04:59")).is_some());
        assert_eq!(
            r.open_at(utc("2026-11-27 05:00")),
            None,
            "closes at its end"
        );
        assert_eq!(r.describe(open.until), "2026-11-27 06:00 CET");
    }

    #[test]
    fn the_same_schedule_in_utc_is_an_hour_later() {
        let r = rec("0 22 * * *", 8, "UTC");
        assert_eq!(r.open_at(utc("2026-11-26 21:30")), None);
        assert!(r.open_at(utc("2026-11-26 22:30")).is_some());
        assert_eq!(r.describe(utc("2026-11-26 22:30")), "2026-11-26 22:30 UTC");
    }

    #[test]
    fn summer_time_moves_the_utc_start() {
        // CEST is UTC+2.
        let r = rec("0 22 * * *", 8, "Europe/Berlin");
        assert_eq!(
            show(r.last_start(utc("2026-07-01 12:00"))),
            "2026-06-30 20:00 UTC"
        );
        assert_eq!(
            show(r.next_start(utc("2026-07-01 12:00"))),
            "2026-07-01 20:00 UTC"
        );
    }

    #[test]
    fn a_start_the_clocks_skip_opens_when_the_skip_ends() {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
        let r = rec("30 2 * * *", 1, "Europe/Berlin");
        assert_eq!(
            show(r.next_start(utc("2026-03-28 23:00"))),
            "2026-03-29 01:00 UTC"
        );
        let open = r
            .open_at(utc("2026-03-29 01:30"))
            .expect("open after the skip");
        assert_eq!(show(Some(open.since)), "2026-03-29 01:00 UTC");
        assert_eq!(r.describe(open.since), "2026-03-29 03:00 CEST");
        assert_eq!(r.describe(open.until), "2026-03-29 04:00 CEST");
        assert_eq!(r.open_at(utc("2026-03-29 02:00")), None);
        // The next night is ordinary again: 02:30 CEST.
        assert_eq!(
            show(r.next_start(utc("2026-03-29 01:00"))),
            "2026-03-30 00:30 UTC"
        );
    }

    #[test]
    fn a_start_the_clocks_repeat_opens_once() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC, so
        // 02:30 happens at 00:30 UTC and again at 01:30 UTC.
        let r = rec("30 2 * * *", 0, "Europe/Berlin");
        let r = Recurrence {
            duration_seconds: 20 * 60,
            ..r
        };
        assert_eq!(
            show(r.next_start(utc("2026-10-24 12:00"))),
            "2026-10-25 00:30 UTC"
        );
        assert!(r.open_at(utc("2026-10-25 00:40")).is_some());
        assert_eq!(
            r.open_at(utc("2026-10-25 01:40")),
            None,
            "the repeated 02:30 does not open it again"
        );
        assert_eq!(
            show(r.last_start(utc("2026-10-25 01:40"))),
            "2026-10-25 00:30 UTC"
        );
        assert_eq!(
            show(r.next_start(utc("2026-10-25 00:30"))),
            "2026-10-26 01:30 UTC"
        );
    }

    #[test]
    fn every_start_inside_the_repeated_hour_is_found_in_order() {
        let r = rec("*/20 * * * *", 0, "Europe/Berlin");
        let mut t = utc("2026-10-25 00:00");
        let mut seen = Vec::new();
        while t < utc("2026-10-25 02:00") {
            t = r.next_start(t).unwrap();
            seen.push(show(Some(t)));
        }
        // 02:20 and 02:40 CEST start; the repeated 02:00-02:40 (CET) do not
        // start again; 03:00 CET is next: each wall-clock minute starts once.
        assert_eq!(
            seen,
            [
                "2026-10-25 00:20 UTC",
                "2026-10-25 00:40 UTC",
                "2026-10-25 02:00 UTC",
            ]
        );
    }

    #[test]
    fn elapsed_duration_across_the_night_the_clocks_go_back() {
        // 22:00 CEST Saturday (20:00 UTC) plus 8 hours is 04:00 UTC = 05:00 CET.
        let r = rec("0 22 * * *", 8, "Europe/Berlin");
        let open = r.open_at(utc("2026-10-25 03:00")).expect("open");
        assert_eq!(r.describe(open.until), "2026-10-25 05:00 CET");
    }

    #[test]
    fn overlapping_occurrences_extend_the_window() {
        // Every hour for two hours: open for good, which is reported as such.
        let r = rec("0 * * * *", 2, "UTC");
        let open = r.open_at(utc("2026-11-26 10:30")).expect("open");
        assert!(open.until_at_least);
        // Every day for 25 hours on weekdays only: closes after Friday's.
        let r = rec("0 0 * * mon-fri", 25, "UTC");
        // 2026-11-23 is a Monday.
        let open = r.open_at(utc("2026-11-24 12:00")).expect("open");
        assert!(!open.until_at_least);
        assert_eq!(show(Some(open.until)), "2026-11-28 01:00 UTC");
    }

    #[test]
    fn southern_and_half_hour_zones() {
        // Adelaide in November is UTC+10:30 (daylight time).
        let r = rec("0 9 * * *", 1, "Australia/Adelaide");
        assert_eq!(
            show(r.next_start(utc("2026-11-26 00:00"))),
            "2026-11-26 22:30 UTC"
        );
        assert_eq!(r.describe(utc("2026-11-26 22:30")), "2026-11-27 09:00 ACDT");
    }
}
