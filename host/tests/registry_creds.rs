//! Registry credentials as docker resolves them, against a real
//! docker-registry behind `auth: token` and a token service that wants
//! basic credentials: docker credential helpers (`credHelpers` per host,
//! `credsStore` as the default) run as real programs on the daemon's PATH,
//! identity (refresh) tokens from a helper and from `auths`, helper
//! failures and timeouts as per-image errors, secrets kept out of logs and
//! answers, and per-project credentials (write-only, scoped to their
//! project).

mod common;

use std::path::{Path, PathBuf};

use common::daemon::{Daemon, temp_dir};
use common::registry::{Options, TestRegistry, TokenAuth};
use common::token_issuer::{TokenIssuer, account, grant};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The password of the account only helpers and projects know.
const PASSWORD: &str = "PLANTED-registry-pw-5a1c";
/// What a broken helper prints on stdout and stderr.
const HELPER_NOISE: &str = "PLANTED-helper-output-9e3b";

/// A token service with one pushing account and one pulling account
/// (`puller` / [`PASSWORD`], pull on `private/`), and a registry behind it.
async fn token_registry(dir: &Path) -> (TokenIssuer, TestRegistry) {
    let issuer = TokenIssuer::start(
        "127.0.0.1",
        &dir.join("issuer"),
        vec![
            account("pusher", "pusher-pw", vec![grant("", &["pull", "push"])]),
            account("puller", PASSWORD, vec![grant("private/", &["pull"])]),
        ],
        vec![],
    )
    .await;
    let reg = TestRegistry::start_with(
        &dir.join("registry"),
        Options {
            token: Some(TokenAuth {
                issuer: &issuer,
                push_creds: "pusher:pusher-pw",
            }),
            ..Options::default()
        },
    );
    (issuer, reg)
}

/// A folder for the daemon's PATH holding `docker-credential-NAME` for each
/// name: a shell script that reads the server on stdin, appends it to
/// `calls-NAME`, and acts on the `mode` file: `ok` (the default) prints
/// `answers/SERVER` or says it holds nothing; `fail` prints a planted
/// secret on stdout and stderr and exits 3; `badjson` prints a planted
/// secret that is not JSON; `hang` sleeps (in a child) past any timeout;
/// `slow` answers after a second.
struct Helpers {
    dir: PathBuf,
}

impl Helpers {
    fn new(dir: &Path, names: &[&str]) -> Helpers {
        let bin = dir.join("helpers");
        std::fs::create_dir_all(bin.join("answers")).unwrap();
        for name in names {
            let path = bin.join(format!("docker-credential-{name}"));
            let d = bin.display();
            let script = format!(
                r#"#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "{d}/calls-{name}"
mode=$(cat "{d}/mode" 2>/dev/null || echo ok)
case "$mode" in
  fail) echo "{HELPER_NOISE}"; echo "{HELPER_NOISE}" >&2; exit 3 ;;
  badjson) echo "not json {HELPER_NOISE}"; exit 0 ;;
  hang) sleep 60; exit 0 ;;
  slow) sleep 1 ;;
esac
f="{d}/answers/$(printf '%s' "$server" | tr -c 'a-zA-Z0-9.' '_')"
if [ -f "$f" ]; then cat "$f"; exit 0; fi
echo "credentials not found in native keychain"
exit 1
"#
            );
            std::fs::write(&path, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Helpers { dir: bin }
    }

    /// What every helper answers for `server`.
    fn answer(&self, server: &str, user: &str, secret: &str) {
        let file: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(
            self.dir.join("answers").join(file),
            json!({"ServerURL": server, "Username": user, "Secret": secret}).to_string(),
        )
        .unwrap();
    }

    fn mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).unwrap();
    }

    /// The servers helper `name` was asked about, in order.
    fn calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("calls-{name}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `PATH` with the helpers first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

fn write_config(dir: &Path, config: Value) -> String {
    let path = dir.join("docker-config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs the CLI against the daemon with `stdin`; its stdout (it must succeed).
/// A daemon in `dir/name` reading the docker config `config`, with `env`
/// besides.
fn daemon_reading(dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
    let mut all = vec![("AUTODEPLOY_DOCKER_CONFIG", config)];
    all.extend_from_slice(env);
    Daemon::start_with(&dir.join(name), &[], &all)
}

async fn tick(d: &Daemon) -> Value {
    d.ok(Method::POST, "/api/ticks/image-watch", None).await
}

/// The tick's entry for project `id`.
fn project_in(t: &Value, id: i64) -> Value {
    t["projects"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["project_id"] == id))
        .unwrap_or_else(|| panic!("project {id} not in the tick: {t}"))
        .clone()
}

async fn digests(d: &Daemon, id: i64) -> Value {
    d.ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await["last_tracked_image_digests"]
        .clone()
}

/// Everything a person or a log collector could see: the log, the status
/// and events APIs, and what the test collected from other answers.
async fn assert_never_shown(d: &Daemon, seen: &[&Value], secrets: &[&str]) {
    let status = d.ok(Method::GET, "/api/status", None).await;
    let events = d.ok(Method::GET, "/api/events", None).await;
    let log = d.log();
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} reached the daemon's log");
        for v in seen.iter().copied().chain([&status, &events]) {
            assert!(
                !v.to_string().contains(secret),
                "{secret} in an answer: {v}"
            );
        }
    }
}

// Two workers: the token issuer runs in this process and must answer while
// the test waits on skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_reachable_through_a_credential_helper_is_watched_and_deployed() {
    let dir = temp_dir("creds-helper");
    let (issuer, reg) = token_registry(&dir).await;
    let image = format!("{}/private/app:1", reg.addr);
    let v1 = reg.push("private/app", "1", "app one");
    let helpers = Helpers::new(&dir, &["per-host", "store"]);
    helpers.answer(&reg.addr, "puller", PASSWORD);
    // The per-host helper is asked for this registry; the store (which
    // holds nothing here) for every other host.
    let config = write_config(
        &dir,
        json!({"credHelpers": {reg.addr.clone(): "per-host"}, "credsStore": "store"}),
    );
    let path = helpers.path();
    let d = daemon_reading(&dir, "daemon", &config, &[("PATH", path.as_str())]);
    let node = d.add_node("n1").await;
    let id = d
        .watch_images(&dir, "shop", std::slice::from_ref(&image))
        .await;
    let pushed = issuer.requests().len();

    let first = tick(&d).await;
    assert_eq!(first["lookup_failures"], 0, "{first}");
    assert_eq!(digests(&d, id).await, json!({image.clone(): v1}));
    assert_eq!(
        helpers.calls("per-host"),
        vec![reg.addr.clone()],
        "the per-host helper is asked with the registry host on stdin"
    );
    assert!(
        helpers.calls("store").is_empty(),
        "credHelpers wins over credsStore for its host"
    );
    let from_daemon = issuer.requests()[pushed..].to_vec();
    assert!(
        !from_daemon.is_empty()
            && from_daemon
                .iter()
                .all(|r| r.user.as_deref() == Some("puller") && r.status == 200),
        "the token service got the helper's credentials: {from_daemon:?}"
    );

    // A new digest pushed with skopeo queues an auto-image deployment with
    // it, which a node claims over HTTP.
    let v2 = reg.push("private/app", "1", "app two");
    assert_ne!(v1, v2);
    let second = tick(&d).await;
    assert_eq!(second["triggered"], 1, "{second}");
    let (status, claim) = d.agent_claim(&node).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["project"]["id"], id, "{claim}");
    // The git poll's first look at the new project may have queued a
    // deployment already (aligning to main); the image trigger then joins
    // it, so it is among the sources rather than necessarily the first.
    let sources = claim["deployment"]["sources"].as_array().unwrap();
    assert!(sources.contains(&json!("auto-image")), "{claim}");
    assert_eq!(
        claim["deployment"]["target_digests"],
        json!({image.clone(): v2}),
        "{claim}"
    );
    // The helper's answer (and the token it got) are reused: one run for
    // two ticks.
    assert_eq!(helpers.calls("per-host").len(), 1);
    assert_never_shown(&d, &[&first, &second, &claim], &[PASSWORD]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_one_registry_looked_up_at_once_run_its_helper_once() {
    let dir = temp_dir("creds-one-run");
    let (_issuer, reg) = token_registry(&dir).await;
    let images: Vec<String> = (1..=4)
        .map(|i| format!("{}/private/app:{i}", reg.addr))
        .collect();
    let mut want = serde_json::Map::new();
    for (i, image) in images.iter().enumerate() {
        let tag = (i + 1).to_string();
        want.insert(
            image.clone(),
            json!(reg.push("private/app", &tag, &format!("app {tag}"))),
        );
    }
    let helpers = Helpers::new(&dir, &["store"]);
    helpers.answer(&reg.addr, "puller", PASSWORD);
    // A second per run: lookups that overlap would each start their own.
    helpers.mode("slow");
    let config = write_config(&dir, json!({"credsStore": "store"}));
    let path = helpers.path();
    let d = daemon_reading(&dir, "daemon", &config, &[("PATH", path.as_str())]);
    let id = d.watch_images(&dir, "shop", &images).await;
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(digests(&d, id).await, Value::Object(want));
    assert_eq!(
        helpers.calls("store"),
        vec![reg.addr.clone()],
        "one helper run answers the four images' lookups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creds_store_is_the_default_and_identity_tokens_take_the_refresh_grant() {
    let dir = temp_dir("creds-store");
    let (issuer, reg) = token_registry(&dir).await;
    let image = format!("{}/private/app:1", reg.addr);
    let v1 = reg.push("private/app", "1", "app one");
    const REFRESH: &str = "PLANTED-refresh-token-77d0";
    issuer.add_refresh_token(REFRESH, "puller");
    let helpers = Helpers::new(&dir, &["store"]);
    // `<token>`: the secret is an identity token, not a password.
    helpers.answer(&reg.addr, "<token>", REFRESH);
    let config = write_config(&dir, json!({"credsStore": "store"}));
    let path = helpers.path();
    let d = daemon_reading(&dir, "daemon", &config, &[("PATH", path.as_str())]);
    let id = d
        .watch_images(&dir, "shop", std::slice::from_ref(&image))
        .await;
    let pushed = issuer.requests().len();
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(digests(&d, id).await, json!({image.clone(): v1.clone()}));
    assert_eq!(helpers.calls("store"), vec![reg.addr.clone()]);
    let grants = issuer.requests()[pushed..].to_vec();
    assert!(
        !grants.is_empty()
            && grants.iter().all(|r| r.method == "POST"
                && r.grant_type.as_deref() == Some("refresh_token")
                && r.client_id.as_deref() == Some("autodeploy")
                && r.authorization.is_none()
                && r.status == 200
                && r.scopes == ["repository:private/app:pull"]),
        "the identity token went in a refresh-token form grant: {grants:?}"
    );
    assert_never_shown(&d, &[&t], &[REFRESH]).await;
    drop(d);

    // The same from `auths`: an `identitytoken` entry, no helper at all.
    let config = dir.join("auths.json");
    std::fs::write(
        &config,
        json!({"auths": {reg.addr.clone(): {"identitytoken": REFRESH}}}).to_string(),
    )
    .unwrap();
    let d = daemon_reading(&dir, "daemon-auths", config.to_str().unwrap(), &[]);
    let id = d
        .watch_images(&dir, "blog", std::slice::from_ref(&image))
        .await;
    let pushed = issuer.requests().len();
    let t = tick(&d).await;
    assert_eq!(t["lookup_failures"], 0, "{t}");
    assert_eq!(digests(&d, id).await, json!({image.clone(): v1}));
    let grants = issuer.requests()[pushed..].to_vec();
    assert!(
        !grants.is_empty()
            && grants
                .iter()
                .all(|r| r.grant_type.as_deref() == Some("refresh_token") && r.status == 200),
        "{grants:?}"
    );
    // A refresh token the service does not know is refused: an error for
    // the image, naming the host.
    drop(d);
    std::fs::write(
        &config,
        json!({"auths": {reg.addr.clone(): {"identitytoken": "PLANTED-unknown-refresh"}}})
            .to_string(),
    )
    .unwrap();
    let d = daemon_reading(&dir, "daemon-unknown", config.to_str().unwrap(), &[]);
    let id = d
        .watch_images(&dir, "docs", std::slice::from_ref(&image))
        .await;
    let t = tick(&d).await;
    let error = project_in(&t, id)["image_errors"][&image]
        .as_str()
        .unwrap_or_else(|| panic!("no error for {image}: {t}"))
        .to_string();
    assert!(
        error.contains(&reg.addr) && error.contains("refused the credentials"),
        "{error}"
    );
    assert_never_shown(&d, &[&t], &["PLANTED-unknown-refresh"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_helper_is_an_error_for_its_image_and_the_daemon_keeps_going() {
    let dir = temp_dir("creds-fail");
    let (_issuer, reg) = token_registry(&dir).await;
    // A second token registry whose helper is not installed at all.
    let (_issuer2, missing_reg) = token_registry(&dir.join("second")).await;
    // And an anonymous registry no helper is involved with.
    let open = TestRegistry::start(&dir.join("open"), None, None);
    let image = format!("{}/private/app:1", reg.addr);
    let missing_image = format!("{}/private/app:1", missing_reg.addr);
    let open_image = format!("{}/pub/app:1", open.addr);
    let v1 = reg.push("private/app", "1", "app one");
    missing_reg.push("private/app", "1", "app one");
    let open_v1 = open.push("pub/app", "1", "public");
    let helpers = Helpers::new(&dir, &["flaky"]);
    helpers.answer(&reg.addr, "puller", PASSWORD);
    let config = write_config(
        &dir,
        json!({"credHelpers": {reg.addr.clone(): "flaky", missing_reg.addr.clone(): "absent"}}),
    );
    let path = helpers.path();
    let d = daemon_reading(
        &dir,
        "daemon",
        &config,
        &[
            ("PATH", path.as_str()),
            ("AUTODEPLOY_REGISTRY_HELPER_TIMEOUT_SECONDS", "1"),
        ],
    );
    let id = d
        .watch_images(
            &dir,
            "shop",
            &[image.clone(), missing_image.clone(), open_image.clone()],
        )
        .await;

    let mut seen = Vec::new();
    let expectations = [
        ("fail", "failed (exit status: 3)"),
        ("badjson", "answered something that is not its JSON"),
        ("hang", "did not answer within 1s and was killed"),
    ];
    for (mode, expected) in expectations {
        helpers.mode(mode);
        let t = tick(&d).await;
        let p = project_in(&t, id);
        let error = p["image_errors"][&image]
            .as_str()
            .unwrap_or_else(|| panic!("{mode}: no error for {image}: {t}"));
        assert!(
            error.contains("docker-credential-flaky") && error.contains(&reg.addr),
            "{mode}: the error names the helper and the host: {error}"
        );
        assert!(error.contains(expected), "{mode}: {error}");
        let missing = p["image_errors"][&missing_image].as_str().unwrap_or("");
        assert!(
            missing.contains("docker-credential-absent")
                && missing.contains(&missing_reg.addr)
                && missing.contains("not on PATH"),
            "{missing}"
        );
        // The other image is looked up as ever.
        assert!(p["image_errors"].get(&open_image).is_none(), "{t}");
        assert_eq!(digests(&d, id).await[&open_image], json!(open_v1));
        seen.push(t);
    }
    // Failures are not cached: a helper that works again is used at once.
    helpers.mode("ok");
    let t = tick(&d).await;
    assert!(
        project_in(&t, id)["image_errors"].get(&image).is_none(),
        "{t}"
    );
    assert_eq!(digests(&d, id).await[&image], json!(v1));
    assert_eq!(
        helpers.calls("flaky").len(),
        4,
        "one run per tick until one succeeded"
    );
    seen.push(t);
    let seen: Vec<&Value> = seen.iter().collect();
    assert_never_shown(&d, &seen, &[PASSWORD, HELPER_NOISE]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_project_credentials_are_write_only_and_answer_for_their_project_only() {
    let dir = temp_dir("creds-project");
    let (issuer, reg) = token_registry(&dir).await;
    let image = format!("{}/private/app:1", reg.addr);
    let v1 = reg.push("private/app", "1", "app one");
    // The daemon's own credential for the host is wrong: the project's own
    // takes precedence for its images.
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("puller:PLANTED-wrong-pw")
    };
    let config = write_config(&dir, json!({"auths": {reg.addr.clone(): {"auth": auth}}}));
    let d = daemon_reading(&dir, "daemon", &config, &[]);
    let shop = d
        .watch_images(&dir, "shop", std::slice::from_ref(&image))
        .await;
    let blog = d
        .watch_images(&dir, "blog", std::slice::from_ref(&image))
        .await;
    let creds = format!("/api/projects/{shop}/registry-credentials");

    // Bad input is refused, naming the field, never echoing the password.
    for (body, expected) in [
        (
            json!({"registry": "not a host/", "username": "u", "password": "PLANTED-bad-1"}),
            "registry must be a registry host",
        ),
        (
            json!({"registry": reg.addr, "username": "a:b", "password": "PLANTED-bad-2"}),
            "username",
        ),
        (
            json!({"registry": reg.addr, "username": "u", "password": ""}),
            "password",
        ),
    ] {
        let (status, answer) = d.admin(Method::PUT, &creds, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer.to_string().contains(expected), "{answer}");
        assert!(!answer.to_string().contains("PLANTED-bad"), "{answer}");
    }
    let (status, _) = d
        .admin(
            Method::PUT,
            "/api/projects/9999/registry-credentials",
            Some(json!({"registry": reg.addr, "username": "u", "password": "p"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let set = d
        .ok(
            Method::PUT,
            &creds,
            Some(json!({"registry": format!("https://{}/", reg.addr), "username": "puller", "password": PASSWORD})),
        )
        .await;
    let other = d
        .ok(
            Method::PUT,
            &creds,
            Some(json!({"registry": "ghcr.io", "username": "someone", "password": "PLANTED-ghcr-pw"})),
        )
        .await;
    // The CLI sets one too, the password read from stdin.
    let cli = d.cli_ok(
        &[
            "project",
            "registry-login",
            &blog.to_string(),
            "docker.io",
            "-u",
            "bot",
        ],
        "PLANTED-hub-pw\n",
    );
    assert!(!cli.contains("PLANTED-hub-pw"), "{cli}");
    assert!(cli.contains("\"docker.io\""), "{cli}");
    let blog_creds = d.cli_ok(&["project", "registry-credentials", &blog.to_string()], "");
    assert!(
        blog_creds.contains("bot") && !blog_creds.contains("PLANTED-hub-pw"),
        "{blog_creds}"
    );
    let listed = d.ok(Method::GET, &creds, None).await;
    assert_eq!(
        listed,
        json!([
            {"registry": reg.addr.clone(), "username": "puller"},
            {"registry": "ghcr.io", "username": "someone"},
        ]),
        "host and username only, by host"
    );
    let project = d
        .ok(Method::GET, &format!("/api/projects/{shop}"), None)
        .await;

    let pushed = issuer.requests().len();
    let t = tick(&d).await;
    // Two lookups of the one image: with the project's credential, and
    // with the daemon's (for the project without one).
    assert_eq!(t["lookups"], 2, "{t}");
    assert_eq!(digests(&d, shop).await, json!({image.clone(): v1}));
    let error = project_in(&t, blog)["image_errors"][&image]
        .as_str()
        .unwrap_or_else(|| panic!("the other project got the first one's access: {t}"))
        .to_string();
    assert!(error.contains("refused the credentials"), "{error}");
    assert_eq!(digests(&d, blog).await, json!({}));
    let users: Vec<Option<String>> = issuer.requests()[pushed..]
        .iter()
        .map(|r| r.user.clone())
        .collect();
    assert!(
        users.contains(&Some("puller".into())),
        "the project's credential reached the token service: {users:?}"
    );

    // A second tick: each lookup reuses its own token; still none for blog.
    let t2 = tick(&d).await;
    assert!(
        project_in(&t2, blog)["image_errors"].get(&image).is_some(),
        "{t2}"
    );
    assert!(
        project_in(&t2, shop)["image_errors"].get(&image).is_none(),
        "{t2}"
    );

    // Deleting it leaves the project with the daemon's (wrong) credential.
    let (status, _) = d
        .admin(Method::DELETE, &format!("{creds}/{}", reg.addr), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = d
        .admin(Method::DELETE, &format!("{creds}/{}", reg.addr), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        d.ok(Method::GET, &creds, None).await,
        json!([{"registry": "ghcr.io", "username": "someone"}])
    );
    let t3 = tick(&d).await;
    assert!(
        project_in(&t3, shop)["image_errors"].get(&image).is_some(),
        "{t3}"
    );
    // Each set and the one delete that found something left an event for
    // the project, naming the registry (the password is checked below).
    let events = d
        .ok(Method::GET, &format!("/api/events?project_id={shop}"), None)
        .await;
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("registry-credential."))
        })
        .map(|e| (e["kind"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    let deleted = kinds
        .iter()
        .filter(|(k, m)| *k == "registry-credential.deleted" && m.contains(&reg.addr))
        .count();
    let set_ghcr = kinds
        .iter()
        .any(|(k, m)| *k == "registry-credential.set" && m.contains("ghcr.io"));
    assert!(deleted == 1 && set_ghcr, "{kinds:?}");

    assert_never_shown(
        &d,
        &[&set, &other, &listed, &project, &t, &t2, &t3],
        &[
            PASSWORD,
            "PLANTED-ghcr-pw",
            "PLANTED-wrong-pw",
            "PLANTED-hub-pw",
        ],
    )
    .await;
}
