//! How the client prints answers: aligned tables for people (the default),
//! the API's own JSON or YAML for scripts (`-o json`, `-o yaml`).
//!
//! A table is rendered from the API's JSON, field by field, so a field a
//! newer daemon adds or an older one lacks shows as `-` rather than an error.

use std::collections::HashMap;

use serde_json::Value;

/// `-o FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people; commands without a table print JSON.
    #[default]
    Table,
    /// Exactly the API's answer, as JSON (one page or every page, as asked).
    Json,
    /// The same data as YAML.
    Yaml,
}

/// `v` as YAML, or as pretty JSON (also for `Format::Table`: the answers
/// that have no table, such as a created project, print as JSON).
pub fn data(v: &Value, format: Format) -> String {
    match format {
        Format::Yaml => serde_yaml::to_string(v).expect("JSON converts to YAML"),
        Format::Json | Format::Table => {
            let mut s = serde_json::to_string_pretty(v).expect("JSON prints");
            s.push('\n');
            s
        }
    }
}

/// Aligned columns: a header row, then one row per item; each column as
/// wide as its widest cell, two spaces apart, the last one unpadded.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len() - 1;
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i < last {
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A cell on one line: control characters (a multi-line error, a
/// terminal escape in a commit message) become spaces, and a long text is
/// cut with an ellipsis.
fn one_line(s: &str) -> String {
    const MAX: usize = 120;
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > MAX {
        let mut cut: String = flat.chars().take(MAX - 1).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How long ago `at` was, in its largest unit: `45s`, `12m`, `3h`, `20d`.
pub fn age(now: i64, at: i64) -> String {
    let s = (now - at).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `at` (seconds since the epoch) as `HH:MM:SSZ`, for the lines of a watch.
pub fn clock(at: i64) -> String {
    let s = at.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null => "-".into(),
        Value::String(_) => "-".into(),
        other => other.to_string(),
    }
}

fn ago(v: &Value, key: &str, now: i64) -> String {
    v[key].as_i64().map_or("-".into(), |at| age(now, at))
}

fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// `project list`: id, name, type, source, auto-deploy, the newest
/// deployment's status and how long ago it was made, the project's age.
pub fn projects(list: &[Value], now: i64) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TYPE",
        "SOURCE",
        "AUTO-DEPLOY",
        "LAST STATUS",
        "AGE",
    ]);
    for p in list {
        let id = p["id"].as_i64().unwrap_or_default();
        let last = match (p["last_status"].as_str(), p["last_at"].as_i64()) {
            (Some(status), Some(at)) => format!("{status} {} ago", age(now, at)),
            _ => "none".into(),
        };
        let auto = match p["auto_deploy_enabled"].as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        };
        t.row(vec![
            id.to_string(),
            text(p, "name"),
            text(p, "project_type"),
            text(p, "git_source"),
            auto.into(),
            last,
            ago(p, "created_at", now),
        ]);
    }
    t.render()
}

/// What a deployment deploys: the short commit, the digests' count, or
/// both; what it ran when it had no target of its own.
fn target(d: &Value) -> String {
    let commit = d["target_commit"]
        .as_str()
        .or_else(|| d["ran_commit"].as_str())
        .filter(|c| !c.is_empty())
        .map(|c| c.chars().take(12).collect::<String>());
    let digests = d["target_digests"]
        .as_object()
        .or_else(|| d["ran_digests"].as_object())
        .map_or(0, |m| m.len());
    let digests = match digests {
        0 => None,
        1 => Some("1 digest".to_string()),
        n => Some(format!("{n} digests")),
    };
    match (commit, digests) {
        (Some(c), Some(d)) => format!("{c} + {d}"),
        (Some(c), None) => c,
        (None, Some(d)) => d,
        (None, None) => "-".into(),
    }
}

/// `manual`, `auto-poll,auto-push`, with `×N` when it absorbed triggers.
fn sources(d: &Value) -> String {
    let mut s = match d["sources"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ => text(d, "source"),
    };
    if let Some(n) = d["trigger_count"].as_i64().filter(|&n| n > 1) {
        s.push_str(&format!(" ×{n}"));
    }
    s
}

fn status(d: &Value) -> String {
    let mut s = text(d, "status");
    if d["cancel_requested"].as_bool() == Some(true) && s == "running" {
        s.push_str(" (cancelling)");
    }
    s
}

/// The node's name, or `#ID` for one not (or no longer) listed.
pub fn node_name(d: &Value, nodes: &HashMap<i64, String>) -> String {
    match d["node_id"].as_i64() {
        Some(id) => nodes.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
        None => "-".into(),
    }
}

/// The reason, and the error after it when the deployment failed.
fn reason(d: &Value) -> String {
    let reason = text(d, "reason");
    match d["error"].as_str().filter(|e| !e.is_empty()) {
        Some(e) => format!("{reason}; error: {e}"),
        None => reason,
    }
}

/// `project deployments`: newest first, the long reason last.
pub fn deployments(list: &[Value], nodes: &HashMap<i64, String>, now: i64) -> String {
    let mut t = Table::new(&["ID", "STATUS", "SOURCE", "TARGET", "NODE", "AGE", "REASON"]);
    for d in list {
        t.row(vec![
            text(d, "id"),
            status(d),
            sources(d),
            target(d),
            node_name(d, nodes),
            ago(d, "created_at", now),
            reason(d),
        ]);
    }
    t.render()
}

/// One line of `project deployments --watch`: a deployment seen for the
/// first time (`was` None) or one whose status changed.
pub fn watch_line(d: &Value, was: Option<&str>, nodes: &HashMap<i64, String>, now: i64) -> String {
    let id = text(d, "id");
    let st = status(d);
    let mut line = format!("{} deployment {id} {st}", clock(now));
    match was {
        Some(was) => line.push_str(&format!(" (was {was})")),
        None => line.push_str(&format!(" ({}, {})", sources(d), target(d))),
    }
    if d["node_id"].is_i64() {
        line.push_str(&format!(" on {}", node_name(d, nodes)));
    }
    match (was, d["error"].as_str().filter(|e| !e.is_empty())) {
        (_, Some(e)) => line.push_str(&format!(": {e}")),
        (None, None) => line.push_str(&format!(": {}", text(d, "reason"))),
        (Some(_), None) => {}
    }
    one_line(&line)
}

/// `node list`.
pub fn nodes(list: &[Value], now: i64) -> String {
    let mut t = Table::new(&["ID", "NAME", "STATUS", "LAST SEEN", "LABELS", "AGE"]);
    for n in list {
        let state = match n["online"].as_bool() {
            Some(true) => "online",
            Some(false) => "offline",
            None => "-",
        };
        let seen = n["last_seen_at"]
            .as_i64()
            .map_or("never".into(), |at| format!("{} ago", age(now, at)));
        t.row(vec![
            text(n, "id"),
            text(n, "name"),
            state.into(),
            seen,
            labels(&n["labels"]),
            ago(n, "created_at", now),
        ]);
    }
    t.render()
}

/// `settings get`: each setting's value beside this version's default and
/// minimum (the image watch minimum as documented; a daemon started with
/// the test-only lower minimum accepts less).
pub fn settings(v: &Value) -> String {
    use crate::store::{IMAGE_WATCH_MIN_SECONDS, Settings, numeric_settings};
    let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
    let minimums: HashMap<&str, u64> = numeric_settings(IMAGE_WATCH_MIN_SECONDS)
        .into_iter()
        .map(|(name, min, _)| (name, min))
        .collect();
    let mut t = Table::new(&["NAME", "VALUE", "DEFAULT", "MINIMUM"]);
    for (name, value) in v.as_object().into_iter().flatten() {
        let default = match &defaults[name] {
            Value::Null => "-".into(),
            d => d.to_string(),
        };
        let min = minimums
            .get(name.as_str())
            .map_or("-".into(), u64::to_string);
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        t.row(vec![name.clone(), value, default, min]);
    }
    t.render()
}

/// `events`: newest first, with the project's name where it still exists.
pub fn events(list: &[Value], projects: &HashMap<i64, String>, now: i64) -> String {
    let mut t = Table::new(&["AGE", "PROJECT", "KIND", "MESSAGE"]);
    for e in list {
        let project = match e["project_id"].as_i64() {
            Some(id) => projects
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("#{id}")),
            None => "-".into(),
        };
        t.row(vec![
            ago(e, "at", now),
            project,
            text(e, "kind"),
            text(e, "message"),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let mut t = Table::new(&["ID", "NAME", "NOTE"]);
        t.row(vec!["1".into(), "a-much-longer-name".into(), "x".into()]);
        t.row(vec!["100".into(), "bé".into(), "two\nlines".into()]);
        assert_eq!(
            t.render(),
            "ID   NAME                NOTE\n\
             1    a-much-longer-name  x\n\
             100  bé                  two lines\n"
        );
    }

    #[test]
    fn ages_use_their_largest_unit() {
        assert_eq!(age(1000, 1000), "0s");
        assert_eq!(age(1000, 1100), "0s", "a clock behind the daemon's");
        assert_eq!(age(1000, 941), "59s");
        assert_eq!(age(10_000, 10_000 - 3599), "59m");
        assert_eq!(age(100_000, 100_000 - 7200), "2h");
        assert_eq!(age(1_000_000, 1_000_000 - 86_400 * 3), "3d");
        assert_eq!(clock(86_400 + 3600 * 13 + 60 * 5 + 9), "13:05:09Z");
    }

    #[test]
    fn a_deployment_row_shows_target_sources_node_and_error() {
        let d = json!({
            "id": 7, "status": "failed", "sources": ["auto-poll", "manual"], "trigger_count": 3,
            "target_commit": "0123456789abcdef0123", "target_digests": {"a": "x", "b": "y"},
            "node_id": 2, "created_at": 940, "reason": "main moved", "error": "exit 1\nboom",
        });
        let nodes = HashMap::from([(2, "edge".to_string())]);
        let out = deployments(&[d], &nodes, 1000);
        let row = out.lines().nth(1).unwrap();
        for want in [
            "7",
            "failed",
            "auto-poll,manual ×3",
            "0123456789ab + 2 digests",
            "edge",
            "1m",
            "main moved; error: exit 1 boom",
        ] {
            assert!(row.contains(want), "{want:?} in {row:?}");
        }
    }

    #[test]
    fn long_cells_are_cut() {
        let cell = one_line(&"x".repeat(500));
        assert_eq!(cell.chars().count(), 120);
        assert!(cell.ends_with('…'));
    }
}
