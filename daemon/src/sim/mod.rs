//! A whole consortium on one machine: the engine of `primiad simulate`.
//!
//! [`run`] splits one data set among K simulated hospitals, writes each
//! one's identity key, data file (`data.npz`, its share only) and config as
//! a real deployment would have them, and runs K real daemons
//! ([`crate::node::run_with`], each on its own thread and runtime) that find
//! each other over libp2p on 127.0.0.1, train on their own share, combine
//! updates by secure aggregation and keep their state in their own sled
//! store. The simulator itself only watches: it reads each round's model
//! from the members' reports and measures it on the held-out test split,
//! which no hospital holds.
//!
//! Failure injection kills a hospital (its runtime is dropped at once: its
//! tasks stop wherever they are, as in a crash, though the operating system
//! process lives on) and restarts it later from the same directory, where it
//! must find its committed state and catch up by hash.
//!
//! Baselines, on the same data and with the same model and training
//! settings: the pooled data trained centrally, and each hospital alone,
//! each for the same number of optimiser steps as the federation took in
//! all (central) or at that hospital (alone).

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use primia_model::data::split::SplitScheme;
use primia_model::data::{DataSource, load, npz};
use primia_model::train::{Trainer, predict_proba};
use primia_model::{Dataset, Model, Splits, metrics};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, PrivacyConfig, TrainingConfig};
use crate::identity::NodeIdentity;
use crate::node::train::train_config;
use crate::node::{GlobalModel, NodeOptions, RoundReport, run_with};
use crate::store::Store;

/// A hospital going down or coming back at a round (hospitals count from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// 1-based hospital number.
    pub hospital: usize,
    /// The round during which it happens.
    pub round: u64,
}

/// Everything a simulation is run with.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Number of hospitals (at least 2).
    pub hospitals: usize,
    /// Rounds of federated training.
    pub rounds: u64,
    /// A MedMNIST `.npz` or a folder of class subfolders; `None` is the
    /// built-in synthetic phantom.
    pub data: Option<PathBuf>,
    /// Synthetic training images when `data` is `None`.
    pub synthetic: usize,
    /// How the training (and validation) images are dealt to hospitals.
    pub split: SplitScheme,
    /// Local training settings, shared by all hospitals.
    pub training: TrainingConfig,
    /// Hospitals to kill, and when.
    pub kills: Vec<Failure>,
    /// Hospitals to restart, and when.
    pub restarts: Vec<Failure>,
    /// Where hospitals keep their keys, data shares, configs and stores.
    pub state_dir: PathBuf,
    /// Train the central and the alone baselines too.
    pub baselines: bool,
    /// The protocol's collection window (also the longest wait for a
    /// member's training before a round starts without it).
    pub collect_ms: u64,
    /// Differentially private training at every hospital, when set.
    pub privacy: Option<PrivacyConfig>,
}

impl SimOptions {
    /// Checks the options that the daemons' own validation does not cover.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (2..=64).contains(&self.hospitals),
            "--hospitals {}: between 2 and 64 hospitals can be simulated",
            self.hospitals
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.rounds),
            "--rounds {}: between 1 and 10000",
            self.rounds
        );
        for (what, list) in [("--kill", &self.kills), ("--restart", &self.restarts)] {
            for f in list {
                anyhow::ensure!(
                    (1..=self.hospitals).contains(&f.hospital),
                    "{what} {}@{}: there are hospitals 1 to {}",
                    f.hospital,
                    f.round,
                    self.hospitals
                );
                anyhow::ensure!(
                    (1..=self.rounds).contains(&f.round),
                    "{what} {}@{}: rounds are 1 to {}",
                    f.hospital,
                    f.round,
                    self.rounds
                );
            }
        }
        for r in &self.restarts {
            anyhow::ensure!(
                self.kills
                    .iter()
                    .any(|k| k.hospital == r.hospital && k.round < r.round),
                "--restart {}@{}: hospital {} is not killed before round {}",
                r.hospital,
                r.round,
                r.hospital,
                r.round
            );
        }
        let down_at_once = self.kills.len();
        anyhow::ensure!(
            self.hospitals - down_at_once >= self.threshold(),
            "killing {down_at_once} of {} hospitals leaves fewer than the threshold of {}",
            self.hospitals,
            self.threshold()
        );
        Ok(())
    }

    /// The consortium's threshold: a strict majority, with leaders trusted
    /// to follow the protocol when failures are injected into a consortium
    /// too small to survive them under the stricter rule.
    pub fn threshold(&self) -> usize {
        if self.honest_leaders() {
            self.hospitals / 2 + 1
        } else {
            self.hospitals.div_ceil(2) + 1
        }
    }

    /// Whether the roster must state honest-but-curious leaders: only when
    /// hospitals are killed and the rule against malicious leaders
    /// (2t > n + 1) would leave no room for them.
    pub fn honest_leaders(&self) -> bool {
        !self.kills.is_empty() && self.hospitals - self.kills.len() < self.hospitals.div_ceil(2) + 1
    }
}

/// What happened in one round, as the simulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    /// The round.
    pub round: u64,
    /// Hospitals whose updates are in the aggregate.
    pub participants: usize,
    /// Hospitals that are not.
    pub dropouts: usize,
    /// Names of those that are not.
    pub dropped: Vec<String>,
    /// Seconds since the previous round's model (or the start): local
    /// training plus the secure aggregation.
    pub round_s: f64,
    /// The global model on the test split.
    pub test_loss: f64,
    /// Accuracy at the decision threshold.
    pub test_acc: f64,
    /// ROC-AUC.
    pub test_auc: Option<f64>,
    /// The model's blake3 hash.
    pub model: String,
}

/// A model measured on the test split.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy at `threshold`.
    pub acc: f64,
    /// Accuracy at 0.5.
    pub acc_at_half: f64,
    /// ROC-AUC.
    pub auc: Option<f64>,
    /// Sensitivity at `threshold`.
    pub sensitivity: f64,
    /// Specificity at `threshold`.
    pub specificity: f64,
    /// The decision threshold on P(class 1), chosen on the pooled
    /// validation images (Youden's J).
    pub threshold: f32,
    /// The ROC curve: (false positive rate, true positive rate) points.
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
}

/// A simulation's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// What data was used.
    pub data: String,
    /// Hospitals.
    pub hospitals: usize,
    /// The threshold t of secure aggregation.
    pub threshold: usize,
    /// `malicious` or `honest-but-curious`.
    pub leader_trust: String,
    /// Always true: every round is securely aggregated.
    pub secure_aggregation: bool,
    /// The split, e.g. `dirichlet(alpha=0.5)`.
    pub split: String,
    /// Training images per hospital and class.
    pub hospital_counts: Vec<Vec<usize>>,
    /// Rounds run.
    pub rounds: u64,
    /// Local steps per round.
    pub local_steps: u32,
    /// `scaffold` or `fedavg`.
    pub algorithm: String,
    /// Injected failures, as done.
    pub failures: Vec<String>,
    /// The final global model on the test split.
    pub test_auc: Option<f64>,
    /// Its accuracy at the threshold chosen on pooled validation images.
    pub test_acc: f64,
    /// Its test loss.
    pub test_loss: f64,
    /// Details of the final model on the test split.
    pub final_model: Measured,
    /// The centralised baseline's test AUC (`null` without baselines).
    pub central_test_auc: Option<f64>,
    /// Its accuracy.
    pub central_test_acc: Option<f64>,
    /// The centralised baseline in detail.
    pub central: Option<Measured>,
    /// Each hospital trained alone: test AUC.
    pub alone_test_auc: Vec<Option<f64>>,
    /// Each hospital trained alone: test accuracy.
    pub alone_test_acc: Vec<f64>,
    /// Every hospital's store holds the final model as its current one.
    pub members_agree: bool,
    /// The privacy budget each hospital's target was (`null` without
    /// differential privacy).
    pub dp_target_epsilon: Option<f64>,
    /// The epsilon each hospital spent (at `dp_delta`), from its store.
    pub privacy_epsilon: Vec<f64>,
    /// The delta of those epsilons.
    pub dp_delta: Option<f64>,
    /// The final model's blake3 hash.
    pub model_hash: String,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
    /// Wall time of the federated part, seconds.
    pub federated_s: f64,
    /// Per round.
    pub per_round: Vec<RoundRow>,
    /// Where the hospitals' directories are.
    pub state_dir: String,
}

/// What the simulator tells whoever shows progress.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The consortium is starting.
    Started {
        /// Hospital names.
        names: Vec<String>,
        /// Their storage directories (for their control sockets).
        storage: Vec<PathBuf>,
        /// Rounds to run.
        rounds: u64,
    },
    /// A round's model exists and was measured.
    Round(RoundRow),
    /// A hospital was killed or restarted.
    Failure(String),
    /// Baselines are being trained.
    Baselines,
}

/// One running hospital.
struct Hospital {
    name: String,
    config: Config,
    kill: Option<oneshot::Sender<()>>,
    /// Asks the daemon to shut down cleanly.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A hospital's data: its training and validation shares.
struct Share {
    train: Dataset,
    val: Dataset,
}

/// The data of a simulation: the splits, each hospital's share, the
/// hospitals' class counts, and what the data is.
struct Prepared {
    /// The options with `pooled` class weights resolved to numbers.
    opts: SimOptions,
    splits: Splits,
    shares: Vec<Share>,
    counts: Vec<Vec<usize>>,
    what: String,
}

/// Loads the data and deals it out.
fn prepare_data(opts: &SimOptions) -> anyhow::Result<Prepared> {
    let source = DataSource::from_path(opts.data.as_deref());
    let splits = match &source {
        DataSource::Phantom => {
            use primia_model::data::phantom;
            let n = opts.synthetic;
            phantom::phantom_splits(
                opts.training.input_size,
                n,
                (n / 8).max(64),
                (n / 6).max(64),
                opts.training.seed,
            )?
        }
        _ => load(&source, Some(opts.training.input_size), opts.training.seed)?.splits,
    };
    let what = match &opts.data {
        None => format!(
            "synthetic chest X-ray phantom, {} training images",
            splits.train.len()
        ),
        Some(p) => p.display().to_string(),
    };
    let mut opts = opts.clone();
    if opts.training.class_weights == "pooled" {
        // What the consortium would agree on from its members' class counts.
        let counts = splits.train.class_counts();
        let n: usize = counts.iter().sum();
        let k = counts.iter().filter(|&&c| c > 0).count().max(1);
        opts.training.class_weights = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    "0".to_string()
                } else {
                    format!("{:.4}", n as f64 / (k * c) as f64)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    let opts = &opts;
    let (train, split) = splits
        .train
        .split_hospitals(opts.hospitals, opts.split, opts.training.seed)
        .context("cannot split the training images among the hospitals")?;
    // Validation images are dealt the same way (each hospital checks its
    // model on images like its own), by another seed.
    let val_scheme = match opts.split {
        SplitScheme::Dirichlet { alpha, .. } => SplitScheme::Dirichlet {
            alpha,
            min_per_hospital: 2,
        },
        s => s,
    };
    let (val, _) = splits
        .val
        .split_hospitals(opts.hospitals, val_scheme, opts.training.seed ^ 0x5eed)
        .context("cannot split the validation images among the hospitals")?;
    let shares = train
        .into_iter()
        .zip(val)
        .map(|(train, val)| Share { train, val })
        .collect();
    Ok(Prepared {
        opts: opts.clone(),
        splits,
        shares,
        counts: split.counts,
        what,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes every hospital's key, data share and config, and the roster.
fn write_consortium(opts: &SimOptions, shares: &[Share]) -> anyhow::Result<Vec<(String, Config)>> {
    let dir = &opts.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut roster = format!(
        "consortium = \"simulation\"\nthreshold = {}\n",
        opts.threshold()
    );
    if opts.honest_leaders() {
        roster.push_str("leader_trust = \"honest-but-curious\"\n");
    }
    let t = &opts.training;
    let mut configs = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let name = format!("hospital-{}", i + 1);
        let home = dir.join(&name);
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        let key = home.join("identity.key");
        let id = if key.exists() {
            NodeIdentity::load(&key)?
        } else {
            let id = NodeIdentity::generate()?;
            id.save(&key, false)?;
            id
        };
        // The hospital's own data file: its training and validation
        // shares (the test slot repeats the validation share: daemons do
        // not use it, and the file stays a valid MedMNIST archive).
        npz::write_medmnist(
            &home.join("data.npz"),
            &Splits {
                train: share.train.clone(),
                val: share.val.clone(),
                test: share.val.clone(),
            },
        )?;
        let port = free_port()?;
        roster.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\npeer_id = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{port}\"]\n",
            id.peer_id()
        ));
        let text = format!(
            "roster = \"../roster.toml\"\nkey = \"identity.key\"\ndata_dir = \"data.npz\"\nstorage_dir = \"state\"\n\n\
             [network]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n\n\
             [round]\ncollect_ms = {collect}\nleader_silence_ms = {silence}\nmax_attempts = 8\nrounds = {rounds}\npause_ms = 0\n\n\
             [training]\nmode = \"train\"\nmodel = \"{model}\"\ninput_size = {input}\nlocal_steps = {steps}\n\
             batch_size = {batch}\nlearning_rate = {lr}\nlr_schedule = \"{schedule}\"\noptimizer = \"{opt}\"\nalgorithm = \"{algorithm}\"\nkeep_optimizer_state = {keep}\nweight_decay = {wd}\n\
             augment = {augment}\nclass_weights = \"{cw}\"\nseed = {seed}\n",
            collect = opts.collect_ms,
            silence = opts.collect_ms * 3,
            rounds = opts.rounds,
            model = t.model,
            input = t.input_size,
            steps = t.local_steps,
            batch = t.batch_size,
            lr = t.learning_rate,
            schedule = t.lr_schedule,
            opt = t.optimizer,
            algorithm = t.algorithm,
            keep = t.keep_optimizer_state,
            wd = t.weight_decay,
            augment = t.augment,
            cw = t.class_weights,
            seed = t.seed,
        );
        let text = match &opts.privacy {
            None => text,
            Some(p) => format!(
                "{text}\n[privacy]\nenabled = true\ntarget_epsilon = {}\ndelta = {:e}\nclip_norm = {}\n{}",
                p.target_epsilon,
                p.delta,
                p.clip_norm,
                p.noise_multiplier
                    .map_or_else(String::new, |s| format!("noise_multiplier = {s}\n"))
            ),
        };
        let path = home.join("primiad.toml");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        configs.push((name, path));
    }
    let roster_path = dir.join("roster.toml");
    std::fs::write(&roster_path, roster)
        .with_context(|| format!("cannot write {}", roster_path.display()))?;
    configs
        .into_iter()
        .map(|(name, path)| Ok((name, Config::load(&path)?)))
        .collect()
}

/// Starts a hospital's daemon on its own thread and runtime.
fn start(h: &mut Hospital, reports: mpsc::Sender<RoundReport>) -> anyhow::Result<()> {
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = h.config.clone();
    let thread =
        std::thread::Builder::new()
            .name(h.name.clone())
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let result = runtime.block_on(async move {
                    let options = NodeOptions {
                        reports: Some(reports),
                        ..NodeOptions::default()
                    };
                    // Killed: the node's future and, below, every task it
                    // spawned are dropped wherever they are. Stopped: it
                    // shuts down as on SIGTERM.
                    let node = run_with(config, options, async move {
                        let _ = stop_rx.await;
                    });
                    tokio::select! {
                        r = node => r,
                        _ = kill_rx => Err(anyhow::anyhow!("killed")),
                    }
                });
                runtime.shutdown_background();
                result
            })?;
    h.kill = Some(kill_tx);
    h.stop = Some(stop_tx);
    h.thread = Some(thread);
    Ok(())
}

/// Kills a running hospital and waits for its thread.
fn kill(h: &mut Hospital) {
    h.stop = None;
    if let Some(k) = h.kill.take() {
        let _ = k.send(());
    }
    if let Some(t) = h.thread.take() {
        let _ = t.join();
    }
}

/// Measures a model on `data`, deciding at the threshold chosen on `val`.
pub fn measure(model: &Model, val: &Dataset, data: &Dataset) -> anyhow::Result<Measured> {
    let val_probs = predict_proba(model, val)?;
    let classes = val.classes();
    let p1 = |p: &[f32]| -> Vec<f32> { p.chunks(classes).map(|c| c[1]).collect() };
    let threshold = if classes == 2 {
        metrics::youden_threshold(&p1(&val_probs), val.labels())
    } else {
        0.5
    };
    let probs = predict_proba(model, data)?;
    let at = metrics::compute(&probs, data.labels(), classes, threshold);
    let half = metrics::compute(&probs, data.labels(), classes, 0.5);
    let roc = if classes == 2 {
        report::roc_points(&p1(&probs), data.labels())
    } else {
        Vec::new()
    };
    Ok(Measured {
        loss: at.loss,
        acc: at.accuracy,
        acc_at_half: half.accuracy,
        auc: at.auc,
        sensitivity: at.sensitivity,
        specificity: at.specificity,
        threshold,
        roc,
    })
}

/// Trains `steps` steps on `train` from the initial model, as a hospital
/// would (same settings), and measures the result.
fn baseline(
    cfg: &TrainingConfig,
    train: &Dataset,
    val: &Dataset,
    test: &Dataset,
    steps: u64,
    seed: u64,
) -> anyhow::Result<Measured> {
    let spec = primia_model::ModelSpec::new(cfg.model.parse()?, cfg.input_size, test.classes())?;
    let mut model = Model::new(spec, cfg.seed)?;
    let mut tc = train_config(cfg);
    if cfg.lr_schedule == "cosine" {
        // The same decay as the federation's, over this run's steps.
        tc.schedule = primia_model::LrSchedule::Cosine {
            warmup_steps: 0,
            total_steps: steps,
            final_frac: 0.05,
        };
    }
    let mut trainer = Trainer::new(&model, &tc)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    trainer.train_steps(&mut model, train, steps, &mut rng, |_| {})?;
    measure(&model, val, test)
}

/// Concatenates data sets of the same image size and classes.
fn pooled(parts: &[&Dataset]) -> anyhow::Result<Dataset> {
    let first = parts.first().context("no data")?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for p in parts {
        images.extend_from_slice(p.pixels());
        labels.extend_from_slice(p.labels());
    }
    Ok(Dataset::with_class_names(
        images,
        labels,
        first.size(),
        first.class_names().to_vec(),
    )?)
}

/// Kills or restarts the hospitals in `pending` now, recording each as
/// happening during round `during`.
fn inject(
    hospitals: &mut [Hospital],
    pending: &mut Vec<(usize, bool)>,
    during: u64,
    report_tx: &mpsc::Sender<RoundReport>,
    failures: &mut Vec<String>,
    progress: &impl Fn(Progress),
) -> anyhow::Result<()> {
    for (h, restart) in pending.drain(..) {
        let hospital = &mut hospitals[h];
        let what = if restart {
            start(hospital, report_tx.clone())?;
            format!("{} restarted during round {during}", hospital.name)
        } else {
            kill(hospital);
            format!("{} killed during round {during}", hospital.name)
        };
        tracing::info!("{what}");
        progress(Progress::Failure(what.clone()));
        failures.push(what);
    }
    Ok(())
}

/// Runs a simulation; `progress` hears about it as it goes.
pub fn run(opts: &SimOptions, progress: impl Fn(Progress)) -> anyhow::Result<SimReport> {
    opts.validate()?;
    let started = Instant::now();
    let Prepared {
        opts,
        splits,
        shares,
        counts,
        what,
    } = prepare_data(opts)?;
    let opts = &opts;
    let configs = write_consortium(opts, &shares)?;
    let names: Vec<String> = configs.iter().map(|(n, _)| n.clone()).collect();
    let member_names = names_by_member(&configs)?;
    let pooled_val = pooled(&shares.iter().map(|s| &s.val).collect::<Vec<_>>())?;

    // The evaluation model: the same network, loaded with each round's weights.
    let spec = primia_model::ModelSpec::new(
        opts.training.model.parse()?,
        opts.training.input_size,
        splits.test.classes(),
    )?;
    let mut eval_model = Model::new(spec, opts.training.seed)?;

    let (report_tx, mut report_rx) = mpsc::channel::<RoundReport>(1024);
    let mut hospitals: Vec<Hospital> = configs
        .into_iter()
        .map(|(name, config)| Hospital {
            name,
            config,
            kill: None,
            stop: None,
            thread: None,
        })
        .collect();
    progress(Progress::Started {
        names: names.clone(),
        storage: hospitals
            .iter()
            .map(|h| h.config.storage_dir.clone())
            .collect(),
        rounds: opts.rounds,
    });
    for h in &mut hospitals {
        start(h, report_tx.clone())?;
    }

    let mut rows: Vec<RoundRow> = Vec::new();
    let mut failures = Vec::new();
    let mut last_model: Option<(u64, Arc<GlobalModel>, String)> = None;
    // Which hospitals have reported the last round's model as stored.
    let mut has_last = vec![false; opts.hospitals];
    let mut last_time = Instant::now();
    let fed_started = Instant::now();
    // Failures to inject now: (hospital index, restart?).
    let mut pending: Vec<(usize, bool)> = Vec::new();
    let schedule = |pending: &mut Vec<(usize, bool)>, finished_round: u64| {
        for k in opts.kills.iter().filter(|k| k.round == finished_round + 1) {
            // As soon as the round before is decided: the member is then
            // training for this round or already in it, and vanishes
            // mid-round. (Any later and a fast round may be over.)
            pending.push((k.hospital - 1, false));
        }
        for r in opts
            .restarts
            .iter()
            .filter(|r| r.round == finished_round + 1)
        {
            pending.push((r.hospital - 1, true));
        }
    };
    schedule(&mut pending, 0);
    let deadline_per_round =
        Duration::from_millis(opts.collect_ms * 40).max(Duration::from_secs(600));
    let mut round_deadline = Instant::now() + deadline_per_round;
    while last_model.as_ref().is_none_or(|(r, _, _)| *r < opts.rounds) {
        let during = last_model.as_ref().map_or(0, |m| m.0) + 1;
        inject(
            &mut hospitals,
            &mut pending,
            during,
            &report_tx,
            &mut failures,
            &progress,
        )?;
        anyhow::ensure!(
            Instant::now() < round_deadline,
            "no round finished in {} s; see the hospitals' logs",
            deadline_per_round.as_secs()
        );
        let report = match report_rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => {
                unreachable!("the simulator holds a sender")
            }
        };
        if report.round >= opts.rounds
            && let Some(done) = has_last.get_mut(report.me.index())
        {
            *done = true;
        }
        if last_model
            .as_ref()
            .is_some_and(|(r, _, _)| report.round <= *r)
        {
            continue;
        }
        // The first member to report a round. Failures due in the next
        // round happen now, before its model is measured: measuring takes
        // longer than a fast round's first phases.
        let round = report.round;
        schedule(&mut pending, round);
        inject(
            &mut hospitals,
            &mut pending,
            round + 1,
            &report_tx,
            &mut failures,
            &progress,
        )?;
        // Then measure its model.
        eval_model.unflatten(crate::node::train::weights_of(
            &report.params.params,
            &eval_model,
        ))?;
        let m = measure(&eval_model, &pooled_val, &splits.test)?;
        let in_sum: Vec<usize> = report.participants.iter().map(|p| p.index()).collect();
        let dropped: Vec<String> = (0..opts.hospitals)
            .filter(|i| !in_sum.is_empty() && !in_sum.contains(i))
            .map(|i| member_names[i].clone())
            .collect();
        let row = RoundRow {
            round,
            participants: if in_sum.is_empty() {
                opts.hospitals
            } else {
                in_sum.len()
            },
            dropouts: dropped.len(),
            dropped,
            round_s: last_time.elapsed().as_secs_f64(),
            test_loss: m.loss,
            test_acc: m.acc,
            test_auc: m.auc,
            model: report.model.to_hex(),
        };
        last_time = Instant::now();
        round_deadline = last_time + deadline_per_round;
        progress(Progress::Round(row.clone()));
        rows.push(row);
        last_model = Some((round, Arc::clone(&report.params), report.model.to_hex()));
    }
    let federated_s = fed_started.elapsed().as_secs_f64();
    let (_, final_params, final_hash) = last_model.context("no round finished")?;

    // Once every live hospital has stored the last model, none needs
    // another to stay up for it: stop them all cleanly (left alone, the
    // last to finish lingers for members it has not heard from). Then
    // check their stores.
    let wait_until =
        Instant::now() + Duration::from_millis(opts.collect_ms * 6).max(Duration::from_secs(60));
    let all_have_last = |hs: &[Hospital], done: &[bool]| {
        hs.iter()
            .zip(done)
            .all(|(h, d)| *d || h.thread.as_ref().is_none_or(|t| t.is_finished()))
    };
    while !all_have_last(&hospitals, &has_last) && Instant::now() < wait_until {
        match report_rx.try_recv() {
            Ok(r) if r.round >= opts.rounds => {
                if let Some(done) = has_last.get_mut(r.me.index()) {
                    *done = true;
                }
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for (h, done) in hospitals.iter_mut().zip(&has_last) {
        if let Some(stop) = h.stop.take().filter(|_| *done) {
            let _ = stop.send(());
        }
    }
    for h in &mut hospitals {
        if let Some(t) = h.thread.take() {
            while !t.is_finished() && Instant::now() < wait_until {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(hospital = %h.name, error = format!("{e:#}"), "hospital stopped with an error")
                    }
                    Err(_) => tracing::warn!(hospital = %h.name, "hospital thread panicked"),
                }
            } else {
                h.thread = Some(t);
                kill(h);
            }
        }
    }
    let mut members_agree = true;
    let mut privacy_epsilon = Vec::new();
    for h in &hospitals {
        let store = Store::open(&h.config.storage_dir)
            .with_context(|| format!("{}: cannot open its store", h.name))?;
        privacy_epsilon.push(store.privacy_spent()?.epsilon);
        let current = store
            .current_model()
            .with_context(|| format!("{}: cannot read its store", h.name))?;
        if current.map(|c| c.to_hex()) != Some(final_hash.clone()) {
            tracing::warn!(hospital = %h.name, "its store does not hold the final model as current");
            members_agree = false;
        }
    }

    eval_model.unflatten(crate::node::train::weights_of(
        &final_params.params,
        &eval_model,
    ))?;
    let final_model = measure(&eval_model, &pooled_val, &splits.test)?;

    let (central, alone) = if opts.baselines {
        progress(Progress::Baselines);
        let steps_each = opts.rounds * u64::from(opts.training.local_steps);
        let all_train = pooled(&shares.iter().map(|s| &s.train).collect::<Vec<_>>())?;
        // Two threads of equal work (the central run trains as many steps
        // as all hospitals alone together) keep both halves of a small
        // machine busy: each run's own kernels parallelise poorly at
        // these batch sizes.
        let (central, alone) = std::thread::scope(|scope| {
            let central = scope.spawn(|| {
                baseline(
                    &opts.training,
                    &all_train,
                    &pooled_val,
                    &splits.test,
                    steps_each * opts.hospitals as u64,
                    opts.training.seed,
                )
            });
            let alone = shares
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    baseline(
                        &opts.training,
                        &s.train,
                        &s.val,
                        &splits.test,
                        steps_each,
                        opts.training.seed + 1 + i as u64,
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>();
            let central = central
                .join()
                .map_err(|_| anyhow::anyhow!("the centralised baseline's thread panicked"))?;
            anyhow::Ok((central?, alone?))
        })?;
        (Some(central), alone)
    } else {
        (None, Vec::new())
    };

    Ok(SimReport {
        data: what,
        hospitals: opts.hospitals,
        threshold: opts.threshold(),
        leader_trust: if opts.honest_leaders() {
            "honest-but-curious".into()
        } else {
            "malicious".into()
        },
        secure_aggregation: true,
        split: match opts.split {
            SplitScheme::Iid => "iid".into(),
            SplitScheme::Dirichlet { alpha, .. } => format!("dirichlet(alpha={alpha})"),
        },
        hospital_counts: counts,
        rounds: opts.rounds,
        local_steps: opts.training.local_steps,
        algorithm: opts.training.algorithm.clone(),
        failures,
        test_auc: final_model.auc,
        test_acc: final_model.acc,
        test_loss: final_model.loss,
        final_model,
        central_test_auc: central.as_ref().and_then(|c| c.auc),
        central_test_acc: central.as_ref().map(|c| c.acc),
        central,
        alone_test_auc: alone.iter().map(|a| a.auc).collect(),
        alone_test_acc: alone.iter().map(|a| a.acc).collect(),
        members_agree,
        dp_target_epsilon: opts.privacy.as_ref().map(|p| p.target_epsilon),
        privacy_epsilon: if opts.privacy.is_some() {
            privacy_epsilon
        } else {
            Vec::new()
        },
        dp_delta: opts.privacy.as_ref().map(|p| p.delta),
        model_hash: final_hash,
        wall_s: started.elapsed().as_secs_f64(),
        federated_s,
        per_round: rows,
        state_dir: opts.state_dir.display().to_string(),
    })
}

/// Hospital names by roster member index (the roster sorts members by
/// identity, not by hospital number).
fn names_by_member(configs: &[(String, Config)]) -> anyhow::Result<Vec<String>> {
    let roster = crate::config::LoadedRoster::load(&configs[0].1.roster)?;
    let mut names = vec![String::new(); configs.len()];
    for (name, config) in configs {
        let id = NodeIdentity::load(&config.key)?;
        let member = roster
            .roster
            .id_of(&id.public())
            .with_context(|| format!("{name} is not in the roster"))?;
        names[member.index()] = name.clone();
    }
    Ok(names)
}

/// A directory path for a fresh simulation's state under the system's
/// temporary directory.
pub fn temp_state_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "primia-simulation-{}-{}",
        std::process::id(),
        crate::store::now_unix_ms()
    ))
}

/// Whether `path` looks like it holds hospitals of an earlier simulation.
pub fn is_state_dir(path: &Path) -> bool {
    path.join("roster.toml").is_file()
}
