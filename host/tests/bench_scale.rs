//! Benchmark, not a test: ignored unless asked for (`bench/scale.sh`).
//! `SCALE_PROJECTS` external projects (default 10,000) on `file://`
//! repositories (`SCALE_REPOS` distinct ones, default the same number up to
//! 10,000; project i uses repository i mod that), on SQLite, or on
//! PostgreSQL with `AUTODEPLOY_TEST_DATABASE=postgres`, against the real
//! `autodeploy serve`. It reports:
//! - the daemon's RSS idle (started, first tick done with the master switch
//!   off), after the ticks, and its peak (VmHWM);
//! - poll ticks where nothing moved (`POST /api/ticks/git-poll`'s
//!   `elapsed_ms`), after one tick that aligns every project;
//! - the first page of each list endpoint with `limit` (and the page after
//!   it, through the cursor), client-side wall time, median of 20.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autodeploy::store::{SqlStore, Store};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::bare_with_file;
use reqwest::Method;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// The daemon's memory (KiB) from /proc: (VmRSS, VmHWM).
fn memory(d: &Daemon) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time the daemon used so far (user + system, all threads): a figure
/// that depends less on what else runs on the machine than wall time.
fn cpu(d: &Daemon) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.child.id())).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 here).
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[11] + f[12]) * 1000 / hz)
}

/// Waits until the decision log's writer has caught up; its counters.
async fn decisions_written(d: &Daemon) -> Value {
    common::wait_until(
        "the decision log is written",
        Duration::from_secs(600),
        || async {
            let s = d.ok(Method::GET, "/api/status", None).await;
            s["decision_log"]["queued"].as_u64() == Some(0)
        },
    )
    .await;
    d.ok(Method::GET, "/api/status", None).await["decision_log"].clone()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Fills the database through the store: `projects` external projects,
/// auto-deploy on, over `repos` repositories under `dir`.
async fn fill(url: &str, dir: &Path, projects: usize, repos: usize) {
    let started = Instant::now();
    for r in 0..repos {
        bare_with_file(
            &dir.join(format!("r{r:05}.git")),
            &format!("repository {r}"),
        );
    }
    println!(
        "scale: {repos} repositories made in {:.1?}",
        started.elapsed()
    );
    let started = Instant::now();
    let store = Arc::new(SqlStore::connect(url).await.expect("open the database"));
    let workers = if url.starts_with("sqlite:") { 1 } else { 8 };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, dir) = (store.clone(), dir.to_path_buf());
        tasks.spawn(async move {
            for i in (w..projects).step_by(workers) {
                let fields = common::external_image_project(
                    format!("p{i:06}"),
                    format!(
                        "file://{}",
                        dir.join(format!("r{:05}.git", i % repos)).display()
                    ),
                );
                store.create_project(&fields, None, None).await.unwrap();
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    // The master switch off: the daemon's start-up tick looks at nothing,
    // so the idle figure is the daemon with its projects and no tick work.
    let off = [
        (
            "auto_deploy_master_enabled".to_string(),
            "false".to_string(),
        ),
        (
            "auto_deploy_poll_interval_seconds".to_string(),
            "86400".to_string(),
        ),
    ]
    .into();
    store.put_settings(&off).await.unwrap();
    println!(
        "scale: {projects} projects stored in {:.1?}",
        started.elapsed()
    );
}

/// Median client-side time of `GET path` over 20 calls, and the last
/// answer's length in rows and bytes and its next-page cursor.
async fn timed_get(d: &Daemon, path: &str) -> (Duration, usize, usize, Option<String>) {
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut last = (0, 0, None);
    for _ in 0..20 {
        let started = Instant::now();
        let resp = http
            .get(format!("{}{path}", d.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        let cursor = resp
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.unwrap();
        times.push(started.elapsed());
        let rows: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
        last = (rows.len(), bytes.len(), cursor);
    }
    times.sort();
    (times[times.len() / 2], last.0, last.1, last.2)
}

/// The first page of `path` with `limit=100`, and the page after it
/// through the cursor the first one gave.
async fn pages(d: &Daemon, what: &str, path: &str) {
    let (took, rows, bytes, cursor) = timed_get(d, &format!("{path}?limit=100")).await;
    println!("scale: first page of {what}: {took:.2?} median ({rows} rows, {bytes} bytes)");
    if let Some(c) = cursor {
        let (took, rows, bytes, _) = timed_get(d, &format!("{path}?limit=100&cursor={c}")).await;
        println!(
            "scale: next page of {what} (cursor): {took:.2?} median ({rows} rows, {bytes} bytes)"
        );
    }
}

/// One poll tick through the API; its summary. A tick over many projects
/// may take longer than the test client's usual timeout.
async fn tick(d: &Daemon) -> Value {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap()
        .post(format!("{}/api/ticks/git-poll", d.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("the tick answers");
    assert!(resp.status().is_success(), "tick: {}", resp.status());
    resp.json().await.expect("a tick summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/scale.sh"]
async fn scale() {
    let projects = env_usize("SCALE_PROJECTS", 10_000);
    let repos = env_usize("SCALE_REPOS", projects.min(10_000));
    let ticks = env_usize("SCALE_TICKS", 3);
    let dir = temp_dir("bench-scale");
    let postgres = std::env::var("AUTODEPLOY_TEST_DATABASE").as_deref() == Ok("postgres");
    let url = common::db::database_url("bench_scale");
    println!(
        "scale: {projects} projects, {repos} repositories, on {}",
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    fill(&url, &dir.join("repos"), projects, repos).await;

    let d = Daemon::start_with(
        &dir.join("data"),
        &[],
        &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "warn")],
    );
    common::wait_until(
        "the start-up tick is done",
        Duration::from_secs(600),
        || async {
            let s = d.ok(Method::GET, "/api/status", None).await;
            s["loops"]["git-poll"]["ticks"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
    let (idle, _) = memory(&d);
    println!("scale: RSS idle: {}", mib(idle));

    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_master_enabled": true})),
    )
    .await;
    let started = Instant::now();
    let warm = tick(&d).await;
    println!(
        "scale: aligning tick: {} ms in the summary ({:.1?} wall), checked {}, triggered {}, errors {}",
        warm["elapsed_ms"],
        started.elapsed(),
        warm["checked"],
        warm["triggered"],
        warm["errors"]
    );
    println!(
        "scale: first project of the aligning tick: {}",
        warm["projects"][0]
    );
    let (rss, _) = memory(&d);
    println!("scale: RSS after the aligning tick: {}", mib(rss));
    let log = decisions_written(&d).await;
    println!("scale: decision log after the aligning tick: {log}");
    for n in 1..=ticks {
        // With SCALE_PERF=FILE, the first tick is sampled by `perf record`.
        let perf = match std::env::var("SCALE_PERF") {
            Ok(file) if n == 1 => Some(
                std::process::Command::new("perf")
                    .args(["record", "-F", "499", "-g", "-o", &file, "-p"])
                    .arg(d.child.id().to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start perf"),
            ),
            _ => None,
        };
        let cpu_before = cpu(&d);
        let started = Instant::now();
        let t = tick(&d).await;
        let wall = started.elapsed();
        let (rss, _) = memory(&d);
        let log = decisions_written(&d).await;
        let used = cpu(&d) - cpu_before;
        if let Some(mut p) = perf {
            // SIGINT makes perf write its file and exit.
            // SAFETY: a plain kill of the child we started.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
        let checked = t["checked"].as_u64().unwrap_or(0).max(1);
        println!(
            "scale: tick {n}, nothing moved: {} ms in the summary ({wall:.1?} wall), checked {}, triggered {}, errors {}; RSS after: {}; daemon CPU for the tick and its log writes: {used:.1?} ({:.0} us per project); decision log: {log}",
            t["elapsed_ms"],
            t["checked"],
            t["triggered"],
            t["errors"],
            mib(rss),
            used.as_micros() as f64 / checked as f64,
        );
        assert_eq!(t["triggered"], 0, "nothing moved: {}", t["errors"]);
    }
    let (rss, peak) = memory(&d);
    println!(
        "scale: RSS after the ticks: {}, peak (VmHWM): {}",
        mib(rss),
        mib(peak)
    );

    for n in 0..3 {
        d.ok(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": format!("node-{n}")})),
        )
        .await;
    }
    pages(&d, "projects", "/api/projects").await;
    pages(&d, "a project's deployments", "/api/projects/1/deployments").await;
    pages(&d, "events", "/api/events").await;
    pages(&d, "nodes", "/api/nodes").await;
    pages(&d, "decisions", "/api/decisions").await;
    let (rss, peak) = memory(&d);
    println!(
        "scale: RSS at the end: {}, peak (VmHWM): {}",
        mib(rss),
        mib(peak)
    );
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
