//! The registry promises users rely on, against a real docker-registry:
//! digests are read with HEAD only (counted in the registry's own access
//! log), the bearer-token flow works against `auth: token` and a token
//! service that checks credentials, scope and service, and plain HTTP stays
//! limited to loopback and `AUTODEPLOY_INSECURE_REGISTRIES`, with
//! credentials never sent over it to any other host.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::netns::{OUTSIDE_IP, run_in_private_netns};
use common::registry::{Options, TestRegistry, TokenAuth, make_tls_for};
use common::token_issuer::{TokenIssuer, account, grant};
use reqwest::Method;
use serde_json::{Value, json};

async fn tick(d: &Daemon) -> Value {
    d.ok(Method::POST, "/api/ticks/image-watch", None).await
}

async fn digests(d: &Daemon, id: i64) -> Value {
    d.ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await["last_tracked_image_digests"]
        .clone()
}

async fn last_error(d: &Daemon, registry: &str) -> String {
    let status = d.ok(Method::GET, "/api/status", None).await;
    status["registries"][registry]["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error recorded for {registry}: {status}"))
        .to_string()
}

/// The daemon's log line for a failed lookup of `image` (the host's
/// `last_error` is overwritten by its next lookup).
fn lookup_failure(d: &Daemon, image: &str) -> String {
    d.log()
        .lines()
        .rfind(|l| l.contains("digest lookup failed") && l.contains(image))
        .unwrap_or_else(|| panic!("no failed lookup of {image} in the log"))
        .to_string()
}

/// A docker config.json giving `user:password` for `host`.
fn docker_config(path: &Path, host: &str, user: &str, password: &str) -> String {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(path, json!({"auths": {host: {"auth": auth}}}).to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn digests_are_read_with_head_only_as_the_registry_access_log_shows() {
    let dir = temp_dir("promise-head");
    let reg = TestRegistry::start_logged(&dir.join("registry"));
    let app_v1 = reg.push("app", "1", "app one");
    let multi = reg.push_multi_arch("multi", "1", "multi one");
    let (app, multi_image) = (
        format!("{}/app:1", reg.addr),
        format!("{}/multi:1", reg.addr),
    );
    let before = reg.manifest_requests();
    assert_eq!(before.0, 0, "no HEAD before the daemon runs: {before:?}");

    let d = Daemon::start(&dir.join("daemon"));
    // Two projects share `app`: it is still looked up once per tick.
    let shop = d
        .watch_images(&dir, "shop", &[app.clone(), multi_image.clone()])
        .await;
    let blog = d
        .watch_images(&dir, "blog", std::slice::from_ref(&app))
        .await;

    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(
        digests(&d, shop).await,
        json!({app.clone(): app_v1, multi_image.clone(): multi})
    );
    let app_v2 = reg.push("app", "1", "app two");
    let t = tick(&d).await;
    assert_eq!(t["triggered"], 2, "both projects redeploy: {t}");
    assert_eq!(digests(&d, blog).await, json!({app.clone(): app_v2}));
    let t = tick(&d).await;
    assert_eq!(t["triggered"], 0, "{t}");

    // The registry logs a request just after answering it.
    common::wait_until_blocking("six HEADs are logged", Duration::from_secs(30), || {
        reg.manifest_requests().0 - before.0 >= 6
    });
    let (heads, gets) = reg.manifest_requests();
    let (heads, gets) = (heads - before.0, gets - before.1);
    assert_eq!(gets, 0, "a manifest GET counts against pull limits");
    assert_eq!(
        heads,
        6,
        "one HEAD per distinct image per tick (2 images x 3 ticks): {:?}",
        reg.requests()
    );
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(
        status["registries"][&reg.addr]["manifest_heads"], 6,
        "{status}"
    );
    d.stop();
}

// Two workers: the token issuer runs in this process and must answer while
// the test waits on skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_a_real_token_service_honour_credentials_scope_and_service() {
    let dir = temp_dir("promise-token");
    let issuer = TokenIssuer::start(
        "127.0.0.1",
        &dir.join("issuer"),
        vec![
            account("pusher", "pusher-pw", vec![grant("", &["pull", "push"])]),
            account(
                "deployer",
                "s3cret-deployer-pw",
                vec![grant("private/", &["pull"])],
            ),
        ],
        vec![grant("pub/", &["pull"])],
    )
    .await;
    let reg = TestRegistry::start_with(
        &dir.join("registry"),
        Options {
            token: Some(TokenAuth {
                issuer: &issuer,
                push_creds: "pusher:pusher-pw",
            }),
            access_log: true,
            ..Options::default()
        },
    );
    let image = |name: &str| format!("{}/{name}:1", reg.addr);
    let app_v1 = reg.push("private/app", "1", "private app");
    let other = reg.push("private/other", "1", "private other");
    reg.push("secret/app", "1", "secret");
    let public = reg.push("pub/app", "1", "public");
    let pushed = issuer.requests().len();
    let from_daemon = |user: Option<&str>| {
        issuer.requests()[pushed..]
            .iter()
            .filter(|r| r.user.as_deref() == user)
            .cloned()
            .collect::<Vec<_>>()
    };

    // REGISTRY_ADDR's credentials: one token per repository, each asking
    // for exactly that repository's pull, for the registry's service.
    let d = Daemon::start_with(
        &dir.join("deployer"),
        &[],
        &[
            ("REGISTRY_ADDR", reg.addr.as_str()),
            ("REGISTRY_USER", "deployer"),
            ("REGISTRY_PASSWORD", "s3cret-deployer-pw"),
        ],
    );
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(
        status["image_trigger"]["enabled"], true,
        "the probe's 401 means reachable"
    );
    let images = [
        image("private/app"),
        image("private/other"),
        image("secret/app"),
    ];
    let id = d.watch_images(&dir, "private", &images).await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(
        digests(&d, id).await,
        json!({images[0].clone(): app_v1, images[1].clone(): other}),
        "a token for one repository is never used for another"
    );
    let asked = from_daemon(Some("deployer"));
    let mut scopes: Vec<_> = asked.iter().map(|r| r.scopes.join(" ")).collect();
    scopes.sort();
    assert_eq!(
        scopes,
        [
            "repository:private/app:pull",
            "repository:private/other:pull",
            "repository:secret/app:pull"
        ],
        "{asked:?}"
    );
    for r in &asked {
        assert_eq!(r.service.as_deref(), Some(issuer.service.as_str()), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let secret = asked
        .iter()
        .find(|r| r.scopes[0].contains("secret"))
        .unwrap();
    assert!(
        secret.granted.is_empty(),
        "the issuer grants only what the account may: {secret:?}"
    );
    let failure = lookup_failure(&d, &images[2]);
    assert!(
        failure.contains("refused the credentials (HTTP 401)"),
        "a token without the scope is refused by the registry: {failure}"
    );

    // Tokens are reused while valid; a move behind the tag still deploys.
    let app_v2 = reg.push("private/app", "1", "private app two");
    let pushed_again = issuer.requests().len();
    let t = tick(&d).await;
    assert_eq!(t["triggered"], 1, "{t}");
    assert_eq!(digests(&d, id).await[&images[0]], app_v2.as_str());
    let renewed: Vec<_> = issuer.requests()[pushed_again..]
        .iter()
        .filter(|r| r.user.as_deref() == Some("deployer") && !r.scopes[0].contains("secret"))
        .cloned()
        .collect();
    assert!(renewed.is_empty(), "valid tokens are reused: {renewed:?}");
    let log = d.log();
    d.stop();
    assert!(
        !log.contains("s3cret-deployer-pw"),
        "the password leaked into the log"
    );

    // Anonymous: the issuer's anonymous grants, nothing more.
    let d = Daemon::start(&dir.join("anonymous"));
    let images = [image("pub/app"), image("private/app")];
    let id = d.watch_images(&dir, "anonymous", &images).await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(digests(&d, id).await, json!({images[0].clone(): public}));
    let anonymous = from_daemon(None);
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");
    assert!(
        anonymous.iter().all(|r| r.authorization.is_none()),
        "{anonymous:?}"
    );
    d.stop();

    // A wrong password: the issuer refuses it; the error says so and
    // never quotes the password.
    let d = Daemon::start_with(
        &dir.join("wrong"),
        &[],
        &[
            ("REGISTRY_ADDR", reg.addr.as_str()),
            ("REGISTRY_USER", "deployer"),
            ("REGISTRY_PASSWORD", "PLANTED-wrong-pw"),
        ],
    );
    let id = d.watch_images(&dir, "wrong", &[image("private/app")]).await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(digests(&d, id).await, json!({}));
    let refused: Vec<_> = from_daemon(Some("deployer"))
        .into_iter()
        .filter(|r| r.status == 401)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let error = last_error(&d, &reg.addr).await;
    assert!(
        error.contains("refused the credentials (HTTP 401)"),
        "{error}"
    );
    let status = d.ok(Method::GET, "/api/status", None).await;
    let log = d.log();
    d.stop();
    for text in [t.to_string(), status.to_string(), log] {
        assert!(
            !text.contains("PLANTED-wrong-pw"),
            "a registry password leaked"
        );
    }

    let (_, gets) = reg.manifest_requests();
    assert_eq!(gets, 0, "the token flow never makes a manifest GET either");
}

#[test]
fn plain_http_only_on_loopback_or_when_listed_and_never_with_credentials_elsewhere() {
    run_in_private_netns(|| {
        // Workers start on this thread, so they share its namespace; two of
        // them keep the token issuer answering while the test waits on skopeo.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(plain_http_in_a_private_network())
    });
}

/// Runs inside a private network namespace where `OUTSIDE_IP` is a local
/// address outside 127.0.0.0/8.
async fn plain_http_in_a_private_network() {
    let dir = temp_dir("promise-plain-http");

    // A plain-HTTP registry with basic auth at an address off loopback.
    let reg = TestRegistry::start_with(
        &dir.join("plain"),
        Options {
            ip: Some(OUTSIDE_IP),
            user: Some(("deployer", "s3cret-plain-pw")),
            access_log: true,
            ..Options::default()
        },
    );
    let digest = reg.push("app", "1", "plain");
    let pushed = reg.requests().len();
    let config = docker_config(
        &dir.join("plain.json"),
        &reg.addr,
        "deployer",
        "s3cret-plain-pw",
    );
    let image = format!("{}/app:1", reg.addr);

    // Not listed: HTTPS only, so nothing reaches the registry at all.
    let d = Daemon::start_with(
        &dir.join("unlisted"),
        &[],
        &[("AUTODEPLOY_DOCKER_CONFIG", config.as_str())],
    );
    let id = d
        .watch_images(&dir, "unlisted", std::slice::from_ref(&image))
        .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(digests(&d, id).await, json!({}));
    let error = last_error(&d, &reg.addr).await;
    assert!(
        error.contains("AUTODEPLOY_INSECURE_REGISTRIES"),
        "the error says why: {error}"
    );
    d.stop();
    // The same registry as REGISTRY_ADDR: the start-up probe is refused too.
    let d = Daemon::start_with(
        &dir.join("unlisted-addr"),
        &[],
        &[
            ("REGISTRY_ADDR", reg.addr.as_str()),
            ("REGISTRY_USER", "deployer"),
            ("REGISTRY_PASSWORD", "s3cret-plain-pw"),
        ],
    );
    common::wait_until(
        "the probe has answered",
        Duration::from_secs(60),
        || async {
            d.ok(Method::GET, "/api/status", None).await["image_trigger"]["enabled"] == false
        },
    )
    .await;
    let status = d.ok(Method::GET, "/api/status", None).await;
    assert!(
        status["image_trigger"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("AUTODEPLOY_INSECURE_REGISTRIES"),
        "{status}"
    );
    d.stop();
    assert_eq!(
        reg.requests()[pushed..],
        [] as [String; 0],
        "no plain-HTTP request (and so no credential) reached an unlisted registry"
    );

    // Listed: plain HTTP is tried, with the credentials (the operator's call).
    let d = Daemon::start_with(
        &dir.join("listed"),
        &[],
        &[
            ("AUTODEPLOY_DOCKER_CONFIG", config.as_str()),
            ("AUTODEPLOY_INSECURE_REGISTRIES", OUTSIDE_IP),
        ],
    );
    let id = d
        .watch_images(&dir, "listed", std::slice::from_ref(&image))
        .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(digests(&d, id).await, json!({image.clone(): digest}));
    common::wait_until_blocking(
        "the listed registry logged a HEAD",
        Duration::from_secs(30),
        || {
            reg.requests()[pushed..]
                .iter()
                .any(|r| r.starts_with("HEAD "))
        },
    );
    d.stop();

    // An HTTPS registry whose token service is plain HTTP off loopback: the
    // password must not go there.
    let tls = make_tls_for(&dir.join("tls"), &[OUTSIDE_IP]);
    let issuer = TokenIssuer::start(
        OUTSIDE_IP,
        &dir.join("issuer"),
        vec![
            account("pusher", "pusher-pw", vec![grant("", &["pull", "push"])]),
            account("deployer", "s3cret-token-pw", vec![grant("", &["pull"])]),
        ],
        vec![],
    )
    .await;
    let secure = TestRegistry::start_with(
        &dir.join("secure"),
        Options {
            ip: Some(OUTSIDE_IP),
            tls: Some(&tls),
            token: Some(TokenAuth {
                issuer: &issuer,
                push_creds: "pusher:pusher-pw",
            }),
            ..Options::default()
        },
    );
    let secure_digest = secure.push("app", "1", "secure");
    let secure_image = format!("{}/app:1", secure.addr);
    let config = docker_config(
        &dir.join("secure.json"),
        &secure.addr,
        "deployer",
        "s3cret-token-pw",
    );
    let ca = tls.ca.to_str().unwrap().to_string();
    let deployer_requests = || {
        issuer
            .requests()
            .into_iter()
            .filter(|r| r.user.as_deref() == Some("deployer"))
            .count()
    };

    let d = Daemon::start_with(
        &dir.join("plain-realm"),
        &[],
        &[
            ("AUTODEPLOY_DOCKER_CONFIG", config.as_str()),
            ("AUTODEPLOY_REGISTRY_CA", ca.as_str()),
        ],
    );
    let id = d
        .watch_images(&dir, "plain-realm", std::slice::from_ref(&secure_image))
        .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 1, "{t}");
    assert_eq!(
        deployer_requests(),
        0,
        "credentials went to a plain-HTTP token service off loopback"
    );
    let error = last_error(&d, &secure.addr).await;
    assert!(error.contains("is not HTTPS"), "{error}");
    assert!(!error.contains("s3cret-token-pw"), "{error}");
    assert_eq!(digests(&d, id).await, json!({}));
    d.stop();

    // Listing the host allows plain HTTP to it, the token service included.
    let d = Daemon::start_with(
        &dir.join("listed-realm"),
        &[],
        &[
            ("AUTODEPLOY_DOCKER_CONFIG", config.as_str()),
            ("AUTODEPLOY_REGISTRY_CA", ca.as_str()),
            ("AUTODEPLOY_INSECURE_REGISTRIES", OUTSIDE_IP),
        ],
    );
    let id = d
        .watch_images(&dir, "listed-realm", std::slice::from_ref(&secure_image))
        .await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(
        digests(&d, id).await,
        json!({secure_image.clone(): secure_digest})
    );
    assert_eq!(deployer_requests(), 1);
    d.stop();
}
