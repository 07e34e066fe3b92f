//! A project's page: the Auto Deploy toggle, its fields, the push URL and
//! token, the write-only credentials form, the tracked state, Deploy now
//! and its deployments with their logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::auth::{Fields, Posted, Signed, Web};
use super::layout::{self, Banner, Nav, PageResult, WebError};
use super::projects::{Entered, number, project_fields};
use crate::app::App;
use crate::secrets::Secret;
use crate::service::checks::CredentialInput;
use crate::service::page::{List, PageRequest};
use crate::service::projects::UpdateProject;
use crate::service::{self, ServiceError};
use crate::store::{GitSource, ProjectRecord, ProjectType, now};

/// What a render of the page adds to the stored project.
#[derive(Default)]
struct Extra {
    status: Option<StatusCode>,
    banner: Banner,
    /// The policy's refusal of a toggle, shown beside it.
    toggle_error: Option<String>,
    /// A push token just made: shown this once.
    push_token: Option<Secret>,
    /// The edit form as sent, when it was refused.
    entered: Option<Vec<(String, String)>>,
    /// An error of the credentials form, shown beside it.
    credentials_error: Option<String>,
    cursor: Option<String>,
}

fn project_id(raw: &str) -> Result<i64, WebError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| WebError::not_found("project"))
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    cursor: Option<String>,
}

pub async fn show(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    signed: Signed,
    headers: HeaderMap,
    Path(raw): Path<String>,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let id = project_id(&raw)?;
    let flash = web.take_flash(&signed);
    let push_token = match flash.push_token {
        Some((pid, token)) if pid == id => Some(token),
        _ => None,
    };
    let extra = Extra {
        banner: Banner::notice(flash.notice),
        push_token,
        cursor: query.ok().and_then(|Query(q)| q.cursor),
        ..Extra::default()
    };
    render(&app, &web, &signed, &headers, id, extra).await
}

/// The fields of a stored project, as the edit form shows them.
fn stored_values(p: &ProjectRecord) -> Vec<(String, String)> {
    let f = &p.fields;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    vec![
        ("name".into(), f.name.clone()),
        (
            "git_url".into(),
            f.git_url
                .as_deref()
                .map(crate::git::shown_url)
                .unwrap_or_default(),
        ),
        ("git_branch".into(), f.git_branch.clone()),
        ("compose_file_path".into(), f.compose_file_path.clone()),
        ("expose_service".into(), opt(&f.expose_service)),
        ("expose_port".into(), num(f.expose_port)),
        ("image_ref".into(), opt(&f.image_ref)),
        ("container_port".into(), num(f.container_port)),
        ("dockerfile_path".into(), f.deploy.dockerfile_path.clone()),
        ("health_probe_path".into(), opt(&f.deploy.health_probe_path)),
        (
            "health_timeout_seconds".into(),
            f.deploy.health_timeout_seconds.to_string(),
        ),
        ("rollback".into(), f.deploy.rollback.as_str().into()),
    ]
}

async fn render(
    app: &App,
    web: &Web,
    signed: &Signed,
    headers: &HeaderMap,
    id: i64,
    extra: Extra,
) -> PageResult {
    let p = service::projects::show(app, id).await?;
    let page = match PageRequest::parse(List::Deployments, Some(50), extra.cursor.as_deref()) {
        Ok(page) => page,
        Err(_) => PageRequest::parse(List::Deployments, Some(50), None)?,
    };
    let deployments = service::projects::deployments(app, id, page).await?;
    let nodes: BTreeMap<i64, String> =
        service::nodes::list(app, PageRequest::parse(List::Nodes, Some(1000), None)?)
            .await?
            .items
            .into_iter()
            .map(|n| (n.node.id, n.node.name))
            .collect();
    let f = &p.fields;
    let hosted = f.git_source == GitSource::Hosted;
    let entered = Entered::from_values(extra.entered.unwrap_or_else(|| stored_values(&p)));
    let base = match &web.public_url {
        Some(u) => u.clone(),
        None => format!(
            "http://{}",
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1")
        ),
    };
    let t = now();
    let on = f.auto_deploy_enabled;
    let body = html! {
        h1 #project-name { (f.name) }
        dl.facts {
            dt { "Type" } dd #project-type { (f.project_type.as_str()) }
            dt { "Git source" } dd { (f.git_source.as_str()) }
            @if let Some(node) = p.pinned_node_id {
                dt { "Pinned to node" } dd { (nodes.get(&node).cloned().unwrap_or_else(|| node.to_string())) }
            }
        }
        @if f.project_type != ProjectType::Tunnel {
            section aria-labelledby="auto-deploy-heading" {
                h2 #auto-deploy-heading { "Auto Deploy" }
                form #auto-deploy method="post" action={ "/projects/" (id) "/auto-deploy" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    input type="hidden" name="enable" value=(if on { "false" } else { "true" });
                    button #auto-deploy-toggle .toggle type="submit" aria-pressed=(if on { "true" } else { "false" }) {
                        "Auto Deploy: " (if on { "on" } else { "off" })
                    }
                }
                @if let Some(reason) = &extra.toggle_error {
                    p #auto-deploy-error .field-error role="alert" { (reason) }
                }
                p.hint { "When on, pushes, polls and image updates deploy this project by themselves; the policy decides whether it may be on." }
            }
        }
        section aria-labelledby="deploy-heading" {
            h2 #deploy-heading { "Deploy" }
            div.row-actions {
                form #deploy method="post" action={ "/projects/" (id) "/deploy" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    button #deploy-now type="submit" { "Deploy now" }
                }
            }
        }
        section aria-labelledby="tracked-heading" {
            h2 #tracked-heading { "Tracked state" }
            dl.facts {
                dt { "Commit" }
                dd #tracked-commit .mono {
                    @if p.last_tracked_commit_sha.is_empty() { "none yet" } @else { (p.last_tracked_commit_sha) }
                }
            }
            div.table-wrap {
                table #image-digests {
                    thead { tr { th scope="col" { "Image" } th scope="col" { "Digest" } } }
                    tbody {
                        @for (image, digest) in &p.last_tracked_image_digests {
                            tr { td.image.mono { (image) } td.digest.mono { (digest) } }
                        }
                    }
                }
            }
            @if p.last_tracked_image_digests.is_empty() { p.hint { "No image digests tracked." } }
        }
        section aria-labelledby="deployments-heading" {
            h2 #deployments-heading { "Deployments" }
            div.table-wrap {
                table #deployments .stack data-project-id=(id) {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { "Source" }
                        th scope="col" { "Status" }
                        th scope="col" { "Reason" }
                        th scope="col" { "Target" }
                        th scope="col" { "Policy" }
                        th scope="col" { "Node" }
                        th scope="col" { "When" }
                    } }
                    tbody {
                        @for d in &deployments.items {
                            tr data-deployment-id=(d.id) {
                                td.id data-label="#" { (d.id) }
                                td.source data-label="Source" { (d.sources.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
                                td class={ "status status-" (d.status.as_str()) } data-label="Status" { (d.status.as_str()) }
                                td.reason data-label="Reason" {
                                    (d.reason)
                                    @if let Some(e) = &d.error { br; span.field-error { (e) } }
                                    @if d.repeat_count > 1 { br; span.hint { "repeated " (d.repeat_count) " times" } }
                                    details.log {
                                        summary { "Log" }
                                        pre { (d.log_tail.as_deref().unwrap_or("(no log yet)")) }
                                    }
                                }
                                td.target.mono data-label="Target" {
                                    @if let Some(c) = &d.target_commit { (layout::short(c)) }
                                    @if let Some(ds) = &d.target_digests {
                                        @for (image, digest) in ds { br; (image) " → " (layout::short(digest.trim_start_matches("sha256:"))) }
                                    }
                                }
                                td.policy data-label="Policy" { (d.policy_name) " " span.mono { (layout::short(&d.policy_sha256)) } }
                                td.node data-label="Node" { @if let Some(n) = d.node_id { (nodes.get(&n).cloned().unwrap_or_else(|| n.to_string())) } @else { "—" } }
                                td.at data-label="When" { (layout::time_ago(d.created_at, t)) }
                            }
                        }
                    }
                }
            }
            @if deployments.items.is_empty() { p #no-deployments .hint { "No deployments yet." } }
            @if let Some(c) = &deployments.next_cursor {
                p.pager { a #more-deployments href={ "/projects/" (id) "?cursor=" (c) } { "Older deployments" } }
            }
        }
        @if hosted {
            section aria-labelledby="push-heading" {
                h2 #push-heading { "Push URL" }
                p { "Push to " code #push-url { (base) "/git/" (id) ".git" } " with user " code { "push" } " and the push token as password." }
                @if let Some(token) = &extra.push_token {
                    p { "The push token, shown this once: copy it now." }
                    code #push-token .secret { (token.expose()) }
                }
                form #regenerate-push-token method="post" action={ "/projects/" (id) "/push-token" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    button .secondary type="submit" { "Regenerate push token" }
                }
            }
        }
        section aria-labelledby="edit-heading" {
            h2 #edit-heading { "Settings of this project" }
            form #edit-project method="post" action={ "/projects/" (id) } {
                input type="hidden" name="csrf" value=(signed.csrf);
                div.grid {
                    (super::projects::text_input("name", "Name", entered.get("name"), "1-100 letters, digits, '-', '_' or '.'", true))
                    div {
                        label for="project_type" { "Type" }
                        select #project_type name="project_type" disabled {
                            option value=(f.project_type.as_str()) selected { (f.project_type.as_str()) }
                        }
                        p.hint { "fixed once created" }
                    }
                    div {
                        label for="git_source" { "Git source" }
                        select #git_source name="git_source" disabled {
                            option value=(f.git_source.as_str()) selected { (f.git_source.as_str()) }
                        }
                    }
                }
                (project_fields(&entered))
                button #save type="submit" { "Save" }
            }
        }
        section aria-labelledby="credentials-heading" {
            h2 #credentials-heading { "Credentials" }
            p #credentials-state {
                @match &p.credentials {
                    Some(c) => { "Stored: " (c.kind.as_str()) @if let Some(u) = &c.username { ", user " (u) } ". The secret is never shown." },
                    None => "None stored.",
                }
                @if hosted { " Hosted projects need none: pushes use the push token." }
            }
            form #credentials method="post" action={ "/projects/" (id) "/credentials" } autocomplete="off" {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="credential_kind" { "Kind" }
                select #credential_kind name="credential_kind" {
                    option value="auto" { "from what is pasted (an SSH private key, else a token)" }
                    option value="https" { "https: user and token" }
                    option value="ssh" { "ssh: private key" }
                    option value="remove" { "remove the stored credentials" }
                }
                label for="credential_username" { "User (https; default git)" }
                input #credential_username type="text" name="credential_username" autocomplete="off";
                label for="credentials-secret" { "Token or private key (write-only)" }
                textarea #credentials-secret name="credentials" autocomplete="off" spellcheck="false" {}
                @if let Some(e) = &extra.credentials_error {
                    p #credentials-error .field-error role="alert" { (e) }
                }
                button #save-credentials type="submit" { "Save credentials" }
            }
        }
        section aria-labelledby="danger-heading" {
            h2 #danger-heading { "Delete" }
            form #delete-project method="post" action={ "/projects/" (id) "/delete" }
                data-confirm={ "Delete project " (f.name) " and its deployments?" } {
                input type="hidden" name="csrf" value=(signed.csrf);
                button .danger type="submit" { "Delete project" }
            }
        }
    };
    let title = f.name.clone();
    let status = extra.status.unwrap_or(StatusCode::OK);
    Ok((
        status,
        layout::page(signed, Nav::Projects, &title, &extra.banner, body),
    )
        .into_response())
}

/// Renders the page again with an error of a form of it, or fails whole
/// when the project is gone or the daemon failed.
async fn refused(
    app: &App,
    web: &Web,
    posted: &Posted,
    headers: &HeaderMap,
    id: i64,
    e: ServiceError,
    place: impl FnOnce(&mut Extra, String),
) -> PageResult {
    let e = WebError::from(e);
    if e.status == StatusCode::NOT_FOUND || e.status.is_server_error() {
        return Err(e);
    }
    let mut extra = Extra {
        status: Some(e.status),
        ..Extra::default()
    };
    place(&mut extra, e.message);
    render(app, web, &posted.signed, headers, id, extra).await
}

fn update_request(f: &Fields) -> Result<UpdateProject, String> {
    let clearable = |name: &str| f.has(name).then(|| f.text(name));
    let rollback = match f.text("rollback") {
        None => None,
        Some(r) => Some(
            r.parse()
                .map_err(|_| "rollback must be auto, notify or off".to_string())?,
        ),
    };
    let clear_number = |name: &str| -> Result<Option<Option<i64>>, String> {
        if f.has(name) {
            number(f, name).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(UpdateProject {
        name: f.text("name"),
        git_url: clearable("git_url"),
        git_branch: f.text("git_branch"),
        compose_file_path: f.text("compose_file_path"),
        expose_service: clearable("expose_service"),
        expose_port: clear_number("expose_port")?,
        image_ref: clearable("image_ref"),
        container_port: clear_number("container_port")?,
        dockerfile_path: f.text("dockerfile_path"),
        health_probe_path: clearable("health_probe_path"),
        health_timeout_seconds: number(f, "health_timeout_seconds")?,
        rollback,
        ..UpdateProject::default()
    })
}

pub async fn save(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let id = project_id(&raw)?;
    let entered = Entered::kept(&posted.fields).values;
    let mut req = match update_request(&posted.fields) {
        Ok(r) => r,
        Err(m) => {
            return refused(
                &app,
                &web,
                &posted,
                &headers,
                id,
                ServiceError::Invalid(m),
                |x, m| {
                    x.banner = Banner::error(m);
                    x.entered = Some(entered);
                },
            )
            .await;
        }
    };
    // A hosted project has no git URL; its form has none to send.
    let current = service::projects::show(&app, id).await?;
    if current.fields.git_source == GitSource::Hosted {
        req.git_url = None;
    } else if let (Some(Some(sent)), Some(stored)) = (&req.git_url, &current.fields.git_url) {
        // The form shows the URL without its password: the same text sent
        // back means "unchanged", not "drop the password".
        if *sent == crate::git::shown_url(stored) {
            req.git_url = None;
        }
    }
    match service::projects::update(&app, id, req).await {
        Ok(p) => {
            web.notice(&posted.signed, format!("Saved {}", p.fields.name));
            Ok(Redirect::to(&format!("/projects/{id}")).into_response())
        }
        Err(e) => {
            refused(&app, &web, &posted, &headers, id, e, |x, m| {
                x.banner = Banner::error(m);
                x.entered = Some(entered);
            })
            .await
        }
    }
}

pub async fn toggle(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let id = project_id(&raw)?;
    let enable = match posted.fields.get("enable") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(WebError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "enable must be true or false",
            ));
        }
    };
    let req = UpdateProject {
        auto_deploy_enabled: Some(enable),
        ..UpdateProject::default()
    };
    match service::projects::update(&app, id, req).await {
        Ok(_) => {
            let word = if enable { "on" } else { "off" };
            web.notice(&posted.signed, format!("Auto Deploy is {word}"));
            Ok(Redirect::to(&format!("/projects/{id}")).into_response())
        }
        Err(e) => {
            refused(&app, &web, &posted, &headers, id, e, |x, m| {
                x.toggle_error = Some(m);
            })
            .await
        }
    }
}

pub async fn push_token(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let id = project_id(&raw)?;
    match service::projects::rotate_push_token(&app, id).await {
        // Shown in this answer only; a reload of the page does not show it.
        Ok(token) => {
            let extra = Extra {
                banner: Banner::notice(Some(
                    "A new push token was made; the old one no longer works".into(),
                )),
                push_token: Some(token),
                ..Extra::default()
            };
            render(&app, &web, &posted.signed, &headers, id, extra).await
        }
        Err(e) => {
            refused(&app, &web, &posted, &headers, id, e, |x, m| {
                x.banner = Banner::error(m);
            })
            .await
        }
    }
}

pub async fn credentials(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let id = project_id(&raw)?;
    let f = &posted.fields;
    let secret = f.get("credentials").unwrap_or("").trim().to_string();
    let kind = match f.get("credential_kind").unwrap_or("auto") {
        "auto" if secret.starts_with("-----BEGIN") => "ssh",
        "auto" => "https",
        other => other,
    };
    let input = match kind {
        "remove" => Ok(None),
        _ if secret.is_empty() => Err("enter the token or private key".to_string()),
        "https" => Ok(Some(CredentialInput::Https {
            username: f
                .text("credential_username")
                .unwrap_or_else(|| "git".into()),
            token: Secret::new(secret),
        })),
        "ssh" => Ok(Some(CredentialInput::Ssh {
            // A key pasted from a file keeps its final newline.
            private_key: Secret::new(format!("{secret}\n")),
        })),
        _ => Err("kind must be auto, https, ssh or remove".to_string()),
    };
    let result = match input {
        Ok(credentials) => {
            let req = UpdateProject {
                credentials: Some(credentials),
                ..UpdateProject::default()
            };
            service::projects::update(&app, id, req).await.map(|_| ())
        }
        Err(m) => Err(ServiceError::Invalid(m)),
    };
    match result {
        Ok(()) => {
            web.notice(&posted.signed, "Credentials saved");
            Ok(Redirect::to(&format!("/projects/{id}")).into_response())
        }
        Err(e) => {
            refused(&app, &web, &posted, &headers, id, e, |x, m| {
                x.credentials_error = Some(m.clone());
                x.banner = Banner::error(m);
            })
            .await
        }
    }
}

pub async fn deploy(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let id = project_id(&raw)?;
    match service::projects::deploy(&app, id).await {
        Ok(d) => {
            web.notice(
                &posted.signed,
                format!("Deployment {}: {}", d.id, d.status.as_str()),
            );
            Ok(Redirect::to(&format!("/projects/{id}")).into_response())
        }
        Err(e) => {
            refused(&app, &web, &posted, &headers, id, e, |x, m| {
                x.banner = Banner::error(m);
            })
            .await
        }
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    Path(raw): Path<String>,
    posted: Posted,
) -> Result<Response, WebError> {
    let id = project_id(&raw)?;
    let p = service::projects::show(&app, id).await?;
    service::projects::delete(&app, id).await?;
    web.notice(&posted.signed, format!("Deleted project {}", p.fields.name));
    Ok(Redirect::to("/projects").into_response())
}
