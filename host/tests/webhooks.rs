//! Git host webhooks against real parts: an external repository served by
//! `git daemon`, the daemon polling once an hour, and signed deliveries in
//! each provider's style sent over HTTP. A valid push hook makes the daemon
//! look the branch up now and deploy the real head; forged, replayed and
//! malformed deliveries deploy nothing and leave security events.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::{bare_with_commit, commit_to, git_daemon};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2_mac::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// The headers of a push in `style`, signed with `secret`.
fn push_headers(style: &str, secret: &str, body: &[u8], delivery: &str) -> Vec<(String, String)> {
    let sig = hmac_hex(secret, body);
    let h = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match style {
        "github" => h(&[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &format!("sha256={sig}")),
        ]),
        "gitea" => h(&[
            ("X-Gitea-Event", "push"),
            ("X-GitHub-Event", "push"),
            ("X-Gitea-Delivery", delivery),
            ("X-Gitea-Signature", &sig),
        ]),
        "forgejo" => h(&[
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Delivery", delivery),
            ("X-Forgejo-Signature", &sig),
        ]),
        "gitlab" => h(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", delivery),
            ("X-Gitlab-Token", secret),
        ]),
        "bitbucket" => h(&[
            ("X-Event-Key", "repo:push"),
            ("X-Request-UUID", delivery),
            ("X-Hub-Signature", &format!("sha256={sig}")),
        ]),
        "generic" => h(&[
            ("X-Autodeploy-Delivery", delivery),
            ("X-Autodeploy-Signature", &format!("sha256={sig}")),
        ]),
        other => panic!("no style {other}"),
    }
}

/// One client for every delivery: making one loads the TLS roots (tens of
/// milliseconds in a debug build), which a benchmark of the daemon must
/// not time, so the benchmark makes it before its clock runs.
fn hook_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

async fn hook(
    d: &Daemon,
    project: i64,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = hook_client()
        .post(format!("{}/hooks/git/{project}", d.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("daemon answers");
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

/// A payload naming a commit that is not the branch's head: the daemon
/// must never deploy it.
fn payload(claimed: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"ref": "refs/heads/main", "after": claimed, "checkout_sha": claimed}),
    )
    .unwrap()
}

const CLAIMED: &str = "0123456789abcdef0123456789abcdef01234567";

async fn targets(d: &Daemon, project: i64) -> Vec<String> {
    d.deployments(project)
        .await
        .iter()
        .filter_map(|x| x["target_commit"].as_str().map(str::to_string))
        .collect()
}

async fn wait_deployed(d: &Daemon, project: i64, sha: &str) {
    common::wait_until(
        &format!("a deployment of {sha} is recorded"),
        WAIT,
        || async { targets(d, project).await.iter().any(|t| t == sha) },
    )
    .await;
}

/// A daemon polling once an hour, its tick at start done, with an external
/// project on `git://` and its webhook secret (made through the CLI).
struct Setup {
    d: Daemon,
    bare: std::path::PathBuf,
    project: i64,
    secret: String,
    _gitd: common::git::Server,
}

async fn setup(name: &str) -> Setup {
    setup_with(name, &[]).await
}

/// As `setup`, with `env` added to the daemon's.
async fn setup_with(name: &str, env: &[(&str, &str)]) -> Setup {
    let dir = temp_dir(name);
    let repos = dir.join("repos");
    let bare = repos.join("app.git");
    bare_with_commit(&bare);
    let gitd = git_daemon(&repos);
    let d = Daemon::start_with(&dir, &[], env);
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
    let project = d
        .create_project(json!({"name": "app", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external", "git_url": format!("git://127.0.0.1:{}/app.git", gitd.port), "auto_deploy_enabled": true}))
        .await;
    let secret = cli_secret(&d, project);
    Setup {
        d,
        bare,
        project,
        secret,
        _gitd: gitd,
    }
}

/// `autodeploy project webhook-secret ID`: the new secret.
fn cli_secret(d: &Daemon, project: i64) -> String {
    let out = d.cli_ok(&["project", "webhook-secret", &project.to_string()], "");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["path"], format!("/hooks/git/{project}"));
    v["webhook_secret"].as_str().expect("a secret").to_string()
}

#[tokio::test]
async fn signed_pushes_deploy_the_real_head_and_forgeries_nothing() {
    let s = setup("webhooks").await;
    let (d, p) = (&s.d, s.project);
    // Rotating: the first secret stops working.
    let old = s.secret.clone();
    let secret = cli_secret(d, p);
    assert_ne!(old, secret);

    // A signed GitHub push whose payload names another commit: the real
    // head is deployed, within seconds although the poll is hourly.
    let head = commit_to(&s.bare, "main", "second");
    let body = payload(CLAIMED);
    let (status, text) = hook(
        d,
        p,
        &push_headers("github", &secret, &body, "gh-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    wait_deployed(d, p, &head).await;
    assert!(!targets(d, p).await.iter().any(|t| t == CLAIMED));
    let deployed = d.deployments(p).await.len();

    // The same delivery again: ignored, no lookup.
    let (status, text) = hook(
        d,
        p,
        &push_headers("github", &secret, &body, "gh-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("duplicate"), "{text}");

    // Forgeries after a new commit: each refused with 401, none deploys.
    let next = commit_to(&s.bare, "main", "third");
    let forged_sig = hmac_hex("not-the-secret", &body);
    for (style, key) in [
        ("github", old.as_str()),
        ("github", "not-the-secret"),
        ("gitea", "not-the-secret"),
        ("forgejo", "not-the-secret"),
        ("gitlab", old.as_str()),
        ("bitbucket", "not-the-secret"),
        ("generic", "not-the-secret"),
    ] {
        let (status, text) = hook(
            d,
            p,
            &push_headers(style, key, &body, &format!("forged-{style}")),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{style}: {text}");
        assert!(!text.contains(key) && !text.contains(&forged_sig), "{text}");
    }
    let unsigned = vec![
        ("X-GitHub-Event".to_string(), "push".to_string()),
        ("X-GitHub-Delivery".to_string(), "unsigned".to_string()),
    ];
    assert_eq!(
        hook(d, p, &unsigned, body.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Other refusals: wrong event, no delivery id, unknown project, hosted
    // project, oversized body.
    let mut issues = push_headers("github", &secret, &body, "gh-issue");
    issues[0].1 = "issues".into();
    let (status, text) = hook(d, p, &issues, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("unsupported event"), "{text}");
    let mut ping = push_headers("github", &secret, &body, "gh-ping");
    ping[0].1 = "ping".into();
    assert_eq!(hook(d, p, &ping, body.clone()).await.0, StatusCode::OK);
    let no_id: Vec<_> = push_headers("github", &secret, &body, "x")
        .into_iter()
        .filter(|(k, _)| k != "X-GitHub-Delivery")
        .collect();
    assert_eq!(
        hook(d, p, &no_id, body.clone()).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = hook(
        d,
        999_999,
        &push_headers("github", &secret, &body, "gh-404"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let hosted = d
        .create_project(json!({"name": "hosted", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    let (status, _) = hook(
        d,
        hosted,
        &push_headers("github", &secret, &body, "gh-hosted"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = d
        .admin(
            Method::POST,
            &format!("/api/projects/{hosted}/webhook-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let big = vec![b' '; (1 << 20) + 1];
    let (status, _) = hook(
        d,
        p,
        &push_headers("github", &secret, &big, "gh-big"),
        big.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // None of that deployed anything (the hook handler is what schedules a
    // lookup, and every one of these answered before scheduling one).
    assert_eq!(d.deployments(p).await.len(), deployed);
    assert!(!targets(d, p).await.iter().any(|t| t == &next));

    // Each refusal is a security event naming the provider and project,
    // never the secret or the signature.
    let events = d
        .ok(Method::GET, "/api/events?limit=200", None)
        .await
        .to_string();
    for want in [
        format!("github webhook for project {p} refused: bad signature"),
        format!("gitea webhook for project {p} refused: bad signature"),
        format!("gitlab webhook for project {p} refused: bad signature"),
        format!("bitbucket webhook for project {p} refused: bad signature"),
        format!("generic webhook for project {p} refused: bad signature"),
        format!("github webhook for project {p} refused: unsupported event"),
        "github webhook for project 999999 refused: unknown project".to_string(),
        format!("github webhook for project {hosted} refused: hosted project"),
        format!("github webhook for project {p} refused: body too large"),
    ] {
        assert!(events.contains(&want), "no event {want:?} in {events}");
    }

    // Every other provider's signed push deploys the real head too.
    for (n, style) in ["gitea", "forgejo", "gitlab", "bitbucket", "generic"]
        .iter()
        .enumerate()
    {
        let sha = if n == 0 {
            next.clone()
        } else {
            commit_to(&s.bare, "main", style)
        };
        let (status, text) = hook(
            d,
            p,
            &push_headers(style, &secret, &body, &format!("ok-{style}")),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{style}: {text}");
        wait_deployed(d, p, &sha).await;
    }

    // Every delivery is counted by provider and verdict.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"autodeploy_webhook_deliveries_total{provider="github",verdict="accepted"}"#,
        r#"autodeploy_webhook_deliveries_total{provider="github",verdict="replayed"}"#,
        r#"autodeploy_webhook_deliveries_total{provider="github",verdict="rejected"}"#,
        r#"autodeploy_webhook_deliveries_total{provider="gitlab",verdict="accepted"}"#,
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v >= 1.0),
            "{series} should have counted a delivery; /metrics:\n{metrics}"
        );
    }

    // The secrets and signatures never reach the log or the event log.
    let log = d.log();
    let events = d
        .ok(Method::GET, "/api/events?limit=200", None)
        .await
        .to_string();
    for planted in [&old, &secret, &forged_sig, &hmac_hex(&secret, &body)] {
        assert!(
            !log.contains(planted.as_str()),
            "the daemon's log holds a secret or signature"
        );
        assert!(
            !events.contains(planted.as_str()),
            "the event log holds a secret or signature"
        );
    }
}

/// Signed webhook → deployment recorded, over 50 deliveries (each after a
/// new commit): p50 and p99. Run with `bench/webhook.sh` (a release daemon
/// through `AUTODEPLOY_BIN`). The daemon logs at its own default level
/// (`info`), as deployed; `BENCH_RUST_LOG` changes it (e.g. `debug`, to
/// see where a delivery's time goes).
#[tokio::test]
#[ignore = "a benchmark: run bench/webhook.sh"]
async fn bench_webhook_to_deployment() {
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
    let s = setup_with("webhooks-bench", &[("RUST_LOG", log.as_str())]).await;
    let (d, p) = (&s.d, s.project);
    let body = payload(CLAIMED);
    hook_client();
    let mut took = Vec::new();
    for i in 0..50 {
        let sha = commit_to(&s.bare, "main", &format!("bench {i}"));
        let headers = push_headers("github", &s.secret, &body, &format!("bench-{i}"));
        let started = Instant::now();
        let (status, text) = hook(d, p, &headers, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        loop {
            let newest = d.deployments(p).await;
            if newest.first().and_then(|x| x["target_commit"].as_str()) == Some(sha.as_str()) {
                break;
            }
            assert!(started.elapsed() < WAIT, "no deployment of {sha}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(started.elapsed());
    }
    // In delivery order too: a slow first delivery is a cold start, a
    // slow one later is not.
    let slowest = (0..took.len()).max_by_key(|&i| took[i]).unwrap_or(0);
    println!(
        "deliveries 1-5: {:?}; the slowest is delivery {}",
        &took[..took.len().min(5)],
        slowest + 1
    );
    took.sort();
    let at = |q: f64| took[((took.len() as f64 - 1.0) * q).round() as usize];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "webhook -> deployment recorded over {} deliveries: p50 {:?}, p99 {:?}, max {:?}; loadavg {}",
        took.len(),
        at(0.5),
        at(0.99),
        took[took.len() - 1],
        load.trim()
    );
}

/// While a project's hooks arrive, due ticks leave it out (it is polled at
/// 10× the interval); a project without hooks is polled on every due tick.
/// Each lookup is an upload-pack request `git daemon --verbose` logs.
#[tokio::test]
async fn projects_whose_hooks_arrive_are_polled_less_often() {
    let dir = temp_dir("webhooks-relaxed");
    let repos = dir.join("repos");
    let hooked_bare = repos.join("hooked.git");
    bare_with_commit(&hooked_bare);
    bare_with_commit(&repos.join("polled.git"));
    let gitd = common::git::LoggedGitDaemon::start(&repos);
    let d = Daemon::start(&dir);
    // The shortest interval allowed, so ticks come within the test.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 10})),
    )
    .await;
    let external = |name: &str| json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external", "git_url": gitd.url(&format!("{name}.git")), "auto_deploy_enabled": true});
    let hooked = d.create_project(external("hooked")).await;
    d.create_project(external("polled")).await;
    let secret = cli_secret(&d, hooked);
    let count = |repo: &str| gitd.requests().iter().filter(|r| r.repo == repo).count();

    let head = commit_to(&hooked_bare, "main", "second");
    let body = payload(CLAIMED);
    let (status, text) = hook(
        &d,
        hooked,
        &push_headers("github", &secret, &body, "relax-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    wait_deployed(&d, hooked, &head).await;
    // Two more lookups of the polled project: the tick that may have been
    // under way when the hook came has ended.
    let mark = count("/polled.git");
    common::wait_until(
        "two due ticks polled the other project",
        Duration::from_secs(120),
        || async { count("/polled.git") >= mark + 2 },
    )
    .await;
    let hooked_before = count("/hooked.git");
    let mark = count("/polled.git");
    common::wait_until(
        "another due tick polled the other project",
        Duration::from_secs(120),
        || async { count("/polled.git") > mark },
    )
    .await;
    assert_eq!(
        count("/hooked.git"),
        hooked_before,
        "a due tick looked up the project whose hooks arrive"
    );
}
