//! The web UI, served by the daemon at `/` beside the API: server-rendered
//! HTML (maud templates compiled with the daemon), one CSS and one small JS
//! file embedded in the binary, nothing fetched from elsewhere. Every form
//! works without JavaScript; the script adds live updates and confirmations.
//!
//! Pages sign in with a session cookie (see `auth`), never a bearer token,
//! and the session authenticates only these pages and `/events/stream`:
//! the API under `/api` keeps its bearer tokens. Pages call the service
//! layer, as the API does.

mod assets;
mod auth;
mod events;
mod layout;
mod live;
mod nodes;
mod policy;
mod project;
mod projects;
mod settings;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio_util::sync::CancellationToken;

use crate::app::App;

pub use auth::Web;

/// The web UI's routes; [`daemon_router`] merges them with the API's.
/// Live event streams end when `shutdown` is cancelled.
pub fn router(app: Arc<App>, shutdown: CancellationToken) -> Router {
    router_with(app, Arc::new(Web::from_env(shutdown)))
}

pub fn router_with(app: Arc<App>, web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/projects") }))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/assets/app.css", get(assets::css))
        .route("/assets/app.js", get(assets::js))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/new", get(projects::new_form))
        .route("/projects/{id}", get(project::show).post(project::save))
        .route("/projects/{id}/auto-deploy", post(project::toggle))
        .route("/projects/{id}/push-token", post(project::push_token))
        .route("/projects/{id}/credentials", post(project::credentials))
        .route("/projects/{id}/deploy", post(project::deploy))
        .route("/projects/{id}/delete", post(project::delete))
        .route("/settings", get(settings::show).post(settings::save))
        .route("/nodes", get(nodes::list).post(nodes::add))
        .route("/nodes/{id}/delete", post(nodes::delete))
        .route("/policy", get(policy::show).post(policy::upload))
        .route("/policy/rollback", post(policy::rollback))
        .route("/events", get(events::list))
        .route("/events/stream", get(live::stream))
        .layer(middleware::from_fn(page_headers))
        .layer(Extension(web))
        .with_state(app)
}

/// The API and the web UI on one router: the API's routes and its JSON
/// fallback stay exactly as they are; the pages are routes of their own.
pub fn daemon_router(app: Arc<App>, shutdown: CancellationToken) -> Router {
    crate::api::router(app.clone())
        .merge(crate::observe::router(app.clone()))
        .merge(router(app, shutdown))
}

/// Every page: no caching of what a signed-in person saw, no framing, no
/// script or style from anywhere but the daemon itself.
async fn page_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/assets/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
