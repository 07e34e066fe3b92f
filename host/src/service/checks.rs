//! Checks of what a person typed. Each error names the field and the
//! problem; values that may be secrets (a URL with a password, a token
//! pasted into the wrong field) are never repeated.

use std::collections::BTreeMap;

use super::{Result, ServiceError, invalid};
use crate::store::{DeploySettings, GitSource, ProjectFields, ProjectType};

/// A credential as a user gives it. The secret is never returned.
#[derive(serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialInput {
    Https {
        username: String,
        token: crate::secrets::Secret,
    },
    Ssh {
        private_key: crate::secrets::Secret,
    },
}

/// A project or node name: 1-100 letters, digits, '-', '_' or '.'.
pub fn name(what: &str, name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 100 || !name.chars().all(ok) {
        return invalid(format!(
            "{what} {name:?} must be 1-100 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// A project's fields, with the credential that comes with them.
pub fn project(f: &ProjectFields, credential: Option<&CredentialInput>) -> Result<()> {
    name("name", &f.name)?;
    match (f.git_source, f.git_url.as_deref()) {
        (GitSource::External, None) => return invalid("external projects need git_url"),
        (GitSource::Hosted, Some(_)) => {
            return invalid(
                "hosted projects are served by autodeploy at /git/{id}.git: leave git_url out",
            );
        }
        (GitSource::External, Some(url)) => git_url(url, credential)?,
        (GitSource::Hosted, None) => {
            if credential.is_some() {
                return invalid(
                    "hosted projects need no credentials: pushes authenticate with the push token",
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
        return invalid(format!("git_branch {b:?} is not a valid branch name"));
    }
    let p = &f.compose_file_path;
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|part| part == "..") {
        return invalid(format!(
            "compose_file_path {p:?} must be a relative path inside the repository"
        ));
    }
    if let Some(port) = f.expose_port
        && !(1..=65535).contains(&port)
    {
        return invalid(format!("expose_port {port} is not a TCP port (1-65535)"));
    }
    if f.expose_service
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return invalid("expose_service must not be blank");
    }
    match (f.project_type, f.image_ref.as_deref(), f.container_port) {
        (ProjectType::Image, Some(image), Some(port)) => {
            crate::registry::ImageRef::parse(image)
                .map_err(|e| ServiceError::Invalid(format!("image_ref: {e}")))?;
            if !(1..=65535).contains(&port) {
                return invalid(format!("container_port {port} is not a TCP port (1-65535)"));
            }
        }
        (ProjectType::Image, _, _) => {
            return invalid("image projects need image_ref and container_port");
        }
        // Built from the repository: the port the app listens on, if any.
        (ProjectType::Deployment, None, port) => {
            if let Some(port) = port
                && !(1..=65535).contains(&port)
            {
                return invalid(format!("container_port {port} is not a TCP port (1-65535)"));
            }
        }
        (_, Some(_), _) => {
            return invalid(
                "image_ref belongs to image projects only (a deployment project is built from its repository's Dockerfile)",
            );
        }
        (_, None, None) => {}
        (_, None, Some(_)) => {
            return invalid("container_port belongs to image and deployment projects only");
        }
    }
    deploy_settings(f)?;
    labels("labels", &f.labels)
}

/// The build and health-gate settings.
fn deploy_settings(f: &ProjectFields) -> Result<()> {
    let d = &f.deploy;
    let p = &d.dockerfile_path;
    if p.is_empty()
        || p.len() > 512
        || p.starts_with('/')
        || p.split(['/', '\\']).any(|part| part == "..")
        || p.chars().any(char::is_control)
    {
        return invalid(format!(
            "dockerfile_path {p:?} must be a relative path inside the repository (no '..')"
        ));
    }
    if f.project_type != ProjectType::Deployment && *p != DeploySettings::DEFAULT_DOCKERFILE {
        return invalid("dockerfile_path belongs to deployment projects only");
    }
    if let Some(path) = &d.health_probe_path {
        if !path.starts_with('/')
            || path.len() > 512
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return invalid(
                "health_probe_path must be an HTTP path starting with '/' (at most 512 bytes, no spaces)",
            );
        }
        if f.expose_port.is_none() && f.container_port.is_none() {
            return invalid(
                "health_probe_path needs expose_port (the probe asks 127.0.0.1 on that port)",
            );
        }
    }
    let t = d.health_timeout_seconds;
    let (min, max) = (
        DeploySettings::MIN_HEALTH_TIMEOUT,
        DeploySettings::MAX_HEALTH_TIMEOUT,
    );
    if !(min..=max).contains(&t) {
        return invalid(format!(
            "health_timeout_seconds {t} must be between {min} and {max}"
        ));
    }
    Ok(())
}

fn git_url(url: &str, credential: Option<&CredentialInput>) -> Result<()> {
    let https_credential = matches!(credential, Some(CredentialInput::Https { .. }));
    // Parsed with the url crate; the errors never repeat the URL, which may
    // hold a password.
    let remote = remote(url, https_credential)?;
    let scheme = remote.scheme.as_str();
    let https = matches!(scheme, "https" | "http");
    let ssh = scheme == "ssh";
    if !(https || ssh || matches!(scheme, "git" | "file")) {
        // Shown without any password (there is none here: it was refused above).
        return invalid(format!(
            "git_url {:?} must be https://, http://, ssh://, git://, file:// or user@host:path",
            crate::git::shown_url(url)
        ));
    }
    match credential {
        Some(CredentialInput::Https { .. }) if !https => {
            invalid("https credentials need an https:// or http:// git_url")
        }
        Some(CredentialInput::Ssh { .. }) if !ssh => {
            invalid("an ssh key needs an ssh:// or user@host:path git_url")
        }
        _ => Ok(()),
    }
}

/// A remote that a token may be sent to (`with_token`) or not.
pub fn remote(url: &str, with_token: bool) -> Result<crate::git::transport::RemoteUrl> {
    crate::git::transport::check_remote(url, with_token)
        .map_err(|e| ServiceError::Invalid(e.to_string()))
}

/// Pins need an SSH remote, must parse, and must name the remote's host.
pub fn known_hosts(f: &ProjectFields, known_hosts: Option<&str>) -> Result<()> {
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
        return invalid(
            "ssh_known_hosts pins SSH host keys: it needs an external project with an ssh:// or user@host:path git_url",
        );
    };
    let pins =
        crate::git::KnownHosts::parse(text).map_err(|e| ServiceError::Invalid(e.to_string()))?;
    if !pins.covers(&remote.host, remote.port) {
        // The host is not named: error answers never repeat request values.
        return invalid(
            "ssh_known_hosts has no line for the git_url's host (use [host]:port for a port other than 22)",
        );
    }
    Ok(())
}

/// Node labels or a node selector: at most 32 pairs; keys 1-63 and values
/// 0-63 letters, digits, '-', '_', '.' or '/'. The error names the field
/// and the offending key, never a value (it may be anything pasted).
pub fn labels(field: &str, map: &BTreeMap<String, String>) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if map.len() > 32 {
        return invalid(format!(
            "{field} has {} pairs; at most 32 are allowed",
            map.len()
        ));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > 63 || !k.chars().all(ok) {
            return invalid(format!(
                "{field}: every key must be 1-63 letters, digits, '-', '_', '.' or '/'"
            ));
        }
        if v.len() > 63 || !v.chars().all(ok) {
            return invalid(format!(
                "{field}: the value of {k:?} must be 0-63 letters, digits, '-', '_', '.' or '/'"
            ));
        }
    }
    Ok(())
}
