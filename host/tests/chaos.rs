//! Chaos, all at once: a registry flapping between 5xx, 429 and hangs, a
//! git remote that trickles its answers, both cores busy, the pinned node
//! going offline and back, and `kill -9` of the daemon (each followed by a
//! restart on the same data dir), while the test pushes to a hosted
//! repository, commits to external ones and publishes new image digests.
//!
//! Then every fault heals, and for every project:
//! - its final commit and its final image digests are each the target of
//!   exactly one succeeded deployment, and the node last ran exactly them;
//! - no target (commit, or digest map) was deployed twice;
//! - no deployment is left queued or running;
//! - no planted secret (git token, registry password, push, node or admin
//!   token) shows in a log, an API answer or a database file.
//!
//! `CHAOS_ROUNDS` (default 4) sets the rounds; `CHAOS_SEED` replays a run
//! (the seed is printed). bench/chaos.sh runs a longer variant.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chaos::{
    FlappingRegistry, NodeAgent, NodeLink, Rng, Trickle, authfile, burn_cpu, node_tools,
};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::{free_port, git, nginx_git};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::Method;
use serde_json::{Value, json};

const REGISTRY_USER: &str = "chaos";
const REGISTRY_PASSWORD: &str = "PLANTED-registry-pw-5d1e07";
const GIT_USER: &str = "deploy";
const GIT_TOKEN: &str = "PLANTED-git-token-8b3f42";
const IMAGES: [&str; 2] = ["chaos/web", "chaos/api"];

/// The daemon under test: killed and restarted on the same data dir and
/// the same address, so clients and the node link keep one URL.
struct ControlPlane {
    dir: PathBuf,
    url: String,
    port: u16,
    env: Vec<(String, String)>,
    daemon: Mutex<Option<Daemon>>,
    http: reqwest::Client,
    /// Every API answer the test received, to search for secrets.
    transcript: Mutex<String>,
    kills: AtomicUsize,
    /// Restarts that failed, with the daemon's last words.
    failed_starts: Mutex<Vec<String>>,
}

impl ControlPlane {
    /// Starts the daemon. A start that fails is recorded (an invariant
    /// below) and retried, at most 20 times, so the run goes on to check
    /// everything else.
    fn start(&self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for _ in 0..20 {
            match Daemon::try_start_with(&self.dir, &[], &env) {
                Ok(d) => {
                    *self.daemon.lock().unwrap() = Some(d);
                    return;
                }
                Err(e) => {
                    // The daemon's last words say why.
                    let last = e.lines().last().unwrap_or_default().to_string();
                    self.failed_starts.lock().unwrap().push(last);
                }
            }
        }
        panic!(
            "the daemon did not start in 20 attempts: {:?}",
            self.failed_starts.lock().unwrap()
        );
    }

    /// SIGKILL, then a restart on the same data dir (blocking).
    fn kill_and_restart(&self) {
        if let Some(d) = self.daemon.lock().unwrap().take() {
            d.kill();
            self.kills.fetch_add(1, Ordering::SeqCst);
        }
        self.start();
    }

    /// One API call; `Err` when the daemon is not answering (it may be
    /// down between a kill and its restart).
    async fn try_api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        {
            let mut t = self.transcript.lock().unwrap();
            t.push_str(&text);
            t.push('\n');
        }
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// An admin call that must succeed, retried while the daemon is down.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let start = Instant::now();
        loop {
            match self.try_api(method.clone(), path, body.clone()).await {
                Ok((s, v)) if (200..300).contains(&s) => return v,
                Ok((s, v)) => panic!("{method} {path}: {s} {v}"),
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "{method} {path}: the daemon did not answer for 90 s: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn deployments(&self, project: i64) -> Vec<Value> {
        self.ok(
            Method::GET,
            &format!("/api/projects/{project}/deployments?limit=1000"),
            None,
        )
        .await
        .as_array()
        .expect("a list")
        .clone()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Hosted,
    /// Polled through nginx; `trickles` when its remote is behind the trickle.
    External {
        trickles: bool,
    },
}

struct Project {
    name: &'static str,
    id: i64,
    work: PathBuf,
    /// Where commits go: the daemon's git endpoint (with the push token) or
    /// a bare repository served by nginx.
    remote: String,
    images: Vec<String>,
    final_commit: String,
}

fn compose(images: &[String]) -> String {
    let mut s = String::from("services:\n");
    for (i, image) in images.iter().enumerate() {
        s.push_str(&format!("  svc{i}:\n    image: {image}\n"));
    }
    s
}

/// A new commit in the project's work tree; returns its SHA.
fn commit(p: &Project, note: &str) -> String {
    std::fs::write(p.work.join("docker-compose.yml"), compose(&p.images)).unwrap();
    std::fs::write(p.work.join("round.txt"), note).unwrap();
    git(&p.work, &["add", "."]);
    git(&p.work, &["commit", "-q", "-m", note]);
    git(&p.work, &["rev-parse", "HEAD"])
}

/// `git push` of HEAD to the branch; low-speed limits so a push into a
/// dying daemon ends.
fn push(work: &Path, remote: &str) -> Result<(), String> {
    let out = Command::new("git")
        .args(["push", "-q", remote, "HEAD:refs/heads/main"])
        .current_dir(work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1")
        .env("GIT_HTTP_LOW_SPEED_TIME", "20")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Pushes until it lands (the daemon may be down a while); bounded.
async fn push_until_landed(p: &Project) {
    let mut last = String::new();
    for _ in 0..120 {
        match tokio::task::block_in_place(|| push(&p.work, &p.remote)) {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("push to {} never landed: {last}", p.name);
}

/// Polls `f` every 250 ms until it holds or `timeout` passes; says which.
async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGKILLs the daemon after `delay_ms` and restarts it.
fn kill_after(cp: &Arc<ControlPlane>, delay_ms: u64) -> tokio::task::JoinHandle<()> {
    let cp = cp.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        tokio::task::spawn_blocking(move || cp.kill_and_restart())
            .await
            .unwrap();
    })
}

fn short(s: &str) -> &str {
    &s[..s.len().min(10)]
}

fn summary(deps: &[Value]) -> String {
    deps.iter()
        .map(|d| {
            format!(
                "#{} {} {} commit={} digests={} error={}",
                d["id"],
                d["source"].as_str().unwrap_or("?"),
                d["status"].as_str().unwrap_or("?"),
                d["target_commit"].as_str().map(short).unwrap_or("-"),
                d["target_digests"],
                d["error"].as_str().unwrap_or("-"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

fn digests_of(v: &Value) -> Option<BTreeMap<String, String>> {
    serde_json::from_value(v.clone()).ok()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            files_containing(&path, needle, found);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_deploys_exactly_once_through_chaos() {
    let rounds: usize = std::env::var("CHAOS_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("CHAOS_ROUNDS is a number"))
        .unwrap_or(4)
        .max(2);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .map(|v| v.parse().expect("CHAOS_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {rounds} rounds");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let dir = temp_dir("chaos");

    // The registry (basic auth), behind the flapping proxy the daemon uses.
    let registry = TestRegistry::start(
        &dir.join("registry"),
        None,
        Some((REGISTRY_USER, REGISTRY_PASSWORD)),
    );
    let flaky = FlappingRegistry::start(registry.port, rng.next_u64());
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    let via = |name: &str| format!("{}/{name}:1", flaky.addr);
    for name in IMAGES {
        published.insert(via(name), registry.push(name, "1", "seed"));
    }

    // External repositories over smart HTTP with basic auth; one of them
    // reached through the trickle.
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let nginx = nginx_git(&dir.join("nginx"), &repos, GIT_USER, GIT_TOKEN);
    let trickle = Trickle::start(nginx.port);

    let port = free_port();
    let cp = Arc::new(ControlPlane {
        dir: dir.join("data"),
        url: format!("http://127.0.0.1:{port}"),
        port,
        env: vec![
            ("AUTODEPLOY_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("REGISTRY_ADDR".into(), flaky.addr.clone()),
            ("REGISTRY_USER".into(), REGISTRY_USER.into()),
            ("REGISTRY_PASSWORD".into(), REGISTRY_PASSWORD.into()),
            // Caps that end a hang or a trickle soon, yet leave a real
            // lookup room on cores the test keeps saturated.
            ("AUTODEPLOY_REGISTRY_TIMEOUT_SECONDS".into(), "5".into()),
            ("AUTODEPLOY_GIT_TIMEOUT_SECONDS".into(), "5".into()),
        ],
        daemon: Mutex::new(None),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        transcript: Mutex::new(String::new()),
        kills: AtomicUsize::new(0),
        failed_starts: Mutex::new(Vec::new()),
    });
    {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || cp.start())
            .await
            .unwrap();
    }
    cp.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 10, "node_offline_after_seconds": 8})),
    )
    .await;

    // The node: the real agent behind a link that can hold back claims.
    let node = cp
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "edge"})))
        .await;
    let (node_id, node_token) = (
        node["id"].as_i64().unwrap(),
        node["token"].as_str().unwrap().to_string(),
    );
    let link = NodeLink::start(cp.port);
    let auth = dir.join("node-auth.json");
    authfile(&auth, &registry.addr, REGISTRY_USER, REGISTRY_PASSWORD);
    let tools = node_tools(&dir, &flaky.addr, &registry.addr, &auth);
    let agent_dir = dir.join("agent");
    let agent_log = dir.join("agent.log");
    let start_agent = || NodeAgent::start(&link.url, &node_token, &agent_dir, &tools, &agent_log);
    let mut agent = Some(start_agent());

    // Three compose projects with auto-deploy: hosted, external, and
    // external behind the trickle.
    let mut projects = Vec::new();
    let mut secrets: Vec<(&str, String)> = vec![
        ("registry password", REGISTRY_PASSWORD.into()),
        ("git token", GIT_TOKEN.into()),
        ("node token", node_token.clone()),
        ("admin token", ADMIN.into()),
    ];
    for (name, source, images) in [
        ("hosted", Source::Hosted, vec![via(IMAGES[0])]),
        (
            "polled",
            Source::External { trickles: false },
            vec![via(IMAGES[0]), via(IMAGES[1])],
        ),
        (
            "trickled",
            Source::External { trickles: true },
            vec![via(IMAGES[1])],
        ),
    ] {
        let work = dir.join(format!("work-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let mut body = json!({"name": name, "project_type": "compose", "expose_service": "svc0",
            "expose_port": 8080, "auto_deploy_enabled": true});
        let remote = match source {
            Source::Hosted => String::new(),
            Source::External { trickles } => {
                let bare = repos.join(format!("{name}.git"));
                git(
                    &repos,
                    &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
                );
                let served = if trickles { trickle.port } else { nginx.port };
                let fields = body.as_object_mut().unwrap();
                fields.insert("git_source".into(), json!("external"));
                fields.insert(
                    "git_url".into(),
                    json!(format!("http://127.0.0.1:{served}/git/{name}.git")),
                );
                fields.insert(
                    "credentials".into(),
                    json!({"kind": "https", "username": GIT_USER, "token": GIT_TOKEN}),
                );
                bare.display().to_string()
            }
        };
        let created = cp.ok(Method::POST, "/api/projects", Some(body)).await;
        let id = created["id"].as_i64().unwrap();
        let remote = match source {
            Source::Hosted => {
                let token = created["push_token"].as_str().unwrap().to_string();
                secrets.push(("push token", token.clone()));
                format!("http://push:{token}@127.0.0.1:{port}/git/{id}.git")
            }
            Source::External { .. } => remote,
        };
        let mut p = Project {
            name,
            id,
            work,
            remote,
            images,
            final_commit: String::new(),
        };
        p.final_commit = commit(&p, "first");
        push_until_landed(&p).await;
        projects.push(p);
    }
    // Creating a node or a project answers with its token, once, by design:
    // the secret search covers every answer after these.
    cp.transcript.lock().unwrap().clear();

    // Setup, before any fault: each project deployed once (which pins it to
    // the node) and its image digests recorded.
    wait_until(
        "every project's first deploy succeeded",
        Duration::from_secs(90),
        || async {
            let _ = cp.try_api(Method::POST, "/api/ticks/git-poll", None).await;
            for p in &projects {
                let deps = cp.deployments(p.id).await;
                if !deps.iter().any(|d| d["status"] == "succeeded") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    wait_until(
        "every project's image digests are recorded",
        Duration::from_secs(60),
        || async {
            let _ = cp
                .try_api(Method::POST, "/api/ticks/image-watch", None)
                .await;
            for p in &projects {
                let v = cp
                    .ok(Method::GET, &format!("/api/projects/{}", p.id), None)
                    .await;
                let expected: BTreeMap<String, String> = p
                    .images
                    .iter()
                    .map(|i| (i.clone(), published[i].clone()))
                    .collect();
                if digests_of(&v["last_tracked_image_digests"]) != Some(expected) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("chaos: setup done after {:?}", started.elapsed());

    // Chaos. The node goes offline for the last rounds (and, in longer
    // runs, once in the middle too) and comes back only after them.
    let burn = burn_cpu(2, Duration::from_secs(600));
    flaky.set_flapping(true);
    trickle.set_trickling(true);
    let mut offline: Vec<(usize, usize)> = vec![(rounds - 2, rounds)];
    if rounds >= 8 {
        offline.insert(0, (rounds / 3, rounds / 3 + 2));
    }
    let mut node_offline_rounds = 0;
    for round in 0..rounds {
        if offline.iter().any(|&(_, back)| back == round) && agent.is_none() {
            agent = Some(start_agent());
            link.hold_claims(false);
            eprintln!("chaos: round {round}: node back");
        }
        if offline.iter().any(|&(from, _)| from == round) {
            // Offline only once the node holds no deploy: a deploy the node
            // loses is a failure on the node, which is not retried by design.
            wait_until("the node is idle", Duration::from_secs(90), || async {
                for p in &projects {
                    if cp
                        .deployments(p.id)
                        .await
                        .iter()
                        .any(|d| d["status"] == "running" || d["status"] == "queued")
                    {
                        return false;
                    }
                }
                true
            })
            .await;
            link.hold_claims(true);
            wait_until("the node runs nothing", Duration::from_secs(90), || async {
                for p in &projects {
                    if cp
                        .deployments(p.id)
                        .await
                        .iter()
                        .any(|d| d["status"] == "running")
                    {
                        return false;
                    }
                }
                true
            })
            .await;
            drop(agent.take());
            wait_until(
                "the node is seen offline",
                Duration::from_secs(60),
                || async {
                    let nodes = cp.ok(Method::GET, "/api/nodes", None).await;
                    nodes
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n["id"] == node_id && n["online"] == false)
                },
            )
            .await;
            eprintln!("chaos: round {round}: node offline");
        }
        if agent.is_none() {
            node_offline_rounds += 1;
        }

        // A kill -9 in 60 % of the rounds: half of them at a random moment,
        // half during the push to the hosted repository (between its ref
        // update and its trigger is where a deploy can be lost).
        let (mut killer, mut mid_push) = (None, None);
        if rng.chance(60) {
            if rng.chance(50) {
                mid_push = Some(rng.below(400));
            } else {
                killer = Some(kill_after(&cp, rng.below(6000)));
            }
        }
        // Each project's commit, each image's publish, a poll tick and
        // three image-watch ticks, in a seeded order.
        let mut actions: Vec<usize> = (0..projects.len() + IMAGES.len() + 4).collect();
        for i in (1..actions.len()).rev() {
            actions.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for a in actions {
            if a < projects.len() {
                let p = &mut projects[a];
                p.final_commit = tokio::task::block_in_place(|| {
                    commit(p, &format!("round {round} seed {seed}"))
                });
                if p.name == "hosted"
                    && let Some(delay) = mid_push
                {
                    killer = Some(kill_after(&cp, delay));
                }
                push_until_landed(p).await;
            } else if a < projects.len() + IMAGES.len() {
                let name = IMAGES[a - projects.len()];
                let content = format!("{name} round {round} seed {seed}");
                let digest = tokio::task::block_in_place(|| registry.push(name, "1", &content));
                published.insert(via(name), digest);
            } else if a == projects.len() + IMAGES.len() {
                let _ = cp.try_api(Method::POST, "/api/ticks/git-poll", None).await;
            } else {
                let _ = cp
                    .try_api(Method::POST, "/api/ticks/image-watch", None)
                    .await;
            }
        }
        if let Some(k) = killer {
            k.await.unwrap();
        }
        eprintln!(
            "chaos: round {round} done after {:?} ({} kills so far)",
            started.elapsed(),
            cp.kills.load(Ordering::SeqCst)
        );
    }

    // Heal: the registry and the remote recover, the daemon is killed once
    // more (its start-up probe now finds the registry), then the node is
    // back. The cores stay busy to the end.
    flaky.set_flapping(false);
    trickle.set_trickling(false);
    {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || cp.kill_and_restart())
            .await
            .unwrap();
    }
    if agent.is_none() {
        agent = Some(start_agent());
    }
    link.hold_claims(false);
    eprintln!("chaos: healed after {:?}", started.elapsed());

    let expected_digests = |p: &Project| -> BTreeMap<String, String> {
        p.images
            .iter()
            .map(|i| (i.clone(), published[i].clone()))
            .collect()
    };
    // Settled: nothing queued or running, and each project's final commit
    // and final digests reached by a succeeded deployment. Not an
    // assertion: the invariants below say what is wrong if it never settles.
    let quiet = || async {
        for p in &projects {
            if cp
                .deployments(p.id)
                .await
                .iter()
                .any(|d| d["status"] == "queued" || d["status"] == "running")
            {
                return false;
            }
        }
        true
    };
    let settled = eventually(Duration::from_secs(75), || async {
        let _ = cp.try_api(Method::POST, "/api/ticks/git-poll", None).await;
        let _ = cp
            .try_api(Method::POST, "/api/ticks/image-watch", None)
            .await;
        for p in &projects {
            let deps = cp.deployments(p.id).await;
            let done: Vec<&Value> = deps.iter().filter(|d| d["status"] == "succeeded").collect();
            if !done
                .iter()
                .any(|d| d["target_commit"] == p.final_commit.as_str())
                || !done
                    .iter()
                    .any(|d| digests_of(&d["target_digests"]) == Some(expected_digests(p)))
            {
                return false;
            }
        }
        quiet().await
    })
    .await;
    // Two more ticks of each kind, then whatever they started must finish
    // (and the invariants below say whether they deployed anything again).
    for _ in 0..2 {
        let _ = cp.try_api(Method::POST, "/api/ticks/git-poll", None).await;
        let _ = cp
            .try_api(Method::POST, "/api/ticks/image-watch", None)
            .await;
    }
    let quiet_at_end = eventually(Duration::from_secs(if settled { 60 } else { 5 }), quiet).await;
    eprintln!(
        "chaos: settled={settled}, quiet={quiet_at_end} after {:?}; {} kills, registry faults (pass, 5xx, 429, hang) {:?}, {node_offline_rounds} rounds with the node offline",
        started.elapsed(),
        cp.kills.load(Ordering::SeqCst),
        flaky.counts.lock().unwrap()
    );

    // The invariants.
    let mut broken: Vec<String> = Vec::new();
    for p in &projects {
        let deps = cp.deployments(p.id).await;
        let all = summary(&deps);
        let succeeded: Vec<&Value> = deps.iter().filter(|d| d["status"] == "succeeded").collect();
        let stuck: Vec<&Value> = deps
            .iter()
            .filter(|d| d["status"] == "queued" || d["status"] == "running")
            .collect();
        if !stuck.is_empty() {
            broken.push(format!(
                "{}: deployments left queued or running: {:?}",
                p.name,
                stuck.iter().map(|d| d["id"].clone()).collect::<Vec<_>>()
            ));
        }
        let final_commit = succeeded
            .iter()
            .filter(|d| d["target_commit"] == p.final_commit.as_str())
            .count();
        if final_commit == 0 {
            broken.push(format!(
                "{}: final commit {} was never deployed (no succeeded deployment targets it):\n    {all}",
                p.name,
                short(&p.final_commit)
            ));
        }
        let expected = expected_digests(p);
        let final_digests = succeeded
            .iter()
            .filter(|d| digests_of(&d["target_digests"]) == Some(expected.clone()))
            .count();
        if final_digests == 0 {
            broken.push(format!(
                "{}: final digests {expected:?} were never deployed (no succeeded deployment targets them):\n    {all}",
                p.name
            ));
        }
        let mut commits = BTreeMap::new();
        let mut maps = BTreeMap::new();
        for d in &succeeded {
            if let Some(c) = d["target_commit"].as_str() {
                *commits.entry(c.to_string()).or_insert(0) += 1;
            }
            if let Some(m) = digests_of(&d["target_digests"]) {
                *maps.entry(format!("{m:?}")).or_insert(0) += 1;
            }
        }
        for (target, n) in commits.iter().chain(maps.iter()) {
            if *n > 1 {
                broken.push(format!(
                    "{}: target {target} was deployed {n} times:\n    {all}",
                    p.name
                ));
            }
        }
        // What the node last ran (deployments of a project run one at a
        // time, in id order): the final commit with the final digests.
        if let Some(last) = succeeded.iter().max_by_key(|d| d["id"].as_i64()) {
            let tail = last["log_tail"].as_str().unwrap_or_default();
            let mut want = vec![format!("checked out {}", p.final_commit)];
            want.extend(expected.iter().map(|(i, d)| format!("pulled {i}@{d}")));
            for w in want {
                if !tail.contains(&w) {
                    broken.push(format!(
                        "{}: the node's last deploy (#{}) did not run `{w}`; its log:\n{tail}",
                        p.name, last["id"]
                    ));
                }
            }
        }
        let project = cp
            .ok(Method::GET, &format!("/api/projects/{}", p.id), None)
            .await;
        if project["last_tracked_commit_sha"] != p.final_commit.as_str()
            || digests_of(&project["last_tracked_image_digests"]) != Some(expected.clone())
        {
            broken.push(format!(
                "{}: tracked state is {} / {}, not the final {} / {expected:?}",
                p.name,
                project["last_tracked_commit_sha"],
                project["last_tracked_image_digests"],
                short(&p.final_commit)
            ));
        }
    }
    // Answers the test has not asked for yet, for the secret search.
    for path in [
        "/api/status",
        "/api/events?limit=1000",
        "/api/projects",
        "/api/nodes",
    ] {
        cp.ok(Method::GET, path, None).await;
    }
    drop(agent);
    let transcript = cp.transcript.lock().unwrap().clone();
    // The search itself works: it finds what is meant to be there.
    let mut control = Vec::new();
    files_containing(&cp.dir, b"refusing to migrate", &mut control);
    assert!(
        control.iter().any(|f| f.contains("autodeploy.db"))
            && transcript.contains("refusing to migrate")
            && std::fs::read(&agent_log).is_ok_and(|l| !l.is_empty()),
        "the secret search did not see the database, the answers and the agent's log: {control:?}"
    );
    for (what, secret) in &secrets {
        let mut found = Vec::new();
        files_containing(&cp.dir, secret.as_bytes(), &mut found);
        if std::fs::read(&agent_log)
            .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
        {
            found.push(agent_log.display().to_string());
        }
        if transcript.contains(secret.as_str()) {
            found.push("an API answer".into());
        }
        if !found.is_empty() {
            broken.push(format!("the {what} leaked into: {}", found.join(", ")));
        }
    }
    let failed_starts = cp.failed_starts.lock().unwrap().clone();
    if !failed_starts.is_empty() {
        broken.push(format!(
            "the daemon failed {} of {} starts: {:?}",
            failed_starts.len(),
            failed_starts.len() + cp.kills.load(Ordering::SeqCst) + 1,
            failed_starts
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
        ));
    }
    drop(burn);
    eprintln!("chaos: done after {:?}", started.elapsed());
    assert!(
        broken.is_empty(),
        "chaos (seed {seed}, {rounds} rounds) broke {} invariants:\n{}",
        broken.len(),
        broken.join("\n")
    );
    if let Some(d) = cp.daemon.lock().unwrap().take() {
        d.stop();
    }
}
