//! Swapping the daemon's policy at runtime: through the API, through SIGHUP,
//! refusals that leave the running policy in place, and rollback.

mod common;

use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put_policy(d: &Daemon, bytes: Vec<u8>) -> (StatusCode, Value) {
    d.raw(
        Method::PUT,
        "/api/policy",
        Some(ADMIN),
        bytes,
        "application/wasm",
    )
    .await
}

async fn active_sha(d: &Daemon) -> String {
    d.ok(Method::GET, "/api/status", None).await["policy"]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn policies_swap_refuse_and_roll_back_without_a_restart() {
    let dir = temp_dir("policy-swap");
    let d = Daemon::start(&dir);
    let bundled = active_sha(&d).await;
    let id = d
        .create_project(json!({"name": "api", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;

    // A hostile policy, junk, and a policy missing functions are refused
    // with the reason; the running policy stays.
    let (status, v) = put_policy(&d, common::hostile_policy(common::LOOP_BODY)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("self-test"), "{v}");
    // The instruction budget ends the loop; only a host stalled for the
    // whole wall-clock backstop would see the deadline instead.
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("instruction budget") || error.contains("deadline"),
        "{v}"
    );
    let (status, v) = put_policy(&d, b"\0asm junk".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{v}"
    );
    let (status, v) = put_policy(&d, Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(active_sha(&d).await, bundled);

    // A good one is switched to at once, and decides the next deployment.
    let (status, v) = put_policy(&d, common::policy_variant("a")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a = v["sha256"].as_str().unwrap().to_string();
    assert_ne!(a, bundled);
    assert_eq!(active_sha(&d).await, a);
    let dep = d
        .ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
    assert_eq!(dep["policy_sha256"], a.as_str());

    // Rollback returns to the previous policy, and rolling back again swaps back.
    assert_eq!(
        d.ok(Method::POST, "/api/policy/rollback", None).await["sha256"],
        bundled.as_str()
    );
    assert_eq!(active_sha(&d).await, bundled);
    assert_eq!(
        d.ok(Method::POST, "/api/policy/rollback", None).await["sha256"],
        a.as_str()
    );

    // The accepted policy survives a restart.
    d.stop();
    let d = Daemon::start(&dir);
    assert_eq!(active_sha(&d).await, a);
    d.stop();
}

#[tokio::test]
async fn sighup_reloads_the_policy_file_and_keeps_the_old_one_if_the_new_fails() {
    let dir = temp_dir("policy-hup");
    let file = dir.join("policy.wasm");
    std::fs::write(&file, common::policy_variant("one")).unwrap();
    let d = Daemon::start_with(&dir, &["--policy", file.to_str().unwrap()], &[]);
    let one = active_sha(&d).await;

    std::fs::write(&file, common::policy_variant("two")).unwrap();
    d.signal("HUP");
    wait_until(
        "SIGHUP reloaded the file",
        Duration::from_secs(60),
        || async { active_sha(&d).await != one },
    )
    .await;
    let now = active_sha(&d).await;

    // Waits for the daemon to have refused the broken file, then checks the
    // running policy: no guess at how long a reload takes.
    std::fs::write(&file, b"broken").unwrap();
    d.signal("HUP");
    wait_until(
        "the daemon logged that it refused the broken file",
        Duration::from_secs(60),
        || async { d.log().contains("policy refused, the running one stays") },
    )
    .await;
    assert_eq!(
        active_sha(&d).await,
        now,
        "a broken file leaves the running policy"
    );
    assert!(d.stop().success());
}

#[tokio::test]
async fn a_policy_that_fails_its_self_test_is_refused_at_start() {
    let dir = temp_dir("policy-start");
    let file = dir.join("hostile.wasm");
    std::fs::write(&file, common::hostile_policy(common::TRAP_BODY)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["serve", "--policy", file.to_str().unwrap()])
        .env("AUTODEPLOY_LISTEN", "127.0.0.1:0")
        .env("AUTODEPLOY_DATA_DIR", &dir)
        .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fails its self-test") && err.contains("trapped"),
        "{}",
        &err[..err.len().min(500)]
    );
}
