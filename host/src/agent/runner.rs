//! `autodeploy agent`: runs on a deploy node. It heartbeats, claims the
//! deployments the control plane assigns to its node, and runs each one:
//! fetch the project at its target commit, then `docker compose pull` and
//! `up -d --remove-orphans` under a stable compose project name (so named
//! volumes survive redeploys), and report how it went with a log tail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::compose;
use crate::api::AgentCredential;
use crate::git::Credential;
use crate::secrets::Secret;
use crate::store::{CredentialKind, GitSource, ProjectType};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The control plane's URL.
    #[arg(
        long,
        env = "AUTODEPLOY_CONTROL_PLANE",
        default_value = "http://127.0.0.1:8080"
    )]
    pub control_plane: String,
    /// This node's token (from `autodeploy node add`).
    #[arg(long, env = "AUTODEPLOY_NODE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Checkouts and the record of deploys in flight.
    #[arg(long, env = "AUTODEPLOY_AGENT_DIR", default_value = "./agent")]
    pub work_dir: PathBuf,
    /// Deploys of different projects run at once, at most.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// A deploy that takes longer is stopped and reported failed.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub deploy_timeout_seconds: u64,
    /// How often to tell the control plane this node is alive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_seconds: u64,
}

/// What the agent reads of a claim.
#[derive(Deserialize)]
struct Claimed {
    deployment: ClaimedDeployment,
    project: ClaimedProject,
    credential: Option<AgentCredential>,
}

#[derive(Deserialize)]
struct ClaimedDeployment {
    id: i64,
    target_commit: Option<String>,
}

#[derive(Deserialize)]
struct ClaimedProject {
    id: i64,
    name: String,
    project_type: ProjectType,
    git_source: GitSource,
    git_url: Option<String>,
    git_branch: String,
    compose_file_path: String,
    expose_port: Option<i64>,
    image_ref: Option<String>,
    container_port: Option<i64>,
    #[serde(default)]
    ssh_known_hosts: Option<String>,
}

struct Agent {
    http: reqwest::Client,
    base: String,
    token: String,
    args: AgentArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    std::fs::create_dir_all(args.work_dir.join("inflight"))
        .with_context(|| format!("create {}", args.work_dir.display()))?;
    let agent = Arc::new(Agent {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: args.control_plane.trim_end_matches('/').to_string(),
        token: args.token.clone(),
        args,
    });
    // Checkouts verify HTTPS remotes as the control plane does.
    crate::git::transport::configure(crate::git::transport::TransportConfig::from_env()?)?;
    agent.report_interrupted().await;
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        signals.cancel();
    });
    tokio::spawn(agent.clone().heartbeat(cancel.clone()));
    println!("autodeploy agent working for {}", agent.base);
    let slots = Arc::new(Semaphore::new(agent.args.parallel as usize));
    let mut backoff = Duration::from_secs(1);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
        };
        match agent.claim().await {
            Ok(Some(claim)) => {
                backoff = Duration::from_secs(1);
                let agent = agent.clone();
                tokio::spawn(async move {
                    agent.deploy(claim).await;
                    drop(permit);
                });
                continue;
            }
            Ok(None) => backoff = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        drop(permit);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
    tracing::info!("agent stopping");
    Ok(())
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn heartbeat(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let sent = self
                .http
                .post(self.url("/api/agent/heartbeat"))
                .bearer_auth(&self.token)
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(self.args.heartbeat_seconds)) => {}
            }
        }
    }

    async fn claim(&self) -> Result<Option<Claimed>> {
        let resp = self
            .http
            .post(self.url("/api/agent/claim"))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(resp.json().await.context("read the claim")?))
    }

    /// Reports until the control plane has it: a report is never dropped
    /// because the control plane was briefly down.
    async fn report(
        &self,
        deployment: i64,
        status: &str,
        log_tail: Option<&str>,
        error: Option<&str>,
    ) {
        let body = json!({"status": status, "log_tail": log_tail, "error": error});
        let mut wait = Duration::from_secs(1);
        for _ in 0..20 {
            let sent = self
                .http
                .post(self.url(&format!("/api/agent/deployments/{deployment}/report")))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                // The control plane refused it (e.g. it already failed the
                // deployment): retrying will not change that.
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(deployment, status = %r.status(), "report refused");
                    return;
                }
                Ok(r) => {
                    tracing::warn!(deployment, status = %r.status(), "report failed; retrying")
                }
                Err(e) => tracing::warn!(deployment, error = %e, "report failed; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        tracing::error!(deployment, "giving up reporting after 20 attempts");
    }

    fn inflight(&self, deployment: i64) -> PathBuf {
        self.args
            .work_dir
            .join("inflight")
            .join(deployment.to_string())
    }

    /// Deploys that were running when the agent last stopped are reported
    /// failed: whatever state they left is unknown.
    async fn report_interrupted(&self) {
        let Ok(entries) = std::fs::read_dir(self.args.work_dir.join("inflight")) else {
            return;
        };
        for entry in entries.flatten() {
            if let Ok(id) = entry.file_name().to_string_lossy().parse::<i64>() {
                self.report(
                    id,
                    "failed",
                    None,
                    Some(
                        "the agent restarted while this deployment was running; it did not finish",
                    ),
                )
                .await;
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    async fn deploy(&self, claim: Claimed) {
        let id = claim.deployment.id;
        let marker = self.inflight(id);
        // The marker is how a crash mid-deploy gets reported after a restart:
        // a deploy that cannot leave one is not started at all.
        if let Err(e) = std::fs::write(&marker, b"") {
            let error = format!(
                "the deploy was not started: cannot record it as in flight at {}: {e}",
                marker.display()
            );
            tracing::error!(deployment = id, error = %error, "deploy not started");
            self.report(id, "failed", Some(&error), Some(&error)).await;
            return;
        }
        self.report(id, "running", None, None).await;
        let timeout = Duration::from_secs(self.args.deploy_timeout_seconds);
        let outcome = match tokio::time::timeout(timeout, self.run_deploy(&claim)).await {
            Ok(r) => r,
            Err(_) => Err(DeployFailure {
                error: format!("the deploy did not finish within {timeout:?}"),
                log: String::new(),
            }),
        };
        match outcome {
            Ok(log) => self.report(id, "succeeded", Some(&log), None).await,
            Err(f) => {
                self.report(id, "failed", Some(&f.log), Some(&f.error))
                    .await
            }
        }
        // A marker left behind would report this finished deploy as
        // interrupted on the next start (the control plane refuses that).
        if let Err(e) = std::fs::remove_file(&marker) {
            tracing::warn!(deployment = id, error = %e, "cannot remove the in-flight marker");
        }
    }

    async fn run_deploy(&self, claim: &Claimed) -> Result<String, DeployFailure> {
        let p = &claim.project;
        let checkout = self.args.work_dir.join("projects").join(p.id.to_string());
        let (file, mut log) = match p.project_type {
            ProjectType::Compose => {
                let commit = self.checkout(claim, &checkout).await?;
                (
                    p.compose_file_path.clone(),
                    format!("checked out {commit}\n"),
                )
            }
            ProjectType::Image => (image_compose(p, &checkout)?, String::new()),
            // The policy refuses these before they are queued (it knows
            // `super::KINDS`); this stays for a control plane that did not.
            other => {
                return Err(DeployFailure::new(format!(
                    "this agent deploys compose and image projects; a {} project is not deployed (it would need an image build)",
                    crate::store::enum_str(&other)
                )));
            }
        };
        let project_name = compose_project_name(&p.name, p.id);
        for step in [&["pull"][..], &["up", "-d", "--remove-orphans"][..]] {
            let out = compose::run(&checkout, &project_name, &file, step).await;
            log.push_str(&out.log);
            if let Err(error) = out.result {
                return Err(DeployFailure { error, log });
            }
        }
        Ok(log)
    }

    /// The project at the deployment's target commit, in `dir`.
    async fn checkout(
        &self,
        claim: &Claimed,
        dir: &std::path::Path,
    ) -> Result<String, DeployFailure> {
        let p = &claim.project;
        let (url, credential) = match p.git_source {
            GitSource::Hosted => (
                self.url(&format!("/git/{}.git", p.id)),
                Some(Credential::Https {
                    username: "node".into(),
                    token: Secret::new(self.token.clone()),
                }),
            ),
            GitSource::External => {
                let url = p.git_url.clone().unwrap_or_default();
                let credential = claim.credential.as_ref().map(to_credential);
                let https = matches!(credential, Some(Credential::Https { .. }));
                crate::git::transport::check_remote(&url, https)
                    .map_err(|e| DeployFailure::new(format!("cannot fetch the project: {e}")))?;
                (url, credential)
            }
        };
        let pins = p.ssh_known_hosts.clone();
        let (branch, target, dir) = (
            p.git_branch.clone(),
            claim.deployment.target_commit.clone(),
            dir.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            crate::git::checkout(
                &url,
                &branch,
                target.as_deref(),
                credential.as_ref(),
                pins.as_deref(),
                &dir,
            )
        })
        .await
        .map_err(|e| DeployFailure::new(format!("checkout task failed: {e}")))?
        .map_err(|e| DeployFailure::new(format!("cannot fetch the project: {e}")))
    }
}

/// An image project as a one-service compose file in `dir`: the image,
/// with `container_port` published on `expose_port` (or the same number).
fn image_compose(p: &ClaimedProject, dir: &std::path::Path) -> Result<String, DeployFailure> {
    let (Some(image), Some(port)) = (&p.image_ref, p.container_port) else {
        return Err(DeployFailure::new(
            "image projects need image_ref and container_port".into(),
        ));
    };
    let host = p.expose_port.unwrap_or(port);
    let yaml = format!(
        "services:\n  app:\n    image: {image:?}\n    ports: [\"{host}:{port}\"]\n    restart: unless-stopped\n"
    );
    let file = "autodeploy-image.yml";
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(dir.join(file), yaml))
        .map_err(|e| DeployFailure::new(format!("cannot write {file}: {e}")))?;
    Ok(file.to_string())
}

/// The compose project name: the same on every deploy, so named volumes
/// and containers are reused; lower-case letters, digits, `-` and `_` only.
pub fn compose_project_name(name: &str, id: i64) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("autodeploy-{clean}-{id}")
}

struct DeployFailure {
    error: String,
    log: String,
}

impl DeployFailure {
    fn new(error: String) -> Self {
        DeployFailure {
            log: error.clone(),
            error,
        }
    }
}

fn to_credential(c: &AgentCredential) -> Credential {
    match c.kind {
        CredentialKind::Https => Credential::Https {
            username: c.username.clone().unwrap_or_default(),
            token: Secret::new(c.secret.clone()),
        },
        CredentialKind::Ssh => Credential::Ssh {
            private_key: Secret::new(c.secret.clone()),
        },
    }
}
