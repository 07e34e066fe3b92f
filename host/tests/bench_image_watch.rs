//! Benchmark, not a test: ignored unless asked for (`bench/image-watch.sh`).
//! 1,000 compose projects using 50 distinct images on a local registry: how
//! many registry requests one tick makes, how long it takes, and what share
//! of the tick's CPU time the policy takes (with the parse-compose memo, and
//! with it emptied first).

mod common;

use std::time::Instant;

use autodeploy::policy::cli::PolicyArgs;
use autodeploy::serve::{ServeArgs, open};
use autodeploy::store::{GitSource, ProjectFields, ProjectType};
use common::registry::TestRegistry;

const PROJECTS: usize = 1000;
const IMAGES: usize = 50;

/// A hosted repository whose main branch holds `compose`.
fn hosted_repo(path: &std::path::Path, compose: &str) {
    let repo = git2::Repository::init_bare(path).unwrap();
    let blob = repo.blob(compose.as_bytes()).unwrap();
    let mut tree = repo.treebuilder(None).unwrap();
    tree.insert("docker-compose.yml", blob, 0o100644).unwrap();
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    let sig = git2::Signature::now("bench", "bench@example.com").unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "compose", &tree, &[])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/image-watch.sh"]
async fn image_watch_tick_over_1000_projects() {
    let dir = common::daemon::temp_dir("bench-image-watch");
    let reg = TestRegistry::start_logged(&dir.join("registry"));
    for i in 0..IMAGES {
        reg.push(&format!("img{i}"), "1", &format!("image {i}"));
    }
    let args = ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        repo_dir: None,
        database_url: None,
        git_timeout_seconds: 30,
        metrics_listen: None,
        http: Default::default(),
        registry: Default::default(),
        git_transport: Default::default(),
    };
    // SAFETY: set before the daemon's threads start.
    unsafe { std::env::set_var("AUTODEPLOY_ADMIN_TOKEN", "bench-admin-token-0123456789") };
    let app = open(
        &args,
        &PolicyArgs {
            policy: None,
            policy_fuel: autodeploy::policy::DEFAULT_FUEL,
            policy_deadline_ms: 30_000,
            policy_memory_mib: 64,
        },
    )
    .await
    .unwrap();
    for i in 0..PROJECTS {
        let fields = ProjectFields {
            name: format!("p{i}"),
            project_type: ProjectType::Compose,
            git_source: GitSource::Hosted,
            git_url: None,
            git_branch: "main".into(),
            compose_file_path: "docker-compose.yml".into(),
            expose_service: Some("s0".into()),
            expose_port: Some(80),
            auto_deploy_enabled: true,
            image_ref: None,
            container_port: None,
            labels: Default::default(),
            deploy: Default::default(),
        };
        let p = app.store.create_project(&fields, None, None).await.unwrap();
        let compose: String = [0, 1, 7]
            .iter()
            .map(|k| {
                format!(
                    "  s{k}:\n    image: {}/img{}:1\n",
                    reg.addr,
                    (i + k) % IMAGES
                )
            })
            .collect();
        // Every file differs (its name line), as real projects' do: the
        // memo cannot share one answer between projects.
        hosted_repo(
            &autodeploy::git::hosted_path(&app.repo_dir, p.id),
            &format!("name: p{i}\nservices:\n{compose}"),
        );
    }
    decide_images_alone(&app, &reg.addr);
    let rounds = [
        ("first (seeds)", false),
        ("second (nothing changed)", false),
        ("third (nothing changed, memo emptied first)", true),
        ("fourth (nothing changed)", false),
    ];
    for (round, empty_memo) in rounds {
        if empty_memo {
            app.policy.memo().clear();
        }
        let memo_before = app.policy.cache_stats().parse_compose;
        let cpu_before = cpu_ns();
        let before = app
            .loops
            .image_watch
            .registry
            .stats()
            .get(&reg.addr)
            .cloned()
            .unwrap_or_default();
        let (heads_before, gets_before) = reg.manifest_requests();
        let started = Instant::now();
        let tick = app.loops.image_watch.tick_now(&app).await.unwrap();
        let took = started.elapsed();
        let cpu_after = cpu_ns();
        let memo = app.policy.cache_stats().parse_compose;
        let after = app.loops.image_watch.registry.stats()[&reg.addr].clone();
        // The registry writes its access log asynchronously.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (heads, gets) = reg.manifest_requests();
        let (heads, gets) = (heads - heads_before, gets - gets_before);
        assert_eq!((tick.projects.len(), tick.lookup_failures), (PROJECTS, 0));
        println!(
            "image watch tick, {PROJECTS} projects, {IMAGES} images, {round}: {took:.2?}; {} distinct lookups; \
             the registry saw {heads} manifest HEADs and {gets} GETs; {} token requests",
            tick.lookups,
            after.token_requests - before.token_requests,
        );
        assert_eq!(
            (heads, gets),
            (IMAGES, 0),
            "one HEAD per distinct image, no GET"
        );
        assert_eq!(after.manifest_heads - before.manifest_heads, IMAGES as u64);
        let (all, policy) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
        println!(
            "  CPU: {:.1} ms in the whole process, {:.1} ms on the policy threads ({:.1} %); \
             parse-compose: {} from the memo, {} run",
            all as f64 / 1e6,
            policy as f64 / 1e6,
            100.0 * policy as f64 / all.max(1) as f64,
            memo.hits - memo_before.hits,
            memo.misses - memo_before.misses,
        );
    }
    // 1,000 repositories: ~150 MB.
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What one decide-images of a tick costs on its own: the policy's floor
/// once parse-compose is memoized.
fn decide_images_alone(app: &autodeploy::app::App, addr: &str) {
    use autodeploy::policy::{Facts, Lookup, Project, ProjectKind};
    let policy = app.policy.current();
    let facts = Facts {
        auto_deploy_master_enabled: true,
        ..Facts::default()
    };
    let images: Vec<String> = [0, 1, 7]
        .iter()
        .map(|k| format!("{addr}/img{k}:1"))
        .collect();
    let digest = |k: usize| format!("sha256:{k:064x}");
    let prior: std::collections::BTreeMap<String, String> = images
        .iter()
        .enumerate()
        .map(|(k, i)| (i.clone(), digest(k)))
        .collect();
    let lookups: std::collections::BTreeMap<String, Lookup> = images
        .iter()
        .enumerate()
        .map(|(k, i)| (i.clone(), Lookup::Digest(digest(k))))
        .collect();
    let project = Project {
        kind: ProjectKind::Compose,
        auto_deploy_enabled: true,
        ..Project::default()
    };
    let mut session = policy.session().unwrap();
    session
        .decide_images(&project, &facts, &prior, &lookups)
        .unwrap();
    let instructions = session.last_fuel().unwrap_or(0);
    let started = Instant::now();
    for _ in 0..1000 {
        assert!(
            !policy
                .decide_images(&project, &facts, &prior, &lookups)
                .unwrap()
                .trigger
        );
    }
    println!(
        "decide-images alone (3 images, nothing moved, fresh instance): {:.1} us a call, {instructions} instructions",
        started.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
}

/// CPU time this process's threads have run, in ns (the scheduler's own
/// count, /proc/self/task/*/schedstat): all threads, and the policy's (its
/// decision threads and its epoch ticker, all named `policy-*`).
fn cpu_ns() -> (u64, u64) {
    let (mut all, mut policy) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        all += ns;
        if comm.starts_with("policy-") {
            policy += ns;
        }
    }
    (all, policy)
}
