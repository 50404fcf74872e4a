//! `primiad privacy`: the differential-privacy accountant on the command line.
//!
//! `epsilon` answers "what does this DP-SGD run spend", `noise` answers
//! "how much noise does this budget need". Both use the accountant of
//! `primia_model::privacy` (Renyi DP of the Poisson-subsampled Gaussian
//! mechanism, converted to (epsilon, delta)), the same one a training run
//! reports with. Text for people on stdout, or one JSON document with
//! `--json`; bad values exit 1 with the value named.

use std::process::ExitCode;

use anyhow::Context as _;
use primia_model::privacy::{self, PrivacySpent};

/// Arguments of `primiad privacy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PrivacyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PrivacyCommand {
    /// Epsilon spent by a DP-SGD run at a given delta.
    Epsilon(EpsilonArgs),
    /// The smallest noise multiplier that keeps a DP-SGD run within epsilon.
    Noise(NoiseArgs),
}

/// What `primiad privacy epsilon` takes.
#[derive(Debug, clap::Args)]
pub struct EpsilonArgs {
    /// Probability q that an example is in a given step's batch (Poisson
    /// sampling): expected batch size over data set size, in (0, 1].
    #[arg(long, value_name = "Q", allow_negative_numbers = true)]
    pub sample_rate: f64,
    /// Noise standard deviation over the clipping norm (sigma > 0).
    #[arg(long, value_name = "SIGMA", allow_negative_numbers = true)]
    pub noise_multiplier: f64,
    /// Number of training steps.
    #[arg(long, value_name = "T")]
    pub steps: u64,
    /// Probability that the epsilon guarantee fails, in (0, 1); usually
    /// below 1 / (number of examples), e.g. 1e-5.
    #[arg(long, value_name = "D", allow_negative_numbers = true)]
    pub delta: f64,
    /// One JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `primiad privacy noise` takes.
#[derive(Debug, clap::Args)]
pub struct NoiseArgs {
    /// Probability q that an example is in a given step's batch, in (0, 1].
    #[arg(long, value_name = "Q", allow_negative_numbers = true)]
    pub sample_rate: f64,
    /// Number of training steps.
    #[arg(long, value_name = "T")]
    pub steps: u64,
    /// Probability that the epsilon guarantee fails, in (0, 1).
    #[arg(long, value_name = "D", allow_negative_numbers = true)]
    pub delta: f64,
    /// The privacy budget to stay within (epsilon > 0).
    #[arg(long, value_name = "E", allow_negative_numbers = true)]
    pub epsilon: f64,
    /// One JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `primiad privacy ...`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        PrivacyCommand::Epsilon(a) => epsilon(a),
        PrivacyCommand::Noise(a) => noise(a),
    }
}

/// Says so on stderr when the best order is at an end of the grid, where a
/// wider grid could give a smaller epsilon (the figure is still a valid bound).
fn warn_grid_edge(spent: &PrivacySpent) {
    let orders = privacy::default_orders();
    let (first, last) = (orders[0], orders[orders.len() - 1]);
    if spent.epsilon > 0.0 && (spent.order == first || spent.order == last) {
        eprintln!(
            "note: the best Renyi order {} is at the end of the grid [{first}, {last}]; \
             epsilon is a valid bound but may not be the tightest",
            spent.order
        );
    }
}

fn epsilon(a: EpsilonArgs) -> anyhow::Result<ExitCode> {
    let spent = privacy::epsilon(a.sample_rate, a.noise_multiplier, a.steps, a.delta)
        .context("cannot compute epsilon")?;
    warn_grid_edge(&spent);
    if a.json {
        let doc = serde_json::json!({
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "order": spent.order,
            "sample_rate": a.sample_rate,
            "noise_multiplier": a.noise_multiplier,
            "steps": a.steps,
            "accountant": "rdp-poisson-subsampled-gaussian",
        });
        println!("{doc}");
    } else {
        println!(
            "epsilon {:.6} at delta {:e} (Renyi order {}; {} steps, sample rate {}, noise multiplier {})",
            spent.epsilon, spent.delta, spent.order, a.steps, a.sample_rate, a.noise_multiplier
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn noise(a: NoiseArgs) -> anyhow::Result<ExitCode> {
    let found = privacy::noise_multiplier_for(a.sample_rate, a.steps, a.delta, a.epsilon)
        .context("cannot find a noise multiplier")?;
    warn_grid_edge(&found.spent);
    if a.json {
        let doc = serde_json::json!({
            "noise_multiplier": found.noise_multiplier,
            "epsilon": found.spent.epsilon,
            "target_epsilon": a.epsilon,
            "delta": a.delta,
            "order": found.spent.order,
            "sample_rate": a.sample_rate,
            "steps": a.steps,
            "accountant": "rdp-poisson-subsampled-gaussian",
        });
        println!("{doc}");
    } else {
        println!(
            "noise multiplier {:.6} (spends epsilon {:.6} <= {} at delta {:e}, Renyi order {}; {} steps, sample rate {})",
            found.noise_multiplier,
            found.spent.epsilon,
            a.epsilon,
            a.delta,
            found.spent.order,
            a.steps,
            a.sample_rate
        );
    }
    Ok(ExitCode::SUCCESS)
}
