//! `/api/projects`: HTTP in, a `service::projects` call, HTTP out.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::page::Paged;
use super::{ApiError, ApiResult, Body, DeploymentPath, Id, RegistryPath, redact_serde};
use crate::app::App;
use crate::service::deployments;
use crate::service::page::{List, PageRequest};
use crate::service::projects::{self, CreateProject, UpdateProject};
use crate::service::registry_creds::{self, RegistryCredentialInfo, RegistryCredentialInput};
use crate::store::{Cancelled, Deployment, LogPage, ProjectFilter, ProjectRecord, ProjectSummary};

/// `?limit=N&cursor=C` of a paged list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page(&self, list: List) -> ApiResult<PageRequest> {
        Ok(PageRequest::parse(
            list,
            self.limit,
            self.cursor.as_deref(),
        )?)
    }
}

/// A project as answered, with the push token when one was just made.
#[derive(Serialize)]
pub struct ProjectAnswer {
    #[serde(flatten)]
    project: ProjectRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_token: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    uri: OriginalUri,
    Query(q): Query<PageQuery>,
) -> ApiResult<Paged<ProjectRecord>> {
    let page = projects::list(&app, q.page(List::Projects)?).await?;
    Ok(Paged(page, uri))
}

/// Each project as a line of a list: its type, toggle and newest
/// deployment's status, a page at a time (what the CLI's table shows,
/// without a request per project).
pub async fn summaries(
    State(app): State<Arc<App>>,
    uri: OriginalUri,
    Query(q): Query<PageQuery>,
) -> ApiResult<Paged<ProjectSummary>> {
    let all = ProjectFilter::default();
    let page = projects::browse(&app, &all, q.page(List::Projects)?).await?;
    Ok(Paged(page, uri))
}

pub async fn show(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<Json<ProjectRecord>> {
    Ok(Json(projects::show(&app, id).await?))
}

pub async fn create(
    State(app): State<Arc<App>>,
    Body(req): Body<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectAnswer>)> {
    let made = projects::create(&app, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectAnswer {
            project: made.project,
            push_token: made.push_token.map(|t| t.expose().to_string()),
        }),
    ))
}

pub async fn update(
    State(app): State<Arc<App>>,
    Id(id): Id,
    Body(req): Body<UpdateProject>,
) -> ApiResult<Json<ProjectRecord>> {
    Ok(Json(projects::update(&app, id, req).await?))
}

pub async fn delete(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<StatusCode> {
    projects::delete(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct PushToken {
    push_token: String,
}

pub async fn rotate_push_token(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<Json<PushToken>> {
    let token = projects::rotate_push_token(&app, id).await?;
    Ok(Json(PushToken {
        push_token: token.expose().to_string(),
    }))
}

#[derive(Serialize)]
pub struct WebhookSecret {
    webhook_secret: String,
    /// Where the git host sends its pushes (path on this daemon).
    path: String,
}

pub async fn rotate_webhook_secret(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<Json<WebhookSecret>> {
    let secret = crate::service::webhooks::rotate_secret(&app, id).await?;
    Ok(Json(WebhookSecret {
        webhook_secret: secret.expose().to_string(),
        path: format!("/hooks/git/{id}"),
    }))
}

/// `GET /projects/{id}/registry-credentials`: registry and username of
/// each, never a password.
pub async fn registry_credentials(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<Json<Vec<RegistryCredentialInfo>>> {
    Ok(Json(registry_creds::list(&app, id).await?))
}

/// `PUT /projects/{id}/registry-credentials` with `{registry, username,
/// password}`: sets (or replaces) the project's credential for that host.
pub async fn set_registry_credential(
    State(app): State<Arc<App>>,
    Id(id): Id,
    Body(input): Body<RegistryCredentialInput>,
) -> ApiResult<Json<Vec<RegistryCredentialInfo>>> {
    Ok(Json(registry_creds::set(&app, id, input).await?))
}

pub async fn delete_registry_credential(
    State(app): State<Arc<App>>,
    RegistryPath(id, registry): RegistryPath,
) -> ApiResult<StatusCode> {
    registry_creds::delete(&app, id, &registry).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deployments(
    State(app): State<Arc<App>>,
    Id(id): Id,
    uri: OriginalUri,
    Query(q): Query<PageQuery>,
) -> ApiResult<Paged<Deployment>> {
    let page = projects::deployments(&app, id, q.page(List::Deployments)?).await?;
    Ok(Paged(page, uri))
}

/// `POST /projects/{id}/deployments`: no body deploys now; a body
/// `{"from_deployment": N}` redeploys N's recorded state.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    from_deployment: Option<i64>,
}

pub async fn deploy(
    State(app): State<Arc<App>>,
    Id(id): Id,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        DeployRequest {
            from_deployment: None,
        }
    } else {
        serde_json::from_slice::<DeployRequest>(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid request body: {}",
                redact_serde(&e.to_string())
            ))
        })?
    };
    let d = match req.from_deployment {
        Some(from) => deployments::redeploy(&app, id, from).await?,
        None => projects::deploy(&app, id).await?,
    };
    Ok((StatusCode::CREATED, Json(d)))
}

/// 200 when a queued deployment was cancelled, 202 when its node was asked
/// to stop a running one.
pub async fn cancel(
    State(app): State<Arc<App>>,
    DeploymentPath(project, id): DeploymentPath,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let (d, done) = deployments::cancel(&app, project, id).await?;
    let status = match done {
        Cancelled::Now => StatusCode::OK,
        Cancelled::Requested => StatusCode::ACCEPTED,
    };
    Ok((status, Json(d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    after: Option<i64>,
}

pub async fn log(
    State(app): State<Arc<App>>,
    DeploymentPath(project, id): DeploymentPath,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Json<LogPage>> {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "the only query parameter is after=N, a byte offset (0 or more)",
        ));
    };
    Ok(Json(deployments::log(&app, project, id, q.after).await?))
}
