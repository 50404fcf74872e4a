//! Centralised training end to end: epochs of [`Trainer`] steps, model selection and the decision threshold on the validation split, figures on the test split.
//!
//! This is what `primiad train-local` runs and what the PneumoniaMNIST
//! acceptance test checks, so both measure the same thing.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::Splits;
use crate::error::{ModelError, Result};
use crate::metrics::{self, Metrics};
use crate::model::Model;
use crate::optim::LrSchedule;
use crate::train::{StepInfo, TrainConfig, Trainer, predict_proba};

/// Epochs of the recommended recipe: enough for the compact CNN to pass the
/// PneumoniaMNIST targets (test ROC-AUC >= 0.96, accuracy >= 0.88).
pub const RECOMMENDED_EPOCHS: u32 = 8;

/// Which epoch's weights are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Selection {
    /// The weights after the last epoch.
    Last,
    /// The weights of the epoch with the highest validation ROC-AUC
    /// (the validation split is never trained on; the test split is not looked at).
    BestValAuc,
}

/// How the decision threshold on P(class 1) is set (two classes only).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum ThresholdPolicy {
    /// A fixed threshold, usually 0.5.
    Fixed(f32),
    /// The threshold maximising Youden's J on the validation split, for the
    /// kept weights. J weighs sensitivity and specificity equally whatever
    /// the class mix, so it is not tuned to the validation split's prevalence.
    ValYouden,
}

/// A centralised training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FitConfig {
    pub epochs: u32,
    pub train: TrainConfig,
    /// Seeds batch order and augmentation (the weights' seed is the model's).
    pub seed: u64,
    pub selection: Selection,
    pub threshold: ThresholdPolicy,
}

impl FitConfig {
    /// The recipe `primiad train-local` uses by default: AdamW (lr 0.002,
    /// weight decay 5e-4), batch 64, half an epoch of warm-up then cosine
    /// decay, balanced class weights, X-ray augmentation, the epoch with the
    /// best validation AUC, and the validation Youden threshold.
    pub fn recommended(epochs: u32, steps_per_epoch: u64, seed: u64) -> Self {
        FitConfig {
            epochs,
            train: TrainConfig {
                schedule: LrSchedule::cosine(
                    steps_per_epoch / 2,
                    steps_per_epoch * u64::from(epochs),
                ),
                ..TrainConfig::default()
            },
            seed,
            selection: Selection::BestValAuc,
            threshold: ThresholdPolicy::ValYouden,
        }
    }
}

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_auc: Option<f64>,
    /// At the 0.5 threshold.
    pub val_accuracy: f64,
    pub lr: f64,
    /// Seconds since the start of training.
    pub elapsed_s: f64,
}

/// What happens during [`fit`], for progress display.
#[derive(Debug, Clone)]
pub enum FitEvent<'a> {
    Step(StepInfo),
    Epoch(&'a EpochRecord),
}

/// The outcome of [`fit`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FitReport {
    pub epochs: u32,
    pub steps: u64,
    /// 1-based epoch whose weights were kept.
    pub kept_epoch: u32,
    /// Threshold used for the test figures in `test`.
    pub threshold: Option<f32>,
    pub val: Metrics,
    pub test: Metrics,
    /// The test figures at the 0.5 threshold, whatever the policy.
    pub test_at_half: Metrics,
    pub history: Vec<EpochRecord>,
    /// Seconds spent in training steps (not evaluation).
    pub train_s: f64,
    pub train_images_per_s: f64,
    /// Seconds for the whole run, evaluations included.
    pub wall_s: f64,
}

/// Trains `model` on `splits.train` for `cfg.epochs` epochs, validating
/// after each, and reports test figures for the kept weights (which the
/// model holds on return).
pub fn fit(
    model: &mut Model,
    splits: &Splits,
    cfg: &FitConfig,
    mut on_event: impl FnMut(FitEvent<'_>),
) -> Result<FitReport> {
    if cfg.epochs == 0 {
        return Err(ModelError::InvalidConfig("zero epochs".into()));
    }
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut trainer = Trainer::new(model, &cfg.train)?;
    let spe = trainer.steps_per_epoch(&splits.train);
    let mut history = Vec::new();
    let mut best: Option<(f64, u32, Vec<f32>)> = None;
    let mut train_s = 0.0;
    let mut images = 0u64;
    for epoch in 1..=cfg.epochs {
        let report = trainer.train_steps(model, &splits.train, spe, &mut rng, |s| {
            on_event(FitEvent::Step(s))
        })?;
        train_s += report.wall_s;
        images += report.images;
        let probs = predict_proba(model, &splits.val)?;
        let val = metrics::compute(&probs, splits.val.labels(), splits.val.classes(), 0.5);
        let rec = EpochRecord {
            epoch,
            train_loss: report.mean_loss,
            val_loss: val.loss,
            val_auc: val.auc,
            val_accuracy: val.accuracy,
            lr: report.last_lr,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        on_event(FitEvent::Epoch(&rec));
        history.push(rec);
        if cfg.selection == Selection::BestValAuc {
            // Ties keep the later epoch: it has seen more data.
            let score = val.auc.unwrap_or(-val.loss);
            if best.as_ref().is_none_or(|(s, _, _)| score >= *s) {
                best = Some((score, epoch, model.flatten()?));
            }
        }
    }
    let kept_epoch = match best {
        Some((_, epoch, weights)) => {
            model.unflatten(&weights)?;
            epoch
        }
        None => cfg.epochs,
    };
    let val_probs = predict_proba(model, &splits.val)?;
    let classes = splits.val.classes();
    let threshold = match cfg.threshold {
        ThresholdPolicy::Fixed(t) => t,
        ThresholdPolicy::ValYouden if classes == 2 => {
            let scores: Vec<f32> = val_probs.chunks(2).map(|r| r[1]).collect();
            metrics::youden_threshold(&scores, splits.val.labels())
        }
        ThresholdPolicy::ValYouden => 0.5,
    };
    let val = metrics::compute(&val_probs, splits.val.labels(), classes, threshold);
    let test_probs = predict_proba(model, &splits.test)?;
    let test = metrics::compute(&test_probs, splits.test.labels(), classes, threshold);
    let test_at_half = metrics::compute(&test_probs, splits.test.labels(), classes, 0.5);
    Ok(FitReport {
        epochs: cfg.epochs,
        steps: trainer.step_count(),
        kept_epoch,
        threshold: (classes == 2).then_some(threshold),
        val,
        test,
        test_at_half,
        history,
        train_s,
        train_images_per_s: if train_s > 0.0 {
            images as f64 / train_s
        } else {
            0.0
        },
        wall_s: started.elapsed().as_secs_f64(),
    })
}
