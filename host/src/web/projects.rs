//! The project list (search, filters, the newest deployment of each, keyset
//! pages) and the new-project form.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::auth::{Flash, Posted, Signed, Web};
use super::layout::{self, Banner, Nav, PageResult, WebError};
use crate::app::App;
use crate::service;
use crate::service::checks::CredentialInput;
use crate::service::page::{List, PageRequest};
use crate::service::projects::CreateProject;
use crate::store::{GitSource, ProjectFilter, ProjectType, RollbackMode, now};

pub const PROJECT_TYPES: [ProjectType; 5] = [
    ProjectType::Deployment,
    ProjectType::Compose,
    ProjectType::Image,
    ProjectType::Tunnel,
    ProjectType::DomainOnly,
];

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    auto: String,
    cursor: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    signed: Signed,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let started = std::time::Instant::now();
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let flash = web.take_flash(&signed);
    let mut banner = Banner::notice(flash.notice);
    let project_type = match q.kind.as_str() {
        "" => None,
        t => match t.parse::<ProjectType>() {
            Ok(t) => Some(t),
            Err(_) => {
                banner.error = Some("type: choose one of the listed project types".into());
                None
            }
        },
    };
    let auto = match q.auto.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    };
    let filter = ProjectFilter {
        name_contains: Some(q.q.trim().to_string()).filter(|s| !s.is_empty()),
        project_type,
        auto_deploy_enabled: auto,
    };
    let page = match PageRequest::parse(List::Projects, None, q.cursor.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            banner.error = Some(e.to_string());
            PageRequest::parse(List::Projects, None, None)?
        }
    };
    let (rows, next) = match service::projects::browse(&app, &filter, page).await {
        Ok(p) => (p.items, p.next_cursor),
        Err(e @ service::ServiceError::Invalid(_)) => {
            banner.error = Some(e.to_string());
            (Vec::new(), None)
        }
        Err(e) => return Err(e.into()),
    };
    let t = now();
    let next_href = next.map(|c| {
        let mut url = url::Url::parse("http://x/projects").expect("a fixed URL");
        url.query_pairs_mut()
            .append_pair("q", &q.q)
            .append_pair("type", &q.kind)
            .append_pair("auto", &q.auto)
            .append_pair("cursor", &c);
        format!("/projects?{}", url.query().unwrap_or(""))
    });
    let body = html! {
        div.row-actions {
            h1 { "Projects" }
            a #new-project href="/projects/new" { "New project" }
        }
        form #project-filter .filters method="get" action="/projects" role="search" {
            div {
                label for="q" { "Search by name" }
                input #q type="search" name="q" value=(q.q) maxlength="100";
            }
            div {
                label for="type" { "Type" }
                select #type name="type" {
                    option value="" selected[project_type.is_none()] { "Any type" }
                    @for t in PROJECT_TYPES {
                        option value=(t.as_str()) selected[project_type == Some(t)] { (t.as_str()) }
                    }
                }
            }
            div {
                label for="auto" { "Auto Deploy" }
                select #auto name="auto" {
                    option value="" selected[auto.is_none()] { "On or off" }
                    option value="on" selected[auto == Some(true)] { "On" }
                    option value="off" selected[auto == Some(false)] { "Off" }
                }
            }
            button #filter type="submit" { "Filter" }
        }
        div.table-wrap {
            table #projects .stack {
                caption.hint { (rows.len()) " projects on this page" }
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Type" }
                    th scope="col" { "Auto Deploy" }
                    th scope="col" { "Last deployment" }
                    th scope="col" { "When" }
                } }
                tbody {
                    @for p in &rows {
                        tr data-project-id=(p.id) {
                            td.name data-label="Name" { a href={ "/projects/" (p.id) } { (p.name) } }
                            td.type data-label="Type" { (p.project_type.as_str()) }
                            td.auto data-label="Auto Deploy" { @if p.auto_deploy_enabled { "on" } @else { "off" } }
                            @match p.last_status {
                                Some(s) => td class={ "last-status status status-" (s.as_str()) } data-label="Last deployment" { (s.as_str()) },
                                None => td.last-status data-label="Last deployment" { "none" },
                            }
                            td.last-age data-label="When" { @if let Some(at) = p.last_at { (layout::time_ago(at, t)) } @else { "—" } }
                        }
                    }
                }
            }
        }
        @if rows.is_empty() {
            p.hint { "No project matches." }
        }
        @if let Some(href) = next_href {
            p.pager { a #next-page href=(href) rel="next" { "Next page" } }
        }
    };
    let mut res = layout::page(&signed, Nav::Projects, "Projects", &banner, body).into_response();
    // How long the page took here, without the network: for the benchmark.
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
        "render;dur={:.3}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        res.headers_mut().insert("server-timing", v);
    }
    Ok(res)
}

/// What the create form was filled with, to show it again after an error.
#[derive(Default)]
pub struct Entered {
    pub values: Vec<(String, String)>,
}

impl Entered {
    pub fn from_values(values: Vec<(String, String)>) -> Entered {
        Entered { values }
    }

    /// A refused form's fields, to fill it again: never its CSRF token,
    /// and a git URL without any password typed into it.
    pub fn kept(fields: &super::auth::Fields) -> Entered {
        let values = fields
            .0
            .iter()
            .filter(|(k, _)| k != "csrf")
            .map(|(k, v)| {
                let v = if k == "git_url" {
                    crate::git::shown_url(v)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        Entered { values }
    }

    pub fn get(&self, name: &str) -> &str {
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

pub async fn new_form(signed: Signed) -> PageResult {
    Ok(form_page(
        &signed,
        &Entered::default(),
        &Banner::default(),
        StatusCode::OK,
    ))
}

fn form_page(signed: &Signed, e: &Entered, banner: &Banner, status: StatusCode) -> Response {
    let body = html! {
        h1 { "New project" }
        form #create-project method="post" action="/projects" {
            input type="hidden" name="csrf" value=(signed.csrf);
            div.grid {
                (text_input("name", "Name", e.get("name"), "1-100 letters, digits, '-', '_' or '.'", true))
                div {
                    label for="project_type" { "Type" }
                    select #project_type name="project_type" {
                        @for t in PROJECT_TYPES {
                            option value=(t.as_str()) selected[e.get("project_type") == t.as_str()] { (t.as_str()) }
                        }
                    }
                    p.hint { "compose: a compose file; deployment: a Dockerfile; image: a registry image; tunnel and domain_only: no deploys" }
                }
                div {
                    label for="git_source" { "Git source" }
                    select #git_source name="git_source" {
                        option value="hosted" selected[e.get("git_source") != "external"] { "hosted (push to autodeploy)" }
                        option value="external" selected[e.get("git_source") == "external"] { "external (polled)" }
                    }
                }
            }
            (project_fields(e))
            button #create type="submit" { "Create project" }
        }
    };
    (
        status,
        layout::page(signed, Nav::Projects, "New project", banner, body),
    )
        .into_response()
}

pub fn text_input(name: &str, label: &str, value: &str, hint: &str, required: bool) -> Markup {
    let hint_id = format!("{name}-hint");
    html! {
        div {
            label for=(name) { (label) }
            input id=(name) type="text" name=(name) value=(value) required[required]
                aria-describedby=(hint_id);
            p.hint id=(hint_id) { (hint) }
        }
    }
}

/// The fields create and edit share, filled from `e`.
pub fn project_fields(e: &Entered) -> Markup {
    html! {
        div.grid {
            (text_input("git_url", "Git URL", e.get("git_url"), "external projects only: https://, ssh:// or git@host:path", false))
            (text_input("git_branch", "Branch", e.get("git_branch"), "default main", false))
            (text_input("compose_file_path", "Compose file", e.get("compose_file_path"), "default docker-compose.yml", false))
            (text_input("expose_service", "Exposed service", e.get("expose_service"), "compose: the service that serves traffic", false))
            (text_input("expose_port", "Exposed port", e.get("expose_port"), "1-65535", false))
            (text_input("image_ref", "Image", e.get("image_ref"), "image projects: registry/name:tag", false))
            (text_input("container_port", "Container port", e.get("container_port"), "image projects: the port it serves on", false))
            (text_input("dockerfile_path", "Dockerfile", e.get("dockerfile_path"), "deployment projects; default Dockerfile", false))
            (text_input("health_probe_path", "Health probe path", e.get("health_probe_path"), "an HTTP path that must answer 2xx/3xx after a deploy", false))
            (text_input("health_timeout_seconds", "Health timeout (s)", e.get("health_timeout_seconds"), "5-3600, default 60", false))
            div {
                label for="rollback" { "Rollback" }
                select #rollback name="rollback" {
                    @for r in ["auto", "notify", "off"] {
                        option value=(r) selected[e.get("rollback") == r || (e.get("rollback").is_empty() && r == "auto")] { (r) }
                    }
                }
                p.hint { "what a node does when a deploy fails: auto restores the last good one" }
            }
        }
    }
}

/// A whole number from a form field; `None` when blank.
pub fn number(fields: &super::auth::Fields, name: &str) -> Result<Option<i64>, String> {
    match fields.text(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{name} must be a whole number")),
    }
}

fn create_request(f: &super::auth::Fields) -> Result<CreateProject, String> {
    let project_type = f
        .text("project_type")
        .unwrap_or_default()
        .parse::<ProjectType>()
        .map_err(|_| "project_type: choose one of the listed types".to_string())?;
    let git_source = match f.text("git_source").as_deref() {
        None | Some("hosted") => GitSource::Hosted,
        Some("external") => GitSource::External,
        Some(_) => return Err("git_source must be hosted or external".into()),
    };
    let rollback = match f.text("rollback") {
        None => None,
        Some(r) => Some(
            r.parse::<RollbackMode>()
                .map_err(|_| "rollback must be auto, notify or off".to_string())?,
        ),
    };
    Ok(CreateProject {
        name: f.text("name").unwrap_or_default(),
        project_type,
        git_source,
        git_url: f.text("git_url"),
        git_branch: f.text("git_branch"),
        compose_file_path: f.text("compose_file_path"),
        expose_service: f.text("expose_service"),
        expose_port: number(f, "expose_port")?,
        auto_deploy_enabled: false,
        credentials: None::<CredentialInput>,
        image_ref: f.text("image_ref"),
        container_port: number(f, "container_port")?,
        ssh_known_hosts: None,
        node_selector: Default::default(),
        labels: Default::default(),
        dockerfile_path: f.text("dockerfile_path"),
        health_probe_path: f.text("health_probe_path"),
        health_timeout_seconds: number(f, "health_timeout_seconds")?,
        rollback,
    })
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    posted: Posted,
) -> PageResult {
    let entered = Entered::kept(&posted.fields);
    let again = |message: String, status: StatusCode| {
        form_page(&posted.signed, &entered, &Banner::error(message), status)
    };
    let req = match create_request(&posted.fields) {
        Ok(r) => r,
        Err(m) => return Ok(again(m, StatusCode::UNPROCESSABLE_ENTITY)),
    };
    match service::projects::create(&app, req).await {
        Ok(created) => {
            let id = created.project.id;
            web.set_flash(
                &posted.signed,
                Flash {
                    notice: Some(format!("Project {} created", created.project.fields.name)),
                    push_token: created.push_token.map(|t| (id, t)),
                },
            );
            Ok(Redirect::to(&format!("/projects/{id}")).into_response())
        }
        Err(e) => {
            let e = WebError::from(e);
            if e.status.is_server_error() {
                return Err(e);
            }
            let status = if e.status == StatusCode::CONFLICT {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Ok(again(e.message, status))
        }
    }
}
