//! The agent's calls to the control plane, authenticated with the node token.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::claim::Claimed;

#[derive(Clone)]
pub struct Link {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A deploy's status as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    /// Failed, and the previous successful deployment was restored.
    RolledBack,
    /// Cancelled while running; the previous state was restored.
    Cancelled,
}

/// How a deploy went, as the control plane stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub status: Status,
    pub log_tail: Option<String>,
    pub error: Option<String>,
    pub ran_commit: Option<String>,
    pub ran_digests: Option<BTreeMap<String, String>>,
}

impl Report {
    pub fn status(status: Status) -> Report {
        Report {
            status,
            log_tail: None,
            error: None,
            ran_commit: None,
            ran_digests: None,
        }
    }
}

pub enum LogAnswer {
    Stored {
        cancel: bool,
    },
    /// The deployment ended or is not this node's: no more chunks.
    Closed,
}

#[derive(Deserialize)]
struct LogReply {
    #[serde(default)]
    cancel: bool,
}

impl Link {
    pub fn new(base: &str, token: &str) -> Result<Link> {
        Ok(Link {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // The control plane closes a connection idle for its header
                // timeout (10 s by default): reusing one it is just closing
                // fails the request, so idle ones are dropped well before.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn heartbeat(&self) -> Result<()> {
        self.http
            .post(self.url("/api/agent/heartbeat"))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn claim(&self) -> Result<Option<Claimed>> {
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

    pub async fn post_log(&self, deployment: i64, offset: u64, chunk: &str) -> Result<LogAnswer> {
        let resp = self
            .http
            .post(self.url(&format!("/api/agent/deployments/{deployment}/log")))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"offset": offset, "chunk": chunk}))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(LogAnswer::Closed);
        }
        let reply: LogReply = resp.error_for_status()?.json().await?;
        Ok(LogAnswer::Stored {
            cancel: reply.cancel,
        })
    }

    /// Reports until the control plane has it (or refuses it); false when
    /// it never answered.
    pub async fn report(&self, deployment: i64, report: &Report) -> bool {
        let mut report = report.clone();
        let mut wait = Duration::from_secs(1);
        for _ in 0..20 {
            let sent = self
                .http
                .post(self.url(&format!("/api/agent/deployments/{deployment}/report")))
                .bearer_auth(&self.token)
                .json(&report)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                // What ran could not be described as the control plane
                // takes it: the outcome must still land, or the deployment
                // stays running for ever.
                Ok(r)
                    if r.status() == reqwest::StatusCode::BAD_REQUEST
                        && (report.ran_commit.is_some() || report.ran_digests.is_some()) =>
                {
                    let body = r.text().await.unwrap_or_default();
                    tracing::warn!(
                        deployment,
                        body,
                        "what ran was refused; reporting the outcome without it"
                    );
                    report.ran_commit = None;
                    report.ran_digests = None;
                    continue;
                }
                // The control plane refused it (e.g. it already failed the
                // deployment): retrying will not change that.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    tracing::warn!(deployment, %status, body, "report refused");
                    return true;
                }
                Ok(r) => {
                    tracing::warn!(deployment, status = %r.status(), "report failed; retrying")
                }
                Err(e) => tracing::warn!(deployment, error = %e, "report failed; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        tracing::error!(
            deployment,
            "the control plane did not take the report; it is sent again when the agent restarts"
        );
        false
    }
}
