//! `primiad roster`: helpers for forming a consortium: print this member's
//! roster entry, and check a roster file before handing it out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use libp2p::Multiaddr;

use crate::config::{LoadedRoster, RosterEntry};
use crate::identity::NodeIdentity;

/// Arguments of `primiad roster`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: RosterCommand,
}

/// What to do with a roster.
#[derive(Debug, clap::Subcommand)]
pub enum RosterCommand {
    /// Print this member's `[[member]]` entry (TOML) for the roster file.
    Entry(EntryArgs),
    /// Check a roster file and print what it describes.
    Check(CheckArgs),
}

/// Arguments of `primiad roster entry`.
#[derive(Debug, clap::Args)]
pub struct EntryArgs {
    /// This member's key file (from `primiad keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The hospital's name as the others will see it.
    #[arg(long)]
    pub name: String,
    /// An address where this member can be reached (multiaddr, e.g.
    /// /ip4/10.0.0.1/tcp/7470); repeat for several.
    #[arg(long = "address", value_name = "ADDR")]
    pub addresses: Vec<String>,
}

/// Arguments of `primiad roster check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The roster file.
    pub file: PathBuf,
}

/// Runs a roster subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        RosterCommand::Entry(a) => entry(a),
        RosterCommand::Check(a) => check(a),
    }
}

fn entry(args: EntryArgs) -> anyhow::Result<ExitCode> {
    let identity = NodeIdentity::load(&args.key)?;
    let name_max = primia_protocol::roster::MAX_NAME_BYTES;
    if args.name.is_empty() || args.name.len() > name_max {
        anyhow::bail!("--name must be 1 to {name_max} bytes");
    }
    for a in &args.addresses {
        a.parse::<Multiaddr>()
            .with_context(|| format!("--address {a:?} is not a multiaddr"))?;
    }
    let entry = RosterEntry {
        name: args.name,
        peer_id: identity.peer_id().to_base58(),
        addresses: args.addresses,
    };
    print!("{}", entry.to_toml());
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = LoadedRoster::load(&args.file)?;
    let roster = &loaded.roster;
    println!(
        "roster {}: consortium {}, {} members, threshold {} ({:?})",
        args.file.display(),
        roster.consortium(),
        roster.len(),
        roster.threshold(),
        roster.threshold_rule(),
    );
    for (id, m) in roster.members() {
        println!(
            "  {:<24} {}  {}",
            m.name,
            loaded.peer_ids[id.index()],
            if m.addresses.is_empty() {
                "(no address)".to_owned()
            } else {
                m.addresses.join(" ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
