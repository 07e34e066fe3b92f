//! The command-line client against a running daemon: what the README's
//! walk-through does.

mod common;

use std::process::Command;

use common::daemon::{Daemon, temp_dir};

#[tokio::test]
async fn the_walk_through_works_from_the_command_line() {
    let dir = temp_dir("client");
    let d = Daemon::start(&dir);
    let p = common::cli(
        &d,
        &[
            "project",
            "create",
            "--name",
            "shop",
            "--type",
            "compose",
            "--expose-service",
            "web",
            "--expose-port",
            "8080",
        ],
    )
    .unwrap();
    let id = p["id"].as_i64().unwrap().to_string();
    assert!(p["push_token"].as_str().unwrap().starts_with("adp_"));
    assert_eq!(
        common::cli(&d, &["project", "set", &id, "auto_deploy_enabled=true"]).unwrap()["auto_deploy_enabled"],
        true
    );
    assert_eq!(
        common::cli(&d, &["project", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let first = common::cli(&d, &["project", "deploy", &id]).unwrap();
    assert_eq!(first["status"], "queued");
    let again = common::cli(&d, &["project", "deploy", &id]).unwrap();
    assert_eq!(
        (again["id"].clone(), again["trigger_count"].clone()),
        (first["id"].clone(), 2.into()),
        "coalesced"
    );
    let node = common::cli(&d, &["node", "add", "edge-1"]).unwrap();
    assert!(node["token"].as_str().unwrap().starts_with("adn_"));
    assert_eq!(
        common::cli(&d, &["project", "deployments", &id])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        common::cli(&d, &["settings", "set", "auto_deploy_master_enabled=false"]).unwrap()["auto_deploy_master_enabled"],
        false
    );
    let err = common::cli(
        &d,
        &["settings", "set", "auto_deploy_poll_interval_seconds=3"],
    )
    .unwrap_err();
    assert!(err.contains("must be at least 10, got 3"), "{err}");
    let err = common::cli(&d, &["project", "show", "99"]).unwrap_err();
    assert!(
        err.contains("404") && err.contains("project 99 not found"),
        "{err}"
    );
    let err = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["project", "list"])
        .env("AUTODEPLOY_URL", &d.url)
        .env_remove("AUTODEPLOY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no admin token"));

    // The policy commands reach the daemon too.
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    let err = common::cli(&d, &["policy", "load", junk.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("422") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    let err = common::cli(&d, &["policy", "rollback"]).unwrap_err();
    assert!(err.contains("no previous policy"), "{err}");
    d.stop();
}
