//! Registry notifications (`POST /hooks/registry`): the CNCF distribution
//! envelope, Harbor's webhook and Docker Hub's webhook. A push of
//! `repo:tag` only asks the image watcher to look that image up now for the
//! projects using it; the digest in the payload is never used, and
//! `decide-images` decides on the registry's answer, as on a tick.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::Value;

use super::webhooks::same_secret;
use crate::app::App;
use crate::registry::ImageRef;
use crate::registry::reference::DOCKER_HUB;
use crate::secrets::Secret;
use crate::store::EventKind;

/// Largest notification body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// Most events one envelope may carry; the distribution registry sends one
/// per request.
pub const MAX_EVENTS: usize = 256;

/// How a registry proves it is the one configured: the daemon-wide secret,
/// in `Authorization: Bearer`, in a header of the operator's choice, or in
/// `?secret=` (Docker Hub can neither sign nor send headers).
#[derive(Debug, Clone, Default)]
pub struct HookAuth {
    pub secret: Option<Secret>,
    /// A header holding the bare secret, beside `Authorization: Bearer`.
    pub header: Option<String>,
}

/// The sender's format, told by the body's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Distribution,
    Harbor,
    DockerHub,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Distribution => "distribution",
            Format::Harbor => "harbor",
            Format::DockerHub => "docker-hub",
        }
    }
}

/// What an accepted notification came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Checks of these images were scheduled; `coalesced` of them were
    /// already pending.
    Scheduled {
        format: Format,
        images: Vec<String>,
        coalesced: usize,
    },
    /// No tag push in it (pulls, deletes, pushes by digest, blobs).
    Ignored { format: Format },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryHookError {
    /// No secret is configured: the endpoint does not exist.
    #[error("registry notifications are not enabled on this daemon")]
    Disabled,
    #[error("missing or wrong registry hook secret")]
    BadSecret,
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the notification has more than {MAX_EVENTS} events")]
    TooManyEvents,
    #[error("malformed notification: {0}")]
    Malformed(String),
}

impl RegistryHookError {
    fn reason(&self) -> &'static str {
        match self {
            RegistryHookError::Disabled => "not enabled",
            RegistryHookError::BadSecret => "bad secret",
            RegistryHookError::TooLarge => "body too large",
            RegistryHookError::TooManyEvents => "too many events",
            RegistryHookError::Malformed(_) => "malformed body",
        }
    }
}

/// Handles one notification; `body` is `None` when it was larger than
/// [`MAX_BODY`] (and not read), `query_secret` is `?secret=`.
pub async fn receive(
    app: &Arc<App>,
    headers: &HeaderMap,
    query_secret: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Received, RegistryHookError> {
    let auth = app.loops.image_watch.hook_auth();
    let Some(secret) = &auth.secret else {
        return Err(RegistryHookError::Disabled);
    };
    let outcome = judge(app, auth, secret, headers, query_secret, body);
    count(app, &outcome);
    if let Err(e) = &outcome {
        refused(app, e).await;
    }
    outcome
}

fn judge(
    app: &Arc<App>,
    auth: &HookAuth,
    secret: &Secret,
    headers: &HeaderMap,
    query_secret: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Received, RegistryHookError> {
    if !authorised(auth, secret, headers, query_secret) {
        return Err(RegistryHookError::BadSecret);
    }
    let body = body.ok_or(RegistryHookError::TooLarge)?;
    let (format, pushed) = parse(body)?;
    if pushed.is_empty() {
        return Ok(Received::Ignored { format });
    }
    let images = pushed.iter().map(ToString::to_string).collect();
    let coalesced = app.loops.image_watch.check_soon(app, pushed);
    Ok(Received::Scheduled {
        format,
        images,
        coalesced,
    })
}

/// Whether any of the places a secret may be sent holds the configured one.
/// Every comparison is constant-time.
fn authorised(
    auth: &HookAuth,
    secret: &Secret,
    headers: &HeaderMap,
    query_secret: Option<&str>,
) -> bool {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let bearer = value("authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    let mut given: Vec<&str> = bearer.into_iter().collect();
    if let Some(h) = auth.header.as_deref().and_then(value) {
        given.push(h);
    }
    if let Some(q) = query_secret {
        given.push(q);
    }
    // All candidates are compared, so the time says nothing about which
    // one was there.
    given
        .iter()
        .fold(false, |ok, g| same_secret(g, secret.expose()) | ok)
}

/// The tag pushes a body names, each normalised to the reference a compose
/// file would hold.
pub fn parse(body: &[u8]) -> Result<(Format, BTreeSet<ImageRef>), RegistryHookError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RegistryHookError::Malformed(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(RegistryHookError::Malformed(
            "the body is not a JSON object".into(),
        ));
    }
    if let Some(events) = v.get("events") {
        let events = events
            .as_array()
            .ok_or_else(|| malformed("\"events\" is not an array"))?;
        if events.len() > MAX_EVENTS {
            return Err(RegistryHookError::TooManyEvents);
        }
        let mut pushed = BTreeSet::new();
        for (i, e) in events.iter().enumerate() {
            if let Some(r) =
                distribution_event(e).map_err(|m| malformed(&format!("events[{i}]: {m}")))?
            {
                pushed.insert(r);
            }
        }
        return Ok((Format::Distribution, pushed));
    }
    if let Some(data) = v.get("event_data") {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "PUSH_ARTIFACT" {
            return Ok((Format::Harbor, BTreeSet::new()));
        }
        let resources = data
            .get("resources")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("\"event_data.resources\" is not an array"))?;
        if resources.len() > MAX_EVENTS {
            return Err(RegistryHookError::TooManyEvents);
        }
        let mut pushed = BTreeSet::new();
        for (i, r) in resources.iter().enumerate() {
            let tag = r.get("tag").and_then(Value::as_str).unwrap_or_default();
            if tag.is_empty() {
                continue;
            }
            let url = r
                .get("resource_url")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    malformed(&format!("event_data.resources[{i}]: no \"resource_url\""))
                })?;
            // `host/project/repo:tag`; the name part is rebuilt with the
            // resource's own tag, whatever the URL ends with.
            let name = url.split('@').next().unwrap_or(url);
            let name = match name.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => n,
                _ => name,
            };
            pushed.insert(
                reference(&format!("{name}:{tag}"))
                    .map_err(|m| malformed(&format!("event_data.resources[{i}]: {m}")))?,
            );
        }
        return Ok((Format::Harbor, pushed));
    }
    if let Some(push) = v.get("push_data") {
        let tag = push.get("tag").and_then(Value::as_str).unwrap_or_default();
        let repo = v
            .get("repository")
            .and_then(|r| r.get("repo_name"))
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no \"repository.repo_name\""))?;
        let mut pushed = BTreeSet::new();
        if !tag.is_empty() {
            pushed.insert(
                reference(&format!("{DOCKER_HUB}/{repo}:{tag}")).map_err(|m| malformed(&m))?,
            );
        }
        return Ok((Format::DockerHub, pushed));
    }
    Err(malformed(
        "expected a distribution envelope (\"events\"), a Harbor webhook (\"event_data\") or a Docker Hub webhook (\"push_data\")",
    ))
}

fn malformed(m: &str) -> RegistryHookError {
    RegistryHookError::Malformed(m.to_string())
}

/// One event of a distribution envelope: `Some` for a push of a tag.
fn distribution_event(e: &Value) -> Result<Option<ImageRef>, String> {
    if !e.is_object() {
        return Err("not an object".into());
    }
    if e.get("action").and_then(Value::as_str) != Some("push") {
        return Ok(None);
    }
    let target = e.get("target").ok_or("no \"target\"")?;
    let tag = target
        .get("tag")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if tag.is_empty() {
        // A blob, or a manifest pushed by digest: nothing a tag names moved.
        return Ok(None);
    }
    let repository = target
        .get("repository")
        .and_then(Value::as_str)
        .ok_or("no \"target.repository\"")?;
    // The host the pusher used, as a compose file would name it; the
    // target URL's host when the request part is missing.
    let host = e
        .get("request")
        .and_then(|r| r.get("host"))
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| {
            target
                .get("url")
                .and_then(Value::as_str)
                .and_then(|u| u.split_once("://"))
                .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_string())
                .filter(|h| !h.is_empty())
        })
        .ok_or("no \"request.host\" nor \"target.url\"")?;
    reference(&format!("{host}/{repository}:{tag}")).map(Some)
}

/// Parses `image`, with Docker Hub's other host names made `docker.io`.
fn reference(image: &str) -> Result<ImageRef, String> {
    let mut r = ImageRef::parse(image)?;
    if matches!(
        r.registry.as_str(),
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    ) {
        r = ImageRef::parse(&format!("{DOCKER_HUB}/{}:{}", r.repository, r.reference))?;
    }
    Ok(r)
}

/// Counts the notification in `autodeploy_webhook_deliveries_total`.
fn count(app: &App, outcome: &Result<Received, RegistryHookError>) {
    use crate::metrics::{WebhookLabels, WebhookProvider, WebhookVerdict};
    let verdict = match outcome {
        Ok(_) => WebhookVerdict::Accepted,
        Err(_) => WebhookVerdict::Rejected,
    };
    app.metrics
        .webhook_deliveries
        .get_or_create(&WebhookLabels {
            provider: WebhookProvider::Registry,
            verdict,
        })
        .inc();
}

/// Writes the security event for a refused notification, never with the
/// secret or the body.
async fn refused(app: &App, e: &RegistryHookError) {
    let message = format!("registry notification refused: {}", e.reason());
    tracing::warn!("{message}");
    if let Err(err) = app
        .store
        .log_event(None, EventKind::RegistryHookRefused, &message)
        .await
    {
        tracing::warn!(error = %err, "registry hook: the security event could not be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(body: &str) -> (Format, Vec<String>) {
        let (f, r) = parse(body.as_bytes()).unwrap();
        (f, r.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_three_formats_name_the_same_references_a_compose_file_would() {
        let dist = r#"{"events":[
            {"action":"push","target":{"mediaType":"application/octet-stream","repository":"app","digest":"sha256:aa"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"app","tag":"1","digest":"sha256:bb"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"pull","target":{"repository":"app","tag":"2"},"request":{"host":"127.0.0.1:5000"}}]}"#;
        assert_eq!(
            refs(dist),
            (Format::Distribution, vec!["127.0.0.1:5000/app:1".into()])
        );
        let harbor = r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"sha256:cc","tag":"2","resource_url":"harbor.example.com/library/app:2"}],"repository":{"repo_full_name":"library/app"}}}"#;
        assert_eq!(
            refs(harbor),
            (
                Format::Harbor,
                vec!["harbor.example.com/library/app:2".into()]
            )
        );
        let hub = r#"{"push_data":{"tag":"latest"},"repository":{"repo_name":"nginx"}}"#;
        assert_eq!(
            refs(hub),
            (
                Format::DockerHub,
                vec!["docker.io/library/nginx:latest".into()]
            )
        );
        assert_eq!(
            reference("index.docker.io/me/app:1").unwrap(),
            ImageRef::parse("me/app:1").unwrap()
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        for (body, says) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"events":{}}"#, "\"events\" is not an array"),
            (
                r#"{"events":[{"action":"push"}]}"#,
                "events[0]: no \"target\"",
            ),
            (r#"{"hello":1}"#, "expected a distribution envelope"),
        ] {
            let e = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let many = format!(
            r#"{{"events":[{}]}}"#,
            vec![r#"{"action":"pull"}"#; MAX_EVENTS + 1].join(",")
        );
        assert!(matches!(
            parse(many.as_bytes()),
            Err(RegistryHookError::TooManyEvents)
        ));
    }
}
