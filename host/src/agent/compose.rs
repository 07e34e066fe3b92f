//! Runs docker compose: the v2 plugin (`docker compose`) when the node has
//! it, else v1 (`docker-compose`).

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// Log tails are cut to their last 64 KiB.
const MAX_LOG: usize = 64 * 1024;

/// The agent's own token, kept from compose: compose interpolates its
/// environment into the project, so a compose file could hand it to a container.
const NODE_TOKEN_ENV: &str = "AUTODEPLOY_NODE_TOKEN";

pub struct Output {
    pub log: String,
    pub result: Result<(), String>,
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

/// One compose command in `dir`, under the project name `project`.
pub async fn run(dir: &Path, project: &str, file: &str, args: &[&str]) -> Output {
    let program = program().await;
    let line = format!(
        "$ {} -p {project} -f {file} {}\n",
        program.join(" "),
        args.join(" ")
    );
    let out = Command::new(program[0])
        .args(&program[1..])
        .args(["-p", project, "-f", file])
        .args(args)
        .current_dir(dir)
        .env_remove(NODE_TOKEN_ENV)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(out) => {
            let mut log = line;
            log.push_str(&String::from_utf8_lossy(&out.stdout));
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            let result = if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} {} exited with {}",
                    program.join(" "),
                    args.join(" "),
                    out.status
                ))
            };
            Output {
                log: tail(log),
                result,
            }
        }
        Err(e) => Output {
            log: line,
            result: Err(format!("cannot run {}: {e}", program.join(" "))),
        },
    }
}

fn tail(s: String) -> String {
    if s.len() <= MAX_LOG {
        return s;
    }
    let mut start = s.len() - MAX_LOG;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}
