//! `GET /events/stream`: server-sent events for the pages' live view. Each
//! deployment queued or changing status on this replica is sent as
//! `event: deployment` with `{"project_id", "deployment_id", "status"}`.
//! Authenticated by the session cookie like the pages; the stream ends
//! when its session does (checked between events), so signing out closes
//! it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::auth::{Signed, Web};
use crate::app::App;
use crate::service;
use axum::Extension;

/// How often the stream says it is alive (and re-checks its session).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// One open stream.
struct Live {
    app: Arc<App>,
    /// The session cookie's token, to check the session is still there.
    cookie: String,
    changes: tokio::sync::broadcast::Receiver<crate::store::DeploymentChange>,
    checked: Instant,
    open: bool,
}

pub async fn stream(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
) -> Response {
    let cookie = match Signed::of(&app, &headers).await {
        Ok(Some(_)) => super::auth::cookie(&headers, super::auth::SESSION_COOKIE)
            .unwrap_or_default()
            .to_string(),
        Ok(None) => {
            return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
        }
        Err(e) => return e.into_response(),
    };
    let changes = app.store.deployment_changes();
    let state = Live {
        app,
        cookie,
        changes,
        checked: Instant::now(),
        open: true,
    };
    let stream = futures::stream::unfold(state, |mut live| async move {
        if !live.open {
            return None;
        }
        // The session is checked at least every KEEPALIVE, even while
        // events keep coming.
        let wait = KEEPALIVE.saturating_sub(live.checked.elapsed());
        let chunk: String = match tokio::time::timeout(wait, live.changes.recv()).await {
            Ok(Ok(change)) => format!(
                "event: deployment\ndata: {}\n\n",
                serde_json::to_string(&change).unwrap_or_default()
            ),
            // Missed some: the page reloads to be exact again.
            Ok(Err(RecvError::Lagged(_))) => "event: reload\ndata: {}\n\n".into(),
            Ok(Err(RecvError::Closed)) => return None,
            Err(_) => ": keepalive\n\n".into(),
        };
        if live.checked.elapsed() >= KEEPALIVE {
            live.checked = Instant::now();
            let signed_in = matches!(
                service::sessions::find(&live.app, &live.cookie).await,
                Ok(Some(_))
            );
            if !signed_in {
                live.open = false;
                let end = "event: end\ndata: {}\n\n";
                return Some((Ok::<_, std::io::Error>(Bytes::from(end)), live));
            }
        }
        Some((Ok(Bytes::from(chunk)), live))
    });
    // The first bytes go out at once, so the browser sees the stream open.
    let hello = futures::stream::once(async { Ok(Bytes::from_static(b"retry: 3000\n\n")) });
    let shutdown = web.shutdown.clone().cancelled_owned();
    let stream = futures::StreamExt::take_until(futures::StreamExt::chain(hello, stream), shutdown);
    let body = Body::from_stream(stream);
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}
