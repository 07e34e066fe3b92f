//! A 0.1.0 policy file and a 0.2.0 policy file (the default policy built for
//! each contract version) both load, pass their self-test, run the daemon
//! and deploy on a push; the daemon says which contract each implements.

mod common;

use std::path::Path;
use std::time::Duration;

use autodeploy::policy::{PolicyConfig, PolicyRuntime, WitVersion, selftest};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const V010: &str = env!("AUTODEPLOY_POLICY_V010_WASM");
const V020: &str = env!("AUTODEPLOY_POLICY_V020_WASM");

#[test]
fn both_files_load_and_pass_their_self_test() {
    let runtime = PolicyRuntime::new(PolicyConfig::default()).unwrap();
    for (file, version) in [(V010, WitVersion::V0_1_0), (V020, WitVersion::V0_2_0)] {
        let policy = runtime.load_file(Path::new(file)).unwrap();
        assert_eq!(policy.wit_version(), version, "{file}");
        assert_eq!(policy.info().name, "autodeploy-default");
        let failures = selftest::self_test(&policy);
        assert!(failures.is_empty(), "{file}: {failures:?}");
    }
}

/// Creates a hosted deployment project with auto-deploy on, pushes one
/// commit to it and waits for the `auto-push` deployment of that commit,
/// which must name the active policy's sha256.
async fn push_deploys(d: &Daemon, work: &Path, name: &str) {
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "auto_deploy_enabled": true})),
        )
        .await;
    let id = p["id"].as_i64().unwrap();
    let token = p["push_token"].as_str().unwrap();
    git(work, &["commit", "-q", "--allow-empty", "-m", name]);
    let head = git(work, &["rev-parse", "HEAD"]);
    let url = format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    git(work, &["push", "-q", &url, "main"]);
    common::wait_until("the push is deployed", Duration::from_secs(60), || async {
        d.deployments(id)
            .await
            .iter()
            .any(|dep| dep["source"] == "auto-push" && dep["target_commit"] == head.as_str())
    })
    .await;
    let sha = policy(d).await["sha256"].clone();
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(deps[0]["policy_sha256"], sha, "{deps:?}");
    assert!(deps[0]["error"].is_null(), "{deps:?}");
}

async fn policy(d: &Daemon) -> Value {
    d.ok(Method::GET, "/api/status", None).await["policy"].clone()
}

fn work_repo(dir: &Path) -> std::path::PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    work
}

#[tokio::test]
async fn the_daemon_runs_and_deploys_with_either_version_given_at_start() {
    for (file, version) in [(V010, "0.1.0"), (V020, "0.2.0")] {
        let dir = temp_dir(&format!("policy-v{version}"));
        let d = Daemon::start_with(&dir, &["--policy", file], &[]);
        let p = policy(&d).await;
        assert_eq!(p["wit_version"], version, "{p}");
        assert_eq!(p["source"], file, "{p}");
        push_deploys(&d, &work_repo(&dir), "api").await;
        d.stop();
    }
}

#[tokio::test]
async fn a_running_daemon_switches_between_versions() {
    let dir = temp_dir("policy-versions-swap");
    let d = Daemon::start(&dir);
    assert_eq!(policy(&d).await["wit_version"], "0.2.0");
    let work = work_repo(&dir);

    let mut shas = Vec::new();
    for (file, version, name) in [(V010, "0.1.0", "old"), (V020, "0.2.0", "new")] {
        let (status, v) = d
            .raw(
                Method::PUT,
                "/api/policy",
                Some(ADMIN),
                std::fs::read(file).unwrap(),
                "application/wasm",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["wit_version"], version, "{v}");
        assert_eq!(policy(&d).await["wit_version"], version);
        shas.push(v["sha256"].clone());
        push_deploys(&d, &work, name).await;
    }
    // The two builds are different components.
    assert_ne!(shas[0], shas[1]);

    d.stop();
}
