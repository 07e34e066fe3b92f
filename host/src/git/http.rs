//! Hosted repositories over git's smart HTTP protocol, at
//! `/git/{project_id}.git/...`. The daemon checks HTTP basic auth (the
//! project's push token or the admin token as the password; for fetches, a
//! node token while that node runs one of the project's deployments), then hands the
//! request to `git http-backend` as a CGI program: the protocol, including
//! gzip request bodies, is git's own. After a push the tracked branch is
//! compared and, if it moved, the trigger runs before the push returns.

use std::process::Stdio;
use std::sync::Arc;

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
use crate::git::{hosted_path, local_head, repos_dir};
use crate::policy::GitSource;
use crate::secrets::token_hash;

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
    let path = hosted_path(&app.data_dir, id);
    if !path.is_dir() {
        return plain(StatusCode::NOT_FOUND, "repository missing on disk");
    }
    let receive = method == Method::POST && rest == "git-receive-pack";
    let before = if receive {
        local_head(&path, &project.fields.git_branch).ok().flatten()
    } else {
        None
    };

    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        // The daemon's environment (tokens, keys) stays out of the child.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", repos_dir(&app.data_dir))
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
        .env("REMOTE_ADDR", "127.0.0.1");
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
    let mut stdin = child.stdin.take().expect("piped");
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            tracing::warn!(project = id, stderr = %text.trim(), "git http-backend");
        }
    });
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let (status, cgi_headers) = match read_cgi_headers(&mut out).await {
        Some(h) => h,
        None => return plain(StatusCode::BAD_GATEWAY, "git http-backend failed"),
    };

    let body = if receive {
        // Small (the report-status): read it all, let git finish, and run
        // the trigger before the client hears the push is done.
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest).await;
        let _ = child.wait().await;
        crate::triggers::on_push(&app, id, before).await;
        Body::from(rest)
    } else {
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Body::from_stream(ReaderStream::new(out))
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
