//! `/api/projects`: HTTP in, a `service::projects` call, HTTP out.

use std::sync::Arc;

use axum::Json;
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::page::Paged;
use super::{ApiResult, Body, Id};
use crate::app::App;
use crate::service::page::{List, PageRequest};
use crate::service::projects::{self, CreateProject, UpdateProject};
use crate::store::{Deployment, ProjectRecord};

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

pub async fn deployments(
    State(app): State<Arc<App>>,
    Id(id): Id,
    uri: OriginalUri,
    Query(q): Query<PageQuery>,
) -> ApiResult<Paged<Deployment>> {
    let page = projects::deployments(&app, id, q.page(List::Deployments)?).await?;
    Ok(Paged(page, uri))
}

pub async fn deploy(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    Ok((StatusCode::CREATED, Json(projects::deploy(&app, id).await?)))
}
