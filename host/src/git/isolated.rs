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

/// One local branch head to read (see [`local_heads`]).
pub struct LocalHead {
    pub url: String,
    pub branch: String,
    pub known_hosts: Option<String>,
}

/// [`remote_head`] for many local repositories without credentials, read
/// one after another on one blocking thread: a tick over thousands of
/// `file://` projects hands work to a thread once per batch rather than
/// once per project (the hand-offs cost more than the reads). Each read
/// keeps its own cap: when the one in progress passes it, that project
/// fails with a timeout and the reads not yet started are each made on
/// their own, as [`remote_head`] makes them.
pub async fn local_heads(
    heads: Vec<LocalHead>,
    cap: Duration,
) -> Vec<Result<Option<String>, GitError>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    type Head = Result<Option<String>, GitError>;
    struct Progress {
        /// Set when the waiting side stopped waiting: no more reads start.
        abandoned: AtomicBool,
        done: Mutex<Vec<Head>>,
    }
    let n = heads.len();
    if n == 0 {
        return Vec::new();
    }
    let heads = Arc::new(heads);
    let progress = Arc::new(Progress {
        abandoned: AtomicBool::new(false),
        done: Mutex::new(Vec::with_capacity(n)),
    });
    let job = {
        let (heads, progress) = (heads.clone(), progress.clone());
        move || {
            for h in heads.iter() {
                if progress.abandoned.load(Ordering::Acquire) {
                    return;
                }
                let head = super::local_repository_head(&h.url, &h.branch).unwrap_or_else(|| {
                    super::remote_head(&h.url, &h.branch, None, h.known_hosts.as_deref())
                });
                progress
                    .done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(head);
            }
        }
    };
    let task = tokio::task::spawn_blocking(job);
    // Waits while reads keep finishing within the cap of each: the cap
    // restarts whenever one more is done.
    let mut task = std::pin::pin!(task);
    let mut seen = 0;
    loop {
        match tokio::time::timeout(cap, &mut task).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => {
                // The job panicked: what it read stands, the rest fail.
                let mut done =
                    std::mem::take(&mut *progress.done.lock().unwrap_or_else(|e| e.into_inner()));
                let failed = done.len();
                done.extend(
                    (failed..n).map(|_| Err(GitError::Remote(format!("lookup task failed: {e}")))),
                );
                return done;
            }
            Err(_) => {
                let now_done = progress
                    .done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len();
                if now_done > seen {
                    seen = now_done;
                    continue;
                }
                progress.abandoned.store(true, Ordering::Release);
                break;
            }
        }
    }
    let mut done = std::mem::take(&mut *progress.done.lock().unwrap_or_else(|e| e.into_inner()));
    if done.len() == n {
        return done;
    }
    // Stopped waiting: the read in progress (or the job, never started)
    // timed out; the ones after it are made on their own, each under its
    // own cap.
    let timed_out = done.len();
    done.push(Err(GitError::Timeout {
        url: heads[timed_out].url.clone(),
        timeout: cap,
    }));
    for h in &heads[timed_out + 1..] {
        done.push(remote_head(&h.url, &h.branch, None, h.known_hosts.as_deref(), cap).await);
    }
    done
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

/// Whether a lookup of `url` may make a TLS connection: anything but
/// `git://` and ssh (`ssh://`, `git+ssh://`, `ssh+git://` or scp-like
/// `user@host:path`). Plain `http://` counts, since a server may redirect
/// it to HTTPS.
fn may_use_tls(url: &str) -> bool {
    let u = url.trim().to_ascii_lowercase();
    if let Some((scheme, _)) = u.split_once("://") {
        return !matches!(scheme, "git" | "ssh" | "git+ssh" | "ssh+git");
    }
    // No scheme: scp-like ssh when a ':' comes before any '/'.
    !u.split('/').next().is_some_and(|first| first.contains(':'))
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
    if !may_use_tls(url) {
        // libgit2 loads the system's CA bundle when it starts (OpenSSL
        // parses every certificate: most of a lookup's time on `git://`).
        // This child makes no TLS connection, so it gets an empty trust
        // store instead; were TLS ever attempted, verification would fail.
        command.env("SSL_CERT_FILE", "/dev/null");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_git_and_ssh_lookups_go_without_the_trust_store() {
        for url in [
            "git://127.0.0.1:9418/app.git",
            "ssh://git@example.com/app.git",
            "SSH://git@example.com:22/app.git",
            "git+ssh://git@example.com/app.git",
            "git@example.com:team/app.git",
        ] {
            assert!(!may_use_tls(url), "{url}");
        }
        for url in [
            "https://example.com/app.git",
            // A plain HTTP server may redirect to HTTPS.
            "http://example.com/app.git",
            "ftp://example.com/app.git",
            "app.git",
            "dir/with:colon",
        ] {
            assert!(may_use_tls(url), "{url}");
        }
    }

    /// A bare repository as the loose-ref fast path reads it, its branch
    /// `main` at `head`; `None` makes the ref a FIFO, a read that hangs
    /// until something writes to it.
    fn repo(dir: &Path, head: Option<&str>) -> String {
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("refs/heads")).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let main = dir.join("refs/heads/main");
        match head {
            Some(h) => std::fs::write(&main, format!("{h}\n")).unwrap(),
            None => {
                let path = std::ffi::CString::new(main.to_str().unwrap()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            }
        }
        format!("file://{}", dir.display())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_local_read_times_out_alone() {
        let root = std::env::temp_dir().join(format!("local-heads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (a, c) = ("a".repeat(40), "c".repeat(40));
        let urls = [
            repo(&root.join("a.git"), Some(&a)),
            repo(&root.join("b.git"), None),
            repo(&root.join("c.git"), Some(&c)),
        ];
        let heads = urls
            .iter()
            .map(|url| LocalHead {
                url: url.clone(),
                branch: "main".into(),
                known_hosts: None,
            })
            .collect();
        let cap = Duration::from_millis(500);
        let got = local_heads(heads, cap).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().as_deref(), Some(a.as_str()));
        assert!(
            matches!(&got[1], Err(GitError::Timeout { url, .. }) if *url == urls[1]),
            "{:?}",
            got[1]
        );
        // Read on its own after the hung one, under its own cap.
        assert_eq!(got[2].as_ref().unwrap().as_deref(), Some(c.as_str()));
        // Lets the hung read finish with a head, so the runtime can shut
        // down (the job then stops: it was abandoned).
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("b.git/refs/heads/main"))
            .unwrap();
        fifo.write_all(format!("{}\n", "b".repeat(40)).as_bytes())
            .unwrap();
        drop(fifo);
        let _ = std::fs::remove_dir_all(&root);
    }
}
