//! Deploy nodes: claiming, pinning, reports, what happens when a node goes
//! offline or is deleted, and what a node may see (hosted repositories only
//! while it runs their deployment; only projects its labels match). Uses
//! `node_offline_after_seconds` = 5 (its minimum).

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::git::git;
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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
    let (n1, n2) = (d.add_node("n1").await, d.add_node("n2").await);
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
        .create_project(json!({"name": "api", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;

    // n1 claims web's first deploy: web is now pinned to n1.
    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(&n1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], web);
    assert_eq!(
        claim["project"]["pinned_node_id"],
        claim["deployment"]["node_id"]
    );
    let dep = claim["deployment"]["id"].as_i64().unwrap();

    // Only the node that holds a deployment may report on it.
    let (status, v) = d
        .agent_report(&n2, dep, json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = d.agent_report(&n1, dep, json!({"status": "queued"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let tail = "x".repeat(100_000) + "compose up done";
    let (status, v) = d
        .agent_report(&n1, dep, json!({"status": "succeeded", "log_tail": tail}))
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
    let (status, _) = d.agent_claim(&n2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // n1 stops heartbeating; n2 keeps going. The queued web deploy fails with
    // the refuse-to-migrate error; a new trigger fails at once the same way;
    // the api project still deploys on n2.
    wait_until(
        "the queued web deploy fails once n1 is offline",
        Duration::from_secs(120),
        || async {
            // n2 heartbeats on every check.
            let (status, _) = d
                .call(Method::POST, "/api/agent/heartbeat", Some(&n2), None)
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            d.deployments(web).await[0]["status"] == "failed"
        },
    )
    .await;
    let latest = d.deployments(web).await[0].clone();
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
    let (status, claim) = d.agent_claim(&n2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], api);

    // n2 dies holding that claim: after the timeout the deployment is failed,
    // not silently lost.
    let dep = claim["deployment"]["id"].as_i64().unwrap();
    wait_until(
        "the deployment n2 held fails once n2 is offline",
        Duration::from_secs(120),
        || async { d.deployments(api).await[0]["status"] == "failed" },
    )
    .await;
    let status_now = d.deployments(api).await[0].clone();
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

async fn add_labelled_node(d: &Daemon, name: &str, labels: Value) -> String {
    let node = d
        .ok(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": name, "labels": labels})),
        )
        .await;
    assert_eq!(node["labels"], labels, "the answer shows the labels");
    node["token"].as_str().unwrap().to_string()
}

/// The hosted repository's URL with `token` as the basic-auth password.
fn hosted_url(d: &Daemon, id: i64, token: &str) -> String {
    format!(
        "http://node:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    )
}

/// Runs the real git client in `dir`; Ok(stdout) or Err(stderr).
fn git_try(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("run git");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn refused(result: Result<String, String>, what: &str) {
    match result {
        Ok(out) => panic!("{what}: git succeeded ({out})"),
        Err(e) => assert!(
            e.contains("Authentication failed") || e.contains("401"),
            "{what}: {e}"
        ),
    }
}

/// A hosted project with one pushed commit; returns (id, commit).
async fn hosted_with_commit(d: &Daemon, work: &Path, name: &str) -> (i64, String) {
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080})),
        )
        .await;
    let id = p["id"].as_i64().unwrap();
    let push = p["push_token"].as_str().unwrap();
    std::fs::create_dir_all(work).unwrap();
    git(work, &["init", "-q", "-b", "main"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", name]);
    let sha = git(work, &["rev-parse", "HEAD"]);
    git_try(work, &["push", "-q", &hosted_url(d, id, push), "main"]).expect("push");
    (id, sha)
}

#[tokio::test]
async fn a_node_token_fetches_only_repositories_of_deployments_it_runs() {
    let dir = temp_dir("nodes-fetch");
    let d = Daemon::start(&dir);
    let (n1, n2) = (d.add_node("n1").await, d.add_node("n2").await);
    let (web, sha) = hosted_with_commit(&d, &dir.join("web-work"), "web").await;
    let (other, _) = hosted_with_commit(&d, &dir.join("other-work"), "other").await;

    // No deployment held: the node token fetches nothing.
    refused(
        git_try(&dir, &["ls-remote", &hosted_url(&d, web, &n1)]),
        "n1 before any claim",
    );

    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(&n1).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["project"]["id"], web);
    let dep = claim["deployment"]["id"].as_i64().unwrap();

    // While n1 runs web's deployment: it may clone web, nothing else; n2
    // may not; and n1 still may not push.
    let clone = dir.join("web-clone");
    git_try(
        &dir,
        &[
            "clone",
            "-q",
            &hosted_url(&d, web, &n1),
            clone.to_str().unwrap(),
        ],
    )
    .expect("n1 clones the repository of the deployment it runs");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), sha);
    refused(
        git_try(&dir, &["ls-remote", &hosted_url(&d, other, &n1)]),
        "n1 on a project it runs nothing of",
    );
    refused(
        git_try(&dir, &["ls-remote", &hosted_url(&d, web, &n2)]),
        "n2 on web, which n1 runs",
    );
    git(
        &clone,
        &["commit", "-q", "--allow-empty", "-m", "from a node"],
    );
    refused(
        git_try(&clone, &["push", "-q", &hosted_url(&d, web, &n1), "main"]),
        "n1 pushing",
    );

    // Once the deployment is finished, the node's access ends with it.
    let (status, v) = d
        .agent_report(&n1, dep, json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    refused(
        git_try(&dir, &["ls-remote", &hosted_url(&d, web, &n1)]),
        "n1 after its deployment finished",
    );
    d.stop();
}

#[tokio::test]
async fn claims_go_only_to_nodes_whose_labels_match_the_project_selector() {
    let dir = temp_dir("nodes-labels");
    let d = Daemon::start(&dir);
    let eu = add_labelled_node(&d, "eu", json!({"zone": "eu", "tier": "prod"})).await;
    let us = add_labelled_node(&d, "us", json!({"zone": "us", "tier": "prod"})).await;
    let bare = d.add_node("bare").await;
    let listed = d.ok(Method::GET, "/api/nodes", None).await;
    assert_eq!(listed[0]["labels"], json!({"zone": "eu", "tier": "prod"}));
    assert_eq!(listed[2]["labels"], json!({}));

    // Bad labels or selectors are refused, naming the field.
    let (status, v) = d
        .admin(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "x", "labels": {"bad key": "v"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("labels"), "{v}");
    let (status, v) = d
        .admin(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "y", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "node_selector": {"zone": "e u"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("node_selector"),
        "{v}"
    );

    // An external project with a credential, for eu nodes only: the other
    // nodes never get its deployment, so never its credential.
    let secret = "planted-https-token-4711";
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({
                "name": "euapp", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external",
                "git_url": "https://git.example.invalid/euapp.git",
                "credentials": {"kind": "https", "username": "u", "token": secret},
                "node_selector": {"zone": "eu"},
            })),
        )
        .await;
    assert_eq!(p["node_selector"], json!({"zone": "eu"}));
    let euapp = p["id"].as_i64().unwrap();
    // Matches no node: stays queued.
    let nowhere = d
        .create_project(json!({"name": "nowhere", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "node_selector": {"zone": "mars"}}))
        .await;
    for id in [euapp, nowhere] {
        let q = d
            .ok(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await;
        assert_eq!(q["status"], "queued", "{q}");
    }
    for (token, name) in [(&us, "us"), (&bare, "bare")] {
        let (status, v) = d.agent_claim(token).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name} got {v}");
    }
    let (status, claim) = d.agent_claim(&eu).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], euapp);
    assert_eq!(claim["credential"]["secret"], secret);
    for token in [&eu, &us, &bare] {
        let (status, v) = d.agent_claim(token).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    assert_eq!(d.deployments(nowhere).await[0]["status"], "queued");

    // Clearing the selector lets any node claim it.
    let cleared = d
        .ok(
            Method::PATCH,
            &format!("/api/projects/{nowhere}"),
            Some(json!({"node_selector": null})),
        )
        .await;
    assert_eq!(cleared["node_selector"], json!({}));
    let (status, claim) = d.agent_claim(&bare).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], nowhere);

    // A pinned compose project's selector must keep matching its node.
    let web = d
        .create_project(json!({"name": "web", "project_type": "compose", "expose_service": "web", "expose_port": 80, "node_selector": {"tier": "prod"}}))
        .await;
    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(&us).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["project"]["id"], web);
    let (status, v) = d
        .admin(
            Method::PATCH,
            &format!("/api/projects/{web}"),
            Some(json!({"node_selector": {"zone": "eu"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("node us"), "{v}");
    assert!(
        !d.log().contains(secret),
        "the credential never reaches the log"
    );
    d.stop();
}

/// A compose project that `token`'s node claims (and so is pinned to);
/// returns (project id, deployment id).
async fn pinned_compose(d: &Daemon, name: &str, token: &str) -> (i64, i64) {
    let id = d
        .create_project(json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 80}))
        .await;
    d.ok(
        Method::POST,
        &format!("/api/projects/{id}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(token).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["project"]["id"], id);
    (id, claim["deployment"]["id"].as_i64().unwrap())
}

#[tokio::test]
async fn deleting_a_node_with_pinned_projects_answers_409_naming_them() {
    let dir = temp_dir("nodes-delete-409");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let n1_id = d.ok(Method::GET, "/api/nodes", None).await[0]["id"]
        .as_i64()
        .unwrap();
    let (web, dep) = pinned_compose(&d, "web", &n1).await;
    d.agent_report(&n1, dep, json!({"status": "succeeded"}))
        .await;
    pinned_compose(&d, "db", &n1).await;

    let (status, v) = d
        .admin(Method::DELETE, &format!("/api/nodes/{n1_id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("\"web\"") && error.contains("\"db\"") && error.contains("force=true"),
        "{error}"
    );
    let (status, v) = d
        .admin(
            Method::DELETE,
            &format!("/api/nodes/{n1_id}?force=maybe"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // Nothing changed: the node, the pin and its running deployment stay.
    assert_eq!(
        d.ok(Method::GET, "/api/nodes", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let p = d
        .ok(Method::GET, &format!("/api/projects/{web}"), None)
        .await;
    assert_eq!(p["pinned_node_id"], n1_id);
    let (status, _) = d
        .call(Method::POST, "/api/agent/heartbeat", Some(&n1), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "the node's token still works"
    );
    d.stop();
}

#[tokio::test]
async fn force_delete_unpins_and_fails_the_deployments_the_node_held() {
    let dir = temp_dir("nodes-delete-force");
    let d = Daemon::start(&dir);
    let (n1, n2) = (d.add_node("n1").await, d.add_node("n2").await);
    let n1_id = d.ok(Method::GET, "/api/nodes", None).await[0]["id"]
        .as_i64()
        .unwrap();
    // web: one deployment running on n1, the next queued for n1 (pinned).
    let (web, running) = pinned_compose(&d, "web", &n1).await;
    let queued = d
        .ok(
            Method::POST,
            &format!("/api/projects/{web}/deployments"),
            None,
        )
        .await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["node_id"], n1_id);
    let queued = queued["id"].as_i64().unwrap();

    let done = d
        .ok(
            Method::DELETE,
            &format!("/api/nodes/{n1_id}?force=true"),
            None,
        )
        .await;
    assert_eq!(done["unpinned"], json!(["web"]), "{done}");
    assert_eq!(
        done["failed_deployments"],
        json!([running, queued]),
        "{done}"
    );

    let deps = d.deployments(web).await;
    let by_id = |id: i64| deps.iter().find(|x| x["id"] == id).unwrap().clone();
    let (r, q) = (by_id(running), by_id(queued));
    assert_eq!(r["status"], "failed");
    assert_eq!(
        r["error"],
        "node n1 was deleted while running this deployment; it was not finished"
    );
    assert_eq!(q["status"], "failed");
    assert_eq!(
        q["error"],
        "node n1 was deleted while this deployment was queued for it"
    );
    let p = d
        .ok(Method::GET, &format!("/api/projects/{web}"), None)
        .await;
    assert_eq!(p["pinned_node_id"], Value::Null);
    let events = d
        .ok(Method::GET, &format!("/api/events?project_id={web}"), None)
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "project.unpinned"
                && e["message"].as_str().unwrap().contains("\"web\"")
                && e["message"].as_str().unwrap().contains("node n1")),
        "{events}"
    );

    // The deleted node's token is dead, and the project is not stuck: its
    // next deployment goes to another node.
    let (status, _) = d.agent_claim(&n1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    d.ok(
        Method::POST,
        &format!("/api/projects/{web}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(&n2).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["project"]["id"], web);
    d.stop();
}

/// A control plane that was down longer than the offline timeout must not
/// take its own absence for the nodes': a node that heartbeats again after
/// the restart keeps its running deployment.
#[tokio::test]
async fn a_restarted_control_plane_does_not_fail_the_deploys_of_nodes_that_come_back() {
    let dir = temp_dir("nodes-restart-grace");
    let d = Daemon::start(&dir);
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"node_offline_after_seconds": 5})),
    )
    .await;
    let n1 = d.add_node("n1").await;
    let api = d
        .create_project(json!({"name": "api", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    d.ok(
        Method::POST,
        &format!("/api/projects/{api}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(&n1).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let dep = claim["deployment"]["id"].clone();
    d.stop();

    // The scenario itself: the control plane stays down past the timeout.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let d = Daemon::start(&dir);
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let beat = || async {
        d.call(Method::POST, "/api/agent/heartbeat", Some(&n1), None)
            .await
    };
    beat().await;
    // Heartbeat as an agent does until the node watch has run a tick that
    // could have judged n1 (one more than the timeout after the restart).
    common::wait_until(
        "the node watch ticked past the timeout after the restart",
        Duration::from_secs(120),
        || async {
            beat().await;
            let status = d.ok(Method::GET, "/api/status", None).await;
            status["loops"]["node-watch"]["last_tick_at"]
                .as_i64()
                .is_some_and(|t| t > restarted + 6)
        },
    )
    .await;
    let now = d.deployments(api).await[0].clone();
    assert_eq!(now["id"], dep);
    assert_eq!(now["status"], "running", "{}", now["error"]);
    d.stop();
}
