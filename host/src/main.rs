//! The `autodeploy` binary: parses the command line and hands each command to
//! the module that owns it.

use std::process::ExitCode;

use anyhow::Result;
use autodeploy::agent::runner::AgentArgs;
use autodeploy::client::{
    self, ClientArgs, ClientError, EventsArgs, NodeCommand, NotificationCommand, ProjectCommand,
    SettingsCommand,
};
use autodeploy::policy::cli::{PolicyArgs, PolicyCommand};
use autodeploy::serve::{self, ServeArgs};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autodeploy",
    version,
    about = "Redeploys self-hosted projects when their source moves on"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: API, hosted git, triggers (SQLite and the bundled policy by default).
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Run a deploy node's agent: claim deployments and run them with docker compose.
    Agent(AgentArgs),
    /// Run one policy decision locally (JSON in, JSON out), or load/roll back the daemon's policy.
    Policy {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(subcommand)]
        command: PolicyCommand,
    },
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
    /// Manage notification targets on a running daemon.
    Notification {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NotificationCommand,
    },
    /// The event log, newest first: what people, triggers and nodes did.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: EventsArgs,
    },
    /// Print a shell completion script: `autodeploy completions bash >
    /// /etc/bash_completion.d/autodeploy`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `autodeploy man | man -l -`.
    Man,
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
            // One line (the causes joined, no backtrace), and what to try
            // when the client knows.
            eprintln!("error: {err:#}");
            if let Some(hint) = err
                .downcast_ref::<ClientError>()
                .and_then(ClientError::hint)
            {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve { args, policy } => {
            serve::limit_malloc_arenas();
            init_logging(LogFormat::from_env()?, "info");
            block_on(serve::run(args, policy))
        }
        Command::Agent(args) => {
            init_logging(LogFormat::from_env()?, "info");
            block_on(autodeploy::agent::runner::run(args.clone()))
        }
        Command::Policy { policy, command } => match command {
            PolicyCommand::Load { file, config } => block_on(client::load_policy(
                &ClientArgs::from_env(),
                file,
                config.as_deref(),
            )),
            PolicyCommand::SetConfig { file } => {
                block_on(client::set_policy_config(&ClientArgs::from_env(), file))
            }
            PolicyCommand::Rollback => block_on(client::rollback_policy(&ClientArgs::from_env())),
            PolicyCommand::Replay(args) => {
                block_on(autodeploy::decisions::replay::cli(args, policy))
            }
            command => {
                // Quiet unless something is wrong (a damaged compiled-policy
                // cache entry); stdout is the answer.
                init_logging_with("warn");
                autodeploy::policy::cli::run(command, policy)
            }
        },
        Command::Project { client, command } => block_on(client::project(client, command)),
        Command::Settings { client, command } => block_on(client::settings(client, command)),
        Command::Node { client, command } => block_on(client::node(client, command)),
        Command::Notification { client, command } => {
            block_on(client::notification(client, command))
        }
        Command::Events { client, args } => block_on(client::events(client, args)),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "autodeploy", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
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

/// `AUTODEPLOY_LOG_FORMAT`: how the daemon and the agent write their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Lines for people (the default).
    Text,
    /// One JSON object per line, with the fields of every span around the
    /// event (project, source, deployment), for a log collector.
    Json,
}

impl LogFormat {
    fn from_env() -> Result<LogFormat> {
        match std::env::var("AUTODEPLOY_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Ok(v) if v == "text" || v.is_empty() => Ok(LogFormat::Text),
            Ok(v) if v == "json" => Ok(LogFormat::Json),
            Ok(v) => anyhow::bail!("AUTODEPLOY_LOG_FORMAT must be \"text\" or \"json\", not {v:?}"),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("AUTODEPLOY_LOG_FORMAT must be \"text\" or \"json\"")
            }
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default: `default`).
fn init_logging_with(default: &str) {
    init_logging(LogFormat::Text, default)
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
    }
}
