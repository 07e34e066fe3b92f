//! Notification targets: add (config checked, then sealed whole), list,
//! show, delete, and a target's recent deliveries. Nothing of a target's
//! config comes back but its kind, name, events and host.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Result, invalid};
use crate::app::App;
use crate::notifications::{EmailConfig, SmtpTls, TargetConfig, sealed_config};
use crate::secrets::{Secret, new_token};
use crate::store::{NewTarget, NotificationTarget, NotifyEvent, OutboxEntry, TargetKind};

/// Attempts a message gets unless the target says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 8;
pub const MAX_MAX_ATTEMPTS: i64 = 20;
/// Deliveries `GET /api/notifications/{id}/deliveries` shows.
pub const DELIVERIES_SHOWN: i64 = 50;

/// A target as asked for; which fields apply depends on `kind`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTargetRequest {
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Only this project's events; absent: every project's.
    pub project_id: Option<i64>,
    /// Absent: every event.
    pub events: Option<Vec<String>>,
    pub max_attempts: Option<i64>,
    /// webhook, slack, discord.
    pub url: Option<String>,
    /// webhook: the HMAC key; absent: one is made and shown once.
    pub secret: Option<String>,
    /// matrix.
    pub homeserver: Option<String>,
    pub room: Option<String>,
    pub access_token: Option<String>,
    /// email.
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub ca_file: Option<String>,
}

/// A target just added; `secret` only when the daemon made the webhook's.
#[derive(Debug, Serialize)]
pub struct Added {
    #[serde(flatten)]
    pub target: NotificationTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn need<'a>(v: &'a Option<String>, field: &str, kind: TargetKind) -> Result<&'a str> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => invalid(format!("{field} is required for a {kind} target")),
    }
}

/// An http(s) URL with a host; its host is what the API shows.
fn http_url(v: &str, field: &str) -> Result<String> {
    let Ok(u) = url::Url::parse(v) else {
        return invalid(format!("{field} is not a URL"));
    };
    if !matches!(u.scheme(), "http" | "https") {
        return invalid(format!("{field} must be an http or https URL"));
    }
    match u.host_str() {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ => invalid(format!("{field} has no host")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Fields that do not belong to `kind` are an error, not silently kept.
fn only(r: &NewTargetRequest, kind: TargetKind) -> Result<()> {
    let given: [(&str, bool, &[TargetKind]); 13] = [
        (
            "url",
            r.url.is_some(),
            &[TargetKind::Webhook, TargetKind::Slack, TargetKind::Discord],
        ),
        ("secret", r.secret.is_some(), &[TargetKind::Webhook]),
        ("homeserver", r.homeserver.is_some(), &[TargetKind::Matrix]),
        ("room", r.room.is_some(), &[TargetKind::Matrix]),
        (
            "access_token",
            r.access_token.is_some(),
            &[TargetKind::Matrix],
        ),
        ("smtp_host", r.smtp_host.is_some(), &[TargetKind::Email]),
        ("smtp_port", r.smtp_port.is_some(), &[TargetKind::Email]),
        ("tls", r.tls.is_some(), &[TargetKind::Email]),
        ("username", r.username.is_some(), &[TargetKind::Email]),
        ("password", r.password.is_some(), &[TargetKind::Email]),
        ("from", r.from.is_some(), &[TargetKind::Email]),
        ("to", r.to.is_some(), &[TargetKind::Email]),
        ("ca_file", r.ca_file.is_some(), &[TargetKind::Email]),
    ];
    for (field, present, kinds) in given {
        if present && !kinds.contains(&kind) {
            return invalid(format!("{field} does not apply to a {kind} target"));
        }
    }
    Ok(())
}

fn email_address(v: &str, field: &str) -> Result<()> {
    if v.parse::<lettre::message::Mailbox>().is_err() {
        return invalid(format!("{field} is not an e-mail address"));
    }
    Ok(())
}

/// The config `r` describes, its shown host and a webhook secret the daemon
/// made (shown once).
fn config_of(
    r: &NewTargetRequest,
    kind: TargetKind,
) -> Result<(TargetConfig, String, Option<Secret>)> {
    only(r, kind)?;
    Ok(match kind {
        TargetKind::Webhook => {
            let url = need(&r.url, "url", kind)?;
            let host = http_url(url, "url")?;
            let (secret, made) = match r.secret.as_deref() {
                Some(s) if s.len() < 16 => {
                    return invalid("secret must be at least 16 characters");
                }
                Some(s) => (s.to_string(), None),
                None => {
                    let s = new_token("adnt");
                    (s.expose().to_string(), Some(s))
                }
            };
            (
                TargetConfig::Webhook {
                    url: url.to_string(),
                    secret,
                },
                host,
                made,
            )
        }
        TargetKind::Slack | TargetKind::Discord => {
            let url = need(&r.url, "url", kind)?.to_string();
            let host = http_url(&url, "url")?;
            let config = if kind == TargetKind::Slack {
                TargetConfig::Slack { url }
            } else {
                TargetConfig::Discord { url }
            };
            (config, host, None)
        }
        TargetKind::Matrix => {
            let homeserver = need(&r.homeserver, "homeserver", kind)?;
            let host = http_url(homeserver, "homeserver")?;
            let room = need(&r.room, "room", kind)?;
            if !(room.starts_with('!') || room.starts_with('#')) || !room.contains(':') {
                return invalid(
                    "room must be a Matrix room id (!id:server) or alias (#name:server)",
                );
            }
            let access_token = need(&r.access_token, "access_token", kind)?;
            (
                TargetConfig::Matrix {
                    homeserver: homeserver.to_string(),
                    room: room.to_string(),
                    access_token: access_token.to_string(),
                },
                host,
                None,
            )
        }
        TargetKind::Email => {
            let host = need(&r.smtp_host, "smtp_host", kind)?.to_string();
            if host.contains(['/', ' ', '@']) {
                return invalid("smtp_host must be a host name or address");
            }
            let tls = match r.tls.as_deref().unwrap_or("starttls") {
                "starttls" => SmtpTls::Starttls,
                "tls" => SmtpTls::Tls,
                "none" => SmtpTls::None,
                _ => return invalid("tls must be starttls, tls or none"),
            };
            if tls == SmtpTls::None && !is_loopback(&host) {
                return invalid(
                    "tls none (plain text) is allowed only for a loopback smtp_host; use starttls or tls",
                );
            }
            let port = r
                .smtp_port
                .unwrap_or(if tls == SmtpTls::Tls { 465 } else { 587 });
            if port == 0 {
                return invalid("smtp_port must be 1-65535");
            }
            let from = need(&r.from, "from", kind)?.to_string();
            email_address(&from, "from")?;
            let to = r.to.clone().unwrap_or_default();
            if to.is_empty() {
                return invalid("to is required for an email target: a list of e-mail addresses");
            }
            for t in &to {
                email_address(t, "to")?;
            }
            if r.username.is_some() != r.password.is_some() {
                return invalid("username and password go together: give both or neither");
            }
            if let Some(file) = &r.ca_file {
                let pem = std::fs::read(file)
                    .or_else(|_| invalid("ca_file cannot be read by the daemon"))?;
                if lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err() {
                    return invalid("ca_file is not a PEM certificate");
                }
            }
            (
                TargetConfig::Email(EmailConfig {
                    host: host.clone(),
                    port,
                    tls,
                    username: r.username.clone(),
                    password: r.password.clone(),
                    from,
                    to,
                    ca_file: r.ca_file.clone(),
                }),
                host,
                None,
            )
        }
    })
}

pub async fn add(app: &App, r: NewTargetRequest) -> Result<Added> {
    let kind: TargetKind = match r.kind.as_deref() {
        None => return invalid("kind is required: webhook, slack, discord, matrix or email"),
        Some(k) => match k.parse() {
            Ok(kind) => kind,
            Err(_) => return invalid("kind must be webhook, slack, discord, matrix or email"),
        },
    };
    let name = match r.name.as_deref() {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            n.to_string()
        }
        _ => return invalid("name is required: 1-64 letters, digits, '.', '_' or '-'"),
    };
    let events = match &r.events {
        None => NotifyEvent::ALL.to_vec(),
        Some(list) if list.is_empty() => return invalid("events must name at least one event"),
        Some(list) => {
            let mut events = Vec::new();
            for e in list {
                match e.parse::<NotifyEvent>() {
                    Ok(e) => events.push(e),
                    Err(_) => {
                        return invalid(format!(
                            "events: each must be one of {}",
                            NotifyEvent::ALL
                                .iter()
                                .map(|e| e.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
            events
        }
    };
    let max_attempts = r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
        return invalid(format!("max_attempts must be 1-{MAX_MAX_ATTEMPTS}"));
    }
    let (config, host, made) = config_of(&r, kind)?;
    let target = app
        .store
        .add_notification_target(&NewTarget {
            project_id: r.project_id,
            kind,
            name,
            events,
            host,
            max_attempts,
            sealed_config: sealed_config(app, &config),
        })
        .await?;
    tracing::info!(target_id = target.id, kind = %kind, project = ?target.project_id, "notification target added");
    Ok(Added {
        target,
        secret: made.map(|s| s.expose().to_string()),
    })
}

pub async fn list(app: &App) -> Result<Vec<NotificationTarget>> {
    Ok(app.store.notification_targets().await?)
}

pub async fn get(app: &App, id: i64) -> Result<NotificationTarget> {
    Ok(app.store.notification_target(id).await?)
}

pub async fn delete(app: &App, id: i64) -> Result<()> {
    app.store.delete_notification_target(id).await?;
    tracing::info!(target_id = id, "notification target deleted");
    Ok(())
}

pub async fn deliveries(app: &App, id: i64) -> Result<Vec<OutboxEntry>> {
    Ok(app
        .store
        .notification_deliveries(id, DELIVERIES_SHOWN)
        .await?)
}
