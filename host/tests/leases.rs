//! Replicas on one database share the git poll: a project is claimed under
//! a lease, at most once per interval, and a lease a dead replica holds is
//! taken over once it expires. The store's claims are checked directly on
//! fixed times; then two real daemons on one database poll repositories
//! served by `git daemon`, whose own log shows each lookup. The database is
//! a SQLite file, or PostgreSQL with `AUTODEPLOY_TEST_DATABASE=postgres`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autodeploy::store::{GitSource, LeaseClaim, ProjectFields, ProjectType, SqlStore, Store};
use common::daemon::{Daemon, temp_dir};
use common::git::{bare_with_commit, free_port};
use common::wait_until;
use reqwest::Method;
use serde_json::json;

fn external(name: &str) -> ProjectFields {
    ProjectFields {
        name: name.into(),
        project_type: ProjectType::Image,
        git_source: GitSource::External,
        git_url: Some(format!("file:///nowhere/{name}.git")),
        git_branch: "main".into(),
        compose_file_path: "docker-compose.yml".into(),
        expose_service: None,
        expose_port: None,
        auto_deploy_enabled: true,
        image_ref: Some("registry.test/app:1".into()),
        container_port: Some(8080),
        labels: Default::default(),
        deploy: Default::default(),
    }
}

fn now() -> i64 {
    autodeploy::store::now()
}

/// A due claim by `owner`: projects not checked within `interval` seconds.
fn due(owner: &str, interval: i64, limit: i64) -> LeaseClaim {
    LeaseClaim {
        owner: owner.into(),
        due_before: Some(now() - interval),
        checked_at: now(),
        lease_until: now() + interval,
        limit,
    }
}

async fn ids(store: &SqlStore, claim: &LeaseClaim) -> Vec<i64> {
    store
        .claim_projects(claim, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect()
}

#[tokio::test]
async fn a_claim_skips_live_leases_and_checked_projects_and_takes_expired_leases() {
    let url = common::db::database_url("leases-store");
    let store = SqlStore::connect(&url).await.unwrap();
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(
            store
                .create_project(&external(&format!("p{i}")), None, None)
                .await
                .unwrap()
                .id,
        );
    }

    // Batches in id order; a project claimed by one replica is not the
    // other's, and one checked within the interval is nobody's.
    let a = ids(&store, &due("replica-a", 60, 3)).await;
    assert_eq!(a, all[..3]);
    let b = ids(&store, &due("replica-b", 60, 10)).await;
    assert_eq!(b, all[3..]);
    assert!(ids(&store, &due("replica-b", 60, 10)).await.is_empty());
    // Due again, but leased: still nobody else's.
    assert!(ids(&store, &due("replica-c", -1, 10)).await.is_empty());

    // A tick asked for through the API takes any project not leased by
    // another replica, and leaves the schedule alone.
    let anything = |owner: &str, lease_until: i64| LeaseClaim {
        owner: owner.into(),
        due_before: None,
        checked_at: now(),
        lease_until,
        limit: 10,
    };
    assert_eq!(
        ids(&store, &anything("replica-b", now() + 60)).await,
        all[3..]
    );

    // Replica a dies: its leases run to their end (here: already over) and
    // replica b takes the projects.
    store.release_projects("replica-b", None).await.unwrap();
    assert_eq!(ids(&store, &anything("replica-a", now() - 1)).await, all);
    assert_eq!(ids(&store, &anything("replica-b", now() + 60)).await, all);
    // A renewed lease (a tick still running) keeps the projects its own:
    // b's leases, run out, are renewed, so a takes nothing.
    assert_eq!(ids(&store, &anything("replica-b", now() - 1)).await, all);
    assert_eq!(
        store.renew_leases("replica-b", now() + 60).await.unwrap(),
        all.len() as u64
    );
    assert!(
        ids(&store, &anything("replica-a", now() + 60))
            .await
            .is_empty()
    );
    // Paging: a claim starts above the cursor it is given.
    let after = store
        .claim_projects(&anything("replica-b", now() + 60), all[1])
        .await
        .unwrap();
    let after: Vec<i64> = after.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(after, all[2..]);

    // Released, the projects are free again; still checked within the
    // interval, so not due; due once the interval has passed.
    store.release_projects("replica-b", None).await.unwrap();
    assert!(ids(&store, &due("replica-a", 60, 10)).await.is_empty());
    assert_eq!(ids(&store, &due("replica-a", -1, 10)).await, all);
}

/// `git daemon --verbose` over `base`, each upload-pack request stamped
/// with the moment its log line arrived.
struct LoggedDaemon {
    /// `git` and the `git-daemon` it runs: ended as a group when dropped.
    _child: common::reap::Proc,
    port: u16,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl LoggedDaemon {
    fn start(base: &Path) -> LoggedDaemon {
        let port = free_port();
        let mut child = common::reap::spawn(
            Command::new("git")
                .args(["daemon", "--reuseaddr", "--export-all", "--verbose"])
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("run git daemon");
        let stderr = child.stderr.take().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, repo)) = line.split_once("Request upload-pack for '") {
                    let repo = repo.trim_end_matches('\'').to_string();
                    sink.lock().unwrap().push((Instant::now(), repo));
                }
            }
        });
        common::wait_until_blocking("git daemon listens", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        LoggedDaemon {
            _child: child,
            port,
            requests,
        }
    }

    /// Each repository's lookups, in order.
    fn lookups(&self) -> BTreeMap<String, Vec<Instant>> {
        let mut by_repo: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for (at, repo) in self.requests.lock().unwrap().iter() {
            by_repo.entry(repo.clone()).or_default().push(*at);
        }
        by_repo
    }
}

const INTERVAL: u64 = 10;
const REPOS: usize = 12;

async fn git_poll_ticks(d: &Daemon) -> u64 {
    d.ok(Method::GET, "/api/status", None).await["loops"]["git-poll"]["ticks"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn two_daemons_on_one_database_look_each_project_up_once_per_interval() {
    let dir = temp_dir("leases-daemons");
    let repos = dir.join("repos");
    for i in 0..REPOS {
        bare_with_commit(&repos.join(format!("r{i}.git")));
    }
    let git = LoggedDaemon::start(&repos);
    let url = common::db::database_url("leases-daemons");
    let env = [("DATABASE_URL", url.as_str())];
    let a = Daemon::start_with(&dir.join("a"), &[], &env);
    // The interval is in the database: the second replica reads it there.
    a.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": INTERVAL})),
    )
    .await;
    let b = Daemon::start_with(&dir.join("b"), &[], &env);
    let mut projects = Vec::new();
    for i in 0..REPOS {
        projects.push(
            a.create_project(json!({"name": format!("r{i}"), "project_type": "image",
                "image_ref": "registry.test/app:1", "container_port": 8080,
                "git_source": "external", "git_url": format!("git://127.0.0.1:{}/r{i}.git", git.port),
                "auto_deploy_enabled": true}))
                .await,
        );
    }

    // Both replicas tick on their own, a few intervals each.
    let (a0, b0) = (git_poll_ticks(&a).await, git_poll_ticks(&b).await);
    wait_until(
        "both replicas ran four more poll ticks",
        Duration::from_secs(240),
        || async { git_poll_ticks(&a).await >= a0 + 4 && git_poll_ticks(&b).await >= b0 + 4 },
    )
    .await;
    a.stop();
    b.stop();

    let lookups = git.lookups();
    for i in 0..REPOS {
        let repo = format!("/r{i}.git");
        let times = lookups.get(&repo).cloned().unwrap_or_default();
        // Four ticks of each replica cover at least three intervals.
        assert!(
            times.len() >= 3,
            "{repo} was looked up {} times in four ticks of each replica",
            times.len()
        );
        // A project is due one interval after the tick that checked it
        // began (whole seconds): the next lookup comes at least an interval
        // less a second (and the lookup's own delay) later.
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_secs(INTERVAL - 2),
                "{repo} was looked up twice within {gap:?}; the interval is {INTERVAL}s \
                 (all lookups: {:?})",
                times.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test]
async fn one_replica_leads_a_loop_at_a_time_on_postgresql() {
    let url = common::db::database_url("leases-leader");
    let (a, b) = (
        SqlStore::connect(&url).await.unwrap(),
        SqlStore::connect(&url).await.unwrap(),
    );
    let mut first = a.lead("image-watch").await.unwrap().expect("a leads");
    assert!(first.still_leads().await);
    let second = b.lead("image-watch").await.unwrap();
    if common::db::postgres() {
        assert!(second.is_none(), "b leads while a does");
        // Another role is led apart.
        assert!(b.lead("another-loop").await.unwrap().is_some());
        // The leader goes (its connection closes): the lock is free for b.
        drop(first);
        wait_until("b takes the lead", Duration::from_secs(30), || async {
            b.lead("image-watch").await.unwrap().is_some()
        })
        .await;
    } else {
        // One process owns a SQLite file: it always leads.
        assert!(second.is_some());
    }
}
