//! `primiad inspect`.

use std::process::ExitCode;

/// Arguments of `primiad inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
