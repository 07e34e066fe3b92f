//! The `autodeploy` binary: parses the command line and hands each command to
//! the module that owns it.

use std::process::ExitCode;

use autodeploy::policy::cli::{PolicyArgs, PolicyCommand};
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
    /// Run one decision of the policy: JSON in, JSON out.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Policy(command) => autodeploy::policy::cli::run(command, &cli.policy),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
