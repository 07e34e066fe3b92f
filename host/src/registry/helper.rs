//! Docker credential helpers: `docker-credential-NAME get` reads the server
//! on stdin and prints `{"ServerURL","Username","Secret"}` on stdout. A
//! `Username` of `<token>` makes `Secret` an identity (refresh) token.
//!
//! The helper runs in its own process group, killed whole at the timeout (a
//! script's children would otherwise keep its stdout open). Its stdout is
//! read up to a cap and its stderr is discarded: both may hold secrets, so
//! neither ever reaches a log or an error message.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::secrets::Secret;

/// How long a helper may take (a keychain prompt or a cloud call).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// More than any real credential answer.
const MAX_OUTPUT: usize = 64 * 1024;
/// What helpers print when they hold nothing for the server: docker then
/// goes on without credentials, and so does the watcher.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// What a helper gave.
#[derive(Clone)]
pub enum HelperCredential {
    Basic {
        user: String,
        password: Secret,
    },
    /// `Username` was `<token>`: an OAuth2 refresh token for the registry's
    /// token service.
    IdentityToken(Secret),
}

/// Why a helper gave nothing usable. No variant holds the helper's output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HelperError {
    #[error("credential helper docker-credential-{helper} for {host} is not on PATH")]
    Missing { helper: String, host: String },
    #[error("credential helper docker-credential-{helper} for {host} could not run: {why}")]
    Spawn {
        helper: String,
        host: String,
        why: String,
    },
    #[error("credential helper docker-credential-{helper} for {host} failed ({status})")]
    Failed {
        helper: String,
        host: String,
        status: String,
    },
    #[error(
        "credential helper docker-credential-{helper} for {host} did not answer within {timeout:?} and was killed"
    )]
    Timeout {
        helper: String,
        host: String,
        timeout: Duration,
    },
    #[error(
        "credential helper docker-credential-{helper} for {host} printed more than {MAX_OUTPUT} bytes"
    )]
    TooLarge { helper: String, host: String },
    #[error("credential helper docker-credential-{helper} for {host} answered {what}")]
    BadAnswer {
        helper: String,
        host: String,
        what: &'static str,
    },
}

/// A helper name may only name a program: no path, no shell syntax.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

/// Runs `docker-credential-{helper} get` for `server`; `Ok(None)` when the
/// helper holds nothing for it.
pub async fn get(
    helper: &str,
    host: &str,
    server: &str,
    timeout: Duration,
) -> Result<Option<HelperCredential>, HelperError> {
    let (h, s) = (helper.to_string(), host.to_string());
    let mut child = tokio::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HelperError::Missing {
                helper: h.clone(),
                host: s.clone(),
            },
            _ => HelperError::Spawn {
                helper: h.clone(),
                host: s.clone(),
                why: e.kind().to_string(),
            },
        })?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let run = async {
        if let Some(mut stdin) = stdin.take() {
            // A helper that does not read its stdin is not an error here.
            let _ = stdin.write_all(server.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
        let mut out = Vec::new();
        if let Some(stdout) = stdout.take() {
            let read = stdout
                .take(MAX_OUTPUT as u64 + 1)
                .read_to_end(&mut out)
                .await;
            if read.is_err() {
                out.clear();
            }
        }
        let status = child.wait().await;
        (out, status)
    };
    let (out, status) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            kill_group(pid);
            return Err(HelperError::Timeout {
                helper: h,
                host: s,
                timeout,
            });
        }
    };
    if out.len() > MAX_OUTPUT {
        return Err(HelperError::TooLarge { helper: h, host: s });
    }
    let status = status.map_err(|e| HelperError::Spawn {
        helper: h.clone(),
        host: s.clone(),
        why: e.kind().to_string(),
    })?;
    if !status.success() {
        if String::from_utf8_lossy(&out).contains(NOT_FOUND) {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            helper: h,
            host: s,
            status: status.to_string(),
        });
    }
    parse(&out).map_err(|what| HelperError::BadAnswer {
        helper: h,
        host: s,
        what,
    })
}

/// The answer's credential; the error says only what was wrong with it.
fn parse(out: &[u8]) -> Result<Option<HelperCredential>, &'static str> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        username: String,
        #[serde(default)]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(out).map_err(|_| "something that is not its JSON")?;
    if a.secret.is_empty() {
        return Err("an empty Secret");
    }
    if a.username == "<token>" {
        return Ok(Some(HelperCredential::IdentityToken(Secret::new(a.secret))));
    }
    if a.username.is_empty() {
        return Err("an empty Username");
    }
    Ok(Some(HelperCredential::Basic {
        user: a.username,
        password: Secret::new(a.secret),
    }))
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the helper's own process group. Only called
        // before the leader is reaped (the timeout stops the read before
        // `wait`), so the group id is still the helper's.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_token_usernames_are_identity_tokens() {
        assert!(matches!(
            parse(br#"{"ServerURL":"x","Username":"u","Secret":"p"}"#),
            Ok(Some(HelperCredential::Basic { .. }))
        ));
        assert!(matches!(
            parse(br#"{"Username":"<token>","Secret":"r"}"#),
            Ok(Some(HelperCredential::IdentityToken(_)))
        ));
        assert!(parse(b"not json planted-secret").is_err());
        assert!(parse(br#"{"Username":"u","Secret":""}"#).is_err());
        assert!(valid_name("ecr-login"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a b"));
    }
}
