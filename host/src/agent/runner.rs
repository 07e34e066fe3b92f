//! `autodeploy agent`: runs on a deploy node. It heartbeats, claims the
//! deployments the control plane assigns to its node, runs each one (see
//! `deploy`) while streaming its log, and reports how it went.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::claim::Claimed;
use super::deploy::Deploy;
use super::link::{Link, Report, Status};
use super::logs::{self, Log};

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

struct Agent {
    link: Link,
    args: AgentArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    std::fs::create_dir_all(args.work_dir.join("inflight"))
        .with_context(|| format!("create {}", args.work_dir.display()))?;
    let agent = Arc::new(Agent {
        link: Link::new(&args.control_plane, &args.token)?,
        args,
    });
    // Checkouts verify HTTPS remotes as the control plane does.
    crate::git::transport::configure(crate::git::transport::TransportConfig::from_env()?)?;
    agent.report_unfinished().await;
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
    println!("autodeploy agent working for {}", agent.link.url(""));
    let slots = Arc::new(Semaphore::new(agent.args.parallel as usize));
    let mut backoff = Duration::from_secs(1);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
        };
        match agent.link.claim().await {
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
    async fn heartbeat(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.link.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(self.args.heartbeat_seconds)) => {}
            }
        }
    }

    fn inflight(&self, deployment: i64) -> PathBuf {
        self.args
            .work_dir
            .join("inflight")
            .join(deployment.to_string())
    }

    /// Deploys this agent did not finish reporting: a marker holding a
    /// report is one the control plane never took (it is sent again); an
    /// empty one is a deploy that was running when the agent stopped, and
    /// whatever state it left is unknown.
    async fn report_unfinished(&self) {
        let Ok(entries) = std::fs::read_dir(self.args.work_dir.join("inflight")) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let saved = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
            let report = saved.unwrap_or_else(|| {
                let mut r = Report::status(Status::Failed);
                r.error = Some(
                    "the agent restarted while this deployment was running; it did not finish"
                        .into(),
                );
                r
            });
            if self.link.report(id, &report).await {
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
            let mut r = Report::status(Status::Failed);
            r.log_tail = Some(error.clone());
            r.error = Some(error);
            self.link.report(id, &r).await;
            return;
        }
        self.link.report(id, &Report::status(Status::Running)).await;
        let log = Log::default();
        let (cancel, stop) = (CancellationToken::new(), CancellationToken::new());
        let streaming = tokio::spawn(logs::stream(
            self.link.clone(),
            id,
            log.clone(),
            cancel.clone(),
            stop.clone(),
        ));
        let deploy = Deploy {
            link: &self.link,
            claim: &claim,
            dir: self
                .args
                .work_dir
                .join("projects")
                .join(claim.project.id.to_string()),
            log,
            timeout: Duration::from_secs(self.args.deploy_timeout_seconds),
        };
        let report = deploy.run(&cancel).await;
        // Kept until the control plane has it: an agent stopped before then
        // sends it on its next start.
        if let Ok(saved) = serde_json::to_vec(&report)
            && let Err(e) = std::fs::write(&marker, saved)
        {
            tracing::warn!(deployment = id, error = %e, "cannot save the report");
        }
        stop.cancel();
        let _ = streaming.await;
        tracing::info!(deployment = id, status = ?report.status, "deploy finished");
        if self.link.report(id, &report).await
            && let Err(e) = std::fs::remove_file(&marker)
        {
            tracing::warn!(deployment = id, error = %e, "cannot remove the in-flight marker");
        }
    }
}
