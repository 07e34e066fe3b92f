//! Runs docker compose: the v2 plugin (`docker compose`) when the node has
//! it, else v1 (`docker-compose`). Output goes to the deploy's log as it
//! comes; a cancelled deploy ends the compose process.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::logs::Log;

/// The agent's own token, kept from compose: compose interpolates its
/// environment into the project, so a compose file could hand it to a container.
pub const NODE_TOKEN_ENV: &str = "AUTODEPLOY_NODE_TOKEN";

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("the deploy was cancelled")]
    Cancelled,
}

/// `docker compose` (v2) if it answers, else `docker-compose` (v1).
async fn program() -> Vec<&'static str> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .env_remove(NODE_TOKEN_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if v2.is_ok_and(|s| s.success()) {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// A compose project: its directory, name and files (`-f`, in order).
pub struct Project<'a> {
    pub dir: &'a Path,
    pub name: &'a str,
    pub files: &'a [String],
}

/// One compose command; its output is appended to `log` line by line.
pub async fn run(
    p: &Project<'_>,
    args: &[&str],
    log: &Log,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let program = program().await;
    let files: Vec<String> = p.files.iter().map(|f| format!("-f {f}")).collect();
    log.push(&format!(
        "$ {} -p {} {} {}\n",
        program.join(" "),
        p.name,
        files.join(" "),
        args.join(" ")
    ));
    let what = format!("{} {}", program.join(" "), args.join(" "));
    let mut cmd = Command::new(program[0]);
    cmd.args(&program[1..]).args(["-p", p.name]);
    for f in p.files {
        cmd.args(["-f", f]);
    }
    let child = cmd
        .args(args)
        .current_dir(p.dir)
        .env_remove(NODE_TOKEN_ENV)
        // Plain progress lines, not a redrawn terminal.
        .env("BUILDKIT_PROGRESS", "plain")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a cancel also ends what it started
        // (a `docker build` it runs).
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let error = format!("cannot run {}: {e}", program.join(" "));
            log.push(&format!("{error}\n"));
            return Err(StepError::Failed(error));
        }
    };
    let out = copy_lines(child.stdout.take(), log.clone());
    let err = copy_lines(child.stderr.take(), log.clone());
    let status = tokio::select! {
        s = child.wait() => s,
        _ = cancel.cancelled() => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals that process
                // group only; the group is the child's own (above).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            let _ = tokio::join!(out, err);
            log.push(&format!("cancelled: stopped {what}\n"));
            return Err(StepError::Cancelled);
        }
    };
    let _ = tokio::join!(out, err);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(StepError::Failed(format!("{what} exited with {s}"))),
        Err(e) => Err(StepError::Failed(format!("{what}: {e}"))),
    }
}

fn copy_lines<R: AsyncRead + Unpin + Send + 'static>(
    from: Option<R>,
    log: Log,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(from) = from else { return };
        let mut lines = BufReader::new(from).split(b'\n');
        while let Ok(Some(line)) = lines.next_segment().await {
            let mut text = String::from_utf8_lossy(&line).into_owned();
            text.push('\n');
            log.push(&text);
        }
    })
}
