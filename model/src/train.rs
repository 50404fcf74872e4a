//! Training counted in steps, and evaluation: the calls the federated driver makes on each member.
//!
//! A federated round is "start from these weights, train k steps on local
//! data, report the change and how many examples were used": that is
//! [`train_steps`] between two [`Model::flatten`] calls, or [`local_update`]
//! in one call. Centralised training is the same loop run longer through a
//! [`Trainer`], which keeps the optimiser state and the schedule's step
//! count between calls so it can stop for validation every epoch.

use std::time::Instant;

use candle_core::{D, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::augment::{AugmentConfig, augment_into};
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::kernels;
use crate::metrics::{self, Metrics};
use crate::model::Model;
use crate::optim::{LrSchedule, Optimizer, OptimizerKind};

/// How much each class counts in the loss.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum ClassWeighting {
    /// Every example counts the same.
    None,
    /// Class c weighs n / (K * n_c), computed on the data being trained on,
    /// so that each class contributes equally to the loss (the usual answer
    /// to PneumoniaMNIST's 3:1 imbalance, and to skewed hospitals).
    Balanced,
    /// Given weights, one per class.
    Manual(Vec<f32>),
}

/// Everything that decides how a model is trained.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    /// Base learning rate (the schedule scales it).
    pub lr: f64,
    /// L2 (SGD) or decoupled (AdamW) weight decay on convolution and linear weights.
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    pub batch_size: usize,
    pub class_weighting: ClassWeighting,
    /// `None` trains on the images as they are.
    pub augment: Option<AugmentConfig>,
    /// Clip the global gradient norm to this, if set (a guard against
    /// rare huge steps, and the clipping DP-SGD will need per example).
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainConfig {
    /// The recipe that meets the PneumoniaMNIST target with the default CNN:
    /// AdamW, cosine schedule, balanced classes, X-ray augmentation.
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerKind::adamw(),
            lr: 2e-3,
            weight_decay: 5e-4,
            schedule: LrSchedule::Constant,
            batch_size: 64,
            class_weighting: ClassWeighting::Balanced,
            augment: Some(AugmentConfig::default()),
            max_grad_norm: Some(5.0),
        }
    }
}

impl TrainConfig {
    /// Checks every setting; called by the training functions.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return bad(format!("learning rate {} is not in (0, 10]", self.lr));
        }
        if !(self.weight_decay.is_finite() && (0.0..1.0).contains(&self.weight_decay)) {
            return bad(format!(
                "weight decay {} is not in [0, 1)",
                self.weight_decay
            ));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return bad(format!("batch size {} is not in 1..=4096", self.batch_size));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad(format!("gradient clipping norm {n} is not positive"));
        }
        match &self.optimizer {
            OptimizerKind::Sgd { momentum, .. } if !(0.0..1.0).contains(momentum) => {
                return bad(format!("momentum {momentum} is not in [0, 1)"));
            }
            OptimizerKind::AdamW { beta1, beta2, eps }
                if !((0.0..1.0).contains(beta1) && (0.0..1.0).contains(beta2) && *eps > 0.0) =>
            {
                return bad(format!(
                    "AdamW betas ({beta1}, {beta2}) or eps {eps} out of range"
                ));
            }
            _ => {}
        }
        if let Some(a) = &self.augment {
            a.validate().map_err(ModelError::InvalidConfig)?;
        }
        self.schedule.validate()
    }
}

/// What a stretch of training did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainReport {
    /// Optimiser updates made (a batch whose classes all weigh 0 makes none).
    pub steps: u64,
    /// Images processed (steps times batch size).
    pub images: u64,
    /// Size of the local data set: the n that weighs this member's update in FedAvg.
    pub examples: usize,
    /// Mean training loss (class-weighted, on augmented images) over the steps.
    pub mean_loss: f64,
    /// Loss of the first and of the last step.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Learning rate of the last step.
    pub last_lr: f64,
    pub wall_s: f64,
    pub images_per_s: f64,
}

/// Progress of one step, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Global step number (0-based) of the step just done.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
}

/// Training state that lives across calls: optimiser moments, the
/// schedule's step count and the position in the current epoch.
pub struct Trainer {
    cfg: TrainConfig,
    opt: Optimizer,
    step: u64,
    /// Shuffled example order of the current epoch, and how far we are in it.
    order: Vec<usize>,
    cursor: usize,
    /// SCAFFOLD's drift correction, when set: per variable, added to every
    /// gradient, and the running sum of the uncorrected gradients.
    drift: Option<Drift>,
}

/// SCAFFOLD (Karimireddy et al. 2020): a member's local steps follow
/// `g_i(y) - c_i + c`, its own gradient corrected by the difference between
/// the consortium's gradient estimate `c` and its own `c_i`, so that a
/// member whose data holds one class does not drag the model towards it.
struct Drift {
    /// `c - c_i`, one tensor per variable.
    correction: Vec<Tensor>,
    /// Sum of the raw loss gradients of the steps taken, one per variable.
    sum: Vec<Option<Tensor>>,
    steps: u64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("cfg", &self.cfg)
            .field("step", &self.step)
            .finish()
    }
}

impl Trainer {
    /// A fresh trainer (zero optimiser state, schedule at step 0) for `model`.
    pub fn new(model: &Model, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Trainer {
            cfg: cfg.clone(),
            opt: Optimizer::new(model, cfg.optimizer.clone(), cfg.weight_decay)?,
            step: 0,
            order: Vec::new(),
            cursor: 0,
            drift: None,
        })
    }

    /// Turns SCAFFOLD's drift correction on: from now on every gradient gets
    /// `correction` (`c - c_i`, in [`Model::flatten`] order) added before the
    /// optimiser sees it, and the raw gradients are summed for
    /// [`Trainer::mean_gradient`].
    pub fn set_drift_correction(&mut self, model: &Model, correction: &[f32]) -> Result<()> {
        let correction = model.split_flat(correction)?;
        let vars = correction.len();
        self.drift = Some(Drift {
            correction,
            sum: vec![None; vars],
            steps: 0,
        });
        Ok(())
    }

    /// The mean of the raw (uncorrected) loss gradients over the steps taken
    /// since [`Trainer::set_drift_correction`], in [`Model::flatten`] order:
    /// SCAFFOLD's new `c_i`. `None` without drift correction or before a step.
    pub fn mean_gradient(&self, model: &Model) -> Result<Option<Vec<f32>>> {
        let Some(d) = self.drift.as_ref().filter(|d| d.steps > 0) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(model.param_count());
        for ((_, v), sum) in model.vars().zip(&d.sum) {
            match sum {
                Some(s) => out.extend((s / d.steps as f64)?.flatten_all()?.to_vec1::<f32>()?),
                None => out.extend(std::iter::repeat_n(0.0, v.elem_count())),
            }
        }
        Ok(Some(out))
    }

    /// Steps taken so far (the schedule's position).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Moves the schedule to `step` (e.g. to continue a global schedule in a later round).
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// Changes the base learning rate (the schedule scales it), keeping the
    /// optimiser's state: a federated member that keeps its optimiser
    /// across rounds decays the rate round by round this way.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Steps per pass over `data` at this batch size.
    pub fn steps_per_epoch(&self, data: &Dataset) -> u64 {
        (data
            .len()
            .div_ceil(self.cfg.batch_size.min(data.len().max(1)))) as u64
    }

    fn next_batch<R: Rng + ?Sized>(&mut self, n: usize, rng: &mut R) -> Vec<usize> {
        let bs = self.cfg.batch_size.min(n);
        if self.order.len() != n {
            self.order.clear();
            self.cursor = n;
        }
        let mut batch = Vec::with_capacity(bs);
        while batch.len() < bs {
            if self.cursor >= n {
                self.order = (0..n).collect();
                self.order.shuffle(rng);
                self.cursor = 0;
            }
            let take = (bs - batch.len()).min(n - self.cursor);
            batch.extend_from_slice(&self.order[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        batch
    }

    /// Trains `model` for `steps` mini-batches of `data`, calling `on_step` after each.
    pub fn train_steps<R: Rng + ?Sized>(
        &mut self,
        model: &mut Model,
        data: &Dataset,
        steps: u64,
        rng: &mut R,
        mut on_step: impl FnMut(StepInfo),
    ) -> Result<TrainReport> {
        check_fits(model, data)?;
        let weights = class_weights(&self.cfg.class_weighting, data)?;
        let started = Instant::now();
        let per = data.size() * data.size();
        let classes = data.classes();
        let mut loss_sum = 0.0;
        let mut first_loss = f64::NAN;
        let mut last_loss = f64::NAN;
        let mut last_lr = 0.0;
        let mut images = 0u64;
        let mut updates = 0u64;
        for _ in 0..steps {
            let batch = self.next_batch(data.len(), rng);
            let bs = batch.len();
            let mut pixels = vec![0.0f32; bs * per];
            for (k, &i) in batch.iter().enumerate() {
                let dst = &mut pixels[k * per..(k + 1) * per];
                match &self.cfg.augment {
                    Some(a) => augment_into(data.image(i), data.size(), a, rng, dst),
                    None => dst.copy_from_slice(data.image(i)),
                }
            }
            // Per-example weight on the true class's column; the loss is the
            // weighted mean, as PyTorch's weighted cross-entropy.
            let mut target = vec![0.0f32; bs * classes];
            let mut wsum = 0.0f32;
            for (k, &i) in batch.iter().enumerate() {
                let l = data.labels()[i] as usize;
                target[k * classes + l] = weights[l];
                wsum += weights[l];
            }
            if wsum <= 0.0 {
                // Only zero-weight classes in this batch: nothing to learn
                // from it, but the schedule moves on as if it had.
                self.step += 1;
                continue;
            }
            let (loss_value, mut grads) =
                batch_gradients(model, &pixels, &target, data.size(), classes, wsum)?;
            if !loss_value.is_finite() {
                return Err(ModelError::InvalidConfig(format!(
                    "training diverged at step {} (loss {loss_value}); lower the learning rate",
                    self.step
                )));
            }
            if let Some(max_norm) = self.cfg.max_grad_norm {
                clip_grads(model, &mut grads, max_norm)?;
            }
            if let Some(d) = &mut self.drift {
                correct_drift(model, &mut grads, d)?;
            }
            let lr = self.cfg.schedule.lr_at(self.cfg.lr, self.step);
            self.opt.step(model, &grads, lr)?;
            if first_loss.is_nan() {
                first_loss = loss_value;
            }
            last_loss = loss_value;
            last_lr = lr;
            loss_sum += loss_value;
            images += bs as u64;
            updates += 1;
            on_step(StepInfo {
                step: self.step,
                loss: loss_value,
                lr,
            });
            self.step += 1;
        }
        let wall_s = started.elapsed().as_secs_f64();
        Ok(TrainReport {
            steps: updates,
            images,
            examples: data.len(),
            mean_loss: if updates == 0 {
                f64::NAN
            } else {
                loss_sum / updates as f64
            },
            first_loss,
            last_loss,
            last_lr,
            wall_s,
            images_per_s: if wall_s > 0.0 {
                images as f64 / wall_s
            } else {
                0.0
            },
        })
    }
}

/// A batch is split into this many parts, whose gradients are computed on
/// threads of their own and then summed. Always this many, whatever the
/// number of threads, so that the result does not depend on it.
const BATCH_PARTS: usize = 2;

/// Parts smaller than this are not worth a thread: a smaller batch is one part.
const MIN_PART: usize = 8;

/// The weighted cross-entropy of one batch (`bs` images of `size` x `size`
/// pixels, targets holding each example's class weight in its true class's
/// column, `wsum` their sum) and its gradients with respect to the model's
/// variables.
///
/// The batch is cut into [`BATCH_PARTS`] parts trained side by side, each
/// through its own graph with its kernels on its share of the threads, and
/// the part's losses and gradients (each already divided by the whole
/// batch's `wsum`) are summed. The networks normalise per example
/// (GroupNorm), so this is the same sum as over the whole batch at once,
/// taken in another order. On two cores it keeps both busy through the
/// whole step: inside one graph, candle's small operations and each
/// kernel's start and end run on one thread while the other waits.
fn batch_gradients(
    model: &Model,
    pixels: &[f32],
    target: &[f32],
    size: usize,
    classes: usize,
    wsum: f32,
) -> Result<(f64, candle_core::backprop::GradStore)> {
    let bs = target.len() / classes;
    let per = size * size;
    let part = |range: std::ops::Range<usize>| -> Result<(f64, candle_core::backprop::GradStore)> {
        let n = range.len();
        let x = Tensor::from_slice(
            &pixels[range.start * per..range.end * per],
            (n, 1, size, size),
            model.device(),
        )?;
        let t = Tensor::from_slice(
            &target[range.start * classes..range.end * classes],
            (n, classes),
            model.device(),
        )?;
        let logits = model.forward(&x)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = ((logp * t)?.sum_all()? * (-1.0 / f64::from(wsum)))?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        Ok((value, loss.backward()?))
    };
    if bs < BATCH_PARTS * MIN_PART {
        return part(0..bs);
    }
    let cut = bs.div_ceil(BATCH_PARTS);
    let threads = kernels::threads();
    let (first, second) = if threads >= BATCH_PARTS {
        // The first part takes the odd thread, if any.
        let (inner1, inner2) = (threads - threads / 2, threads / 2);
        std::thread::scope(|s| {
            let second = s.spawn(|| kernels::with_threads(inner2, || part(cut..bs)));
            let first = kernels::with_threads(inner1, || part(0..cut));
            let second = second
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (first, second)
        })
    } else {
        (part(0..cut), part(cut..bs))
    };
    let ((l1, mut g1), (l2, mut g2)) = (first?, second?);
    for (_, v) in model.vars() {
        let t = v.as_tensor();
        let sum = match (g1.remove(t), g2.remove(t)) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        };
        if let Some(g) = sum {
            g1.insert(t, g);
        }
    }
    Ok((l1 + l2, g1))
}

/// Adds the raw gradients to the drift's sum, then the correction to them.
fn correct_drift(
    model: &Model,
    grads: &mut candle_core::backprop::GradStore,
    d: &mut Drift,
) -> Result<()> {
    for (((_, v), corr), sum) in model.vars().zip(&d.correction).zip(&mut d.sum) {
        if let Some(g) = grads.remove(v.as_tensor()) {
            *sum = Some(match sum.take() {
                Some(s) => (s + &g)?,
                None => g.detach(),
            });
            grads.insert(v.as_tensor(), (g + corr)?);
        }
    }
    d.steps += 1;
    Ok(())
}

/// Scales all gradients so that their joint L2 norm is at most `max_norm`.
fn clip_grads(
    model: &Model,
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<()> {
    let mut sq = 0.0f64;
    for (_, v) in model.vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in model.vars() {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(())
}

/// Refuses data that the model cannot take.
pub(crate) fn check_fits(model: &Model, data: &Dataset) -> Result<()> {
    let spec = model.spec();
    if data.is_empty() {
        return Err(ModelError::InvalidData("the data set is empty".into()));
    }
    if data.size() != spec.input_size {
        return Err(ModelError::InvalidData(format!(
            "images are {0}x{0}, the model takes {1}x{1}; resize the data set first",
            data.size(),
            spec.input_size
        )));
    }
    if data.classes() != spec.classes {
        return Err(ModelError::InvalidData(format!(
            "the data has {} classes, the model {}",
            data.classes(),
            spec.classes
        )));
    }
    Ok(())
}

/// The per-class loss weights for `data`.
pub fn class_weights(w: &ClassWeighting, data: &Dataset) -> Result<Vec<f32>> {
    let k = data.classes();
    Ok(match w {
        ClassWeighting::None => vec![1.0; k],
        ClassWeighting::Balanced => {
            let n = data.len() as f32;
            data.class_counts()
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        n / (k as f32 * c as f32)
                    }
                })
                .collect()
        }
        ClassWeighting::Manual(v) => {
            if v.len() != k || v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(ModelError::InvalidConfig(format!(
                    "{} class weights given for {k} classes (each must be >= 0)",
                    v.len()
                )));
            }
            v.clone()
        }
    })
}

/// Trains `model` for `steps` mini-batches from a fresh optimiser state,
/// the schedule starting at step 0. All randomness (batch order,
/// augmentation) comes from `rng`: the same weights, data, config and rng
/// state give the same result.
pub fn train_steps<R: Rng + ?Sized>(
    model: &mut Model,
    data: &Dataset,
    steps: u64,
    cfg: &TrainConfig,
    rng: &mut R,
) -> Result<TrainReport> {
    Trainer::new(model, cfg)?.train_steps(model, data, steps, rng, |_| {})
}

/// One member's contribution to a federated round.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// New weights minus the starting weights, in [`Model::flatten`] order.
    pub delta: Vec<f32>,
    /// Local training examples (the FedAvg weight).
    pub examples: usize,
    pub report: TrainReport,
}

/// Trains `steps` from the model's current weights and returns the change.
/// The model is left holding the trained weights.
pub fn local_update<R: Rng + ?Sized>(
    model: &mut Model,
    data: &Dataset,
    steps: u64,
    cfg: &TrainConfig,
    rng: &mut R,
) -> Result<LocalUpdate> {
    let before = model.flatten()?;
    let report = train_steps(model, data, steps, cfg, rng)?;
    let after = model.flatten()?;
    let delta = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(LocalUpdate {
        delta,
        examples: data.len(),
        report,
    })
}

/// Batch size for inference: large enough to amortise per-call overhead,
/// small enough that a 224x224 ResNet batch stays in memory.
fn eval_batch(model: &Model) -> usize {
    if model.spec().input_size <= 64 {
        256
    } else {
        32
    }
}

/// Class probabilities for every example, `probs[i * classes + c]`.
pub fn predict_proba(model: &Model, data: &Dataset) -> Result<Vec<f32>> {
    check_fits(model, data)?;
    let mut out = Vec::with_capacity(data.len() * data.classes());
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(eval_batch(model)) {
        let x = data.batch_tensor(chunk, model.device())?;
        // Detached at once, so the graph of this batch is freed before the next.
        let logits = model.forward(&x)?.detach();
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        out.extend(p.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Metrics of `model` on `data` at the 0.5 threshold.
pub fn evaluate(model: &Model, data: &Dataset) -> Result<Metrics> {
    evaluate_at(model, data, 0.5)
}

/// Metrics of `model` on `data`, calling a case positive when P(class 1) >= `threshold`.
pub fn evaluate_at(model: &Model, data: &Dataset, threshold: f32) -> Result<Metrics> {
    let probs = predict_proba(model, data)?;
    Ok(metrics::compute(
        &probs,
        data.labels(),
        data.classes(),
        threshold,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom::phantom;
    use crate::spec::{Architecture, ModelSpec};

    /// The parts' summed losses and gradients are the whole batch's, taken
    /// through one graph.
    #[test]
    fn batch_parts_sum_to_the_whole_batch() {
        let (n, size) = (37, 16);
        let model = Model::new(
            ModelSpec::new(Architecture::CompactCnn, size, 2).unwrap(),
            4,
        )
        .unwrap();
        let data = phantom(n, size, 0.5, 5).unwrap();
        let pixels: Vec<f32> = (0..n).flat_map(|i| data.image(i).to_vec()).collect();
        // Unequal class weights, so a wrong normalisation of a part shows.
        let mut target = vec![0.0f32; n * 2];
        let mut wsum = 0.0;
        for i in 0..n {
            let l = data.labels()[i] as usize;
            let w = if l == 1 { 0.7 } else { 1.9 };
            target[i * 2 + l] = w;
            wsum += w;
        }
        let (loss, grads) = batch_gradients(&model, &pixels, &target, size, 2, wsum).unwrap();

        let x = Tensor::from_slice(&pixels, (n, 1, size, size), model.device()).unwrap();
        let t = Tensor::from_slice(&target, (n, 2), model.device()).unwrap();
        let logp = candle_nn::ops::log_softmax(&model.forward(&x).unwrap(), D::Minus1).unwrap();
        let whole = ((logp * t).unwrap().sum_all().unwrap() * (-1.0 / f64::from(wsum))).unwrap();
        let whole_grads = whole.backward().unwrap();
        let whole = f64::from(whole.to_scalar::<f32>().unwrap());
        assert!(
            (loss - whole).abs() <= 1e-5 * whole.abs(),
            "loss {loss} vs {whole}"
        );
        for (name, v) in model.vars() {
            let a = grads.get(v.as_tensor()).unwrap();
            let b = whole_grads.get(v.as_tensor()).unwrap();
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{name}: gradients differ by {worst} (scale {scale})"
            );
        }
    }
}
