//! `POST /hooks/git/{project_id}`: git host webhooks, authenticated by the
//! project's webhook secret (no bearer token). The service verifies and
//! decides; this only reads the body under its cap and maps the outcome.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, Id};
use crate::app::App;
use crate::service::registry_hooks::{self, RegistryHookError};
use crate::service::webhooks::{self, HookError, MAX_BODY, Received};

/// The body, read under `cap`: `Ok(None)` when it is larger (declared or
/// read), so the service can refuse it with its security event.
async fn read_capped(
    headers: &HeaderMap,
    body: Body,
    cap: usize,
) -> Result<Option<axum::body::Bytes>, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    match tokio::time::timeout(super::body_idle(), axum::body::to_bytes(body, cap)).await {
        Ok(Ok(bytes)) => Ok(Some(bytes)),
        Ok(Err(e)) if super::is_length_limit(&e) => Ok(None),
        Ok(Err(_)) => {
            Err(ApiError::bad_request("the request body could not be read").into_response())
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )
        .into_response()),
    }
}

/// `?secret=` only: other query parameters are ignored.
#[derive(serde::Deserialize)]
pub struct SecretQuery {
    secret: Option<String>,
}

/// `POST /hooks/registry`: registry notifications (distribution, Harbor,
/// Docker Hub), authenticated by the daemon-wide registry hook secret.
pub async fn registry(
    State(app): State<Arc<App>>,
    query: Result<axum::extract::Query<SecretQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_capped(&headers, body, registry_hooks::MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let secret = query.as_ref().ok().and_then(|q| q.secret.as_deref());
    match registry_hooks::receive(&app, &headers, secret, bytes.as_deref()).await {
        Ok(registry_hooks::Received::Scheduled {
            format,
            images,
            coalesced,
        }) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "scheduled",
                "format": format.as_str(),
                "images": images,
                "coalesced": coalesced,
            })),
        )
            .into_response(),
        // A registry retries what is not a 2xx: events with nothing to do
        // are acknowledged.
        Ok(registry_hooks::Received::Ignored { format }) => (
            StatusCode::OK,
            Json(json!({ "status": "ignored", "format": format.as_str() })),
        )
            .into_response(),
        Err(e) => {
            let status = match e {
                RegistryHookError::Disabled => StatusCode::NOT_FOUND,
                RegistryHookError::BadSecret => StatusCode::UNAUTHORIZED,
                RegistryHookError::TooLarge | RegistryHookError::TooManyEvents => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                RegistryHookError::Malformed(_) => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.to_string()).into_response()
        }
    }
}

pub async fn git(
    State(app): State<Arc<App>>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_capped(&headers, body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    match webhooks::receive(&app, id, &headers, bytes.as_deref()).await {
        Ok(Received::Scheduled { coalesced }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "scheduled", "coalesced": coalesced })),
        )
            .into_response(),
        Ok(Received::Duplicate) => {
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
        Ok(Received::Ping) => (StatusCode::OK, Json(json!({ "status": "pong" }))).into_response(),
        Err(e) => {
            let status = match e {
                HookError::UnknownProject => StatusCode::NOT_FOUND,
                HookError::Hosted | HookError::UnsupportedEvent | HookError::NoDeliveryId => {
                    StatusCode::BAD_REQUEST
                }
                HookError::NoSecret | HookError::BadSignature => StatusCode::UNAUTHORIZED,
                HookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                HookError::Store(_) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error; see the daemon's log",
                    )
                    .into_response();
                }
            };
            ApiError::new(status, e.to_string()).into_response()
        }
    }
}
