//! Nothing a test binary starts outlives it, however it ends.
//!
//! - Every directory a test makes lives under one root per binary,
//!   `$TMPDIR/autodeploy-test-<pid>` ([`root`]).
//! - Every server, daemon and agent runs in a process group of its own
//!   ([`spawn`]); its guard ([`Proc`]) SIGKILLs the whole group and waits
//!   when dropped, so a panicking test still ends it, and so do the
//!   processes it forked (`git daemon`'s per-connection children, nginx's
//!   workers, the daemon's git children).
//! - A reaper process, started with the first of these, holds the read end
//!   of a pipe; the binary tells it each group it starts and ends. When the
//!   binary exits, normally, after failed tests, or killed with SIGKILL, the
//!   pipe closes: the reaper kills the groups still listed (servers kept in
//!   statics, which are never dropped) and removes the root. This needs no
//!   atexit hook and no parent-death signal, which fires when the spawning
//!   *thread* ends rather than the binary.
//!
//! With `AUTODEPLOY_KEEP_TEST_DIRS=1` the root is kept (and its path
//! printed) for a look after a failure; processes are ended all the same.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Set to keep the binary's temporary directories.
pub const KEEP_ENV: &str = "AUTODEPLOY_KEEP_TEST_DIRS";

/// The reaper's `$0`: what `scripts/check-leftovers.sh` waits for.
pub const REAPER_NAME: &str = "autodeploy-test-reaper";

/// Reads `+ID` / `-ID` lines (process groups started and ended) until the
/// binary's end closes its stdin; then kills what is still listed, waits
/// for it to be gone (bounded), and removes the root unless told to keep it.
const REAPER_SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
root=$1 keep=$2
declare -A groups
while read -r line; do
  case $line in
    +*) groups[${line#+}]=1 ;;
    -*) unset "groups[${line#-}]" ;;
  esac
done
for g in "${!groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
for _ in $(seq 100); do
  alive=0
  for g in "${!groups[@]}"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.05
done
if [ "$keep" = keep ]; then
  echo "kept the test directories in $root ($0)" >&2
else
  rm -rf -- "$root"
fi
"#;

struct Reaper {
    root: PathBuf,
    pipe: Mutex<ChildStdin>,
}

fn keep() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("autodeploy-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", root.display()));
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg(REAPER_NAME)
            .arg(&root)
            .arg(if keep() { "keep" } else { "remove" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // A group of its own: a Ctrl-C to the test's group must not
            // stop it before it has cleaned up. Its cwd is outside the root.
            .process_group(0)
            .current_dir("/")
            .spawn()
            .expect("start the test reaper (bash)");
        let pipe = child.stdin.take().unwrap();
        // Not waited for: it outlives this binary by design (init reaps it).
        std::mem::forget(child);
        Reaper {
            root,
            pipe: Mutex::new(pipe),
        }
    })
}

fn tell(line: String) {
    let mut pipe = reaper().pipe.lock().unwrap_or_else(|e| e.into_inner());
    // The reaper only ends after this binary: a failed write means it was
    // killed from outside, and the leftovers check will say so.
    let _ = writeln!(pipe, "{line}");
}

/// This binary's directory for temporary files, removed when it exits.
pub fn root() -> &'static Path {
    &reaper().root
}

/// A running process in a group of its own, ended with its group when
/// dropped. Derefs to its [`Child`].
pub struct Proc {
    child: Child,
    pgid: i32,
}

/// Spawns `cmd` in a process group of its own, registered with the reaper.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
    // Started before the child, so the root and the reaper exist for it.
    reaper();
    let child = cmd.process_group(0).spawn()?;
    let pgid = child.id() as i32;
    tell(format!("+{pgid}"));
    Ok(Proc { child, pgid })
}

impl Proc {
    /// The process group: the child's pid.
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// SIGKILL the whole group (what is left of it).
    pub fn kill_group(&self) {
        // SAFETY: kill(2) with a negative id signals only that group, which
        // `spawn` made for this child.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
        tell(format!("-{}", self.pgid));
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-pgid, 0) == 0 }
}
