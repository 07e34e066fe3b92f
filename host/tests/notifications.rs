//! Outbound notifications from a real daemon (SQLite, or PostgreSQL with
//! `AUTODEPLOY_TEST_DATABASE=postgres`) to a loopback HTTP receiver and a
//! real SMTP server (aiosmtpd) that requires STARTTLS and AUTH. A plain
//! HTTP client acts as the node, so deployments succeed, fail and roll back
//! for real; refusals come from the bundled policy; trigger streaks from a
//! real git lookup failing.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::receiver::Receiver;
use common::smtp::{SmtpSink, USER};
use common::wait_until;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// Planted secrets: none may reach a message, the daemon's log or an API
/// answer about targets.
const GIT_TOKEN: &str = "planted-git-token-8d1f0c";
const HOOK_SECRET: &str = "planted-hmac-secret-51e2a9";
const SMTP_PASSWORD: &str = "planted-smtp-password-77c3";
const CHAT_TOKEN: &str = "planted-chat-path-token-0b4e";
const MATRIX_TOKEN: &str = "planted-matrix-token-c91d";

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = PKey::hmac(secret.as_bytes()).unwrap();
    let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
    signer.update(body).unwrap();
    signer
        .sign_to_vec()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Retries wait this long first (then twice as long each time).
const BACKOFF_MS: u64 = 300;

fn start(dir: &std::path::Path) -> Daemon {
    Daemon::start_with(
        dir,
        &[],
        &[(
            "AUTODEPLOY_TEST_ONLY_NOTIFY_BACKOFF_MS",
            &BACKOFF_MS.to_string(),
        )],
    )
}

/// An image project with a planted git credential; deploys by hand (auto
/// deploy is off, so its remote is never looked up).
async fn image_project(d: &Daemon, name: &str) -> i64 {
    d.create_project(json!({"name": name, "project_type": "image",
        "image_ref": "registry.test/app:1", "container_port": 8080,
        "git_source": "external", "git_url": "https://git.example.invalid/app.git",
        "credentials": {"kind": "https", "username": "u", "token": GIT_TOKEN}}))
        .await
}

/// A compose project without its expose fields: the policy refuses it.
async fn refused_project(d: &Daemon, name: &str) -> i64 {
    d.create_project(json!({"name": name, "project_type": "compose"}))
        .await
}

async fn add_target(d: &Daemon, body: Value) -> Value {
    let (status, v) = d
        .admin(Method::POST, "/api/notifications", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn deploy(d: &Daemon, project: i64) -> Value {
    d.ok(
        Method::POST,
        &format!("/api/projects/{project}/deployments"),
        None,
    )
    .await
}

/// Queues a deployment, claims it as `node` and reports `report`; the
/// deployment's id and how long the report took to be answered.
async fn run_deploy(d: &Daemon, node: &str, project: i64, report: Value) -> (i64, Duration) {
    let queued = deploy(d, project).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let id = queued["id"].as_i64().unwrap();
    let (status, claim) = d.agent_claim(node).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["deployment"]["id"], id, "{claim}");
    let started = Instant::now();
    let (status, v) = d.agent_report(node, id, report).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{v}");
    (id, took)
}

async fn deliveries(d: &Daemon, target: i64) -> Vec<Value> {
    d.ok(
        Method::GET,
        &format!("/api/notifications/{target}/deliveries"),
        None,
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

/// Thirty numbered lines with a secret-looking string a build printed.
/// The last line echoes the project's own credential, as a careless build
/// script might: it is redacted.
fn log_tail() -> String {
    let mut tail: String = (0..29)
        .map(|i| format!("build line {i:02} token=ghp_notreallyasecret{i}\n"))
        .collect();
    tail.push_str(&format!(
        "build line 29 cloned https://u:{GIT_TOKEN}@git.example.invalid/app.git\n"
    ));
    tail
}

fn assert_no_planted_secret(what: &str, text: &str) {
    for s in [
        GIT_TOKEN,
        HOOK_SECRET,
        SMTP_PASSWORD,
        CHAT_TOKEN,
        MATRIX_TOKEN,
    ] {
        assert!(
            !text.contains(s),
            "{what} carries the planted secret {s}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployment_reaches_the_signed_webhook_and_the_smtp_sink_over_starttls() {
    let dir = temp_dir("notify-failed");
    let r = Receiver::start().await;
    let smtp = SmtpSink::start(&dir.join("smtp"), SMTP_PASSWORD);
    let d = start(&dir);
    let node = d.add_node("n1").await;
    let app = image_project(&d, "shop").await;
    let hook = add_target(
        &d,
        json!({"kind": "webhook", "name": "ops-hook",
               "url": format!("{}/hook/{CHAT_TOKEN}", r.url), "secret": HOOK_SECRET}),
    )
    .await;
    let mail = add_target(
        &d,
        json!({"kind": "email", "name": "ops-mail", "smtp_host": "127.0.0.1",
               "smtp_port": smtp.port, "tls": "starttls", "username": USER,
               "password": SMTP_PASSWORD, "from": "autodeploy@example.test",
               "to": ["ops@example.test"], "ca_file": smtp.ca_file}),
    )
    .await;
    assert!(
        hook.get("secret").is_none(),
        "a given secret is not echoed: {hook}"
    );
    assert_eq!(mail["host"], "127.0.0.1", "{mail}");

    let (id, _) = run_deploy(
        &d,
        &node,
        app,
        json!({"status": "failed", "error": "health gate: web never answered",
               "log_tail": log_tail()}),
    )
    .await;
    let path = format!("/hook/{CHAT_TOKEN}");
    wait_until("the webhook receiver got the failure", WAIT, || async {
        !r.requests(&path).is_empty()
    })
    .await;
    wait_until("the SMTP sink got the failure", WAIT, || async {
        !smtp.messages().is_empty()
    })
    .await;

    // The webhook: signed over the exact body with the target's secret.
    let got = &r.requests(&path)[0];
    assert_eq!(got.method, Method::POST);
    let signature = got.header("x-autodeploy-signature").expect("a signature");
    assert_eq!(
        signature,
        format!("sha256={}", hmac_hex(HOOK_SECRET, &got.body)),
        "the signature verifies with the target's secret"
    );
    assert_ne!(
        signature,
        format!("sha256={}", hmac_hex("another-secret-xx", &got.body))
    );
    assert_eq!(got.header("x-autodeploy-event"), Some("failed"));
    let m = got.json();
    let dep = d
        .deployments(app)
        .await
        .into_iter()
        .find(|x| x["id"] == id)
        .unwrap();
    assert_eq!(m["event"], "failed", "{m}");
    assert_eq!(m["project"]["id"], app, "{m}");
    assert_eq!(m["project"]["name"], "shop", "{m}");
    assert_eq!(m["deployment"]["id"], id, "{m}");
    assert_eq!(m["deployment"]["status"], "failed", "{m}");
    assert_eq!(m["deployment"]["source"], "manual", "{m}");
    assert_eq!(m["deployment"]["reason"], "manual deploy", "{m}");
    assert_eq!(m["deployment"]["error"], "health gate: web never answered");
    assert_eq!(
        m["deployment"]["policy"]["sha256"], dep["policy_sha256"],
        "{m}"
    );
    let tail: Vec<&str> = m["deployment"]["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(tail.len(), 20, "the last 20 lines: {m}");
    assert!(tail[0].starts_with("build line 10 "), "{m}");
    assert_eq!(
        tail[19], "build line 29 cloned https://u:[redacted]@git.example.invalid/app.git",
        "{m}"
    );
    assert_eq!(
        tail[18], "build line 28 token=ghp_notreallyasecret28",
        "{m}"
    );

    // The e-mail: through STARTTLS, authenticated, with the same facts.
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail_text = &mails[0];
    assert!(
        mail_text.starts_with("X-Sink-TLS: yes\r\nX-Sink-Auth: yes\r\n"),
        "{mail_text}"
    );
    assert!(mail_text.contains("ops@example.test"), "{mail_text}");
    assert!(
        mail_text.contains(&format!(
            "Subject: autodeploy: shop: deployment {id} failed"
        )),
        "{mail_text}"
    );
    assert!(
        mail_text.contains("health gate: web never answered"),
        "{mail_text}"
    );
    assert!(mail_text.contains("build line 29"), "{mail_text}");
    assert!(
        !mail_text.contains("build line 09"),
        "only the last lines: {mail_text}"
    );

    // Both recorded as sent once (the record follows the answer), and
    // counted.
    for t in [&hook, &mail] {
        let t = t["id"].as_i64().unwrap();
        wait_until("the delivery is recorded", WAIT, || async {
            deliveries(&d, t).await[0]["state"] != "pending"
        })
        .await;
        let list = deliveries(&d, t).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["state"], "sent", "{list:?}");
        assert_eq!(list[0]["attempts"], 1, "{list:?}");
    }
    let (status, metrics) = d.call(Method::GET, "/metrics", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for kind in ["webhook", "email"] {
        assert!(
            metrics.contains(&format!(
                "autodeploy_notifications_total{{kind=\"{kind}\",result=\"sent\"}} 1"
            )),
            "{metrics}"
        );
    }

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs: install Debian's prometheus package");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // No planted secret in a message, the log, or what the API says of
    // the targets; the credential and secrets did reach the daemon.
    assert_no_planted_secret("the webhook body", &got.text());
    assert_no_planted_secret("the e-mail", mail_text);
    for path in [
        "/api/notifications".to_string(),
        format!("/api/notifications/{}", hook["id"]),
        format!("/api/notifications/{}", mail["id"]),
        format!("/api/notifications/{}/deliveries", hook["id"]),
    ] {
        let v = d.ok(Method::GET, &path, None).await;
        assert_no_planted_secret(&path, &v.to_string());
    }
    assert_no_planted_secret("the answer to adding a target", &hook.to_string());
    assert_no_planted_secret("the answer to adding a target", &mail.to_string());
    assert_no_planted_secret("the daemon's log", &d.log());
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_rolled_back_and_refused_each_notify_in_each_chat_shape() {
    let dir = temp_dir("notify-shapes");
    let r = Receiver::start().await;
    let d = start(&dir);
    let node = d.add_node("n1").await;
    let app = image_project(&d, "shop").await;
    let gated = refused_project(&d, "gated").await;
    add_target(
        &d,
        json!({"kind": "webhook", "name": "all", "url": format!("{}/all", r.url),
               "secret": HOOK_SECRET}),
    )
    .await;
    add_target(
        &d,
        json!({"kind": "slack", "name": "slack",
               "url": format!("{}/slack/{CHAT_TOKEN}", r.url)}),
    )
    .await;
    add_target(
        &d,
        json!({"kind": "discord", "name": "discord",
               "url": format!("{}/discord/{CHAT_TOKEN}", r.url)}),
    )
    .await;
    let matrix = add_target(
        &d,
        json!({"kind": "matrix", "name": "matrix", "homeserver": r.url,
               "room": "!ops:example.test", "access_token": MATRIX_TOKEN}),
    )
    .await;
    assert_eq!(matrix["host"], "127.0.0.1", "{matrix}");

    let (ok, _) = run_deploy(&d, &node, app, json!({"status": "succeeded"})).await;
    let (back, _) = run_deploy(
        &d,
        &node,
        app,
        json!({"status": "rolled_back", "error": "health gate failed; restored"}),
    )
    .await;
    let refused = deploy(&d, gated).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let refused = refused["id"].as_i64().unwrap();

    let matrix_prefix = "/_matrix/client/v3/rooms/";
    wait_until("every target heard of all three", WAIT, || async {
        let matrix = r
            .all()
            .iter()
            .filter(|x| x.path.starts_with(matrix_prefix))
            .count();
        r.requests("/all").len() == 3
            && r.requests(&format!("/slack/{CHAT_TOKEN}")).len() == 3
            && r.requests(&format!("/discord/{CHAT_TOKEN}")).len() == 3
            && matrix == 3
    })
    .await;

    let mut events: Vec<(String, i64)> = r
        .requests("/all")
        .iter()
        .map(|x| {
            let m = x.json();
            (
                m["event"].as_str().unwrap().to_string(),
                m["deployment"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    events.sort_by_key(|e| e.1);
    let mut expected = vec![
        ("succeeded".to_string(), ok),
        ("rolled_back".to_string(), back),
        ("refused".to_string(), refused),
    ];
    expected.sort_by_key(|e| e.1);
    assert_eq!(events, expected);
    let refusal = r
        .requests("/all")
        .into_iter()
        .map(|x| x.json())
        .find(|m| m["event"] == "refused")
        .unwrap();
    assert!(
        refusal["deployment"]["error"]
            .as_str()
            .unwrap()
            .contains("expose"),
        "the policy's reason: {refusal}"
    );

    // Slack: {"text"}; Discord: {"content"}; each one line per event.
    let texts = |path: String, field: &str| -> Vec<String> {
        r.requests(&path)
            .iter()
            .map(|x| {
                let m = x.json();
                assert_eq!(m.as_object().unwrap().len(), 1, "only {field}: {m}");
                m[field].as_str().unwrap().to_string()
            })
            .collect()
    };
    for (path, field) in [
        (format!("/slack/{CHAT_TOKEN}"), "text"),
        (format!("/discord/{CHAT_TOKEN}"), "content"),
    ] {
        let all = texts(path, field).join("\n---\n");
        for line in [
            format!("autodeploy: shop: deployment {ok} succeeded"),
            format!("autodeploy: shop: deployment {back} rolled_back"),
            format!("autodeploy: gated: deployment {refused} refused"),
        ] {
            assert!(all.contains(&line), "{field} lacks {line:?}: {all}");
        }
        assert_no_planted_secret(field, &all);
    }

    // Matrix: the client-server API, a PUT per message with its own
    // transaction id and the access token as bearer.
    let puts: Vec<_> = r
        .all()
        .into_iter()
        .filter(|x| x.path.starts_with(matrix_prefix))
        .collect();
    let mut txns = Vec::new();
    for p in &puts {
        assert_eq!(p.method, Method::PUT);
        let (room, txn) = p.path[matrix_prefix.len()..]
            .split_once("/send/m.room.message/")
            .unwrap_or_else(|| panic!("{}", p.path));
        assert!(
            room == "!ops:example.test" || room == "!ops%3Aexample.test",
            "{room}"
        );
        assert!(txn.starts_with("autodeploy-"), "{txn}");
        txns.push(txn.to_string());
        assert_eq!(
            p.header("authorization"),
            Some(format!("Bearer {MATRIX_TOKEN}").as_str())
        );
        let m = p.json();
        assert_eq!(m["msgtype"], "m.text", "{m}");
        assert!(
            m["body"].as_str().unwrap().starts_with("autodeploy: "),
            "{m}"
        );
    }
    txns.sort();
    txns.dedup();
    assert_eq!(txns.len(), 3, "one transaction id per message");
    assert_no_planted_secret("the daemon's log", &d.log());
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_500_is_retried_with_backoff_and_never_delays_the_deploy() {
    let dir = temp_dir("notify-retry");
    let r = Receiver::start().await;
    let d = start(&dir);
    let node = d.add_node("n1").await;
    let app = image_project(&d, "shop").await;
    // The first answer is slow as well as a failure: the deploy's report
    // must not wait for it.
    let slow = Duration::from_secs(3);
    r.respond_slowly("/flaky", &[(500, slow), (500, Duration::ZERO)]);
    let t = add_target(
        &d,
        json!({"kind": "webhook", "name": "flaky", "url": format!("{}/flaky", r.url),
               "secret": HOOK_SECRET, "events": ["succeeded"]}),
    )
    .await;
    let (id, took) = run_deploy(&d, &node, app, json!({"status": "succeeded"})).await;
    assert!(
        took < slow,
        "the report waited {took:?} on a target that takes {slow:?} to answer"
    );
    wait_until("the third attempt went through", WAIT, || async {
        r.requests("/flaky").len() >= 3
    })
    .await;
    let got = r.requests("/flaky");
    assert_eq!(got.len(), 3, "sent once it succeeded: {got:?}");
    // Backoff: the second retry waited twice the first's base.
    let second_gap = got[2].at - got[1].at;
    assert!(
        second_gap >= Duration::from_millis(2 * BACKOFF_MS),
        "the second retry came after {second_gap:?}"
    );
    assert!(
        got[1].at - got[0].at >= slow,
        "the first retry came after its answer"
    );
    // The same message every time: same delivery id and body.
    let ids: Vec<_> = got
        .iter()
        .map(|x| x.header("x-autodeploy-delivery"))
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0] && i.is_some()), "{ids:?}");
    assert!(got.iter().all(|x| x.json()["deployment"]["id"] == id));
    wait_until("the delivery is recorded as sent", WAIT, || async {
        deliveries(&d, t["id"].as_i64().unwrap()).await[0]["state"] == "sent"
    })
    .await;
    let list = deliveries(&d, t["id"].as_i64().unwrap()).await;
    assert_eq!(list[0]["attempts"], 3, "{list:?}");
    assert!(list[0]["last_error"].is_null(), "{list:?}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_stops_after_its_attempts_and_a_project_target_hears_only_its_project() {
    let dir = temp_dir("notify-dead");
    let r = Receiver::start().await;
    let d = start(&dir);
    let (a, b) = (
        refused_project(&d, "alpha").await,
        refused_project(&d, "beta").await,
    );
    r.respond("/dead", &[500; 50]);
    let dead = add_target(
        &d,
        json!({"kind": "webhook", "name": "dead", "url": format!("{}/dead", r.url),
               "secret": HOOK_SECRET, "max_attempts": 3, "project_id": b}),
    )
    .await;
    let only_a = add_target(
        &d,
        json!({"kind": "slack", "name": "alpha-only", "url": format!("{}/alpha", r.url),
               "project_id": a}),
    )
    .await;
    assert_eq!(only_a["project_id"], a);
    let everyone = add_target(
        &d,
        json!({"kind": "discord", "name": "everyone", "url": format!("{}/everyone", r.url),
               "events": ["refused"]}),
    )
    .await;
    assert_eq!(everyone["events"], json!(["refused"]));

    let refused_b = deploy(&d, b).await["id"].as_i64().unwrap();
    let dead_id = dead["id"].as_i64().unwrap();
    wait_until("the dead target ran out of attempts", WAIT, || async {
        deliveries(&d, dead_id).await[0]["state"] == "dead"
    })
    .await;
    let list = deliveries(&d, dead_id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["attempts"], 3, "{list:?}");
    assert_eq!(list[0]["deployment_id"], refused_b, "{list:?}");
    assert_eq!(
        list[0]["last_error"], "the target answered HTTP 500",
        "{list:?}"
    );
    assert_eq!(r.requests("/dead").len(), 3);

    // Project alpha's refusal: its own target and the daemon's hear of it;
    // beta's target does not. Once they have, the sender has drained again,
    // and the dead target got nothing more.
    let refused_a = deploy(&d, a).await["id"].as_i64().unwrap();
    wait_until("alpha's targets heard of its refusal", WAIT, || async {
        r.requests("/alpha").len() == 1 && r.requests("/everyone").len() == 2
    })
    .await;
    assert!(
        r.requests("/alpha")[0]
            .text()
            .contains(&format!("deployment {refused_a} refused"))
    );
    let everyone_heard: Vec<String> = r
        .requests("/everyone")
        .iter()
        .map(|x| x.json()["content"].as_str().unwrap().to_string())
        .collect();
    assert!(everyone_heard[0].contains("beta"), "{everyone_heard:?}");
    assert!(everyone_heard[1].contains("alpha"), "{everyone_heard:?}");
    assert_eq!(
        r.requests("/dead").len(),
        3,
        "a dead message is not sent again"
    );
    assert_eq!(
        deliveries(&d, dead_id).await.len(),
        1,
        "beta's target heard nothing of alpha"
    );
    assert!(r.requests("/alpha")[0].text().contains("alpha"));

    // Deleting a target stops it and its queue.
    let (status, _) = d
        .admin(
            Method::DELETE,
            &format!("/api/notifications/{dead_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = d
        .admin(Method::GET, &format!("/api/notifications/{dead_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_failing_three_ticks_in_a_row_notifies_once_then_its_recovery() {
    let dir = temp_dir("notify-streak");
    let r = Receiver::start().await;
    let d = start(&dir);
    // Ticks only when asked.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    wait_until("the poll loop's tick at start ran", WAIT, || async {
        !d.ok(Method::GET, "/api/status", None).await["loops"]["git-poll"]["last_tick_at"].is_null()
    })
    .await;
    let bare = dir.join("later.git");
    let id = d
        .create_project(json!({"name": "ext", "project_type": "image",
            "image_ref": "registry.test/app:1", "container_port": 8080,
            "git_source": "external", "auto_deploy_enabled": true,
            "git_url": format!("file://{}", bare.display())}))
        .await;
    let t = add_target(
        &d,
        json!({"kind": "webhook", "name": "streaks", "url": format!("{}/streaks", r.url),
               "secret": HOOK_SECRET, "events": ["trigger_failing", "trigger_recovered"]}),
    )
    .await;
    let t = t["id"].as_i64().unwrap();
    let tick = || async { d.ok(Method::POST, "/api/ticks/git-poll", None).await };
    // A message is queued by the failing check itself, so the outbox shows
    // it once the tick answered. The daemon's own loop may have checked the
    // new project once already: the third failure in a row is the second
    // or third tick asked for.
    let mut ticks = 0;
    while deliveries(&d, t).await.is_empty() {
        assert!(
            ticks < 3,
            "no trigger_failing message after {ticks} failing ticks"
        );
        let summary = tick().await;
        assert!(summary.to_string().contains("failed"), "{summary}");
        ticks += 1;
    }
    assert!(ticks >= 2, "told after {ticks} failing ticks");
    wait_until("the receiver heard the streak", WAIT, || async {
        !r.requests("/streaks").is_empty()
    })
    .await;
    let first = r.requests("/streaks")[0].json();
    assert_eq!(first["event"], "trigger_failing", "{first}");
    assert_eq!(first["project"]["id"], id, "{first}");
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .contains("3 checks in a row failed"),
        "{first}"
    );
    // Still failing: not told again.
    tick().await;
    tick().await;
    assert_eq!(deliveries(&d, t).await.len(), 1, "one message per streak");
    // Works again: told once.
    common::git::bare_with_commit(&bare);
    tick().await;
    wait_until("the recovery was told", WAIT, || async {
        r.requests("/streaks").len() >= 2
    })
    .await;
    let all: Vec<Value> = r.requests("/streaks").iter().map(|x| x.json()).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["event"], "trigger_recovered", "{all:?}");
    d.stop();
}

#[tokio::test]
async fn bad_target_configs_get_a_4xx_naming_the_problem() {
    let dir = temp_dir("notify-bad");
    let d = start(&dir);
    let p = image_project(&d, "shop").await;
    add_target(
        &d,
        json!({"kind": "slack", "name": "taken", "url": "https://hooks.example.test/x"}),
    )
    .await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"name": "a", "url": "https://h.example.test/"}),
            StatusCode::BAD_REQUEST,
            "kind is required",
        ),
        (
            json!({"kind": "pager", "name": "a"}),
            StatusCode::BAD_REQUEST,
            "kind must be webhook, slack, discord, matrix or email",
        ),
        (
            json!({"kind": "slack", "url": "https://h.example.test/"}),
            StatusCode::BAD_REQUEST,
            "name is required",
        ),
        (
            json!({"kind": "slack", "name": "a"}),
            StatusCode::BAD_REQUEST,
            "url is required for a slack target",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "not a url"}),
            StatusCode::BAD_REQUEST,
            "url is not a URL",
        ),
        (
            json!({"kind": "discord", "name": "a", "url": "ftp://h.example.test/x"}),
            StatusCode::BAD_REQUEST,
            "url must be an http or https URL",
        ),
        (
            json!({"kind": "webhook", "name": "a", "url": "https://h.example.test/", "secret": "short"}),
            StatusCode::BAD_REQUEST,
            "secret must be at least 16 characters",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "https://h.example.test/", "password": SMTP_PASSWORD}),
            StatusCode::BAD_REQUEST,
            "password does not apply to a slack target",
        ),
        (
            json!({"kind": "matrix", "name": "a", "homeserver": "https://m.example.test", "room": "ops", "access_token": MATRIX_TOKEN}),
            StatusCode::BAD_REQUEST,
            "room must be a Matrix room id",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "to": ["o@example.test"]}),
            StatusCode::BAD_REQUEST,
            "from is required for a email target",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "from": "a@example.test"}),
            StatusCode::BAD_REQUEST,
            "to is required",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "from": "a@example.test", "to": ["nobody"]}),
            StatusCode::BAD_REQUEST,
            "to is not an e-mail address",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "tls": "none", "from": "a@example.test", "to": ["o@example.test"]}),
            StatusCode::BAD_REQUEST,
            "allowed only for a loopback smtp_host",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "from": "a@example.test", "to": ["o@example.test"], "password": SMTP_PASSWORD}),
            StatusCode::BAD_REQUEST,
            "username and password go together",
        ),
        (
            json!({"kind": "email", "name": "a", "smtp_host": "mail.example.test", "from": "a@example.test", "to": ["o@example.test"], "ca_file": "/nonexistent/ca.pem"}),
            StatusCode::BAD_REQUEST,
            "ca_file cannot be read",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "https://h.example.test/", "events": ["exploded"]}),
            StatusCode::BAD_REQUEST,
            "events: each must be one of succeeded, failed, refused, rolled_back",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "https://h.example.test/", "max_attempts": 0}),
            StatusCode::BAD_REQUEST,
            "max_attempts must be 1-20",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "https://h.example.test/", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `colour`",
        ),
        (
            json!({"kind": "slack", "name": "a", "url": "https://h.example.test/", "project_id": p + 1000}),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            json!({"kind": "slack", "name": "taken", "url": "https://h.example.test/"}),
            StatusCode::CONFLICT,
            "a notification target with this name",
        ),
    ];
    for (body, want, names) in cases {
        let (status, v) = d
            .admin(Method::POST, "/api/notifications", Some(body.clone()))
            .await;
        assert_eq!(status, want, "{body}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(names),
            "{body}: {error:?} does not say {names:?}"
        );
        assert_no_planted_secret("an error", error);
    }
    let (status, v) = d.admin(Method::GET, "/api/notifications/x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = d.call(Method::GET, "/api/notifications", None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the admin token is required"
    );
    assert_eq!(
        d.ok(Method::GET, "/api/notifications", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing bad was added"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_database_send_each_message_once() {
    use common::replicas::{Replica, Shared};
    let dir = temp_dir("notify-replicas");
    let r = Receiver::start().await;
    let mut shared = Shared::new(common::db::database_url("notify-replicas"), &dir);
    shared.extra_env.push((
        "AUTODEPLOY_TEST_ONLY_NOTIFY_BACKOFF_MS".into(),
        BACKOFF_MS.to_string(),
    ));
    let replicas = [
        Replica::start(0, &dir, &shared),
        Replica::start(1, &dir, &shared),
    ];
    let (a, b) = (replicas[0].daemon(), replicas[1].daemon());
    // A failure first, so some messages are retried while both replicas
    // drain.
    r.respond("/once", &[500, 500]);
    add_target(
        a,
        json!({"kind": "webhook", "name": "once", "url": format!("{}/once", r.url),
               "secret": HOOK_SECRET}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let d = if i % 2 == 0 { a } else { b };
        let p = refused_project(d, &format!("p{i}")).await;
        ids.push(deploy(d, p).await["id"].as_i64().unwrap());
    }
    let target = a.ok(Method::GET, "/api/notifications", None).await[0]["id"]
        .as_i64()
        .unwrap();
    wait_until("every message was sent", WAIT, || async {
        let list = deliveries(a, target).await;
        list.len() == ids.len() && list.iter().all(|x| x["state"] == "sent")
    })
    .await;
    // Two failed attempts and one success per message that failed; one
    // request per message otherwise: no message went out twice.
    let got = r.requests("/once");
    assert_eq!(got.len(), ids.len() + 2, "{} requests", got.len());
    let mut delivered: Vec<i64> = got
        .iter()
        .map(|x| x.json()["deployment"]["id"].as_i64().unwrap())
        .collect();
    delivered.sort();
    delivered.dedup();
    ids.sort();
    assert_eq!(delivered, ids, "each refusal told, once");
}

#[tokio::test]
async fn the_cli_adds_lists_and_deletes_targets_without_showing_their_secrets() {
    let dir = temp_dir("notify-cli");
    let d = start(&dir);
    let p = image_project(&d, "shop").await;
    let url = format!("https://hooks.example.test/services/{CHAT_TOKEN}");
    let added = common::cli(
        &d,
        &[
            "notification",
            "add",
            "slack",
            "shop-alerts",
            "--project",
            &p.to_string(),
            "--event",
            "failed",
            "--event",
            "refused",
            &format!("url={url}"),
        ],
    )
    .unwrap();
    assert_eq!(added["kind"], "slack", "{added}");
    assert_eq!(added["host"], "hooks.example.test", "{added}");
    assert_eq!(added["events"], json!(["failed", "refused"]), "{added}");
    assert_eq!(added["project_id"], p, "{added}");
    let made = common::cli(
        &d,
        &[
            "notification",
            "add",
            "webhook",
            "ops",
            "url=https://ops.example.test/hook",
        ],
    )
    .unwrap();
    let secret = made["secret"].as_str().expect("a made secret, shown once");
    assert!(secret.len() >= 16, "{made}");
    let list = common::cli(&d, &["notification", "list"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_no_planted_secret("the CLI's list", &list.to_string());
    assert!(!list.to_string().contains(secret), "{list}");
    let bad = common::cli(&d, &["notification", "add", "pager", "x"]).unwrap_err();
    assert!(
        bad.contains("kind must be webhook, slack, discord, matrix or email"),
        "{bad}"
    );
    let id = added["id"].to_string();
    common::cli(&d, &["notification", "delete", &id]).unwrap();
    let gone = common::cli(&d, &["notification", "show", &id]).unwrap_err();
    assert!(gone.contains("404"), "{gone}");
    d.stop();
}
