//! SIGKILL the daemon again and again while triggers and claims are in
//! flight: no deployment is lost or doubled, and every trigger the store
//! accepted is counted exactly once. A push cut off by SIGKILL after its ref
//! moved is deployed when the daemon starts again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use common::wait_until;
use reqwest::Method;
use serde_json::json;

const ROUNDS: u64 = 6;
const PER_TASK: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_between_triggers_loses_and_doubles_nothing() {
    let dir = temp_dir("crash");
    let sent = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let (mut project, mut node_token) = (0i64, String::new());
    // Made once: building a client costs more than a round lasts on a
    // loaded machine.
    let http = reqwest::Client::new();

    for round in 0..ROUNDS {
        let d = Daemon::start(&dir);
        if round == 0 {
            project = d
                .create_project(json!({"name": "web", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
                .await;
            node_token = d.add_node("n1").await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (url, sent, acked, http) =
                (d.url.clone(), sent.clone(), acked.clone(), http.clone());
            tasks.spawn(async move {
                for _ in 0..PER_TASK {
                    sent.fetch_add(1, Ordering::SeqCst);
                    let resp = http
                        .post(format!("{url}/api/projects/{project}/deployments"))
                        .bearer_auth(ADMIN)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 201 => acked.fetch_add(1, Ordering::SeqCst),
                        // The daemon died under this request: stop.
                        _ => break,
                    };
                }
            });
        }
        // A node keeps claiming, so triggers both coalesce and start new deployments.
        let (url, token, http) = (d.url.clone(), node_token.clone(), http.clone());
        tasks.spawn(async move {
            for _ in 0..PER_TASK {
                if http
                    .post(format!("{url}/api/agent/claim"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        });
        // The kill lands a varying time after the round's first trigger
        // was acknowledged, however slow the machine is.
        let before = acked.load(Ordering::SeqCst);
        wait_until(
            "a trigger acknowledged in this round",
            Duration::from_secs(60),
            || async { acked.load(Ordering::SeqCst) > before },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(60 + 45 * round)).await;
        d.kill();
        while tasks.join_next().await.is_some() {}
    }

    let d = Daemon::start(&dir);
    let deployments = d
        .ok(
            Method::GET,
            &format!("/api/projects/{project}/deployments?limit=1000"),
            None,
        )
        .await;
    let deployments = deployments.as_array().unwrap();
    let counted: i64 = deployments
        .iter()
        .map(|d| d["trigger_count"].as_i64().unwrap())
        .sum();
    let events = d
        .ok(
            Method::GET,
            &format!("/api/events?project_id={project}&limit=1000"),
            None,
        )
        .await;
    let triggered = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "deploy.triggered")
        .count() as i64;
    let (sent, acked) = (
        sent.load(Ordering::SeqCst) as i64,
        acked.load(Ordering::SeqCst) as i64,
    );
    let queued = deployments
        .iter()
        .filter(|d| d["status"] == "queued")
        .count();

    eprintln!(
        "sent {sent}, acknowledged {acked}, recorded {counted} in {} deployments",
        deployments.len()
    );
    assert!(
        acked > 0 && deployments.len() > 1,
        "the test exercised inserts and coalescing"
    );
    assert_eq!(
        counted, triggered,
        "each trigger's deployment write and its event commit together"
    );
    assert!(acked <= counted, "an acknowledged trigger was lost");
    assert!(counted <= sent, "a trigger was recorded twice");
    assert!(
        queued <= 1,
        "at most one queued deployment per project, crash or not"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_ref_moved_is_reconciled_at_start_up() {
    let dir = temp_dir("crash-push");
    let d = Daemon::start(&dir);
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "web", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "auto_deploy_enabled": true})),
        )
        .await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    let bare = dir.join("repos").join(format!("{id}.git"));
    assert!(
        bare.is_dir(),
        "the hosted repository is at {}",
        bare.display()
    );

    // The hook runs after receive-pack moved the ref and before the daemon
    // hears the push is over: SIGKILL lands exactly between the two.
    let hook = bare.join("hooks").join("post-receive");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, format!("#!/bin/sh\nkill -9 {}\n", d.child.id())).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "first"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let url = format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    let pushed = std::process::Command::new("git")
        .args(["push", "-q", &url, "main"])
        .current_dir(&work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(!pushed.status.success(), "the daemon died under the push");
    d.kill();
    std::fs::remove_file(&hook).unwrap();
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]),
        sha,
        "the ref moved before the crash"
    );

    let d = Daemon::start(&dir);
    wait_until(
        "the pushed commit's deployment after the restart",
        Duration::from_secs(60),
        || async {
            d.deployments(id)
                .await
                .iter()
                .any(|dep| dep["target_commit"] == sha.as_str() && dep["source"] == "auto-push")
        },
    )
    .await;
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1, "deployed once: {deps:?}");
    assert_eq!(
        d.ok(Method::GET, &format!("/api/projects/{id}"), None)
            .await["last_tracked_commit_sha"],
        sha.as_str()
    );
    // A re-push has nothing to send; the daemon already caught up.
    let url = format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    let again = std::process::Command::new("git")
        .args(["push", &url, "main"])
        .current_dir(&work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("up-to-date"));
    assert_eq!(d.deployments(id).await.len(), 1);
    d.stop();
}
