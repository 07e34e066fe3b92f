//! The `autodeploy` binary: parses the command line and hands each command to
//! the module that owns it.

use std::process::ExitCode;

use anyhow::Result;
use autodeploy::agent::runner::AgentArgs;
use autodeploy::client::{self, ClientArgs, NodeCommand, ProjectCommand, SettingsCommand};
use autodeploy::policy::cli::{PolicyArgs, PolicyCommand};
use autodeploy::serve::{self, ServeArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autodeploy",
    version,
    about = "Redeploys self-hosted projects when their source moves on"
)]
struct Cli {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: API, hosted git, triggers (SQLite and the bundled policy by default).
    Serve(ServeArgs),
    /// Run a deploy node's agent: claim deployments and run them with docker compose.
    Agent(AgentArgs),
    /// Run one policy decision locally (JSON in, JSON out), or load/roll back the daemon's policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage projects on a running daemon.
    Project {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Read or change a running daemon's settings.
    Settings {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Manage deploy nodes on a running daemon.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Internal: one network git lookup, asked by the daemon on stdin.
    #[command(name = "git-lookup", hide = true)]
    GitLookup,
}

fn main() -> ExitCode {
    // The daemon starts one of these per network git lookup: skip building
    // the whole command line parser for it.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("git-lookup")) {
        std::process::exit(autodeploy::git::isolated::child_main());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            serve::limit_malloc_arenas();
            init_logging_with("info");
            block_on(serve::run(args, &cli.policy))
        }
        Command::Agent(args) => {
            init_logging_with("info");
            block_on(autodeploy::agent::runner::run(args.clone()))
        }
        Command::Policy(PolicyCommand::Load { file, config }) => block_on(client::load_policy(
            &ClientArgs::from_env(),
            file,
            config.as_deref(),
        )),
        Command::Policy(PolicyCommand::SetConfig { file }) => {
            block_on(client::set_policy_config(&ClientArgs::from_env(), file))
        }
        Command::Policy(PolicyCommand::Rollback) => {
            block_on(client::rollback_policy(&ClientArgs::from_env()))
        }
        Command::Policy(PolicyCommand::Replay(args)) => {
            block_on(autodeploy::decisions::replay::cli(args, &cli.policy))
        }
        Command::Policy(command) => {
            // Quiet unless something is wrong (a damaged compiled-policy
            // cache entry); stdout is the answer.
            init_logging_with("warn");
            autodeploy::policy::cli::run(command, &cli.policy)
        }
        Command::Project { client, command } => block_on(client::project(client, command)),
        Command::Settings { client, command } => block_on(client::settings(client, command)),
        Command::Node { client, command } => block_on(client::node(client, command)),
        Command::GitLookup => std::process::exit(autodeploy::git::isolated::child_main()),
    }
}

/// Runs `f` on a tokio runtime. At the end, blocking tasks still running (a
/// git lookup stuck on a silent remote) are not waited for.
fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(f);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Logs go to stderr; `RUST_LOG` filters them (default: `default`).
fn init_logging_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
