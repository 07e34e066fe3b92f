//! Network git lookups in a child process of this same binary.
//!
//! libgit2 cannot be cancelled, and its own timeout is per read: a remote
//! that trickles one byte at a time holds the calling thread for as long as
//! it likes. So every lookup that touches the network runs in a child
//! (`autodeploy git-lookup`, a hidden subcommand), which is killed when the
//! cap is reached (counted from the moment the child runs, so a slow start
//! on a busy host is not charged to the remote). A trickling remote then
//! costs its cap and one concurrency slot, never a thread of the daemon. The request, credential included,
//! goes over the child's stdin (never its arguments or environment, which
//! other users may read); the answer comes back on its stdout as JSON.
//! `file://` and local paths need no network and stay in-process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Credential, GitError, MAX_FILE_BYTES};
use crate::secrets::Secret;

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "git-lookup";
/// What the child writes first, once it runs: the cap starts then, so a
/// slow start on a busy host is not counted against the remote.
const READY: u8 = b'R';
/// Bound on how long a child may take to start.
const STARTUP: Duration = Duration::from_secs(30);
/// Bound on what is read from either side of the pipe: a file answer is at
/// most `MAX_FILE_BYTES`, JSON-escaped.
const MAX_MESSAGE_BYTES: u64 = (MAX_FILE_BYTES as u64) * 7 + 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Request {
    settings: ChildSettings,
    op: Op,
}

/// The daemon's process-wide git settings, which the child must share:
/// it is a fresh process and has read none of them.
/// Without the transport policy a child would trust no extra CA (failing
/// safe) but would also refuse the operator's insecure hosts.
#[derive(Serialize, Deserialize)]
struct ChildSettings {
    network_timeout_ms: u64,
    ca_file: Option<PathBuf>,
    insecure_hosts: Vec<String>,
}

impl ChildSettings {
    fn for_cap(cap: Duration) -> ChildSettings {
        ChildSettings {
            network_timeout_ms: cap.as_millis().min(u64::MAX as u128) as u64,
            ca_file: super::transport::ca_file(),
            insecure_hosts: super::transport::insecure_hosts(),
        }
    }

    /// In the child, before the lookup.
    fn apply(self) -> Result<(), GitError> {
        // libgit2's own per-read timeout, a little past the cap: the parent
        // kills this process at the cap anyway.
        super::set_network_timeout(
            Duration::from_millis(self.network_timeout_ms) + Duration::from_secs(5),
        );
        let config = super::transport::TransportConfig::new(
            self.ca_file,
            self.insecure_hosts.iter().map(String::as_str),
        )
        .and_then(super::transport::configure);
        config.map_err(|e| GitError::Remote(e.to_string()))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    RemoteHead {
        url: String,
        branch: String,
        credential: Option<WireCredential>,
        known_hosts: Option<String>,
    },
    RemoteFile {
        url: String,
        branch: String,
        file: String,
        credential: Option<WireCredential>,
        known_hosts: Option<String>,
        scratch: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireCredential {
    Https { username: String, token: String },
    Ssh { private_key: String },
}

impl WireCredential {
    fn from(c: &Credential) -> WireCredential {
        match c {
            Credential::Https { username, token } => WireCredential::Https {
                username: username.clone(),
                token: token.expose().to_string(),
            },
            Credential::Ssh { private_key } => WireCredential::Ssh {
                private_key: private_key.expose().to_string(),
            },
        }
    }

    fn into_credential(self) -> Credential {
        match self {
            WireCredential::Https { username, token } => Credential::Https {
                username,
                token: Secret::new(token),
            },
            WireCredential::Ssh { private_key } => Credential::Ssh {
                private_key: Secret::new(private_key),
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    Head { head: Option<String> },
    File { contents: Option<String> },
    Auth { url: String },
    Repo { path: String, message: String },
    Error { message: String },
}

impl Answer {
    fn from_error(e: GitError) -> Answer {
        match e {
            GitError::Auth(url) => Answer::Auth { url },
            GitError::Repo { path, message } => Answer::Repo { path, message },
            // Any other kind keeps its message (already free of secrets).
            other => Answer::Error {
                message: other.to_string(),
            },
        }
    }

    fn into_error(self) -> GitError {
        match self {
            Answer::Auth { url } => GitError::Auth(url),
            Answer::Repo { path, message } => GitError::Repo { path, message },
            Answer::Error { message } => GitError::Remote(message),
            Answer::Head { .. } | Answer::File { .. } => {
                GitError::Remote("the lookup process answered out of turn".into())
            }
        }
    }
}

/// Whether `url` needs the network (and so a child process).
pub fn is_remote(url: &str) -> bool {
    let u = url.trim();
    !(u.starts_with("file://") || u.starts_with('/'))
}

/// The branch head of a remote, like `git ls-remote`, capped at `cap`.
pub async fn remote_head(
    url: &str,
    branch: &str,
    credential: Option<&Credential>,
    known_hosts: Option<&str>,
    cap: Duration,
) -> Result<Option<String>, GitError> {
    if !is_remote(url) {
        let (url, branch, credential) = (url.to_string(), branch.to_string(), credential.cloned());
        let known_hosts = known_hosts.map(str::to_string);
        return in_process(url.clone(), cap, move || {
            super::local_repository_head(&url, &branch).unwrap_or_else(|| {
                super::remote_head(&url, &branch, credential.as_ref(), known_hosts.as_deref())
            })
        })
        .await;
    }
    let request = Request {
        settings: ChildSettings::for_cap(cap),
        op: Op::RemoteHead {
            url: url.to_string(),
            branch: branch.to_string(),
            credential: credential.map(WireCredential::from),
            known_hosts: known_hosts.map(str::to_string),
        },
    };
    match run_child(url, &request, cap).await? {
        Answer::Head { head } => Ok(head),
        other => Err(other.into_error()),
    }
}

/// A file at the tip of a remote branch (see [`super::remote_file`]),
/// capped at `cap`. The child fetches into a directory of its own under
/// `scratch`, removed here whatever happened to the child.
pub async fn remote_file(
    url: &str,
    branch: &str,
    file: &str,
    credential: Option<&Credential>,
    known_hosts: Option<&str>,
    scratch: &Path,
    cap: Duration,
) -> Result<Option<String>, GitError> {
    if !is_remote(url) {
        let (url, branch, file, credential, scratch) = (
            url.to_string(),
            branch.to_string(),
            file.to_string(),
            credential.cloned(),
            scratch.to_path_buf(),
        );
        let known_hosts = known_hosts.map(str::to_string);
        return in_process(url.clone(), cap, move || {
            super::remote_file(
                &url,
                &branch,
                &file,
                credential.as_ref(),
                known_hosts.as_deref(),
                &scratch,
            )
        })
        .await;
    }
    let dir = super::TempDir::new(scratch).map_err(|e| GitError::Repo {
        path: scratch.display().to_string(),
        message: e.to_string(),
    })?;
    let request = Request {
        settings: ChildSettings::for_cap(cap),
        op: Op::RemoteFile {
            url: url.to_string(),
            branch: branch.to_string(),
            file: file.to_string(),
            credential: credential.map(WireCredential::from),
            known_hosts: known_hosts.map(str::to_string),
            scratch: dir.0.clone(),
        },
    };
    let answer = run_child(url, &request, cap).await;
    drop(dir);
    match answer? {
        Answer::File { contents } => Ok(contents),
        other => Err(other.into_error()),
    }
}

/// A local read on a blocking thread, with the same cap (a local read does
/// not trickle, so the thread comes back soon after).
async fn in_process<T: Send + 'static>(
    url: String,
    cap: Duration,
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    match tokio::time::timeout(cap, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(GitError::Remote(format!("lookup task failed: {e}"))),
        Err(_) => Err(GitError::Timeout { url, timeout: cap }),
    }
}

/// This binary, even if the file was replaced since the daemon started.
fn own_executable() -> std::io::Result<PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if proc_self.exists() {
        Ok(proc_self.to_path_buf())
    } else {
        std::env::current_exe()
    }
}

/// Runs one request in a child; the child is killed at `cap`, and also if
/// this future is dropped (`kill_on_drop`).
async fn run_child(url: &str, request: &Request, cap: Duration) -> Result<Answer, GitError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        GitError::Remote(format!("git lookup process for {url}: {what}: {e}"))
    };
    let body = serde_json::to_vec(request).map_err(|e| failed("encode", &e))?;
    let mut command =
        tokio::process::Command::new(own_executable().map_err(|e| failed("find", &e))?);
    command
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = spawn(command).await.map_err(|e| failed("start", &e))?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(GitError::Remote(format!(
            "git lookup process for {url}: no pipes"
        )));
    };
    let mut ready = [0u8; 1];
    match tokio::time::timeout(STARTUP, stdout.read_exact(&mut ready)).await {
        Ok(Ok(_)) if ready[0] == READY => {}
        started => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(match started {
                Err(_) => failed("start", &format!("not running after {STARTUP:?}")),
                Ok(Err(e)) => failed("start", &e),
                Ok(Ok(_)) => failed("start", &"an unexpected first byte"),
            });
        }
    }
    let exchange = async {
        stdin.write_all(&body).await?;
        drop(stdin);
        let mut out = Vec::new();
        stdout.take(MAX_MESSAGE_BYTES).read_to_end(&mut out).await?;
        child.wait().await?;
        Ok::<_, std::io::Error>(out)
    };
    let exchanged = tokio::time::timeout(cap, exchange).await;
    let out = match exchanged {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(failed("pipe", &e));
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(GitError::Timeout {
                url: url.to_string(),
                timeout: cap,
            });
        }
    };
    serde_json::from_slice(&out).map_err(|_| {
        GitError::Remote(format!(
            "git lookup process for {url} ended without an answer"
        ))
    })
}

/// Starting a process waits until the child has executed (vfork): on a
/// busy host that is milliseconds, which must not hold the async workers
/// (the API runs there). Two blocking threads at most do it.
async fn spawn(mut command: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    static SPAWNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _turn = SPAWNING
        .acquire()
        .await
        .map_err(|_| std::io::Error::other("closed"))?;
    tokio::task::spawn_blocking(move || command.spawn())
        .await
        .map_err(std::io::Error::other)?
}

/// The child's side: one request on stdin, one answer on stdout. Returns
/// the process exit code.
pub fn child_main() -> i32 {
    // No lower CPU priority: on a saturated host a niced lookup starves
    // past its cap and a change is missed tick after tick; the cap and the
    // concurrency slots are what bound a lookup's cost.
    {
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(&[READY])
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return 2;
        }
    }
    let mut input = Vec::new();
    if std::io::stdin()
        .take(MAX_MESSAGE_BYTES)
        .read_to_end(&mut input)
        .is_err()
    {
        return 2;
    }
    let answer = match serde_json::from_slice::<Request>(&input) {
        Ok(request) => answer(request),
        Err(_) => Answer::Error {
            message: "the lookup request is not valid".into(),
        },
    };
    let Ok(out) = serde_json::to_vec(&answer) else {
        return 2;
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

fn answer(request: Request) -> Answer {
    if let Err(e) = request.settings.apply() {
        return Answer::from_error(e);
    }
    match request.op {
        Op::RemoteHead {
            url,
            branch,
            credential,
            known_hosts,
        } => {
            let credential = credential.map(WireCredential::into_credential);
            match super::remote_head(&url, &branch, credential.as_ref(), known_hosts.as_deref()) {
                Ok(head) => Answer::Head { head },
                Err(e) => Answer::from_error(e),
            }
        }
        Op::RemoteFile {
            url,
            branch,
            file,
            credential,
            known_hosts,
            scratch,
        } => {
            let credential = credential.map(WireCredential::into_credential);
            match super::remote_file(
                &url,
                &branch,
                &file,
                credential.as_ref(),
                known_hosts.as_deref(),
                &scratch,
            ) {
                Ok(contents) => Answer::File { contents },
                Err(e) => Answer::from_error(e),
            }
        }
    }
}
