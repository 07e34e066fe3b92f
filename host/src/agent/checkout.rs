//! The project's repository at a commit, in the agent's work dir: hosted
//! projects from the control plane (with the node token), external ones
//! with the credential that came with the claim.

use std::path::Path;

use super::claim::Claimed;
use super::link::Link;
use crate::api::AgentCredential;
use crate::git::Credential;
use crate::secrets::Secret;
use crate::store::{CredentialKind, GitSource};

/// Checks out `commit` (the branch tip when `None`) into `dir`; returns the
/// commit checked out.
pub async fn checkout(
    link: &Link,
    claim: &Claimed,
    commit: Option<&str>,
    dir: &Path,
) -> Result<String, String> {
    let p = &claim.project;
    let (url, credential) = match p.git_source {
        GitSource::Hosted => (
            link.url(&format!("/git/{}.git", p.id)),
            Some(Credential::Https {
                username: "node".into(),
                token: Secret::new(link.token().to_string()),
            }),
        ),
        GitSource::External => {
            let url = p.git_url.clone().unwrap_or_default();
            let credential = claim.credential.as_ref().map(to_credential);
            let https = matches!(credential, Some(Credential::Https { .. }));
            crate::git::transport::check_remote(&url, https)
                .map_err(|e| format!("cannot fetch the project: {e}"))?;
            (url, credential)
        }
    };
    let pins = p.ssh_known_hosts.clone();
    let (branch, target, dir) = (
        p.git_branch.clone(),
        commit.map(str::to_string),
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
    .map_err(|e| format!("checkout task failed: {e}"))?
    .map_err(|e| format!("cannot fetch the project: {e}"))
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
