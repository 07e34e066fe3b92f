//! `autodeploy policy ...`: run one decision of a policy from the shell, with
//! JSON in and out, to try a policy before the daemon uses it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use super::{
    DEFAULT_DEADLINE, DEFAULT_FUEL, Facts, Lookup, MIN_FUEL, Policy, PolicyConfig, PolicyRuntime,
    Project, ProjectKind, TriggerSource,
};

/// A budget this large would take minutes to burn: the backstop decides first.
const MAX_FUEL: u64 = 1_000_000_000_000;

/// Which policy to run and its bounds; shared by every command that decides.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// A policy component to use instead of the bundled one.
    #[arg(
        long,
        global = true,
        env = "AUTODEPLOY_POLICY",
        value_name = "GUEST.wasm"
    )]
    pub policy: Option<PathBuf>,
    /// Instructions (wasmtime fuel) one policy call may run: the budget that
    /// bounds a decision, the same on an idle or a loaded host.
    #[arg(long, global = true, env = "AUTODEPLOY_POLICY_FUEL", default_value_t = DEFAULT_FUEL,
          value_parser = clap::value_parser!(u64).range(MIN_FUEL..=MAX_FUEL))]
    pub policy_fuel: u64,
    /// Wall time one policy call may take, in milliseconds: a backstop behind
    /// the instruction budget, for a host stalled far beyond normal load.
    #[arg(long, global = true, env = "AUTODEPLOY_POLICY_DEADLINE_MS",
          default_value_t = DEFAULT_DEADLINE.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub policy_deadline_ms: u64,
    /// Memory one policy instance may use, in MiB.
    #[arg(long, global = true, env = "AUTODEPLOY_POLICY_MEMORY_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(2..=4096))]
    pub policy_memory_mib: u64,
}

impl PolicyArgs {
    pub fn config(&self) -> PolicyConfig {
        PolicyConfig {
            fuel: Some(self.policy_fuel),
            deadline: Duration::from_millis(self.policy_deadline_ms),
            memory_limit: (self.policy_memory_mib as usize) << 20,
            ..PolicyConfig::default()
        }
    }

    pub fn load(&self) -> Result<Policy> {
        let runtime = PolicyRuntime::new(self.config())?;
        // A policy is compiled once per user and engine (the bundled one not
        // at all when its code is built in).
        if let Some(dir) = super::user_cache_dir() {
            runtime.use_cache_dir(dir);
        }
        Ok(match &self.policy {
            Some(path) => runtime.load_file(path)?,
            None => PolicyRuntime::load_bundled(&runtime)?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy's name, version, sha256 and where it was loaded from.
    Info,
    /// List the images a compose file uses (FILE, or - for stdin).
    ParseCompose { file: PathBuf },
    /// Decide on a branch head. Stdin: {"last_tracked": "SHA or empty", "remote_head": "SHA or null"},
    /// optionally "project", "facts" and "source" (default: auto-deploy on, auto-poll).
    DecideCommit,
    /// Decide on image digests. Stdin: {"prior": {IMAGE: DIGEST}, "lookups": {IMAGE: {"digest": D} | {"error": E}}},
    /// optionally "project" and "facts" (default: a compose project with auto-deploy on).
    DecideImages,
    /// Send a policy component to the running daemon, which validates it and
    /// switches to it.
    Load {
        file: PathBuf,
        /// The operator's config for the policy: this file's text is passed
        /// to every decision. Without it, the config stored for this policy
        /// before (if any) stays.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Give the running daemon's policy a new config: FILE's text (- for
    /// stdin; an empty file removes the config).
    SetConfig { file: PathBuf },
    /// Switch the running daemon back to its previous policy.
    Rollback,
    /// Re-run the decisions the daemon recorded against a candidate policy
    /// and print each one it would answer differently (reads the daemon's
    /// database; exits 0 with or without differences).
    Replay(crate::decisions::replay::ReplayArgs),
}

/// Runs one decision locally. `Load` and `Rollback` talk to the daemon and
/// are dispatched by main.
pub fn run(command: &PolicyCommand, args: &PolicyArgs) -> Result<()> {
    let policy = args.load()?;
    let output = match command {
        PolicyCommand::Info => serde_json::to_value(policy.info())?,
        PolicyCommand::ParseCompose { file } => {
            let yaml = if file.as_os_str() == "-" {
                read_stdin()?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
            };
            let images = policy
                .parse_compose(&yaml)
                .with_context(|| format!("{}", file.display()))?;
            json!({ "images": images.images, "skipped": images.skipped })
        }
        PolicyCommand::DecideCommit => {
            let input: CommitInput = parse_stdin()?;
            let mut project = input.project.unwrap_or(Project {
                auto_deploy_enabled: true,
                ..Project::default()
            });
            if let Some(last) = input.last_tracked {
                project.last_tracked_commit = last;
            }
            let d = policy.decide_commit(
                &project,
                &input.facts,
                input.source,
                input.remote_head.as_deref(),
            )?;
            json!({ "trigger": d.trigger, "record": d.record, "reason": d.reason })
        }
        PolicyCommand::DecideImages => {
            let input: ImagesInput = parse_stdin()?;
            let project = input.project.unwrap_or(Project {
                kind: ProjectKind::Compose,
                auto_deploy_enabled: true,
                ..Project::default()
            });
            let d = policy.decide_images(&project, &input.facts, &input.prior, &input.lookups)?;
            let moved: Vec<&str> = d.moved.iter().map(|m| m.image.as_str()).collect();
            json!({
                "trigger": d.trigger,
                "record": d.record,
                "moved": moved,
                "added": d.added,
                "reason": d.reason,
                "changes": d.moved,
            })
        }
        PolicyCommand::Load { .. }
        | PolicyCommand::SetConfig { .. }
        | PolicyCommand::Rollback
        | PolicyCommand::Replay(_) => {
            bail!("policy load, set-config, rollback and replay are dispatched by main")
        }
    };
    println!("{output}");
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitInput {
    #[serde(default)]
    last_tracked: Option<String>,
    #[serde(default)]
    remote_head: Option<String>,
    #[serde(default)]
    project: Option<Project>,
    #[serde(default)]
    facts: Facts,
    /// What the daemon decides on when it polls.
    #[serde(default = "auto_poll")]
    source: TriggerSource,
}

fn auto_poll() -> TriggerSource {
    TriggerSource::AutoPoll
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesInput {
    #[serde(default)]
    prior: BTreeMap<String, String>,
    #[serde(default)]
    lookups: BTreeMap<String, Lookup>,
    #[serde(default)]
    project: Option<Project>,
    #[serde(default)]
    facts: Facts,
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("read stdin")?;
    Ok(s)
}

fn parse_stdin<T: for<'de> Deserialize<'de>>() -> Result<T> {
    let text = read_stdin()?;
    if text.trim().is_empty() {
        bail!("expected a JSON object on stdin");
    }
    serde_json::from_str(&text).context("invalid JSON on stdin")
}
