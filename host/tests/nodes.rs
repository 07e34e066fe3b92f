//! Deploy nodes: claiming, pinning, reports, and what happens when a node
//! goes offline. Uses `node_offline_after_seconds` = 5 (its minimum).

mod common;

use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn add_node(d: &Daemon, name: &str) -> String {
    let node = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": name})))
        .await;
    node["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn compose_projects_pin_to_their_first_node_and_refuse_to_migrate() {
    let dir = temp_dir("nodes");
    let d = Daemon::start(&dir);
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"node_offline_after_seconds": 5})),
    )
    .await;
    let (n1, n2) = (add_node(&d, "n1").await, add_node(&d, "n2").await);
    let listed = d.ok(Method::GET, "/api/nodes", None).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.get("token").is_none()),
        "tokens are shown once"
    );

    let web = d.create_project(json!({"name": "web", "project_type": "compose", "expose_service": "web", "expose_port": 80})).await;
    let api = d
        .create_project(json!({"name": "api", "project_type": "deployment"}))
        .await;

    // n1 claims web's first deploy: web is now pinned to n1.
    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d
        .call(Method::POST, "/api/agent/claim", Some(&n1), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], web);
    assert_eq!(
        claim["project"]["pinned_node_id"],
        claim["deployment"]["node_id"]
    );
    let dep = claim["deployment"]["id"].as_i64().unwrap();

    // Only the node that holds a deployment may report on it.
    let (status, v) = d
        .call(
            Method::POST,
            &format!("/api/agent/deployments/{dep}/report"),
            Some(&n2),
            Some(json!({"status": "succeeded"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = d
        .call(
            Method::POST,
            &format!("/api/agent/deployments/{dep}/report"),
            Some(&n1),
            Some(json!({"status": "queued"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let tail = "x".repeat(100_000) + "compose up done";
    let (status, v) = d
        .call(
            Method::POST,
            &format!("/api/agent/deployments/{dep}/report"),
            Some(&n1),
            Some(json!({"status": "succeeded", "log_tail": tail})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", v["error"]);
    assert_eq!(v["status"], "succeeded");
    let kept = v["log_tail"].as_str().unwrap();
    assert!(kept.len() <= 64 * 1024 && kept.ends_with("compose up done"));

    // web's next deploy is for n1 alone: n2 gets nothing.
    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, _) = d
        .call(Method::POST, "/api/agent/claim", Some(&n2), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // n1 stops heartbeating; n2 keeps going. The queued web deploy fails with
    // the refuse-to-migrate error; a new trigger fails at once the same way;
    // the api project still deploys on n2.
    let mut latest = Value::Null;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, _) = d
            .call(Method::POST, "/api/agent/heartbeat", Some(&n2), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        latest = d.deployments(web).await[0].clone();
        if latest["status"] == "failed" {
            break;
        }
    }
    assert_eq!(latest["status"], "failed", "{}", latest["id"]);
    assert!(
        latest["error"]
            .as_str()
            .unwrap()
            .contains("refusing to migrate"),
        "{}",
        latest["error"]
    );
    let again = d
        .ok(
            Method::POST,
            &format!("/api/projects/{web}/deployments"),
            None,
        )
        .await;
    assert_eq!(again["status"], "failed");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("node n1 is offline"),
        "{again}"
    );

    d.ok(
        Method::POST,
        &format!("/api/projects/{api}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d
        .call(Method::POST, "/api/agent/claim", Some(&n2), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], api);

    // n2 dies holding that claim: after the timeout the deployment is failed,
    // not silently lost.
    let dep = claim["deployment"]["id"].as_i64().unwrap();
    let mut status_now = Value::Null;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        status_now = d.deployments(api).await[0].clone();
        if status_now["status"] == "failed" {
            break;
        }
    }
    assert_eq!(status_now["id"], dep);
    assert_eq!(status_now["status"], "failed", "{}", status_now["error"]);
    assert!(
        status_now["error"]
            .as_str()
            .unwrap()
            .contains("went offline while running"),
        "{}",
        status_now["error"]
    );

    // n1 comes back: web deploys there again.
    d.call(Method::POST, "/api/agent/heartbeat", Some(&n1), None)
        .await;
    let back = d
        .ok(
            Method::POST,
            &format!("/api/projects/{web}/deployments"),
            None,
        )
        .await;
    assert_eq!(back["status"], "queued", "{back}");
    d.stop();
}
