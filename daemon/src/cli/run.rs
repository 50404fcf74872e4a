//! `primiad run --config FILE`: runs the member's daemon until it is
//! stopped (SIGINT or SIGTERM) or has run the configured number of rounds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;

/// Arguments of `primiad run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 stopped by a signal or after the configured rounds, \
1 an error (printed to stderr)."
)]
pub struct Args {
    /// The daemon's configuration (TOML); `--example-config` prints every
    /// field with its default and what it means.
    #[arg(long, value_name = "FILE", required_unless_present = "example_config")]
    pub config: Option<PathBuf>,

    /// Print a commented config with every field at its default, and exit.
    #[arg(long, conflicts_with = "config")]
    pub example_config: bool,
}

/// Loads the config and runs the node on a multi-threaded runtime.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(path) = args.config else {
        print!("{}", Config::example());
        return Ok(ExitCode::SUCCESS);
    };
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("primiad")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        crate::node::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
