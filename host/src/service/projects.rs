//! Project actions: create, change (fields, the auto-deploy toggle,
//! credentials, SSH pins, node selector), delete, rotate the push token,
//! deploy now, and the paged lists. Each write is one store transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::checks::{self, CredentialInput};
use super::page::{List, Page, PageRequest};
use super::{Result, ServiceError};
use crate::app::App;
use crate::pipeline::{self, Trigger};
use crate::policy::Verdict;
use crate::secrets::{Secret, new_token, token_hash};
use crate::store::{
    CredentialKind, DeploySettings, Deployment, EventKind, GitSource, NewProject, ProjectChange,
    ProjectFields, ProjectFilter, ProjectRecord, ProjectSummary, ProjectType, RollbackMode,
    SealedCredential, StoreError,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub project_type: ProjectType,
    #[serde(default)]
    pub git_source: GitSource,
    pub git_url: Option<String>,
    pub git_branch: Option<String>,
    pub compose_file_path: Option<String>,
    pub expose_service: Option<String>,
    pub expose_port: Option<i64>,
    #[serde(default)]
    pub auto_deploy_enabled: bool,
    pub credentials: Option<CredentialInput>,
    pub image_ref: Option<String>,
    pub container_port: Option<i64>,
    /// SSH host keys to pin, as known_hosts lines.
    pub ssh_known_hosts: Option<String>,
    /// Node labels (all pairs) a node needs to claim this project.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The user's own labels, for the policy to read.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub dockerfile_path: Option<String>,
    pub health_probe_path: Option<String>,
    pub health_timeout_seconds: Option<i64>,
    pub rollback: Option<RollbackMode>,
}

/// Absent fields stay as they are; `null` clears a clearable one.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub git_url: Option<Option<String>>,
    pub git_branch: Option<String>,
    pub compose_file_path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub expose_service: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub expose_port: Option<Option<i64>>,
    pub auto_deploy_enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub credentials: Option<Option<CredentialInput>>,
    #[serde(default, deserialize_with = "present")]
    pub image_ref: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub container_port: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub ssh_known_hosts: Option<Option<String>>,
    /// `null` or `{}` clears it.
    #[serde(default, deserialize_with = "present")]
    pub node_selector: Option<Option<BTreeMap<String, String>>>,
    /// Replaces the labels; `null` or `{}` clears them.
    #[serde(default, deserialize_with = "present")]
    pub labels: Option<Option<BTreeMap<String, String>>>,
    pub dockerfile_path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub health_probe_path: Option<Option<String>>,
    pub health_timeout_seconds: Option<i64>,
    pub rollback: Option<RollbackMode>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A project just made, with its push token (hosted projects only): the
/// token is never shown again.
pub struct Created {
    pub project: ProjectRecord,
    pub push_token: Option<Secret>,
}

pub async fn list(app: &App, page: PageRequest) -> Result<Page<ProjectRecord>> {
    let rows = app.store.projects_page(page.after, page.fetch()).await?;
    Ok(Page::of(List::Projects, page, rows, |p| p.id))
}

/// A page of project lines (with each one's newest deployment) that pass
/// `filter`, by id.
pub async fn browse(
    app: &App,
    filter: &ProjectFilter,
    page: PageRequest,
) -> Result<Page<ProjectSummary>> {
    if let Some(q) = &filter.name_contains
        && q.len() > 100
    {
        return super::invalid("the search text is at most 100 characters");
    }
    let rows = app
        .store
        .project_summaries(filter, page.after, page.fetch())
        .await?;
    Ok(Page::of(List::Projects, page, rows, |p| p.id))
}

pub async fn show(app: &App, id: i64) -> Result<ProjectRecord> {
    Ok(app.store.project(id).await?)
}

/// Newest first.
pub async fn deployments(app: &App, id: i64, page: PageRequest) -> Result<Page<Deployment>> {
    app.store.project(id).await?;
    let rows = app
        .store
        .deployments_page(id, page.after, page.fetch())
        .await?;
    Ok(Page::of(List::Deployments, page, rows, |d| d.id))
}

pub async fn create(app: &App, req: CreateProject) -> Result<Created> {
    let mut fields = ProjectFields {
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
        deploy: DeploySettings {
            dockerfile_path: req
                .dockerfile_path
                .unwrap_or_else(|| DeploySettings::DEFAULT_DOCKERFILE.into()),
            health_probe_path: req.health_probe_path,
            health_timeout_seconds: req
                .health_timeout_seconds
                .unwrap_or(DeploySettings::DEFAULT_HEALTH_TIMEOUT),
            rollback: req.rollback.unwrap_or_default(),
        },
    };
    checks::project(&fields, req.credentials.as_ref())?;
    checks::known_hosts(&fields, req.ssh_known_hosts.as_deref())?;
    checks::labels("node_selector", &req.node_selector)?;
    if req.auto_deploy_enabled {
        check_toggle(app, fields.policy_view(), None, true).await?;
        fields.auto_deploy_enabled = true;
    }
    let push_token = (fields.git_source == GitSource::Hosted).then(|| new_token("adp"));
    let new = NewProject {
        push_token_hash: push_token.as_ref().map(|t| token_hash(t.expose())),
        credential: req.credentials.map(|c| seal(app, c)),
        ssh_known_hosts: req.ssh_known_hosts,
        node_selector: req.node_selector,
        fields,
    };
    let project = if new.fields.git_source == GitSource::Hosted {
        create_hosted(app, &new).await?
    } else {
        app.store.create_project_with(&new, None).await?
    };
    tracing::info!(project = project.id, name = %project.fields.name, "project created");
    Ok(Created {
        project,
        push_token,
    })
}

/// A hosted project and its bare repository: the repository is made
/// inside the project's transaction, so neither exists without the other.
async fn create_hosted(app: &App, new: &NewProject) -> Result<ProjectRecord> {
    let repo_dir = app.repo_dir.clone();
    let branch = new.fields.git_branch.clone();
    // The id the repository was made for, to remove it if the transaction
    // then fails.
    let made_for = std::sync::Arc::new(std::sync::Mutex::new(None));
    let made = made_for.clone();
    let set_up = move |id: i64| -> futures::future::BoxFuture<'static, Result<(), String>> {
        let path = crate::git::hosted_path(&repo_dir, id);
        let branch = branch.clone();
        *made.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A directory left by a project whose id was rolled back.
                if path.exists() {
                    std::fs::remove_dir_all(&path).map_err(|e| e.to_string())?;
                }
                crate::git::init_hosted(&path, &branch).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    };
    let created = app.store.create_project_with(new, Some(&set_up)).await;
    let made = *made_for.lock().unwrap_or_else(|e| e.into_inner());
    if created.is_err()
        && let Some(id) = made
    {
        remove_repo(app, id).await;
    }
    match created {
        Ok(p) => Ok(p),
        Err(StoreError::SetUp(message)) => Err(ServiceError::Internal {
            what: "cannot create the hosted repository; see the daemon's log",
            detail: message,
        }),
        Err(e) => Err(e.into()),
    }
}

pub async fn update(app: &App, id: i64, req: UpdateProject) -> Result<ProjectRecord> {
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
    if let Some(v) = req.dockerfile_path {
        f.deploy.dockerfile_path = v;
    }
    if let Some(v) = req.health_probe_path {
        f.deploy.health_probe_path = v;
    }
    if let Some(v) = req.health_timeout_seconds {
        f.deploy.health_timeout_seconds = v;
    }
    if let Some(v) = req.rollback {
        f.deploy.rollback = v;
    }
    let credentials = req.credentials;
    checks::project(&f, credentials.as_ref().and_then(Option::as_ref))?;
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
        checks::remote(url, true)?;
    }
    let pins = req
        .ssh_known_hosts
        .clone()
        .unwrap_or_else(|| current.ssh_known_hosts.clone());
    checks::known_hosts(&f, pins.as_deref())?;
    let node_selector = req.node_selector.map(Option::unwrap_or_default);
    if let Some(selector) = &node_selector {
        check_selector_change(app, &current, selector).await?;
    }
    let mut events = Vec::new();
    if let Some(enable) = req.auto_deploy_enabled
        && enable != current.fields.auto_deploy_enabled
    {
        // The policy judges the project as it will be after this change.
        let view = ProjectRecord {
            fields: f.clone(),
            ..current.clone()
        }
        .policy_view();
        check_toggle(app, view, current.pinned_node_id, enable).await?;
        f.auto_deploy_enabled = enable;
        let word = if enable { "enabled" } else { "disabled" };
        events.push((EventKind::AutoDeployToggled, format!("auto-deploy {word}")));
    }
    let ssh_known_hosts = req
        .ssh_known_hosts
        .filter(|lines| *lines != current.ssh_known_hosts);
    if let Some(lines) = &ssh_known_hosts {
        let what = if lines.is_some() {
            "ssh host key pins set"
        } else {
            "ssh host key pins removed: any host key is accepted"
        };
        events.push((EventKind::SshKnownHostsChanged, what.to_string()));
    }
    let change = ProjectChange {
        fields: Some(f),
        credential: credentials.map(|c| c.map(|c| seal(app, c))),
        ssh_known_hosts,
        node_selector,
        push_token_hash: None,
        events,
    };
    Ok(app.store.change_project(id, &change).await?)
}

pub async fn delete(app: &App, id: i64) -> Result<()> {
    app.store.delete_project(id).await?;
    remove_repo(app, id).await;
    Ok(())
}

/// Removes a hosted repository, if there is one; a failure is logged (the
/// project is gone either way, and a new project with this id clears it).
async fn remove_repo(app: &App, id: i64) {
    let repo = crate::git::hosted_path(&app.repo_dir, id);
    if repo.exists()
        && let Err(e) = tokio::fs::remove_dir_all(&repo).await
    {
        tracing::warn!(project = id, error = %e, "could not remove the hosted repository");
    }
}

/// A new push token for a hosted project; the old one stops working.
pub async fn rotate_push_token(app: &App, id: i64) -> Result<Secret> {
    let project = app.store.project(id).await?;
    if project.fields.git_source != GitSource::Hosted {
        return super::invalid("only hosted projects have a push token");
    }
    let token = new_token("adp");
    let change = ProjectChange {
        push_token_hash: Some(token_hash(token.expose())),
        events: vec![(EventKind::PushTokenRotated, "push token rotated".into())],
        ..ProjectChange::default()
    };
    app.store.change_project(id, &change).await?;
    Ok(token)
}

/// Queues a manual deployment.
pub async fn deploy(app: &App, id: i64) -> Result<Deployment> {
    let project = app.store.project(id).await?;
    Ok(pipeline::trigger(app, &project, Trigger::manual()).await?)
}

/// A new node selector must be well formed and, for a project pinned to a
/// node, match that node: the project cannot move (its volumes live there).
async fn check_selector_change(
    app: &App,
    project: &ProjectRecord,
    selector: &BTreeMap<String, String>,
) -> Result<()> {
    checks::labels("node_selector", selector)?;
    if let Some(pinned) = project.pinned_node_id {
        let node = app.store.node(pinned).await?;
        if !crate::store::selector_matches(selector, &node.labels) {
            return Err(ServiceError::Conflict(format!(
                "node_selector does not match node {}, which this project is pinned to (its named volumes live there); delete that node with ?force=true to unpin it",
                node.name
            )));
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
) -> Result<()> {
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
        Ok(Answer::CheckAutoDeploy(Verdict::Refused(reason))) => Err(ServiceError::Refused(reason)),
        Ok(other) => Err(ServiceError::PolicyUnavailable(format!(
            "the policy answered check-auto-deploy with {}",
            other.to_json()
        ))),
        Err(e) => Err(ServiceError::PolicyUnavailable(format!(
            "the policy could not decide: {e}"
        ))),
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
