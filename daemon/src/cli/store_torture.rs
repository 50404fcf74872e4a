//! `primiad __store-torture` (hidden): commits models (pruning old ones if
//! asked), journal entries, reveals and metrics in a loop, printing each
//! one after it is committed,
//! so a test can SIGKILL it at random moments and check that everything
//! printed survived. Not for operators.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use primia_protocol::{MemberId, RevealEntry, ShareKind};

use crate::store::{
    AttemptOutcome, JournalEntry, MetricsEntry, ModelMeta, PhaseTiming, Store, now_unix_ms,
};

/// Arguments of `primiad __store-torture`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The storage directory to write to.
    #[arg(long, value_name = "DIR")]
    pub storage_dir: PathBuf,
    /// Rounds to commit before stopping.
    #[arg(long, default_value_t = 1_000_000)]
    pub rounds: u64,
    /// Prune to this many models after each commit, as the daemon does
    /// (0 keeps every model).
    #[arg(long, default_value_t = 0)]
    pub keep_models: usize,
}

/// The model blob of round `round`: 1 to 96 KiB of bytes derived from it,
/// so a test can rebuild it and the sizes vary.
pub fn blob(round: u64) -> Vec<u8> {
    let len = 1024 + (round as usize * 7919) % (95 * 1024);
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key("primia store torture blob")
        .update(&round.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The journal entry of round `round` that the torture writes.
pub fn journal_entry(round: u64, model: crate::store::ModelHash) -> JournalEntry {
    JournalEntry {
        round,
        attempt: 0,
        leader: format!("m{}", round % 3),
        outcome: AttemptOutcome::Completed,
        participants: vec!["m0".into(), "m1".into(), "m2".into()],
        dropouts: Vec::new(),
        started_unix_ms: 1_000 * round,
        duration_ms: round % 1000,
        phases: vec![PhaseTiming {
            phase: "masked-input".into(),
            ms: round % 100,
        }],
        model: Some(model),
    }
}

/// The reveal of round `round` that the torture records.
pub fn reveal_entry(round: u64) -> RevealEntry {
    let (a, b) = if round.is_multiple_of(2) {
        (ShareKind::SelfMask, ShareKind::MaskKey)
    } else {
        (ShareKind::MaskKey, ShareKind::SelfMask)
    };
    RevealEntry {
        round,
        attempt: 0,
        revealed: vec![(MemberId(0), a), (MemberId(1), b)],
    }
}

/// Runs the loop: continues after the last journaled round.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = Store::open(&args.storage_dir)?;
    // What a previous run left must be whole before going on.
    if let Some((hash, _)) = store.current_model_meta()? {
        store
            .model_blob(hash)?
            .context("the current model's blob is missing")?;
    }
    let start = store.last_journaled_round()?.map_or(0, |r| r + 1);
    let mut out = std::io::stdout().lock();
    for round in start..start.saturating_add(args.rounds) {
        let blob = blob(round);
        let meta = ModelMeta {
            round,
            created_unix_ms: now_unix_ms(),
            parameter_count: blob.len() as u64 / 4,
            size_bytes: 0,
        };
        let hash = store.commit_model(&blob, meta)?;
        writeln!(out, "model {round} {hash}")?;
        if let Some(keep) = std::num::NonZeroUsize::new(args.keep_models) {
            store.prune_models(keep)?;
        }
        store.record_attempt(&journal_entry(round, hash))?;
        writeln!(out, "journal {round}")?;
        let _receipt = store.record_reveal(&reveal_entry(round))?;
        writeln!(out, "reveal {round}")?;
        let mut values = std::collections::BTreeMap::new();
        values.insert("loss".to_owned(), 1.0 / (round as f64 + 1.0));
        store.record_metrics(&MetricsEntry {
            round,
            recorded_unix_ms: now_unix_ms(),
            values,
        })?;
        writeln!(out, "metrics {round}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
