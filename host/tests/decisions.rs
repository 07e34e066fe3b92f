//! The decision log against the real daemon and its SQLite file: every
//! policy call recorded and linked to the deployment it made, paging,
//! retention by count and by age, replay (CLI and dry run) and the shadow
//! policy.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// Image projects: what the deploy agents run, so the policy deploys them.
const IMAGE: &str = "registry.test/app:1";

fn remote(d: &Daemon, id: i64, token: &str) -> String {
    format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    )
}

fn push(dir: &Path, url: &str) {
    let out = std::process::Command::new("git")
        .args(["push", "-q", url, "main"])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A work tree with a first commit on `main`.
fn work_tree(dir: &Path) -> std::path::PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    work
}

async fn decisions(d: &Daemon, query: &str) -> Vec<Value> {
    d.ok(Method::GET, &format!("/api/decisions?{query}"), None)
        .await
        .as_array()
        .expect("a list")
        .clone()
}

fn ids(list: &[Value]) -> Vec<i64> {
    list.iter().map(|v| v["id"].as_i64().unwrap()).collect()
}

/// Only the ticks a test asks for run (the loop's tick at start has run).
async fn only_asked_ticks(d: &Daemon) {
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    common::wait_until("the poll loop's tick at start ran", WAIT, || async {
        !d.ok(Method::GET, "/api/status", None).await["loops"]["git-poll"]["last_tick_at"].is_null()
    })
    .await;
}

async fn sqlite(d: &Daemon) -> sqlx::SqlitePool {
    let url = format!(
        "sqlite://{}?mode=rw",
        d.data_dir.join("autodeploy.db").display()
    );
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

#[tokio::test]
async fn decisions_are_recorded_linked_to_their_deployment_and_paged() {
    let dir = temp_dir("decisions-push");
    let d = Daemon::start(&dir);
    only_asked_ticks(&d).await;
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "web", "project_type": "image", "image_ref": IMAGE, "container_port": 8080, "auto_deploy_enabled": true})),
        )
        .await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    let work = work_tree(&dir);
    let first = commit(&work, "first");
    push(&work, &remote(&d, id, token));
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1);
    let dep = deps[0]["id"].as_i64().unwrap();
    // Written with the deployment: there when the push returns.
    let linked = decisions(&d, &format!("deployment_id={dep}")).await;
    let calls: Vec<&str> = linked.iter().map(|v| v["call"].as_str().unwrap()).collect();
    assert_eq!(calls, ["check-deployable", "decide-commit"], "{linked:?}");
    let mut expected = ids(&linked);
    expected.reverse();
    assert_eq!(deps[0]["decision_ids"], json!(expected));
    let commit_decision = &linked[1];
    assert_eq!(commit_decision["project_id"], id);
    assert_eq!(commit_decision["deployment_id"], dep);
    assert_eq!(commit_decision["input"]["call"], "decide-commit");
    assert_eq!(
        commit_decision["input"]["input"]["remote_head"],
        first.as_str()
    );
    assert_eq!(commit_decision["input"]["input"]["source"], "auto-push");
    assert_eq!(commit_decision["output"]["ok"]["trigger"], true);
    assert_eq!(commit_decision["output"]["ok"]["record"], first.as_str());
    let policy = d.ok(Method::GET, "/api/policy", None).await;
    assert_eq!(commit_decision["policy_sha256"], policy["sha256"]);
    assert!(linked[0]["output"]["ok"]["allowed"].is_string());

    // An external project polling the hosted one with its push token as the
    // credential: its decisions must not carry the token.
    let ext = d
        .create_project(json!({
            "name": "ext", "project_type": "image", "image_ref": IMAGE, "container_port": 8080,
            "git_source": "external",
            "git_url": format!("{}/git/{id}.git", d.url), "auto_deploy_enabled": true,
            "credentials": {"kind": "https", "username": "deploy", "token": token},
        }))
        .await;

    // A push absorbed by the queued deployment links its decisions to it.
    commit(&work, "second");
    push(&work, &remote(&d, id, token));
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1, "coalesced");
    assert_eq!(deps[0]["decision_ids"].as_array().unwrap().len(), 4);

    // Ticks: the hosted project is reconciled (nothing moved) and the
    // external one polled; those decisions deploy nothing and are written
    // by the background writer.
    for _ in 0..3 {
        d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    }
    common::wait_until("the tick decisions are written", WAIT, || async {
        decisions(&d, "call=decide-commit&limit=500")
            .await
            .iter()
            .filter(|v| v["deployment_id"].is_null())
            .count()
            >= 5
    })
    .await;
    let of_ext = decisions(&d, &format!("project_id={ext}")).await;
    assert!(!of_ext.is_empty());
    assert!(of_ext.iter().all(|v| v["project_id"] == ext));

    // Paging: newest first, `before` continues where a page ended, and the
    // pages together are the whole log, each decision once.
    let all = decisions(&d, "limit=500").await;
    assert!(all.len() >= 10, "{}", all.len());
    let all_ids = ids(&all);
    assert!(all_ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let mut paged = Vec::new();
    let mut query = "limit=3".to_string();
    loop {
        let page = decisions(&d, &query).await;
        assert!(page.len() <= 3);
        paged.extend(ids(&page));
        if page.len() < 3 {
            break;
        }
        query = format!("limit=3&before={}", paged.last().unwrap());
    }
    assert_eq!(paged, all_ids);
    assert_eq!(
        decisions(&d, "").await.len(),
        all.len().min(50),
        "limit defaults to 50"
    );
    for bad in ["limit=0", "limit=501", "call=deploy-everything", "before=x"] {
        let (status, body) = d
            .admin(Method::GET, &format!("/api/decisions?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = d.call(Method::GET, "/api/decisions", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No credential anywhere in the log.
    let text = serde_json::to_string(&all).unwrap();
    for s in [token, ADMIN] {
        assert!(!text.contains(s), "the decision log shows a secret");
    }
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(status["decision_log"]["dropped"], 0);
}

#[tokio::test]
async fn retention_prunes_by_count_and_by_age() {
    let dir = temp_dir("decisions-retention");
    let d = Daemon::start(&dir);
    only_asked_ticks(&d).await;
    let id = d
        .create_project(json!({"name": "web", "project_type": "image", "image_ref": IMAGE, "container_port": 8080}))
        .await;
    // Each manual deploy is one check-deployable decision.
    for _ in 0..130 {
        d.ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
    }
    let before = ids(&decisions(&d, "limit=500").await);
    assert_eq!(before.len(), 130);

    let (status, body) = d
        .admin(
            Method::PUT,
            "/api/settings",
            Some(json!({"decision_log_max_rows": 99})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at least 100"));

    // By count: the newest 100 stay.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"decision_log_max_rows": 100})),
    )
    .await;
    common::wait_until("the log is pruned to 100", WAIT, || async {
        decisions(&d, "limit=500").await.len() == 100
    })
    .await;
    assert_eq!(ids(&decisions(&d, "limit=500").await), before[..100]);

    // By age: the 20 oldest are made 31 days old; the default keeps 30.
    let db = sqlite(&d).await;
    sqlx::query("UPDATE decision_log SET at = at - 31 * 86400 WHERE id <= $1")
        .bind(before[80])
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // Any settings change runs retention at once.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"decision_log_max_age_days": 30})),
    )
    .await;
    common::wait_until("the old decisions are pruned", WAIT, || async {
        decisions(&d, "limit=500").await.len() == 80
    })
    .await;
    assert_eq!(ids(&decisions(&d, "limit=500").await), before[..80]);
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert!(status["decision_log"]["last_prune"]["error"].is_null());
    // The deployment still lists the decisions that remain.
    let dep = &d.deployments(id).await[0];
    assert_eq!(dep["decision_ids"].as_array().unwrap().len(), 80);
}

/// A recorded history: pushes, reconcile ticks and manual deploys.
async fn history(d: &Daemon, dir: &Path) -> i64 {
    only_asked_ticks(d).await;
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "web", "project_type": "image", "image_ref": IMAGE, "container_port": 8080, "auto_deploy_enabled": true})),
        )
        .await;
    let (id, token) = (p["id"].as_i64().unwrap(), p["push_token"].as_str().unwrap());
    let work = work_tree(dir);
    for i in 0..3 {
        commit(&work, &format!("c{i}"));
        push(&work, &remote(d, id, token));
        d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    }
    d.ok(
        Method::POST,
        &format!("/api/projects/{id}/deployments"),
        None,
    )
    .await;
    common::wait_until("the tick decisions are written", WAIT, || async {
        decisions(d, "limit=500")
            .await
            .iter()
            .filter(|v| v["deployment_id"].is_null())
            .count()
            >= 3
    })
    .await;
    id
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn bundled_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("bundled.wasm");
    std::fs::write(&path, autodeploy::policy::BUNDLED_POLICY).unwrap();
    path
}

/// A 0.1.0 component that traps on every call, replayed over `all`: each
/// call it gets fails and is a difference. It gets every call but
/// watch-plan, which 0.1.0 lacks and the host's gates answer.
fn assert_trap_replay(r: &Value, all: &[Value]) {
    let failed = r["failed"].as_i64().unwrap();
    assert!(failed > 0, "{r}");
    assert_eq!(r["differ"], failed, "{r}");
    let watch_plans = all.iter().filter(|v| v["call"] == "watch-plan").count() as i64;
    let skipped: i64 = r["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(r["replayed"].as_i64().unwrap(), all.len() as i64 - skipped);
    assert_eq!(failed, all.len() as i64 - skipped - watch_plans, "{r}");
}

fn replay(args: &[&str], data_dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["policy", "replay"])
        .args(args)
        .env("AUTODEPLOY_DATA_DIR", data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("AUTODEPLOY_POLICY")
        .output()
        .expect("run autodeploy policy replay")
}

#[tokio::test]
async fn replay_reports_exactly_the_decisions_that_would_differ() {
    let dir = temp_dir("decisions-replay");
    let data = dir.join("data");
    let d = Daemon::start(&data);
    history(&d, &dir).await;
    let all = decisions(&d, "limit=500").await;
    let commits: Vec<i64> = all
        .iter()
        .filter(|v| v["call"] == "decide-commit")
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert!(commits.len() >= 5, "{all:?}");
    assert!(d.stop().success());

    // The history is made to say the policy of the time answered two
    // decisions otherwise, a third one long ago, and one input is made
    // unreadable: replaying the same policy must show exactly the two.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rw",
        data.join("autodeploy.db").display()
    ))
    .await
    .unwrap();
    let doctored =
        json!({"ok": {"trigger": false, "record": null, "reason": "doctored"}}).to_string();
    // Replay reports oldest first.
    let (changed, old, unreadable) = ([commits[2], commits[0]], commits[3], commits[4]);
    for id in changed.iter().chain([&old]) {
        sqlx::query("UPDATE decision_log SET output = $1 WHERE id = $2")
            .bind(&doctored)
            .bind(id)
            .execute(&db)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE decision_log SET at = at - 40 * 86400 WHERE id = $1")
        .bind(old)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE decision_log SET input = '{\"call\":\"decide-commit\",\"input\":{\"bogus\":1}}' WHERE id = $1")
        .bind(unreadable)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let candidate = bundled_file(&dir);
    let out = replay(
        &[candidate.to_str().unwrap(), "--since", "7d", "--json"],
        &data,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["self_test"]["passed"], true);
    let r = &report["replay"];
    let diff_ids: Vec<i64> = r["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(diff_ids, changed, "{r}");
    assert_eq!(r["differ"], 2);
    assert_eq!(r["failed"], 0);
    assert_eq!(
        r["replayed"],
        all.len() as i64 - 2,
        "all but the old and the unreadable"
    );
    assert_eq!(r["diffs"][0]["recorded"]["ok"]["reason"], "doctored");
    assert_ne!(r["diffs"][0]["candidate"]["ok"]["reason"], "doctored");
    assert!(r["diffs"][0]["candidate"]["ok"]["trigger"].is_boolean());
    assert_eq!(r["diffs"][0]["call"], "decide-commit");
    let skipped: i64 = r["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(skipped, 1);

    // The text report: each differing decision, then the summary.
    let out = replay(&[candidate.to_str().unwrap()], &data);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for id in changed.iter().chain([&old]) {
        assert!(text.contains(&format!("decision {id} at ")), "{text}");
    }
    assert!(
        text.contains(&format!(
            "replayed {}, differ 3, failed 0, skipped 1",
            all.len() - 1
        )),
        "{text}"
    );
    let out = replay(
        &[candidate.to_str().unwrap(), "--limit", "1", "--json"],
        &data,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["replay"]["replayed"], 1);

    // The default policy built for contract 0.1.0 replays the same history
    // (recorded by its 0.2.0 build) through the host's 0.1.0 adapter: the
    // same decisions.
    let out = replay(&[env!("AUTODEPLOY_POLICY_V010_WASM"), "--json"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["self_test"]["passed"], true);
    assert_eq!(
        report["replay"]["differ"], 3,
        "only the doctored ones: {report}"
    );
    assert_eq!(all[0]["policy_wit_version"], "0.2.0");

    // A candidate that traps fails every decision it is asked: each is a
    // difference, and still a report.
    let trap = dir.join("trap.wasm");
    std::fs::write(&trap, common::hostile_policy(common::TRAP_BODY)).unwrap();
    let out = replay(&[trap.to_str().unwrap(), "--json"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["self_test"]["passed"], false);
    assert_trap_replay(&report["replay"], &all);

    // What cannot run is an error.
    let out = replay(&[candidate.to_str().unwrap()], &dir.join("nowhere"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
    let out = replay(&[data.join("autodeploy.db").to_str().unwrap()], &data);
    assert!(!out.status.success());
    let out = replay(
        &[candidate.to_str().unwrap(), "--since", "yesterday"],
        &data,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

#[tokio::test]
async fn a_dry_run_replays_recent_decisions_and_switches_nothing() {
    let dir = temp_dir("decisions-dry-run");
    let d = Daemon::start(&dir.join("data"));
    history(&d, &dir).await;
    let active = d.ok(Method::GET, "/api/policy", None).await;
    let recorded = decisions(&d, "limit=500").await.len() as i64;

    let (status, answer) = d
        .raw(
            Method::PUT,
            "/api/policy?dry_run=true",
            Some(ADMIN),
            autodeploy::policy::BUNDLED_POLICY.to_vec(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert_eq!(answer["self_test"]["passed"], true);
    assert_eq!(answer["replay"]["replayed"], recorded);
    assert_eq!(answer["replay"]["differ"], 0);
    assert_eq!(answer["config_set"], false);

    // The JSON upload carries a config, as PUT /api/policy takes one.
    let upload = json!({"wasm_base64": b64(autodeploy::policy::BUNDLED_POLICY), "config": "{}"});
    let (status, answer) = d
        .admin(Method::PUT, "/api/policy?dry_run=true", Some(upload))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["config_set"], true);
    assert_eq!(
        answer["replay"]["differ"], 0,
        "the default policy reads no config"
    );

    let (status, answer) = d
        .raw(
            Method::PUT,
            "/api/policy?dry_run=true",
            Some(ADMIN),
            common::hostile_policy(common::TRAP_BODY),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["self_test"]["passed"], false);
    assert!(
        !answer["self_test"]["failures"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_trap_replay(&answer["replay"], &decisions(&d, "limit=500").await);

    // Nothing switched, nothing stored, no policy event.
    assert_eq!(d.ok(Method::GET, "/api/policy", None).await, active);
    let events = d.ok(Method::GET, "/api/events?limit=1000", None).await;
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"].as_str().unwrap().starts_with("policy."))
    );
    assert!(!dir.join("data/policies/active").exists());

    let (status, _) = d
        .raw(
            Method::PUT,
            "/api/policy?dry_run=true",
            Some(ADMIN),
            b"not a component".to_vec(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = d
        .raw(
            Method::PUT,
            "/api/policy?dry_run=maybe",
            Some(ADMIN),
            autodeploy::policy::BUNDLED_POLICY.to_vec(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_shadow_policy_answers_beside_the_live_one_and_is_never_acted_on() {
    let dir = temp_dir("decisions-shadow");
    let d = Daemon::start(&dir.join("data"));
    only_asked_ticks(&d).await;
    let (status, answer) = d.admin(Method::GET, "/api/policy/shadow", None).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"active": false})));

    // A candidate must pass the self-test.
    let (status, answer) = d
        .raw(
            Method::POST,
            "/api/policy/shadow",
            Some(ADMIN),
            common::hostile_policy(common::TRAP_BODY),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("self-test"));

    let upload = json!({"wasm_base64": b64(autodeploy::policy::BUNDLED_POLICY), "config": "{}"});
    let (status, answer) = d
        .admin(Method::POST, "/api/policy/shadow", Some(upload))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        (&answer["active"], &answer["config_set"]),
        (&json!(true), &json!(true))
    );

    let id = d
        .create_project(json!({"name": "web", "project_type": "image", "image_ref": IMAGE, "container_port": 8080}))
        .await;
    for _ in 0..3 {
        d.ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
    }
    common::wait_until("the shadow answered the live decisions", WAIT, || async {
        d.ok(Method::GET, "/api/policy/shadow", None).await["compared"] == 3
    })
    .await;
    let shadow = d.ok(Method::GET, "/api/policy/shadow", None).await;
    assert_eq!(shadow["differ"], 0, "the same policy decides the same");
    assert_eq!(d.deployments(id).await[0]["trigger_count"], 3);

    let stopped = d.ok(Method::DELETE, "/api/policy/shadow", None).await;
    assert_eq!(stopped["active"], false);
    assert_eq!(stopped["compared"], 3);
    let (status, _) = d.admin(Method::DELETE, "/api/policy/shadow", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    d.ok(
        Method::POST,
        &format!("/api/projects/{id}/deployments"),
        None,
    )
    .await;
    assert_eq!(
        d.ok(Method::GET, "/api/policy/shadow", None).await,
        json!({"active": false})
    );
}
