//! Status, settings, the policy, deploy nodes and the event log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::page::Paged;
use super::projects::PageQuery;
use super::{ApiError, ApiResult, Body, Id};
use crate::app::App;
use crate::policy::SwapError;
use crate::service;
use crate::service::nodes::{NewNode, NodeState};
use crate::service::page::{List, PageRequest};
use crate::service::policy::{ActivePolicy, PolicyActionError};
use crate::store::{Event, NodeDeletion, Settings};

pub async fn status(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let settings = app.store.settings().await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "policy": app.policy.current().info(),
        "policy_cache": app.policy.cache_stats(),
        "auto_deploy_master_enabled": settings.auto_deploy_master_enabled,
        "loops": app.loops.snapshot(),
        "replica": app.replica.as_str(),
        "image_trigger": match app.loops.image_watch.off() {
            Some(reason) => json!({"enabled": false, "reason": reason}),
            None => json!({"enabled": true}),
        },
        "registries": app.loops.image_watch.registry.stats(),
        "decision_log": app.decision_log.stats(),
        "shadow_policy": app.shadow.current().map(|s| s.report(true).counts),
        "image_watch_min_interval_seconds": app.image_watch_min_seconds,
        "git_transport": {
            "insecure_hosts": crate::git::transport::insecure_hosts(),
            "extra_ca": crate::git::transport::ca_file().is_some(),
        },
    })))
}

pub async fn get_settings(State(app): State<Arc<App>>) -> ApiResult<Json<Settings>> {
    Ok(Json(service::settings::get(&app).await?))
}

pub async fn put_settings(
    State(app): State<Arc<App>>,
    Body(update): Body<serde_json::Map<String, Value>>,
) -> ApiResult<Json<Settings>> {
    Ok(Json(service::settings::put(&app, &update).await?))
}

pub async fn get_policy(State(app): State<Arc<App>>) -> Json<ActivePolicy> {
    Json(service::policy::current(&app))
}

/// `PUT /api/policy` with a JSON body: the component and its config at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpload {
    /// The component's bytes, base64 (standard alphabet, padded).
    wasm_base64: String,
    /// The operator's config for it; absent keeps the one stored for this
    /// component before, if any; "" removes it.
    config: Option<String>,
}

/// The body is the component's bytes, or (with `Content-Type:
/// application/json`) a [`PolicyUpload`] carrying its config too (see
/// [`service::policy::install`]). Validation runs off the async threads;
/// the running policy stays unless the new one passes. With
/// `?dry_run=true` nothing is switched: the answer is the self-test's result
/// and the replay of recent decisions.
pub async fn put_policy(
    State(app): State<Arc<App>>,
    query: Result<Query<super::decisions::CandidateParams>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if super::decisions::candidate_params(query)?.dry_run {
        let (wasm, config) = super::decisions::candidate_upload(&headers, body)?;
        return Ok(super::decisions::dry_run(&app, wasm, config)
            .await?
            .into_response());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let (wasm, config) = if json {
        let upload: PolicyUpload = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "a JSON policy upload is {{\"wasm_base64\": \"...\", \"config\": \"...\"}}: {e}"
            ))
        })?;
        use base64::Engine;
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(upload.wasm_base64.trim())
            .map_err(|_| ApiError::bad_request("wasm_base64 is not valid base64"))?;
        (wasm, upload.config)
    } else {
        (body.to_vec(), None)
    };
    let answer = service::policy::install(&app, wasm, config).await?;
    Ok(Json(answer).into_response())
}

/// `PUT /api/policy/config`: the body (UTF-8 text, at most 64 KiB; empty
/// removes it) becomes the active policy's config. A policy change: logged
/// as an event.
pub async fn put_policy_config(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> ApiResult<Json<ActivePolicy>> {
    Ok(Json(service::policy::set_config(&app, &body).await?))
}

pub async fn rollback_policy(State(app): State<Arc<App>>) -> ApiResult<Json<ActivePolicy>> {
    Ok(Json(service::policy::rollback(&app).await?))
}

impl From<PolicyActionError> for ApiError {
    fn from(e: PolicyActionError) -> Self {
        match e {
            PolicyActionError::Invalid(m) => ApiError::bad_request(m),
            PolicyActionError::ConfigTooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            PolicyActionError::Swap(e) => swap_error(e),
            PolicyActionError::Store(e) => e.into(),
        }
    }
}

fn swap_error(e: SwapError) -> ApiError {
    match e {
        // Another replica switched policy while this change was made.
        SwapError::Store(crate::store::StoreError::Conflict(_)) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        SwapError::Store(_) | SwapError::Task(_) => {
            tracing::error!(error = %e, "storing a policy failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        SwapError::NoPrevious => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        SwapError::Config(_) => ApiError::bad_request(e.to_string()),
        other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

#[derive(Serialize)]
pub struct NodeAnswer {
    #[serde(flatten)]
    node: NodeState,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

pub async fn list_nodes(
    State(app): State<Arc<App>>,
    uri: OriginalUri,
    Query(q): Query<PageQuery>,
) -> ApiResult<Paged<NodeState>> {
    let page = service::nodes::list(&app, q.page(List::Nodes)?).await?;
    Ok(Paged(page, uri))
}

/// The node's token is in this answer only; the store keeps its hash.
pub async fn add_node(
    State(app): State<Arc<App>>,
    Body(req): Body<NewNode>,
) -> ApiResult<(StatusCode, Json<NodeAnswer>)> {
    let (node, token) = service::nodes::add(&app, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(NodeAnswer {
            node: NodeState {
                node,
                online: false,
            },
            token: Some(token.expose().to_string()),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteNodeQuery {
    #[serde(default)]
    force: bool,
}

/// 409 naming the node's pinned projects, unless `?force=true`: then they
/// are unpinned (each logged). Deployments the node held are failed.
pub async fn delete_node(
    State(app): State<Arc<App>>,
    Id(id): Id,
    query: Result<Query<DeleteNodeQuery>, QueryRejection>,
) -> ApiResult<Json<NodeDeletion>> {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "the only query parameter is force=true or force=false",
        ));
    };
    Ok(Json(service::nodes::delete(&app, id, q.force).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    project_id: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Newest first.
pub async fn events(
    State(app): State<Arc<App>>,
    uri: OriginalUri,
    Query(q): Query<EventQuery>,
) -> ApiResult<Paged<Event>> {
    let page = PageRequest::parse(List::Events, q.limit, q.cursor.as_deref())?;
    let events = service::events::list(&app, q.project_id, page).await?;
    Ok(Paged(events, uri))
}

/// Runs one git poll tick now and answers with its summary.
pub async fn tick_git_poll(
    State(app): State<Arc<App>>,
) -> ApiResult<Json<crate::loops::git_poll::TickSummary>> {
    Ok(Json(app.loops.git_poll.tick_now(&app).await?))
}

/// Runs one image watch tick now; 409 while the image trigger is off.
pub async fn tick_image_watch(
    State(app): State<Arc<App>>,
) -> ApiResult<Json<crate::loops::image_watch::ImageTick>> {
    use crate::loops::image_watch::WatchError;
    match app.loops.image_watch.tick_now(&app).await {
        Ok(t) => Ok(Json(t)),
        Err(WatchError::Off(reason)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the image trigger is off: {reason}"),
        )),
        Err(WatchError::Store(e)) => Err(e.into()),
    }
}
