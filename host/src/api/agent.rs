//! The deploy agents' side of the API: a node authenticates with its own
//! token, heartbeats, claims deployments, streams their logs and reports
//! how they went.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, Body, Id, bearer};
use crate::app::App;
use crate::secrets::token_hash;
use crate::service::deployments;
use crate::store::{Claim, CredentialKind, DeployStatus, Deployment, Node, now};

pub async fn require_node(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(token) = bearer(req.headers()) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    match app.store.node_by_token_hash(&token_hash(token)).await {
        Ok(Some(node)) => {
            req.extensions_mut().insert(node);
            next.run(req).await
        }
        Ok(None) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid node token").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Extension(node): Extension<Node>,
) -> ApiResult<StatusCode> {
    app.store.heartbeat(node.id, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A claim as the agent receives it: for an external project, with the
/// git credential it needs for this one deploy (never stored by the agent).
#[derive(Serialize)]
pub struct ClaimAnswer {
    #[serde(flatten)]
    claim: Claim,
    credential: Option<AgentCredential>,
}

#[derive(Serialize, Deserialize)]
pub struct AgentCredential {
    pub kind: CredentialKind,
    pub username: Option<String>,
    pub secret: String,
}

/// 200 with the deployment to run, or 204 when there is none.
pub async fn claim(
    State(app): State<Arc<App>>,
    Extension(node): Extension<Node>,
) -> ApiResult<Response> {
    let Some(claim) = app.store.claim(node.id).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    tracing::info!(node = %node.name, deployment = claim.deployment.id, project = claim.project.id, "deployment claimed");
    app.metrics.deployment(claim.deployment.status);
    let credential = match app.store.credential(claim.project.id).await? {
        Some(c) => match app.key.unseal(&c.sealed) {
            Ok(secret) => Some(AgentCredential {
                kind: c.kind,
                username: c.username,
                secret: secret.expose().to_string(),
            }),
            Err(e) => {
                tracing::error!(project = claim.project.id, error = %e, "cannot unseal the project's credential");
                None
            }
        },
        None => None,
    };
    Ok(Json(ClaimAnswer { claim, credential }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    status: DeployStatus,
    log_tail: Option<String>,
    error: Option<String>,
    ran_commit: Option<String>,
    ran_digests: Option<BTreeMap<String, String>>,
}

pub async fn report(
    State(app): State<Arc<App>>,
    Extension(node): Extension<Node>,
    Id(id): Id,
    Body(r): Body<Report>,
) -> ApiResult<Json<Deployment>> {
    let report = deployments::Report {
        status: r.status,
        log_tail: r.log_tail,
        error: r.error,
        ran_commit: r.ran_commit,
        ran_digests: r.ran_digests,
    };
    Ok(Json(deployments::report(&app, &node, id, report).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    offset: i64,
    chunk: String,
}

#[derive(Serialize)]
pub struct LogAnswer {
    /// A person asked to cancel the deployment: the node stops it.
    cancel: bool,
}

/// A chunk of the log of a deployment this node runs.
pub async fn log(
    State(app): State<Arc<App>>,
    Extension(node): Extension<Node>,
    Id(id): Id,
    Body(c): Body<LogChunk>,
) -> ApiResult<Json<LogAnswer>> {
    let cancel = deployments::append_log(&app, &node, id, c.offset, &c.chunk).await?;
    Ok(Json(LogAnswer { cancel }))
}
