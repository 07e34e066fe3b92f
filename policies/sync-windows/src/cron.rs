//! Five-field cron schedules (minute, hour, day of month, month, day of week),
//! evaluated on local wall-clock minutes. Time zones are `zone`'s business.
//!
//! Each field takes `*`, numbers, names (`jan`..`dec`, `sun`..`sat`), lists
//! (`1,15`), ranges (`9-17`), and steps (`*/15`, `0-30/10`, `5/20`). Day of
//! week 0 and 7 are both Sunday. As in Argo CD's (and Vixie) cron, when both
//! day fields are restricted a day matches if either does; when one is `*`,
//! the other alone decides.

use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use thiserror::Error;

/// How far `next_from` and `prev_from` look: nine years covers the rarest
/// schedule that fires at all (29 February on a given weekday is not one: with
/// both day fields restricted either matches; 29 February alone fires every
/// four years, or eight across 2100).
const SEARCH_DAYS: i64 = 366 * 9;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CronError {
    #[error("needs 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("{field}: empty list element")]
    Empty { field: Field },
    #[error("{field}: {value:?} is not a number{names}")]
    NotANumber {
        field: Field,
        value: String,
        names: &'static str,
    },
    #[error("{field}: {value} is out of range {min}-{max}")]
    OutOfRange {
        field: Field,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field}: range {from}-{to} runs backwards")]
    Backwards { field: Field, from: u32, to: u32 },
    #[error("{field}: step {step:?} must be a whole number of at least 1")]
    BadStep { field: Field, step: String },
    #[error("it never fires: no month in it has any of its days of the month")]
    NeverFires,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
    ];

    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            // 7 is read as Sunday (0) after parsing.
            Field::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            Field::DayOfWeek => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    fn first_name_value(self) -> u32 {
        match self {
            Field::Month => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day of month",
            Field::Month => "month",
            Field::DayOfWeek => "day of week",
        })
    }
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field was `*` (or `?`): the weekday alone decides.
    any_day: bool,
    /// The day-of-week field was `*` (or `?`): the day of month alone decides.
    any_weekday: bool,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount(fields.len()));
        }
        let mut bits = [0u64; 5];
        for ((field, text), slot) in Field::ALL.into_iter().zip(&fields).zip(&mut bits) {
            *slot = parse_field(field, text)?;
        }
        let mut weekdays = bits[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        let schedule = Schedule {
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays: weekdays as u8,
            any_day: is_any(fields[2]),
            any_weekday: is_any(fields[4]),
        };
        // Only a day-of-month restriction with any weekday can be impossible
        // (`0 0 30 2 *`); a restricted weekday always comes round.
        if schedule.any_weekday && !schedule.any_day {
            let possible = (1..=12u32).any(|month| {
                schedule.months & (1 << month) != 0
                    && (1..=max_days(month)).any(|day| schedule.days & (1 << day) != 0)
            });
            if !possible {
                return Err(CronError::NeverFires);
            }
        }
        Ok(schedule)
    }

    fn date_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.any_day || self.any_weekday {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first minute of the schedule at or after `from` (a partial minute
    /// counts from the next whole one).
    pub fn next_from(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut start = from.with_second(0)?.with_nanosecond(0)?;
        if start < from {
            start = start.checked_add_signed(Duration::minutes(1))?;
        }
        let mut date = start.date();
        let (mut hour, mut minute) = (start.hour(), start.minute());
        for _ in 0..SEARCH_DAYS {
            if self.date_matches(date) {
                for h in hour..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let from_minute = if h == hour { minute } else { 0 };
                    if let Some(m) = (from_minute..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.and_time(NaiveTime::from_hms_opt(h, m, 0)?));
                    }
                }
            }
            date = date.succ_opt()?;
            (hour, minute) = (0, 0);
        }
        None
    }

    /// The last minute of the schedule at or before `at`.
    pub fn prev_from(&self, at: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = at.date();
        let (mut hour, mut minute) = (at.hour(), at.minute());
        for _ in 0..SEARCH_DAYS {
            if self.date_matches(date) {
                for h in (0..=hour).rev() {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let to_minute = if h == hour { minute } else { 59 };
                    if let Some(m) = (0..=to_minute).rev().find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.and_time(NaiveTime::from_hms_opt(h, m, 0)?));
                    }
                }
            }
            date = date.pred_opt()?;
            (hour, minute) = (23, 59);
        }
        None
    }
}

fn is_any(field: &str) -> bool {
    field == "*" || field == "?"
}

/// Days a month can have; February counts its leap day.
fn max_days(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn parse_field(field: Field, text: &str) -> Result<u64, CronError> {
    let (min, max) = field.bounds();
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(CronError::Empty { field });
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let n = step
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| CronError::BadStep {
                        field,
                        step: step.into(),
                    })?;
                (range, Some(n))
            }
            None => (part, None),
        };
        let (from, to) = if is_any(range) {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (from, to) = (value(field, a)?, value(field, b)?);
            if from > to {
                return Err(CronError::Backwards { field, from, to });
            }
            (from, to)
        } else {
            let from = value(field, range)?;
            // `5/20` runs from 5 to the end of the field, as in Vixie cron.
            (from, if step.is_some() { max } else { from })
        };
        // A `*` day of week means 0-6: 7 is only an alias for Sunday.
        let to = if field == Field::DayOfWeek && is_any(range) {
            6
        } else {
            to
        };
        for v in (from..=to).step_by(step.unwrap_or(1) as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(field: Field, text: &str) -> Result<u32, CronError> {
    let (min, max) = field.bounds();
    let lower = text.to_ascii_lowercase();
    let v = if let Some(i) = field.names().iter().position(|n| *n == lower) {
        i as u32 + field.first_name_value()
    } else {
        text.parse::<u32>().map_err(|_| CronError::NotANumber {
            field,
            value: text.into(),
            names: match field {
                Field::Month => " or a month name (jan..dec)",
                Field::DayOfWeek => " or a day name (sun..sat)",
                _ => "",
            },
        })?
    };
    if v < min || v > max {
        return Err(CronError::OutOfRange {
            field,
            value: v,
            min,
            max,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn next(schedule: &str, from: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .next_from(at(from))
            .unwrap()
            .format("%Y-%m-%d %H:%M %a")
            .to_string()
    }

    fn prev(schedule: &str, from: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .prev_from(at(from))
            .unwrap()
            .format("%Y-%m-%d %H:%M %a")
            .to_string()
    }

    #[test]
    fn every_minute_is_inclusive_and_rounds_partial_minutes() {
        assert_eq!(
            next("* * * * *", "2026-11-26 10:00:00"),
            "2026-11-26 10:00 Thu"
        );
        assert_eq!(
            next("* * * * *", "2026-11-26 10:00:01"),
            "2026-11-26 10:01 Thu"
        );
        assert_eq!(
            prev("* * * * *", "2026-11-26 10:00:59"),
            "2026-11-26 10:00 Thu"
        );
    }

    #[test]
    fn daily_schedule_rolls_over_days_months_and_years() {
        assert_eq!(
            next("0 22 * * *", "2026-11-26 22:00:30"),
            "2026-11-27 22:00 Fri"
        );
        assert_eq!(
            next("0 22 * * *", "2026-12-31 23:00:00"),
            "2027-01-01 22:00 Fri"
        );
        assert_eq!(
            prev("0 22 * * *", "2026-11-26 21:59:59"),
            "2026-11-25 22:00 Wed"
        );
        assert_eq!(
            prev("0 22 * * *", "2027-01-01 00:00:00"),
            "2026-12-31 22:00 Thu"
        );
    }

    #[test]
    fn lists_ranges_and_steps() {
        assert_eq!(
            next("*/15 9-17 * * *", "2026-11-26 09:16:00"),
            "2026-11-26 09:30 Thu"
        );
        assert_eq!(
            next("*/15 9-17 * * *", "2026-11-26 17:46:00"),
            "2026-11-27 09:00 Fri"
        );
        assert_eq!(
            next("0-30/10 8,20 * * *", "2026-11-26 08:31:00"),
            "2026-11-26 20:00 Thu"
        );
        // `5/20` means 5, 25, 45.
        assert_eq!(
            next("5/20 * * * *", "2026-11-26 10:26:00"),
            "2026-11-26 10:45 Thu"
        );
        assert_eq!(
            prev("5/20 * * * *", "2026-11-26 10:04:00"),
            "2026-11-26 09:45 Thu"
        );
    }

    #[test]
    fn weekdays_and_month_names() {
        // 2026-11-26 is a Thursday.
        assert_eq!(
            next("0 9 * * mon-fri", "2026-11-27 10:00:00"),
            "2026-11-30 09:00 Mon"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-11-26 00:00:00"),
            "2026-11-29 00:00 Sun"
        );
        assert_eq!(
            next("0 0 * * SUN", "2026-11-26 00:00:00"),
            "2026-11-29 00:00 Sun"
        );
        assert_eq!(
            next("0 0 1 Jan,jul *", "2026-11-26 00:00:00"),
            "2027-01-01 00:00 Fri"
        );
        assert_eq!(
            prev("0 0 * * sat", "2026-11-26 00:00:00"),
            "2026-11-21 00:00 Sat"
        );
    }

    #[test]
    fn day_fields_combine_like_cron() {
        // Both restricted: the 1st of the month OR any Monday.
        assert_eq!(
            next("0 0 1 * mon", "2026-11-26 00:00:00"),
            "2026-11-30 00:00 Mon"
        );
        assert_eq!(
            next("0 0 1 * mon", "2026-11-30 00:00:01"),
            "2026-12-01 00:00 Tue"
        );
        // Weekday `*`: the day of month alone.
        assert_eq!(
            next("0 0 13 * *", "2026-11-26 00:00:00"),
            "2026-12-13 00:00 Sun"
        );
        // A stepped day of week is a restriction, not `*`.
        assert_eq!(
            next("0 0 13 * */2", "2026-11-26 00:00:00"),
            "2026-11-26 00:00 Thu"
        );
    }

    #[test]
    fn rare_schedules_are_found_years_away() {
        assert_eq!(
            next("0 0 29 2 *", "2026-11-26 00:00:00"),
            "2028-02-29 00:00 Tue"
        );
        assert_eq!(
            prev("0 0 29 2 *", "2026-11-26 00:00:00"),
            "2024-02-29 00:00 Thu"
        );
        // 2100 is not a leap year: eight years between.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01 00:00:00"),
            "2104-02-29 00:00 Fri"
        );
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let err = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("0 22 * *"),
            "needs 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert_eq!(err("0 24 * * *"), "hour: 24 is out of range 0-23");
        assert_eq!(err("60 * * * *"), "minute: 60 is out of range 0-59");
        assert_eq!(err("* * 0 * *"), "day of month: 0 is out of range 1-31");
        assert_eq!(err("* * * 13 *"), "month: 13 is out of range 1-12");
        assert_eq!(err("* * * * 8"), "day of week: 8 is out of range 0-7");
        assert_eq!(err("* 17-9 * * *"), "hour: range 17-9 runs backwards");
        assert_eq!(
            err("*/0 * * * *"),
            "minute: step \"0\" must be a whole number of at least 1"
        );
        assert_eq!(
            err("*/x * * * *"),
            "minute: step \"x\" must be a whole number of at least 1"
        );
        assert_eq!(err("1,,2 * * * *"), "minute: empty list element");
        assert_eq!(err("x * * * *"), "minute: \"x\" is not a number");
        assert_eq!(
            err("* * * * funday"),
            "day of week: \"funday\" is not a number or a day name (sun..sat)"
        );
        assert_eq!(
            err("0 0 30 2 *"),
            "it never fires: no month in it has any of its days of the month"
        );
        assert_eq!(
            err("@daily"),
            "needs 5 fields (minute hour day-of-month month day-of-week), found 1"
        );
    }

    #[test]
    fn search_stops_at_the_end_of_time_without_panicking() {
        let s = Schedule::parse("0 1 * * *").unwrap();
        assert_eq!(s.next_from(NaiveDateTime::MAX), None);
        assert_eq!(s.prev_from(NaiveDateTime::MIN), None);
    }
}
