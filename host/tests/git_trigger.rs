//! The git trigger against real servers on loopback: pushes to hosted
//! repositories, and polls over file://, git daemon, smart HTTP with basic
//! auth, and SSH.

mod common;

use std::path::Path;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::{
    bare_with_commit, commit_to, git, git_daemon, nginx_git, silent_server, sshd, whoami,
};
use reqwest::Method;
use serde_json::{Value, json};

async fn create(d: &Daemon, body: Value) -> Value {
    d.ok(Method::POST, "/api/projects", Some(body)).await
}

fn remote(d: &Daemon, id: i64, token: &str) -> String {
    format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    )
}

fn try_push(dir: &Path, url: &str, refspec: &str) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .args(["push", "-q", url, refspec])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Only the ticks a test asks for run: the poll loop ticked at start (with
/// no projects yet), and a changed interval applies from its next tick, an
/// hour after that one.
async fn only_asked_ticks(d: &Daemon) {
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    common::wait_until(
        "the poll loop's tick at start ran",
        std::time::Duration::from_secs(60),
        || async {
            !d.ok(Method::GET, "/api/status", None).await["loops"]["git-poll"]["last_tick_at"]
                .is_null()
        },
    )
    .await;
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn pushes_to_hosted_repositories_trigger_auto_push() {
    let dir = temp_dir("git-push");
    let d = Daemon::start(&dir);
    let a = create(
        &d,
        json!({"name": "a", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "auto_deploy_enabled": true}),
    )
    .await;
    let b = create(&d, json!({"name": "b", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080})).await;
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let (a_token, b_token) = (
        a["push_token"].as_str().unwrap(),
        b["push_token"].as_str().unwrap(),
    );

    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let first = commit(&work, "first");

    // Another project's token, or none, is refused.
    let err = try_push(&work, &remote(&d, a_id, b_token), "main").unwrap_err();
    assert!(
        err.contains("Authentication failed") || err.contains("401"),
        "{err}"
    );
    let err = try_push(&work, &format!("{}/git/{a_id}.git", d.url), "main").unwrap_err();
    assert!(
        err.contains("Authentication failed") || err.contains("could not read Username"),
        "{err}"
    );
    assert!(d.deployments(a_id).await.is_empty());
    // A deploy node's token may fetch, never push.
    let node = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await;
    let node_token = node["token"].as_str().unwrap();
    let err = try_push(&work, &remote(&d, a_id, node_token), "main").unwrap_err();
    assert!(
        err.contains("Authentication failed") || err.contains("401"),
        "{err}"
    );

    // The first push aligns: one auto-push deployment of that commit.
    try_push(&work, &remote(&d, a_id, a_token), "main").unwrap();
    let deps = d.deployments(a_id).await;
    assert_eq!(deps.len(), 1, "the deployment exists when the push returns");
    assert_eq!(
        (
            deps[0]["source"].as_str(),
            deps[0]["target_commit"].as_str()
        ),
        (Some("auto-push"), Some(first.as_str()))
    );
    assert_eq!(
        d.ok(Method::GET, &format!("/api/projects/{a_id}"), None)
            .await["last_tracked_commit_sha"],
        first.as_str()
    );

    // Another branch triggers nothing; the admin token may push too.
    git(&work, &["checkout", "-q", "-b", "feature"]);
    commit(&work, "on a branch");
    try_push(&work, &remote(&d, a_id, ADMIN), "feature").unwrap();
    assert_eq!(d.deployments(a_id).await[0]["trigger_count"], 1);

    // A burst of pushes coalesces into the queued deployment.
    git(&work, &["checkout", "-q", "main"]);
    let mut last = String::new();
    for i in 0..10 {
        last = commit(&work, &format!("burst {i}"));
        try_push(&work, &remote(&d, a_id, a_token), "main").unwrap();
    }
    let deps = d.deployments(a_id).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["trigger_count"], 11);
    assert_eq!(deps[0]["target_commit"], last.as_str());

    // Toggle off, or master switch off: the push succeeds, nothing deploys.
    let b_work = dir.join("b-work");
    std::fs::create_dir_all(&b_work).unwrap();
    git(&b_work, &["init", "-q", "-b", "main"]);
    commit(&b_work, "b1");
    try_push(&b_work, &remote(&d, b_id, b_token), "main").unwrap();
    assert!(
        d.deployments(b_id).await.is_empty(),
        "b has auto-deploy off"
    );
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_master_enabled": false})),
    )
    .await;
    commit(&work, "paused");
    try_push(&work, &remote(&d, a_id, a_token), "main").unwrap();
    assert_eq!(d.deployments(a_id).await[0]["trigger_count"], 11);
    let events = d
        .ok(Method::GET, &format!("/api/events?project_id={a_id}"), None)
        .await;
    assert!(
        events.to_string().contains("master switch off"),
        "the skipped push is recorded"
    );

    // Clone and fetch work, including gzip-compressed negotiation bodies.
    for i in 0..40 {
        git(
            &work,
            &["branch", &format!("topic-{i:02}-with-a-fairly-long-name")],
        );
    }
    try_push(
        &work,
        &remote(&d, a_id, a_token),
        "refs/heads/*:refs/heads/*",
    )
    .unwrap();
    let clone = dir.join("clone");
    git(
        &dir,
        &[
            "clone",
            "-q",
            &remote(&d, a_id, a_token),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD"]),
        git(&work, &["rev-parse", "main"])
    );
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    git(&other, &["init", "-q", "-b", "main"]);
    for i in 0..30 {
        commit(&other, &format!("unrelated {i}"));
    }
    let out = std::process::Command::new("git")
        .args([
            "fetch",
            "-q",
            &remote(&d, a_id, a_token),
            "refs/heads/*:refs/remotes/a/*",
        ])
        .current_dir(&other)
        .env("GIT_TRACE_CURL", "1")
        .env("GIT_TRACE_CURL_NO_DATA", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Content-Encoding: gzip"),
        "the fetch sent a gzip body"
    );
    assert!(
        !d.log().contains(a_token),
        "push tokens stay out of the log"
    );
    d.stop();
}

#[tokio::test]
async fn external_repositories_are_polled_over_every_transport() {
    let dir = temp_dir("git-poll");
    let repos = dir.join("repos");
    let file_sha = bare_with_commit(&repos.join("file.git"));
    let daemon_sha = bare_with_commit(&repos.join("served.git"));
    let ssh_sha = bare_with_commit(&repos.join("ssh.git"));
    let nginx_sha = bare_with_commit(&repos.join("nginx.git"));
    let gitd = git_daemon(&repos);
    let nginx = nginx_git(&dir.join("nginx"), &repos, "deploy", "nginx-secret-token");
    let (sshd, key) = sshd(&dir.join("sshd"));
    let silent = silent_server();

    // The cap ends the hanging remote's lookup; it must also leave an SSH
    // handshake on a saturated host room to finish.
    let d = Daemon::start_with(&dir, &[], &[("AUTODEPLOY_GIT_TIMEOUT_SECONDS", "10")]);
    only_asked_ticks(&d).await;
    // A hosted project of this daemon serves as an external smart-HTTP remote
    // with basic auth.
    let hosted = create(&d, json!({"name": "hosted", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080})).await;
    let hosted_token = hosted["push_token"].as_str().unwrap().to_string();
    let work = dir.join("hosted-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let http_sha = commit(&work, "served over http");
    try_push(
        &work,
        &remote(&d, hosted["id"].as_i64().unwrap(), &hosted_token),
        "main",
    )
    .unwrap();
    let http_url = format!("{}/git/{}.git", d.url, hosted["id"]);

    let external = |name: &str, url: String, extra: Value| {
        let mut body = json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external", "git_url": url, "auto_deploy_enabled": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let planted = "PLANTED-wrong-token-91c2";
    let mut ids = std::collections::BTreeMap::new();
    for (name, body) in [
        (
            "file",
            external(
                "file",
                format!("file://{}", repos.join("file.git").display()),
                json!({}),
            ),
        ),
        (
            "daemon",
            external(
                "daemon",
                format!("git://127.0.0.1:{}/served.git", gitd.port),
                json!({}),
            ),
        ),
        (
            "http",
            external(
                "http",
                http_url.clone(),
                json!({"credentials": {"kind": "https", "username": "x", "token": hosted_token}}),
            ),
        ),
        (
            "nginx",
            external(
                "nginx",
                format!("http://127.0.0.1:{}/git/nginx.git", nginx.port),
                json!({"credentials": {"kind": "https", "username": "deploy", "token": "nginx-secret-token"}}),
            ),
        ),
        (
            "nginx-wrong",
            external(
                "nginx-wrong",
                format!("http://127.0.0.1:{}/git/nginx.git", nginx.port),
                json!({"credentials": {"kind": "https", "username": "deploy", "token": planted}}),
            ),
        ),
        (
            "ssh",
            external(
                "ssh",
                format!(
                    "ssh://{}@127.0.0.1:{}{}",
                    whoami(),
                    sshd.port,
                    repos.join("ssh.git").display()
                ),
                json!({"credentials": {"kind": "ssh", "private_key": key}}),
            ),
        ),
        (
            "missing-branch",
            external(
                "missing-branch",
                format!("file://{}", repos.join("file.git").display()),
                json!({"git_branch": "nope"}),
            ),
        ),
        (
            "wrong-token",
            external(
                "wrong-token",
                http_url.clone(),
                json!({"credentials": {"kind": "https", "username": "x", "token": planted}}),
            ),
        ),
        (
            "hanging",
            external(
                "hanging",
                format!("http://127.0.0.1:{}/repo.git", silent.port),
                json!({}),
            ),
        ),
        (
            "toggle-off",
            external(
                "toggle-off",
                format!("file://{}", repos.join("file.git").display()),
                json!({"auto_deploy_enabled": false}),
            ),
        ),
    ] {
        ids.insert(name, create(&d, body).await["id"].as_i64().unwrap());
    }

    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    let result = |tick: &Value, name: &str| -> Value {
        tick["projects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(tick["checked"], 9, "{tick}");
    assert_eq!(tick["triggered"], 5, "{tick}");
    assert_eq!(tick["errors"], 4, "{tick}");
    for (name, sha) in [
        ("file", &file_sha),
        ("daemon", &daemon_sha),
        ("http", &http_sha),
        ("nginx", &nginx_sha),
        ("ssh", &ssh_sha),
    ] {
        assert_eq!(
            result(&tick, name)["outcome"],
            "triggered",
            "{name}: {}",
            result(&tick, name)
        );
        let deps = d.deployments(ids[name]).await;
        assert_eq!(
            (
                deps.len(),
                deps[0]["source"].as_str(),
                deps[0]["target_commit"].as_str()
            ),
            (1, Some("auto-poll"), Some(sha.as_str())),
            "{name}"
        );
    }
    let missing = result(&tick, "missing-branch");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("branch \"nope\" does not exist"),
        "{missing}"
    );
    for name in ["wrong-token", "nginx-wrong"] {
        let wrong = result(&tick, name);
        assert!(
            wrong["error"].as_str().unwrap().contains("authentication"),
            "{wrong}"
        );
        assert!(!wrong.to_string().contains(planted));
    }
    let hanging = result(&tick, "hanging");
    assert!(
        hanging["error"]
            .as_str()
            .unwrap()
            .contains("did not finish within 10s"),
        "{hanging}"
    );
    for name in [
        "missing-branch",
        "wrong-token",
        "nginx-wrong",
        "hanging",
        "toggle-off",
    ] {
        assert!(
            d.deployments(ids[name]).await.is_empty(),
            "{name} must not deploy"
        );
    }

    // Nothing moved: nothing triggers.
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    assert_eq!(
        (tick["triggered"].as_i64(), tick["errors"].as_i64()),
        (Some(0), Some(4)),
        "{tick}"
    );

    // A new commit is picked up on the next tick, and only there.
    let new_sha = commit_to(&repos.join("file.git"), "main", "second");
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    assert_eq!(tick["triggered"], 1, "{tick}");
    // Nobody claimed the first deployment: it absorbs the move, keeping the
    // reason it was created with.
    let deps = d.deployments(ids["file"]).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["target_commit"], new_sha.as_str());
    assert_eq!(deps[0]["trigger_count"], 2);
    assert!(
        deps[0]["reason"].as_str().unwrap().contains("to align"),
        "{}",
        deps[0]["reason"]
    );

    // The master switch pauses polling.
    commit_to(&repos.join("file.git"), "main", "third");
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_master_enabled": false})),
    )
    .await;
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    assert_eq!(
        (tick["paused"].as_bool(), tick["checked"].as_i64()),
        (Some(true), Some(0))
    );

    let events = d
        .ok(Method::GET, "/api/events?limit=1000", None)
        .await
        .to_string();
    let log = d.log();
    for text in [&events, &log] {
        assert!(
            !text.contains(planted)
                && !text.contains(&hosted_token)
                && !text.contains("PRIVATE KEY"),
            "a credential leaked"
        );
    }
    d.stop();
}

#[tokio::test]
async fn a_push_to_any_branch_compares_the_tracked_branch() {
    let dir = temp_dir("git-align");
    let d = Daemon::start(&dir);
    only_asked_ticks(&d).await;
    let p = create(&d, json!({"name": "a", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080})).await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let first = commit(&work, "first");
    try_push(&work, &remote(&d, id, token), "main").unwrap();
    assert!(d.deployments(id).await.is_empty(), "auto-deploy is off");

    // Turned on later: the next push, even of another branch, aligns main.
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    git(&work, &["checkout", "-q", "-b", "feature"]);
    commit(&work, "on a branch");
    try_push(&work, &remote(&d, id, token), "feature").unwrap();
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(
        (
            deps[0]["source"].as_str(),
            deps[0]["target_commit"].as_str()
        ),
        (Some("auto-push"), Some(first.as_str()))
    );
    // Once aligned, another branch moves nothing.
    commit(&work, "again on a branch");
    try_push(&work, &remote(&d, id, token), "feature").unwrap();
    assert_eq!(d.deployments(id).await[0]["trigger_count"], 1);
    d.stop();
}

#[tokio::test]
async fn failures_before_the_node_are_retried_each_tick_and_folded() {
    let dir = temp_dir("git-retry");
    let d = Daemon::start(&dir);
    only_asked_ticks(&d).await;
    // Compose projects without their expose fields: the policy refuses to deploy.
    let h = create(
        &d,
        json!({"name": "h", "project_type": "compose", "auto_deploy_enabled": true}),
    )
    .await;
    let (h_id, h_token) = (h["id"].as_i64().unwrap(), h["push_token"].as_str().unwrap());
    let bare = dir.join("x.git");
    let x_sha = bare_with_commit(&bare);
    let x_id = create(
        &d,
        json!({"name": "x", "project_type": "compose", "git_source": "external",
               "git_url": format!("file://{}", bare.display()), "auto_deploy_enabled": true}),
    )
    .await["id"]
        .as_i64()
        .unwrap();

    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    let h_sha = commit(&work, "first");
    try_push(&work, &remote(&d, h_id, h_token), "main").unwrap();
    let deps = d.deployments(h_id).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["status"], "failed");
    assert!(
        deps[0]["error"].as_str().unwrap().contains("expose"),
        "{}",
        deps[0]
    );
    let tracked = |id: i64| {
        let d = &d;
        async move {
            d.ok(Method::GET, &format!("/api/projects/{id}"), None)
                .await["last_tracked_commit_sha"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(tracked(h_id).await, "", "a refused deploy is not tracked");

    // Each tick tries again (the push through reconciliation, the external
    // repository through its poll); the same failure folds into one row.
    for round in 1..=2 {
        let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
        assert_eq!(
            (
                tick["checked"].as_i64(),
                tick["triggered"].as_i64(),
                tick["failed"].as_i64(),
                tick["errors"].as_i64()
            ),
            (Some(2), Some(0), Some(2), Some(0)),
            "{tick}"
        );
        for p in tick["projects"].as_array().unwrap() {
            assert_eq!(p["outcome"], "failed", "{p}");
        }
        for (id, repeats) in [(h_id, round + 1), (x_id, round)] {
            let deps = d.deployments(id).await;
            assert_eq!(deps.len(), 1, "{deps:?}");
            assert_eq!(deps[0]["repeat_count"], repeats, "{}", deps[0]);
            assert!(
                deps[0]["last_seen_at"].as_i64().unwrap()
                    >= deps[0]["created_at"].as_i64().unwrap()
            );
            assert_eq!(tracked(id).await, "");
        }
    }
    assert_eq!(
        d.deployments(h_id).await[0]["sources"],
        json!(["auto-push"])
    );

    // The cause cleared: the next tick deploys what was pushed and polled.
    for id in [h_id, x_id] {
        d.ok(
            Method::PATCH,
            &format!("/api/projects/{id}"),
            Some(json!({"expose_service": "web", "expose_port": 80})),
        )
        .await;
    }
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    assert_eq!(
        (tick["triggered"].as_i64(), tick["failed"].as_i64()),
        (Some(2), Some(0)),
        "{tick}"
    );
    for (id, sha) in [(h_id, &h_sha), (x_id, &x_sha)] {
        let deps = d.deployments(id).await;
        assert_eq!(
            (
                deps.len(),
                deps[0]["status"].as_str(),
                deps[0]["target_commit"].as_str()
            ),
            (2, Some("queued"), Some(sha.as_str()))
        );
        assert_eq!(tracked(id).await, *sha);
    }

    // A failure on the node is recorded and not retried.
    let node = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await;
    let node_token = node["token"].as_str().unwrap();
    for _ in 0..2 {
        let (status, claim) = d.agent_claim(node_token).await;
        assert_eq!(status, 200, "{claim}");
        let dep = claim["deployment"]["id"].as_i64().unwrap();
        d.agent_report(
            node_token,
            dep,
            json!({"status": "failed", "error": "docker-compose up failed"}),
        )
        .await;
    }
    for _ in 0..2 {
        let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
        assert_eq!(
            (tick["triggered"].as_i64(), tick["failed"].as_i64()),
            (Some(0), Some(0)),
            "{tick}"
        );
    }
    for id in [h_id, x_id] {
        let deps = d.deployments(id).await;
        assert_eq!(
            (
                deps.len(),
                deps[0]["status"].as_str(),
                deps[0]["error"].as_str()
            ),
            (2, Some("failed"), Some("docker-compose up failed"))
        );
    }
    d.stop();
}

/// A `file://` repository's branch head as a tick reads it: the loose ref
/// file when there is one, else libgit2 (packed refs, a missing branch), and
/// never a path outside `refs/heads`.
#[test]
fn file_heads_are_read_loose_packed_or_missing() {
    use autodeploy::git::local_repository_head;
    let dir = temp_dir("file-heads");
    let bare = dir.join("r.git");
    let first = bare_with_commit(&bare);
    let url = format!("file://{}", bare.display());
    let head = |branch: &str| local_repository_head(&url, branch).expect("a local URL");

    assert_eq!(head("main").unwrap(), Some(first.clone()), "loose");
    assert_eq!(head("other").unwrap(), None, "missing");
    assert!(
        !matches!(head("../../HEAD"), Ok(Some(_))),
        "an invalid branch name reads nothing"
    );

    git(&bare, &["pack-refs", "--all"]);
    assert!(!bare.join("refs/heads/main").exists(), "the ref is packed");
    assert_eq!(head("main").unwrap(), Some(first), "packed");

    // A commit after packing writes a loose ref again, which wins.
    let second = commit_to(&bare, "main", "second");
    assert_eq!(head("main").unwrap(), Some(second), "loose over packed");
    let _ = std::fs::remove_dir_all(&dir);
}
