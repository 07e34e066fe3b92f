//! The cluster: 3 `autodeploy serve` replicas on one PostgreSQL database,
//! set up as the README's "Running several replicas" says (one database,
//! repo dir, secret key and admin token; a data dir and port each). 300
//! external repositories are served by one `git daemon`, 30 hosted
//! repositories are pushed to through every replica, their compose files
//! name images on a local `docker-registry`, and three simulated nodes
//! claim deployments through any replica. Twice, a replica is killed with
//! SIGKILL while it has head lookups in flight (mid-tick), then restarted.
//!
//! The run happens once per test binary; each test below checks one thing
//! about it, so a failure names what broke:
//! - every change (a commit, a push, a moved digest) deployed exactly once;
//! - no deployment handed to two nodes;
//! - no project looked up twice in one poll interval (the git daemon's
//!   log: any two lookups of a project an interval apart, but for a pair
//!   around a kill, when the killed replica's leases run out);
//! - registry HEADs per image-watch tick equal the distinct images (the
//!   registry's log);
//! - no replica panicked.
//!
//! Needs PostgreSQL, so its tests are ignored in a plain `cargo test`: run
//! them inside `pg_virtualenv` with `AUTODEPLOY_TEST_DATABASE=postgres` and
//! `--include-ignored` (scripts/test.sh does).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::{ADMIN, temp_dir};
use common::git::{LoggedGitDaemon, UploadPack, advance, bare_with_file, epoch_ms};
use common::registry::{ManifestHead, TestRegistry};
use common::replicas::{Replica, Shared};
use common::wait_until;
use serde_json::{Value, json};

const REPLICAS: usize = 3;
const EXTERNAL: usize = 300;
const HOSTED: usize = 30;
const IMAGES: usize = 6;
/// The shortest poll interval the daemon accepts.
const POLL_SECONDS: u64 = 10;
/// Lowered below the usual minimum through the test-only variable.
const IMAGE_SECONDS: u64 = 5;
/// Bounds each wait; generous, since five builds may share the 2 cores.
const WAIT: Duration = Duration::from_secs(300);

/// A change the run made, and so one deployment it must cause.
#[derive(Debug, Clone)]
enum Change {
    /// The branch head of an external repository (`auto-poll`) or a push
    /// to a hosted one (`auto-push`), the project's first commit included.
    Commit { project: i64, sha: String },
    /// A tag a hosted compose project uses moved to `digest`.
    Image {
        project: i64,
        image: String,
        digest: String,
    },
}

impl Change {
    fn project(&self) -> i64 {
        match self {
            Change::Commit { project, .. } | Change::Image { project, .. } => *project,
        }
    }

    /// Whether deployment `d` (its JSON) is a deployment of this change.
    fn matches(&self, d: &Value) -> bool {
        let fed_by = |source: &str| {
            d["sources"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == source))
        };
        match self {
            Change::Commit { sha, .. } => {
                d["target_commit"] == sha.as_str() && (fed_by("auto-poll") || fed_by("auto-push"))
            }
            Change::Image { image, digest, .. } => {
                fed_by("auto-image") && d["target_digests"][image] == digest.as_str()
            }
        }
    }
}

/// One claim a node got, as the claim answer showed it.
#[derive(Debug, Clone)]
struct Claimed {
    node: usize,
    replica: usize,
    deployment: Value,
}

/// What the run left to check, as plain data: every server is gone by then.
struct Outcome {
    changes: Vec<Change>,
    /// Every project's deployments at the end, by project id.
    deployments: BTreeMap<i64, Vec<Value>>,
    claims: Vec<Claimed>,
    /// The git daemon's upload-pack requests, and the project behind each
    /// repository path.
    lookups: Vec<UploadPack>,
    external: BTreeMap<String, i64>,
    /// (replica, when) of each SIGKILL.
    kills: Vec<(usize, u64)>,
    /// Manifest HEADs the replicas made, and the image names they may ask for.
    heads: Vec<ManifestHead>,
    images: BTreeSet<String>,
    /// When every hosted project's compose file (so every image) was in place.
    images_complete_ms: u64,
    /// Lines of replica logs that report a panic.
    panics: Vec<String>,
    /// Times a replica took the image watch's leadership, over the run.
    leaderships: usize,
}

/// The run, once per test binary; a failed run fails every test with its
/// message rather than running again.
fn outcome() -> Arc<Outcome> {
    static RUN: Mutex<Option<Result<Arc<Outcome>, String>>> = Mutex::new(None);
    let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    let result = run.get_or_insert_with(|| {
        std::panic::catch_unwind(|| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            Arc::new(rt.block_on(scenario()))
        })
        .map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the cluster run panicked".into())
        })
    });
    match result {
        Ok(o) => o.clone(),
        Err(e) => panic!("the cluster run failed: {e}"),
    }
}

/// Panics unless the tests were asked to use PostgreSQL: replicas cannot
/// share a SQLite file.
fn require_postgres() {
    let asked = std::env::var("AUTODEPLOY_TEST_DATABASE").unwrap_or_default();
    assert!(
        asked == "postgres",
        "the cluster test runs 3 replicas on one PostgreSQL database: run it inside \
         pg_virtualenv with AUTODEPLOY_TEST_DATABASE=postgres (AUTODEPLOY_TEST_DATABASE is {asked:?}), \
         e.g. pg_virtualenv sh -c 'AUTODEPLOY_TEST_DATABASE=postgres cargo test -p autodeploy --test cluster'"
    );
}

/// The API of the whole cluster as the test and the nodes see it: one URL
/// per replica, and a gate per replica that a kill closes, so no node
/// request is cut off half-way (a load balancer drains a replica the same
/// way before it is stopped).
#[derive(Clone)]
struct Api {
    urls: Arc<Vec<String>>,
    gates: Arc<Vec<tokio::sync::RwLock<()>>>,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.urls[replica]))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// An admin call to `replica` that must succeed.
    async fn ok(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        match self.call(replica, method.clone(), path, ADMIN, body).await {
            Ok((s, v)) if (200..300).contains(&s) => v,
            other => panic!("replica {replica}: {method} {path}: {other:?}"),
        }
    }

    /// Every item of a list endpoint, page after page (each page a JSON
    /// array; `X-Next-Cursor` names the next one).
    async fn list(&self, replica: usize, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => format!("{path}{sep}limit=500&cursor={c}"),
                None => format!("{path}{sep}limit=500"),
            };
            let resp = self
                .http
                .get(format!("{}{page}", self.urls[replica]))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap_or_else(|e| panic!("replica {replica}: GET {page}: {e}"));
            assert!(
                resp.status().is_success(),
                "replica {replica}: GET {page}: {}",
                resp.status()
            );
            cursor = resp
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let rows: Vec<Value> = resp.json().await.expect("a JSON array");
            items.extend(rows);
            if cursor.is_none() {
                return items;
            }
        }
    }
}

/// A node: heartbeats, claims through the replicas in turn (any replica
/// serves any node), and reports each claim succeeded through the replica
/// that handed it out. Polls every 100 ms as an agent does.
async fn node(
    api: Api,
    index: usize,
    token: String,
    claims: Arc<Mutex<Vec<Claimed>>>,
    stop: Arc<AtomicBool>,
) {
    let mut turn = index;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::SeqCst) {
        turn = (turn + 1) % REPLICAS;
        let Ok(_open) = api.gates[turn].try_read() else {
            continue;
        };
        let post = reqwest::Method::POST;
        let _ = api
            .call(turn, post.clone(), "/api/agent/heartbeat", &token, None)
            .await;
        match api
            .call(turn, post.clone(), "/api/agent/claim", &token, None)
            .await
        {
            Ok((200, claim)) => {
                let id = claim["deployment"]["id"].as_i64().expect("a deployment id");
                let report =
                    json!({"status": "succeeded", "log_tail": "deployed by the cluster test"});
                let path = format!("/api/agent/deployments/{id}/report");
                match api.call(turn, post, &path, &token, Some(report)).await {
                    Ok((200, _)) => {}
                    other => panic!(
                        "node {index}: report of deployment {id} via replica {turn}: {other:?}"
                    ),
                }
                claims.lock().unwrap().push(Claimed {
                    node: index,
                    replica: turn,
                    deployment: claim["deployment"].clone(),
                });
                // Claim the next one at once.
                continue;
            }
            Ok((204, _)) | Err(_) => {}
            Ok(other) => panic!("node {index}: claim via replica {turn}: {other:?}"),
        }
        drop(_open);
        tick.tick().await;
    }
}

/// Waits until some running replica (other than `not`, when it can be
/// helped) has head lookups in flight, then kills it with SIGKILL, closing
/// its gate first, and restarts it. Returns (replica, when killed).
async fn kill_mid_tick(replicas: &mut [Replica], api: &Api, not: Option<usize>) -> (usize, u64) {
    let mut victim = None;
    let started = std::time::Instant::now();
    wait_until("a replica has head lookups in flight", WAIT, || {
        // Prefer another replica than last time for a minute, then any.
        let any = started.elapsed() > Duration::from_secs(60);
        victim = replicas
            .iter()
            .filter(|r| any || Some(r.index) != not)
            .find(|r| r.lookups_in_flight() > 0)
            .map(|r| r.index);
        std::future::ready(victim.is_some())
    })
    .await;
    let k = victim.unwrap();
    let at = {
        let _closed = api.gates[k].write().await;
        // Blocks this worker thread for the restart, not the nodes' tasks.
        tokio::task::block_in_place(|| {
            let at = replicas[k].kill9();
            replicas[k].restart();
            at
        })
    };
    (k, at)
}

/// Pushes `compose` as docker-compose.yml of hosted project `id` through
/// `replica`; returns the pushed commit.
fn push_compose(work: &Path, url: &str, id: i64, token: &str, compose: &str) -> String {
    tokio::task::block_in_place(|| common::git::push_compose(work, url, id, token, compose))
}

/// Changes not yet deployed: no claim a node got matches them.
fn undeployed(changes: &[Change], claims: &Mutex<Vec<Claimed>>) -> Vec<Change> {
    let claims = claims.lock().unwrap();
    changes
        .iter()
        .filter(|c| {
            !claims
                .iter()
                .any(|k| k.deployment["project_id"] == c.project() && c.matches(&k.deployment))
        })
        .cloned()
        .collect()
}

async fn wait_deployed(what: &str, changes: &[Change], claims: &Mutex<Vec<Claimed>>) {
    let mut left = Vec::new();
    let waited = tokio::time::timeout(
        WAIT,
        wait_until(what, WAIT + Duration::from_secs(1), || {
            left = undeployed(changes, claims);
            std::future::ready(left.is_empty())
        }),
    )
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {WAIT:?} waiting until {what}: {} not deployed, e.g. {:?}",
        left.len(),
        left.iter().take(5).collect::<Vec<_>>()
    );
}

async fn scenario() -> Outcome {
    require_postgres();
    let dir = temp_dir("cluster");
    let database_url = common::db::database_url("cluster");

    // 300 external repositories behind one git daemon.
    let external_dir = dir.join("external");
    let mut heads = Vec::new();
    for i in 0..EXTERNAL {
        heads.push(bare_with_file(
            &external_dir.join(format!("r{i:03}.git")),
            &format!("repository {i}, first"),
        ));
    }
    let gitd = LoggedGitDaemon::start(&external_dir);

    // The images, on a registry that logs every request.
    let reg = TestRegistry::start_logged(&dir.join("registry"));
    for k in 0..IMAGES {
        reg.push(&format!("img{k}"), "1", &format!("image {k}, first"));
    }
    let image = |k: usize| format!("{}/img{}:1", reg.addr, k % IMAGES);

    // The replicas: the first alone sets the intervals, then the others.
    let mut shared = Shared::new(database_url, &dir);
    shared.extra_env.push((
        autodeploy::serve::TEST_ONLY_IMAGE_WATCH_MIN.to_string(),
        IMAGE_SECONDS.to_string(),
    ));
    let mut replicas = vec![Replica::start(0, &dir, &shared)];
    let api = Api {
        urls: Arc::new(Vec::new()),
        gates: Arc::new(
            (0..REPLICAS)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
        ),
        // A fresh connection per request: a kept-alive one the replica is
        // just closing (its idle timeout) fails the request that reuses it.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    };
    let first = Api {
        urls: Arc::new(vec![replicas[0].url.clone()]),
        ..api.clone()
    };
    first
        .ok(
            0,
            reqwest::Method::PUT,
            "/api/settings",
            Some(json!({
                "auto_deploy_poll_interval_seconds": POLL_SECONDS,
                "auto_deploy_image_watch_interval_seconds": IMAGE_SECONDS,
            })),
        )
        .await;
    for i in 1..REPLICAS {
        replicas.push(Replica::start(i, &dir, &shared));
    }
    let api = Api {
        urls: Arc::new(replicas.iter().map(|r| r.url.clone()).collect()),
        ..api
    };

    // Three nodes, each made through another replica.
    let claims = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut nodes = Vec::new();
    for n in 0..REPLICAS {
        let made = api
            .ok(
                n,
                reqwest::Method::POST,
                "/api/nodes",
                Some(json!({"name": format!("node-{n}")})),
            )
            .await;
        let token = made["token"].as_str().expect("a node token").to_string();
        nodes.push(tokio::spawn(node(
            api.clone(),
            n,
            token,
            claims.clone(),
            stop.clone(),
        )));
    }

    // The projects, created through every replica: each first commit is a
    // change to deploy.
    let mut changes = Vec::new();
    let mut external = BTreeMap::new();
    for (i, sha) in heads.iter().enumerate() {
        let repo = format!("/r{i:03}.git");
        let made = api
            .ok(
                i % REPLICAS,
                reqwest::Method::POST,
                "/api/projects",
                Some(json!({
                    "name": format!("external-{i:03}"),
                    // A kind the agents run and the image watch ignores.
                    "project_type": "image",
                    "image_ref": "example.com/app:1",
                    "container_port": 8080,
                    "git_source": "external",
                    "git_url": gitd.url(&repo),
                    "git_branch": "main",
                    "auto_deploy_enabled": true,
                })),
            )
            .await;
        let id = made["id"].as_i64().expect("a project id");
        external.insert(repo, id);
        changes.push(Change::Commit {
            project: id,
            sha: sha.clone(),
        });
    }
    // Each hosted project is created through one replica and pushed to
    // through another: the repo dir is shared. Its compose file names two
    // of the images, so every image is used.
    let mut hosted = Vec::new();
    for h in 0..HOSTED {
        let made = api
            .ok(
                h % REPLICAS,
                reqwest::Method::POST,
                "/api/projects",
                Some(json!({
                    "name": format!("hosted-{h:02}"),
                    "project_type": "compose",
                    "expose_service": "web",
                    "expose_port": 80,
                    "auto_deploy_enabled": true,
                })),
            )
            .await;
        let id = made["id"].as_i64().expect("a project id");
        let token = made["push_token"]
            .as_str()
            .expect("a push token")
            .to_string();
        let compose = |rev: &str| {
            format!(
                "# {rev}\nservices:\n  web:\n    image: {}\n  worker:\n    image: {}\n",
                image(h),
                image(h + 1)
            )
        };
        let work = dir.join("work").join(format!("hosted-{h:02}"));
        let sha = push_compose(
            &work,
            &replicas[(h + 1) % REPLICAS].url,
            id,
            &token,
            &compose("first"),
        );
        changes.push(Change::Commit { project: id, sha });
        hosted.push((h, id, token, work, compose("second")));
    }
    let images_complete_ms = epoch_ms();

    // Fault 1: a replica dies in the middle of the first ticks.
    let first_kill = kill_mid_tick(&mut replicas, &api, None).await;
    wait_deployed("every first commit is deployed", &changes, &claims).await;

    // Moves: 100 external branches, a second push to every hosted project
    // (through a third replica).
    let mut moved = Vec::new();
    for i in 0..100 {
        let sha = advance(
            &external_dir.join(format!("r{i:03}.git")),
            &format!("repository {i}, second"),
        );
        moved.push(Change::Commit {
            project: external[&format!("/r{i:03}.git")],
            sha,
        });
    }
    for (h, id, token, work, compose) in &hosted {
        let sha = push_compose(work, &replicas[(h + 2) % REPLICAS].url, *id, token, compose);
        moved.push(Change::Commit { project: *id, sha });
    }
    changes.extend(moved.iter().cloned());
    wait_deployed("the moved commits are deployed", &moved, &claims).await;

    // Digests move only once every hosted project has recorded its first
    // ones (a first sighting never deploys).
    wait_until(
        "every hosted project recorded its image digests",
        WAIT,
        || {
            let api = api.clone();
            let ids: Vec<i64> = hosted.iter().map(|(_, id, ..)| *id).collect();
            async move {
                let projects = api.list(0, "/api/projects").await;
                let seeded = projects
                    .iter()
                    .filter(|p| ids.contains(&p["id"].as_i64().unwrap_or_default()))
                    .filter(|p| {
                        p["last_tracked_image_digests"]
                            .as_object()
                            .map_or(0, |m| m.len())
                            == 2
                    })
                    .count();
                seeded == ids.len()
            }
        },
    )
    .await;
    let mut retagged = Vec::new();
    for k in [0, 3] {
        let digest = tokio::task::block_in_place(|| {
            reg.push(&format!("img{k}"), "1", &format!("image {k}, second"))
        });
        for (h, id, ..) in &hosted {
            if h % IMAGES == k || (h + 1) % IMAGES == k {
                retagged.push(Change::Image {
                    project: *id,
                    image: image(k),
                    digest: digest.clone(),
                });
            }
        }
    }
    changes.extend(retagged.iter().cloned());

    // Fault 2: another replica dies mid-tick; then 100 more branches move.
    let second_kill = kill_mid_tick(&mut replicas, &api, Some(first_kill.0)).await;
    let mut later = Vec::new();
    for i in 100..200 {
        let sha = advance(
            &external_dir.join(format!("r{i:03}.git")),
            &format!("repository {i}, second"),
        );
        later.push(Change::Commit {
            project: external[&format!("/r{i:03}.git")],
            sha,
        });
    }
    changes.extend(later.iter().cloned());
    wait_deployed(
        "every moved digest and commit is deployed",
        &changes,
        &claims,
    )
    .await;
    // One more whole interval of lookups after the last deploy, so the
    // lookup counts cover the cluster after both restarts.
    let settled = epoch_ms();
    let mut looked = 0;
    wait_until("one more poll interval of lookups", WAIT, || {
        looked = gitd
            .requests()
            .iter()
            .filter(|r| r.at_ms > settled + POLL_SECONDS * 1000)
            .count();
        std::future::ready(looked > 0)
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for n in nodes {
        n.await.expect("a node task ended cleanly");
    }
    let mut deployments = BTreeMap::new();
    for id in external.values().chain(hosted.iter().map(|(_, id, ..)| id)) {
        deployments.insert(
            *id,
            api.list(0, &format!("/api/projects/{id}/deployments"))
                .await,
        );
    }
    let panics = replicas
        .iter()
        .flat_map(|r| {
            r.log()
                .lines()
                .filter(|l| l.contains("panicked"))
                .map(|l| format!("replica {}: {l}", r.index))
                .collect::<Vec<_>>()
        })
        .collect();
    let leaderships = replicas
        .iter()
        .map(|r| r.log().matches("image watch: this replica leads").count())
        .sum();
    for r in &mut replicas {
        r.stop();
    }
    let lookups = gitd.requests();
    gitd.stop();
    let images = (0..IMAGES).map(|k| format!("img{k}")).collect();
    // skopeo's pushes HEAD manifests too; only the replicas' count.
    let heads = reg
        .manifest_heads()
        .into_iter()
        .filter(|h| !h.user_agent.starts_with("containers/") && !h.user_agent.contains("skopeo"))
        .collect();
    let claims = claims.lock().unwrap().clone();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        changes,
        deployments,
        claims,
        lookups,
        external,
        kills: vec![first_kill, second_kill],
        heads,
        images,
        images_complete_ms,
        panics,
        leaderships,
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh runs it inside pg_virtualenv"]
fn every_change_is_deployed_exactly_once() {
    let o = outcome();
    let mut wrong = Vec::new();
    for c in &o.changes {
        let n = o.deployments[&c.project()]
            .iter()
            .filter(|d| c.matches(d))
            .count();
        if n != 1 {
            wrong.push(format!("{c:?} has {n} deployments"));
        }
    }
    for (project, list) in &o.deployments {
        for d in list {
            if !o
                .changes
                .iter()
                .any(|c| c.project() == *project && c.matches(d))
            {
                wrong.push(format!(
                    "project {project}: a deployment no change explains: {d}"
                ));
            }
            if d["status"] != "succeeded" {
                wrong.push(format!(
                    "project {project}: deployment {} is {}",
                    d["id"], d["status"]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} changes or deployments are wrong; first ones:\n{}",
        wrong.len(),
        o.changes.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh runs it inside pg_virtualenv"]
fn no_deployment_is_handed_to_two_nodes() {
    let o = outcome();
    let mut by_id: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    for c in &o.claims {
        by_id
            .entry(c.deployment["id"].as_i64().unwrap())
            .or_default()
            .push((c.node, c.replica));
    }
    let twice: Vec<_> = by_id.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "deployments claimed more than once, as (node, replica): {twice:?}"
    );
    let replicas: BTreeSet<usize> = o.claims.iter().map(|c| c.replica).collect();
    assert_eq!(
        replicas.len(),
        REPLICAS,
        "claims went through every replica"
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh runs it inside pg_virtualenv"]
fn no_project_is_looked_up_twice_in_one_interval() {
    let o = outcome();
    let interval = POLL_SECONDS * 1000;
    let mut by_repo: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for l in &o.lookups {
        by_repo.entry(l.repo.as_str()).or_default().push(l.at_ms);
    }
    // Every upload-pack request here is a branch-head lookup by a poller:
    // the external projects are of a kind the image watch does not read,
    // the nodes are simulated (no checkout) and no tick is asked for
    // through the API. A replica claims a project only when its lease is
    // free (a running tick renews it) and no replica stamped it checked
    // within the interval; a tick stamps its projects again when it ends,
    // after its last lookup. So two lookups of a project are at least an
    // interval apart, less the stamp's rounding down to whole seconds and
    // the time this test's log reader takes to see a line (SLACK). The
    // one exception: a replica killed mid-tick may have looked a project
    // up without stamping it; its lease runs out and another looks again,
    // so a pair around a kill may be closer. Its lookups run in child
    // processes, which SIGKILL does not reach: one in flight at the kill
    // still reaches the daemon after it (seen 1.5 s later under load), so
    // the first of such a pair may come up to an interval after the kill.
    const SLACK: u64 = 1500;
    let mut close = Vec::new();
    for (repo, project) in &o.external {
        let times = by_repo.get(repo.as_str()).cloned().unwrap_or_default();
        assert!(
            times.len() >= 2,
            "project {project} ({repo}) was looked up {} times: polling must reach every project",
            times.len()
        );
        for pair in times.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let straddles_kill = o
                .kills
                .iter()
                .any(|(_, at)| a <= *at + interval && *at <= b);
            if b - a + SLACK < interval && !straddles_kill {
                close.push(format!(
                    "project {project} ({repo}): lookups at {a} and {b} ms, {:.1} s apart",
                    (b - a) as f64 / 1000.0
                ));
            }
        }
    }
    println!(
        "lookups: {} in all over {} projects",
        o.lookups.len(),
        o.external.len()
    );
    assert!(
        close.is_empty(),
        "{} pairs of lookups of one project closer than the {POLL_SECONDS} s interval \
         (kills at {:?} ms); first ones:\n{}",
        close.len(),
        o.kills,
        close
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let unknown: BTreeSet<&str> = o
        .lookups
        .iter()
        .map(|l| l.repo.as_str())
        .filter(|r| !o.external.contains_key(*r))
        .collect();
    assert!(
        unknown.is_empty(),
        "lookups of unknown repositories: {unknown:?}"
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh runs it inside pg_virtualenv"]
fn registry_heads_per_tick_equal_the_distinct_images() {
    let o = outcome();
    let interval = IMAGE_SECONDS * 1000;
    let mut heads: Vec<&ManifestHead> = o
        .heads
        .iter()
        .filter(|h| h.at_ms > o.images_complete_ms)
        .collect();
    heads.sort_by_key(|h| h.at_ms);
    // A tick's HEADs go out together, one per image; one leader's ticks
    // never overlap, and start an interval apart (back to back when a tick
    // ran longer than the interval, as happens under load). So a HEAD of an
    // image its tick already asked for starts the next tick: a tick that
    // asked for an image twice, or two leaders' ticks at once, leave a
    // partial tick behind.
    let mut ticks: Vec<Vec<&ManifestHead>> = Vec::new();
    for h in heads {
        match ticks.last_mut() {
            Some(t)
                if h.at_ms - t.last().unwrap().at_ms < interval / 2
                    && t.iter().all(|x| x.name != h.name) =>
            {
                t.push(h)
            }
            _ => ticks.push(vec![h]),
        }
    }
    let near_kill = |t: &[&ManifestHead]| {
        o.kills.iter().any(|(_, at)| {
            t[0].at_ms.saturating_sub(interval) <= *at && *at <= t.last().unwrap().at_ms + interval
        })
    };
    let mut wrong = Vec::new();
    let mut whole = 0;
    for t in &ticks {
        let mut per_image: BTreeMap<&str, usize> = BTreeMap::new();
        for h in t {
            *per_image.entry(h.name.as_str()).or_default() += 1;
        }
        let names: BTreeSet<String> = per_image.keys().map(|s| s.to_string()).collect();
        let once = per_image.values().all(|n| *n == 1);
        if once && names == o.images {
            whole += 1;
        } else if !near_kill(t) {
            wrong.push(format!(
                "a tick at {} made {} HEADs: {per_image:?}",
                t[0].at_ms,
                t.len()
            ));
        } else if !names.is_subset(&o.images) {
            // Around a kill the dead leader's tick may be cut short; never
            // an image no project uses.
            wrong.push(format!(
                "a tick at {} around a kill made {} HEADs: {per_image:?}",
                t[0].at_ms,
                t.len()
            ));
        }
    }
    // Two leaders ticking one after the other would each make whole
    // ticks; the HEADs alone cannot tell them from one leader whose ticks
    // ran back to back under load. So the replicas' logs: leadership is
    // taken once at start, and again only when a leader was killed.
    assert!(
        o.leaderships <= 1 + o.kills.len(),
        "the image watch changed leader {} times with {} kills",
        o.leaderships,
        o.kills.len()
    );
    assert!(
        wrong.is_empty(),
        "registry HEADs per tick differ from the {} distinct images ({} ticks): {wrong:#?}",
        o.images.len(),
        ticks.len()
    );
    assert!(
        whole >= 3,
        "at least 3 whole image-watch ticks in the run, saw {whole} of {}",
        ticks.len()
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh runs it inside pg_virtualenv"]
fn no_replica_panicked() {
    let o = outcome();
    assert!(o.panics.is_empty(), "{:#?}", o.panics);
}
