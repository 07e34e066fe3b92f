//! Hosted repositories over git's smart HTTP protocol, at
//! `/git/{project_id}.git/...`. The daemon checks HTTP basic auth (the
//! project's push token or the admin token as the password; for fetches, a
//! node token while that node runs one of the project's deployments), then hands the
//! request to `git http-backend` as a CGI program: the protocol, including
//! gzip request bodies, is git's own. After a push the tracked branch is
//! compared and, if it moved, the trigger runs before the push returns.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::io::ReaderStream;

use crate::app::App;
use crate::git::{hosted_path, local_head};
use crate::secrets::token_hash;
use crate::store::GitSource;

static MAX_PUSH_BYTES: AtomicU64 = AtomicU64::new(100 << 20);
static BODY_IDLE_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets the largest push accepted (the receive-pack request body, and the
/// pack inside it once inflated) and how long a client may stall while
/// sending a body. Called once at start.
pub fn set_limits(max_push_bytes: u64, body_idle: Duration) {
    MAX_PUSH_BYTES.store(max_push_bytes.max(1), Ordering::Relaxed);
    BODY_IDLE_MS.store(
        body_idle.as_millis().clamp(1, u64::MAX as u128) as u64,
        Ordering::Relaxed,
    );
}

/// The refusal of a push over the limit. When the request's commands can
/// be read (a body that is not gzip-compressed), the answer is a report git
/// understands: the client prints the reason beside each refused branch.
/// Otherwise it is a plain 413.
fn push_refused(limit: u64, head: &[u8], gzipped: bool) -> Response {
    let reason = format!(
        "push refused: it is larger than this server's limit of {limit} bytes \
         (AUTODEPLOY_MAX_PUSH_BYTES); nothing was changed"
    );
    let report = (!gzipped)
        .then(|| push_commands(head))
        .flatten()
        .filter(|(refs, ..)| !refs.is_empty());
    let Some((refs, sideband, report_status)) = report else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, &reason);
    };
    let mut inner = Vec::new();
    if report_status {
        inner.extend(pkt(format!("unpack {reason}\n").as_bytes()));
        for r in &refs {
            inner.extend(pkt(format!("ng {r} {reason}\n").as_bytes()));
        }
        inner.extend_from_slice(b"0000");
    }
    let mut body = Vec::new();
    if sideband {
        body.extend(pkt(format!("\x02{reason}\n").as_bytes()));
        // Band 1 carries the report, in pieces that fit a packet.
        for piece in inner.chunks(65515 - 1) {
            let mut band = vec![1u8];
            band.extend_from_slice(piece);
            body.extend(pkt(&band));
        }
        body.extend_from_slice(b"0000");
    } else {
        body = inner;
    }
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-receive-pack-result"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One pkt-line: four hex digits of length, then the data.
fn pkt(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// The refs a receive-pack request updates, and whether the client asked
/// for side-band-64k and report-status, read from the start of its body.
fn push_commands(head: &[u8]) -> Option<(Vec<String>, bool, bool)> {
    let mut refs = Vec::new();
    let mut caps = String::new();
    let mut rest = head;
    loop {
        let len = usize::from_str_radix(std::str::from_utf8(rest.get(..4)?).ok()?, 16).ok()?;
        if len == 0 {
            break;
        }
        let line = rest.get(4..len)?;
        rest = &rest[len..];
        let (command, capabilities) = match line.iter().position(|b| *b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(c) = capabilities {
            caps = String::from_utf8_lossy(c).into_owned();
        }
        let command = std::str::from_utf8(command).ok()?.trim_end();
        // "<old> <new> <ref>"; a push certificate or shallow line is not one.
        let mut parts = command.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        if old.len() < 40 || new.len() < 40 || !name.starts_with("refs/") {
            return None;
        }
        refs.push(name.to_string());
    }
    let has = |c: &str| caps.split(' ').any(|x| x == c);
    Some((
        refs,
        has("side-band-64k"),
        has("report-status") || has("report-status-v2"),
    ))
}

/// How feeding a request body to git ended.
enum Fed {
    All,
    /// More than the push limit arrived; the rest was drained, not fed.
    /// Holds the body's first bytes (the commands).
    TooLarge(Vec<u8>),
    /// The client stopped sending, or its body failed.
    Broken,
}

/// The body's first bytes kept for the refusal: room for many commands.
const HEAD_KEPT: usize = 64 << 10;

fn keep_head(head: &mut Vec<u8>, chunk: &[u8]) {
    let room = HEAD_KEPT.saturating_sub(head.len());
    head.extend_from_slice(&chunk[..room.min(chunk.len())]);
}

/// Reads and drops what is left of a body, for a bounded time, keeping its
/// first bytes in `head`.
async fn drain<S>(stream: &mut S, head: &mut Vec<u8>, idle: Duration)
where
    S: futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    let all = async {
        while let Some(Ok(chunk)) = stream.next().await {
            keep_head(head, &chunk);
        }
    };
    let _ = tokio::time::timeout(idle.min(Duration::from_secs(10)), all).await;
}

/// Streams `body` into git's stdin. With a `limit`, stops feeding once the
/// body passes it and drains what follows (for a bounded time), so the
/// client hears the refusal rather than a reset.
async fn feed_body(
    body: Body,
    mut stdin: tokio::process::ChildStdin,
    limit: Option<u64>,
    idle: Duration,
) -> Fed {
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let mut head = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => return Fed::All,
            Ok(Some(Err(_))) | Err(_) => return Fed::Broken,
        };
        if limit.is_some() {
            keep_head(&mut head, &chunk);
        }
        total = total.saturating_add(chunk.len() as u64);
        if limit.is_some_and(|limit| total > limit) {
            drop(stdin);
            drain(&mut stream, &mut head, idle).await;
            return Fed::TooLarge(head);
        }
        if stdin.write_all(&chunk).await.is_err() {
            // git stopped reading (it refused the push itself): what it
            // answers says why.
            drain(&mut stream, &mut head, idle).await;
            return Fed::All;
        }
    }
}

/// `git-http-backend` itself, found once through `git --exec-path`. Running
/// it directly, as nginx + fcgiwrap do, saves starting `git` only for it to
/// start the backend: one process start per request, two or three per push.
/// `None` (no such file) runs `git http-backend`.
async fn backend() -> Option<&'static std::path::Path> {
    static BACKEND: tokio::sync::OnceCell<Option<std::path::PathBuf>> =
        tokio::sync::OnceCell::const_new();
    BACKEND
        .get_or_init(|| async {
            let out = Command::new("git")
                .arg("--exec-path")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .await
                .ok()
                .filter(|o| o.status.success())?;
            let dir = String::from_utf8(out.stdout).ok()?;
            let path = std::path::Path::new(dir.trim()).join("git-http-backend");
            path.is_file().then_some(path)
        })
        .await
        .as_deref()
}

/// Stops git and every process it started (they share its process group).
async fn stop_git(child: &mut tokio::process::Child) {
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: sends a signal to the process group this code created.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = child.kill().await;
    }
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn unauthorized(msg: &str) -> Response {
    let mut r = plain(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"autodeploy\""),
    );
    r
}

/// (user, password) from `Authorization: Basic ...`.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

pub async fn serve(
    State(app): State<Arc<App>>,
    Path((repo, rest)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(id) = repo
        .strip_suffix(".git")
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return plain(StatusCode::NOT_FOUND, "no such repository");
    };
    let Some((user, password)) = basic_auth(&headers) else {
        return unauthorized(
            "authentication required: use the project's push token as the password",
        );
    };
    // Pushes take the project's push token (or the admin token). A deploy
    // node's token may fetch, never push, and only while that node runs a
    // deployment of this project: a node sees no other project's code.
    let push = rest == "git-receive-pack"
        || query
            .as_deref()
            .is_some_and(|q| q.contains("service=git-receive-pack"));
    let hash = token_hash(&password);
    let allowed = match app.is_admin(&password).await {
        Ok(true) => true,
        Ok(false) => {
            app.store
                .project_by_push_token_hash(id, &hash)
                .await
                .unwrap_or(false)
                || (!push && node_may_fetch(&app, &hash, id).await)
        }
        Err(_) => false,
    };
    if !allowed {
        return unauthorized("invalid token for this repository");
    }
    let project = match app.store.project(id).await {
        Ok(p) if p.fields.git_source == GitSource::Hosted => p,
        _ => return plain(StatusCode::NOT_FOUND, "no such hosted repository"),
    };
    let path = hosted_path(&app.repo_dir, id);
    if !path.is_dir() {
        return plain(StatusCode::NOT_FOUND, "repository missing on disk");
    }
    let receive = method == Method::POST && rest == "git-receive-pack";
    let max_push = MAX_PUSH_BYTES.load(Ordering::Relaxed);
    let idle = Duration::from_millis(BODY_IDLE_MS.load(Ordering::Relaxed));
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if receive
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > max_push)
    {
        let mut head = Vec::new();
        drain(&mut body.into_data_stream(), &mut head, idle).await;
        return push_refused(max_push, &head, gzipped);
    }
    // A push and its trigger hold the repository's lock: pushes through
    // other replicas sharing the repo dir wait for it.
    let lock = if receive {
        match crate::git::lock::lock(&path).await {
            Ok(lock) => Some(lock),
            Err(e) => {
                tracing::error!(project = id, error = %e, "cannot lock the repository");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the repository cannot be locked on the server; nothing was changed",
                );
            }
        }
    } else {
        None
    };
    let before = if receive {
        local_head(&path, &project.fields.git_branch).ok().flatten()
    } else {
        None
    };

    let mut cmd = match backend().await {
        Some(path) => Command::new(path),
        None => {
            let mut git = Command::new("git");
            git.arg("http-backend");
            git
        }
    };
    // The daemon's environment (tokens, keys) stays out of the child.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &app.repo_dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{id}.git/{rest}"))
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", query.unwrap_or_default())
        .env(
            "REMOTE_USER",
            if user.is_empty() {
                "autodeploy".into()
            } else {
                user
            },
        )
        .env("REMOTE_ADDR", "127.0.0.1")
        // The same limit on the inflated pack: a small gzip body cannot
        // unpack into a large push.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "receive.maxInputSize")
        .env("GIT_CONFIG_VALUE_0", max_push.to_string())
        // Its own group, so a refused push stops receive-pack too.
        .process_group(0);
    for (name, var) in [
        (header::CONTENT_TYPE, "CONTENT_TYPE"),
        (header::CONTENT_LENGTH, "CONTENT_LENGTH"),
        (header::CONTENT_ENCODING, "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    if let Some(v) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        cmd.env("GIT_PROTOCOL", v);
    }
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot run git http-backend");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git is not available on the server",
            );
        }
    };
    let Some(stdin) = child.stdin.take() else {
        return plain(StatusCode::BAD_GATEWAY, "git http-backend failed");
    };
    let feed = tokio::spawn(feed_body(body, stdin, receive.then_some(max_push), idle));
    if let Some(mut stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            if !text.trim().is_empty() {
                tracing::warn!(project = id, stderr = %text.trim(), "git http-backend");
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        return plain(StatusCode::BAD_GATEWAY, "git http-backend failed");
    };
    let (status, cgi_headers, body) = if receive {
        // Small (the report-status): read it all beside the upload, let git
        // finish, and run the trigger before the client hears the push is
        // done.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = BufReader::new(stdout).read_to_end(&mut all).await;
            all
        });
        match feed.await {
            Ok(Fed::All) => {}
            Ok(Fed::TooLarge(head)) => {
                stop_git(&mut child).await;
                reader.abort();
                tracing::warn!(
                    project = id,
                    limit = max_push,
                    "push refused: larger than AUTODEPLOY_MAX_PUSH_BYTES"
                );
                return push_refused(max_push, &head, gzipped);
            }
            Ok(Fed::Broken) | Err(_) => {
                stop_git(&mut child).await;
                reader.abort();
                return plain(
                    StatusCode::BAD_REQUEST,
                    "the push body was cut off or stalled; nothing was changed",
                );
            }
        }
        let all = reader.await.unwrap_or_default();
        let _ = child.wait().await;
        let mut out = all.as_slice();
        let Some((status, cgi_headers)) = read_cgi_headers(&mut out).await else {
            return plain(StatusCode::BAD_GATEWAY, "git http-backend failed");
        };
        let rest = out.to_vec();
        crate::triggers::on_push(&app, id, before).await;
        drop(lock);
        (status, cgi_headers, Body::from(rest))
    } else {
        let mut out = BufReader::new(stdout);
        let Some((status, cgi_headers)) = read_cgi_headers(&mut out).await else {
            return plain(StatusCode::BAD_GATEWAY, "git http-backend failed");
        };
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        (
            status,
            cgi_headers,
            Body::from_stream(ReaderStream::new(out)),
        )
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in cgi_headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// Whether `hash` is a node token whose node holds a running deployment of
/// the project. A store error refuses.
async fn node_may_fetch(app: &App, hash: &str, project_id: i64) -> bool {
    match app.store.node_by_token_hash(hash).await {
        Ok(Some(node)) => app
            .store
            .node_holds_project(node.id, project_id)
            .await
            .unwrap_or(false),
        _ => false,
    }
}

/// Reads a CGI response's header block: `Status:` sets the status; the rest
/// are passed on.
async fn read_cgi_headers<R: tokio::io::AsyncBufRead + Unpin>(
    out: &mut R,
) -> Option<(StatusCode, Vec<(String, String)>)> {
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Some((status, headers));
        }
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())?;
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
}
