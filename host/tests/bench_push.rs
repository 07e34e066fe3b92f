//! Benchmark, not a test: ignored unless asked for (`bench/push.sh`).
//! `git push` round trips of one small commit each, in the same run and
//! interleaved, to:
//!
//! - a hosted repository of the real `autodeploy serve` (smart HTTP served
//!   by the daemon, the project's push token as the password), with
//!   auto-deploy on: the trigger writes the deployment before the push
//!   returns;
//! - the same with auto-deploy off (the daemon reads the project and writes
//!   one event row after the push, no deployment);
//! - a plain `git http-backend` behind nginx + fcgiwrap with basic auth, the
//!   usual self-hosted set-up (the baseline).
//!
//! Each sample is the wall time of one `git push` command. Prints p50, p99
//! and max of each and the ratios to the baseline. `BENCH_PUSHES` sets the
//! samples per target (default 50); `AUTODEPLOY_BIN` picks the daemon's
//! executable (bench/push.sh points it at a release build).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, temp_dir};
use common::git::{git, nginx_git};
use reqwest::Method;
use serde_json::json;

/// One `git push` of `work`'s main to `url`; its wall time.
fn push(work: &Path, url: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("git")
        .args(["push", "-q", url, "main"])
        .current_dir(work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "git push to {}: {}",
        url.split('@').next_back().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// A work tree with one commit on main, pushing to `url`.
fn work_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    commit(dir, 0);
}

/// A small commit: one file's content changes.
fn commit(dir: &Path, i: usize) {
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!("services:\n  app:\n    image: registry.test/app:{i}\n"),
    )
    .unwrap();
    git(dir, &["add", "docker-compose.yml"]);
    git(dir, &["commit", "-q", "-m", &format!("commit {i}")]);
}

fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut s = samples.to_vec();
    s.sort();
    let at = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: s[s.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
#[ignore = "a benchmark: run bench/push.sh"]
async fn push_round_trip_vs_git_http_backend() {
    let n: usize = std::env::var("BENCH_PUSHES")
        .ok()
        .map(|v| v.parse().expect("BENCH_PUSHES must be a number"))
        .unwrap_or(50);
    assert!(n > 0, "BENCH_PUSHES must be at least 1");
    let dir = temp_dir("bench-push");
    // The daemon's own default log level, as deployed (the tests' default
    // is debug, which writes far more per request).
    let d = Daemon::start_with(&dir.join("daemon"), &[], &[("RUST_LOG", "info")]);
    let hosted = |name: &str, auto: bool| {
        json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1",
               "container_port": 8080, "auto_deploy_enabled": auto})
    };
    let on = d
        .ok(Method::POST, "/api/projects", Some(hosted("on", true)))
        .await;
    let off = d
        .ok(Method::POST, "/api/projects", Some(hosted("off", false)))
        .await;
    let daemon_url = |p: &serde_json::Value| {
        format!(
            "http://x:{}@{}/git/{}.git",
            p["push_token"].as_str().expect("a push token"),
            d.url.trim_start_matches("http://"),
            p["id"]
        )
    };
    let on_id = on["id"].as_i64().unwrap();
    let on_url = daemon_url(&on);
    let off_url = daemon_url(&off);

    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    git(&repos, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let nginx = nginx_git(&dir.join("nginx"), &repos, "bench", "bench-password");
    let nginx_url = format!(
        "http://bench:bench-password@127.0.0.1:{}/git/app.git",
        nginx.port
    );

    let targets = [
        ("autodeploy, auto-deploy on", on_url.as_str()),
        ("autodeploy, auto-deploy off", off_url.as_str()),
        (
            "git http-backend behind nginx + fcgiwrap",
            nginx_url.as_str(),
        ),
    ];
    let works: Vec<_> = (0..targets.len())
        .map(|t| {
            let w = dir.join(format!("work{t}"));
            work_tree(&w);
            w
        })
        .collect();
    // The first push creates the branch on each side; then a few untimed
    // rounds warm the page cache and each server.
    for (t, (_, url)) in targets.iter().enumerate() {
        push(&works[t], url);
    }
    for i in 1..=3 {
        for (t, (_, url)) in targets.iter().enumerate() {
            commit(&works[t], i);
            push(&works[t], url);
        }
    }

    let mut samples = vec![Vec::with_capacity(n); targets.len()];
    for i in 0..n {
        // Rotate the order every round, so no target always goes first.
        for k in 0..targets.len() {
            let t = (i + k) % targets.len();
            commit(&works[t], 100 + i);
            samples[t].push(push(&works[t], targets[t].1));
        }
        // Outside the timing: the push with auto-deploy on was recorded as
        // a deployment of the pushed commit before it returned.
        let newest = d.deployments(on_id).await;
        assert_eq!(
            newest.first().and_then(|x| x["target_commit"].as_str()),
            Some(head(&works[0]).as_str()),
            "the push to the auto-deploy project recorded no deployment of its commit"
        );
    }
    assert_eq!(
        git(&repos.join("app.git"), &["rev-parse", "main"]).trim(),
        head(&works[2]),
        "nginx's repository holds the pushed commit"
    );
    let requests = nginx.requests();
    assert!(
        requests.contains("\"POST /git/app.git/git-receive-pack HTTP/1.1\" 200 user=bench"),
        "nginx served the pushes: {requests}"
    );

    let base = stats(&samples[2]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "push: {n} pushes per target, interleaved; loadavg {}",
        load.trim()
    );
    for (t, (name, _)) in targets.iter().enumerate() {
        let s = stats(&samples[t]);
        println!(
            "push: {name}: p50 {}, p99 {}, max {}; ratio to http-backend p50 {:.2}, p99 {:.2}",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.p50.as_secs_f64() / base.p50.as_secs_f64(),
            s.p99.as_secs_f64() / base.p99.as_secs_f64(),
        );
    }
}
