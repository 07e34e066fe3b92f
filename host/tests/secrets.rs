//! Planted credentials never come back: not in API answers, error messages,
//! the event log, the daemon's log (at debug level) or the database file.

mod common;

use common::daemon::{Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TOKEN: &str = "PLANTED-https-token-7f3a9c";
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nPLANTED-ssh-key-b64e0d\n-----END OPENSSH PRIVATE KEY-----\n";
const KEY_MARK: &str = "PLANTED-ssh-key-b64e0d";

#[tokio::test]
async fn planted_secrets_never_appear_anywhere() {
    let dir = temp_dir("secrets");
    let d = Daemon::start(&dir);
    let mut seen = Vec::new();

    let https = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({
                "name": "ext-https", "project_type": "deployment", "git_source": "external",
                "git_url": "https://git.example/acme/app.git",
                "credentials": {"kind": "https", "username": "deploy", "token": TOKEN},
            })),
        )
        .await;
    assert_eq!(
        https["credentials"],
        json!({"kind": "https", "username": "deploy"})
    );
    seen.push(https.to_string());
    let ssh = d
        .ok(Method::POST, "/api/projects", Some(json!({
            "name": "ext-ssh", "project_type": "compose", "git_source": "external",
            "git_url": "git@git.example:acme/app.git", "credentials": {"kind": "ssh", "private_key": KEY},
        })))
        .await;
    assert_eq!(ssh["credentials"], json!({"kind": "ssh", "username": null}));
    seen.push(ssh.to_string());

    // Secrets sent the wrong way are refused without being echoed.
    for body in [
        json!({"name": "x", "project_type": "deployment", "git_source": "external", "git_url": "https://h/r.git", "credentials": TOKEN}),
        json!({"name": "x", "project_type": "deployment", "git_source": "external", "git_url": "git@h:r.git", "credentials": {"kind": "https", "username": "u", "token": TOKEN}}),
        json!({"name": "x", "project_type": "deployment", "git_source": "external", "git_url": format!("https://u:{TOKEN}@h/r.git")}),
        json!({"name": "x", "project_type": "deployment", "credentials": {"kind": "ssh", "private_key": KEY}}),
    ] {
        let (status, v) = d.admin(Method::POST, "/api/projects", Some(body)).await;
        assert!(status.is_client_error(), "{status}");
        seen.push(v.to_string());
    }
    let id = https["id"].as_i64().unwrap();
    let (status, v) = d.admin(Method::PATCH, &format!("/api/projects/{id}"), Some(json!({"credentials": {"kind": "https", "username": "deploy", "token": format!("{TOKEN}-2")}}))).await;
    assert_eq!(status, StatusCode::OK);
    seen.push(v.to_string());
    for path in [
        "/api/projects",
        "/api/events",
        "/api/status",
        &format!("/api/projects/{id}/deployments"),
    ] {
        seen.push(d.ok(Method::GET, path, None).await.to_string());
    }
    d.ok(
        Method::POST,
        &format!("/api/projects/{id}/deployments"),
        None,
    )
    .await;

    let log = d.log();
    assert!(
        log.contains("project created"),
        "the log was captured at debug level"
    );
    seen.push(log);
    assert!(d.stop().success());
    for file in ["autodeploy.db", "autodeploy.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            seen.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    for (i, text) in seen.iter().enumerate() {
        assert!(!text.contains(TOKEN), "the https token leaked in item {i}");
        assert!(!text.contains(KEY_MARK), "the ssh key leaked in item {i}");
    }
}
