//! `primiad keygen`: creates a member's identity key file and prints its
//! peer id, the name under which the consortium's roster lists the member.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::identity::NodeIdentity;

/// Arguments of `primiad keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the key file (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing key file. The old identity is lost for good, and
    /// the consortium's roster must list the new peer id.
    #[arg(long)]
    pub force: bool,
}

/// Writes a fresh key and prints its peer id on stdout.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let identity = NodeIdentity::generate().context("cannot generate a key")?;
    identity.save(&args.out, args.force)?;
    println!("{}", identity.peer_id());
    eprintln!(
        "wrote key file {} (mode 0600); add the peer id above to the roster with `primiad roster entry`",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
