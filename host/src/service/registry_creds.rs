//! Per-project registry credentials: set (write-only: the password is
//! sealed and never shown again), list (registry and username only),
//! delete. The image watcher uses a project's own credential for its images
//! on that registry in place of the daemon's.

use serde::{Deserialize, Serialize};

use super::{Result, ServiceError, invalid};
use crate::app::App;
use crate::registry::reference::DOCKER_HUB;
use crate::secrets::Secret;
use crate::store::SealedRegistryCredential;

/// A credential as a user gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentialInput {
    pub registry: String,
    pub username: String,
    pub password: Secret,
}

/// A credential as the API shows it: never the password.
#[derive(Debug, Serialize)]
pub struct RegistryCredentialInfo {
    pub registry: String,
    pub username: String,
}

/// `host[:port]` as stored: lower-cased, without a scheme or path, Docker
/// Hub's aliases as `docker.io`.
pub fn registry_host(raw: &str) -> Result<String> {
    let t = raw.trim();
    let t = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t);
    let host = t.split('/').next().unwrap_or("").to_ascii_lowercase();
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if host.is_empty() || host.len() > 255 || !host.chars().all(ok) {
        return invalid(
            "registry must be a registry host, as in an image reference (ghcr.io, registry.example.com:5000)",
        );
    }
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => host,
    })
}

pub async fn set(
    app: &App,
    project_id: i64,
    input: RegistryCredentialInput,
) -> Result<Vec<RegistryCredentialInfo>> {
    let registry = registry_host(&input.registry)?;
    let username = input.username.trim();
    if username.is_empty() || username.len() > 255 || username.contains(':') {
        return invalid("username must be 1-255 characters without ':'");
    }
    if username.chars().any(char::is_control) {
        return invalid("username must not hold control characters");
    }
    let password = input.password.expose();
    if password.is_empty() || password.len() > 16 * 1024 {
        return invalid("password must be 1-16384 bytes");
    }
    app.store
        .set_registry_credential(
            project_id,
            &SealedRegistryCredential {
                registry,
                username: username.to_string(),
                sealed: app.key.seal(&input.password),
            },
        )
        .await?;
    list(app, project_id).await
}

pub async fn list(app: &App, project_id: i64) -> Result<Vec<RegistryCredentialInfo>> {
    // A 404 for a project that does not exist, not an empty list.
    app.store.project(project_id).await?;
    Ok(app
        .store
        .registry_credentials(project_id)
        .await?
        .into_iter()
        .map(|c| RegistryCredentialInfo {
            registry: c.registry,
            username: c.username,
        })
        .collect())
}

pub async fn delete(app: &App, project_id: i64, registry: &str) -> Result<()> {
    let registry = registry_host(registry)?;
    app.store.project(project_id).await?;
    if !app
        .store
        .delete_registry_credential(project_id, &registry)
        .await?
    {
        return Err(ServiceError::NotFound(format!(
            "registry credential for {registry} of project {project_id}"
        )));
    }
    Ok(())
}
