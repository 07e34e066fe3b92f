//! The control plane through its real HTTP API, on a real SQLite file.

mod common;

use common::daemon::{ADMIN, Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn compose(name: &str) -> Value {
    json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 8080})
}

/// method, path, token, body, expected status, expected words in the error.
type Case = (
    Method,
    &'static str,
    Option<&'static str>,
    Option<Value>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn every_error_path_answers_with_a_clear_4xx() {
    let dir = temp_dir("api-errors");
    let d = Daemon::start(&dir);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/api/projects",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        ),
        (
            Method::GET,
            "/api/projects",
            Some("wrong-token"),
            None,
            StatusCode::UNAUTHORIZED,
            "invalid admin token",
        ),
        (
            Method::GET,
            "/api/projects/abc",
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "not a valid id",
        ),
        (
            Method::GET,
            "/api/projects/-1",
            Some(ADMIN),
            None,
            StatusCode::BAD_REQUEST,
            "not a valid id",
        ),
        (
            Method::GET,
            "/api/projects/999",
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "project 999 not found",
        ),
        (
            Method::DELETE,
            "/api/projects/999",
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            Method::GET,
            "/api/nope",
            Some(ADMIN),
            None,
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "colour": "red"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `colour`",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "spaceship"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown variant `***`, expected one of",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "expose_port": "80"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "bad name!", "project_type": "compose"})),
            StatusCode::BAD_REQUEST,
            "name \"***\" must be",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "git_source": "external"})),
            StatusCode::BAD_REQUEST,
            "external projects need git_url",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "git_url": "https://x/y.git"})),
            StatusCode::BAD_REQUEST,
            "hosted projects are served by autodeploy",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(
                json!({"name": "a", "project_type": "compose", "git_source": "external", "git_url": "ftp://x/y"}),
            ),
            StatusCode::BAD_REQUEST,
            "git_url \"***\" must be",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(
                json!({"name": "a", "project_type": "compose", "git_source": "external", "git_url": "https://u:pw@x/y.git"}),
            ),
            StatusCode::BAD_REQUEST,
            "must not contain a password",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "expose_port": 70000})),
            StatusCode::BAD_REQUEST,
            "expose_port 70000",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "git_branch": "a b"})),
            StatusCode::BAD_REQUEST,
            "git_branch \"***\" is not a valid branch name",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "compose_file_path": "../x.yml"})),
            StatusCode::BAD_REQUEST,
            "compose_file_path",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "tunnel", "auto_deploy_enabled": true})),
            StatusCode::BAD_REQUEST,
            "tunnel projects have no auto-deploy",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(
                json!({"name": "a", "project_type": "compose", "git_source": "external", "git_url": "git@host:r.git", "credentials": {"kind": "https", "username": "u", "token": "t"}}),
            ),
            StatusCode::BAD_REQUEST,
            "https credentials need",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "image"})),
            StatusCode::BAD_REQUEST,
            "image projects need image_ref and container_port",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(
                json!({"name": "a", "project_type": "image", "image_ref": "Bad Ref", "container_port": 80}),
            ),
            StatusCode::BAD_REQUEST,
            "image_ref: invalid",
        ),
        (
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            Some(json!({"name": "a", "project_type": "compose", "image_ref": "redis:7"})),
            StatusCode::BAD_REQUEST,
            "image_ref belongs to image projects only",
        ),
        (
            Method::PUT,
            "/api/settings",
            Some(ADMIN),
            Some(json!({"auto_deploy_poll_interval_seconds": 9})),
            StatusCode::BAD_REQUEST,
            "must be at least 10, got 9",
        ),
        (
            Method::PUT,
            "/api/settings",
            Some(ADMIN),
            Some(json!({"auto_deploy_image_watch_interval_seconds": 30})),
            StatusCode::BAD_REQUEST,
            "must be at least 60, got 30",
        ),
        (
            Method::PUT,
            "/api/settings",
            Some(ADMIN),
            Some(json!({"auto_deploy_master_enabled": "no"})),
            StatusCode::BAD_REQUEST,
            "true or false",
        ),
        (
            Method::PUT,
            "/api/settings",
            Some(ADMIN),
            Some(json!({"speed": 1})),
            StatusCode::BAD_REQUEST,
            "unknown setting \"speed\"",
        ),
        (
            Method::POST,
            "/api/nodes",
            Some(ADMIN),
            Some(json!({"name": ""})),
            StatusCode::BAD_REQUEST,
            "node name",
        ),
        (
            Method::POST,
            "/api/policy/rollback",
            Some(ADMIN),
            None,
            StatusCode::CONFLICT,
            "no previous policy",
        ),
        (
            Method::POST,
            "/api/agent/claim",
            Some(ADMIN),
            None,
            StatusCode::UNAUTHORIZED,
            "invalid node token",
        ),
    ];
    for (method, path, token, body, want_status, want_msg) in cases {
        let (status, v) = d.call(method.clone(), path, token, body.clone()).await;
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} {body:?}: no error field in {v}"));
        assert_eq!(status, want_status, "{method} {path} {body:?}: {msg}");
        assert!(
            msg.contains(want_msg),
            "{method} {path} {body:?}: {msg:?} should contain {want_msg:?}"
        );
    }
    let (status, v) = d
        .raw(
            Method::POST,
            "/api/projects",
            Some(ADMIN),
            b"{not json".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid request body")
    );
    // A clash of names is a conflict; nothing half-written is left behind.
    d.ok(Method::POST, "/api/projects", Some(compose("dup")))
        .await;
    let (status, v) = d
        .admin(Method::POST, "/api/projects", Some(compose("dup")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        d.ok(Method::GET, "/api/projects", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(d.stop().success());
}

#[tokio::test]
async fn toggle_goes_through_the_policy_and_settings_persist() {
    let dir = temp_dir("api-toggle");
    let d = Daemon::start(&dir);
    let tunnel = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "t", "project_type": "tunnel"})),
        )
        .await;
    let (status, v) = d
        .admin(
            Method::PATCH,
            &format!("/api/projects/{}", tunnel["id"]),
            Some(json!({"auto_deploy_enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("tunnel projects have no auto-deploy"),
        "{v}"
    );
    let domain = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "d", "project_type": "domain_only"})),
        )
        .await;
    let (status, v) = d
        .admin(
            Method::PATCH,
            &format!("/api/projects/{}", domain["id"]),
            Some(json!({"auto_deploy_enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("nothing to deploy"),
        "{v}"
    );

    let p = d
        .ok(Method::POST, "/api/projects", Some(compose("web")))
        .await;
    assert!(
        p["push_token"].as_str().unwrap().starts_with("adp_"),
        "hosted projects get a push token once"
    );
    let id = p["id"].as_i64().unwrap();
    let p = d
        .ok(
            Method::PATCH,
            &format!("/api/projects/{id}"),
            Some(json!({"auto_deploy_enabled": true, "expose_port": null})),
        )
        .await;
    assert_eq!(p["auto_deploy_enabled"], true);
    assert_eq!(p["expose_port"], Value::Null);
    assert!(
        p.get("push_token").is_none(),
        "the push token is shown only once"
    );

    let s = d.ok(Method::PUT, "/api/settings", Some(json!({"auto_deploy_master_enabled": false, "auto_deploy_poll_interval_seconds": 10}))).await;
    assert_eq!(s["auto_deploy_master_enabled"], false);
    assert!(d.stop().success(), "SIGTERM stops the daemon cleanly");

    let d = Daemon::start(&dir);
    let s = d.ok(Method::GET, "/api/settings", None).await;
    assert_eq!(
        s,
        json!({
            "auto_deploy_master_enabled": false,
            "auto_deploy_poll_interval_seconds": 10,
            "auto_deploy_image_watch_interval_seconds": 600,
            "auto_deploy_poll_concurrency": 16,
            "node_offline_after_seconds": 120,
            "decision_log_max_rows": 100_000,
            "decision_log_max_age_days": 30,
        })
    );
    // The master switch pauses, it does not clear any project's toggle.
    assert_eq!(
        d.ok(Method::GET, &format!("/api/projects/{id}"), None)
            .await["auto_deploy_enabled"],
        true
    );
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(status["policy"]["name"], "autodeploy-default");
    assert_eq!(status["policy"]["sha256"].as_str().unwrap().len(), 64);
    // The loops start beside the listener (on PostgreSQL after a round trip
    // or two), so their state is awaited, not read at once.
    common::wait_until(
        "the node watcher runs",
        std::time::Duration::from_secs(60),
        || async {
            d.ok(Method::GET, "/api/status", None).await["loops"]["node-watch"]["state"]
                == "running"
        },
    )
    .await;
    d.stop();
}

#[tokio::test]
async fn triggers_coalesce_while_queued_and_rejected_deploys_are_recorded() {
    let dir = temp_dir("api-coalesce");
    let d = Daemon::start(&dir);
    let id = d.create_project(compose("web")).await;
    let path = format!("/api/projects/{id}/deployments");
    // 50 triggers in a burst, concurrently: one queued deployment absorbs them.
    let burst = (0..50).map(|_| d.admin(Method::POST, &path, None));
    for (status, v) in futures::future::join_all(burst).await {
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let list = d.ok(Method::GET, &path, None).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "queued");
    assert_eq!(list[0]["trigger_count"], 50);
    assert_eq!(list[0]["source"], "manual");
    assert_eq!(list[0]["policy_name"], "autodeploy-default");

    // Once a node has claimed it, the next trigger queues a new one, and
    // those after coalesce into that: at most one running and one queued.
    let node = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await;
    let node_token = node["token"].as_str().unwrap();
    let (status, claim) = d.agent_claim(node_token).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    for _ in 0..5 {
        d.ok(Method::POST, &path, None).await;
    }
    let list = d.ok(Method::GET, &path, None).await;
    let statuses: Vec<(&str, i64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap(),
                d["trigger_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, [("queued", 5), ("running", 50)]);
    // One deploy at a time per project: the queued one waits for the running one.
    let (status, _) = d.agent_claim(node_token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let running = claim["deployment"]["id"].as_i64().unwrap();
    let (status, v) = d
        .agent_report(node_token, running, json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, next) = d.agent_claim(node_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next["deployment"]["trigger_count"], 5);

    // A compose project without expose fields: the policy's refusal is
    // recorded as a failed deployment, and nothing else moves.
    let bare = d
        .create_project(json!({"name": "bare", "project_type": "compose"}))
        .await;
    let failed = d
        .ok(
            Method::POST,
            &format!("/api/projects/{bare}/deployments"),
            None,
        )
        .await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("expose_service"),
        "{failed}"
    );
    assert_eq!(
        d.ok(Method::GET, &path, None)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    d.stop();
}

/// Sends a request as given and returns the status, the content type and
/// the body parsed as JSON (or `Null` when it is not JSON).
async fn send(
    d: &Daemon,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", d.url))
        .bearer_auth(ADMIN)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("daemon answers");
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// method, path, content type, body, expected status.
type RawCase = (Method, String, Option<&'static str>, Vec<u8>, StatusCode);

#[tokio::test]
async fn every_error_is_json() {
    let dir = temp_dir("api-json-errors");
    let d = Daemon::start(&dir);
    let id = d.create_project(compose("p")).await;
    let big_json = format!("{{\"name\": \"{}\"}}", "x".repeat(3 << 20)).into_bytes();
    let json = Some("application/json");
    let cases: Vec<RawCase> = vec![
        // Query strings axum cannot parse into the handler's type.
        (
            Method::GET,
            "/api/events?limit=abc".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/events?colour=red".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("/api/projects/{id}/deployments?limit=1x"),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        // A method the route does not take.
        (
            Method::DELETE,
            "/api/status".into(),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            "/api/ticks/git-poll".into(),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            format!("/git/{id}.git/info/refs"),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // No such route.
        (
            Method::GET,
            "/nope".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/projects/1/nope".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
        ),
        // Path parameters that are not ids.
        (
            Method::GET,
            "/api/projects/abc".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/projects/%FF%FE/deployments".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/api/nodes/99999999999999999999".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        // Bodies too large, of the wrong type, or cut short.
        (
            Method::POST,
            "/api/projects".into(),
            json,
            big_json,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::PUT,
            "/api/policy".into(),
            Some("application/wasm"),
            vec![0u8; 3 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/api/projects".into(),
            Some("text/plain"),
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::POST,
            "/api/projects".into(),
            json,
            b"{\"name\": ".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (status, content_type, v) = send(&d, method.clone(), &path, ct, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        assert_eq!(content_type, "application/json", "{method} {path}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error field in {v}"));
        assert!(!msg.is_empty(), "{method} {path}");
    }
    assert!(d.stop().success());
}

#[tokio::test]
async fn no_request_value_is_echoed_in_an_error() {
    let dir = temp_dir("api-no-echo");
    let d = Daemon::start(&dir);
    let secret = "ghp_LEAKEDLEAKEDLEAKED0123456789abcdefgh";
    let bodies = [
        // An escaped quote inside the value once ended the redaction early.
        json!({"name": "a", "project_type": "compose", "expose_port": "abc\"LEAKED"}),
        json!({"name": "a", "project_type": "compose", "expose_port": "abc\\\"LEAKED"}),
        json!({"name": "a", "project_type": "compose", "expose_port": "\\\\\"LEAKED\"\""}),
        json!({"name": "a", "project_type": "LEAKED`, expected LEAKED"}),
        json!({"name": "a", "project_type": "LEAKED"}),
        json!({"name": "a", "project_type": "compose", "auto_deploy_enabled": "LEAKED"}),
        json!({"name": "LEAKED name!", "project_type": "compose"}),
        json!({"name": "a", "project_type": "compose", "git_branch": "LEAKED branch"}),
        json!({"name": "a", "project_type": "compose", "compose_file_path": "/LEAKED"}),
        json!({"name": "a", "project_type": "compose", "git_source": "external", "git_url": format!("ftp://{secret}/r.git")}),
        json!({"name": "a", "project_type": "compose", "git_source": "external", "git_url": "ftp://LEAKED/r.git"}),
        json!({"name": "a", "project_type": "image", "image_ref": "LEAKED IMAGE", "container_port": 80}),
        json!({"name": "a", "project_type": "compose", "expose_port": secret}),
        json!({"name": "a", "project_type": "compose", "credentials": {"kind": "LEAKED"}}),
        json!({"name": ["LEAKED"], "project_type": "compose"}),
        json!({"name": "a", "project_type": "compose", secret: 1}),
    ];
    for body in bodies {
        let (status, v) = d
            .admin(Method::POST, "/api/projects", Some(body.clone()))
            .await;
        assert!(status.is_client_error(), "{body}: {status} {v}");
        let text = v.to_string();
        assert!(
            !text.contains("LEAKED") && v["error"].is_string(),
            "{body} was echoed: {text}"
        );
    }
    let others = [
        (
            Method::PUT,
            "/api/settings",
            json!({"auto_deploy_master_enabled": "LEAKED"}),
        ),
        (
            Method::PUT,
            "/api/settings",
            json!({"auto_deploy_poll_interval_seconds": "LEAKED"}),
        ),
        (Method::POST, "/api/nodes", json!({"name": "LEAKED node!"})),
        (
            Method::POST,
            "/api/nodes",
            json!({"name": 5, "x": "LEAKED"}),
        ),
    ];
    for (method, path, body) in others {
        let (status, v) = d.admin(method.clone(), path, Some(body.clone())).await;
        assert!(status.is_client_error(), "{method} {path} {body}: {status}");
        assert!(!v.to_string().contains("LEAKED"), "{body} was echoed: {v}");
    }
    for path in [
        "/api/projects/LEAKED",
        "/api/projects/LEAKED/deployments",
        "/api/events?limit=LEAKED",
        "/api/events?ghp_LEAKEDLEAKEDLEAKED0123456789abcdefgh=1",
        "/api/events?project_id=%22LEAKED%22",
        "/api/LEAKED",
    ] {
        let (status, v) = d.admin(Method::GET, path, None).await;
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(!v.to_string().contains("LEAKED"), "{path} was echoed: {v}");
    }
    assert!(d.stop().success());
}

/// The events of one project, newest first.
async fn project_events(d: &Daemon, id: i64) -> Vec<Value> {
    d.ok(
        Method::GET,
        &format!("/api/events?project_id={id}&limit=1000"),
        None,
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

#[tokio::test]
async fn a_patch_that_fails_writes_nothing_of_it() {
    let dir = temp_dir("api-patch-atomic");
    let d = Daemon::start(&dir);
    let external = json!({
        "name": "ext", "project_type": "compose", "expose_service": "web", "expose_port": 80,
        "git_source": "external", "git_url": "https://git.example.test/ext.git",
        "credentials": {"kind": "https", "username": "alice", "token": "first-token-0123456789"},
    });
    let id = d.create_project(external).await;
    d.create_project(compose("taken")).await;
    let before = d
        .ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await;
    let events_before = project_events(&d, id).await;
    assert_eq!(before["auto_deploy_enabled"], false);
    assert_eq!(before["credentials"]["username"], "alice");

    // The toggle (allowed by the policy) and the new credential come with a
    // name another project holds: the clash is found only when the row is
    // written, after the toggle and the credential were judged.
    let change = |name: &str| {
        json!({
            "name": name, "auto_deploy_enabled": true,
            "credentials": {"kind": "https", "username": "mallory", "token": "second-token-0123456789"},
        })
    };
    let (status, v) = d
        .admin(
            Method::PATCH,
            &format!("/api/projects/{id}"),
            Some(change("taken")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let after = d
        .ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await;
    assert_eq!(after, before, "the project is as it was");
    assert_eq!(
        project_events(&d, id).await,
        events_before,
        "no event was logged"
    );

    // A field that fails its check beside the same changes: also nothing.
    let mut bad = change("ext");
    bad["expose_port"] = json!(70000);
    let (status, v) = d
        .admin(Method::PATCH, &format!("/api/projects/{id}"), Some(bad))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        d.ok(Method::GET, &format!("/api/projects/{id}"), None)
            .await,
        before
    );
    assert_eq!(project_events(&d, id).await, events_before);

    // The same change without the clash is written whole, with its event.
    let done = d
        .ok(
            Method::PATCH,
            &format!("/api/projects/{id}"),
            Some(change("renamed")),
        )
        .await;
    assert_eq!(done["name"], "renamed");
    assert_eq!(done["auto_deploy_enabled"], true);
    assert_eq!(done["credentials"]["username"], "mallory");
    let events = project_events(&d, id).await;
    assert_eq!(events.len(), events_before.len() + 1, "{events:?}");
    assert_eq!(events[0]["kind"], "auto-deploy.toggled");
    assert!(d.stop().success());
}

#[tokio::test]
async fn a_hosted_project_exists_only_with_its_repository() {
    let dir = temp_dir("api-create-atomic");
    let d = Daemon::start(&dir);
    // A file where the repositories' directory should be: no repository
    // can be made.
    let repos = dir.join("repos");
    let _ = std::fs::remove_dir_all(&repos);
    std::fs::write(&repos, "not a directory").unwrap();
    let (status, v) = d
        .admin(Method::POST, "/api/projects", Some(compose("web")))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("cannot create the hosted repository"),
        "{v}"
    );
    assert_eq!(d.ok(Method::GET, "/api/projects", None).await, json!([]));
    let events = d.ok(Method::GET, "/api/events", None).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "project.created"),
        "{events}"
    );

    // With the directory back, the same request makes both.
    std::fs::remove_file(&repos).unwrap();
    std::fs::create_dir(&repos).unwrap();
    let made = d
        .ok(Method::POST, "/api/projects", Some(compose("web")))
        .await;
    let id = made["id"].as_i64().unwrap();
    assert!(repos.join(format!("{id}.git")).join("HEAD").is_file());
    assert!(d.stop().success());
}

/// One page: its items, the `X-Next-Cursor` header and the `Link` header.
async fn page(d: &Daemon, path: &str) -> (Vec<Value>, Option<String>, Option<String>) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", d.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (cursor, link) = (header("x-next-cursor"), header("link"));
    let items = resp.json::<Value>().await.unwrap();
    (items.as_array().expect("a list").clone(), cursor, link)
}

/// Follows a list's cursors from `path` (which has a query); the ids of
/// every page, in order, and how many pages there were.
async fn walk(d: &Daemon, path: &str) -> (Vec<i64>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    let mut next = path.to_string();
    loop {
        let (items, cursor, link) = page(d, &next).await;
        pages += 1;
        ids.extend(items.iter().map(|v| v["id"].as_i64().unwrap()));
        let Some(cursor) = cursor else {
            assert!(link.is_none());
            return (ids, pages);
        };
        let link = link.expect("a Link header beside the cursor");
        assert!(
            link.ends_with(&format!("cursor={cursor}>; rel=\"next\"")),
            "{link}"
        );
        next = format!("{path}&cursor={cursor}");
    }
}

#[tokio::test]
async fn lists_are_paged_with_a_limit_and_a_cursor() {
    let dir = temp_dir("api-paging");
    let d = Daemon::start(&dir);
    let mut projects = Vec::new();
    for i in 0..5 {
        projects.push(d.create_project(compose(&format!("p{i}"))).await);
    }
    // Projects: oldest first, each once, pages of the asked size.
    let (ids, pages) = walk(&d, "/api/projects?limit=2").await;
    assert_eq!(ids, projects);
    assert_eq!(pages, 3);
    let (all, cursor, _) = page(&d, "/api/projects").await;
    assert_eq!(all.len(), 5);
    assert_eq!(cursor, None, "one page holds them all by default");

    // Events: newest first, and a filter keeps its cursor.
    let every = d.ok(Method::GET, "/api/events?limit=1000", None).await;
    let every: Vec<i64> = every
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(every.windows(2).all(|w| w[0] > w[1]), "{every:?}");
    assert_eq!(walk(&d, "/api/events?limit=2").await.0, every);
    let p0 = projects[0];
    let p0_events: Vec<i64> = project_events(&d, p0)
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        walk(&d, &format!("/api/events?project_id={p0}&limit=1"))
            .await
            .0,
        p0_events
    );

    // Nodes, and a project's deployments (newest first).
    let mut tokens = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let node = d
            .ok(Method::POST, "/api/nodes", Some(json!({"name": name})))
            .await;
        tokens.push(node["token"].as_str().unwrap().to_string());
    }
    let (nodes, pages) = walk(&d, "/api/nodes?limit=2").await;
    assert_eq!(nodes.len(), 3);
    assert!(nodes.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(pages, 2);
    let mut deployments = Vec::new();
    for _ in 0..3 {
        let dep = d
            .ok(
                Method::POST,
                &format!("/api/projects/{p0}/deployments"),
                None,
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let (status, claim) = d.agent_claim(&tokens[0]).await;
        assert_eq!(status, StatusCode::OK, "{claim}");
        assert_eq!(claim["deployment"]["id"], dep);
        let (status, v) = d
            .agent_report(&tokens[0], dep, json!({"status": "succeeded"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        deployments.insert(0, dep);
    }
    let (ids, pages) = walk(&d, &format!("/api/projects/{p0}/deployments?limit=2")).await;
    assert_eq!(ids, deployments);
    assert_eq!(pages, 2);

    // Bad limits and cursors are a 400 that says what is wrong.
    let (_, projects_cursor, _) = page(&d, "/api/projects?limit=1").await;
    let projects_cursor = projects_cursor.unwrap();
    for (path, words) in [
        (
            "/api/projects?limit=0".to_string(),
            "limit must be from 1 to 1000",
        ),
        (
            "/api/nodes?limit=1001".to_string(),
            "limit must be from 1 to 1000",
        ),
        (
            "/api/events?limit=-5".to_string(),
            "limit must be from 1 to 1000",
        ),
        (
            "/api/projects?cursor=not-a-cursor".to_string(),
            "cursor is not one this list gave out",
        ),
        (
            format!("/api/events?cursor={projects_cursor}"),
            "cursor is not one this list gave out",
        ),
        (
            format!("/api/projects/{p0}/deployments?cursor=%21%21"),
            "cursor",
        ),
        (format!("/api/decisions?cursor={projects_cursor}"), "cursor"),
    ] {
        let (status, v) = d.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(words), "{path}: {v}");
    }
    assert!(d.stop().success());
}
