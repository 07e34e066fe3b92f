//! The decision log, policy dry runs and the shadow policy.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::page::Paged;
use super::{ApiError, ApiResult};
use crate::app::App;
use crate::decisions::replay::{DRY_RUN_DECISIONS, ReplayReport, recorded, replay};
use crate::decisions::shadow::ShadowReport;
use crate::policy::{Policy, PolicyInfo};
use crate::service::page::{List, Page, PageRequest};
use crate::store::{Decision, DecisionCall, DecisionQuery};

/// Largest candidate config, in bytes.
const MAX_CONFIG: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionParams {
    project_id: Option<i64>,
    deployment_id: Option<i64>,
    call: Option<String>,
    /// Older than this id; `cursor` is the same for clients that page.
    before: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Newest first, paged as every list (a `cursor` and `X-Next-Cursor`);
/// `before=<id>` still starts a page below an id.
pub async fn list(
    State(app): State<Arc<App>>,
    uri: OriginalUri,
    query: Result<Query<DecisionParams>, QueryRejection>,
) -> ApiResult<Paged<Decision>> {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "query parameters: project_id, deployment_id and before are whole numbers, \
             limit is 1-500, cursor is a next cursor, call is a policy function name",
        ));
    };
    let call = match q.call.as_deref() {
        None => None,
        Some(name) => Some(DecisionCall::parse(name).ok_or_else(|| {
            let names: Vec<&str> = DecisionCall::ALL.iter().map(|c| c.as_str()).collect();
            ApiError::bad_request(format!("call must be one of {}", names.join(", ")))
        })?),
    };
    let page = PageRequest::parse(List::Decisions, q.limit, q.cursor.as_deref())?;
    if page.after.is_some() && q.before.is_some() {
        return Err(ApiError::bad_request("give cursor or before, not both"));
    }
    let rows = app
        .store
        .decisions(&DecisionQuery {
            project_id: q.project_id,
            deployment_id: q.deployment_id,
            call,
            before: page.after.or(q.before),
            since: None,
            limit: page.fetch(),
        })
        .await?;
    Ok(Paged(Page::of(List::Decisions, page, rows, |d| d.id), uri))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateParams {
    #[serde(default)]
    pub dry_run: bool,
}

pub fn candidate_params(
    query: Result<Query<CandidateParams>, QueryRejection>,
) -> ApiResult<CandidateParams> {
    query
        .map(|Query(q)| q)
        .map_err(|_| ApiError::bad_request("the only query parameter is dry_run=true or false"))
}

/// A candidate with its config, as a JSON body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateUpload {
    /// The component's bytes, base64 (standard alphabet, padded).
    wasm_base64: String,
    /// Replaces `facts.config` in the calls the candidate answers.
    #[serde(default)]
    config: Option<String>,
}

/// The candidate and its config from a request, as `PUT /api/policy` takes
/// a policy: the body is the component's bytes, or (with `Content-Type:
/// application/json`) `{"wasm_base64": "...", "config": "..."}`.
pub fn candidate_upload(headers: &HeaderMap, body: Bytes) -> ApiResult<(Bytes, Option<String>)> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !json {
        return Ok((body, None));
    }
    let upload: CandidateUpload = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "a JSON policy upload is {{\"wasm_base64\": \"...\", \"config\": \"...\"}}: {e}"
        ))
    })?;
    if upload.config.as_ref().is_some_and(|c| c.len() > MAX_CONFIG) {
        return Err(ApiError::bad_request(format!(
            "config is longer than {MAX_CONFIG} bytes"
        )));
    }
    use base64::Engine;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(upload.wasm_base64.trim())
        .map_err(|_| ApiError::bad_request("wasm_base64 is not valid base64"))?;
    Ok((Bytes::from(wasm), upload.config))
}

/// Loads a candidate off the async threads; an invalid one is a 422.
async fn load_candidate(app: &Arc<App>, body: Bytes, source: &str) -> ApiResult<Policy> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body must be a WebAssembly component",
        ));
    }
    let (app, source) = (app.clone(), source.to_string());
    tokio::task::spawn_blocking(move || app.policy.load_candidate(&body, &source))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("policy load failed: {e}"),
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

#[derive(Serialize)]
pub struct SelfTest {
    pub passed: bool,
    pub failures: Vec<String>,
}

#[derive(Serialize)]
pub struct DryRun {
    pub dry_run: bool,
    pub policy: PolicyInfo,
    /// Whether the replay ran with a config of the candidate's own.
    pub config_set: bool,
    pub self_test: SelfTest,
    /// The newest recorded decisions (at most 1,000) replayed against it.
    pub replay: ReplayReport,
}

/// `PUT /api/policy?dry_run=true`: the candidate's self-test and its replay
/// over the newest recorded decisions. Nothing is switched or stored.
pub async fn dry_run(
    app: &Arc<App>,
    body: Bytes,
    config: Option<String>,
) -> ApiResult<Json<DryRun>> {
    let candidate = load_candidate(app, body, "api (dry run)").await?;
    let decisions = recorded(app.store.as_ref(), None, DRY_RUN_DECISIONS)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading the decision log failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the daemon's log",
            )
        })?;
    let answer = tokio::task::spawn_blocking(move || {
        let failures = crate::policy::selftest::self_test(&candidate);
        let report = replay(&candidate, config.as_deref(), &decisions);
        DryRun {
            dry_run: true,
            policy: candidate.info().clone(),
            config_set: config.is_some(),
            self_test: SelfTest {
                passed: failures.is_empty(),
                failures,
            },
            replay: report,
        }
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the dry run stopped: {e}"),
        )
    })?;
    Ok(Json(answer))
}

/// Starts a candidate as the shadow policy (replacing a running shadow). It
/// must pass the self-test, as a policy swapped in must.
pub async fn start_shadow(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ShadowReport>)> {
    let (wasm, config) = candidate_upload(&headers, body)?;
    let candidate = load_candidate(&app, wasm, "api (shadow)").await?;
    let (candidate, failures) = tokio::task::spawn_blocking(move || {
        let failures = crate::policy::selftest::self_test(&candidate);
        (candidate, failures)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the self-test stopped: {e}"),
        )
    })?;
    if !failures.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "policy failed its self-test ({} of the conformance vectors): {}",
                failures.len(),
                failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let info = candidate.info().clone();
    let report = app.shadow.start(candidate, config).map_err(|e| {
        tracing::error!(error = %e, "cannot start the shadow policy's thread");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot start the shadow policy; see the daemon's log",
        )
    })?;
    tracing::info!(policy = %info.name, version = %info.version, sha256 = %info.sha256, "shadow policy started");
    app.store
        .log_event(
            None,
            crate::store::EventKind::PolicyShadowStarted,
            &format!("{} {} ({})", info.name, info.version, info.sha256),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum ShadowAnswer {
    Running(ShadowReport),
    None { active: bool },
}

pub async fn get_shadow(State(app): State<Arc<App>>) -> Json<ShadowAnswer> {
    Json(match app.shadow.current() {
        Some(s) => ShadowAnswer::Running(s.report(true)),
        None => ShadowAnswer::None { active: false },
    })
}

/// Stops the shadow; answers with its final counts.
pub async fn stop_shadow(State(app): State<Arc<App>>) -> ApiResult<Json<ShadowReport>> {
    let report = app
        .shadow
        .stop()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no shadow policy is running"))?;
    tracing::info!(
        compared = report.counts.compared,
        differ = report.counts.differ,
        "shadow policy stopped"
    );
    app.store
        .log_event(
            None,
            crate::store::EventKind::PolicyShadowStopped,
            &format!(
                "{} {} ({}): {} decisions compared, {} differed",
                report.policy.name,
                report.policy.version,
                report.policy.sha256,
                report.counts.compared,
                report.counts.differ
            ),
        )
        .await?;
    Ok(Json(report))
}
