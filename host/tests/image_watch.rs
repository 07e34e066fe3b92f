//! The image-digest trigger against real registries on loopback (Debian's
//! docker-registry; images pushed with skopeo).

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::git::{bare_with_commit, git};
use common::registry::{TestRegistry, make_tls};
use reqwest::Method;
use serde_json::{Value, json};

async fn tick(d: &Daemon) -> Value {
    d.ok(Method::POST, "/api/ticks/image-watch", None).await
}

fn project(tick: &Value, id: i64) -> &Value {
    tick["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project_id"] == id)
        .expect("project in the tick")
}

async fn digests(d: &Daemon, id: i64) -> Value {
    d.ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await["last_tracked_image_digests"]
        .clone()
}

/// Pushes `compose` as docker-compose.yml to a hosted project's repository.
fn push_compose(d: &Daemon, work: &Path, id: i64, token: &str, compose: &str) {
    common::git::push_compose(work, &d.url, id, token, compose);
}

#[tokio::test]
async fn digests_seed_then_a_moved_tag_redeploys_exactly_once() {
    let dir = temp_dir("image-watch");
    let mut reg = TestRegistry::start(&dir.join("registry"), None, None);
    let app_v1 = reg.push("app", "1", "version one");
    let multi = reg.push_multi_arch("multi", "1", "multi one");
    let d = Daemon::start(&dir);
    let app_image = format!("{}/app:1", reg.addr);
    let multi_image = format!("{}/multi:1", reg.addr);

    let (id, token) = d.shop().await;
    let work = dir.join("work");
    let compose = format!(
        "services:\n  web:\n    image: {app_image}\n  worker:\n    image: {multi_image}\n  tool:\n    image: \"{}/tool:${{TAG}}\"\n",
        reg.addr
    );
    push_compose(&d, &work, id, &token, &compose);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;

    // First tick: the map is seeded, nothing deploys.
    let t = tick(&d).await;
    let me = project(&t, id);
    assert_eq!(me["outcome"], "recorded", "{me}");
    assert_eq!(
        me["skipped"],
        json!([format!("{}/tool:${{TAG}}", reg.addr)]),
        "interpolated images are skipped"
    );
    assert_eq!(
        digests(&d, id).await,
        json!({app_image.clone(): app_v1, multi_image.clone(): multi}),
        "a multi-arch tag records its index digest"
    );
    assert!(d.deployments(id).await.is_empty());
    assert_eq!(project(&tick(&d).await, id)["outcome"], "unchanged");

    // The tag moves upstream: exactly one auto-image deployment.
    let app_v2 = reg.push("app", "1", "version two");
    assert_ne!(app_v1, app_v2);
    let t = tick(&d).await;
    assert_eq!(t["triggered"], 1, "{t}");
    let deps = d.deployments(id).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["source"], "auto-image");
    let reason = deps[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&app_image)
            && reason.contains(&app_v1[..19])
            && reason.contains(&app_v2[..19]),
        "{reason}"
    );
    assert_eq!(deps[0]["target_digests"][&app_image], app_v2.as_str());
    assert_eq!(digests(&d, id).await[&app_image], app_v2.as_str());
    assert_eq!(
        tick(&d).await["triggered"],
        0,
        "the same move never deploys twice"
    );

    // A new service is recorded without a deploy; a removed one drops out.
    let db = reg.push("db", "16", "database");
    let grown = format!(
        "services:\n  web:\n    image: {app_image}\n  worker:\n    image: {multi_image}\n  db:\n    image: {}/db:16\n",
        reg.addr
    );
    push_compose(&d, &work, id, &token, &grown);
    let t = tick(&d).await;
    assert_eq!(project(&t, id)["outcome"], "recorded", "{t}");
    assert_eq!(
        digests(&d, id).await[format!("{}/db:16", reg.addr)],
        db.as_str()
    );
    let shrunk = format!("services:\n  web:\n    image: {app_image}\n");
    push_compose(&d, &work, id, &token, &shrunk);
    tick(&d).await;
    assert_eq!(digests(&d, id).await, json!({app_image.clone(): app_v2}));
    // (The compose pushes were auto-push triggers: they coalesced into the
    // queued deployment.) From here the deployment list must not move.
    let snapshot = |deps: &[Value]| {
        deps.iter()
            .map(|d| (d["id"].clone(), d["trigger_count"].clone()))
            .collect::<Vec<_>>()
    };
    let before = snapshot(&d.deployments(id).await);

    // The registry goes away: lookups fail, digests stay, nothing deploys;
    // after a restart the next tick compares correctly.
    reg.stop();
    let t = tick(&d).await;
    assert_eq!(
        (t["lookup_failures"].as_i64(), t["triggered"].as_i64()),
        (Some(1), Some(0)),
        "{t}"
    );
    assert_eq!(digests(&d, id).await, json!({app_image.clone(): app_v2}));
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert!(
        status["registries"][&reg.addr]["last_error"].is_string(),
        "{}",
        status["registries"]
    );
    reg.restart();
    assert_eq!(project(&tick(&d).await, id)["outcome"], "unchanged");
    assert_eq!(
        snapshot(&d.deployments(id).await),
        before,
        "no registry failure ever deploys"
    );
    let app_v3 = reg.push("app", "1", "version three");
    assert_eq!(tick(&d).await["triggered"], 1);
    assert_eq!(digests(&d, id).await[&app_image], app_v3.as_str());

    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(status["image_trigger"]["enabled"], true);
    assert!(
        status["registries"][&reg.addr]["manifest_heads"]
            .as_u64()
            .unwrap()
            >= 8
    );
    d.stop();
}

#[tokio::test]
async fn external_sources_size_limit_and_missing_files() {
    let dir = temp_dir("image-sources");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let digest = reg.push("api", "2", "api");
    let d = Daemon::start(&dir);

    // An external repository: read with a depth-1 fetch into a temp dir.
    let bare = dir.join("ext.git");
    bare_with_commit(&bare);
    let work = dir.join("ext-work");
    git(
        &dir,
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(
        work.join("deploy.yml"),
        format!("services:\n  api:\n    image: {}/api:2\n", reg.addr),
    )
    .unwrap();
    std::fs::write(
        work.join("huge.yml"),
        format!(
            "services:\n  api:\n    image: x:1\n{}",
            "#".repeat(1024 * 1024 + 10)
        ),
    )
    .unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "compose"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let external = |name: &str, file: &str| {
        json!({"name": name, "project_type": "compose", "git_source": "external", "git_url": format!("file://{}", bare.display()),
               "compose_file_path": file, "expose_service": "api", "expose_port": 80, "auto_deploy_enabled": true})
    };
    let ok = d.create_project(external("ext", "deploy.yml")).await;
    let huge = d.create_project(external("huge", "huge.yml")).await;
    let missing = d.create_project(external("missing", "nope.yml")).await;

    let t = tick(&d).await;
    assert_eq!(project(&t, ok)["outcome"], "recorded", "{t}");
    assert_eq!(
        digests(&d, ok).await,
        json!({format!("{}/api:2", reg.addr): digest})
    );
    let err = project(&t, huge)["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("files over 1048576 bytes are not read"),
        "{err}"
    );
    assert_eq!(project(&t, missing)["outcome"], "no_compose_file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "temporary fetch directories are removed"
    );
    d.stop();
}

#[tokio::test]
async fn authenticated_tls_registry_and_the_startup_probe() {
    let dir = temp_dir("image-auth");
    let tls = make_tls(&dir.join("tls"));
    let reg = TestRegistry::start(
        &dir.join("registry"),
        Some(&tls),
        Some(("deployer", "s3cret-registry-pw")),
    );
    let digest = reg.push("private/app", "1", "private");
    let ca = tls.ca.to_str().unwrap().to_string();
    let compose = format!("services:\n  web:\n    image: {}/private/app:1\n", reg.addr);

    let setup = |d: &Daemon| {
        let d_url = d.url.clone();
        let compose = compose.clone();
        async move {
            let http = reqwest::Client::new();
            let p: Value = http.post(format!("{d_url}/api/projects")).bearer_auth(common::daemon::ADMIN)
                .json(&json!({"name": "web", "project_type": "compose", "expose_service": "web", "expose_port": 80}))
                .send().await.unwrap().json().await.unwrap();
            (
                p["id"].as_i64().unwrap(),
                p["push_token"].as_str().unwrap().to_string(),
                compose,
            )
        }
    };

    // REGISTRY_ADDR with the right credentials, trusting the test CA.
    let d = Daemon::start_with(
        &dir.join("good"),
        &[],
        &[
            ("REGISTRY_ADDR", reg.addr.as_str()),
            ("REGISTRY_USER", "deployer"),
            ("REGISTRY_PASSWORD", "s3cret-registry-pw"),
            ("AUTODEPLOY_REGISTRY_CA", ca.as_str()),
        ],
    );
    let (id, token, compose_text) = setup(&d).await;
    push_compose(&d, &dir.join("w1"), id, &token, &compose_text);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(
        status["image_trigger"]["enabled"], true,
        "the probe got 401: reachable"
    );
    tick(&d).await;
    assert_eq!(
        digests(&d, id).await,
        json!({format!("{}/private/app:1", reg.addr): digest})
    );
    d.stop();

    // The same host's credentials from a docker config file instead.
    let config = dir.join("docker-config.json");
    let auth = base64_encode("deployer:s3cret-registry-pw");
    std::fs::write(
        &config,
        json!({"auths": {format!("https://{}", reg.addr): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let d = Daemon::start_with(
        &dir.join("config"),
        &[],
        &[
            ("AUTODEPLOY_DOCKER_CONFIG", config.to_str().unwrap()),
            ("AUTODEPLOY_REGISTRY_CA", ca.as_str()),
        ],
    );
    let (id, token, compose_text) = setup(&d).await;
    push_compose(&d, &dir.join("w2"), id, &token, &compose_text);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    tick(&d).await;
    assert_eq!(
        digests(&d, id).await,
        json!({format!("{}/private/app:1", reg.addr): digest})
    );
    d.stop();

    // A wrong password: an error that names the problem, never the password.
    let d = Daemon::start_with(
        &dir.join("bad"),
        &[],
        &[
            ("REGISTRY_ADDR", reg.addr.as_str()),
            ("REGISTRY_USER", "deployer"),
            ("REGISTRY_PASSWORD", "PLANTED-wrong-registry-pw"),
            ("AUTODEPLOY_REGISTRY_CA", ca.as_str()),
        ],
    );
    let (id, token, compose_text) = setup(&d).await;
    push_compose(&d, &dir.join("w3"), id, &token, &compose_text);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    let status = d.ok(Method::GET, "/api/status", None).await;
    let last_error = status["registries"][&reg.addr]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last_error.contains("refused the credentials"),
        "{last_error}"
    );
    assert_eq!(digests(&d, id).await, json!({}));
    let log = d.log();
    d.stop();
    for text in [t.to_string(), status.to_string(), log] {
        assert!(
            !text.contains("PLANTED-wrong-registry-pw") && !text.contains("s3cret-registry-pw"),
            "a registry password leaked"
        );
    }

    // The probe: refused and HTTP 500 turn the image trigger off, and say
    // why; the git trigger and the API carry on.
    let refused_port = common::git::free_port();
    let five_hundred = common::http_500_server();
    for (name, addr, wanted) in [
        (
            "refused",
            format!("127.0.0.1:{refused_port}"),
            "unreachable",
        ),
        ("500", format!("127.0.0.1:{five_hundred}"), "HTTP 500"),
    ] {
        let d = Daemon::start_with(
            &dir.join(format!("probe-{name}")),
            &[],
            &[("REGISTRY_ADDR", addr.as_str())],
        );
        common::wait_until(
            "the start-up probe turns the image trigger off",
            std::time::Duration::from_secs(120),
            || async {
                d.ok(Method::GET, "/api/status", None).await["image_trigger"]["enabled"] == false
            },
        )
        .await;
        let status = d.ok(Method::GET, "/api/status", None).await;
        assert_eq!(
            status["image_trigger"]["enabled"], false,
            "{name}: {status}"
        );
        assert!(
            status["image_trigger"]["reason"]
                .as_str()
                .unwrap()
                .contains(wanted),
            "{name}: {status}"
        );
        let (code, v) = d.admin(Method::POST, "/api/ticks/image-watch", None).await;
        assert_eq!(code.as_u16(), 409, "{v}");
        assert_eq!(
            d.ok(Method::POST, "/api/ticks/git-poll", None).await["paused"],
            false
        );
        d.stop();
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_reused_and_a_429_backs_the_registry_off() {
    use common::fake_registry::{DIGEST, start};
    let dir = temp_dir("image-bearer");
    let (bearer, bearer_counts) = start(false).await;
    let (limited, limited_counts) = start(true).await;
    let d = Daemon::start(&dir);
    let (id, token) = d.shop().await;
    let (a, b, c) = (
        format!("127.0.0.1:{bearer}/pub/app:1"),
        format!("127.0.0.1:{bearer}/pub/other:1"),
        format!("127.0.0.1:{limited}/busy/app:1"),
    );
    let compose =
        format!("services:\n  a:\n    image: {a}\n  b:\n    image: {b}\n  c:\n    image: {c}\n");
    push_compose(&d, &dir.join("work"), id, &token, &compose);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;

    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(bearer_counts.tokens(), 2, "one token per repository scope");
    assert_eq!(limited_counts.heads(), 1);
    assert_eq!(
        digests(&d, id).await,
        json!({a.clone(): DIGEST, b.clone(): DIGEST})
    );

    // The next tick reuses both tokens, and leaves the busy registry alone
    // as its Retry-After asked.
    let t = tick(&d).await;
    assert_eq!(
        (t["triggered"].as_i64(), t["lookup_failures"].as_i64()),
        (Some(0), Some(1)),
        "{t}"
    );
    assert_eq!(bearer_counts.tokens(), 2, "tokens are reused while valid");
    assert_eq!(limited_counts.heads(), 1, "no request during the backoff");
    let status = d.ok(Method::GET, "/api/status", None).await;
    let busy = &status["registries"][format!("127.0.0.1:{limited}")];
    assert!(
        busy["backed_off_for_seconds"].as_u64().unwrap() > 60,
        "{busy}"
    );
    assert!(
        busy["last_error"].as_str().unwrap().contains("backing off"),
        "{busy}"
    );
    assert!(
        d.deployments(id).await.is_empty(),
        "a registry failure never deploys"
    );
    d.stop();
}

#[tokio::test]
async fn a_move_that_fails_before_the_node_counts_as_failed_and_is_retried() {
    let dir = temp_dir("image-watch-failed");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let v1 = reg.push("app", "1", "version one");
    let d = Daemon::start(&dir);
    let image = format!("{}/app:1", reg.addr);
    // No expose fields: the policy refuses to deploy this compose project.
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "shop", "project_type": "compose"})),
        )
        .await;
    let (id, token) = (
        p["id"].as_i64().unwrap(),
        p["push_token"].as_str().unwrap().to_string(),
    );
    push_compose(
        &d,
        &dir.join("work"),
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
    assert_eq!(project(&tick(&d).await, id)["outcome"], "recorded");

    let v2 = reg.push("app", "1", "version two");
    for repeats in 1..=2 {
        let t = tick(&d).await;
        assert_eq!(
            (t["triggered"].as_i64(), t["failed"].as_i64()),
            (Some(0), Some(1)),
            "{t}"
        );
        assert_eq!(project(&t, id)["outcome"], "failed", "{t}");
        assert_eq!(
            digests(&d, id).await,
            json!({image.clone(): v1.clone()}),
            "the refused move is not recorded"
        );
        // (A git poll tick may reconcile the push meanwhile: look at the
        // image trigger's deployments only.)
        let deps: Vec<Value> = d
            .deployments(id)
            .await
            .into_iter()
            .filter(|dep| dep["source"] == "auto-image")
            .collect();
        assert_eq!(deps.len(), 1, "{deps:?}");
        assert_eq!(deps[0]["repeat_count"], repeats);
    }
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"expose_service": "web", "expose_port": 80})),
    )
    .await;
    let t = tick(&d).await;
    assert_eq!(
        (t["triggered"].as_i64(), t["failed"].as_i64()),
        (Some(1), Some(0)),
        "{t}"
    );
    assert_eq!(digests(&d, id).await, json!({image.clone(): v2}));
    d.stop();
}

/// A compose project on the fake registry, its compose file pushed and
/// auto-deploy on; returns its id and push token.
async fn compose_project(d: &Daemon, work: &Path, compose: &str) -> (i64, String) {
    let (id, token) = d.shop().await;
    push_compose(d, work, id, &token, compose);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    (id, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reference_is_an_error_for_that_image_and_the_others_keep_their_digests() {
    use common::fake_registry::{DIGEST, start};
    let dir = temp_dir("image-bad-ref");
    let (port, _) = start(false).await;
    let d = Daemon::start(&dir);
    let (good, other) = (
        format!("127.0.0.1:{port}/pub/app:1"),
        format!("127.0.0.1:{port}/pub/other:1"),
    );
    let work = dir.join("work");
    let (id, token) = compose_project(
        &d,
        &work,
        &format!("services:\n  a:\n    image: {good}\n  b:\n    image: {other}\n"),
    )
    .await;
    let t = tick(&d).await;
    assert_eq!(project(&t, id)["outcome"], "recorded", "{t}");
    let seeded = json!({good.clone(): DIGEST, other.clone(): DIGEST});
    assert_eq!(digests(&d, id).await, seeded);

    // References no registry could hold, beside the good ones.
    let (upper, bad_digest) = ("Shop/Web:1", "app@sha256:nothex");
    let compose = format!(
        "services:\n  a:\n    image: {good}\n  b:\n    image: {other}\n  c:\n    image: {upper}\n  d:\n    image: \"{bad_digest}\"\n"
    );
    push_compose(&d, &work, id, &token, &compose);
    let t = tick(&d).await;
    let me = project(&t, id);
    assert_ne!(me["outcome"], "error", "{me}");
    for bad in [upper, bad_digest] {
        let why = me["image_errors"][bad].as_str().unwrap_or_default();
        assert!(
            why.contains("invalid") && why.contains("image reference"),
            "a clear error for {bad}: {me}"
        );
    }
    assert!(
        me["image_errors"].get(&good).is_none() && me["image_errors"].get(&other).is_none(),
        "{me}"
    );
    assert_eq!(
        digests(&d, id).await,
        seeded,
        "the good images keep their digests; the bad ones are not recorded"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_image_lookup_is_capped_not_only_each_request() {
    use common::fake_registry::start_slow;
    let dir = temp_dir("image-lookup-cap");
    // Each answer takes 1 s, within the 3 s per-request timeout; the token
    // flow makes three requests (HEAD, token, HEAD), over the 2 s cap.
    let (port, counts) = start_slow(false, Duration::from_secs(1)).await;
    let d = Daemon::start_with(
        &dir,
        &[],
        &[
            ("AUTODEPLOY_REGISTRY_TIMEOUT_SECONDS", "3"),
            ("AUTODEPLOY_IMAGE_LOOKUP_TIMEOUT_SECONDS", "2"),
        ],
    );
    let image = format!("127.0.0.1:{port}/slow/app:1");
    let (id, _) = compose_project(
        &d,
        &dir.join("work"),
        &format!("services:\n  a:\n    image: {image}\n"),
    )
    .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    let why = project(&t, id)["image_errors"][&image]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("did not finish within 2s"), "{t}");
    assert!(counts.heads() >= 1, "the registry was asked");
    assert_eq!(digests(&d, id).await, json!({}), "nothing recorded");
    d.stop();
}
