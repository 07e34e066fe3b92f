//! The REST API under `/api`: admin routes behind the admin bearer token,
//! agent routes behind a node's token. Every error is `{"error": "..."}`
//! with a 4xx status (5xx only for the daemon's own failures, whose details
//! go to the log, not the response), and no error repeats a string the
//! request carried: `guard_errors` enforces both for every route but the git
//! protocol's, whose plain-text answers git clients show as they are.

mod admin;
mod agent;
mod decisions;
mod hooks;
mod notifications;
mod page;
mod projects;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::service::ServiceError;
use crate::store::StoreError;

pub use agent::AgentCredential;

pub fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/status", get(admin::status))
        .route(
            "/settings",
            get(admin::get_settings).put(admin::put_settings),
        )
        .route("/policy", get(admin::get_policy).put(admin::put_policy))
        .route("/policy/rollback", post(admin::rollback_policy))
        .route(
            "/policy/shadow",
            get(decisions::get_shadow)
                .post(decisions::start_shadow)
                .delete(decisions::stop_shadow),
        )
        .route("/decisions", get(decisions::list))
        .route("/policy/config", put(admin::put_policy_config))
        .route("/nodes", get(admin::list_nodes).post(admin::add_node))
        .route("/nodes/{id}", axum::routing::delete(admin::delete_node))
        .route("/events", get(admin::events))
        .route(
            "/notifications",
            get(notifications::list).post(notifications::add),
        )
        .route(
            "/notifications/{id}",
            get(notifications::show).delete(notifications::delete),
        )
        .route(
            "/notifications/{id}/deliveries",
            get(notifications::deliveries),
        )
        .route("/ticks/git-poll", post(admin::tick_git_poll))
        .route("/ticks/image-watch", post(admin::tick_image_watch))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/summaries", get(projects::summaries))
        .route(
            "/projects/{id}",
            get(projects::show)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route(
            "/projects/{id}/push-token",
            post(projects::rotate_push_token),
        )
        .route(
            "/projects/{id}/webhook-secret",
            post(projects::rotate_webhook_secret),
        )
        .route(
            "/projects/{id}/registry-credentials",
            get(projects::registry_credentials).put(projects::set_registry_credential),
        )
        .route(
            "/projects/{id}/registry-credentials/{registry}",
            axum::routing::delete(projects::delete_registry_credential),
        )
        .route(
            "/projects/{id}/deployments",
            get(projects::deployments).post(projects::deploy),
        )
        .route(
            "/projects/{id}/deployments/{dep}/cancel",
            post(projects::cancel),
        )
        .route("/projects/{id}/deployments/{dep}/log", get(projects::log))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_admin));
    let agent = Router::new()
        .route("/heartbeat", post(agent::heartbeat))
        .route("/claim", post(agent::claim))
        .route(
            "/deployments/{id}/report",
            put(agent::report).post(agent::report),
        )
        .route("/deployments/{id}/log", post(agent::log))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            agent::require_node,
        ));
    Router::new()
        .route(
            "/git/{repo}/{*rest}",
            get(crate::git::http::serve).post(crate::git::http::serve),
        )
        .route("/hooks/git/{id}", post(hooks::git))
        .route("/hooks/registry", post(hooks::registry))
        .nest("/api/agent", agent)
        .nest("/api", admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn(guard_errors))
        .with_state(app)
}

/// Longer keys than this are no field name of the API (tokens are longer),
/// so they are treated as values.
const MAX_FIELD_NAME: usize = 32;
/// Largest JSON request body; the same as axum's default limit.
const MAX_JSON_BODY: usize = 2 << 20;
/// Error bodies longer than this are replaced by the status's own words.
const MAX_ERROR_BODY: usize = 16 << 10;
/// With more strings than this in a request, an error says only its status.
const MAX_REDACTED_VALUES: usize = 2000;

/// How long a client may pause while sending a body; set once at start.
static BODY_IDLE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(60_000);

pub fn set_body_idle_timeout(idle: Duration) {
    BODY_IDLE_MS.store(
        idle.as_millis().clamp(1, u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn body_idle() -> Duration {
    Duration::from_millis(BODY_IDLE_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Makes every error of the API JSON and strips the request's own strings
/// from it. The request's strings (JSON body values, query values, path
/// segments) are noted before the handler runs, so whatever wrote the
/// message (a handler, serde, axum) cannot echo one of them.
async fn guard_errors(req: Request, next: Next) -> Response {
    // Webhooks read their own body under their own cap, so an oversized
    // one still reaches the handler and its security event.
    if req.uri().path().starts_with("/git/") || req.uri().path().starts_with("/hooks/") {
        return next.run(req).await;
    }
    let mut values = request_strings(req.uri());
    let (parts, body) = req.into_parts();
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = if json {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_JSON_BODY as u64) {
            return too_large();
        }
        let bytes = match tokio::time::timeout(
            body_idle(),
            axum::body::to_bytes(body, MAX_JSON_BODY),
        )
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) if is_length_limit(&e) => return too_large(),
            Ok(Err(_)) => {
                return ApiError::bad_request("the request body could not be read").into_response();
            }
            Err(_) => {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
                .into_response();
            }
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            json_strings(&v, &mut values);
        }
        axum::body::Body::from(bytes)
    } else {
        stall_guard(body, body_idle())
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        as_json_error(response, &values).await
    } else {
        response
    }
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {MAX_JSON_BODY} bytes"),
    )
    .into_response()
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A body whose next chunk must come within `idle`, or it fails.
fn stall_guard(body: axum::body::Body, idle: Duration) -> axum::body::Body {
    use futures::StreamExt;
    let stream = futures::stream::unfold(
        (body.into_data_stream(), false),
        move |(mut stream, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), (stream, false))),
                Ok(Some(Err(e))) => Some((Err(e), (stream, true))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stalled",
                    ))),
                    (stream, true),
                )),
            }
        },
    );
    axum::body::Body::from_stream(stream)
}

/// Query values, query keys that cannot be field names, and path segments,
/// percent-decoded. Segments that are plain route words (`projects`,
/// `push-token`) are the API's own.
fn request_strings(uri: &axum::http::Uri) -> Vec<String> {
    let mut out: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| {
            !s.is_empty()
                && !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_')
        })
        .map(percent_decode)
        .collect();
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k);
            // A key shaped like a field name may be named, as in bodies.
            if key.len() > MAX_FIELD_NAME
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                out.push(key);
            }
            out.push(percent_decode(v));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every string value in a JSON document, and every key too long to be a
/// field name.
fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_strings(i, out)),
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key.len() > MAX_FIELD_NAME {
                    out.push(key.clone());
                }
                json_strings(value, out);
            }
        }
        _ => {}
    }
}

/// Rewrites an error answer as `{"error": ...}` without the request's
/// strings. Headers such as `Allow` and `WWW-Authenticate` stay.
async fn as_json_error(response: Response, values: &[String]) -> Response {
    let (mut parts, body) = response.into_parts();
    let was_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let generic = parts
        .status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase();
    let clean = |text: &str| {
        if text.is_empty() || values.len() > MAX_REDACTED_VALUES {
            generic.clone()
        } else {
            redact_values(&redact_serde(text), values)
        }
    };
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY).await.ok();
    // A JSON answer keeps its other fields; its message is cleaned.
    let answer = match bytes {
        Some(bytes) if was_json => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(mut map)) => {
                let message = map
                    .get("error")
                    .and_then(|e| e.as_str())
                    .map(&clean)
                    .unwrap_or_else(|| generic.clone());
                map.insert("error".into(), message.into());
                serde_json::Value::Object(map)
            }
            _ => json!({ "error": generic.clone() }),
        },
        Some(bytes) => json!({ "error": clean(String::from_utf8_lossy(&bytes).trim()) }),
        None => json!({ "error": generic.clone() }),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Replaces each of the request's strings in `msg`: quoted (as `{:?}` or in
/// backticks) whatever their length, bare when long enough that they cannot
/// be ordinary words of the message.
fn redact_values(msg: &str, values: &[String]) -> String {
    let mut out = msg.to_string();
    let mut sorted: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    // Longest first, so a value inside another is not left half-replaced.
    sorted.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in sorted {
        out = out.replace(&format!("{v:?}"), "\"***\"");
        out = out.replace(&format!("`{v}`"), "`***`");
        out = out.replace(&format!("\"{v}\""), "\"***\"");
        if v.chars().count() >= 12 {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

/// An error answer: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            StoreError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log",
                )
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) | ServiceError::Refused(m) => ApiError::bad_request(m),
            ServiceError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            ServiceError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            ServiceError::PolicyUnavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ServiceError::Internal { what, detail } => {
                tracing::error!(error = %detail, "{what}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what)
            }
            ServiceError::Store(e) => e.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `Json` whose rejections (bad JSON, unknown fields, wrong types) answer in
/// the API's error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let text = redact_serde(&e.body_text());
    ApiError::new(e.status(), format!("invalid request body: {text}"))
}

/// serde quotes the offending value in some errors (`invalid type: string
/// "..."`, ``unknown variant `...` ``); that value may be a token pasted into
/// the wrong field, so it is never echoed back. Quoted strings are skipped
/// escape by escape, so an escaped quote inside one does not end it.
pub fn redact_serde(msg: &str) -> String {
    enum End {
        /// A `{:?}`-quoted string or char, ending at this unescaped quote.
        Quote(char),
        /// serde's backticks around a raw value, followed by this list.
        BeforeExpected,
        /// A number or bool in backticks.
        Tick,
    }
    const MARKERS: [(&str, End); 8] = [
        ("string \"", End::Quote('"')),
        ("character '", End::Quote('\'')),
        ("unknown variant `", End::BeforeExpected),
        ("unknown field `", End::BeforeExpected),
        ("integer `", End::Tick),
        ("floating point `", End::Tick),
        ("boolean `", End::Tick),
        ("duplicate field `", End::Tick),
    ];
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    loop {
        let next = MARKERS
            .iter()
            .filter_map(|(m, end)| rest.find(m).map(|at| (at, *m, end)))
            .min_by_key(|(at, ..)| *at);
        let Some((at, marker, end)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + marker.len()]);
        let after = &rest[at + marker.len()..];
        let len = match end {
            End::Quote(q) => closing_quote(after, *q),
            // The value is raw (a backtick in it is not escaped): it runs to
            // the last separator serde itself wrote.
            End::BeforeExpected => ["`, expected", "`, there are no"]
                .iter()
                .filter_map(|sep| after.rfind(sep))
                .max()
                .or_else(|| after.rfind('`'))
                .unwrap_or(after.len()),
            End::Tick => after.find('`').unwrap_or(after.len()),
        };
        let value = &after[..len];
        // A field name that looks like one helps the caller; tokens are
        // longer than any field name of the API.
        let keep = marker == "unknown field `"
            && (1..=MAX_FIELD_NAME).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        out.push_str(if keep { value } else { "***" });
        rest = &after[len..];
    }
}

/// Index of the first unescaped `quote` in `s` (or its length).
fn closing_quote(s: &str, quote: char) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return i;
        }
    }
    s.len()
}

/// A numeric id from the path; anything else is a 400 that says so.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "the id in the path is not a valid id: use a whole number above 0",
            )
        };
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| bad())?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Id)
            .ok_or_else(bad)
    }
}

/// A project id and a registry host from the path
/// (`/projects/{id}/registry-credentials/{registry}`).
pub struct RegistryPath(pub i64, pub String);

impl<S: Send + Sync> FromRequestParts<S> for RegistryPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path((project, registry)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| {
                    ApiError::bad_request("the path is not /projects/ID/registry-credentials/HOST")
                })?;
        match project.parse::<i64>().ok().filter(|id| *id > 0) {
            Some(p) => Ok(RegistryPath(p, registry)),
            None => Err(ApiError::bad_request(
                "the project id in the path is not a valid id: use a whole number above 0",
            )),
        }
    }
}

/// A project id and one of its deployments' ids from the path
/// (`/projects/{id}/deployments/{dep}`).
pub struct DeploymentPath(pub i64, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for DeploymentPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "the ids in the path are not valid ids: use whole numbers above 0",
            )
        };
        let axum::extract::Path((project, deployment)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| bad())?;
        let id = |raw: String| raw.parse::<i64>().ok().filter(|id| *id > 0);
        match (id(project), id(deployment)) {
            (Some(p), Some(d)) => Ok(DeploymentPath(p, d)),
            _ => Err(bad()),
        }
    }
}

pub fn bearer(parts: &axum::http::HeaderMap) -> Option<&str> {
    parts
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn require_admin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(token) = bearer(req.headers()) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    match app.is_admin(token).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid admin token").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
