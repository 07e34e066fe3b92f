//! A minimal registry speaking only what docker-registry cannot be made to
//! do: answering 429 with Retry-After. It also hands out bearer tokens, to
//! count them; the token flow itself is tested against a real
//! docker-registry and `token_issuer` (tests/registry_promises.rs).
//! Counts the requests it gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[derive(Default)]
pub struct Counts {
    pub tokens: AtomicUsize,
    pub heads: AtomicUsize,
}

impl Counts {
    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::SeqCst)
    }
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

struct Fake {
    port: u16,
    rate_limited: bool,
    /// How long each answer (token or manifest) takes.
    delay: Duration,
    counts: Arc<Counts>,
}

/// Starts a fake registry on loopback; with `rate_limited` every manifest
/// request gets 429 and `Retry-After: 120`. Runs until the test process ends.
pub async fn start(rate_limited: bool) -> (u16, Arc<Counts>) {
    start_slow(rate_limited, Duration::ZERO).await
}

/// As [`start`], each answer taking `delay`.
pub async fn start_slow(rate_limited: bool, delay: Duration) -> (u16, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let fake = Arc::new(Fake {
        port,
        rate_limited,
        delay,
        counts: counts.clone(),
    });
    let app = Router::new()
        .route("/token", get(token))
        .route("/v2/{*rest}", any(manifest))
        .with_state(fake);
    tokio::spawn(axum::serve(listener, app).into_future());
    (port, counts)
}

async fn token(State(f): State<Arc<Fake>>) -> impl IntoResponse {
    f.counts.tokens.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(f.delay).await;
    axum::Json(serde_json::json!({"token": "fake-token", "expires_in": 300}))
}

async fn manifest(
    State(f): State<Arc<Fake>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !rest.contains("/manifests/") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.counts.heads.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(f.delay).await;
    if f.rate_limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "120")],
        )
            .into_response();
    }
    let repo = rest.split("/manifests/").next().unwrap_or_default();
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some("Bearer fake-token")
    {
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fake\",scope=\"repository:{repo}:pull\"",
            f.port
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    (StatusCode::OK, [("docker-content-digest", DIGEST)]).into_response()
}
