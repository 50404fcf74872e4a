//! Command-line interface of `primiad`: one module per subcommand.
//!
//! Exit codes: 0 success, 1 an error (printed to stderr), 2 bad usage (clap).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod inspect;
pub mod keygen;
pub mod privacy;
pub mod roster;
pub mod run;
pub mod simulate;
pub mod status;
pub mod store_torture;
pub mod train_local;

/// primia: federated, securely aggregated training of medical-imaging models
/// between hospitals, with no central server.
#[derive(Debug, Parser)]
#[command(name = "primiad", version, about)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what the image loader makes of one file (DICOM, PNG, JPEG).
    Inspect(inspect::Args),
    /// Train the model centrally on one dataset and print test metrics.
    TrainLocal(train_local::Args),
    /// Create this member's identity key file and print its peer id.
    Keygen(keygen::Args),
    /// Print a roster entry for this member, or check a roster file.
    Roster(roster::Args),
    /// Run this member's daemon: join the consortium and take part in rounds.
    Run(run::Args),
    /// Run a whole consortium of real daemons on this machine: federated
    /// training with secure aggregation, baselines and a report.
    Simulate(Box<simulate::Args>),
    /// Ask the running daemon what it is doing (exit 3: none running).
    Status(status::Args),
    /// Differential privacy: epsilon of a DP-SGD run, or the noise a budget needs.
    Privacy(privacy::Args),
    /// Crash-safety exercise of the store, for tests only.
    #[command(name = "__store-torture", hide = true)]
    StoreTorture(store_torture::Args),
}

/// Logs go to stderr so that stdout carries only data. Colours only on a
/// terminal, and not when `NO_COLOR` is set: a log file, a pipe or the
/// journal of a service manager gets plain text.
pub fn init_tracing(verbose: u8) {
    use std::io::IsTerminal as _;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::TrainLocal(args) => train_local::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Roster(args) => roster::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Privacy(args) => privacy::run(args),
        Command::StoreTorture(args) => store_torture::run(args),
    }
}
