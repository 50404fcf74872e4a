//! `primiad simulate`: a whole consortium of real daemons on this machine
//! (see [`crate::sim`]), with progress bars while it runs, a table at the
//! end and a report directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use primia_model::data::split::SplitScheme;

use crate::config::TrainingConfig;
use crate::control;
use crate::sim::{self, Failure, Progress, SimOptions, report};

/// Arguments of `primiad simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Number of hospitals.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub hospitals: u64,

    /// Rounds of federated training [default: 8 on the built-in phantom,
    /// 30 with --data].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub rounds: Option<u64>,

    /// Data to split among the hospitals: a MedMNIST .npz (official
    /// splits; the test split stays with the simulator) or a folder with
    /// one subfolder of DICOM, PNG or JPEG images per class. Without it,
    /// the built-in synthetic chest X-ray phantom.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,

    /// Label-skewed split: each class is dealt to hospitals in Dirichlet(ALPHA)
    /// proportions (0.1 very skewed, 100 nearly IID). Without it, IID.
    #[arg(long, value_name = "ALPHA")]
    pub alpha: Option<f64>,

    /// Optimiser steps each hospital trains per round [default: 20 on the
    /// built-in phantom, 100 with --data: with SCAFFOLD's correction long
    /// local training does not drift, and rounds are what costs time].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub local_steps: Option<u32>,

    /// Images per step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,

    /// Local optimiser: sgd (momentum 0.9, Nesterov) or adamw.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,

    /// How the hospitals' training combines: scaffold (control variates
    /// against the drift of skewed hospitals) or fedavg [default: scaffold,
    /// fedavg with --dp-epsilon].
    #[arg(long)]
    pub algorithm: Option<String>,

    /// Learning rate of local training, decayed by a cosine over the rounds
    /// [default: 0.02 for sgd, 0.002 for adamw].
    #[arg(long)]
    pub lr: Option<f64>,

    /// Class weights in the local loss: pooled (every hospital uses the
    /// weights that balance the classes over all hospitals' training images,
    /// as a consortium would agree from its members' counts), balanced (each
    /// hospital balances its own data: with strongly skewed hospitals a
    /// handful of images get enormous weight), none, or weights like 1.9,0.7.
    #[arg(long, default_value = "balanced")]
    pub class_weights: String,

    /// Keep each hospital's optimiser state (momentum, Adam's moments)
    /// across rounds instead of starting afresh from each global model.
    #[arg(long)]
    pub keep_optimizer_state: bool,

    /// Random rotation, shift, zoom, brightness and contrast of training
    /// images.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,

    /// Network: cnn or resnet18.
    #[arg(long, default_value = "cnn")]
    pub model: String,

    /// Side of the model input in pixels [default: the .npz's own size, else 28].
    #[arg(long, value_name = "PIXELS")]
    pub input_size: Option<usize>,

    /// Seed of the split, the initial model, training and the phantom.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Synthetic training images when no --data is given.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(64..=1_000_000))]
    pub synthetic: u64,

    /// Kill hospital K during round R (K@R, hospitals count from 1; may be repeated).
    #[arg(long, value_name = "K@R", value_parser = parse_failure)]
    pub kill: Vec<Failure>,

    /// Restart hospital K, killed earlier, during round R (K@R; may be repeated).
    #[arg(long, value_name = "K@R", value_parser = parse_failure)]
    pub restart: Vec<Failure>,

    /// Where the report goes (report.json, rounds.csv, learning_curves.png, roc.png).
    #[arg(long, value_name = "DIR", default_value = "simulation-report")]
    pub report: PathBuf,

    /// Keep the hospitals' keys, data shares, configs and stores here
    /// [default: a temporary directory, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Train with differential privacy (DP-SGD) at every hospital, within
    /// this epsilon (at --dp-delta) over the whole run; the noise is derived
    /// from the budget, the rounds and the local steps.
    #[arg(long, value_name = "EPSILON")]
    pub dp_epsilon: Option<f64>,

    /// The delta of the privacy guarantee.
    #[arg(long, default_value_t = 1e-5, requires = "dp_epsilon")]
    pub dp_delta: f64,

    /// L2 bound on each example's gradient under differential privacy.
    #[arg(long, default_value_t = 1.0, requires = "dp_epsilon")]
    pub dp_clip: f64,

    /// Skip the centralised and hospital-alone baselines.
    #[arg(long)]
    pub no_baselines: bool,

    /// Longest wait, in milliseconds, of a round's leader for members
    /// (and of a member for its own training before the round starts).
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub collect_ms: u64,

    /// Print the report as one JSON document on stdout (progress and the
    /// table go to stderr).
    #[arg(long)]
    pub json: bool,
}

fn parse_failure(s: &str) -> Result<Failure, String> {
    let (k, r) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?}: expected HOSPITAL@ROUND, e.g. 2@3"))?;
    Ok(Failure {
        hospital: k
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {k:?} is not a hospital number"))?,
        round: r
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {r:?} is not a round number"))?,
    })
}

impl Args {
    /// The simulation these arguments describe.
    pub fn options(&self) -> anyhow::Result<SimOptions> {
        let split = match self.alpha {
            None => SplitScheme::Iid,
            Some(a) if a.is_finite() && a > 0.0 => SplitScheme::Dirichlet {
                alpha: a,
                min_per_hospital: 2 * self.batch_size as usize,
            },
            Some(a) => anyhow::bail!("--alpha {a}: must be a positive number"),
        };
        let input_size = match (self.input_size, &self.data) {
            (Some(s), _) => s,
            (None, Some(p)) if p.is_file() => primia_model::data::npz::load_medmnist(p)
                .with_context(|| format!("--data {}", p.display()))?
                .train
                .size(),
            _ => primia_model::data::DEFAULT_INPUT_SIZE,
        };
        if let Some(p) = &self.data {
            anyhow::ensure!(p.exists(), "--data {}: not found", p.display());
        }
        anyhow::ensure!(
            matches!(self.optimizer.as_str(), "sgd" | "adamw"),
            "--optimizer {:?}: expected sgd or adamw",
            self.optimizer
        );
        let algorithm = self.algorithm.clone().unwrap_or_else(|| {
            if self.dp_epsilon.is_some() {
                "fedavg".into()
            } else {
                "scaffold".into()
            }
        });
        anyhow::ensure!(
            matches!(algorithm.as_str(), "scaffold" | "fedavg"),
            "--algorithm {algorithm:?}: expected scaffold or fedavg"
        );
        anyhow::ensure!(
            !(algorithm == "scaffold" && self.dp_epsilon.is_some()),
            "--algorithm scaffold shares un-noised mean gradients: with --dp-epsilon use fedavg"
        );
        let lr = self
            .lr
            .unwrap_or(if self.optimizer == "sgd" { 0.02 } else { 0.002 });
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0 && lr <= 10.0,
            "--lr {lr}: must be in (0, 10]"
        );
        if self.class_weights != "pooled" {
            crate::node::train::class_weighting(&self.class_weights)
                .map_err(|e| anyhow::anyhow!("--class-weights: {e}"))?;
        }
        let training = TrainingConfig {
            model: self.model.clone(),
            input_size,
            local_steps: self
                .local_steps
                .unwrap_or(if self.data.is_some() { 100 } else { 20 }),
            batch_size: self.batch_size,
            learning_rate: lr,
            optimizer: self.optimizer.clone(),
            algorithm,
            augment: self.augment,
            keep_optimizer_state: self.keep_optimizer_state,
            class_weights: self.class_weights.clone(),
            seed: self.seed,
            ..TrainingConfig::default()
        };
        anyhow::ensure!(
            training.model.parse::<primia_model::Architecture>().is_ok(),
            "--model {:?}: expected cnn or resnet18",
            training.model
        );
        Ok(SimOptions {
            hospitals: self.hospitals as usize,
            rounds: self
                .rounds
                .unwrap_or(if self.data.is_some() { 30 } else { 8 }),
            data: self.data.clone(),
            synthetic: self.synthetic as usize,
            split,
            training,
            kills: self.kill.clone(),
            restarts: self.restart.clone(),
            state_dir: self.state_dir.clone().unwrap_or_else(sim::temp_state_dir),
            baselines: !self.no_baselines,
            collect_ms: self.collect_ms,
            privacy: self.dp_epsilon.map(|e| crate::config::PrivacyConfig {
                enabled: true,
                target_epsilon: e,
                delta: self.dp_delta,
                clip_norm: self.dp_clip,
                noise_multiplier: None,
            }),
        })
    }
}

/// Shows what the hospitals are doing, from their control sockets.
struct Display {
    multi: MultiProgress,
    rounds: ProgressBar,
    lines: Vec<ProgressBar>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let rounds = multi.add(ProgressBar::new(0));
        rounds.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} rounds {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        rounds.set_prefix("consortium");
        Self {
            multi,
            rounds,
            lines: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            poller: None,
        }
    }

    fn on(&mut self, p: Progress) {
        match p {
            Progress::Started {
                names,
                storage,
                rounds,
            } => {
                self.rounds.set_length(rounds);
                self.rounds.set_message("starting");
                for name in &names {
                    let line = self.multi.add(ProgressBar::new_spinner());
                    line.set_style(
                        ProgressStyle::with_template("{prefix:>12} {spinner} {msg}")
                            .expect("valid template"),
                    );
                    line.set_prefix(name.clone());
                    line.enable_steady_tick(Duration::from_millis(200));
                    self.lines.push(line);
                }
                let lines = self.lines.clone();
                let stop = Arc::clone(&self.stop);
                self.poller = Some(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for (line, dir) in lines.iter().zip(&storage) {
                            let msg = match control::query_status(dir, Duration::from_millis(300)) {
                                Ok(s) => match s.round {
                                    Some(r) => format!(
                                        "round {} attempt {}: {} (leader {})",
                                        r.round, r.attempt, r.phase, r.leader
                                    ),
                                    None => format!(
                                        "between rounds; model of round {}",
                                        s.latest_model.map_or(0, |m| m.round)
                                    ),
                                },
                                Err(_) => "not running".into(),
                            };
                            line.set_message(msg);
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }));
            }
            Progress::Round(row) => {
                self.rounds.set_position(row.round);
                self.rounds.set_message(format!(
                    "last: {} of {} in the sum, test AUC {}",
                    row.participants,
                    row.participants + row.dropouts,
                    row.test_auc
                        .map_or_else(|| "-".into(), |a| format!("{a:.4}"))
                ));
            }
            Progress::Failure(what) => {
                let _ = self.multi.println(what);
            }
            Progress::Baselines => {
                self.rounds
                    .set_message("training the centralised and hospital-alone baselines");
                self.finish_lines();
            }
        }
    }

    fn finish_lines(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        for l in &self.lines {
            l.finish_and_clear();
        }
    }

    fn finish(mut self) {
        self.finish_lines();
        self.rounds.finish_and_clear();
    }
}

/// Runs `primiad simulate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    let temporary = args.state_dir.is_none();
    if !temporary && sim::is_state_dir(&opts.state_dir) {
        anyhow::bail!(
            "--state-dir {}: holds an earlier simulation; choose an empty directory",
            opts.state_dir.display()
        );
    }
    let display = std::sync::Mutex::new(Display::new());
    let result = sim::run(&opts, |p| {
        if let Ok(mut d) = display.lock() {
            d.on(p);
        }
    });
    if let Ok(d) = display.into_inner() {
        d.finish();
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&opts.state_dir);
    }
    let mut r = result?;
    if temporary {
        r.state_dir = "(temporary, removed)".into();
    }
    let warnings = report::write(&r, &args.report)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let table = report::table(&r);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{table}");
        println!("report: {}", args.report.display());
    }
    Ok(if r.members_agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
