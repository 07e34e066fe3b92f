//! Several `autodeploy serve` replicas on one database and one repo dir, as
//! the README's "Running several replicas" section sets them up: the policy
//! the database names, changes that reach every replica, pushes to one
//! repository through two replicas, and claims through two replicas.
//!
//! The database is `common::db::database_url`'s: one SQLite file shared by
//! the replicas' processes, or with `AUTODEPLOY_TEST_DATABASE=postgres` a
//! PostgreSQL database. Notifications between replicas need PostgreSQL:
//! that test is ignored in the plain run and run by scripts/test.sh inside
//! `pg_virtualenv`; run alone without PostgreSQL it fails saying so.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET_KEY: &str = "4f1c0e2b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a19080";
/// Generous: bounds a hang, never a speed.
const WAIT: Duration = Duration::from_secs(60);

/// Replicas sharing a database, a repo dir, the secret key and the admin
/// token, each with its own data dir and port.
struct Cluster {
    dir: PathBuf,
    url: String,
    replicas: Vec<Daemon>,
}

impl Cluster {
    fn start(name: &str, count: usize) -> Cluster {
        let dir = temp_dir(&format!("replicas-{name}"));
        let url = common::db::database_url(&dir, name);
        let mut cluster = Cluster {
            dir,
            url,
            replicas: Vec::new(),
        };
        for _ in 0..count {
            cluster.add(&[]);
        }
        cluster
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.join("repos")
    }

    /// Starts one more replica; `args` go before `serve`.
    fn add(&mut self, args: &[&str]) -> &Daemon {
        let data = self.dir.join(format!("r{}", self.replicas.len()));
        let repos = self.repo_dir();
        let d = Daemon::start_with(
            &data,
            args,
            &[
                ("DATABASE_URL", self.url.as_str()),
                ("AUTODEPLOY_REPO_DIR", repos.to_str().unwrap()),
                ("AUTODEPLOY_SECRET_KEY", SECRET_KEY),
                ("AUTODEPLOY_ADMIN_TOKEN", ADMIN),
            ],
        );
        self.replicas.push(d);
        self.replicas.last().unwrap()
    }
}

async fn policy(d: &Daemon) -> Value {
    d.ok(Method::GET, "/api/policy", None).await
}

async fn status_sha(d: &Daemon) -> String {
    d.ok(Method::GET, "/api/status", None).await["policy"]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn put_policy(d: &Daemon, wasm: Vec<u8>) -> String {
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            wasm,
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["sha256"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_replica_runs_the_policy_the_database_names() {
    let dir = temp_dir("replicas-seed-policy");
    let file = dir.join("variant.wasm");
    std::fs::write(&file, common::policy_variant("seeded")).unwrap();
    let mut c = Cluster::start("seed", 0);
    // The first replica stores its --policy; one started without a policy
    // runs it too, not its own bundled one.
    let a = status_sha(c.add(&["--policy", file.to_str().unwrap()])).await;
    let b = status_sha(c.add(&[])).await;
    assert_eq!(a, b);
    let bundled = common::bundled().info().sha256.clone();
    assert_ne!(a, bundled, "the variant is not the bundled policy");

    // A restart of every replica keeps it.
    let replicas = std::mem::take(&mut c.replicas);
    for d in replicas {
        assert!(d.stop().success());
    }
    c.replicas.clear();
    let dir_again = c.dir.join("r9");
    let d = Daemon::start_with(
        &dir_again,
        &[],
        &[
            ("DATABASE_URL", c.url.as_str()),
            ("AUTODEPLOY_SECRET_KEY", SECRET_KEY),
        ],
    );
    assert_eq!(status_sha(&d).await, a);
}

#[tokio::test]
#[ignore = "needs PostgreSQL (LISTEN/NOTIFY): scripts/test.sh runs it inside pg_virtualenv"]
async fn settings_and_policy_changes_reach_every_replica() {
    assert!(
        common::db::postgres(),
        "this test needs PostgreSQL: run it inside pg_virtualenv with \
         AUTODEPLOY_TEST_DATABASE=postgres (as scripts/test.sh does)"
    );
    let c = Cluster::start("notify", 2);
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let bundled = status_sha(b).await;

    // A setting changed on A shows on B.
    a.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 1234})),
    )
    .await;
    let settings = b.ok(Method::GET, "/api/settings", None).await;
    assert_eq!(settings["auto_deploy_poll_interval_seconds"], 1234);

    // A policy swapped on A runs on B.
    let swapped = put_policy(a, common::policy_variant("swapped")).await;
    assert_ne!(swapped, bundled);
    wait_until("B runs the policy swapped on A", WAIT, || async {
        status_sha(b).await == swapped
    })
    .await;
    // B decides with it: a deployment made through B names it.
    let id = b
        .create_project(json!({"name": "api", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    let dep = b
        .ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
    assert_eq!(dep["policy_sha256"], swapped.as_str());

    // Its config, set on B, reaches A.
    let (status, v) = b
        .raw(
            Method::PUT,
            "/api/policy/config",
            Some(ADMIN),
            b"windows: none\n".to_vec(),
            "text/plain",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    wait_until("A has the config set on B", WAIT, || async {
        policy(a).await["config"] == "windows: none\n"
    })
    .await;

    // A rollback on B brings both back to the bundled policy.
    b.ok(Method::POST, "/api/policy/rollback", None).await;
    wait_until("A rolled back with B", WAIT, || async {
        status_sha(a).await == bundled
    })
    .await;
    assert_eq!(status_sha(b).await, bundled);
}

/// A clone of the hosted repository at `url`, on its `main`.
fn clone_of(url: &str, dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    git(
        dir.parent().unwrap(),
        &["clone", "-q", url, dir.to_str().unwrap()],
    );
    dir.to_path_buf()
}

fn push(dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .args(["push", "-q", "origin", "HEAD:main"])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn remote(d: &Daemon, id: i64, token: &str) -> String {
    format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    )
}

/// Claims the project's queued deployment as `node` and reports it done,
/// so the next push queues a deployment of its own.
async fn finish(d: &Daemon, node: &str) -> i64 {
    let (status, claim) = d
        .call(Method::POST, "/api/agent/claim", Some(node), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let id = claim["deployment"]["id"].as_i64().unwrap();
    let (status, v) = d
        .call(
            Method::POST,
            &format!("/api/agent/deployments/{id}/report"),
            Some(node),
            Some(json!({"status": "succeeded"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    id
}

#[tokio::test]
async fn concurrent_pushes_through_two_replicas_serialize() {
    const ROUNDS: usize = 6;
    let c = Cluster::start("pushes", 2);
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    // Only pushes trigger here: no poll tick reconciles meanwhile.
    a.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    let project = a
        .ok(
            Method::POST,
            "/api/projects",
            Some(
                json!({"name": "web", "project_type": "image", "image_ref": "registry.test/web:1",
                        "container_port": 8080, "auto_deploy_enabled": true}),
            ),
        )
        .await;
    let id = project["id"].as_i64().unwrap();
    let token = project["push_token"].as_str().unwrap();
    let node = b
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Made through A, in the shared repo dir.
    let bare = c.repo_dir().join(format!("{id}.git"));
    assert!(
        bare.is_dir(),
        "the hosted repository is in AUTODEPLOY_REPO_DIR"
    );

    let work = c.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wa = clone_of(&remote(a, id, token), &work.join("a"));
    let wb = clone_of(&remote(b, id, token), &work.join("b"));
    git(&wa, &["commit", "-q", "--allow-empty", "-m", "first"]);
    push(&wa).unwrap();
    let mut accepted = vec![git(&wa, &["rev-parse", "HEAD"])];
    finish(a, &node).await;

    for round in 0..ROUNDS {
        // Both start from the same head and race to move it.
        for (w, who) in [(&wa, "a"), (&wb, "b")] {
            git(w, &["fetch", "-q", "origin"]);
            git(w, &["reset", "-q", "--hard", "origin/main"]);
            let message = format!("round {round} through {who}");
            git(w, &["commit", "-q", "--allow-empty", "-m", &message]);
        }
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [wa.clone(), wb.clone()]
            .into_iter()
            .map(|w| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    (git(&w, &["rev-parse", "HEAD"]), push(&w))
                })
            })
            .collect();
        let results: Vec<(String, Result<(), String>)> =
            racers.into_iter().map(|r| r.join().unwrap()).collect();
        let won: Vec<&String> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(sha, _)| sha)
            .collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one push wins: {results:?}"
        );
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(
                    e.contains("rejected") || e.contains("failed to update ref"),
                    "round {round}: the losing push is refused cleanly: {e}"
                );
            }
        }
        accepted.push(won[0].clone());
        let on = if round % 2 == 0 { a } else { b };
        finish(on, &node).await;
    }

    // Each accepted push deployed once, in order; the repository is whole
    // and ends at the last accepted push.
    let deployments = a.deployments(id).await;
    let mut targets: Vec<String> = deployments
        .iter()
        .map(|d| d["target_commit"].as_str().unwrap().to_string())
        .collect();
    targets.reverse();
    assert_eq!(targets, accepted, "{deployments:?}");
    assert!(deployments.iter().all(|d| d["source"] == "auto-push"));
    git(&bare, &["fsck", "--strict"]);
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]),
        *accepted.last().unwrap()
    );
}

#[tokio::test]
async fn claims_through_two_replicas_hand_each_deployment_to_one_node() {
    const PROJECTS: usize = 24;
    const NODES: usize = 4;
    let c = Cluster::start("claims", 2);
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let mut queued = Vec::new();
    for i in 0..PROJECTS {
        let d = if i % 2 == 0 { a } else { b };
        let id = d
            .create_project(json!({"name": format!("p{i}"), "project_type": "image",
                                   "image_ref": "registry.test/app:1", "container_port": 8080}))
            .await;
        let dep = d
            .ok(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await;
        queued.push((id, dep["id"].as_i64().unwrap()));
    }
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let node = a
            .ok(
                Method::POST,
                "/api/nodes",
                Some(json!({"name": format!("n{n}")})),
            )
            .await;
        nodes.push((
            node["id"].as_i64().unwrap(),
            node["token"].as_str().unwrap().to_string(),
        ));
    }

    // Every node claims through both replicas at once, until nothing is left.
    let mut claimers = tokio::task::JoinSet::new();
    for (n, (node_id, token)) in nodes.iter().enumerate() {
        for (r, d) in [a, b].into_iter().enumerate() {
            let (url, token, node_id) = (d.url.clone(), token.clone(), *node_id);
            claimers.spawn(async move {
                let http = reqwest::Client::new();
                let mut got = Vec::new();
                loop {
                    let resp = http
                        .post(format!("{url}/api/agent/claim"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    match resp.status() {
                        StatusCode::NO_CONTENT => return got,
                        StatusCode::OK => {
                            let v: Value = resp.json().await.unwrap();
                            assert_eq!(v["deployment"]["node_id"], node_id, "{v}");
                            got.push((v["deployment"]["id"].as_i64().unwrap(), node_id));
                        }
                        other => panic!(
                            "node {n} via replica {r}: {other} {}",
                            resp.text().await.unwrap_or_default()
                        ),
                    }
                }
            });
        }
    }
    let mut claimed: Vec<(i64, i64)> = Vec::new();
    while let Some(got) = claimers.join_next().await {
        claimed.extend(got.unwrap());
    }
    let mut ids: Vec<i64> = claimed.iter().map(|(d, _)| *d).collect();
    ids.sort();
    let mut expected: Vec<i64> = queued.iter().map(|(_, d)| *d).collect();
    expected.sort();
    assert_eq!(ids, expected, "each deployment claimed exactly once");

    // The database agrees: each one runs on the node that claimed it.
    let by_deployment: std::collections::BTreeMap<i64, i64> = claimed.into_iter().collect();
    for (project, dep) in queued {
        let deployments = b.deployments(project).await;
        assert_eq!(deployments.len(), 1, "{deployments:?}");
        assert_eq!(deployments[0]["id"], dep);
        assert_eq!(deployments[0]["status"], "running");
        assert_eq!(deployments[0]["node_id"], by_deployment[&dep]);
    }
}
