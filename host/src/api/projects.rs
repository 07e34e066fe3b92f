//! `/api/projects`: CRUD, the auto-deploy toggle (decided by the policy),
//! write-only credentials, push tokens and deployments.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ApiError, ApiResult, Body, Id};
use crate::app::App;
use crate::pipeline::{self, Trigger};
use crate::policy::Verdict;
use crate::secrets::{Secret, new_token, token_hash};
use crate::store::{
    CredentialKind, Deployment, GitSource, ProjectFields, ProjectRecord, ProjectType,
    SealedCredential,
};

/// A credential as the API accepts it. The secret is never returned.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialInput {
    Https { username: String, token: Secret },
    Ssh { private_key: Secret },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    project_type: ProjectType,
    #[serde(default)]
    git_source: GitSource,
    git_url: Option<String>,
    git_branch: Option<String>,
    compose_file_path: Option<String>,
    expose_service: Option<String>,
    expose_port: Option<i64>,
    #[serde(default)]
    auto_deploy_enabled: bool,
    credentials: Option<CredentialInput>,
    image_ref: Option<String>,
    container_port: Option<i64>,
    /// SSH host keys to pin, as known_hosts lines.
    ssh_known_hosts: Option<String>,
    /// Node labels (all pairs) a node needs to claim this project.
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    /// The user's own labels, for the policy to read.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Absent fields stay as they are; `null` clears a clearable one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    git_url: Option<Option<String>>,
    git_branch: Option<String>,
    compose_file_path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expose_service: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    expose_port: Option<Option<i64>>,
    auto_deploy_enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    credentials: Option<Option<CredentialInput>>,
    #[serde(default, deserialize_with = "present")]
    image_ref: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    container_port: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    ssh_known_hosts: Option<Option<String>>,
    /// `null` or `{}` clears it.
    #[serde(default, deserialize_with = "present")]
    node_selector: Option<Option<BTreeMap<String, String>>>,
    /// Replaces the labels; `null` or `{}` clears them.
    #[serde(default, deserialize_with = "present")]
    labels: Option<Option<BTreeMap<String, String>>>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A project as answered, with the push token when one was just made.
#[derive(Serialize)]
pub struct ProjectAnswer {
    #[serde(flatten)]
    project: ProjectRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_token: Option<String>,
}

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<Vec<ProjectRecord>>> {
    Ok(Json(app.store.projects().await?))
}

pub async fn show(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<Json<ProjectRecord>> {
    Ok(Json(app.store.project(id).await?))
}

pub async fn create(
    State(app): State<Arc<App>>,
    Body(req): Body<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectAnswer>)> {
    let fields = ProjectFields {
        name: req.name,
        project_type: req.project_type,
        git_source: req.git_source,
        git_url: req.git_url,
        git_branch: req.git_branch.unwrap_or_else(|| "main".into()),
        compose_file_path: req
            .compose_file_path
            .unwrap_or_else(|| "docker-compose.yml".into()),
        expose_service: req.expose_service,
        expose_port: req.expose_port,
        auto_deploy_enabled: false,
        image_ref: req.image_ref,
        container_port: req.container_port,
        labels: req.labels,
    };
    validate(&fields, req.credentials.as_ref())?;
    check_known_hosts(&fields, req.ssh_known_hosts.as_deref())?;
    super::admin::check_labels("node_selector", &req.node_selector)?;
    let mut fields = fields;
    if req.auto_deploy_enabled {
        let view = fields.policy_view();
        check_toggle(&app, view, None, true).await?;
        fields.auto_deploy_enabled = true;
    }
    let push_token = (fields.git_source == GitSource::Hosted).then(|| new_token("adp"));
    let sealed = req.credentials.map(|c| seal(&app, c));
    let mut project = app
        .store
        .create_project(
            &fields,
            push_token
                .as_ref()
                .map(|t| token_hash(t.expose()))
                .as_deref(),
            sealed.as_ref(),
        )
        .await?;
    if let Some(lines) = req.ssh_known_hosts {
        if let Err(e) = app
            .store
            .set_ssh_known_hosts(project.id, Some(&lines))
            .await
        {
            // No project without the pins it was asked for.
            let _ = app.store.delete_project(project.id).await;
            return Err(e.into());
        }
        project.ssh_known_hosts = Some(lines);
    }
    if !req.node_selector.is_empty() {
        if let Err(e) = app
            .store
            .set_node_selector(project.id, &req.node_selector)
            .await
        {
            // No project without the selector it was asked with.
            let _ = app.store.delete_project(project.id).await;
            return Err(e.into());
        }
        project.node_selector = req.node_selector;
    }
    if project.fields.git_source == GitSource::Hosted {
        let path = crate::git::hosted_path(&app.repo_dir, project.id);
        let branch = project.fields.git_branch.clone();
        let made =
            tokio::task::spawn_blocking(move || crate::git::init_hosted(&path, &branch)).await;
        if let Err(e) = made
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            // No project without its repository.
            let _ = app.store.delete_project(project.id).await;
            tracing::error!(error = %e, "cannot create the hosted repository");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot create the hosted repository; see the daemon's log",
            ));
        }
    }
    tracing::info!(project = project.id, name = %project.fields.name, "project created");
    let push_token = push_token.map(|t| t.expose().to_string());
    Ok((
        StatusCode::CREATED,
        Json(ProjectAnswer {
            project,
            push_token,
        }),
    ))
}

pub async fn update(
    State(app): State<Arc<App>>,
    Id(id): Id,
    Body(req): Body<UpdateProject>,
) -> ApiResult<Json<ProjectRecord>> {
    let current = app.store.project(id).await?;
    let mut f = current.fields.clone();
    if let Some(v) = req.name {
        f.name = v;
    }
    if let Some(v) = req.git_url {
        f.git_url = v;
    }
    if let Some(v) = req.git_branch {
        f.git_branch = v;
    }
    if let Some(v) = req.compose_file_path {
        f.compose_file_path = v;
    }
    if let Some(v) = req.expose_service {
        f.expose_service = v;
    }
    if let Some(v) = req.expose_port {
        f.expose_port = v;
    }
    if let Some(v) = req.image_ref {
        f.image_ref = v;
    }
    if let Some(v) = req.container_port {
        f.container_port = v;
    }
    if let Some(v) = req.labels {
        f.labels = v.unwrap_or_default();
    }
    let credentials = req.credentials;
    validate(&f, credentials.as_ref().and_then(Option::as_ref))?;
    // A stored token counts as much as one sent now: it must not be moved
    // onto a plain http:// remote either.
    let stored_https = current
        .credentials
        .as_ref()
        .is_some_and(|c| c.kind == CredentialKind::Https);
    if credentials.is_none()
        && stored_https
        && f.git_source == GitSource::External
        && let Some(url) = &f.git_url
    {
        crate::git::transport::check_remote(url, true)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let pins = req
        .ssh_known_hosts
        .clone()
        .unwrap_or_else(|| current.ssh_known_hosts.clone());
    check_known_hosts(&f, pins.as_deref())?;
    let selector = req.node_selector.map(Option::unwrap_or_default);
    if let Some(selector) = &selector {
        check_selector_change(&app, &current, selector).await?;
    }
    if let Some(enable) = req.auto_deploy_enabled
        && enable != current.fields.auto_deploy_enabled
    {
        // The policy judges the project as it will be after this change.
        let view = ProjectRecord {
            fields: f.clone(),
            ..current.clone()
        }
        .policy_view();
        check_toggle(&app, view, current.pinned_node_id, enable).await?;
        f.auto_deploy_enabled = enable;
        let word = if enable { "enabled" } else { "disabled" };
        app.store
            .log_event(
                Some(id),
                crate::store::EventKind::AutoDeployToggled,
                &format!("auto-deploy {word}"),
            )
            .await?;
    }
    if let Some(c) = credentials {
        let sealed = c.map(|c| seal(&app, c));
        app.store.set_credential(id, sealed.as_ref()).await?;
    }
    if let Some(lines) = req.ssh_known_hosts
        && lines != current.ssh_known_hosts
    {
        app.store.set_ssh_known_hosts(id, lines.as_deref()).await?;
        let what = if lines.is_some() {
            "ssh host key pins set"
        } else {
            "ssh host key pins removed: any host key is accepted"
        };
        app.store
            .log_event(
                Some(id),
                crate::store::EventKind::SshKnownHostsChanged,
                what,
            )
            .await?;
    }
    let updated = app.store.update_project(id, &f).await?;
    match selector {
        Some(selector) => {
            app.store.set_node_selector(id, &selector).await?;
            Ok(Json(app.store.project(id).await?))
        }
        None => Ok(Json(updated)),
    }
}

pub async fn delete(State(app): State<Arc<App>>, Id(id): Id) -> ApiResult<StatusCode> {
    app.store.delete_project(id).await?;
    let repo = crate::git::hosted_path(&app.repo_dir, id);
    if repo.exists()
        && let Err(e) = tokio::fs::remove_dir_all(&repo).await
    {
        tracing::warn!(project = id, error = %e, "could not remove the hosted repository");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct PushToken {
    push_token: String,
}

pub async fn rotate_push_token(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<Json<PushToken>> {
    let project = app.store.project(id).await?;
    if project.fields.git_source != GitSource::Hosted {
        return Err(ApiError::bad_request(
            "only hosted projects have a push token",
        ));
    }
    let token = new_token("adp");
    app.store
        .set_push_token_hash(id, &token_hash(token.expose()))
        .await?;
    app.store
        .log_event(
            Some(id),
            crate::store::EventKind::PushTokenRotated,
            "push token rotated",
        )
        .await?;
    Ok(Json(PushToken {
        push_token: token.expose().to_string(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn deployments(
    State(app): State<Arc<App>>,
    Id(id): Id,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Deployment>>> {
    app.store.project(id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(app.store.deployments(id, limit).await?))
}

pub async fn deploy(
    State(app): State<Arc<App>>,
    Id(id): Id,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let project = app.store.project(id).await?;
    let d = pipeline::trigger(&app, &project, Trigger::manual()).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

/// A new node selector must be well formed and, for a project pinned to a
/// node, match that node: the project cannot move (its volumes live there).
async fn check_selector_change(
    app: &App,
    project: &ProjectRecord,
    selector: &BTreeMap<String, String>,
) -> ApiResult<()> {
    super::admin::check_labels("node_selector", selector)?;
    if let Some(pinned) = project.pinned_node_id {
        let node = app.store.node(pinned).await?;
        if !crate::store::selector_matches(selector, &node.labels) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "node_selector does not match node {}, which this project is pinned to (its named volumes live there); delete that node with ?force=true to unpin it",
                    node.name
                ),
            ));
        }
    }
    Ok(())
}

/// Asks the policy whether the toggle may be set to `enable`, on the facts
/// of a project pinned to `pinned` (a new project: nowhere).
async fn check_toggle(
    app: &App,
    view: crate::policy::Project,
    pinned: Option<i64>,
    enable: bool,
) -> ApiResult<()> {
    use crate::policy::{Answer, Call};
    let facts = crate::policy::facts::FactBase::read_for(app, pinned)
        .await?
        .facts_pinned(pinned);
    let decided = app
        .decide_call(Call::CheckAutoDeploy {
            project: view,
            facts,
            enable,
        })
        .await;
    match decided.answer {
        Ok(Answer::CheckAutoDeploy(Verdict::Allowed(_))) => Ok(()),
        Ok(Answer::CheckAutoDeploy(Verdict::Refused(reason))) => Err(ApiError::bad_request(reason)),
        Ok(other) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the policy answered check-auto-deploy with {}",
                other.to_json()
            ),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the policy could not decide: {e}"),
        )),
    }
}

fn seal(app: &App, c: CredentialInput) -> SealedCredential {
    match c {
        CredentialInput::Https { username, token } => SealedCredential {
            kind: CredentialKind::Https,
            username: Some(username),
            sealed: app.key.seal(&token),
        },
        CredentialInput::Ssh { private_key } => SealedCredential {
            kind: CredentialKind::Ssh,
            username: None,
            sealed: app.key.seal(&private_key),
        },
    }
}

/// Checks what a person typed; each error names the field and the problem.
fn validate(f: &ProjectFields, credential: Option<&CredentialInput>) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if f.name.is_empty() || f.name.len() > 100 || !f.name.chars().all(name_ok) {
        return bad(format!(
            "name {:?} must be 1-100 letters, digits, '-', '_' or '.'",
            f.name
        ));
    }
    match (f.git_source, f.git_url.as_deref()) {
        (GitSource::External, None) => return bad("external projects need git_url".into()),
        (GitSource::Hosted, Some(_)) => {
            return bad(
                "hosted projects are served by autodeploy at /git/{id}.git: leave git_url out"
                    .into(),
            );
        }
        (GitSource::External, Some(url)) => check_git_url(url, credential)?,
        (GitSource::Hosted, None) => {
            if credential.is_some() {
                return bad(
                    "hosted projects need no credentials: pushes authenticate with the push token"
                        .into(),
                );
            }
        }
    }
    let b = &f.git_branch;
    if b.is_empty()
        || b.starts_with('-')
        || b.contains("..")
        || b.chars()
            .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return bad(format!("git_branch {b:?} is not a valid branch name"));
    }
    let p = &f.compose_file_path;
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|part| part == "..") {
        return bad(format!(
            "compose_file_path {p:?} must be a relative path inside the repository"
        ));
    }
    if let Some(port) = f.expose_port
        && !(1..=65535).contains(&port)
    {
        return bad(format!("expose_port {port} is not a TCP port (1-65535)"));
    }
    if f.expose_service
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return bad("expose_service must not be blank".into());
    }
    match (f.project_type, f.image_ref.as_deref(), f.container_port) {
        (ProjectType::Image, Some(image), Some(port)) => {
            crate::registry::ImageRef::parse(image)
                .map_err(|e| ApiError::bad_request(format!("image_ref: {e}")))?;
            if !(1..=65535).contains(&port) {
                return bad(format!("container_port {port} is not a TCP port (1-65535)"));
            }
        }
        (ProjectType::Image, _, _) => {
            return bad("image projects need image_ref and container_port".into());
        }
        (_, None, None) => {}
        _ => return bad("image_ref and container_port belong to image projects only".into()),
    }
    super::admin::check_labels("labels", &f.labels)?;
    Ok(())
}

fn check_git_url(url: &str, credential: Option<&CredentialInput>) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    let https_credential = matches!(credential, Some(CredentialInput::Https { .. }));
    // Parsed with the url crate; the errors never repeat the URL, which may
    // hold a password.
    let remote = crate::git::transport::check_remote(url, https_credential)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let scheme = remote.scheme.as_str();
    let https = matches!(scheme, "https" | "http");
    let ssh = scheme == "ssh";
    if !(https || ssh || matches!(scheme, "git" | "file")) {
        // Shown without any password (there is none here: it was refused above).
        return bad(format!(
            "git_url {:?} must be https://, http://, ssh://, git://, file:// or user@host:path",
            crate::git::shown_url(url)
        ));
    }
    match credential {
        Some(CredentialInput::Https { .. }) if !https => {
            bad("https credentials need an https:// or http:// git_url".into())
        }
        Some(CredentialInput::Ssh { .. }) if !ssh => {
            bad("an ssh key needs an ssh:// or user@host:path git_url".into())
        }
        _ => Ok(()),
    }
}

/// Pins need an SSH remote, must parse, and must name the remote's host.
fn check_known_hosts(f: &ProjectFields, known_hosts: Option<&str>) -> ApiResult<()> {
    let Some(text) = known_hosts else {
        return Ok(());
    };
    let remote = f
        .git_url
        .as_deref()
        .filter(|_| f.git_source == GitSource::External)
        .and_then(|u| crate::git::transport::parse_remote(u).ok())
        .filter(|r| r.scheme == "ssh");
    let Some(remote) = remote else {
        return Err(ApiError::bad_request(
            "ssh_known_hosts pins SSH host keys: it needs an external project with an ssh:// or user@host:path git_url",
        ));
    };
    let pins =
        crate::git::KnownHosts::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !pins.covers(&remote.host, remote.port) {
        // The host is not named: error answers never repeat request values.
        return Err(ApiError::bad_request(
            "ssh_known_hosts has no line for the git_url's host (use [host]:port for a port other than 22)",
        ));
    }
    Ok(())
}
