//! Git access with libgit2: hosted bare repositories on disk, and remote
//! branch heads read like `git ls-remote`, with credentials handed to
//! libgit2 from memory. No `git` subprocess is needed here.

pub mod http;
pub mod isolated;
pub mod lock;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use git2::{CertificateCheckStatus, Cred, CredentialType, Direction, RemoteCallbacks, Repository};

use crate::secrets::Secret;
pub use transport::{KnownHosts, TransportError, shown_url};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    Remote(String),
    #[error("git lookup of {url} did not finish within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("authentication to {0} failed: check the username and token or key")]
    Auth(String),
    #[error("repository {path}: {message}")]
    Repo { path: String, message: String },
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error(
        "{url}: the TLS certificate is not trusted ({message}); nothing was sent. Trust its CA with AUTODEPLOY_GIT_CA"
    )]
    Certificate { url: String, message: String },
    #[error("{url}: {message}; nothing was sent")]
    HostKey { url: String, message: String },
}

/// How to authenticate to an external repository.
#[derive(Clone)]
pub enum Credential {
    Https { username: String, token: Secret },
    Ssh { private_key: Secret },
}

impl Credential {
    /// Removes the secret from a message that might echo it.
    fn redact(&self, msg: &str) -> String {
        let secret = match self {
            Credential::Https { token, .. } => token.expose(),
            Credential::Ssh { private_key } => private_key.expose(),
        };
        if secret.is_empty() {
            msg.to_string()
        } else {
            msg.replace(secret, "***")
        }
    }
}

/// Bounds every network operation of libgit2 in this process: a server that
/// accepts and never answers costs one lookup this long, not a whole tick.
pub fn set_network_timeout(timeout: Duration) {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: these only set libgit2's global options; called before lookups start.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
    }
}

/// The commit a remote branch points at, or `None` when the branch does not
/// exist. Blocking: run it on a blocking thread.
/// `known_hosts` pins the SSH host key (known_hosts lines); without it any
/// host key is accepted. HTTPS certificates are always verified unless the
/// host is listed in `AUTODEPLOY_INSECURE_GIT_HOSTS`.
pub fn remote_head(
    url: &str,
    branch: &str,
    credential: Option<&Credential>,
    known_hosts: Option<&str>,
) -> Result<Option<String>, GitError> {
    let redact = |m: String| credential.map_or(m.clone(), |c| c.redact(&m));
    let verify = Verify::new(url, credential, known_hosts, true)?;
    let mut remote = git2::Remote::create_detached(url)
        .map_err(|e| GitError::Remote(redact(e.message().to_string())))?;
    let attempts = AtomicUsize::new(0);
    let callbacks = callbacks(credential, &attempts, &verify);
    let connection = match remote.connect_auth(Direction::Fetch, Some(callbacks), None) {
        Ok(c) => c,
        Err(e) => {
            let refused = attempts.load(Ordering::SeqCst) > 1 || e.message().contains("401");
            return Err(verify.failure(&e, refused, &redact));
        }
    };
    let wanted = format!("refs/heads/{branch}");
    let shown = &verify.shown;
    let heads = connection
        .list()
        .map_err(|e| GitError::Remote(redact(format!("{shown}: {}", e.message()))))?;
    Ok(heads
        .iter()
        .find(|h| h.name() == wanted)
        .map(|h| h.oid().to_string()))
}

/// What a lookup checks before anything is sent: the URL (no password; a
/// credential over http:// only to loopback or listed hosts) and the pinned
/// SSH host keys; and, after a failure, why the server was refused.
struct Verify {
    /// The URL as messages show it (never with a password).
    shown: String,
    port: Option<u16>,
    pins: Option<KnownHosts>,
    refused: Mutex<Option<String>>,
}

impl Verify {
    fn new(
        url: &str,
        credential: Option<&Credential>,
        known_hosts: Option<&str>,
        check_http: bool,
    ) -> Result<Verify, GitError> {
        let https_credential = matches!(credential, Some(Credential::Https { .. }));
        let remote = transport::check_remote(url, https_credential && check_http)?;
        let pins = known_hosts.map(KnownHosts::parse).transpose()?;
        Ok(Verify {
            shown: shown_url(url),
            port: remote.port,
            pins,
            refused: Mutex::new(None),
        })
    }

    /// The error for a failed connect or fetch: a refused host key or
    /// certificate first (the server got nothing), then refused credentials.
    fn failure(
        &self,
        e: &git2::Error,
        auth_refused: bool,
        redact: &dyn Fn(String) -> String,
    ) -> GitError {
        let url = self.shown.clone();
        if let Some(message) = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return GitError::HostKey { url, message };
        }
        // A TLS failure happens during the handshake, before any request.
        if e.code() == git2::ErrorCode::Certificate || e.class() == git2::ErrorClass::Ssl {
            return GitError::Certificate {
                url,
                message: redact(e.message().to_string()),
            };
        }
        if auth_refused {
            return GitError::Auth(url);
        }
        GitError::Remote(redact(format!("{url}: {}", e.message())))
    }
}

/// Credentials from memory; a second request for them means the first were
/// refused, and is answered with an error instead of a replay loop.
fn callbacks<'a>(
    credential: Option<&'a Credential>,
    attempts: &'a AtomicUsize,
    verify: &'a Verify,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, username, allowed| {
        if attempts.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(git2::Error::from_str("credentials refused"));
        }
        match credential {
            Some(Credential::Https { username, token })
                if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
            {
                Cred::userpass_plaintext(username, token.expose())
            }
            Some(Credential::Ssh { private_key })
                if allowed.contains(CredentialType::SSH_MEMORY)
                    || allowed.contains(CredentialType::SSH_KEY) =>
            {
                Cred::ssh_key_from_memory(
                    username.unwrap_or("git"),
                    None,
                    private_key.expose(),
                    None,
                )
            }
            Some(Credential::Ssh { .. }) if allowed.contains(CredentialType::USERNAME) => {
                Cred::username(username.unwrap_or("git"))
            }
            _ => Err(git2::Error::from_str(
                "the remote asks for credentials this project does not have",
            )),
        }
    });
    // Runs before any credential is offered. TLS: libgit2 has verified the
    // chain and name against the system roots and AUTODEPLOY_GIT_CA; its
    // verdict always stands ("passthrough").
    // SSH: any host key, as the product promises, unless the project pins
    // known_hosts lines.
    cb.certificate_check(move |cert, host| {
        if let Some(hostkey) = cert.as_hostkey() {
            let Some(pins) = &verify.pins else {
                return Ok(CertificateCheckStatus::CertificateOk);
            };
            let checked = match hostkey.hostkey() {
                Some(key) => pins.check(host, verify.port, key),
                None => Err(format!("{host} did not show its raw host key")),
            };
            return match checked {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(message) => {
                    let error = git2::Error::from_str(&message);
                    *verify.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                    Err(error)
                }
            };
        }
        // An X.509 certificate is never accepted here: libgit2's own check
        // (system roots plus AUTODEPLOY_GIT_CA) is the only verdict.
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });
    cb
}

/// Where hosted repositories live unless `AUTODEPLOY_REPO_DIR` says
/// otherwise (the layout of versions before it existed).
pub fn default_repo_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("repos")
}

/// A hosted project's bare repository in the repo dir.
pub fn hosted_path(repo_dir: &Path, project_id: i64) -> PathBuf {
    repo_dir.join(format!("{project_id}.git"))
}

/// Creates a hosted project's bare repository, its HEAD on `branch`.
pub fn init_hosted(path: &Path, branch: &str) -> Result<(), GitError> {
    let err = |e: git2::Error| GitError::Repo {
        path: path.display().to_string(),
        message: e.message().to_string(),
    };
    let repo = Repository::init_bare(path).map_err(err)?;
    repo.set_head(&format!("refs/heads/{branch}"))
        .map_err(err)?;
    // Let `git http-backend` accept pushes (it authenticates nothing itself:
    // the daemon has checked the token before it runs).
    repo.config()
        .and_then(|mut c| c.set_bool("http.receivepack", true))
        .map_err(err)?;
    Ok(())
}

/// The commit a local branch points at, or `None` when it does not exist.
pub fn local_head(path: &Path, branch: &str) -> Result<Option<String>, GitError> {
    let err = |e: git2::Error| GitError::Repo {
        path: path.display().to_string(),
        message: e.message().to_string(),
    };
    let repo = Repository::open_bare(path).map_err(err)?;
    match repo.find_reference(&format!("refs/heads/{branch}")) {
        Ok(r) => Ok(r.target().map(|oid| oid.to_string())),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// The branch head of a repository on this machine (a `file://` URL
/// without escapes, or a path), read straight from its refs: the answer
/// [`remote_head`] gives, without a transport, which loads the user's git
/// config and lists every ref on each call (most of a poll tick's time over
/// thousands of local repositories). `None` when it is not such a URL.
pub fn local_repository_head(url: &str, branch: &str) -> Option<Result<Option<String>, GitError>> {
    let url = url.trim();
    let path = match url.strip_prefix("file://") {
        Some(path) if !path.contains('%') => path,
        Some(_) => return None,
        None if url.starts_with('/') => url,
        None => return None,
    };
    if let Some(head) = loose_branch_ref(Path::new(path), branch) {
        return Some(Ok(Some(head)));
    }
    let err = |e: git2::Error| GitError::Remote(format!("{url}: {}", e.message()));
    let read = || {
        let repo = Repository::open_ext(
            path,
            git2::RepositoryOpenFlags::NO_SEARCH,
            std::iter::empty::<&std::ffi::OsStr>(),
        )
        .map_err(err)?;
        match repo
            .find_reference(&format!("refs/heads/{branch}"))
            .and_then(|r| r.resolve())
        {
            Ok(r) => Ok(r.target().map(|oid| oid.to_string())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    };
    Some(read())
}

/// The branch's loose ref in the bare repository `git_dir`, read as a
/// plain file: what libgit2 finds first, without opening the repository
/// (which reads its config files and more, and was most of a tick over
/// thousands of local repositories). `None` whenever that is not plainly
/// the answer: not a bare repository owned by this user (libgit2 checks
/// `safe.directory`), a branch name that is not valid, a ref that is
/// packed, symbolic or in another format. libgit2 then reads it.
fn loose_branch_ref(git_dir: &Path, branch: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let name = format!("refs/heads/{branch}");
    if !git2::Reference::is_valid_name(&name) {
        return None;
    }
    let dir = std::fs::metadata(git_dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if !dir.is_dir() || dir.uid() != unsafe { libc::geteuid() } {
        return None;
    }
    // libgit2 looks for a `.git` inside first; a bare repository has a
    // HEAD file and an objects directory. SHA-1 names only, the ones
    // libgit2 reads.
    if std::fs::symlink_metadata(git_dir.join(".git")).is_ok()
        || !std::fs::metadata(git_dir.join("HEAD")).is_ok_and(|m| m.is_file())
        || !std::fs::metadata(git_dir.join("objects")).is_ok_and(|m| m.is_dir())
    {
        return None;
    }
    let text = std::fs::read_to_string(git_dir.join(&name)).ok()?;
    let oid = text.strip_suffix('\n').unwrap_or(&text);
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (oid.len() == 40 && oid.bytes().all(hex)).then(|| oid.to_string())
}

/// Files larger than this are not read (a compose file is a few KiB).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// A file's contents at the tip of `branch`: `Ok(None)` when the file does
/// not exist there; an error when the branch does not, or the file is over
/// [`MAX_FILE_BYTES`]. Reads the object database only: no checkout.
fn file_at_ref(repo: &Repository, reference: &str, file: &str) -> Result<Option<String>, GitError> {
    let err = |m: String| GitError::Repo {
        path: repo.path().display().to_string(),
        message: m,
    };
    let commit = repo
        .find_reference(reference)
        .and_then(|r| r.peel_to_commit())
        .map_err(|e| err(format!("{reference}: {}", e.message())))?;
    let tree = commit.tree().map_err(|e| err(e.message().to_string()))?;
    let entry = match tree.get_path(Path::new(file)) {
        Ok(entry) => entry,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(err(e.message().to_string())),
    };
    let blob = entry
        .to_object(repo)
        .and_then(|o| o.peel_to_blob())
        .map_err(|e| err(format!("{file}: {}", e.message())))?;
    if blob.size() > MAX_FILE_BYTES {
        return Err(err(format!(
            "{file} is {} bytes; files over {MAX_FILE_BYTES} bytes are not read",
            blob.size()
        )));
    }
    String::from_utf8(blob.content().to_vec())
        .map(Some)
        .map_err(|_| err(format!("{file} is not UTF-8 text")))
}

/// A file at the tip of a hosted repository's branch.
pub fn hosted_file(path: &Path, branch: &str, file: &str) -> Result<Option<String>, GitError> {
    let repo = Repository::open_bare(path).map_err(|e| GitError::Repo {
        path: path.display().to_string(),
        message: e.message().to_string(),
    })?;
    file_at_ref(&repo, &format!("refs/heads/{branch}"), file)
}

/// A file at the tip of an external repository's branch: a depth-1 fetch of
/// that branch into a temporary directory under `scratch`, removed whatever
/// happens.
pub fn remote_file(
    url: &str,
    branch: &str,
    file: &str,
    credential: Option<&Credential>,
    known_hosts: Option<&str>,
    scratch: &Path,
) -> Result<Option<String>, GitError> {
    let redact = |m: String| credential.map_or(m.clone(), |c| c.redact(&m));
    let verify = Verify::new(url, credential, known_hosts, true)?;
    let dir = TempDir::new(scratch).map_err(|e| GitError::Repo {
        path: scratch.display().to_string(),
        message: e.to_string(),
    })?;
    let repo =
        Repository::init_bare(&dir.0).map_err(|e| GitError::Remote(e.message().to_string()))?;
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| GitError::Remote(redact(e.message().to_string())))?;
    let attempts = AtomicUsize::new(0);
    let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    let mut fetch = |depth: i32| {
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(callbacks(credential, &attempts, &verify))
            .depth(depth);
        remote.fetch(&[refspec.as_str()], Some(&mut options), None)
    };
    let mut fetched = fetch(1);
    if fetched
        .as_ref()
        .is_err_and(|e| e.message().contains("shallow fetch is not supported"))
    {
        // libgit2's file:// transport cannot fetch shallow; a local full
        // fetch is cheap anyway.
        fetched = fetch(0);
    }
    if let Err(e) = fetched {
        return Err(verify.failure(&e, attempts.load(Ordering::SeqCst) > 1, &redact));
    }
    file_at_ref(&repo, &format!("refs/remotes/origin/{branch}"), file)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> std::io::Result<TempDir> {
        use rand::Rng;
        std::fs::create_dir_all(parent)?;
        let path = parent.join(format!("fetch-{:016x}", rand::rng().random::<u64>()));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches `branch` of `url` into the working tree `dir` (cloned on first
/// use) and checks out `target`, or the branch tip when there is none.
/// Returns the commit checked out.
///
/// The http:// credential rule is the caller's to check (the agent sends its
/// node token to the control plane over whatever URL it was given).
pub fn checkout(
    url: &str,
    branch: &str,
    target: Option<&str>,
    credential: Option<&Credential>,
    known_hosts: Option<&str>,
    dir: &Path,
) -> Result<String, GitError> {
    let redact = |m: String| credential.map_or(m.clone(), |c| c.redact(&m));
    let verify = Verify::new(url, credential, known_hosts, false)?;
    let repo_err = |e: git2::Error| GitError::Repo {
        path: dir.display().to_string(),
        message: redact(e.message().to_string()),
    };
    std::fs::create_dir_all(dir).map_err(|e| GitError::Repo {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let repo = match Repository::open(dir) {
        Ok(r) => r,
        Err(_) => Repository::init(dir).map_err(repo_err)?,
    };
    let attempts = AtomicUsize::new(0);
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(callbacks(credential, &attempts, &verify));
    let mut remote = repo.remote_anonymous(url).map_err(repo_err)?;
    let tracking = format!("refs/remotes/origin/{branch}");
    remote
        .fetch(
            &[format!("+refs/heads/{branch}:{tracking}").as_str()],
            Some(&mut options),
            None,
        )
        .map_err(|e| verify.failure(&e, attempts.load(Ordering::SeqCst) > 1, &redact))?;
    let commit = match target {
        Some(sha) => git2::Oid::from_str(sha)
            .and_then(|oid| repo.find_commit(oid))
            .map_err(repo_err)?,
        None => repo
            .find_reference(&tracking)
            .and_then(|r| r.peel_to_commit())
            .map_err(repo_err)?,
    };
    repo.checkout_tree(
        commit.as_object(),
        Some(
            git2::build::CheckoutBuilder::new()
                .force()
                .remove_untracked(true),
        ),
    )
    .map_err(repo_err)?;
    repo.set_head_detached(commit.id()).map_err(repo_err)?;
    Ok(commit.id().to_string())
}
