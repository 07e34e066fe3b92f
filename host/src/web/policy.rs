//! The active policy (name, version, sha256), uploading a component (it
//! must pass its self-test before it runs) and rolling back.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::auth::{Posted, Signed, Web, csrf_matches, csrf_refused};
use super::layout::{self, Banner, Nav, PageResult, WebError};
use crate::app::App;
use crate::service;

pub async fn show(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    signed: Signed,
) -> PageResult {
    let banner = Banner::notice(web.take_flash(&signed).notice);
    Ok(render(&app, &signed, &banner, StatusCode::OK))
}

fn render(app: &App, signed: &Signed, banner: &Banner, status: StatusCode) -> Response {
    let active = service::policy::current(app);
    let info = &active.info;
    let body = html! {
        h1 { "Policy" }
        section aria-labelledby="active-heading" {
            h2 #active-heading { "Active policy" }
            dl.facts {
                dt { "Name" } dd #policy-name { (info.name) }
                dt { "Version" } dd #policy-version { (info.version) }
                dt { "sha256" } dd #policy-sha256 .mono { (info.sha256) }
                dt { "Contract" } dd #policy-contract { (info.wit_version.to_string()) }
                dt { "Source" } dd #policy-source { (info.source) }
                dt { "Config" } dd #policy-config {
                    @match &active.config_sha256 { Some(sha) => span.mono { (sha) }, None => "none" }
                }
            }
        }
        section aria-labelledby="upload-heading" {
            h2 #upload-heading { "Upload a policy" }
            p.hint { "A WebAssembly component built for the policy contract. It is checked and self-tested against the contract's conformance vectors first; the running policy stays unless it passes." }
            form #upload-policy method="post" action="/policy" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="policy-file" { "Component (.wasm)" }
                input #policy-file type="file" name="policy" accept=".wasm,application/wasm" required;
                button #upload type="submit" { "Upload and switch" }
            }
        }
        section aria-labelledby="rollback-heading" {
            h2 #rollback-heading { "Roll back" }
            form #rollback-policy method="post" action="/policy/rollback" {
                input type="hidden" name="csrf" value=(signed.csrf);
                button .secondary #rollback type="submit" { "Roll back to the previous policy" }
            }
        }
    };
    (
        status,
        layout::page(signed, Nav::Policy, "Policy", banner, body),
    )
        .into_response()
}

pub async fn upload(
    State(app): State<Arc<App>>,
    signed: Signed,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> PageResult {
    let Ok(mut multipart) = multipart else {
        return Err(WebError::new(
            StatusCode::BAD_REQUEST,
            "the upload must be a multipart form with the component in it",
        ));
    };
    let mut csrf = None;
    let mut wasm = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(WebError::new(
                    e.status(),
                    format!("the upload could not be read: {}", e.body_text()),
                ));
            }
        };
        match field.name() {
            Some("csrf") => csrf = field.text().await.ok(),
            Some("policy") => {
                wasm = match field.bytes().await {
                    Ok(b) => Some(b.to_vec()),
                    Err(e) => {
                        return Err(WebError::new(
                            e.status(),
                            format!("the upload could not be read: {}", e.body_text()),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    // Checked before anything of the upload is used.
    if !csrf_matches(csrf.as_deref(), &signed.csrf) {
        return Ok(csrf_refused());
    }
    let wasm = wasm.unwrap_or_default();
    match service::policy::install(&app, wasm, None).await {
        Ok(active) => {
            let i = &active.info;
            let text = format!(
                "Policy {} {} ({}) passed its self-test against the contract's conformance vectors and is now active",
                i.name,
                i.version,
                layout::short(&i.sha256)
            );
            Ok(render(
                &app,
                &signed,
                &Banner::notice(Some(text)),
                StatusCode::OK,
            ))
        }
        Err(e) => {
            let e = WebError::from(e);
            if e.status.is_server_error() {
                return Err(e);
            }
            let text = format!(
                "The policy was refused; the active one stays: {}",
                e.message
            );
            Ok(render(&app, &signed, &Banner::error(text), e.status))
        }
    }
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    _headers: HeaderMap,
    posted: Posted,
) -> PageResult {
    match service::policy::rollback(&app).await {
        Ok(active) => {
            web.notice(
                &posted.signed,
                format!(
                    "Rolled back to {} {} ({})",
                    active.info.name,
                    active.info.version,
                    layout::short(&active.info.sha256)
                ),
            );
            Ok(Redirect::to("/policy").into_response())
        }
        Err(e) => {
            let e = WebError::from(e);
            if e.status.is_server_error() {
                return Err(e);
            }
            Ok(render(
                &app,
                &posted.signed,
                &Banner::error(e.message),
                e.status,
            ))
        }
    }
}
