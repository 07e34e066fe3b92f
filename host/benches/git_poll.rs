//! Git trigger figures (run with `cargo bench -p autodeploy --bench git_poll`):
//!
//! 1. One poll tick over 1,000 external repositories served by a local `git
//!    daemon` behind a proxy that adds 50 ms before each connection is
//!    answered: at concurrency 1 (the spec's serial polling) and at the
//!    default 16.
//! 2. Push-to-deployment-recorded latency over 200 `git push`es to a hosted
//!    repository (the deployment is recorded before the push returns).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autodeploy::app::App;
use autodeploy::policy::cli::PolicyArgs;
use autodeploy::serve::{ServeArgs, open};
use autodeploy::store::{GitSource, ProjectFields, ProjectKind};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const REPOS: usize = 1000;
const LATENCY: Duration = Duration::from_millis(50);
const PUSHES: usize = 200;
const ADMIN: &str = "bench-admin-token-0123456789";

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "git {args:?}");
}

/// Relays each connection to `target` after `LATENCY`.
async fn slow_proxy(target: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(LATENCY).await;
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

async fn app(data_dir: &Path) -> Arc<App> {
    let args = ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        database_url: None,
        git_timeout_seconds: 30,
        http: Default::default(),
        registry: Default::default(),
    };
    let policy = PolicyArgs {
        policy: None,
        policy_deadline_ms: 100,
        policy_memory_mib: 64,
    };
    open(&args, &policy).await.unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("autodeploy-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn poll_ticks() {
    let dir = scratch("poll");
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let seed = repos.join("r0.git");
    git(&repos, &["init", "-q", "--bare", "r0.git"]);
    let work = dir.join("work");
    git(
        &dir,
        &[
            "clone",
            "-q",
            seed.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    git(&work, &["commit", "-q", "--allow-empty", "-m", "one"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    for i in 1..REPOS {
        git(
            &repos,
            &["clone", "-q", "--bare", "r0.git", &format!("r{i}.git")],
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            "--max-connections=64",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", repos.display()))
        .arg(&repos)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let proxy = slow_proxy(port).await;

    let app = app(&dir.join("data")).await;
    for i in 0..REPOS {
        let fields = ProjectFields {
            name: format!("r{i}"),
            project_type: ProjectKind::Deployment,
            git_source: GitSource::External,
            git_url: Some(format!("git://127.0.0.1:{proxy}/r{i}.git")),
            git_branch: "main".into(),
            compose_file_path: "docker-compose.yml".into(),
            expose_service: None,
            expose_port: None,
            auto_deploy_enabled: true,
            image_ref: None,
            container_port: None,
        };
        app.store.create_project(&fields, None, None).await.unwrap();
    }
    // The first tick aligns every project (1,000 deployments written); the
    // measured ones compare like for like: every remote read, nothing moved.
    let warm = autodeploy::triggers::git_poll::tick(&app).await.unwrap();
    assert_eq!(warm.triggered, REPOS);
    let mut times = Vec::new();
    for concurrency in [1u64, 16] {
        let values = [(
            "auto_deploy_poll_concurrency".to_string(),
            concurrency.to_string(),
        )]
        .into();
        app.store.put_settings(&values).await.unwrap();
        let started = Instant::now();
        let summary = autodeploy::triggers::git_poll::tick(&app).await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            (summary.checked, summary.errors),
            (REPOS, 0),
            "every repository answered"
        );
        println!(
            "poll tick, {REPOS} repos, +{}ms each, concurrency {concurrency:>2}: {took:.2?} ({} triggered)",
            LATENCY.as_millis(),
            summary.triggered
        );
        times.push(took);
    }
    println!(
        "speed-up of concurrency 16 over serial: {:.1}x",
        times[0].as_secs_f64() / times[1].as_secs_f64()
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn push_latency() {
    let dir = scratch("push");
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("AUTODEPLOY_ADMIN_TOKEN", ADMIN) };
    let app = app(&dir.join("data")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, autodeploy::api::router(app.clone())).into_future());
    let http = reqwest::Client::new();
    let project: serde_json::Value = http
        .post(format!("http://{addr}/api/projects"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "web", "project_type": "deployment", "auto_deploy_enabled": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "http://x:{}@{addr}/git/{}.git",
        project["push_token"].as_str().unwrap(),
        project["id"]
    );
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let mut latencies = Vec::new();
    for i in 0..PUSHES {
        git(
            &work,
            &["commit", "-q", "--allow-empty", "-m", &format!("c{i}")],
        );
        let started = Instant::now();
        let work = work.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || git(&work, &["push", "-q", &url, "main"]))
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
    let deployments = app
        .store
        .deployments(project["id"].as_i64().unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(
        deployments[0].trigger_count as usize, PUSHES,
        "every push was recorded"
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "push to deployment recorded, {PUSHES} pushes: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    push_latency().await;
    poll_ticks().await;
}
