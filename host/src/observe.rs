//! The operator's endpoints: `/healthz` (the process answers), `/readyz`
//! (the store answers, a policy is loaded, every running loop ticked
//! lately) and `/metrics` (Prometheus). Health endpoints are open: systemd,
//! Docker and load balancers carry no token, and they say nothing secret.
//! `/metrics` on the main listener takes the admin bearer token; on
//! `AUTODEPLOY_METRICS_LISTEN` it is open, for a scraper on a private
//! network.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::app::App;
use crate::loops::RunState;

/// How long `/readyz` and a scrape wait for the store.
const STORE_WAIT: Duration = Duration::from_secs(2);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/healthz`, `/readyz` and the bearer-protected `/metrics`, for the main
/// listener.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_with_token))
        .with_state(app)
}

/// `/metrics` alone and open, for `AUTODEPLOY_METRICS_LISTEN`.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "alive"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (ready, body) = readiness(&app).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Each check's verdict, and whether all passed.
pub async fn readiness(app: &App) -> (bool, Value) {
    let mut failed = Vec::new();
    let settings = match tokio::time::timeout(STORE_WAIT, app.store.settings()).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the store failed a query");
            None
        }
        Err(_) => {
            tracing::warn!("readyz: the store did not answer within {STORE_WAIT:?}");
            None
        }
    };
    let store = if settings.is_some() {
        "ok"
    } else {
        failed.push("store".to_string());
        "the store did not answer a query"
    };
    let policy = app.policy.current();
    let policy = json!({"ok": true, "sha256": policy.info().sha256});
    let now = crate::store::now();
    let mut loops = serde_json::Map::new();
    if let Some(settings) = &settings {
        for (name, state, interval) in app.loops.intervals(app, settings) {
            let window = 2 * interval.as_secs().max(1) as i64;
            let verdict = match state.state {
                // Its start-up turned it off on purpose (e.g. the image
                // watcher without a reachable registry): nothing to wait for.
                RunState::Off => json!({"ok": true, "state": "off"}),
                RunState::Stopped => json!({"ok": false, "state": "stopped"}),
                RunState::Starting | RunState::Running => {
                    let since = state.last_tick_at.or(state.running_since).unwrap_or(now);
                    let age = now - since;
                    json!({"ok": age <= window, "seconds_since_tick": age, "limit_seconds": window})
                }
            };
            if verdict["ok"] != true {
                failed.push(name.to_string());
            }
            loops.insert(name.to_string(), verdict);
        }
    }
    let ready = failed.is_empty();
    (
        ready,
        json!({"ready": ready, "failed": failed, "store": store, "policy": policy, "loops": loops}),
    )
}

async fn metrics_with_token(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let denied = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": why})),
        )
            .into_response()
    };
    let Some(token) = crate::api::bearer(&headers) else {
        return denied("missing bearer token");
    };
    match app.is_admin(token).await {
        Ok(true) => metrics(State(app), headers).await,
        Ok(false) => denied("invalid admin token"),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the admin token could not be checked");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": "the store did not answer"})),
            )
                .into_response()
        }
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// Prometheus text format.
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let observed = async {
        let settings = app.store.settings().await?;
        let since = crate::store::now() - settings.node_offline_after_seconds as i64;
        app.store.observed(since).await
    };
    // Without the store the gauges keep their last values; the counters
    // still come.
    let observed = match tokio::time::timeout(STORE_WAIT, observed).await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the store gauges could not be read");
            None
        }
        Err(_) => None,
    };
    let text = app.metrics.encode(observed);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            crate::metrics::to_text_format(&text),
        )
            .into_response()
    }
}
