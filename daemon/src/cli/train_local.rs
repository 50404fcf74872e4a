//! `primiad train-local`: centralised training on one data set, with progress and test metrics.
//!
//! No network is involved: this is the baseline a consortium's federated
//! model is compared with, and a quick check that a hospital's data loads
//! and trains. All the work is `primia_model::fit`; this file parses
//! options, shows progress on stderr and prints the figures on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use primia_model::data::{self, DataSource, phantom};
use primia_model::fit::{FitEvent, FitReport};
use primia_model::{
    Architecture, AugmentConfig, ClassWeighting, FitConfig, LrSchedule, Metrics, Model, ModelSpec,
    OptimizerKind, Selection, ThresholdPolicy, TrainConfig,
};

/// Default number of epochs: the model crate's recommended recipe.
pub const DEFAULT_EPOCHS: u32 = primia_model::fit::RECOMMENDED_EPOCHS;

/// Arguments of `primiad train-local`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Training data: a MedMNIST .npz file (its official train/val/test
    /// splits are used), or a folder with one subfolder of DICOM, PNG or JPEG
    /// images per class (split 70/10/20 per class by --seed). Without it,
    /// the built-in synthetic chest X-ray phantom.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,

    /// Network: the compact CNN (fast on a CPU) or ResNet-18 (GroupNorm).
    #[arg(long, value_enum, default_value_t = ModelArg::Cnn)]
    pub model: ModelArg,

    /// Passes over the training data.
    #[arg(long, default_value_t = DEFAULT_EPOCHS, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub epochs: u32,

    /// Seed of the initial weights, batch order and augmentation (and of
    /// the split of a folder, and of the phantom's images).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Side of the square model input in pixels; images are resized to it
    /// [default: the .npz's own size, else 28].
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u64).range(16..=1024))]
    pub input_size: Option<u64>,

    /// Images per training step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,

    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,

    /// Base learning rate [default: 0.002 for adamw, 0.05 for sgd].
    #[arg(long)]
    pub lr: Option<f64>,

    /// Weight decay on convolution and linear weights.
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,

    /// Learning-rate schedule: cosine (half an epoch of warm-up, then
    /// cosine decay to 1%), step (x0.1 after each third of the run) or
    /// constant.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,

    /// Class weights in the loss: balanced (each class counts equally) or none.
    #[arg(long, value_enum, default_value_t = WeightingArg::Balanced)]
    pub class_weights: WeightingArg,

    /// Train on the images as they are, without random rotation, shift,
    /// zoom, brightness and contrast.
    #[arg(long)]
    pub no_augment: bool,

    /// Which epoch's weights to keep: the best validation AUC, or the last.
    #[arg(long, value_enum, default_value_t = SelectArg::BestValAuc)]
    pub select: SelectArg,

    /// Decision threshold on P(class 1): "youden" picks the one that
    /// maximises sensitivity + specificity on the validation split; or a
    /// number such as 0.5. Test accuracy at 0.5 is reported as well.
    #[arg(long, default_value = "youden", value_parser = parse_threshold)]
    pub threshold: ThresholdPolicy,

    /// Number of synthetic training images when no --data is given
    /// (validation and test get an eighth and a sixth of it).
    #[arg(long, default_value_t = phantom::PHANTOM_TRAIN as u64, value_parser = clap::value_parser!(u64).range(8..=200_000))]
    pub synthetic: u64,

    /// Save the kept weights to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    Cnn,
    Resnet18,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Step,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightingArg {
    Balanced,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SelectArg {
    BestValAuc,
    Last,
}

fn parse_threshold(s: &str) -> Result<ThresholdPolicy, String> {
    if s == "youden" {
        return Ok(ThresholdPolicy::ValYouden);
    }
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(ThresholdPolicy::Fixed(t)),
        _ => Err(format!(
            "{s:?} is neither \"youden\" nor a number in [0, 1]"
        )),
    }
}

/// What a run produced, for printing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub data: String,
    pub model: String,
    pub input_size: usize,
    pub class_names: Vec<String>,
    pub params: usize,
    pub fingerprint: String,
    pub seed: u64,
    pub train_examples: usize,
    pub val_examples: usize,
    pub test_examples: usize,
    pub skipped_files: usize,
    pub epochs: u32,
    pub steps: u64,
    pub kept_epoch: u32,
    pub threshold: Option<f32>,
    pub threshold_policy: String,
    pub test_auc: Option<f64>,
    pub test_acc: f64,
    pub test_acc_at_0_5: f64,
    pub test_sensitivity: f64,
    pub test_specificity: f64,
    pub test_mcc: f64,
    pub test_loss: f64,
    pub test_confusion: Vec<Vec<u64>>,
    pub val_auc: Option<f64>,
    pub val_acc: f64,
    pub train_s: f64,
    pub train_images_per_s: f64,
    /// The whole command: loading, training and evaluation.
    pub wall_s: f64,
    pub saved_weights: Option<PathBuf>,
    pub report: FitReport,
}

/// Builds the training configuration from the options.
fn fit_config(args: &Args, steps_per_epoch: u64) -> FitConfig {
    let total = steps_per_epoch * u64::from(args.epochs);
    let schedule = match args.schedule {
        ScheduleArg::Cosine => LrSchedule::cosine(steps_per_epoch / 2, total),
        ScheduleArg::Step => LrSchedule::Step {
            warmup_steps: steps_per_epoch / 2,
            every: total.div_ceil(3).max(1),
            gamma: 0.1,
        },
        ScheduleArg::Constant => LrSchedule::Constant,
    };
    let (optimizer, default_lr) = match args.optimizer {
        OptimizerArg::Adamw => (OptimizerKind::adamw(), 2e-3),
        OptimizerArg::Sgd => (OptimizerKind::sgd(), 0.05),
    };
    FitConfig {
        epochs: args.epochs,
        train: TrainConfig {
            optimizer,
            lr: args.lr.unwrap_or(default_lr),
            weight_decay: args.weight_decay,
            schedule,
            batch_size: args.batch_size as usize,
            class_weighting: match args.class_weights {
                WeightingArg::Balanced => ClassWeighting::Balanced,
                WeightingArg::None => ClassWeighting::None,
            },
            augment: (!args.no_augment).then(AugmentConfig::default),
            ..TrainConfig::default()
        },
        seed: args.seed,
        selection: match args.select {
            SelectArg::BestValAuc => Selection::BestValAuc,
            SelectArg::Last => Selection::Last,
        },
        threshold: args.threshold,
    }
}

/// Loads, trains and evaluates; progress goes to stderr.
pub fn execute(args: &Args) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let source = DataSource::from_path(args.data.as_deref());
    let input_size = args.input_size.map(|s| s as usize);
    let loaded = match &source {
        DataSource::Phantom => {
            let n = args.synthetic as usize;
            let size = input_size.unwrap_or(data::DEFAULT_INPUT_SIZE);
            let splits =
                phantom::phantom_splits(size, n, (n / 8).max(2), (n / 6).max(2), args.seed)
                    .context("cannot generate the synthetic phantom")?;
            data::LoadedData {
                description: format!(
                    "synthetic chest X-ray phantom (seed {}): train {}, val {}, test {}",
                    args.seed,
                    splits.train.len(),
                    splits.val.len(),
                    splits.test.len()
                ),
                splits,
                skipped: Vec::new(),
            }
        }
        other => data::load(other, input_size, args.seed).with_context(|| {
            format!(
                "cannot load training data from {}",
                args.data
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            )
        })?,
    };
    tracing::info!(data = %loaded.description, "data loaded");
    for (path, reason) in &loaded.skipped {
        tracing::warn!(file = %path.display(), %reason, "skipped");
    }
    let splits = &loaded.splits;
    let classes = splits.train.classes();
    let input_size = splits.train.size();
    let arch = match args.model {
        ModelArg::Cnn => Architecture::CompactCnn,
        ModelArg::Resnet18 => Architecture::ResNet18,
    };
    let spec = ModelSpec::new(arch, input_size, classes).context("cannot build the model")?;
    let mut model = Model::new(spec, args.seed).context("cannot build the model")?;
    let bs = (args.batch_size as usize).min(splits.train.len()).max(1);
    let steps_per_epoch = splits.train.len().div_ceil(bs) as u64;
    let cfg = fit_config(args, steps_per_epoch);
    tracing::info!(
        model = %model.spec(),
        params = model.param_count(),
        epochs = args.epochs,
        steps_per_epoch,
        "training"
    );

    let bar = ProgressBar::new(steps_per_epoch * u64::from(args.epochs));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} epoch {msg} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("1/{}", args.epochs));
    let report = primia_model::fit(&mut model, splits, &cfg, |event| match event {
        FitEvent::Step(s) => {
            bar.inc(1);
            if s.step % 10 == 0 {
                bar.set_message(format!(
                    "{}/{} loss {:.3}",
                    s.step / steps_per_epoch + 1,
                    args.epochs,
                    s.loss
                ));
            }
        }
        FitEvent::Epoch(e) => bar.suspend(|| {
            tracing::info!(
                epoch = e.epoch,
                train_loss = format!("{:.4}", e.train_loss),
                val_loss = format!("{:.4}", e.val_loss),
                val_auc = e.val_auc.map(|a| format!("{a:.4}")).unwrap_or_default(),
                val_acc = format!("{:.4}", e.val_accuracy),
                elapsed_s = format!("{:.0}", e.elapsed_s),
                "epoch done"
            );
        }),
    })
    .context("training failed")?;
    bar.finish_and_clear();

    if let Some(path) = &args.save {
        model
            .save(path)
            .with_context(|| format!("cannot save weights to {}", path.display()))?;
    }
    let t = &report.test;
    Ok(Outcome {
        data: loaded.description.clone(),
        model: arch.name().to_string(),
        input_size,
        class_names: splits.train.class_names().to_vec(),
        params: model.param_count(),
        fingerprint: model.fingerprint().to_hex(),
        seed: args.seed,
        train_examples: splits.train.len(),
        val_examples: splits.val.len(),
        test_examples: splits.test.len(),
        skipped_files: loaded.skipped.len(),
        epochs: report.epochs,
        steps: report.steps,
        kept_epoch: report.kept_epoch,
        threshold: report.threshold,
        threshold_policy: match args.threshold {
            ThresholdPolicy::ValYouden => "youden-on-validation".into(),
            ThresholdPolicy::Fixed(x) => format!("fixed {x}"),
        },
        test_auc: t.auc,
        test_acc: t.accuracy,
        test_acc_at_0_5: report.test_at_half.accuracy,
        test_sensitivity: t.sensitivity,
        test_specificity: t.specificity,
        test_mcc: t.mcc,
        test_loss: t.loss,
        test_confusion: t.confusion.clone(),
        val_auc: report.val.auc,
        val_acc: report.val.accuracy,
        train_s: report.train_s,
        train_images_per_s: report.train_images_per_s,
        wall_s: started.elapsed().as_secs_f64(),
        saved_weights: args.save.clone(),
        report,
    })
}

/// Runs the command: the table, or one JSON document with `--json`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let out = execute(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&out));
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

fn metrics_rows(m: &Metrics) -> Vec<(&'static str, String)> {
    vec![
        ("AUC", fmt_opt(m.auc)),
        ("accuracy", format!("{:.4}", m.accuracy)),
        ("sensitivity", format!("{:.4}", m.sensitivity)),
        ("specificity", format!("{:.4}", m.specificity)),
        ("MCC", format!("{:.4}", m.mcc)),
        ("loss", format!("{:.4}", m.loss)),
    ]
}

/// The human-readable summary.
fn table(o: &Outcome) -> String {
    let r = &o.report;
    let mut s = String::new();
    s.push_str(&format!("data        {}\n", o.data));
    s.push_str(&format!(
        "model       {} {}x{}, {} classes ({}), {} parameters, fingerprint {}\n",
        o.model,
        o.input_size,
        o.input_size,
        o.class_names.len(),
        o.class_names.join(", "),
        o.params,
        &o.fingerprint[..16]
    ));
    s.push_str(&format!(
        "training    {} epochs, {} steps, {:.0} s ({:.0} images/s); kept epoch {}\n",
        o.epochs, o.steps, o.train_s, o.train_images_per_s, o.kept_epoch
    ));
    if let Some(t) = o.threshold {
        s.push_str(&format!("threshold   {t:.4} ({})\n", o.threshold_policy));
    }
    s.push_str(&format!("\n{:<14}{:>10}{:>12}\n", "", "test", "validation"));
    for ((name, test), (_, val)) in metrics_rows(&r.test).into_iter().zip(metrics_rows(&r.val)) {
        s.push_str(&format!("{name:<14}{test:>10}{val:>12}\n"));
    }
    s.push_str(&format!(
        "{:<14}{:>10.4}\n",
        "accuracy@0.5", r.test_at_half.accuracy
    ));
    s.push_str(&format!(
        "\ntest confusion (rows true, columns predicted): {:?}\n",
        r.test.confusion
    ));
    s.push_str(&format!("wall time   {:.1} s\n", o.wall_s));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("train-local").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.epochs, DEFAULT_EPOCHS);
        assert_eq!(a.threshold, ThresholdPolicy::ValYouden);
        let a = parse(&["--threshold", "0.5", "--model", "resnet18", "--json"]).unwrap();
        assert_eq!(a.threshold, ThresholdPolicy::Fixed(0.5));
        assert_eq!(a.model, ModelArg::Resnet18);
        for bad in [
            &["--threshold", "1.5"][..],
            &["--threshold", "median"],
            &["--epochs", "0"],
            &["--model", "vgg"],
            &["--input-size", "8"],
            &["--batch-size", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_are_the_recommended_recipe() {
        let a = parse(&["--seed", "3"]).unwrap();
        assert_eq!(
            fit_config(&a, 74),
            FitConfig::recommended(DEFAULT_EPOCHS, 74, 3)
        );
    }

    #[test]
    fn cosine_schedule_spans_the_run() {
        let a = parse(&["--epochs", "4"]).unwrap();
        let cfg = fit_config(&a, 10);
        assert_eq!(cfg.train.schedule, LrSchedule::cosine(5, 40));
        assert_eq!(cfg.train.lr, 2e-3);
        let a = parse(&["--optimizer", "sgd", "--schedule", "step", "--no-augment"]).unwrap();
        let cfg = fit_config(&a, 10);
        assert!(matches!(cfg.train.optimizer, OptimizerKind::Sgd { .. }));
        assert_eq!(cfg.train.lr, 0.05);
        assert!(cfg.train.augment.is_none());
    }

    /// A tiny run on the phantom end to end: the JSON has the documented fields.
    #[test]
    fn tiny_phantom_run_reports_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w.safetensors");
        let args = parse(&[
            "--synthetic",
            "48",
            "--epochs",
            "1",
            "--input-size",
            "16",
            "--batch-size",
            "16",
            "--save",
            weights.to_str().unwrap(),
        ])
        .unwrap();
        let out = execute(&args).unwrap();
        assert_eq!(out.train_examples, 48);
        assert_eq!(out.steps, 3);
        assert!(out.test_auc.is_some());
        let json = serde_json::to_value(&out).unwrap();
        for key in [
            "test_auc",
            "test_acc",
            "epochs",
            "wall_s",
            "test_sensitivity",
            "threshold",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        let back = Model::load(&weights).unwrap();
        assert_eq!(back.fingerprint().to_hex(), out.fingerprint);
        assert!(table(&out).contains("accuracy@0.5"));
    }

    #[test]
    fn missing_data_is_a_clear_error() {
        let args = parse(&["--data", "/nonexistent/pneumonia.npz"]).unwrap();
        let err = format!("{:#}", execute(&args).unwrap_err());
        assert!(err.contains("/nonexistent/pneumonia.npz"), "{err}");
    }
}
