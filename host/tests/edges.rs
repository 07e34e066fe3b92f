//! The daemon's edges against the real binary: the HTTP listener's timeouts
//! and connection cap, the push size limit, the data dir's permissions and
//! the policy marker's atomic replacement.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::git;
use common::wait_until;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn start(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    Daemon::start_with(dir, &[], env)
}

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

fn set_soft_nofile(soft: u64) {
    let (_, hard) = nofile();
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct passed in.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn addr(d: &Daemon) -> std::net::SocketAddr {
    d.url.trim_start_matches("http://").parse().unwrap()
}

/// A connection that sent part of a request head and stops there.
fn half_open(d: &Daemon) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr(d), Duration::from_secs(5))
        .expect("connect to the daemon");
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// Reads until the server closes the connection or `limit` passes; returns
/// what arrived and whether the server closed it.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn half_open_connections_leave_the_api_and_git_answering() {
    let (_, hard) = nofile();
    assert!(
        hard >= 4096,
        "this test needs a hard open-file limit of at least 4096 (ulimit -Hn), found {hard}"
    );
    let dir = temp_dir("edges-half-open");
    // The daemon starts with the soft limit most logins and services get
    // (1024), fewer descriptors than the connections below.
    set_soft_nofile(1024);
    let d = start(&dir, &[]);
    set_soft_nofile(hard);
    let id = d
        .create_project(json!({"name": "edge", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;

    let held: Vec<TcpStream> = (0..1100).map(|_| half_open(&d)).collect();

    // Well inside the header timeout (10 s by default): the answers do not
    // wait for the stalled connections to be closed.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let status = http
        .get(format!("{}/api/status", d.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /api/status answers beside 1,100 half-open connections");
    assert_eq!(status.status(), StatusCode::OK);
    let refs = http
        .get(format!(
            "{}/git/{id}.git/info/refs?service=git-upload-pack",
            d.url
        ))
        .basic_auth("x", Some(ADMIN))
        .send()
        .await
        .expect("git info/refs answers beside 1,100 half-open connections");
    assert_eq!(refs.status(), StatusCode::OK);
    assert_eq!(
        refs.headers()["content-type"],
        "application/x-git-upload-pack-advertisement"
    );
    drop(held);
    assert!(d.stop().success());
}

#[tokio::test]
async fn stalled_and_idle_connections_are_closed() {
    let dir = temp_dir("edges-timeouts");
    let d = start(
        &dir,
        &[
            ("AUTODEPLOY_HEADER_TIMEOUT_SECONDS", "1"),
            ("AUTODEPLOY_IDLE_TIMEOUT_SECONDS", "1"),
        ],
    );
    // A request head that never ends.
    let mut s = half_open(&d);
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(15));
    assert!(closed, "a half-open connection outlived the header timeout");

    // A kept-alive connection with nothing more to ask.
    let mut s = TcpStream::connect(addr(&d)).unwrap();
    s.write_all(
        format!("GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(15));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(closed, "an idle keep-alive connection was not closed");

    // A body that stops halfway.
    let mut s = TcpStream::connect(addr(&d)).unwrap();
    s.write_all(
        format!(
            "POST /api/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
        )
        .as_bytes(),
    )
    .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(15));
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"error\""), "{got}");
    assert!(closed, "a stalled body kept its connection");
    assert!(d.stop().success());
}

#[tokio::test]
async fn connections_past_the_cap_get_503_until_slots_free() {
    let dir = temp_dir("edges-cap");
    let d = start(
        &dir,
        &[
            ("AUTODEPLOY_MAX_CONNECTIONS", "20"),
            ("AUTODEPLOY_HEADER_TIMEOUT_SECONDS", "3"),
        ],
    );
    let held: Vec<TcpStream> = (0..20).map(|_| half_open(&d)).collect();
    let mut extra = TcpStream::connect(addr(&d)).unwrap();
    extra
        .write_all(
            format!("GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let (got, closed) = read_until_closed(&mut extra, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(
        got.contains("{\"error\":\"too many open connections"),
        "{got}"
    );
    assert!(closed);
    // The header timeout frees the stalled connections' slots. Until then a
    // client may hear the 503 before it has sent its request.
    let http = reqwest::Client::new();
    wait_until(
        "the API answers again once the stalled connections are closed",
        Duration::from_secs(30),
        || async {
            http.get(format!("{}/api/status", d.url))
                .bearer_auth(ADMIN)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        },
    )
    .await;
    assert!(d.log().contains("connection cap reached"));
    drop(held);
    assert!(d.stop().success());
}

#[tokio::test]
async fn a_client_that_stops_reading_an_answer_is_dropped() {
    let dir = temp_dir("edges-slow-reader");
    let d = start(&dir, &[("AUTODEPLOY_IDLE_TIMEOUT_SECONDS", "2")]);
    let id = d
        .create_project(json!({"name": "fat", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    // A pack far larger than what the sockets on both sides can buffer.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("big.bin"), noise(32 << 20)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "big"]);
    let bare = dir.join(format!("repos/{id}.git"));
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);

    // Ask for the pack, then read nothing.
    let mut body = format!("0032want {sha}\n0000").into_bytes();
    body.extend_from_slice(b"0009done\n");
    let mut s = TcpStream::connect(addr(&d)).unwrap();
    let auth = base64_basic("x", ADMIN);
    s.write_all(
        format!(
            "POST /git/{id}.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\n\
             Content-Type: application/x-git-upload-pack-request\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&body).unwrap();
    wait_until(
        "the daemon drops the connection whose client stopped reading",
        Duration::from_secs(60),
        || async { d.log().contains("the client stopped reading") },
    )
    .await;
    // What was buffered ends early: the connection is closed, not stuck.
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(30));
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(200)]
    );
    assert!(closed, "the connection is closed");
    assert!(
        got.len() < 32 << 20,
        "the whole pack was sent ({} bytes)",
        got.len()
    );
    assert!(d.stop().success());
}

fn base64_basic(user: &str, password: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Bytes that do not compress, so the pack is as large as the file.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn push(work: &Path, url: &str) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .args(["push", url, "main"])
        .current_dir(work)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn a_push_over_the_size_limit_is_refused_and_changes_nothing() {
    let dir = temp_dir("edges-push-limit");
    let d = start(&dir, &[("AUTODEPLOY_MAX_PUSH_BYTES", "300000")]);
    let p = d
        .ok(
            Method::POST,
            "/api/projects",
            Some(json!({"name": "big", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080, "auto_deploy_enabled": true})),
        )
        .await;
    let id = p["id"].as_i64().unwrap();
    let token = p["push_token"].as_str().unwrap();
    let url = format!(
        "http://push:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    let bare = dir.join(format!("repos/{id}.git"));
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("small.txt"), "small").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "small"]);
    push(&work, &url).expect("a small push is accepted");
    let head = git(&bare, &["rev-parse", "refs/heads/main"]);
    let deployments = d.deployments(id).await.len();
    assert_eq!(deployments, 1);

    std::fs::write(work.join("big.bin"), noise(1 << 20)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "big"]);
    let err = push(&work, &url).expect_err("a 1 MiB push over a 300 kB limit");
    // git prints the reason beside the refused branch.
    assert!(
        err.contains("[remote rejected] main -> main (push refused")
            && err.contains("limit of 300000 bytes (AUTODEPLOY_MAX_PUSH_BYTES)"),
        "git should report the refusal and the limit: {err}"
    );
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]),
        head,
        "the refused push moved the branch"
    );
    assert_eq!(
        git(&bare, &["rev-list", "--all", "--count"]),
        "1",
        "the refused push left commits behind"
    );
    assert_eq!(d.deployments(id).await.len(), deployments);

    // Said plainly to a client that declares its size and sends no commands.
    let resp = reqwest::Client::new()
        .post(format!("{}/git/{id}.git/git-receive-pack", d.url))
        .basic_auth("push", Some(token))
        .header("content-type", "application/x-git-receive-pack-request")
        .body(vec![b'0'; 400_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("limit of 300000 bytes") && text.contains("AUTODEPLOY_MAX_PUSH_BYTES"),
        "{text}"
    );

    // The repository still takes pushes under the limit.
    git(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    std::fs::write(work.join("small.txt"), "still small").unwrap();
    git(&work, &["commit", "-q", "-am", "small again"]);
    push(&work, &url).expect("a small push after a refused one");
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]),
        git(&work, &["rev-parse", "HEAD"])
    );
    assert!(d.log().contains("push refused"));
    assert!(d.stop().success());
}

#[tokio::test]
async fn the_data_dir_and_database_are_private() {
    let dir = temp_dir("edges-private");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = start(&dir, &[]);
    let db = dir.join("autodeploy.db");
    assert_eq!(mode(&dir), 0o700, "an existing 0755 data dir is tightened");
    assert_eq!(mode(&db), 0o600);
    // Writes go through the WAL.
    d.create_project(json!({"name": "p", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    for suffix in ["-wal", "-shm"] {
        let f = dir.join(format!("autodeploy.db{suffix}"));
        assert!(f.exists(), "{} exists in WAL mode", f.display());
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert!(
        d.log()
            .contains("data dir was open to other users; tightened to 0700"),
        "{}",
        d.log()
    );
    assert!(d.stop().success());

    // Files left open by an older version are tightened at the next start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = start(&dir, &[]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert!(d.log().contains("database file was open to other users"));
    assert!(d.stop().success());

    // A data dir that does not exist yet is made private, parents too.
    let fresh = dir.join("nested/data");
    let d = start(&dir, &[("AUTODEPLOY_DATA_DIR", fresh.to_str().unwrap())]);
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&dir.join("nested")), 0o700);
    assert_eq!(mode(&fresh.join("autodeploy.db")), 0o600);
    assert_eq!(mode(&fresh.join("secret.key")), 0o600);
    assert!(d.stop().success());
}

#[tokio::test]
async fn a_data_dir_from_before_policies_lived_in_the_database_keeps_its_policy() {
    use sha2::Digest;
    // What an older version left: `policies/active` naming `<sha256>.wasm`,
    // its config beside it.
    let dir = temp_dir("edges-legacy-policy");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let wasm = common::policy_variant("legacy");
    let sha = autodeploy::secrets::hex(&sha2::Sha256::digest(&wasm));
    std::fs::write(policies.join(format!("{sha}.wasm")), &wasm).unwrap();
    std::fs::write(policies.join(format!("{sha}.config")), "kept: yes\n").unwrap();
    std::fs::write(policies.join("active"), &sha).unwrap();

    let d = Daemon::start(&dir);
    let policy = d.ok(Method::GET, "/api/policy", None).await;
    assert_eq!(policy["sha256"], sha.as_str(), "{policy}");
    assert_eq!(policy["config"], "kept: yes\n", "{policy}");
    assert!(d.stop().success());

    // From then on the database holds it: the files no longer matter.
    std::fs::remove_dir_all(&policies).unwrap();
    let d = Daemon::start(&dir);
    let policy = d.ok(Method::GET, "/api/policy", None).await;
    assert_eq!(policy["sha256"], sha.as_str(), "{policy}");
    assert_eq!(policy["config"], "kept: yes\n", "{policy}");
    assert!(d.stop().success());
}
