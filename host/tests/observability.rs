//! The operator's view of a real daemon: `/metrics` checked by promtool on
//! a live scrape after real work, who may read it, `/healthz`, `/readyz`
//! turning 503 on a real stalled loop, and JSON log lines.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::{bare_with_commit, free_port, git_daemon, silent_server};
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `promtool check metrics` on `text`: its verdict and output.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot run ({e}): install Debian's `prometheus` package \
                 (scripts/apt-install.sh prometheus)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the series spelled exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn scrape(url: &str, token: Option<&str>) -> (StatusCode, String, String) {
    scrape_as(url, token, None).await
}

async fn scrape_as(
    url: &str,
    token: Option<&str>,
    accept: Option<&str>,
) -> (StatusCode, String, String) {
    let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the daemon answers");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ctype, resp.text().await.unwrap())
}

async fn get(url: &str) -> (StatusCode, Value) {
    let resp = reqwest::get(url).await.expect("the daemon answers");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_after_a_poll_that_deploys_passes_promtool_and_counts_it() {
    let dir = temp_dir("obs-metrics");
    let repos = dir.join("repos");
    let head = bare_with_commit(&repos.join("app.git"));
    let gitd = git_daemon(&repos);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let d = Daemon::start_with(
        &dir,
        &[],
        &[
            ("AUTODEPLOY_LOG_FORMAT", "json"),
            ("AUTODEPLOY_METRICS_LISTEN", &metrics_addr),
        ],
    );

    // Real work: an external project polled over git://, whose first
    // lookup queues a deployment.
    let id = d
        .create_project(json!({"name": "shop", "project_type": "image",
            "image_ref": "registry.test/app:1", "container_port": 8080,
            "git_source": "external", "auto_deploy_enabled": true,
            "git_url": format!("git://127.0.0.1:{}/app.git", gitd.port)}))
        .await;
    // The daemon's own loop may get there first (a new project wakes it):
    // either way one deployment is queued.
    d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    wait_until(
        "the poll queued a deployment",
        Duration::from_secs(30),
        || async { !d.deployments(id).await.is_empty() },
    )
    .await;
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["target_commit"], head.as_str());
    let node = d.add_node("n1").await;
    let (status, _) = d
        .call(Method::POST, "/api/agent/heartbeat", Some(&node), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The main listener wants the admin token.
    let (status, _, body) = scrape(&d.url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = scrape(&d.url, Some("not-the-admin-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.contains("autodeploy_"), "{body}");
    // Prometheus asks for OpenMetrics and gets it.
    let (status, ctype, om) = scrape_as(
        &d.url,
        Some(ADMIN),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    // Anything else gets the Prometheus text format, which promtool checks.
    let (status, ctype, text) = scrape(&d.url, Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");

    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed: {said}\n{text}");

    let lookups = sample(
        &text,
        "autodeploy_git_lookups_total{host=\"127.0.0.1\",result=\"ok\"}",
    );
    assert!(lookups.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "autodeploy_triggers_total{source=\"auto-poll\",outcome=\"queued\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "autodeploy_deployments_total{status=\"queued\"}"),
        Some(1.0),
        "{text}"
    );
    let decided = sample(
        &text,
        "autodeploy_policy_decision_seconds_count{call=\"decide-commit\"}",
    );
    assert!(decided.is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        sample(
            &text,
            "autodeploy_tick_duration_seconds_count{loop=\"git-poll\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the git poller's own first tick is timed: {text}"
    );
    // The gauges match what the API says.
    let queued = d
        .deployments(id)
        .await
        .iter()
        .filter(|d| d["status"] == "queued")
        .count();
    assert_eq!(queued, 1);
    assert_eq!(
        sample(&text, "autodeploy_queue_depth"),
        Some(queued as f64),
        "{text}"
    );
    let nodes = d.ok(Method::GET, "/api/nodes", None).await;
    let online = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["online"] == true)
        .count();
    assert_eq!(online, 1, "{nodes}");
    assert_eq!(sample(&text, "autodeploy_nodes_online"), Some(1.0));
    // Host names only: no URL, path or scheme in any label.
    assert!(
        !text.contains("git://") && !text.contains("app.git"),
        "{text}"
    );

    // The node claims it: the queue depth follows.
    let (status, claim) = d.agent_claim(&node).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let (_, _, text) = scrape(&d.url, Some(ADMIN)).await;
    assert_eq!(sample(&text, "autodeploy_queue_depth"), Some(0.0), "{text}");

    // The separate listener serves the same without a token, and nothing else.
    let open = format!("http://{metrics_addr}");
    let (status, _, text) = scrape(&open, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(promtool_check(&text).0);
    assert!(sample(&text, "autodeploy_deployments_total{status=\"running\"}").is_some());
    let (status, _) = get(&format!("{open}/api/status")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Health, with no token.
    let (status, body) = get(&format!("{}/healthz", d.url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&format!("{}/readyz", d.url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true, "{body}");

    // JSON logs: every line is one object; the trigger's lines carry the
    // project from their span.
    let log = d.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    let queued_line = lines
        .iter()
        .find(|l| l["message"] == "deployment queued")
        .unwrap_or_else(|| panic!("no 'deployment queued' line: {log}"));
    assert_eq!(queued_line["span"]["project"], id, "{queued_line}");
    assert!(
        queued_line["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["project"] == id)),
        "{queued_line}"
    );
    // The source as the API and the decision log spell it.
    assert!(
        queued_line["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["source"] == "auto-poll")),
        "{queued_line}"
    );
    assert!(
        !log.contains(ADMIN),
        "the admin token never reaches the log"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_naming_a_stalled_loop() {
    let dir = temp_dir("obs-ready");
    let silent = silent_server();
    let d = Daemon::start_with(
        &dir,
        &[],
        &[
            ("AUTODEPLOY_TEST_ONLY_MIN_IMAGE_WATCH_INTERVAL_SECONDS", "1"),
            ("AUTODEPLOY_REGISTRY_TIMEOUT_SECONDS", "600"),
            ("AUTODEPLOY_IMAGE_LOOKUP_TIMEOUT_SECONDS", "600"),
        ],
    );
    let (status, body) = get(&format!("{}/readyz", d.url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failed"], json!([]), "{body}");

    // A registry that accepts and never answers: the image watcher's tick
    // hangs on its HEAD, so the loop stops ticking.
    let (id, token) = d.shop().await;
    let compose = format!(
        "services:\n  web:\n    image: 127.0.0.1:{}/app:1\n",
        silent.port
    );
    common::git::push_compose(&dir.join("work"), &d.url, id, &token, &compose);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_image_watch_interval_seconds": 1})),
    )
    .await;

    let url = format!("{}/readyz", d.url);
    wait_until(
        "readyz names the stalled image watcher",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let (status, body) = get(&url).await;
                status == StatusCode::SERVICE_UNAVAILABLE
                    && body["failed"] == json!(["image-watch"])
            }
        },
    )
    .await;
    let (status, body) = get(&url).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["loops"]["image-watch"]["ok"], false, "{body}");
    assert_eq!(body["loops"]["git-poll"]["ok"], true, "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    // Alive all the same.
    let (status, _) = get(&format!("{}/healthz", d.url)).await;
    assert_eq!(status, StatusCode::OK);
    d.kill();
}

#[test]
fn an_unknown_log_format_is_refused_at_start() {
    let dir = temp_dir("obs-logfmt");
    let err = Daemon::try_start_with(&dir, &[], &[("AUTODEPLOY_LOG_FORMAT", "xml")])
        .err()
        .expect("the daemon refuses to start");
    assert!(
        err.contains("AUTODEPLOY_LOG_FORMAT must be \"text\" or \"json\", not \"xml\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lookups_and_429_backoffs_are_counted_by_host() {
    use common::fake_registry::start;
    let dir = temp_dir("obs-registry");
    let (ok_port, _) = start(false).await;
    let (busy_port, busy_counts) = start(true).await;
    let d = Daemon::start(&dir);
    let (id, token) = d.shop().await;
    let compose = format!(
        "services:\n  a:\n    image: 127.0.0.1:{ok_port}/pub/app:1\n  b:\n    image: 127.0.0.1:{ok_port}/pub/other:1\n  c:\n    image: 127.0.0.1:{busy_port}/busy/app:1\n"
    );
    common::git::push_compose(&dir.join("work"), &d.url, id, &token, &compose);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    for _ in 0..2 {
        d.ok(Method::POST, "/api/ticks/image-watch", None).await;
    }
    assert_eq!(
        busy_counts.heads(),
        1,
        "the second tick respects the backoff"
    );
    let (status, _, text) = scrape(&d.url, Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(promtool_check(&text).0, "{text}");
    let series = |host_port: u16, result: &str| {
        sample(
            &text,
            &format!(
                "autodeploy_registry_requests_total{{host=\"127.0.0.1:{host_port}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(
        series(ok_port, "ok"),
        Some(4.0),
        "two images, two ticks: {text}"
    );
    assert_eq!(series(busy_port, "backed_off"), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("autodeploy_registry_backoffs_total{{host=\"127.0.0.1:{busy_port}\"}}")
        ),
        Some(1.0),
        "one 429, one backoff: {text}"
    );
    d.stop();
}
