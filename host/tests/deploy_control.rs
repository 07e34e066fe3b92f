//! The control plane's side of trusted deploys, driven over real HTTP
//! against a real daemon (SQLite, or PostgreSQL with
//! `AUTODEPLOY_TEST_DATABASE=postgres`), with a plain HTTP client acting as
//! the node: the claim's restore point and deploy settings, streamed logs
//! (retried chunks stored once, paged reads, the 1 MiB cap), reports of
//! what ran, redeploys of a recorded state, cancels, and the checks of the
//! new project fields. The agent itself is tested on the Docker Engine.

mod common;

use common::daemon::{Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const COMMIT_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const IMAGE: &str = "registry.test/app:1";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A hosted compose project that deploys by hand.
async fn compose_project(d: &Daemon, name: &str) -> i64 {
    d.create_project(json!({"name": name, "project_type": "compose",
        "expose_service": "web", "expose_port": 8080}))
        .await
}

async fn deploy(d: &Daemon, project: i64) -> Value {
    d.ok(
        Method::POST,
        &format!("/api/projects/{project}/deployments"),
        None,
    )
    .await
}

/// Claims as `node`, which must get deployment `id`; returns the claim.
async fn claim_ok(d: &Daemon, node: &str, id: &Value) -> Value {
    let (status, claim) = d.agent_claim(node).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(&claim["deployment"]["id"], id, "{claim}");
    claim
}

async fn post_log(
    d: &Daemon,
    node: &str,
    dep: i64,
    offset: i64,
    chunk: &str,
) -> (StatusCode, Value) {
    d.call(
        Method::POST,
        &format!("/api/agent/deployments/{dep}/log"),
        Some(node),
        Some(json!({"offset": offset, "chunk": chunk})),
    )
    .await
}

async fn read_log(d: &Daemon, project: i64, dep: i64, after: Option<&str>) -> (StatusCode, Value) {
    let query = after.map(|a| format!("?after={a}")).unwrap_or_default();
    d.admin(
        Method::GET,
        &format!("/api/projects/{project}/deployments/{dep}/log{query}"),
        None,
    )
    .await
}

async fn deployment(d: &Daemon, project: i64, id: i64) -> Value {
    d.deployments(project)
        .await
        .into_iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("deployment {id} of project {project}"))
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// Runs one deployment of `project` to `succeeded` as `node`, reporting
/// that it ran COMMIT_A with IMAGE at digest 'a'; returns its id.
async fn succeeded_deploy(d: &Daemon, node: &str, project: i64) -> i64 {
    let queued = deploy(d, project).await;
    claim_ok(d, node, &queued["id"]).await;
    let id = queued["id"].as_i64().unwrap();
    let (status, v) = d.agent_report(node,
        id,
        json!({"status": "succeeded", "ran_commit": COMMIT_A, "ran_digests": {IMAGE: digest('a')}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    id
}

#[tokio::test]
async fn a_node_streams_its_log_with_retries_and_reports_what_ran() {
    let dir = temp_dir("dc-stream");
    let d = Daemon::start(&dir);
    let (n1, n2) = (d.add_node("n1").await, d.add_node("n2").await);
    let web = compose_project(&d, "web").await;
    let queued = deploy(&d, web).await;
    let c = claim_ok(&d, &n1, &queued["id"]).await;
    let dep = queued["id"].as_i64().unwrap();

    // The claim carries the deploy settings and (first deploy) no restore point.
    assert_eq!(c["project"]["health_timeout_seconds"], 60, "{c}");
    assert_eq!(c["project"]["rollback"], "auto", "{c}");
    assert!(c["project"]["health_probe_path"].is_null(), "{c}");
    assert_eq!(c["project"]["dockerfile_path"], "Dockerfile", "{c}");
    assert!(c["restore"].is_null(), "{c}");
    assert!(c.as_object().unwrap().contains_key("restore"), "{c}");

    // Chunks in order, then a retry overlapping all of them plus a new line:
    // only the new line is added.
    for (offset, chunk) in [(0, "step 1\n"), (7, "step 2\n")] {
        let (status, v) = post_log(&d, &n1, dep, offset, chunk).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"cancel": false}));
    }
    let (status, v) = post_log(&d, &n1, dep, 0, "step 1\nstep 2\nstep 3\n").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = post_log(&d, &n1, dep, 7, "step 2\n").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a chunk wholly received before is fine: {v}"
    );
    // An empty chunk is a poll for a cancel.
    let (status, v) = post_log(&d, &n1, dep, 21, "").await;
    assert_eq!((status, v), (StatusCode::OK, json!({"cancel": false})));

    let (status, log) = read_log(&d, web, dep, None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(
        log,
        json!({"offset": 0, "next": 21, "text": "step 1\nstep 2\nstep 3\n", "done": false})
    );
    let (_, log) = read_log(&d, web, dep, Some("14")).await;
    assert_eq!(
        log,
        json!({"offset": 14, "next": 21, "text": "step 3\n", "done": false})
    );
    let (_, log) = read_log(&d, web, dep, Some("999")).await;
    assert_eq!(log["text"], "", "{log}");

    // Bad chunks and offsets are refused, naming the problem.
    let (status, v) = post_log(&d, &n1, dep, 40, "later\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("send the log from byte 21"), "{v}");
    let (status, v) = post_log(&d, &n1, dep, -1, "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("offset"), "{v}");
    let big = "x".repeat(256 * 1024 + 1);
    let (status, v) = post_log(&d, &n1, dep, 21, &big).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("at most 262144 bytes"), "{v}");
    let (status, v) = post_log(&d, &n2, dep, 21, "not mine\n").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another node's deployment: {v}"
    );
    for after in ["-1", "abc"] {
        let (status, v) = read_log(&d, web, dep, Some(after)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "after={after}: {v}");
        assert!(error_of(&v).contains("after"), "{v}");
    }
    let (status, v) = read_log(&d, web, dep + 1000, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // What ran: a malformed commit or digest is refused; then the report.
    for bad in [
        json!({"status": "succeeded", "ran_commit": "main"}),
        json!({"status": "succeeded", "ran_digests": {IMAGE: "latest"}}),
    ] {
        let (status, v) = d.agent_report(&n1, dep, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (status, v) = d.agent_report(&n1,
        dep,
        json!({"status": "succeeded", "ran_commit": COMMIT_A, "ran_digests": {IMAGE: digest('a')}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ran_commit"], COMMIT_A, "{v}");
    assert_eq!(v["ran_digests"], json!({IMAGE: digest('a')}), "{v}");
    assert!(v["finished_at"].is_i64(), "{v}");

    // Over: no more log, no second report; the log reads as done.
    let (status, v) = post_log(&d, &n1, dep, 21, "late\n").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = d.agent_report(&n1, dep, json!({"status": "failed"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (_, log) = read_log(&d, web, dep, Some("21")).await;
    assert_eq!(log["done"], true, "{log}");
    let (_, log) = read_log(&d, web, dep, Some("0")).await;
    assert_eq!(log["done"], true, "{log}");

    // The next deploy's restore point is what this one ran; a rolled-back
    // deploy is never one.
    let second = deploy(&d, web).await;
    let c = claim_ok(&d, &n1, &second["id"]).await;
    let restore = json!({"deployment": dep, "commit": COMMIT_A, "digests": {IMAGE: digest('a')}});
    assert_eq!(c["restore"], restore, "{c}");
    let second = second["id"].as_i64().unwrap();
    let (status, v) = d
        .agent_report(
            &n1,
            second,
            json!({"status": "rolled_back", "error": "web exited (1); restored deployment 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "rolled_back", "{v}");
    assert!(v["finished_at"].is_i64(), "{v}");
    let third = deploy(&d, web).await;
    let c = claim_ok(&d, &n1, &third["id"]).await;
    assert_eq!(c["restore"], restore, "{c}");
    d.stop();
}

#[tokio::test]
async fn log_reads_page_and_the_stored_log_is_capped() {
    let dir = temp_dir("dc-paging");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let web = compose_project(&d, "web").await;
    let queued = deploy(&d, web).await;
    claim_ok(&d, &n1, &queued["id"]).await;
    let dep = queued["id"].as_i64().unwrap();

    // 6 chunks of 200 KiB (1.2 MiB): each line says which chunk it is from.
    let chunk = |i: usize| format!("{i}{}\n", "-".repeat(200 * 1024 - 2));
    let mut offset = 0;
    for i in 0..6 {
        let c = chunk(i);
        let (status, v) = post_log(&d, &n1, dep, offset, &c).await;
        assert_eq!(status, StatusCode::OK, "chunk {i}: {v}");
        offset += c.len() as i64;
    }
    // Past the cap, chunks are still received (no gap), but dropped.
    let (status, v) = post_log(&d, &n1, dep, offset, "after the cap\n").await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Paged reads, each at most 256 KiB, put the whole stored log together.
    let mut text = String::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (status, page) = read_log(&d, web, dep, Some(&after.to_string())).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let piece = page["text"].as_str().unwrap();
        assert!(piece.len() <= 256 * 1024, "page of {} bytes", piece.len());
        assert_eq!(page["offset"], after, "{}", page["offset"]);
        if piece.is_empty() {
            break;
        }
        text.push_str(piece);
        after = page["next"].as_i64().unwrap();
        pages += 1;
        assert!(pages < 10, "the pages end");
    }
    let whole: String = (0..6).map(chunk).collect();
    assert!(text.len() > 1 << 20, "{} bytes kept", text.len());
    assert!(text.len() < (1 << 20) + 200, "{} bytes kept", text.len());
    assert_eq!(
        &text[..1 << 20],
        &whole[..1 << 20],
        "the first 1 MiB is kept as sent"
    );
    assert!(
        text.ends_with("the rest was dropped]\n"),
        "{}",
        &text[text.len() - 100..]
    );
    assert!(!text.contains("after the cap"));
    assert_eq!(pages, 5, "1 MiB and a marker line in 256 KiB pages");
    d.stop();
}

#[tokio::test]
async fn a_redeploy_runs_the_exact_recorded_state_and_leaves_the_tracked_state() {
    let dir = temp_dir("dc-redeploy");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let web = compose_project(&d, "web").await;
    let other = compose_project(&d, "other").await;
    let good = succeeded_deploy(&d, &n1, web).await;
    // A later deploy fails on the node.
    let failed = deploy(&d, web).await;
    claim_ok(&d, &n1, &failed["id"]).await;
    let failed = failed["id"].as_i64().unwrap();
    let (status, v) = d
        .agent_report(&n1, failed, json!({"status": "failed", "error": "boom"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let tracked = d
        .ok(Method::GET, &format!("/api/projects/{web}"), None)
        .await;

    // Unknown, another project's, not succeeded, malformed: refused, named.
    let other_dep = deploy(&d, other).await["id"].as_i64().unwrap();
    let path = format!("/api/projects/{web}/deployments");
    for (from, want) in [
        (json!(other_dep), StatusCode::NOT_FOUND),
        (json!(999_999), StatusCode::NOT_FOUND),
        (json!(failed), StatusCode::CONFLICT),
        (json!("one"), StatusCode::BAD_REQUEST),
    ] {
        let (status, v) = d
            .admin(Method::POST, &path, Some(json!({"from_deployment": from})))
            .await;
        assert_eq!(status, want, "from {from}: {v}");
        assert!(!error_of(&v).is_empty(), "{v}");
    }
    // (Out of the way: claims go oldest first.)
    d.ok(
        Method::POST,
        &format!("/api/projects/{other}/deployments/{other_dep}/cancel"),
        None,
    )
    .await;
    let (status, v) = d
        .admin(
            Method::POST,
            &path,
            Some(json!({"from_deployment": good, "extra": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("extra"), "{v}");
    let (status, v) = d
        .admin(
            Method::POST,
            &path,
            Some(json!({"from_deployment": failed})),
        )
        .await;
    assert!(
        status == StatusCode::CONFLICT && error_of(&v).contains("only a succeeded deployment"),
        "{v}"
    );

    // The redeploy targets exactly what `good` ran.
    let (status, redeploy) = d
        .admin(Method::POST, &path, Some(json!({"from_deployment": good})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{redeploy}");
    assert_eq!(redeploy["status"], "queued", "{redeploy}");
    assert_eq!(redeploy["source"], "manual", "{redeploy}");
    assert_eq!(redeploy["from_deployment"], good, "{redeploy}");
    assert_eq!(redeploy["target_commit"], COMMIT_A, "{redeploy}");
    assert_eq!(
        redeploy["target_digests"],
        json!({IMAGE: digest('a')}),
        "{redeploy}"
    );

    // It absorbs no later trigger: a manual deploy queues behind it.
    let behind = deploy(&d, web).await;
    assert_ne!(behind["id"], redeploy["id"], "{behind}");
    let r = deployment(&d, web, redeploy["id"].as_i64().unwrap()).await;
    assert_eq!(r["trigger_count"], 1, "{r}");
    assert_eq!(r["target_commit"], COMMIT_A, "{r}");

    // The node gets it first, with that exact target.
    let c = claim_ok(&d, &n1, &redeploy["id"]).await;
    assert_eq!(c["deployment"]["target_commit"], COMMIT_A, "{c}");
    assert_eq!(
        c["deployment"]["target_digests"],
        json!({IMAGE: digest('a')}),
        "{c}"
    );
    assert_eq!(c["restore"]["deployment"], good, "{c}");

    // The tracked state did not move: the poll does not undo the rollback.
    let now = d
        .ok(Method::GET, &format!("/api/projects/{web}"), None)
        .await;
    assert_eq!(
        now["last_tracked_commit_sha"],
        tracked["last_tracked_commit_sha"]
    );
    assert_eq!(
        now["last_tracked_image_digests"],
        tracked["last_tracked_image_digests"]
    );
    d.stop();
}

#[tokio::test]
async fn a_cancelled_queued_deployment_is_never_claimed_and_a_running_one_tells_its_node() {
    let dir = temp_dir("dc-cancel");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let web = compose_project(&d, "web").await;
    let other = compose_project(&d, "other").await;
    let cancel = |project: i64, dep: i64| {
        let d = &d;
        async move {
            d.admin(
                Method::POST,
                &format!("/api/projects/{project}/deployments/{dep}/cancel"),
                None,
            )
            .await
        }
    };

    // Queued: cancelled at once, and never handed out.
    let queued = deploy(&d, web).await["id"].as_i64().unwrap();
    let (status, v) = cancel(other, queued).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another project's: {v}");
    let (status, v) = cancel(web, queued).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["finished_at"].is_i64(), "{v}");
    let (status, v) = d.agent_claim(&n1).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, v) = cancel(web, queued).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(error_of(&v).contains("already cancelled"), "{v}");
    let (status, v) = d
        .admin(
            Method::POST,
            &format!("/api/projects/{web}/deployments/x/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // A trigger after the cancel queues a new deployment, which runs.
    let next = deploy(&d, web).await;
    assert_ne!(next["id"], queued, "{next}");
    assert_eq!(next["status"], "queued", "{next}");
    claim_ok(&d, &n1, &next["id"]).await;
    let next = next["id"].as_i64().unwrap();
    let (_, v) = post_log(&d, &n1, next, 0, "building\n").await;
    assert_eq!(v, json!({"cancel": false}));

    // Running: the cancel is requested; the node learns it on its next log post.
    let (status, v) = cancel(web, next).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["cancel_requested"], true, "{v}");
    let (status, v) = post_log(&d, &n1, next, 9, "").await;
    assert_eq!((status, v), (StatusCode::OK, json!({"cancel": true})));
    let (status, v) = d
        .agent_report(
            &n1,
            next,
            json!({"status": "cancelled", "error": "cancelled; restored deployment none"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    let (status, v) = cancel(web, next).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (_, log) = read_log(&d, web, next, None).await;
    assert_eq!(log["done"], true, "{log}");
    d.stop();
}

#[tokio::test]
async fn deploy_settings_are_checked_and_reach_the_claim() {
    let dir = temp_dir("dc-fields");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let create = |body: Value| {
        let d = &d;
        async move { d.admin(Method::POST, "/api/projects", Some(body)).await }
    };
    let base = json!({"name": "app", "project_type": "deployment",
        "container_port": 8080, "expose_port": 18080});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (extra, field) in [
        (
            json!({"dockerfile_path": "../Dockerfile"}),
            "dockerfile_path",
        ),
        (
            json!({"dockerfile_path": "app/../../Dockerfile"}),
            "dockerfile_path",
        ),
        (
            json!({"dockerfile_path": "/etc/Dockerfile"}),
            "dockerfile_path",
        ),
        (json!({"dockerfile_path": ""}), "dockerfile_path"),
        (
            json!({"health_timeout_seconds": 4}),
            "health_timeout_seconds",
        ),
        (
            json!({"health_timeout_seconds": 3601}),
            "health_timeout_seconds",
        ),
        (json!({"health_probe_path": "healthz"}), "health_probe_path"),
        (json!({"rollback": "sometimes"}), "rollback"),
        (json!({"container_port": 70000}), "container_port"),
        (json!({"image_ref": IMAGE}), "image_ref"),
    ] {
        let (status, v) = create(with(extra.clone())).await;
        // A value of the wrong shape is serde's 422, like every field's.
        assert!(
            matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{extra}: {status} {v}"
        );
        assert!(error_of(&v).contains(field), "{extra}: {v}");
    }
    let (status, v) = create(json!({"name": "probe", "project_type": "deployment",
        "health_probe_path": "/healthz"}))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a probe needs a port: {v}");
    assert!(error_of(&v).contains("expose_port"), "{v}");
    let (status, v) = create(json!({"name": "c", "project_type": "compose",
        "expose_service": "web", "expose_port": 80, "dockerfile_path": "x/Dockerfile"}))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("deployment projects only"), "{v}");

    // A deployment project takes its ports; the defaults show.
    let (status, p) = create(base.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["container_port"], 8080, "{p}");
    assert_eq!(p["expose_port"], 18080, "{p}");
    assert_eq!(p["dockerfile_path"], "Dockerfile", "{p}");
    assert_eq!(p["health_timeout_seconds"], 60, "{p}");
    assert_eq!(p["rollback"], "auto", "{p}");
    assert!(p["health_probe_path"].is_null(), "{p}");
    let id = p["id"].as_i64().unwrap();

    let patch = |body: Value| {
        let d = &d;
        async move {
            d.admin(Method::PATCH, &format!("/api/projects/{id}"), Some(body))
                .await
        }
    };
    let (status, p) = patch(json!({"dockerfile_path": "docker/web.Dockerfile",
        "health_probe_path": "/healthz", "health_timeout_seconds": 120, "rollback": "notify"}))
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["dockerfile_path"], "docker/web.Dockerfile", "{p}");
    assert_eq!(p["health_probe_path"], "/healthz", "{p}");
    assert_eq!(p["health_timeout_seconds"], 120, "{p}");
    assert_eq!(p["rollback"], "notify", "{p}");
    let (status, v) = patch(json!({"health_timeout_seconds": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("health_timeout_seconds"), "{v}");
    let (status, v) = patch(json!({"dockerfile_path": "../../x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // The policy and the agents agree a deployment project deploys: it is
    // queued, and the claim carries its settings.
    let queued = deploy(&d, id).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    assert!(queued["error"].is_null(), "{queued}");
    let c = claim_ok(&d, &n1, &queued["id"]).await;
    assert_eq!(
        c["project"]["dockerfile_path"], "docker/web.Dockerfile",
        "{c}"
    );
    assert_eq!(c["project"]["health_probe_path"], "/healthz", "{c}");
    assert_eq!(c["project"]["health_timeout_seconds"], 120, "{c}");
    assert_eq!(c["project"]["rollback"], "notify", "{c}");
    assert_eq!(c["project"]["container_port"], 8080, "{c}");

    let (status, p) = patch(json!({"health_probe_path": null, "rollback": "off"})).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert!(p["health_probe_path"].is_null(), "{p}");
    assert_eq!(p["rollback"], "off", "{p}");
    d.stop();
}

/// The migrations before 0011, each as (name, SQLite, PostgreSQL).
macro_rules! migrations_before {
    ($($name:literal),+ $(,)?) => {
        [$((
            $name,
            include_str!(concat!("../../migrations/sqlite/", $name)),
            include_str!(concat!("../../migrations/postgres/", $name)),
        )),+]
    };
}

#[tokio::test]
async fn a_database_from_before_keeps_its_deployments_and_their_ids_through_the_upgrade() {
    use autodeploy::store::{Cancelled, DeploySource, SqlStore, Store, TriggerWrite};
    use sqlx::Executor;

    let url = common::db::database_url("dc-upgrade");
    let pg = common::db::postgres();
    sqlx::any::install_default_drivers();
    let open = if pg {
        url.clone()
    } else {
        format!("{url}?mode=rwc")
    };
    let pool = sqlx::AnyPool::connect(&open).await.unwrap();
    pool.execute(
        "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .unwrap();
    for (name, sqlite, postgres) in migrations_before!(
        "0001_initial.sql",
        "0002_image_projects.sql",
        "0003_trigger_history.sql",
        "0004_ssh_known_hosts.sql",
        "0005_node_scope.sql",
        "0006_project_labels.sql",
        "0007_decision_log.sql",
        "0008_replica_leases.sql",
        "0009_shared_policies.sql",
        "0010_list_paging.sql",
    ) {
        pool.execute(if pg { postgres } else { sqlite })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES ($1, 0)")
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.execute(
        "INSERT INTO projects (name, project_type, git_source, created_at, updated_at) \
         VALUES ('old', 'compose', 'hosted', 1, 1)",
    )
    .await
    .unwrap();
    let digests = format!("{{\"{IMAGE}\": \"{}\"}}", digest('a'));
    for _ in 0..2 {
        sqlx::query(
            "INSERT INTO deployments (project_id, source, sources, status, target_commit, target_digests, \
             reason, policy_name, policy_version, policy_sha256, created_at, updated_at, finished_at) \
             VALUES (1, 'manual', '[\"manual\"]', 'succeeded', $1, $2, 'by hand', 'p', '1', 'x', 1, 1, 2)",
        )
        .bind(COMMIT_A)
        .bind(&digests)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The newest is deleted: its id must not come back.
    pool.execute("DELETE FROM deployments WHERE id = 2")
        .await
        .unwrap();
    pool.close().await;

    let store = SqlStore::connect(&url).await.unwrap();
    let old = store.deployment(1).await.unwrap();
    assert_eq!(old.status.as_str(), "succeeded");
    assert_eq!(old.target_commit.as_deref(), Some(COMMIT_A));
    assert_eq!(old.target_digests.unwrap()[IMAGE], digest('a'));
    assert_eq!(
        (old.ran_commit, old.from_deployment, old.cancel_requested),
        (None, None, false)
    );
    let project = store.project(1).await.unwrap();
    assert_eq!(project.fields.deploy, Default::default());

    let new = store
        .record_trigger(&TriggerWrite {
            project_id: 1,
            source: DeploySource::Manual,
            target_commit: None,
            target_digests: None,
            reason: "after the upgrade".into(),
            failure: None,
            node_id: None,
            policy_name: "p".into(),
            policy_version: "1".into(),
            policy_sha256: "x".into(),
            track_commit: None,
            track_digests: None,
            decided_on_commit: None,
            decided_with_auto_deploy: None,
            decisions: Vec::new(),
            from_deployment: None,
        })
        .await
        .unwrap();
    assert!(
        new.id > 2,
        "deleted ids are not handed out again: {}",
        new.id
    );
    // The new statuses are allowed now.
    let (d, done) = store.cancel_deployment(1, new.id).await.unwrap();
    assert_eq!((d.status.as_str(), done), ("cancelled", Cancelled::Now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_redeploys_cancels_and_follows_a_log() {
    use std::sync::Mutex;
    let dir = temp_dir("dc-cli");
    let d = Daemon::start(&dir);
    let n1 = d.add_node("n1").await;
    let web = compose_project(&d, "web").await;
    let (ws, project) = (web.to_string(), web);

    // A deploy that streams two chunks and succeeds: `log` prints them.
    let first = deploy(&d, project).await;
    claim_ok(&d, &n1, &first["id"]).await;
    let first = first["id"].as_i64().unwrap();
    post_log(&d, &n1, first, 0, "hello\n").await;
    post_log(&d, &n1, first, 6, "world\n").await;
    d.agent_report(
        &n1,
        first,
        json!({"status": "succeeded", "ran_commit": COMMIT_A}),
    )
    .await;
    let fs = first.to_string();
    assert_eq!(
        d.cli_ok(&["project", "log", &ws, &fs], ""),
        "hello\nworld\n"
    );

    // `redeploy --from` queues N's state; `cancel` cancels it while queued.
    let out = d.cli_ok(&["project", "redeploy", &ws, "--from", &fs], "");
    let redeploy: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(redeploy["from_deployment"], first, "{redeploy}");
    assert_eq!(redeploy["target_commit"], COMMIT_A, "{redeploy}");
    let rs = redeploy["id"].to_string();
    let cancelled: Value =
        serde_json::from_str(&d.cli_ok(&["project", "cancel", &ws, &rs], "")).unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let out = d
        .cli(&["project", "redeploy", &ws, "--from", "99999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains("deployment 99999"),
        "{err}"
    );

    // `log --follow` prints a running deploy's log as it comes and ends
    // when the deployment does.
    let running = deploy(&d, project).await;
    claim_ok(&d, &n1, &running["id"]).await;
    let running = running["id"].as_i64().unwrap();
    post_log(&d, &n1, running, 0, "building\n").await;
    let follower = d
        .cli(&["project", "log", &ws, &running.to_string(), "--follow"])
        .spawn()
        .unwrap();
    post_log(&d, &n1, running, 9, "built\n").await;
    d.agent_report(&n1, running, json!({"status": "failed", "error": "boom"}))
        .await;
    let follower = Mutex::new(Some(follower));
    let output = Mutex::new(None);
    common::wait_until(
        "log --follow ends once the deployment is over",
        std::time::Duration::from_secs(30),
        || async {
            let mut guard = follower.lock().unwrap();
            let done = guard.as_mut().unwrap().try_wait().unwrap().is_some();
            if done {
                *output.lock().unwrap() = Some(guard.take().unwrap().wait_with_output().unwrap());
            }
            done
        },
    )
    .await;
    let out = output.into_inner().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "building\nbuilt\n");
    d.stop();
}
