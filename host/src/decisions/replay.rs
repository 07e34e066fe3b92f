//! Replay: recorded decisions run again against a candidate policy, and
//! every decision whose answer would differ is reported. The same engine
//! serves `autodeploy policy replay` (which reads the daemon's database) and
//! `PUT /api/policy?dry_run=true` (which reads the running daemon's log).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use autodeploy_policy_contract::Call;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::outcome;
use crate::policy::Policy;
use crate::policy::cli::PolicyArgs;
use crate::store::{Decision, DecisionCall, DecisionQuery, SqlStore, Store, now};

/// Decisions `PUT /api/policy?dry_run=true` replays: the newest.
pub const DRY_RUN_DECISIONS: i64 = 1_000;
/// Decisions read per query.
const PAGE: i64 = 1_000;

/// One decision the candidate would make differently.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayDiff {
    /// The decision's id in the log.
    pub id: i64,
    pub at: i64,
    pub call: DecisionCall,
    pub project_id: Option<i64>,
    /// What the policy of the time answered.
    pub recorded: Value,
    /// What the candidate answers.
    pub candidate: Value,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Decisions the candidate answered (or failed to).
    pub replayed: u64,
    /// Of those, answered differently; each is in `diffs`.
    pub differ: u64,
    /// Of those, the candidate could not answer (trap, budget, deadline).
    pub failed: u64,
    /// Decisions that could not be replayed, by why.
    pub skipped: BTreeMap<String, u64>,
    /// Oldest first.
    pub diffs: Vec<ReplayDiff>,
}

/// The recorded call, or why it cannot be replayed. A call must read back
/// exactly as it was written: one with fields this version does not know,
/// or lacking some it needs (written by another version, or by hand), would
/// be replayed on made-up defaults and report differences that never were.
fn replayable(d: &Decision) -> Result<Call, String> {
    if d.call == DecisionCall::ParseCompose {
        // The log keeps a compose file's hash, not its text.
        return Err("parse-compose: the compose file is not kept".into());
    }
    let unreadable = || {
        format!(
            "{}: the recorded input is not a call this version reads",
            d.call
        )
    };
    let call = serde_json::from_value::<Call>(d.input.clone()).map_err(|_| unreadable())?;
    if serde_json::to_value(&call).ok().as_ref() != Some(&d.input) {
        return Err(unreadable());
    }
    Ok(call)
}

/// Runs `decisions` (in any order; replayed oldest first) against
/// `candidate`. `config`, when given, replaces `facts.config` in every call;
/// otherwise each call keeps the config it was recorded with.
pub fn replay(candidate: &Policy, config: Option<&str>, decisions: &[Decision]) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut ordered: Vec<&Decision> = decisions.iter().collect();
    ordered.sort_by_key(|d| d.id);
    for d in ordered {
        let mut call = match replayable(d) {
            Ok(call) => call,
            Err(why) => {
                *report.skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        if let (Some(cfg), Some(facts)) = (config, call.facts_mut()) {
            facts.config = cfg.to_string();
        }
        let result = super::run(candidate, &call);
        report.replayed += 1;
        report.failed += u64::from(result.is_err());
        let answer = outcome(&result);
        if answer != d.output {
            report.differ += 1;
            report.diffs.push(ReplayDiff {
                id: d.id,
                at: d.at,
                call: d.call,
                project_id: d.project_id,
                recorded: d.output.clone(),
                candidate: answer,
            });
        }
    }
    report
}

/// The newest `limit` decisions made at or after `since`, newest first.
pub async fn recorded(store: &dyn Store, since: Option<i64>, limit: i64) -> Result<Vec<Decision>> {
    let mut out = Vec::new();
    let mut before = None;
    while (out.len() as i64) < limit {
        let page = store
            .decisions(&DecisionQuery {
                before,
                since,
                limit: PAGE.min(limit - out.len() as i64),
                ..DecisionQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        let full = page.len() as i64 == PAGE;
        out.extend(page);
        if !full {
            break;
        }
    }
    Ok(out)
}

/// `autodeploy policy replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The candidate policy component.
    pub candidate: PathBuf,
    /// A config file for the candidate: replaces the config each decision
    /// was recorded with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only decisions made since then: a duration back from now (30m, 24h,
    /// 7d) or an RFC 3339 time (2026-11-26T08:00:00Z).
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub since: Option<String>,
    /// At most this many decisions, the newest.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub limit: i64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The daemon's data dir; its database is DATA_DIR/autodeploy.db.
    #[arg(long, env = "AUTODEPLOY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The daemon's database, when not in the data dir (sqlite://PATH).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Replays the daemon's recorded decisions against the candidate and prints
/// the report. Differences are the report, not a failure: only a replay
/// that cannot run is an error.
pub async fn cli(args: &ReplayArgs, policy: &PolicyArgs) -> Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let config = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read the config {}", path.display()))?,
        ),
        None => None,
    };
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let db = args.data_dir.join("autodeploy.db");
            if !db.exists() {
                bail!(
                    "no database at {}: give the daemon's data dir (--data-dir or AUTODEPLOY_DATA_DIR) or DATABASE_URL",
                    db.display()
                );
            }
            format!("sqlite://{}", db.display())
        }
    };
    let runtime = crate::policy::PolicyRuntime::new(policy.config())?;
    let candidate = runtime
        .load_file(&args.candidate)
        .with_context(|| format!("load the candidate {}", args.candidate.display()))?;
    let failures = crate::policy::selftest::self_test(&candidate);
    let store = SqlStore::connect_existing(&url)
        .await
        .context("open the daemon's database")?;
    let decisions = recorded(&store, since, args.limit)
        .await
        .context("read the decision log")?;
    let report =
        tokio::task::spawn_blocking(move || replay(&candidate, config.as_deref(), &decisions))
            .await
            .context("the replay stopped")?;
    if args.json {
        let out = serde_json::json!({ "self_test": { "passed": failures.is_empty(), "failures": failures }, "replay": report });
        println!("{out}");
        return Ok(());
    }
    if !failures.is_empty() {
        println!(
            "note: the candidate fails its self-test ({} cases), so the daemon would refuse it: {}",
            failures.len(),
            failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    print!("{}", render(&report));
    Ok(())
}

/// The report as text: each differing decision, then the summary.
pub fn render(report: &ReplayReport) -> String {
    let mut out = String::new();
    for d in &report.diffs {
        let project = d
            .project_id
            .map_or_else(|| "-".to_string(), |p| format!("project {p}"));
        out.push_str(&format!(
            "decision {} at {} {} {}\n  recorded:  {}\n  candidate: {}\n",
            d.id,
            rfc3339(d.at),
            d.call,
            project,
            d.recorded,
            d.candidate
        ));
    }
    let skipped: u64 = report.skipped.values().sum();
    out.push_str(&format!(
        "replayed {}, differ {}, failed {}, skipped {skipped}\n",
        report.replayed, report.differ, report.failed
    ));
    for (why, n) in &report.skipped {
        out.push_str(&format!("  skipped {n}: {why}\n"));
    }
    out
}

/// `--since`: a duration back from now (`90s`, `30m`, `24h`, `7d`) or an
/// RFC 3339 time; Unix seconds.
pub fn parse_since(s: &str) -> Result<i64> {
    let s = s.trim();
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let unit = s.chars().last().unwrap_or(' ');
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => 0,
    };
    let n = s[..s.len() - unit.len_utf8().min(s.len())]
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0 && scale > 0);
    match n.and_then(|n| n.checked_mul(scale)) {
        Some(back) => Ok(now() - back),
        None => bail!(
            "--since must be a duration such as 30m, 24h or 7d, or an RFC 3339 time such as 2026-11-26T08:00:00Z"
        ),
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; fractions are dropped.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tz = rest.get(1..)?;
            let (oh, om) = tz.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_offsets_apply() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        let t = parse_rfc3339("2026-11-26T08:30:05Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-26T08:30:05Z");
        assert_eq!(parse_rfc3339("2026-11-26T10:30:05.123+02:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").map(rfc3339).unwrap(),
            "2024-02-29T00:00:00Z"
        );
        for bad in [
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T08:30:05",
            "2026-11-26T08:30:05+2",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_takes_durations_and_times() {
        let n = now();
        let h = parse_since("2h").unwrap();
        assert!((n - 7_200 - 2..=n - 7_200 + 2).contains(&h));
        assert!(parse_since("7d").unwrap() <= n - 7 * 86_400 + 2);
        assert_eq!(parse_since("1970-01-02T00:00:00Z").unwrap(), 86_400);
        for bad in ["", "h", "-3h", "3y", "yesterday"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }
}
