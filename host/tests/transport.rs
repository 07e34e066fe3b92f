//! Verified git transport against real servers on loopback: nginx serving
//! `git http-backend` over TLS with a certificate from a throw-away CA, and
//! sshd. No credential reaches a server whose certificate fails; credentials
//! never travel over plain http:// to a remote host; passwords in git_url are
//! refused without being repeated; pinned SSH host keys are enforced.

mod common;

use std::path::Path;

use autodeploy::store::{SqlStore, Store};
use common::daemon::{Daemon, temp_dir};
use common::git::{Nginx, TestCa, bare_with_commit, nginx_git_tls, sshd, test_ca, whoami};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const USER: &str = "deploy";
const TOKEN: &str = "TLS-SECRET-TOKEN-5f1c9e";

/// A TLS git server with one repository, `r.git`; returns its head.
fn tls_server(dir: &Path) -> (TestCa, Nginx, String) {
    let ca = test_ca(&dir.join("ca"));
    let repos = dir.join("repos");
    let sha = bare_with_commit(&repos.join("r.git"));
    let nginx = nginx_git_tls(&dir.join("nginx"), &repos, USER, TOKEN, &ca);
    (ca, nginx, sha)
}

fn external(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080,
        "git_source": "external",
        "git_url": url,
        "auto_deploy_enabled": true,
        "credentials": {"kind": "https", "username": USER, "token": TOKEN},
    })
}

async fn quiet_daemon(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut env = env.to_vec();
    env.push(("AUTODEPLOY_GIT_TIMEOUT_SECONDS", "10"));
    let d = Daemon::start_with(dir, &[], &env);
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 3600})),
    )
    .await;
    d
}

async fn poll(d: &Daemon) -> Value {
    d.ok(Method::POST, "/api/ticks/git-poll", None).await
}

fn result(tick: &Value, name: &str) -> Value {
    tick["projects"]
        .as_array()
        .expect("a tick lists its projects")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not in the tick: {tick}"))
}

async fn events(d: &Daemon) -> String {
    d.ok(Method::GET, "/api/events?limit=1000", None)
        .await
        .to_string()
}

#[tokio::test]
async fn an_https_remote_whose_certificate_fails_gets_no_token() {
    let dir = temp_dir("transport-untrusted");
    let (_ca, nginx, _sha) = tls_server(&dir);
    let d = quiet_daemon(&dir.join("data"), &[]).await;
    let url = format!("https://127.0.0.1:{}/git/r.git", nginx.port);
    let id = d.create_project(external("untrusted", &url)).await;

    let tick = poll(&d).await;
    let r = result(&tick, "untrusted");
    assert_eq!(r["outcome"], "error", "{tick}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("certificate") && error.contains("AUTODEPLOY_GIT_CA"),
        "the error says why and what to do: {error}"
    );
    assert!(d.deployments(id).await.is_empty(), "nothing deploys");
    // The handshake failed before any HTTP request: nginx logged none, so
    // no Authorization header was ever sent.
    assert_eq!(
        nginx.requests(),
        "",
        "the untrusted server received a request"
    );
    for (what, text) in [
        ("tick", tick.to_string()),
        ("events", events(&d).await),
        ("log", d.log()),
    ] {
        assert!(!text.contains(TOKEN), "the token shows in the {what}");
    }
}

#[tokio::test]
async fn autodeploy_git_ca_verifies_an_https_remote_and_its_name() {
    let dir = temp_dir("transport-ca");
    let (ca, nginx, sha) = tls_server(&dir);
    let d = quiet_daemon(
        &dir.join("data"),
        &[("AUTODEPLOY_GIT_CA", ca.ca_pem.to_str().unwrap())],
    )
    .await;
    let good = d
        .create_project(external(
            "trusted",
            &format!("https://127.0.0.1:{}/git/r.git", nginx.port),
        ))
        .await;
    let by_name = d
        .create_project(external(
            "by-name",
            &format!("https://localhost:{}/git/r.git", nginx.port),
        ))
        .await;
    // Same CA, but the certificate does not name 127.0.0.2.
    let wrong_name = d
        .create_project(external(
            "wrong-name",
            &format!("https://127.0.0.2:{}/git/r.git", nginx.port),
        ))
        .await;

    let tick = poll(&d).await;
    for (name, id) in [("trusted", good), ("by-name", by_name)] {
        assert_eq!(result(&tick, name)["outcome"], "triggered", "{tick}");
        let deps = d.deployments(id).await;
        assert_eq!(deps.len(), 1, "{name}");
        assert_eq!(deps[0]["target_commit"], sha.as_str(), "{name}");
    }
    let r = result(&tick, "wrong-name");
    assert_eq!(r["outcome"], "error", "{tick}");
    assert!(r["error"].as_str().unwrap().contains("certificate"), "{r}");
    assert!(d.deployments(wrong_name).await.is_empty());
    let requests = nginx.requests();
    assert!(
        requests.contains(&format!("user={USER}")),
        "the trusted server was reached with the credential: {requests}"
    );
    assert!(
        !requests.contains("127.0.0.2"),
        "nothing reached the wrong name: {requests}"
    );
    assert!(!d.log().contains(TOKEN));
}

#[tokio::test]
async fn insecure_git_hosts_still_have_their_certificates_verified_and_are_logged_and_shown() {
    let dir = temp_dir("transport-insecure");
    let (_ca, nginx, _) = tls_server(&dir);
    let d = quiet_daemon(
        &dir.join("data"),
        &[("AUTODEPLOY_INSECURE_GIT_HOSTS", " 127.0.0.1 ,git.example")],
    )
    .await;
    let listed = d
        .create_project(external(
            "listed",
            &format!("https://127.0.0.1:{}/git/r.git", nginx.port),
        ))
        .await;
    // The same server by a name that is not listed.
    let unlisted = d
        .create_project(external(
            "unlisted",
            &format!("https://localhost:{}/git/r.git", nginx.port),
        ))
        .await;

    let tick = poll(&d).await;
    // Listing a host never exempts its TLS certificate from verification.
    let r = result(&tick, "listed");
    assert!(
        r["error"].as_str().unwrap_or("").contains("certificate"),
        "{r}"
    );
    assert!(d.deployments(listed).await.is_empty());
    let r = result(&tick, "unlisted");
    assert!(
        r["error"].as_str().unwrap_or("").contains("certificate"),
        "{r}"
    );
    assert!(d.deployments(unlisted).await.is_empty());

    let status = d.ok(Method::GET, "/api/status", None).await;
    assert_eq!(
        status["git_transport"]["insecure_hosts"],
        json!(["127.0.0.1", "git.example"]),
        "{status}"
    );
    let log = d.log();
    assert!(
        log.contains("AUTODEPLOY_INSECURE_GIT_HOSTS") && log.contains("127.0.0.1,git.example"),
        "the exemption is logged at start: {log}"
    );

    // A listed host may also get a credential over plain http://.
    let (status, body) = d
        .admin(
            Method::POST,
            "/api/projects",
            Some(external("plain-listed", "http://git.example/r.git")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_credential_on_plain_http_is_refused_unless_the_host_is_loopback_or_listed() {
    let dir = temp_dir("transport-plain-http");
    let data = dir.join("data");
    let d = quiet_daemon(&data, &[("AUTODEPLOY_INSECURE_GIT_HOSTS", "git.invalid")]).await;
    for url in [
        "http://git.example.com/r.git",
        "http://10.0.0.7:3000/r.git",
        "HTTP://Git.Example.com./r.git",
    ] {
        let (status, body) = d
            .admin(Method::POST, "/api/projects", Some(external("remote", url)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("http://") && error.contains("https://"),
            "{url}: {error}"
        );
    }
    // Without a credential plain http is fine; loopback may get one.
    let (status, body) = d
        .admin(
            Method::POST,
            "/api/projects",
            Some(
                json!({"name": "anon", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external",
                        "git_url": "http://git.example.com/r.git"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (name, url) in [
        ("v4", "http://127.0.0.1:9/r.git"),
        ("v6", "http://[::1]:9/r.git"),
        ("name", "http://localhost:9/r.git"),
    ] {
        let (status, body) = d
            .admin(Method::POST, "/api/projects", Some(external(name, url)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {body}");
    }
    // A project holding a credential cannot be moved to a plain remote.
    let v4 = d.ok(Method::GET, "/api/projects", None).await;
    let v4 = v4
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "v4")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, body) = d
        .admin(
            Method::PATCH,
            &format!("/api/projects/{v4}"),
            Some(json!({"git_url": "http://git.example.com/r.git"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Listed: accepted by the API.
    let listed = d
        .create_project(external("listed", "http://git.invalid/r.git"))
        .await;
    d.stop();

    // Without the listing, the lookup itself refuses before connecting.
    let d = quiet_daemon(&data, &[]).await;
    let tick = poll(&d).await;
    let r = result(&tick, "listed");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("AUTODEPLOY_INSECURE_GIT_HOSTS") && error.contains("https://"),
        "{r}"
    );
    assert!(d.deployments(listed).await.is_empty());
    assert!(!d.log().contains(TOKEN) && !tick.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_password_in_git_url_is_refused_and_never_repeated_or_stored() {
    let dir = temp_dir("transport-password");
    let data = dir.join("data");
    let d = quiet_daemon(&data, &[]).await;
    let secrets = [
        ("https://u:PW-ONE-a81@git.example/r.git", "PW-ONE-a81"),
        ("https://u@x:PW-TWO-b72@git.example/r.git", "PW-TWO-b72"),
        ("http://:PW-THREE-c63@git.example/r.git", "PW-THREE-c63"),
        ("ssh://git:PW-FOUR-d54@git.example/r.git", "PW-FOUR-d54"),
        ("git:PW-FIVE-e45@git.example:r.git", "PW-FIVE-e45"),
        ("https://u:PW-SIX-f36@git.example:port/r.git", "PW-SIX-f36"),
    ];
    for (url, pw) in secrets {
        let (status, body) = d
            .admin(
                Method::POST,
                "/api/projects",
                Some(json!({"name": "leaky", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080,
                            "git_source": "external", "git_url": url})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("password"),
            "{body}"
        );
        assert!(!body.to_string().contains(pw), "echoed: {body}");
    }
    let id = d
        .create_project(json!({"name": "ok", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080,
                               "git_source": "external", "git_url": "https://u@git.example/r.git"}))
        .await;
    for (url, pw) in secrets {
        let (status, body) = d
            .admin(
                Method::PATCH,
                &format!("/api/projects/{id}"),
                Some(json!({"git_url": url})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(!body.to_string().contains(pw), "echoed: {body}");
    }
    let seen = format!(
        "{}{}{}",
        events(&d).await,
        d.ok(Method::GET, "/api/projects", None).await,
        d.log()
    );
    d.stop();
    let mut db = Vec::new();
    for f in ["autodeploy.db", "autodeploy.db-wal"] {
        db.extend(std::fs::read(data.join(f)).unwrap_or_default());
    }
    let db = String::from_utf8_lossy(&db);
    for (_, pw) in secrets {
        assert!(!seen.contains(pw), "{pw} reached the events, API or log");
        assert!(!db.contains(pw), "{pw} reached the database");
    }

    // A row written before these checks (by an older daemon) is refused at
    // lookup, and its password is neither shown nor logged.
    let legacy = "PW-LEGACY-7a0";
    {
        let store = SqlStore::connect(&format!(
            "sqlite://{}",
            data.join("autodeploy.db").display()
        ))
        .await
        .unwrap();
        let mut p = store.project(id).await.unwrap();
        p.fields.git_url = Some(format!("https://u:{legacy}@git.invalid/r.git"));
        p.fields.auto_deploy_enabled = true;
        store.update_project(id, &p.fields).await.unwrap();
    }
    let d = quiet_daemon(&data, &[]).await;
    let tick = poll(&d).await;
    let r = result(&tick, "ok");
    assert!(
        r["error"].as_str().unwrap_or("").contains("password"),
        "{r}"
    );
    let shown = d
        .ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await;
    for (what, text) in [
        ("tick", tick.to_string()),
        ("project", shown.to_string()),
        ("events", events(&d).await),
        ("log", d.log()),
    ] {
        assert!(!text.contains(legacy), "the password shows in the {what}");
    }
    assert!(d.deployments(id).await.is_empty());
}

/// `[127.0.0.1]:PORT TYPE KEY` for the public key file `pub_file`.
fn known_hosts_line(port: u16, pub_file: &Path) -> String {
    let public = std::fs::read_to_string(pub_file).unwrap();
    let mut parts = public.split_whitespace();
    let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
    format!("[127.0.0.1]:{port} {kind} {key}")
}

#[tokio::test]
async fn pinned_ssh_host_keys_are_enforced_and_a_mismatch_deploys_nothing() {
    let dir = temp_dir("transport-ssh");
    let repos = dir.join("repos");
    let sha = bare_with_commit(&repos.join("ssh.git"));
    let (sshd, key) = sshd(&dir.join("sshd"));
    // Another key: what a server in the middle would present.
    let other = dir.join("other_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let right = known_hosts_line(sshd.port, &dir.join("sshd/host_key.pub"));
    let wrong = known_hosts_line(sshd.port, &other.with_extension("pub"));

    let d = quiet_daemon(&dir.join("data"), &[]).await;
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        whoami(),
        sshd.port,
        repos.join("ssh.git").display()
    );
    let project = |name: &str, pins: Option<&str>| {
        let mut body = json!({"name": name, "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "git_source": "external",
            "git_url": url, "auto_deploy_enabled": true,
            "credentials": {"kind": "ssh", "private_key": key}});
        if let Some(p) = pins {
            body["ssh_known_hosts"] = json!(p);
        }
        body
    };
    let pinned_text = format!("# the server's key\n{right}\n");
    let pinned = d
        .create_project(project("pinned", Some(&pinned_text)))
        .await;
    let mismatch = d.create_project(project("mismatch", Some(&wrong))).await;
    let unpinned = d.create_project(project("unpinned", None)).await;
    let shown = d
        .ok(Method::GET, &format!("/api/projects/{pinned}"), None)
        .await;
    assert_eq!(shown["ssh_known_hosts"], pinned_text.as_str(), "{shown}");

    let tick = poll(&d).await;
    for (name, id) in [("pinned", pinned), ("unpinned", unpinned)] {
        assert_eq!(result(&tick, name)["outcome"], "triggered", "{tick}");
        assert_eq!(
            d.deployments(id).await[0]["target_commit"],
            sha.as_str(),
            "{name}"
        );
    }
    let r = result(&tick, "mismatch");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("host key mismatch") && error.contains("SHA256:"),
        "{r}"
    );
    assert!(
        d.deployments(mismatch).await.is_empty(),
        "a mismatch deploys nothing"
    );
    let ev = events(&d).await;
    assert!(ev.contains("host key mismatch"), "recorded: {ev}");

    // Fixing the pin lets it through; removing it accepts any key again.
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{mismatch}"),
        Some(json!({"ssh_known_hosts": format!("{wrong}\n{right}")})),
    )
    .await;
    let tick = poll(&d).await;
    assert_eq!(result(&tick, "mismatch")["outcome"], "triggered", "{tick}");
    let cleared = d
        .ok(
            Method::PATCH,
            &format!("/api/projects/{mismatch}"),
            Some(json!({"ssh_known_hosts": null})),
        )
        .await;
    assert!(cleared["ssh_known_hosts"].is_null(), "{cleared}");

    // Bad pins are refused with the reason.
    let elsewhere = format!("other.example {}", right.split_once(' ').unwrap().1);
    for (pins, body_url, expected) in [
        ("127.0.0.1 ssh-ed25519", url.as_str(), "line 1"),
        ("#c\n[127.0.0.1]:1 ssh-ed25519 %%%", url.as_str(), "line 2"),
        (right.as_str(), "https://git.example/r.git", "ssh://"),
        (
            elsewhere.as_str(),
            url.as_str(),
            "no line for the git_url's host",
        ),
    ] {
        let mut body = project("bad-pins", Some(pins));
        body["git_url"] = json!(body_url);
        if !body_url.starts_with("ssh") {
            body.as_object_mut().unwrap().remove("credentials");
        }
        let (status, answer) = d.admin(Method::POST, "/api/projects", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{pins}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{pins}: {answer}"
        );
    }
}

/// A deploy agent, killed when dropped.
/// Ended with its process group when dropped.
struct Agent(#[allow(dead_code)] common::reap::Proc);

#[tokio::test]
async fn the_agent_enforces_the_pins_on_its_checkout() {
    let dir = temp_dir("transport-agent-pins");
    let repos = dir.join("repos");
    bare_with_commit(&repos.join("ssh.git"));
    let (sshd, key) = sshd(&dir.join("sshd"));
    let other = dir.join("other_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let wrong = known_hosts_line(sshd.port, &other.with_extension("pub"));

    let d = quiet_daemon(&dir.join("data"), &[]).await;
    let id = d
        .create_project(json!({"name": "pinned-compose", "project_type": "compose",
            "git_source": "external", "expose_service": "web", "expose_port": 8080,
            "git_url": format!("ssh://{}@127.0.0.1:{}{}", whoami(), sshd.port,
                               repos.join("ssh.git").display()),
            "credentials": {"kind": "ssh", "private_key": key},
            "ssh_known_hosts": wrong}))
        .await;
    let node = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "edge"})))
        .await;
    let token = node["token"].as_str().unwrap().to_string();
    let work = dir.join("agent");
    std::fs::create_dir_all(&work).unwrap();
    let _agent = Agent(
        common::reap::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_autodeploy"))
                .args(["agent", "--control-plane", &d.url, "--token", &token])
                .args(["--heartbeat-seconds", "1"])
                .arg("--work-dir")
                .arg(&work)
                .env_remove("AUTODEPLOY_GIT_CA")
                .env_remove("AUTODEPLOY_INSECURE_GIT_HOSTS")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("agent.log")).unwrap()),
        )
        .expect("start the agent"),
    );
    d.ok(
        Method::POST,
        &format!("/api/projects/{id}/deployments"),
        None,
    )
    .await;
    let d = &d;
    common::wait_until(
        "the agent reports the deployment finished",
        std::time::Duration::from_secs(60),
        || async move {
            let status = d.deployments(id).await[0]["status"].clone();
            matches!(status.as_str(), Some("failed" | "succeeded"))
        },
    )
    .await;
    let last = d.deployments(id).await[0].clone();
    assert_eq!(last["status"], "failed", "{last}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("host key mismatch") && error.contains("nothing was sent"),
        "{last}"
    );
    assert!(
        !work
            .join("projects")
            .join(id.to_string())
            .join("file.txt")
            .exists(),
        "nothing was checked out"
    );
}
