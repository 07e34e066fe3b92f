//! Registry notifications (`POST /hooks/registry`) against Debian's real
//! docker-registry on loopback, configured to notify the daemon, with the
//! image watch interval at its default 600 s so no tick can run during a
//! test: a push deploys through the notification alone.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, temp_dir};
use common::registry::{Notify, Options, TestRegistry};
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "adrh-planted-registry-hook-secret-7f3a";

fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::start_with(dir, &[], &[("AUTODEPLOY_REGISTRY_HOOK_SECRET", SECRET)])
}

/// A hosted compose project using `image`, auto-deploy on, its digests
/// seeded by one tick (the only tick of the test).
async fn seeded_project(d: &Daemon, dir: &std::path::Path, image: &str) -> i64 {
    let (id, token) = d.shop().await;
    common::git::push_compose(
        &dir.join("work"),
        &d.url,
        id,
        &token,
        &format!("services:\n  web:\n    image: {image}\n"),
    );
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    d.ok(Method::POST, "/api/ticks/image-watch", None).await;
    id
}

async fn digests(d: &Daemon, id: i64) -> Value {
    d.ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await["last_tracked_image_digests"]
        .clone()
}

async fn auto_image(d: &Daemon, id: i64) -> Option<Value> {
    d.deployments(id)
        .await
        .into_iter()
        .find(|dep| dep["source"] == "auto-image")
}

async fn post(
    d: &Daemon,
    query: &str,
    auth: Option<&str>,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/registry{query}", d.url))
        .header("content-type", content_type)
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("daemon answers");
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_registry_push_queues_an_auto_image_deployment_with_no_tick() {
    let dir = temp_dir("registry-hook-push");
    let d = daemon(&dir);
    let hook = format!("{}/hooks/registry", d.url);
    let reg = TestRegistry::start_with(
        &dir.join("registry"),
        Options {
            notify: Some(Notify {
                url: &hook,
                bearer: SECRET,
            }),
            ..Options::default()
        },
    );
    let app_v1 = reg.push("app", "1", "version one");
    let image = format!("{}/app:1", reg.addr);
    let id = seeded_project(&d, &dir, &image).await;
    assert_eq!(digests(&d, id).await, json!({ image.clone(): app_v1 }));
    assert!(auto_image(&d, id).await.is_none());

    // A new image under the same tag: the registry's own notification
    // queues the deployment; no tick is asked for and none is due.
    let pushed_at = Instant::now();
    let app_v2 = reg.push("app", "1", "version two");
    let pushed = pushed_at.elapsed();
    assert_ne!(app_v1, app_v2);
    wait_until(
        "an auto-image deployment from the registry's notification",
        Duration::from_secs(60),
        || async { auto_image(&d, id).await.is_some() },
    )
    .await;
    let latency = pushed_at.elapsed();
    println!(
        "registry push -> auto-image deployment queued: {latency:?} from the push's start (the skopeo push itself took {pushed:?})"
    );
    let dep = auto_image(&d, id).await.unwrap();
    assert_eq!(dep["target_digests"][&image], app_v2.as_str(), "{dep}");
    assert_eq!(digests(&d, id).await[&image], app_v2.as_str());
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("registry notification: images checked")
                && l.contains(&format!("images=[\"{image}\"]"))
                && l.contains("triggered=1")),
        "no check from the notification deployed: {log}"
    );
    assert!(!log.contains(SECRET), "the daemon's log holds the secret");
}

#[tokio::test]
async fn harbor_and_docker_hub_bodies_check_the_real_digest_and_a_wrong_secret_does_nothing() {
    let dir = temp_dir("registry-hook-shapes");
    let d = daemon(&dir);
    // This registry notifies nobody: every notification is sent here.
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let app_v1 = reg.push("team/app", "1", "version one");
    let image = format!("{}/team/app:1", reg.addr);
    let id = seeded_project(&d, &dir, &image).await;
    assert_eq!(digests(&d, id).await, json!({ image.clone(): app_v1 }));
    let app_v2 = reg.push("team/app", "1", "version two");
    let bearer = format!("Bearer {SECRET}");
    let mut answers = String::new();

    // A wrong or missing secret: 401, nothing scheduled, a security event.
    let envelope = json!({"events": [{
        "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/app", "tag": "1", "digest": app_v2},
        "request": {"host": reg.addr},
    }]});
    for auth in [Some("Bearer not-the-secret"), None] {
        let (status, body) = post(
            &d,
            "",
            auth,
            envelope.to_string().into_bytes(),
            "application/vnd.docker.distribution.events.v1+json",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        answers.push_str(&body);
    }
    let (status, body) = post(
        &d,
        "?secret=wrong",
        None,
        b"{}".to_vec(),
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        auto_image(&d, id).await.is_none(),
        "a refused notification queued a deployment"
    );
    assert_eq!(digests(&d, id).await[&image], app_v1.as_str());
    let events = d
        .ok(Method::GET, "/api/events?limit=200", None)
        .await
        .to_string();
    assert!(
        events.contains("registry-hook.refused")
            && events.contains("registry notification refused: bad secret"),
        "no security event in {events}"
    );

    // Bodies that schedule nothing are acknowledged, and malformed ones
    // are refused naming the problem.
    for (body, status, says) in [
        (
            json!({"events": [{"action": "pull", "target": {"repository": "team/app", "tag": "1"}, "request": {"host": reg.addr}}]}).to_string(),
            StatusCode::OK,
            "ignored",
        ),
        (
            json!({"events": [{"action": "push", "target": {"repository": "team/app", "digest": app_v2}, "request": {"host": reg.addr}}]}).to_string(),
            StatusCode::OK,
            "ignored",
        ),
        (
            json!({"type": "DELETE_ARTIFACT", "event_data": {"resources": []}}).to_string(),
            StatusCode::OK,
            "ignored",
        ),
        ("{not json".to_string(), StatusCode::BAD_REQUEST, "not JSON"),
        (
            json!({"events": [{"action": "push"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "events[0]: no \\\"target\\\"",
        ),
        (
            json!({"events": vec![json!({"action": "pull"}); 1000]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "more than",
        ),
        (
            format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
    ] {
        let (got, answer) = post(&d, "", Some(&bearer), body.into_bytes(), "application/json").await;
        assert_eq!(got, status, "{answer}");
        assert!(answer.contains(says), "{says:?} not in {answer}");
        answers.push_str(&answer);
    }
    assert!(auto_image(&d, id).await.is_none());

    // Harbor, naming a digest that is not the registry's: the check asks
    // the registry, and the deployment carries the registry's digest.
    let planted = format!("sha256:{}", "0".repeat(64));
    let harbor = json!({
        "type": "PUSH_ARTIFACT",
        "occur_at": 1700000000,
        "operator": "admin",
        "event_data": {
            "resources": [{"digest": planted, "tag": "1", "resource_url": format!("{image}")}],
            "repository": {"name": "app", "namespace": "team", "repo_full_name": "team/app", "repo_type": "private"},
        },
    });
    let (status, answer) = post(
        &d,
        "",
        Some(&bearer),
        harbor.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(
        answer.contains("\"harbor\"") && answer.contains(&image),
        "{answer}"
    );
    answers.push_str(&answer);
    wait_until(
        "an auto-image deployment from the Harbor notification",
        Duration::from_secs(60),
        || async { auto_image(&d, id).await.is_some() },
    )
    .await;
    let dep = auto_image(&d, id).await.unwrap();
    assert_eq!(dep["target_digests"][&image], app_v2.as_str(), "{dep}");
    assert!(!dep.to_string().contains(&planted), "{dep}");

    // Docker Hub can only send the secret in the query string. Its images
    // are on docker.io, which no project here uses: the normalised
    // reference is scheduled, and nothing leaves loopback.
    let hub = json!({
        "callback_url": "https://registry.hub.docker.com/u/me/app/hook/x/",
        "push_data": {"pushed_at": 1700000000, "pusher": "me", "tag": "1"},
        "repository": {"name": "app", "namespace": "me", "repo_name": "me/app"},
    });
    let (status, answer) = post(
        &d,
        &format!("?secret={SECRET}"),
        None,
        hub.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(
        answer.contains("docker-hub") && answer.contains("docker.io/me/app:1"),
        "{answer}"
    );
    answers.push_str(&answer);
    wait_until(
        "the Docker Hub notification's check",
        Duration::from_secs(60),
        || async { d.log().contains("images=[\"docker.io/me/app:1\"]") },
    )
    .await;

    let log = d.log();
    let events = d
        .ok(Method::GET, "/api/events?limit=200", None)
        .await
        .to_string();
    for (what, text) in [("log", &log), ("responses", &answers), ("events", &events)] {
        assert!(!text.contains(SECRET), "the {what} hold the secret");
    }
}

#[tokio::test]
async fn without_a_secret_the_endpoint_does_not_exist() {
    let dir = temp_dir("registry-hook-off");
    let d = Daemon::start(&dir);
    let (status, body) = post(
        &d,
        "",
        Some("Bearer anything"),
        br#"{"events":[]}"#.to_vec(),
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
