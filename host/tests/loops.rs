//! The background loops on their own: no test here asks for a tick through
//! `POST /api/ticks/*`. Intervals are the shortest allowed (10 s). Waits
//! are for conditions, their timeouts only bound a hang; "within two
//! intervals" is counted in the loop's own ticks, not seconds. Where nothing may
//! happen, the test holds still for a window longer than the interval: a
//! slow machine can only make such a check pass without proving anything,
//! never fail it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::git::{bare_with_commit, commit_to, git, nginx_git};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The interval every test runs its loop at, in seconds.
const INTERVAL: i64 = 10;
/// Bounds a hang only.
const HANG: Duration = Duration::from_secs(240);
const TEST_ONLY_MIN: &str = "AUTODEPLOY_TEST_ONLY_MIN_IMAGE_WATCH_INTERVAL_SECONDS";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A window in which nothing may happen: longer than two intervals.
async fn hold_still() {
    tokio::time::sleep(Duration::from_secs(2 * INTERVAL as u64 + 5)).await;
}

/// How many ticks a loop has run.
async fn ticks(d: &Daemon, name: &str) -> u64 {
    loop_state(d, name).await["ticks"].as_u64().unwrap()
}

/// One loop's entry in `GET /api/status`.
async fn loop_state(d: &Daemon, name: &str) -> Value {
    d.ok(Method::GET, "/api/status", None).await["loops"][name].clone()
}

async fn settings(d: &Daemon, body: Value) {
    d.ok(Method::PUT, "/api/settings", Some(body)).await;
}

/// An external project polling `bare` over file://, auto-deploy on.
async fn external(d: &Daemon, bare: &Path) -> i64 {
    d.create_project(json!({"name": "ext", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080,
        "git_source": "external", "git_url": format!("file://{}", bare.display()),
        "auto_deploy_enabled": true}))
        .await
}

/// The newest deployment of `project`, once there is one.
async fn newest(d: &Daemon, project: i64) -> Option<Value> {
    d.deployments(project).await.into_iter().next()
}

#[tokio::test]
async fn a_new_external_commit_is_deployed_within_two_intervals_without_manual_ticks() {
    let dir = temp_dir("loops-poll");
    let bare = dir.join("repo.git");
    let first = bare_with_commit(&bare);
    let d = Daemon::start(&dir);
    settings(&d, json!({"auto_deploy_poll_interval_seconds": INTERVAL})).await;
    let id = external(&d, &bare).await;

    // The loop's own tick aligns the new project on the branch head.
    wait_until("the poll loop deploys the project's head", HANG, || async {
        newest(&d, id).await.is_some()
    })
    .await;
    let aligned = newest(&d, id).await.unwrap();
    assert_eq!(aligned["source"], "auto-poll", "{aligned}");
    assert_eq!(aligned["target_commit"], first.as_str());

    let second = commit_to(&bare, "main", "second");
    let committed = ticks(&d, "git-poll").await;
    wait_until("the poll loop deploys the new commit", HANG, || async {
        newest(&d, id).await.unwrap()["target_commit"] == second.as_str()
    })
    .await;
    // No agent claimed the first deployment: the new commit moved its target.
    let dep = newest(&d, id).await.unwrap();
    assert_eq!(dep["trigger_count"], 2, "{dep}");
    // Counted in ticks, not seconds: a loaded machine only slows ticks down.
    let after = ticks(&d, "git-poll").await;
    assert!(
        after <= committed + 2,
        "the commit was deployed {} ticks after it landed",
        after - committed
    );
    let state = loop_state(&d, "git-poll").await;
    assert!(state["ticks"].as_u64().unwrap() >= 2, "{state}");
    assert_eq!(state["state"], "running", "{state}");
    d.stop();
}

#[tokio::test]
async fn a_changed_poll_interval_applies_from_the_next_tick() {
    let dir = temp_dir("loops-interval");
    let bare = dir.join("repo.git");
    let first = bare_with_commit(&bare);
    let d = Daemon::start(&dir);
    wait_until(
        "the poll loop's first tick (at start) ran",
        HANG,
        || async { !loop_state(&d, "git-poll").await["last_tick_at"].is_null() },
    )
    .await;
    // Set while the loop already waits for its next tick.
    settings(&d, json!({"auto_deploy_poll_interval_seconds": 3600})).await;
    let id = external(&d, &bare).await;

    // Lowered to 10 s: the next tick is 10 s after the previous one began,
    // not an hour (nor the 60 s default the loop had started waiting with).
    let lowered = unix_now();
    settings(&d, json!({"auto_deploy_poll_interval_seconds": INTERVAL})).await;
    wait_until("the poll loop deploys the project", HANG, || async {
        newest(&d, id).await.is_some()
    })
    .await;
    let dep = newest(&d, id).await.unwrap();
    assert_eq!(dep["target_commit"], first.as_str(), "{dep}");
    let at = dep["created_at"].as_i64().unwrap();
    // Sooner than the 60 s default the loop had started waiting with.
    assert!(
        at < lowered + 60,
        "deployed {}s after the interval was lowered to {INTERVAL}s",
        at - lowered
    );

    // Raised again: the tick already scheduled 10 s ahead does not come.
    settings(&d, json!({"auto_deploy_poll_interval_seconds": 3600})).await;
    wait_until("the loop reschedules an hour ahead", HANG, || async {
        loop_state(&d, "git-poll").await["next_tick_at"].as_i64() > Some(unix_now() + 3000)
    })
    .await;
    let before = ticks(&d, "git-poll").await;
    commit_to(&bare, "main", "second");
    hold_still().await;
    assert_eq!(ticks(&d, "git-poll").await, before);
    assert_eq!(
        newest(&d, id).await.unwrap()["target_commit"],
        first.as_str(),
        "no tick ran, so the new commit is not deployed yet"
    );
    d.stop();
}

#[tokio::test]
async fn with_the_master_switch_off_the_loop_ticks_but_looks_nothing_up() {
    let dir = temp_dir("loops-master");
    let repos = dir.join("repos");
    let bare = repos.join("repo.git");
    let first = bare_with_commit(&bare);
    // The remote logs every request: what the loop asks is counted there.
    let nginx = nginx_git(&dir.join("nginx"), &repos, "deploy", "loops-remote-token");
    let asked = || nginx.requests().lines().count();
    let d = Daemon::start(&dir);
    settings(&d, json!({"auto_deploy_poll_interval_seconds": INTERVAL})).await;
    let id = d
        .create_project(json!({"name": "ext", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080,
            "git_source": "external",
            "git_url": format!("http://127.0.0.1:{}/git/repo.git", nginx.port),
            "credentials": {"kind": "https", "username": "deploy", "token": "loops-remote-token"},
            "auto_deploy_enabled": true}))
        .await;
    wait_until("the poll loop deploys the project's head", HANG, || async {
        newest(&d, id).await.is_some()
    })
    .await;
    assert!(asked() > 0, "the loop looked the head up at the remote");
    assert_eq!(
        newest(&d, id).await.unwrap()["target_commit"],
        first.as_str()
    );

    // Off: the switch is a fact the policy weighs. The loop goes on
    // ticking; the policy's watch plan names nothing, so nothing is looked
    // up and nothing deploys.
    let off = unix_now();
    settings(&d, json!({"auto_deploy_master_enabled": false})).await;
    wait_until(
        "a poll tick after the switch went off watched nothing",
        HANG,
        || async {
            let s = loop_state(&d, "git-poll").await;
            s["last_tick_at"].as_i64().unwrap_or(0) > off && s["last_tick_watched"] == 0
        },
    )
    .await;
    let ticks_off = ticks(&d, "git-poll").await;
    let requests = asked();
    let second = commit_to(&bare, "main", "second");
    hold_still().await;
    assert_eq!(
        asked(),
        requests,
        "switched off, nothing reaches the remote"
    );
    let state = loop_state(&d, "git-poll").await;
    assert!(
        state["ticks"].as_u64().unwrap() > ticks_off,
        "the loop keeps ticking: {state}"
    );
    assert_eq!(state["state"], "running", "{state}");
    assert_eq!(state["last_tick_watched"], 0, "{state}");
    assert!(state["next_tick_at"].is_i64(), "{state}");
    assert_eq!(
        newest(&d, id).await.unwrap()["target_commit"],
        first.as_str(),
        "nothing deploys while the switch is off"
    );
    let project = d
        .ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await;
    assert_eq!(project["auto_deploy_enabled"], true, "the toggle is kept");

    // On again: the commit made meanwhile deploys by the next tick or the
    // one after (counted in ticks, not seconds: a loaded machine only slows
    // ticks down).
    let ticks_before = ticks(&d, "git-poll").await;
    settings(&d, json!({"auto_deploy_master_enabled": true})).await;
    wait_until("the poll loop deploys the new commit", HANG, || async {
        newest(&d, id).await.unwrap()["target_commit"] == second.as_str()
    })
    .await;
    let ticks_after = ticks(&d, "git-poll").await;
    assert!(
        ticks_after <= ticks_before + 2,
        "deployed {} ticks after the switch was turned on",
        ticks_after - ticks_before
    );
    assert_eq!(loop_state(&d, "git-poll").await["last_tick_watched"], 1);
    assert!(
        asked() > requests,
        "switched on, the loop asks the remote again"
    );
    d.stop();
}

/// Pushes `compose` as docker-compose.yml to a hosted project's repository.
fn push_compose(d: &Daemon, work: &Path, id: i64, token: &str, compose: &str) {
    std::fs::create_dir_all(work).unwrap();
    git(work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(work, &["add", "docker-compose.yml"]);
    git(work, &["commit", "-q", "-m", "compose"]);
    let url = format!(
        "http://x:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    git(work, &["push", "-q", &url, "main"]);
}

#[tokio::test]
async fn the_image_watcher_fires_on_its_own_at_its_minimum_interval() {
    let dir = temp_dir("loops-image");
    let reg = TestRegistry::start_logged(&dir.join("registry"));
    let v1 = reg.push("app", "1", "version one");
    let image = format!("{}/app:1", reg.addr);
    let d = Daemon::start_with(&dir, &[], &[(TEST_ONLY_MIN, "10")]);
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(status["image_watch_min_interval_seconds"], 10);
    assert!(
        d.log().contains(TEST_ONLY_MIN),
        "the daemon warns it runs with a test-only setting"
    );
    // The minimum, and not one second less.
    let (code, body) = d
        .admin(
            Method::PUT,
            "/api/settings",
            Some(json!({"auto_deploy_image_watch_interval_seconds": INTERVAL - 1})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at least 10"),
        "{body}"
    );
    // Hosted pushes deploy on their own; the poller's reconciliation (which
    // would queue an auto-push deployment of the compose commit) stays an hour away.
    settings(
        &d,
        json!({"auto_deploy_image_watch_interval_seconds": INTERVAL,
               "auto_deploy_poll_interval_seconds": 3600}),
    )
    .await;

    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "shop", "project_type": "compose",
                        "expose_service": "web", "expose_port": 80})),
        )
        .await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    push_compose(
        &d,
        &dir.join("work"),
        id,
        token,
        &format!("services:\n  web:\n    image: {image}\n"),
    );
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;

    // The watcher's own tick seeds the digests without deploying.
    wait_until("the image watcher records the digest", HANG, || async {
        d.ok(Method::GET, &format!("/api/projects/{id}"), None)
            .await["last_tracked_image_digests"]
            == json!({image.clone(): v1.clone()})
    })
    .await;
    assert!(d.deployments(id).await.is_empty());

    let v2 = reg.push("app", "1", "version two");
    let moved = ticks(&d, "image-watch").await;
    wait_until("the image watcher deploys the moved tag", HANG, || async {
        newest(&d, id).await.is_some()
    })
    .await;
    let dep = newest(&d, id).await.unwrap();
    assert_eq!(dep["source"], "auto-image", "{dep}");
    assert_eq!(dep["target_digests"][&image], v2.as_str(), "{dep}");
    let after = ticks(&d, "image-watch").await;
    assert!(
        after <= moved + 2,
        "deployed {} ticks after the tag moved",
        after - moved
    );
    let state = loop_state(&d, "image-watch").await;
    assert!(state["ticks"].as_u64().unwrap() >= 2, "{state}");

    // Off: the watcher ticks on, but the policy watches nothing, so no
    // registry lookup and no deployment.
    let off = unix_now();
    settings(&d, json!({"auto_deploy_master_enabled": false})).await;
    wait_until(
        "an image tick after the switch went off watched nothing",
        HANG,
        || async {
            let s = loop_state(&d, "image-watch").await;
            s["last_tick_at"].as_i64().unwrap_or(0) > off && s["last_tick_watched"] == 0
        },
    )
    .await;
    let ticks_off = ticks(&d, "image-watch").await;
    let v3 = reg.push("app", "1", "version three");
    let lookups = reg.manifest_requests();
    hold_still().await;
    let state = loop_state(&d, "image-watch").await;
    assert!(state["ticks"].as_u64().unwrap() > ticks_off, "{state}");
    assert_eq!(state["last_tick_watched"], 0, "{state}");
    assert_eq!(reg.manifest_requests(), lookups, "no lookup while off");
    // The deployment of v2 is still queued (no node runs here): a trigger
    // would have gone into it.
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["trigger_count"], 1, "{}", deps[0]);
    assert_eq!(deps[0]["target_digests"][&image], v2.as_str());

    // On again: the tag that moved meanwhile is deployed (into the queued
    // deployment, whose target moves on).
    let resumed = ticks(&d, "image-watch").await;
    settings(&d, json!({"auto_deploy_master_enabled": true})).await;
    wait_until(
        "the image watcher deploys the tag moved while off",
        HANG,
        || async { newest(&d, id).await.unwrap()["target_digests"][&image] == v3.as_str() },
    )
    .await;
    let dep = newest(&d, id).await.unwrap();
    assert_eq!(dep["sources"], json!(["auto-image"]), "{dep}");
    assert_eq!(dep["trigger_count"], 2, "{dep}");
    assert!(
        ticks(&d, "image-watch").await <= resumed + 2,
        "deployed more than two ticks after the switch was turned on: {dep}"
    );
    d.stop();
}

#[tokio::test]
async fn without_the_test_only_setting_the_image_watch_minimum_stays_60s() {
    let dir = temp_dir("loops-image-min");
    let d = Daemon::start(&dir);
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(status["image_watch_min_interval_seconds"], 60);
    let (code, body) = d
        .admin(
            Method::PUT,
            "/api/settings",
            Some(json!({"auto_deploy_image_watch_interval_seconds": INTERVAL})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at least 60"),
        "{body}"
    );
    d.stop();

    // The test-only setting may lower the minimum, never raise it or zero it.
    for bad in ["0", "61", "ten"] {
        let Err(log) = Daemon::try_start_with(&dir, &[], &[(TEST_ONLY_MIN, bad)]) else {
            panic!("{TEST_ONLY_MIN}={bad} was accepted");
        };
        assert!(log.contains(TEST_ONLY_MIN), "{log}");
    }
}
