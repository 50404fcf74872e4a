//! `primiad train-local`.

use std::process::ExitCode;

/// Arguments of `primiad train-local`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
