//! Benchmark, not a test: ignored unless asked for (`bench/metrics.sh`).
//! The `/metrics` scrape of the real `autodeploy serve` with
//! `SCALE_PROJECTS` external projects (default 10,000) on `file://`
//! repositories, after the start-up tick has looked each up and queued a
//! deployment for each (so the queue-depth gauge counts 10,000 rows at
//! every scrape). Prints the client-side wall time of a scrape (median and
//! slowest of 50) and the exposition's size; on SQLite, or on PostgreSQL
//! with `AUTODEPLOY_TEST_DATABASE=postgres`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use autodeploy::store::{SqlStore, Store};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::bare_with_file;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/metrics.sh"]
async fn metrics_scrape_at_scale() {
    let projects: usize = std::env::var("SCALE_PROJECTS")
        .ok()
        .map(|v| v.parse().expect("SCALE_PROJECTS must be a number"))
        .unwrap_or(10_000);
    let dir = temp_dir("bench-metrics");
    let url = common::db::database_url("bench_metrics");
    // The scrape does not depend on how many repositories there are: a few
    // keep the set-up short.
    let repos = 16;
    for r in 0..repos {
        bare_with_file(
            &dir.join(format!("repos/r{r:02}.git")),
            &format!("repository {r}"),
        );
    }
    let store = Arc::new(SqlStore::connect(&url).await.expect("open the database"));
    for i in 0..projects {
        let fields = common::external_image_project(
            format!("p{i:06}"),
            format!(
                "file://{}",
                dir.join(format!("repos/r{:02}.git", i % repos)).display()
            ),
        );
        store.create_project(&fields, None, None).await.unwrap();
    }
    drop(store);

    let d = Daemon::start_with(
        &dir.join("data"),
        &[],
        &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "warn")],
    );
    let started = Instant::now();
    common::wait_until(
        "the start-up tick is done",
        Duration::from_secs(1800),
        || async {
            let s = d.ok(Method::GET, "/api/status", None).await;
            s["loops"]["git-poll"]["ticks"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
    println!(
        "metrics: {projects} projects, start-up tick done after {:.1?}",
        started.elapsed()
    );

    let http = reqwest::Client::new();
    let scrape = || async {
        let t = Instant::now();
        let body = http
            .get(format!("{}/metrics", d.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (t.elapsed(), body)
    };
    let (_, first) = scrape().await;
    let depth = first
        .lines()
        .find_map(|l| l.strip_prefix("autodeploy_queue_depth "))
        .unwrap_or("?")
        .to_string();
    let mut times = Vec::new();
    for _ in 0..50 {
        times.push(scrape().await.0);
    }
    times.sort();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "metrics: scrape median {:.1?}, slowest {:.1?} (50 scrapes); {} bytes, {} lines; queue depth {depth}; load average {}",
        times[times.len() / 2],
        times[times.len() - 1],
        first.len(),
        first.lines().count(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    d.stop();
}
