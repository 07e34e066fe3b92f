//! The REST API under `/api`: admin routes behind the admin bearer token,
//! agent routes behind a node's token. Every error is `{"error": "..."}`
//! with a 4xx status (5xx only for the daemon's own failures, whose details
//! go to the log, not the response).

mod admin;
mod agent;
mod projects;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
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
        .route("/nodes", get(admin::list_nodes).post(admin::add_node))
        .route("/nodes/{id}", axum::routing::delete(admin::delete_node))
        .route("/events", get(admin::events))
        .route("/ticks/git-poll", post(admin::tick_git_poll))
        .route("/ticks/image-watch", post(admin::tick_image_watch))
        .route("/projects", get(projects::list).post(projects::create))
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
            "/projects/{id}/deployments",
            get(projects::deployments).post(projects::deploy),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), require_admin));
    let agent = Router::new()
        .route("/heartbeat", post(agent::heartbeat))
        .route("/claim", post(agent::claim))
        .route(
            "/deployments/{id}/report",
            put(agent::report).post(agent::report),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            agent::require_node,
        ));
    Router::new()
        .route(
            "/git/{repo}/{*rest}",
            get(crate::git::http::serve).post(crate::git::http::serve),
        )
        .nest("/api/agent", agent)
        .nest("/api", admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(app)
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
    let text = redact_strings(&e.body_text());
    ApiError::new(e.status(), format!("invalid request body: {text}"))
}

/// serde quotes the offending value in some errors (`invalid type: string
/// "..."`); that value may be a token pasted into the wrong field, so it is
/// never echoed back.
fn redact_strings(msg: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len()]);
        rest = &rest[at + MARK.len()..];
        match rest.find('"') {
            Some(end) => {
                out.push_str("***");
                rest = &rest[end..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// A numeric id from the path; anything else is a 400 that says so.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Id)
            .ok_or_else(|| ApiError::bad_request(format!("{raw:?} is not a valid id")))
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
