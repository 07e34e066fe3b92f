//! Notification targets under `/api/notifications`: no answer ever holds a
//! target's URL, token, secret or password (a webhook secret the daemon
//! made is in the create answer only).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiResult, Body, Id};
use crate::app::App;
use crate::service::notifications::{self, Added, NewTargetRequest};
use crate::store::{NotificationTarget, OutboxEntry};

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<Vec<NotificationTarget>>> {
    Ok(Json(notifications::list(&app).await?))
}

pub async fn add(
    State(app): State<Arc<App>>,
    Body(req): Body<NewTargetRequest>,
) -> ApiResult<(StatusCode, Json<Added>)> {
    Ok((
        StatusCode::CREATED,
        Json(notifications::add(&app, req).await?),
    ))
}

pub async fn show(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<Json<NotificationTarget>> {
    Ok(Json(notifications::get(&app, id).await?))
}

pub async fn delete(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<StatusCode> {
    notifications::delete(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deliveries(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<Json<Vec<OutboxEntry>>> {
    Ok(Json(notifications::deliveries(&app, id).await?))
}
