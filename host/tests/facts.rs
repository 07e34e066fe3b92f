//! What the host gathers for the policy, through the real daemon: project
//! labels, the operator's policy config (stored with its policy), the
//! test-only clock, and a 0.2.0 policy's decisions as the only gates: the
//! master switch, the toggle and what the agents run are facts it weighs.

mod common;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put_config(d: &Daemon, text: &[u8]) -> (StatusCode, Value) {
    d.raw(
        Method::PUT,
        "/api/policy/config",
        Some(ADMIN),
        text.to_vec(),
        "text/plain",
    )
    .await
}

async fn events_of(d: &Daemon, kind: &str) -> Vec<String> {
    d.ok(Method::GET, "/api/events?limit=1000", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn project_labels_are_set_shown_replaced_and_cleared_through_the_api() {
    let dir = temp_dir("facts-labels");
    let d = Daemon::start(&dir);
    let created = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "shop", "project_type": "compose",
                        "labels": {"team": "web", "sync-window": "office-hours"}})),
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created["labels"],
        json!({"team": "web", "sync-window": "office-hours"})
    );
    let path = format!("/api/projects/{id}");
    assert_eq!(
        d.ok(Method::GET, &path, None).await["labels"]["team"],
        "web"
    );

    // A project made without labels has an empty map.
    let bare = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "bare", "project_type": "compose"})),
        )
        .await;
    assert_eq!(bare["labels"], json!({}));

    // PATCH replaces the whole map; other fields are untouched.
    let patched = d
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"labels": {"team": "shop"}})),
        )
        .await;
    assert_eq!(patched["labels"], json!({"team": "shop"}));
    assert_eq!(patched["name"], "shop");
    // A PATCH without labels keeps them.
    let kept = d
        .ok(Method::PATCH, &path, Some(json!({"git_branch": "prod"})))
        .await;
    assert_eq!(kept["labels"], json!({"team": "shop"}));

    // Bad labels are refused, naming the field; nothing changes.
    for (bad, code) in [
        (json!({"labels": {"bad key": "v"}}), StatusCode::BAD_REQUEST),
        (
            json!({"labels": {"k": "white space"}}),
            StatusCode::BAD_REQUEST,
        ),
        // Not a string map: the body does not fit the request's type.
        (
            json!({"labels": {"k": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, v) = d.admin(Method::PATCH, &path, Some(bad.clone())).await;
        assert_eq!(status, code, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("labels"), "{v}");
    }
    let (status, v) = d
        .admin(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "x", "project_type": "compose", "labels": {"": "v"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("labels"), "{v}");
    let too_many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, v) = d
        .admin(Method::PATCH, &path, Some(json!({"labels": too_many})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 32"), "{v}");
    assert_eq!(
        d.ok(Method::GET, &path, None).await["labels"],
        json!({"team": "shop"})
    );

    // null clears them, and they survive a restart.
    assert_eq!(
        d.ok(Method::PATCH, &path, Some(json!({"labels": null})))
            .await["labels"],
        json!({})
    );
    d.ok(
        Method::PATCH,
        &path,
        Some(json!({"labels": {"tier": "gold"}})),
    )
    .await;
    assert!(d.stop().success());
    let d = Daemon::start(&dir);
    assert_eq!(
        d.ok(Method::GET, &path, None).await["labels"],
        json!({"tier": "gold"})
    );

    // The command line sets them too.
    let made = common::cli(
        &d,
        &[
            "project", "create", "--name", "cli", "--type", "compose", "--label", "team=ops",
            "--label", "zone=eu",
        ],
    )
    .unwrap();
    assert_eq!(made["labels"], json!({"team": "ops", "zone": "eu"}));
}

#[tokio::test]
async fn the_policy_config_is_kept_with_its_policy_across_swaps_and_restarts() {
    let dir = temp_dir("facts-config");
    let d = Daemon::start(&dir);
    let policy = d.ok(Method::GET, "/api/policy", None).await;
    assert_eq!(policy["config"], Value::Null, "{policy}");
    assert_eq!(policy["config_sha256"], Value::Null, "{policy}");
    let bundled = policy["sha256"].as_str().unwrap().to_string();

    // Set through the API: shown with its hash, stored beside the policy,
    // logged as a policy change.
    let (status, v) = put_config(&d, b"windows: office-hours\n").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["config"], "windows: office-hours\n");
    assert_eq!(v["sha256"], bundled.as_str());
    let config_sha = v["config_sha256"].as_str().unwrap().to_string();
    assert_eq!(config_sha.len(), 64);
    let changed = events_of(&d, "policy.config-changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains(&config_sha), "{changed:?}");

    // Too large or not text: refused, the config stays.
    let (status, v) = put_config(&d, &vec![b'x'; (64 << 10) + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("65536"), "{v}");
    let (status, v) = put_config(&d, &[0xff, 0xfe, 0x00]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    assert_eq!(
        d.ok(Method::GET, "/api/policy", None).await["config"],
        "windows: office-hours\n"
    );

    // A policy and its config in one request (JSON): both switch together.
    use base64::Engine;
    let b = common::policy_variant("b");
    let (status, v) = d
        .admin(
            Method::PUT,
            "/api/policy",
            Some(json!({
                "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&b),
                "config": "deny: weekends",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["config"], "deny: weekends");
    let b_sha = v["sha256"].as_str().unwrap().to_string();
    assert_ne!(b_sha, bundled);
    let switched = events_of(&d, "policy.switched").await;
    assert!(
        switched[0].contains(&b_sha) && switched[0].contains("config"),
        "{switched:?}"
    );

    // A raw upload of another policy: it has no config of its own.
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            common::policy_variant("c"),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["config"], Value::Null, "{v}");

    // Rollback brings back the previous policy with its config.
    let v = d.ok(Method::POST, "/api/policy/rollback", None).await;
    assert_eq!(v["sha256"], b_sha.as_str());
    assert_eq!(v["config"], "deny: weekends");

    // Bad JSON uploads are refused with what is wrong.
    for (body, words) in [
        (json!({"wasm_base64": "%%%"}), "base64"),
        (json!({"wasm": "AA=="}), "wasm_base64"),
        (
            json!({"wasm_base64": "AGFzbQ==", "config": "x".repeat((64 << 10) + 1)}),
            "at most 65536",
        ),
    ] {
        let (status, v) = d.admin(Method::PUT, "/api/policy", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains(words), "{v}");
    }

    // A restart starts the stored policy with its config.
    assert!(d.stop().success());
    let d = Daemon::start(&dir);
    let v = d.ok(Method::GET, "/api/policy", None).await;
    assert_eq!(v["sha256"], b_sha.as_str());
    assert_eq!(v["config"], "deny: weekends");

    // The same component sent again without a config keeps its stored one.
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            b.clone(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["config"], "deny: weekends");

    // An empty body removes it, and its file.
    let (status, v) = put_config(&d, b"").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["config"], Value::Null);

    // The command line: load with a config file, then change the config.
    let work = temp_dir("facts-config-cli");
    let wasm = work.join("c.wasm");
    std::fs::write(&wasm, common::policy_variant("c")).unwrap();
    let cfg = work.join("c.cfg");
    std::fs::write(&cfg, "allow: always\n").unwrap();
    let v = common::cli(
        &d,
        &[
            "policy",
            "load",
            wasm.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(v["config"], "allow: always\n");
    std::fs::write(&cfg, "allow: never\n").unwrap();
    let v = common::cli(&d, &["policy", "set-config", cfg.to_str().unwrap()]).unwrap();
    assert_eq!(v["config"], "allow: never\n");
    assert_eq!(
        d.ok(Method::GET, "/api/policy", None).await["config"],
        "allow: never\n"
    );
}

#[tokio::test]
async fn the_test_only_clock_is_announced_loudly_at_start() {
    let dir = temp_dir("facts-clock");
    let clock = dir.join("clock");
    std::fs::write(&clock, "1700000000\n").unwrap();
    let d = Daemon::start_with(
        &dir,
        &[],
        &[("AUTODEPLOY_TEST_ONLY_CLOCK_FILE", clock.to_str().unwrap())],
    );
    // The log line is written before the daemon listens.
    let log = d.log();
    assert!(
        log.contains("AUTODEPLOY_TEST_ONLY_CLOCK_FILE is set") && log.contains("tests only"),
        "{log}"
    );
    let plain = Daemon::start(&temp_dir("facts-clock-plain"));
    assert!(!plain.log().contains("AUTODEPLOY_TEST_ONLY_CLOCK_FILE"));
}

/// A commit on `main` in `work` (made on first use), pushed to project
/// `id`'s hosted repository; returns its SHA.
fn push(d: &Daemon, work: &std::path::Path, id: i64, token: &str, message: &str) -> String {
    if !work.join(".git").exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
    }
    std::fs::write(work.join("change"), message).unwrap();
    git(work, &["add", "change"]);
    git(work, &["commit", "-q", "-m", message]);
    let url = format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    git(work, &["push", "-q", &url, "main"]);
    git(work, &["rev-parse", "HEAD"])
}

async fn git_tick_for(d: &Daemon, id: i64) -> (Value, Option<Value>) {
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    let mine = tick["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project_id"] == id)
        .cloned();
    (tick, mine)
}

async fn push_events(d: &Daemon, id: i64) -> String {
    d.ok(
        Method::GET,
        &format!("/api/events?project_id={id}&limit=100"),
        None,
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .filter(|e| e["kind"] == "push")
    .map(|e| e["message"].as_str().unwrap().to_string())
    .collect::<Vec<_>>()
    .join("\n")
}

#[tokio::test]
async fn the_policy_decides_every_gate_on_the_facts_it_is_given() {
    let dir = temp_dir("facts-gates");
    let d = Daemon::start(&dir);
    // Only the ticks asked for here: the loop's own next one is an hour away.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "gated", "project_type": "image",
                        "image_ref": "registry.test/app:1", "container_port": 8080,
                        "auto_deploy_enabled": true, "labels": {"team": "web"}})),
        )
        .await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    let work = dir.join("work");

    // What the agents run is a fact the policy weighs: every kind the
    // policy finds deployable is one the agents run, so a Dockerfile
    // (`deployment`) project is queued for a node, not refused.
    let build = d
        .create_project(json!({"name": "build", "project_type": "deployment"}))
        .await;
    let queued = d
        .ok(
            Method::POST,
            &format!("/api/projects/{build}/deployments"),
            None,
        )
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    assert!(queued["error"].is_null(), "{queued}");

    // Master switch off: a fact. The policy's watch plan names nothing, so
    // a push deploys nothing and says why, in the policy's words.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_master_enabled": false})),
    )
    .await;
    let first = push(&d, &work, id, token, "while off");
    assert!(d.deployments(id).await.is_empty());
    let events = push_events(&d, id).await;
    assert!(
        events.contains("not deploying") && events.contains("master switch off"),
        "{events}"
    );
    // A tick looks at nothing the plans leave out.
    let (tick, mine) = git_tick_for(&d, id).await;
    assert_eq!(tick["paused"], true, "{tick}");
    assert_eq!(tick["checked"], 0, "{tick}");
    assert_eq!(tick["not_watched"], 2, "{tick}");
    assert!(mine.is_none(), "{tick}");
    // The source is a fact too: a person's deploy is not held.
    let manual = d
        .ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
    assert_eq!(manual["status"], "queued", "{manual}");

    // On, but this project's toggle off: still nothing watched.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_master_enabled": true})),
    )
    .await;
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": false})),
    )
    .await;
    let (tick, mine) = git_tick_for(&d, id).await;
    assert_eq!(tick["paused"], false, "{tick}");
    assert!(mine.is_none(), "{tick}");
    let second = push(&d, &work, id, token, "toggle off");
    assert!(
        push_events(&d, id)
            .await
            .contains("auto-deploy is off for this project"),
        "{}",
        push_events(&d, id).await
    );

    // Toggle on: the next tick's plan reconciles the hosted branch, and the
    // change pushed meanwhile goes into the queued deployment.
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    let (_, mine) = git_tick_for(&d, id).await;
    let mine = mine.expect("watched once the toggle is on");
    assert_eq!(mine["outcome"], "triggered", "{mine}");
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(deps[0]["sources"], json!(["manual", "auto-push"]));
    assert_eq!(deps[0]["target_commit"], second.as_str());
    assert_ne!(first, second);
}
