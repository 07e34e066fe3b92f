//! Admin Settings: the master switch, the intervals and the concurrency,
//! each with its default and minimum; a refused value shows the service's
//! error beside its field.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::html;
use serde_json::{Map, Value};

use super::auth::{Posted, Signed, Web};
use super::layout::{self, Banner, Nav, PageResult};
use crate::app::App;
use crate::service;

/// What the person sees beside each field.
fn label(key: &str) -> &'static str {
    match key {
        "auto_deploy_poll_interval_seconds" => "Git poll interval (seconds)",
        "auto_deploy_image_watch_interval_seconds" => "Image watch interval (seconds)",
        "auto_deploy_poll_concurrency" => "Repositories polled at once",
        "node_offline_after_seconds" => "A node is offline after (seconds)",
        "decision_log_max_rows" => "Decision log: decisions kept",
        "decision_log_max_age_days" => "Decision log: days kept",
        _ => "Setting",
    }
}

pub async fn show(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    signed: Signed,
) -> PageResult {
    let banner = Banner::notice(web.take_flash(&signed).notice);
    render(
        &app,
        &signed,
        banner,
        None,
        &BTreeMap::new(),
        StatusCode::OK,
    )
    .await
}

async fn render(
    app: &App,
    signed: &Signed,
    banner: Banner,
    entered: Option<&Map<String, Value>>,
    errors: &BTreeMap<String, String>,
    status: StatusCode,
) -> PageResult {
    let settings = service::settings::get(app).await?;
    let fields = service::settings::number_fields(app).await?;
    let master = entered
        .and_then(|e| e.get("auto_deploy_master_enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(settings.auto_deploy_master_enabled);
    let body = html! {
        h1 { "Admin Settings" }
        form #settings method="post" action="/settings" {
            input type="hidden" name="csrf" value=(signed.csrf);
            section {
                label.inline for="auto_deploy_enabled" {
                    input #auto_deploy_enabled type="checkbox" name="auto_deploy_enabled" value="true"
                        checked[master] aria-describedby="auto_deploy_enabled-hint";
                    "Auto deploy (master switch)"
                }
                p #auto_deploy_enabled-hint .hint { "Off pauses every automatic deploy; each project keeps its own toggle. Default: on." }
            }
            div.grid {
                @for f in &fields {
                    @let shown = entered
                        .and_then(|e| e.get(f.key))
                        .map(|v| match v { Value::String(s) => s.clone(), other => other.to_string() })
                        .unwrap_or_else(|| f.value.to_string());
                    @let hint = format!("{}-hint", f.key);
                    @let err_id = format!("{}-error", f.key);
                    div {
                        label for=(f.key) { (label(f.key)) }
                        input id=(f.key) type="number" name=(f.key) value=(shown) required
                            inputmode="numeric" aria-describedby=(hint)
                            aria-invalid=[errors.contains_key(f.key).then_some("true")];
                        p.hint id=(hint) { "Default " (f.default) ", minimum " (f.min) ", maximum " (f.max) "." }
                        @if let Some(e) = errors.get(f.key) {
                            p.field-error id=(err_id) role="alert" { (e) }
                        }
                    }
                }
            }
            button #save-settings type="submit" { "Save settings" }
        }
    };
    Ok((
        status,
        layout::page(signed, Nav::Settings, "Settings", &banner, body),
    )
        .into_response())
}

pub async fn save(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    posted: Posted,
) -> PageResult {
    let f = &posted.fields;
    let mut update = Map::new();
    // An unchecked box is not sent at all: absent means off.
    update.insert(
        "auto_deploy_master_enabled".into(),
        Value::Bool(f.get("auto_deploy_enabled") == Some("true")),
    );
    let mut errors = BTreeMap::new();
    let mut entered = update.clone();
    for field in service::settings::number_fields(&app).await? {
        let Some(raw) = f.text(field.key) else {
            continue;
        };
        entered.insert(field.key.into(), Value::String(raw.clone()));
        match raw.parse::<u64>() {
            Ok(n) => {
                update.insert(field.key.into(), Value::from(n));
            }
            Err(_) => {
                errors.insert(
                    field.key.to_string(),
                    format!("{} must be a whole number of seconds or count", field.key),
                );
            }
        }
    }
    errors.extend(service::settings::check_each(&app, &update));
    if errors.is_empty() {
        match service::settings::put(&app, &update).await {
            Ok(_) => {
                web.notice(&posted.signed, "Settings saved");
                return Ok(Redirect::to("/settings").into_response());
            }
            Err(e) => {
                let e = layout::WebError::from(e);
                if e.status.is_server_error() {
                    return Err(e);
                }
                return render(
                    &app,
                    &posted.signed,
                    Banner::error(e.message),
                    Some(&entered),
                    &errors,
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await;
            }
        }
    }
    let banner = Banner::error("Nothing was saved: correct the fields marked below");
    render(
        &app,
        &posted.signed,
        banner,
        Some(&entered),
        &errors,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}
