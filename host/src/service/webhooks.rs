//! Git host webhooks (`POST /hooks/git/{project_id}`): each external
//! project's secret, and what a delivery does. A verified push never names
//! the commit: it only asks the git poller to look the project's branch up
//! now, and `decide-commit` decides on the head read, as on a tick. So a
//! forged or replayed payload can never choose what is deployed.

use std::sync::Arc;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::Result;
use crate::app::App;
use crate::secrets::{Secret, new_token};
use crate::store::{EventKind, GitSource, StoreError};

/// How long a delivery id is remembered: the same id again within this
/// window is a replay and is ignored.
pub const REPLAY_WINDOW_SECONDS: i64 = 24 * 3600;
/// Largest webhook body accepted; push payloads of the hosts are far
/// smaller.
pub const MAX_BODY: usize = 1 << 20;

/// A new webhook secret for an external project, shown once; the old one
/// stops working. Stored sealed: verifying an HMAC needs the secret itself.
pub async fn rotate_secret(app: &App, project_id: i64) -> Result<Secret> {
    let project = app.store.project(project_id).await?;
    if project.fields.git_source != GitSource::External {
        return super::invalid(
            "only external projects take git host webhooks; a hosted project deploys on push",
        );
    }
    let secret = new_token("adwh");
    app.store
        .set_webhook_secret(project_id, &app.key.seal(&secret))
        .await?;
    Ok(secret)
}

/// The git host a delivery comes from, told by its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    /// Gitea and Forgejo (same format).
    Gitea,
    GitLab,
    Bitbucket,
    /// Any sender signing with `X-Autodeploy-Signature`.
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }

    /// Gitea and Forgejo also send GitHub's event header, so they are
    /// recognised first.
    fn of(headers: &HeaderMap) -> Provider {
        let has = |name: &str| headers.contains_key(name);
        if has("x-gitea-event") || has("x-forgejo-event") {
            Provider::Gitea
        } else if has("x-github-event") {
            Provider::GitHub
        } else if has("x-gitlab-event") {
            Provider::GitLab
        } else if has("x-event-key") {
            Provider::Bitbucket
        } else {
            Provider::Generic
        }
    }

    fn event(self, headers: &HeaderMap) -> Option<&str> {
        let names: &[&str] = match self {
            Provider::GitHub => &["x-github-event"],
            Provider::Gitea => &["x-gitea-event", "x-forgejo-event"],
            Provider::GitLab => &["x-gitlab-event"],
            Provider::Bitbucket => &["x-event-key"],
            Provider::Generic => &["x-autodeploy-event"],
        };
        header(headers, names)
    }

    fn delivery(self, headers: &HeaderMap) -> Option<&str> {
        let names: &[&str] = match self {
            Provider::GitHub => &["x-github-delivery"],
            Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
            Provider::GitLab => &["x-gitlab-event-uuid", "x-gitlab-webhook-uuid"],
            Provider::Bitbucket => &["x-request-uuid"],
            Provider::Generic => &["x-autodeploy-delivery"],
        };
        header(headers, names)
    }

    /// What the event header says; a generic sender that names no event
    /// sends pushes.
    fn kind(self, event: Option<&str>) -> Event {
        match (self, event) {
            (Provider::Generic, None) => Event::Push,
            (_, None) => Event::Other,
            (Provider::GitHub | Provider::Gitea, Some("push")) => Event::Push,
            (Provider::GitHub, Some("ping")) => Event::Ping,
            (Provider::GitLab, Some("Push Hook")) => Event::Push,
            (Provider::Bitbucket, Some("repo:push")) => Event::Push,
            (Provider::Bitbucket, Some("diagnostics:ping")) => Event::Ping,
            (Provider::Generic, Some("push")) => Event::Push,
            (Provider::Generic, Some("ping")) => Event::Ping,
            _ => Event::Other,
        }
    }

    /// Whether the request carries a valid signature (or GitLab's token)
    /// for `secret`. Every comparison is constant-time.
    fn verify(self, headers: &HeaderMap, secret: &Secret, body: &[u8]) -> bool {
        let hex_hmac = |names: &[&str], prefix: &str| {
            header(headers, names)
                .and_then(|v| v.strip_prefix(prefix))
                .and_then(crate::secrets::unhex)
                .is_some_and(|tag| hmac_ok(secret, body, &tag))
        };
        match self {
            Provider::GitHub => hex_hmac(&["x-hub-signature-256"], "sha256="),
            Provider::Gitea => hex_hmac(&["x-gitea-signature", "x-forgejo-signature"], ""),
            Provider::Bitbucket => hex_hmac(&["x-hub-signature"], "sha256="),
            Provider::Generic => hex_hmac(&["x-autodeploy-signature"], "sha256="),
            Provider::GitLab => header(headers, &["x-gitlab-token"])
                .is_some_and(|token| same_secret(token, secret.expose())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Push,
    Ping,
    Other,
}

fn header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .find_map(|n| headers.get(*n))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn hmac_ok(secret: &Secret, body: &[u8], tag: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let Ok(mut mac) = hmac::Hmac::<sha2_mac::Sha256>::new_from_slice(secret.expose().as_bytes())
    else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(tag).is_ok()
}

/// Equality of two strings in time independent of where they differ:
/// their digests (fixed length) are compared byte by byte without an
/// early exit.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(secret.as_bytes()),
    );
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What an accepted delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A lookup of the project was scheduled (or folded into one already
    /// under way).
    Scheduled { coalesced: bool },
    /// The delivery id was seen within the replay window: nothing done.
    Duplicate,
    /// A ping: nothing to look up.
    Ping,
}

/// Why a delivery was refused. Each is a security event in the log, with
/// the provider and project and never the secret or the signature.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("project not found")]
    UnknownProject,
    #[error("the project's repository is hosted here; it deploys on push, not on webhooks")]
    Hosted,
    #[error("the project has no webhook secret; create one first")]
    NoSecret,
    #[error("missing or invalid signature")]
    BadSignature,
    #[error("unsupported event; only push events are accepted")]
    UnsupportedEvent,
    #[error("the delivery carries no delivery id")]
    NoDeliveryId,
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the webhook could not be handled: {0}")]
    Store(#[from] StoreError),
}

impl HookError {
    fn reason(&self) -> &'static str {
        match self {
            HookError::UnknownProject => "unknown project",
            HookError::Hosted => "hosted project",
            HookError::NoSecret => "no secret set",
            HookError::BadSignature => "bad signature",
            HookError::UnsupportedEvent => "unsupported event",
            HookError::NoDeliveryId => "no delivery id",
            HookError::TooLarge => "body too large",
            HookError::Store(_) => "store failure",
        }
    }
}

/// Handles one delivery for `project_id`; `body` is `None` when it was
/// larger than [`MAX_BODY`] (and not read).
pub async fn receive(
    app: &Arc<App>,
    project_id: i64,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Received, HookError> {
    let provider = Provider::of(headers);
    let outcome = judge(app, project_id, provider, headers, body).await;
    count(app, provider, &outcome);
    match &outcome {
        Err(HookError::Store(e)) => {
            tracing::error!(error = %e, provider = provider.as_str(), "webhook: store failure");
        }
        Err(e) => refused(app, project_id, provider, e).await,
        Ok(_) => {}
    }
    outcome
}

async fn judge(
    app: &Arc<App>,
    project_id: i64,
    provider: Provider,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Received, HookError> {
    let project = match app.store.project(project_id).await {
        Ok(p) => p,
        Err(StoreError::NotFound(_)) => return Err(HookError::UnknownProject),
        Err(e) => return Err(e.into()),
    };
    if project.fields.git_source != GitSource::External {
        return Err(HookError::Hosted);
    }
    let body = body.ok_or(HookError::TooLarge)?;
    let sealed = app
        .store
        .webhook_secret(project_id)
        .await?
        .ok_or(HookError::NoSecret)?;
    let secret = app.key.unseal(&sealed).map_err(|e| {
        tracing::error!(error = %e, "webhook: the secret could not be unsealed");
        HookError::BadSignature
    })?;
    if !provider.verify(headers, &secret, body) {
        return Err(HookError::BadSignature);
    }
    match provider.kind(provider.event(headers)) {
        Event::Push => {}
        Event::Ping => return Ok(Received::Ping),
        Event::Other => return Err(HookError::UnsupportedEvent),
    }
    let delivery = provider
        .delivery(headers)
        .filter(|d| !d.is_empty() && d.len() <= 200)
        .ok_or(HookError::NoDeliveryId)?;
    let expires = crate::store::now() + REPLAY_WINDOW_SECONDS;
    if !app
        .store
        .note_webhook_delivery(project_id, delivery, expires)
        .await?
    {
        return Ok(Received::Duplicate);
    }
    let coalesced = app.loops.git_poll.look_up_soon(app, project_id);
    Ok(Received::Scheduled { coalesced })
}

/// Counts the delivery in `autodeploy_webhook_deliveries_total`.
fn count(app: &App, provider: Provider, outcome: &Result<Received, HookError>) {
    use crate::metrics::{WebhookLabels, WebhookProvider, WebhookVerdict};
    let verdict = match outcome {
        Ok(Received::Scheduled { .. } | Received::Ping) => WebhookVerdict::Accepted,
        Ok(Received::Duplicate) => WebhookVerdict::Replayed,
        Err(_) => WebhookVerdict::Rejected,
    };
    let provider = match provider {
        Provider::GitHub => WebhookProvider::Github,
        Provider::Gitea => WebhookProvider::Gitea,
        Provider::GitLab => WebhookProvider::Gitlab,
        Provider::Bitbucket => WebhookProvider::Bitbucket,
        Provider::Generic => WebhookProvider::Generic,
    };
    app.metrics
        .webhook_deliveries
        .get_or_create(&WebhookLabels { provider, verdict })
        .inc();
}

/// Writes the security event for a refused delivery. An unknown project's
/// event has no project row to hang on; its id is in the message.
async fn refused(app: &App, project_id: i64, provider: Provider, e: &HookError) {
    let message = format!(
        "{} webhook for project {project_id} refused: {}",
        provider.as_str(),
        e.reason()
    );
    tracing::warn!(
        project = project_id,
        provider = provider.as_str(),
        "{message}"
    );
    let on = (!matches!(e, HookError::UnknownProject)).then_some(project_id);
    if let Err(err) = app
        .store
        .log_event(on, EventKind::WebhookRefused, &message)
        .await
    {
        tracing::warn!(error = %err, "webhook: the security event could not be written");
    }
}
