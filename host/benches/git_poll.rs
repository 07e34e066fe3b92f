//! Git trigger figures (run with `cargo bench -p autodeploy --bench git_poll`):
//!
//! 1. One poll tick over 1,000 external repositories served by a local `git
//!    daemon` behind a proxy that adds 50 ms before each connection is
//!    answered: at concurrency 1 (the spec's serial polling) and at the
//!    default 16.
//! 2. Push latency to a hosted repository, each path 200 samples: (a) the
//!    trigger alone (`triggers::on_push`, called after a local push straight
//!    into the bare repository), (b) `git push` over smart HTTP with the
//!    trigger, (c) `git push` with auto-deploy off (the git round trip
//!    without a deployment). (a) and (b) are measured both on the insert
//!    path (a node claims and finishes the deployment between samples) and
//!    on the coalesce path (each trigger joins the one queued deployment).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autodeploy::app::App;
use autodeploy::policy::cli::PolicyArgs;
use autodeploy::serve::{ServeArgs, open};
use autodeploy::store::{DeployStatus, GitSource, ProjectFields, ProjectType};
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
        repo_dir: None,
        database_url: None,
        git_timeout_seconds: 30,
        metrics_listen: None,
        http: Default::default(),
        registry: Default::default(),
        git_transport: Default::default(),
    };
    let policy = PolicyArgs {
        policy: None,
        policy_fuel: autodeploy::policy::DEFAULT_FUEL,
        policy_deadline_ms: 30_000,
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
            project_type: ProjectType::Deployment,
            git_source: GitSource::External,
            git_url: Some(format!("git://127.0.0.1:{proxy}/r{i}.git")),
            git_branch: "main".into(),
            compose_file_path: "docker-compose.yml".into(),
            expose_service: None,
            expose_port: None,
            auto_deploy_enabled: true,
            image_ref: None,
            container_port: None,
            labels: Default::default(),
            deploy: Default::default(),
        };
        app.store.create_project(&fields, None, None).await.unwrap();
    }
    // The first tick aligns every project (1,000 deployments written); the
    // measured ones compare like for like: every remote read, nothing moved.
    let warm = app.loops.git_poll.tick_now(&app).await.unwrap();
    let first = warm
        .projects
        .iter()
        .find(|p| !matches!(p.result, autodeploy::triggers::Checked::Triggered { .. }))
        .map(|p| serde_json::to_string(p).unwrap());
    assert_eq!(
        warm.triggered, REPOS,
        "the first tick deploys every project; first other outcome: {first:?}"
    );
    let mut times = Vec::new();
    for concurrency in [1u64, 16] {
        let values = [(
            "auto_deploy_poll_concurrency".to_string(),
            concurrency.to_string(),
        )]
        .into();
        app.store.put_settings(&values).await.unwrap();
        let started = Instant::now();
        let summary = app.loops.git_poll.tick_now(&app).await.unwrap();
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

/// Which write a trigger ends in: a new queued deployment, or the queued one
/// it joins (no node claims it meanwhile).
#[derive(Clone, Copy, PartialEq)]
enum Write {
    Insert,
    Coalesce,
}

impl Write {
    fn name(self) -> &'static str {
        match self {
            Write::Insert => "insert (new deployment row)",
            Write::Coalesce => "coalesce (joins the queued row)",
        }
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{what}, {} samples: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

/// Hands the queued deployment to a node and finishes it, so the next
/// trigger has no queued row to join and inserts one.
async fn drain(app: &App, node: i64) {
    if let Some(claim) = app.store.claim(node).await.unwrap() {
        app.store
            .report(
                node,
                claim.deployment.id,
                DeployStatus::Succeeded,
                None,
                None,
            )
            .await
            .unwrap();
    }
}

/// The newest deployment of the project: queued, for `commit`, and counting
/// `triggers` triggers. Checked after each sample, outside the timing, so a
/// sample is known to have taken the path it is filed under.
async fn check_row(app: &App, project: i64, commit: &str, triggers: usize) {
    let d = &app.store.deployments(project, 1).await.unwrap()[0];
    assert_eq!(
        d.status,
        DeployStatus::Queued,
        "deployment {} is queued",
        d.id
    );
    assert_eq!(d.target_commit.as_deref(), Some(commit), "targets the push");
    assert_eq!(d.trigger_count as usize, triggers, "trigger count");
}

fn head(work: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(work)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
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
    let id = project["id"].as_i64().unwrap();
    let url = format!(
        "http://x:{}@{addr}/git/{id}.git",
        project["push_token"].as_str().unwrap(),
    );
    // A node that claims and finishes deployments between insert samples.
    let node = app
        .store
        .add_node("bench", "bench-node-token-hash", &Default::default())
        .await
        .unwrap()
        .id;
    let bare = autodeploy::git::hosted_path(&app.repo_dir, id);
    let branch = "main".to_string();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let mut n = 0;
    let mut commit = |work: &Path| {
        n += 1;
        git(
            work,
            &["commit", "-q", "--allow-empty", "-m", &format!("c{n}")],
        );
        head(work)
    };

    // (a) The trigger alone: the commit goes straight into the hosted bare
    // repository (a local push: no HTTP, no daemon, no trigger), then the
    // step the daemon runs after `git http-backend` accepted a push
    // (`triggers::on_push`: read the branch, ask the policy, one store
    // transaction) is timed by itself.
    for path in [Write::Insert, Write::Coalesce] {
        drain(&app, node).await;
        let mut samples = Vec::new();
        // The coalesce samples need a queued row to join: one untimed
        // trigger inserts it.
        let rounds = if path == Write::Coalesce {
            PUSHES + 1
        } else {
            PUSHES
        };
        for i in 0..rounds {
            if path == Write::Insert {
                drain(&app, node).await;
            }
            let sha = commit(&work);
            let before = autodeploy::git::local_head(&bare, &branch).unwrap();
            git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
            let started = Instant::now();
            autodeploy::triggers::on_push(&app, id, before).await;
            let took = started.elapsed();
            let triggers = if path == Write::Insert { 1 } else { i + 1 };
            check_row(&app, id, &sha, triggers).await;
            if path == Write::Insert || i > 0 {
                samples.push(took);
            }
        }
        report(&format!("trigger alone, {}", path.name()), samples);
    }

    // (b) The whole round trip, timed around the `git push` command over
    // smart HTTP: the git client, `git http-backend` and the trigger (the
    // deployment is written before the push returns).
    for path in [Write::Insert, Write::Coalesce] {
        drain(&app, node).await;
        let mut samples = Vec::new();
        let rounds = if path == Write::Coalesce {
            PUSHES + 1
        } else {
            PUSHES
        };
        for i in 0..rounds {
            if path == Write::Insert {
                drain(&app, node).await;
            }
            let sha = commit(&work);
            let started = Instant::now();
            let (w, u) = (work.clone(), url.clone());
            tokio::task::spawn_blocking(move || git(&w, &["push", "-q", &u, "main"]))
                .await
                .unwrap();
            let took = started.elapsed();
            let triggers = if path == Write::Insert { 1 } else { i + 1 };
            check_row(&app, id, &sha, triggers).await;
            if path == Write::Insert || i > 0 {
                samples.push(took);
            }
        }
        report(&format!("git push over HTTP, {}", path.name()), samples);
    }

    // (c) The git round trip without a deployment: auto-deploy off for the
    // project, so after the push the daemon only reads the project and the
    // branch and writes one event row ("auto-deploy is off").
    let mut fields = app.store.project(id).await.unwrap().fields;
    fields.auto_deploy_enabled = false;
    app.store.update_project(id, &fields).await.unwrap();
    let rows = app.store.deployments(id, 1000).await.unwrap().len();
    let mut samples = Vec::new();
    for _ in 0..PUSHES {
        commit(&work);
        let started = Instant::now();
        let (w, u) = (work.clone(), url.clone());
        tokio::task::spawn_blocking(move || git(&w, &["push", "-q", &u, "main"]))
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    assert_eq!(
        app.store.deployments(id, 1000).await.unwrap().len(),
        rows,
        "no deployment while auto-deploy is off"
    );
    report("git push over HTTP, auto-deploy off (no trigger)", samples);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // The daemon runs each network lookup in a child of its own executable,
    // which here is this bench binary: answer as the daemon's `main` does.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(autodeploy::git::isolated::SUBCOMMAND))
    {
        std::process::exit(autodeploy::git::isolated::child_main());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench ... -- push` or `-- poll` runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| part.contains(o.as_str()));
    if wanted("push") {
        push_latency().await;
    }
    if wanted("poll") {
        poll_ticks().await;
    }
}
