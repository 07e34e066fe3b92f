//! An exclusive lock per hosted repository, taken with `flock` on a file in
//! the repository, so it holds across every replica that mounts the same
//! `AUTODEPLOY_REPO_DIR` (Linux NFS clients turn `flock` into a lock the
//! server sees). A push and the trigger that follows it run alone: a second
//! push through another replica waits, then sees the first one's ref, and a
//! push that is no longer a fast-forward is refused by git as usual.

use std::os::fd::AsRawFd;
use std::path::Path;

use super::GitError;

/// The lock file's name inside a bare repository; git ignores it.
const LOCK_FILE: &str = "autodeploy.lock";

/// Held while it lives; dropping it (closing the file) releases the lock.
#[derive(Debug)]
pub struct RepoLock {
    _file: std::fs::File,
}

/// Waits for the exclusive lock of the bare repository at `repo`.
pub async fn lock(repo: &Path) -> Result<RepoLock, GitError> {
    let path = repo.join(LOCK_FILE);
    let shown = path.display().to_string();
    // `flock` blocks a thread; a request dropped meanwhile drops the lock as
    // soon as it is taken.
    let taken = tokio::task::spawn_blocking(move || lock_blocking(&path))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    taken.map_err(|e| GitError::Repo {
        path: shown,
        message: format!("taking the repository lock: {e}"),
    })
}

fn lock_blocking(path: &Path) -> std::io::Result<RepoLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(RepoLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
