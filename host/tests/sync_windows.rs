//! The sync-windows policy (`policies/sync-windows/`) through its component:
//! it loads with no imports and passes the self-test, and swapped into a
//! running daemon with a deny window it holds a push while the window is open
//! and deploys it on the first tick after. Time moves only through the
//! test-only policy clock file.

mod common;

use std::path::Path;
use std::time::Duration;

use autodeploy::policy::{PolicyConfig, PolicyRuntime, WitVersion, selftest};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SYNC_WINDOWS: &str = env!("AUTODEPLOY_POLICY_SYNC_WINDOWS_WASM");

/// Deny 22:00-06:00 Berlin time for projects labelled `env=prod`.
const NIGHT_FREEZE: &str = r#"{"windows":[{"name":"night freeze","kind":"deny",
    "schedule":"0 22 * * *","duration":"8h","time_zone":"Europe/Berlin",
    "match_labels":{"env":"prod"}}]}"#;

/// 2026-11-26 23:30 UTC: 00:30 in Berlin, inside the freeze.
const IN_THE_WINDOW: i64 = 1_795_735_800;
/// 2026-11-27 05:00 UTC: 06:00 in Berlin, the freeze is over.
const AFTER_THE_WINDOW: i64 = 1_795_755_600;

#[test]
fn the_component_loads_imports_nothing_and_passes_its_self_test() {
    let runtime = PolicyRuntime::new(PolicyConfig::default()).unwrap();
    // Loading refuses any import: a policy that asked for a clock would fail here.
    let policy = runtime.load_file(Path::new(SYNC_WINDOWS)).unwrap();
    assert_eq!(policy.wit_version(), WitVersion::V0_2_0);
    assert_eq!(policy.info().name, "autodeploy-sync-windows");
    let failures = selftest::self_test(&policy);
    assert!(failures.is_empty(), "{failures:?}");
}

async fn create(d: &Daemon, name: &str, env: &str) -> (i64, String) {
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({
                "name": name,
                "project_type": "image",
                "image_ref": "registry.test/app:1",
                "container_port": 8080,
                "auto_deploy_enabled": true,
                "labels": {"env": env},
            })),
        )
        .await;
    let url = format!(
        "http://push:{}@{}/git/{}.git",
        p["push_token"].as_str().unwrap(),
        d.url.trim_start_matches("http://"),
        p["id"]
    );
    (p["id"].as_i64().unwrap(), url)
}

async fn project(d: &Daemon, id: i64) -> Value {
    d.ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await
}

/// One git-poll tick (it reconciles every hosted project with its branch),
/// and what it did for project `id`.
async fn tick_for(d: &Daemon, id: i64) -> Value {
    let summary = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    summary["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project_id"] == id)
        .unwrap_or_else(|| panic!("project {id} was not checked: {summary}"))
        .clone()
}

#[tokio::test]
async fn a_push_in_a_deny_window_is_held_and_deployed_when_the_window_closes() {
    let dir = temp_dir("sync-windows");
    let clock = dir.join("policy-clock");
    std::fs::write(&clock, IN_THE_WINDOW.to_string()).unwrap();
    let d = Daemon::start_with(
        &dir,
        &[],
        &[("AUTODEPLOY_TEST_ONLY_CLOCK_FILE", clock.to_str().unwrap())],
    );
    // Only the ticks this test asks for: the poll loop's next own tick is an
    // hour away once its tick at start has run.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    common::wait_until(
        "the poll loop's tick at start ran",
        Duration::from_secs(60),
        || async {
            !d.ok(Method::GET, "/api/status", None).await["loops"]["git-poll"]["last_tick_at"]
                .is_null()
        },
    )
    .await;

    // Swap the policy in, then give it its config: both while running.
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            std::fs::read(SYNC_WINDOWS).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "autodeploy-sync-windows", "{v}");
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy/config",
            Some(ADMIN),
            NIGHT_FREEZE.as_bytes().to_vec(),
            "text/plain",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let (prod, prod_url) = create(&d, "shop", "prod").await;
    let (staging, staging_url) = create(&d, "shop-staging", "staging").await;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "a change"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", &prod_url, "main"]);
    git(&work, &["push", "-q", &staging_url, "main"]);

    // The same push, the same instant: the staging project (no window
    // matches its labels) deploys, the prod one is held.
    common::wait_until(
        "the staging push is deployed",
        Duration::from_secs(60),
        || async {
            d.deployments(staging)
                .await
                .iter()
                .any(|dep| dep["source"] == "auto-push" && dep["target_commit"] == head.as_str())
        },
    )
    .await;
    let held = tick_for(&d, prod).await;
    assert_eq!(held["outcome"], "unchanged", "held, not deployed: {held}");
    assert!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("night freeze"),
        "the tick says which window holds the change: {held}"
    );
    assert!(d.deployments(prod).await.is_empty());
    // The push itself left a note saying why it was not deployed.
    common::wait_until(
        "the held push is explained in the project's event log",
        Duration::from_secs(60),
        || async {
            let events = d
                .ok(Method::GET, &format!("/api/events?project_id={prod}"), None)
                .await
                .to_string();
            events.contains("not deploying") && events.contains("night freeze")
        },
    )
    .await;
    assert!(
        project(&d, prod).await["last_tracked_commit_sha"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "nothing recorded while held, so the next tick decides again"
    );
    // Still held on a later tick inside the window.
    std::fs::write(&clock, (AFTER_THE_WINDOW - 60).to_string()).unwrap();
    let held = tick_for(&d, prod).await;
    assert_eq!(held["outcome"], "unchanged", "{held}");
    assert!(d.deployments(prod).await.is_empty());

    // The window closes: the next tick deploys the held change.
    std::fs::write(&clock, AFTER_THE_WINDOW.to_string()).unwrap();
    let released = tick_for(&d, prod).await;
    assert_eq!(released["outcome"], "triggered", "{released}");
    let deps = d.deployments(prod).await;
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(deps[0]["source"], "auto-push", "{deps:?}");
    assert_eq!(deps[0]["target_commit"], head.as_str(), "{deps:?}");
    assert_eq!(
        deps[0]["policy_name"], "autodeploy-sync-windows",
        "{deps:?}"
    );
    assert_eq!(
        project(&d, prod).await["last_tracked_commit_sha"],
        head.as_str()
    );
    d.stop();
}

#[tokio::test]
async fn a_manual_deploy_in_a_window_marked_manual_is_refused_with_the_window_named() {
    let dir = temp_dir("sync-windows-manual");
    let clock = dir.join("policy-clock");
    std::fs::write(&clock, IN_THE_WINDOW.to_string()).unwrap();
    let d = Daemon::start_with(
        &dir,
        &[],
        &[("AUTODEPLOY_TEST_ONLY_CLOCK_FILE", clock.to_str().unwrap())],
    );
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            std::fs::read(SYNC_WINDOWS).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let strict = NIGHT_FREEZE.replace(r#""match_labels""#, r#""manual":true,"match_labels""#);
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy/config",
            Some(ADMIN),
            strict.into_bytes(),
            "text/plain",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (prod, _) = create(&d, "shop", "prod").await;
    let (staging, _) = create(&d, "shop-staging", "staging").await;

    let manual = |id: i64| {
        let d = &d;
        async move {
            d.ok(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await
        }
    };
    let refused = manual(prod).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(
        refused["error"],
        "held by deny window \"night freeze\" (0 22 * * * for 8h, Europe/Berlin) until \
         2026-11-27 06:00 CET; the window holds manual deploys too (manual: true)",
        "{refused}"
    );
    let queued = manual(staging).await;
    assert_eq!(queued["status"], "queued", "{queued}");

    // After the window the same request is queued.
    std::fs::write(&clock, AFTER_THE_WINDOW.to_string()).unwrap();
    let queued = manual(prod).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    d.stop();
}
