//! Status, settings, the policy, deploy nodes and the event log.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use super::{ApiError, ApiResult, Body, Id};
use crate::app::App;
use crate::policy::{MAX_CONFIG_BYTES, PolicyInfo, SwapError};
use crate::secrets::{new_token, token_hash};
use crate::store::{Event, Node, NodeDeletion, Settings, now};

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
    Ok(Json(app.store.settings().await?))
}

pub async fn put_settings(
    State(app): State<Arc<App>>,
    Body(update): Body<serde_json::Map<String, Value>>,
) -> ApiResult<Json<Settings>> {
    let values = Settings::validate_update_with(&update, app.image_watch_min_seconds)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let settings = app.store.put_settings(&values).await?;
    tracing::info!(?values, "settings changed");
    // The loops re-read their interval and the master switch now.
    app.settings_changed.send_replace(());
    Ok(Json(settings))
}

/// The active policy and the operator's config for it. The config is not
/// secret by contract (it reaches every decision and the decision log), so
/// it is shown.
#[derive(Serialize)]
pub struct PolicyAnswer {
    #[serde(flatten)]
    info: PolicyInfo,
    /// `null` when none is set.
    config: Option<String>,
    config_sha256: Option<String>,
}

fn policy_answer(app: &App) -> PolicyAnswer {
    let (policy, config) = app.policy.current_with_config();
    let set = !config.is_empty();
    PolicyAnswer {
        info: policy.info().clone(),
        config_sha256: set.then(|| crate::secrets::hex(&sha2::Sha256::digest(config.as_bytes()))),
        config: set.then(|| config.to_string()),
    }
}

pub async fn get_policy(State(app): State<Arc<App>>) -> Json<PolicyAnswer> {
    Json(policy_answer(&app))
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
/// application/json`) a [`PolicyUpload`] carrying its config too.
/// Validation (compile, contract check, self-test) runs off the async
/// threads; the running policy stays unless the new one passes. With
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
        (Bytes::from(wasm), upload.config)
    } else {
        (body, None)
    };
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "the request body must be a WebAssembly component",
        ));
    }
    let with_config = config.is_some();
    let info = app
        .policy
        .install_with_config(wasm.to_vec(), "api", config)
        .await
        .map_err(swap_error)?;
    let answer = policy_answer(&app);
    let config_note = match &answer.config_sha256 {
        Some(sha) if with_config => format!(", config {sha}"),
        Some(sha) => format!(", its stored config {sha}"),
        None => ", no config".to_string(),
    };
    app.store
        .log_event(
            None,
            crate::store::EventKind::PolicySwitched,
            &format!(
                "{} {} ({}){config_note}",
                info.name, info.version, info.sha256
            ),
        )
        .await?;
    Ok(Json(answer).into_response())
}

/// `PUT /api/policy/config`: the body (UTF-8 text, at most 64 KiB; empty
/// removes it) becomes the active policy's config. A policy change: logged
/// as an event.
pub async fn put_policy_config(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> ApiResult<Json<PolicyAnswer>> {
    if body.len() > MAX_CONFIG_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the policy config is {} bytes; at most {MAX_CONFIG_BYTES} are allowed",
                body.len()
            ),
        ));
    }
    let config = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the policy config must be UTF-8 text"))?;
    let info = app.policy.set_config(&config).await.map_err(swap_error)?;
    let answer = policy_answer(&app);
    let what = match &answer.config_sha256 {
        Some(sha) => format!("config {sha} ({} bytes)", config.len()),
        None => "config removed".to_string(),
    };
    app.store
        .log_event(
            None,
            crate::store::EventKind::PolicyConfigChanged,
            &format!("{} {} ({}): {what}", info.name, info.version, info.sha256),
        )
        .await?;
    Ok(Json(answer))
}

pub async fn rollback_policy(State(app): State<Arc<App>>) -> ApiResult<Json<PolicyAnswer>> {
    let info = app.policy.rollback().await.map_err(swap_error)?;
    app.store
        .log_event(
            None,
            crate::store::EventKind::PolicyRolledBack,
            &format!("{} {} ({})", info.name, info.version, info.sha256),
        )
        .await?;
    Ok(Json(policy_answer(&app)))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    name: String,
    /// Matched against projects' `node_selector`.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Checks node labels or a node selector: at most 32 pairs; keys 1-63 and
/// values 0-63 letters, digits, '-', '_', '.' or '/'. The error names the
/// field and the offending key, never a value (it may be anything pasted).
pub fn check_labels(field: &str, map: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if map.len() > 32 {
        return Err(ApiError::bad_request(format!(
            "{field} has {} pairs; at most 32 are allowed",
            map.len()
        )));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > 63 || !k.chars().all(ok) {
            return Err(ApiError::bad_request(format!(
                "{field}: every key must be 1-63 letters, digits, '-', '_', '.' or '/'"
            )));
        }
        if v.len() > 63 || !v.chars().all(ok) {
            return Err(ApiError::bad_request(format!(
                "{field}: the value of {k:?} must be 0-63 letters, digits, '-', '_', '.' or '/'"
            )));
        }
    }
    Ok(())
}

#[derive(Serialize)]
pub struct NodeAnswer {
    #[serde(flatten)]
    node: Node,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

pub async fn list_nodes(State(app): State<Arc<App>>) -> ApiResult<Json<Vec<NodeAnswer>>> {
    let offline_after = app.store.settings().await?.node_offline_after_seconds as i64;
    let t = now();
    let nodes = app.store.nodes().await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|node| NodeAnswer {
                online: node.online(t, offline_after),
                node,
                token: None,
            })
            .collect(),
    ))
}

/// The node's token is in this answer only; the store keeps its hash.
pub async fn add_node(
    State(app): State<Arc<App>>,
    Body(req): Body<NewNode>,
) -> ApiResult<(StatusCode, Json<NodeAnswer>)> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if req.name.is_empty() || req.name.len() > 100 || !req.name.chars().all(ok) {
        return Err(ApiError::bad_request(format!(
            "node name {:?} must be 1-100 letters, digits, '-', '_' or '.'",
            req.name
        )));
    }
    check_labels("labels", &req.labels)?;
    let token = new_token("adn");
    let node = app
        .store
        .add_node(&req.name, &token_hash(token.expose()), &req.labels)
        .await?;
    app.store
        .log_event(
            None,
            crate::store::EventKind::NodeAdded,
            &format!("node {} added", node.name),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NodeAnswer {
            node,
            online: false,
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
    let done = app.store.delete_node(id, q.force).await?;
    for name in &done.unpinned {
        tracing::warn!(node = %done.node.name, project = %name, "node deleted with force: project unpinned");
    }
    tracing::info!(node = %done.node.name, failed = ?done.failed_deployments, "node deleted");
    Ok(Json(done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    project_id: Option<i64>,
    limit: Option<i64>,
}

pub async fn events(
    State(app): State<Arc<App>>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    Ok(Json(
        app.store
            .events(q.project_id, q.limit.unwrap_or(100).clamp(1, 1000))
            .await?,
    ))
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
