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
            "belong to image projects only",
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
    assert_eq!(status["loops"]["node-watch"]["state"], "running");
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
    let (status, claim) = d
        .call(Method::POST, "/api/agent/claim", Some(node_token), None)
        .await;
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
    let (status, _) = d
        .call(Method::POST, "/api/agent/claim", Some(node_token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let running = claim["deployment"]["id"].as_i64().unwrap();
    let (status, v) = d
        .call(
            Method::POST,
            &format!("/api/agent/deployments/{running}/report"),
            Some(node_token),
            Some(json!({"status": "succeeded"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, next) = d
        .call(Method::POST, "/api/agent/claim", Some(node_token), None)
        .await;
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
