//! Benchmark, not a test: ignored unless asked for (`bench/image-watch.sh`).
//! 1,000 compose projects using 50 distinct images on a local registry: how
//! many registry requests one tick makes, and how long it takes.

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
        database_url: None,
        git_timeout_seconds: 30,
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
        hosted_repo(
            &autodeploy::git::hosted_path(&args.data_dir, p.id),
            &format!("services:\n{compose}"),
        );
    }
    for round in ["first (seeds)", "second (steady)"] {
        let before = app
            .registry
            .stats()
            .get(&reg.addr)
            .cloned()
            .unwrap_or_default();
        let (heads_before, gets_before) = reg.manifest_requests();
        let started = Instant::now();
        let tick = autodeploy::triggers::image_watch::tick(&app).await.unwrap();
        let took = started.elapsed();
        let after = app.registry.stats()[&reg.addr].clone();
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
    }
}
