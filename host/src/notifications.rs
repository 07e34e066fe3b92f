//! Outbound notifications: what a message says, how each kind of target is
//! sent to, and the sender that drains the store's outbox. Messages are
//! queued in the transaction that changes a deployment's status; the sender
//! runs beside the deploy path, so a slow or failing target never holds a
//! deploy up. A failed send is tried again with exponential backoff up to the
//! target's attempts, then the message is marked dead with its last error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::metrics::NotifyResult;
use crate::secrets::Secret;
use crate::store::{ClaimedNotification, Delivery, Deployment, NotifyEvent, TargetKind, now_ms};

/// Lines of a deployment's log tail a message carries.
pub const LOG_LINES: usize = 20;
/// Cap on one send (connect, TLS, answer).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages one drain claims at most; they are sent concurrently.
const BATCH: i64 = 32;
/// How long a claimed message is not claimed again: longer than a send.
const CLAIM_MS: i64 = 60_000;
/// The first retry waits this long; each next one twice as long.
const BACKOFF_MS: i64 = 5_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;
/// Lowers the first backoff for tests (milliseconds).
pub const TEST_ONLY_BACKOFF: &str = "AUTODEPLOY_TEST_ONLY_NOTIFY_BACKOFF_MS";
/// How long sent and dead messages are kept.
const KEEP_SECONDS: i64 = 7 * 24 * 3600;
/// Idle wait between drains when nothing wakes the sender.
const IDLE: Duration = Duration::from_secs(1);

/// How a target is reached; sealed whole in the store (URLs of chat hooks
/// are their tokens).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetConfig {
    Webhook {
        url: String,
        secret: String,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Matrix {
        homeserver: String,
        room: String,
        access_token: String,
    },
    Email(EmailConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// STARTTLS, required: a server that does not offer it is an error.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a loopback host.
    None,
}

impl TargetConfig {
    pub fn kind(&self) -> TargetKind {
        match self {
            TargetConfig::Webhook { .. } => TargetKind::Webhook,
            TargetConfig::Slack { .. } => TargetKind::Slack,
            TargetConfig::Discord { .. } => TargetKind::Discord,
            TargetConfig::Matrix { .. } => TargetKind::Matrix,
            TargetConfig::Email(_) => TargetKind::Email,
        }
    }

    /// Every secret in the config, so none is ever written anywhere else.
    fn secrets(&self) -> Vec<String> {
        match self {
            TargetConfig::Webhook { url, secret } => vec![url.clone(), secret.clone()],
            TargetConfig::Slack { url } | TargetConfig::Discord { url } => vec![url.clone()],
            TargetConfig::Matrix { access_token, .. } => vec![access_token.clone()],
            TargetConfig::Email(e) => e.password.iter().cloned().collect(),
        }
    }
}

/// The sender's shared parts: its wake-up and its HTTP client.
pub struct Notifier {
    wake: tokio::sync::Notify,
    http: reqwest::Client,
    backoff_ms: i64,
}

impl Default for Notifier {
    fn default() -> Self {
        let backoff_ms = std::env::var(TEST_ONLY_BACKOFF)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|ms| *ms >= 1)
            .inspect(|ms| {
                tracing::warn!("{TEST_ONLY_BACKOFF} is set: the first retry waits {ms} ms; this is for tests only")
            })
            .unwrap_or(BACKOFF_MS);
        Notifier {
            wake: tokio::sync::Notify::new(),
            // No redirects: a target answering with one is a misconfigured
            // target, and following it could send the body elsewhere.
            http: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            backoff_ms,
        }
    }
}

impl Notifier {
    /// Something was queued: drain now rather than at the next idle tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The wait before attempt `attempts + 1`, after `attempts` failed.
    fn backoff(&self, attempts: i64) -> i64 {
        let shift = (attempts - 1).clamp(0, 20) as u32;
        self.backoff_ms
            .saturating_mul(1 << shift)
            .min(MAX_BACKOFF_MS)
    }
}

/// What a message tells, the same for every kind of target.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub event: NotifyEvent,
    pub project: ProjectRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentInfo>,
    /// For a trigger streak: the error, or that it works again.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The outbox id: the same for every retry of this message.
    pub id: i64,
    pub sent_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectRef {
    pub id: Option<i64>,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentInfo {
    pub id: i64,
    pub status: crate::store::DeployStatus,
    pub source: crate::store::DeploySource,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_digests: Option<BTreeMap<String, String>>,
    pub policy: PolicyRef,
    /// The last lines of the log tail the node reported.
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl DeploymentInfo {
    fn of(d: Deployment) -> DeploymentInfo {
        let tail = d.log_tail.as_deref().unwrap_or("");
        let lines: Vec<&str> = tail.lines().collect();
        let log_tail = lines[lines.len().saturating_sub(LOG_LINES)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        DeploymentInfo {
            id: d.id,
            status: d.status,
            source: d.source,
            reason: d.reason,
            error: d.error,
            target_commit: d.target_commit,
            target_digests: d.target_digests,
            policy: PolicyRef {
                name: d.policy_name,
                version: d.policy_version,
                sha256: d.policy_sha256,
            },
            log_tail,
        }
    }
}

impl Message {
    /// Replaces every occurrence of each secret in the message's texts.
    fn scrub(&mut self, secrets: &[String]) {
        let clean = |s: &mut String| {
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "[redacted]");
                }
            }
        };
        clean(&mut self.detail);
        clean(&mut self.project.name);
        if let Some(d) = &mut self.deployment {
            clean(&mut d.reason);
            if let Some(e) = &mut d.error {
                clean(e);
            }
            d.log_tail.iter_mut().for_each(clean);
        }
    }

    /// One line for chat and the e-mail subject.
    pub fn headline(&self) -> String {
        let project = &self.project.name;
        match (&self.deployment, self.event) {
            (_, NotifyEvent::TriggerFailing) => {
                format!("autodeploy: {project}: its trigger keeps failing")
            }
            (_, NotifyEvent::TriggerRecovered) => {
                format!("autodeploy: {project}: its trigger works again")
            }
            (Some(d), NotifyEvent::Refused) => {
                format!("autodeploy: {project}: deployment {} refused", d.id)
            }
            (Some(d), _) => format!("autodeploy: {project}: deployment {} {}", d.id, d.status),
            (None, e) => format!("autodeploy: {project}: {e}"),
        }
    }

    /// The message as plain text: chat bodies and the e-mail.
    pub fn text(&self) -> String {
        let mut out = self.headline();
        if !self.detail.is_empty() {
            out.push_str(&format!("\n{}", self.detail));
        }
        if let Some(d) = &self.deployment {
            out.push_str(&format!("\nsource: {}\nreason: {}", d.source, d.reason));
            if let Some(e) = &d.error {
                out.push_str(&format!("\nerror: {e}"));
            }
            if let Some(c) = &d.target_commit {
                out.push_str(&format!("\ncommit: {c}"));
            }
            for (image, digest) in d.target_digests.iter().flatten() {
                out.push_str(&format!("\nimage: {image} {digest}"));
            }
            out.push_str(&format!(
                "\npolicy: {} {} ({})",
                d.policy.name, d.policy.version, d.policy.sha256
            ));
            if !d.log_tail.is_empty() {
                out.push_str("\nlog tail:\n");
                out.push_str(&d.log_tail.join("\n"));
            }
        }
        out
    }
}

/// Why one send failed; the text never carries the target's URL or
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the target answered HTTP {0}")]
    Status(u16),
    #[error("the request failed: {0}")]
    Http(String),
    #[error("the target's config is unreadable: {0}")]
    Config(String),
    #[error("SMTP: {0}")]
    Smtp(String),
}

/// Builds the message of a claimed row, with every secret the daemon holds
/// for its project and target scrubbed out.
async fn message_of(
    app: &App,
    n: &ClaimedNotification,
    config: &TargetConfig,
) -> Result<Message, crate::store::StoreError> {
    let mut secrets = config.secrets();
    let project = match n.project_id {
        Some(id) => {
            let name = app
                .store
                .project(id)
                .await
                .map(|p| p.fields.name)
                .unwrap_or_else(|_| format!("project {id}"));
            if let Ok(Some(c)) = app.store.credential(id).await
                && let Ok(s) = app.key.unseal(&c.sealed)
            {
                secrets.push(s.expose().to_string());
            }
            if let Ok(Some(sealed)) = app.store.webhook_secret(id).await
                && let Ok(s) = app.key.unseal(&sealed)
            {
                secrets.push(s.expose().to_string());
            }
            ProjectRef { id: Some(id), name }
        }
        None => ProjectRef {
            id: None,
            name: "daemon".into(),
        },
    };
    let deployment = match n.deployment_id {
        Some(id) => Some(DeploymentInfo::of(app.store.deployment(id).await?)),
        None => None,
    };
    let mut m = Message {
        event: n.event,
        project,
        deployment,
        detail: n.detail.clone(),
        id: n.id,
        sent_at: crate::store::now(),
    };
    m.scrub(&secrets);
    Ok(m)
}

type HmacSha256 = hmac::Hmac<sha2_mac::Sha256>;

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!(
        "sha256={}",
        crate::secrets::hex(&mac.finalize().into_bytes())
    )
}

async fn post(req: reqwest::RequestBuilder) -> Result<(), SendError> {
    let answer = req
        .send()
        .await
        // Without the URL: a chat hook's URL is its token.
        .map_err(|e| SendError::Http(e.without_url().to_string()))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(SendError::Status(answer.status().as_u16()))
    }
}

async fn send(notifier: &Notifier, config: &TargetConfig, m: &Message) -> Result<(), SendError> {
    let http = &notifier.http;
    match config {
        TargetConfig::Webhook { url, secret } => {
            let body = serde_json::to_vec(m).expect("a message serializes");
            let req = http
                .post(url)
                .header("content-type", "application/json")
                .header("x-autodeploy-event", m.event.as_str())
                .header("x-autodeploy-delivery", m.id.to_string())
                .header("x-autodeploy-signature", signature(secret, &body))
                .body(body);
            post(req).await
        }
        TargetConfig::Slack { url } => {
            post(
                http.post(url)
                    .json(&serde_json::json!({ "text": m.text() })),
            )
            .await
        }
        TargetConfig::Discord { url } => {
            // Discord caps a message at 2000 characters.
            let text: String = m.text().chars().take(2000).collect();
            post(http.post(url).json(&serde_json::json!({ "content": text }))).await
        }
        TargetConfig::Matrix {
            homeserver,
            room,
            access_token,
        } => {
            let mut url = url::Url::parse(homeserver)
                .map_err(|e| SendError::Config(format!("homeserver: {e}")))?;
            // The transaction id is the message's: a retry of a send the
            // homeserver did take is not posted twice.
            let txn = format!("autodeploy-{}", m.id);
            url.path_segments_mut()
                .map_err(|_| SendError::Config("homeserver cannot be a base URL".into()))?
                .pop_if_empty()
                .extend([
                    "_matrix",
                    "client",
                    "v3",
                    "rooms",
                    room.as_str(),
                    "send",
                    "m.room.message",
                    txn.as_str(),
                ]);
            let req = http
                .put(url)
                .bearer_auth(access_token)
                .json(&serde_json::json!({ "msgtype": "m.text", "body": m.text() }));
            post(req).await
        }
        TargetConfig::Email(e) => send_email(e, m).await,
    }
}

async fn send_email(e: &EmailConfig, m: &Message) -> Result<(), SendError> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let smtp = |e: lettre::transport::smtp::Error| SendError::Smtp(e.to_string());
    let mut from_to = lettre::Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|_| SendError::Config("from is not an e-mail address".into()))?,
        )
        .subject(m.headline());
    for to in &e.to {
        from_to = from_to.to(to.parse().map_err(|_| {
            SendError::Config("to holds something that is not an e-mail address".into())
        })?);
    }
    let mail = from_to
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(m.text())
        .map_err(|e| SendError::Config(e.to_string()))?;
    let tls = if e.tls == SmtpTls::None {
        Tls::None
    } else {
        let mut params = TlsParameters::builder(e.host.clone());
        if let Some(file) = &e.ca_file {
            let pem = tokio::fs::read(file)
                .await
                .map_err(|err| SendError::Config(format!("ca_file cannot be read: {err}")))?;
            let cert = Certificate::from_pem(&pem).map_err(|err| {
                SendError::Config(format!("ca_file is not a PEM certificate: {err}"))
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build().map_err(smtp)?;
        match e.tls {
            SmtpTls::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.as_str())
        .port(e.port)
        .tls(tls)
        .timeout(Some(SEND_TIMEOUT));
    if let (Some(user), Some(password)) = (&e.username, &e.password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport.build().send(mail).await.map_err(smtp)?;
    Ok(())
}

/// One claimed message: build, send, record how it went.
async fn deliver(app: &App, n: ClaimedNotification) {
    let notifier = &app.notifier;
    let attempt = n.attempts + 1;
    let (outcome, secrets) = match app
        .key
        .unseal(&n.sealed_config)
        .map_err(|e| SendError::Config(e.to_string()))
        .and_then(|s| {
            serde_json::from_str::<TargetConfig>(s.expose())
                .map_err(|e| SendError::Config(e.to_string()))
        }) {
        Err(e) => (Err(e), Vec::new()),
        Ok(config) => {
            let secrets = config.secrets();
            let outcome = match message_of(app, &n, &config).await {
                Ok(m) => send(notifier, &config, &m).await,
                Err(e) => Err(SendError::Config(format!(
                    "the message cannot be built: {e}"
                ))),
            };
            (outcome, secrets)
        }
    };
    let (delivery, result) = match outcome {
        Ok(()) => (Delivery::Sent, NotifyResult::Sent),
        Err(e) => {
            // The error may quote what the target answered: scrub it too.
            let mut error = e.to_string();
            for s in secrets.iter().filter(|s| s.len() >= 4) {
                error = error.replace(s.as_str(), "[redacted]");
            }
            if attempt >= n.max_attempts {
                tracing::warn!(notification = n.id, target_id = n.target_id, target_name = %n.target_name,
                    attempts = attempt, error = %error, "notification dead: out of attempts");
                (Delivery::Dead { error }, NotifyResult::Dead)
            } else {
                let wait = notifier.backoff(attempt);
                tracing::info!(notification = n.id, target_id = n.target_id, target_name = %n.target_name,
                    attempt, retry_in_ms = wait, error = %error, "notification failed; retrying");
                (
                    Delivery::Retry {
                        error,
                        next_at_ms: now_ms() + wait,
                    },
                    NotifyResult::Retry,
                )
            }
        }
    };
    if matches!(delivery, Delivery::Sent) {
        tracing::info!(notification = n.id, target_id = n.target_id, event = %n.event, attempt, "notification sent");
    }
    app.metrics.notification(n.kind, result);
    if let Err(e) = app.store.finish_notification(n.id, &delivery).await {
        // It is claimed until the claim runs out: then it is sent again.
        tracing::warn!(notification = n.id, error = %e, "recording a notification's delivery failed");
    }
}

/// Claims due messages and sends them, concurrently, until none is due.
pub async fn drain(app: &Arc<App>) -> Result<usize, crate::store::StoreError> {
    let mut sent = 0;
    loop {
        let now = now_ms();
        let claimed = app
            .store
            .claim_notifications(now, now + CLAIM_MS, BATCH)
            .await?;
        if claimed.is_empty() {
            return Ok(sent);
        }
        sent += claimed.len();
        futures::future::join_all(claimed.into_iter().map(|n| deliver(app, n))).await;
    }
}

/// The sender: drains the outbox when woken and once a second, until
/// `cancel`. A failed drain is logged and the next one goes on.
pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    let mut last_prune = 0;
    loop {
        if let Err(e) = drain(&app).await {
            tracing::warn!(error = %e, "draining the notification outbox failed");
        }
        let now = crate::store::now();
        if now - last_prune > 3600 {
            last_prune = now;
            if let Err(e) = app.store.prune_notifications(now - KEEP_SECONDS).await {
                tracing::warn!(error = %e, "pruning the notification outbox failed");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = app.notifier.wake.notified() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// A secret kept from the API: `Secret` prints as stars.
pub fn sealed_config(app: &App, config: &TargetConfig) -> String {
    app.key.seal(&Secret::new(
        serde_json::to_string(config).expect("a config serializes"),
    ))
}
