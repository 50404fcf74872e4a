//! DP-SGD (Abadi et al. 2016): Poisson-sampled batches, per-example clipping, Gaussian noise.
//!
//! Each step includes every example independently with probability q (the
//! sample rate), so batch sizes vary and a batch can be empty; this is the
//! sampling the accountant's analysis (the Poisson-subsampled Gaussian
//! mechanism) assumes. The sampled examples' gradients are clipped to L2
//! norm C each ([`per_example`](super::per_example)), summed, and
//! N(0, sigma^2 C^2) noise is added to every coordinate of the sum, which is
//! then divided by the expected batch size q n (not the drawn size, which
//! would itself depend on the data set). The optimiser takes that as the
//! gradient. Every step, an empty batch included, is recorded in the
//! [`PrivacyAccountant`].
//!
//! What is protected is each training example of the data set the steps
//! sample from. Not covered: class weights computed from the data
//! ([`ClassWeighting::Balanced`](crate::ClassWeighting) uses its class
//! counts; use `None` or `Manual` weights where those counts are
//! sensitive), and the training losses in the [`TrainReport`], which are
//! for the local operator and must not be published.

use std::time::Instant;

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::accountant::{self, PrivacyAccountant};
use super::per_example::{self, Clipped};
use crate::augment::augment_into;
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::optim::Optimizer;
use crate::train::{LocalUpdate, StepInfo, TrainConfig, TrainReport, check_fits, class_weights};

/// The settings of DP-SGD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// L2 bound C on each example's gradient.
    pub clip_norm: f64,
    /// Noise standard deviation over C (sigma).
    pub noise_multiplier: f64,
    /// Probability q that an example is in a step's batch; the expected
    /// batch size is q times the data set size.
    pub sample_rate: f64,
}

impl DpConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(ModelError::InvalidConfig(format!(
                "clipping norm {} is not positive",
                self.clip_norm
            )));
        }
        accountant::check_noise_multiplier(self.noise_multiplier)?;
        accountant::check_sample_rate(self.sample_rate)
    }

    /// The sample rate giving `expected_batch` examples per step out of
    /// `examples` (capped at 1).
    pub fn sample_rate_for(expected_batch: usize, examples: usize) -> f64 {
        (expected_batch as f64 / examples.max(1) as f64).min(1.0)
    }
}

/// Most per-example gradient values held at once (32 Mi floats, 128 MB):
/// a large Poisson batch is processed in physical chunks under this bound,
/// so memory does not grow with the drawn batch size.
const MAX_PER_EXAMPLE_VALUES: usize = 1 << 25;
/// Most examples in one physical chunk (a Poisson batch larger than this is
/// processed in several).
const MAX_CHUNK: usize = 256;

fn chunk_size(model: &Model) -> usize {
    (MAX_PER_EXAMPLE_VALUES / model.param_count().max(1)).clamp(1, MAX_CHUNK)
}

/// Draws a Poisson-sampled batch: each of `n` indices independently with
/// probability `q`.
pub fn poisson_batch<R: Rng + ?Sized>(n: usize, q: f64, rng: &mut R) -> Vec<usize> {
    let q = q.clamp(0.0, 1.0);
    (0..n).filter(|_| rng.random_bool(q)).collect()
}

/// `len` independent draws of N(0, std^2), for the noise of a DP step.
///
/// The noise protects the data only if nobody else can predict it: in
/// production `rng` must be seeded from the operating system.
pub fn gaussian_noise<R: Rng + ?Sized>(len: usize, std: f64, rng: &mut R) -> Result<Vec<f32>> {
    let normal = Normal::new(0.0f64, std)
        .map_err(|e| ModelError::InvalidConfig(format!("noise standard deviation {std}: {e}")))?;
    Ok((0..len).map(|_| normal.sample(rng) as f32).collect())
}

/// Adds the noise to clipped sums (one per parameter, in `Model::vars`
/// order, `None` for an empty batch) and divides by the expected batch size.
fn noisy_gradient<R: Rng + ?Sized>(
    model: &Model,
    sums: Option<Vec<Tensor>>,
    dp: &DpConfig,
    expected_batch: f64,
    rng: &mut R,
) -> Result<GradStore> {
    let std = dp.noise_multiplier * dp.clip_norm;
    let mut grads = GradStore::default();
    let mut sums = sums.map(|v| v.into_iter());
    for (_, var) in model.vars() {
        let p = var.as_tensor();
        let noise = gaussian_noise(p.elem_count(), std, rng)?;
        let noise = Tensor::from_vec(noise, p.shape(), p.device())?;
        let total = match sums.as_mut().and_then(|s| s.next()) {
            Some(s) => (s + noise)?,
            None => noise,
        };
        grads.insert(p, (total * (1.0 / expected_batch))?);
    }
    Ok(grads)
}

/// The gradient a DP-SGD step gives for one drawn batch: clipped per-example
/// gradients summed, noise added, divided by `expected_batch`, in
/// [`Model::flatten`] order. `images` may hold no examples at all (an empty
/// Poisson batch), in which case the result is the scaled noise alone.
pub fn private_gradient<R: Rng + ?Sized>(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    class_weights: &[f32],
    dp: &DpConfig,
    expected_batch: f64,
    rng: &mut R,
) -> Result<Vec<f32>> {
    dp.validate()?;
    if !(expected_batch.is_finite() && expected_batch > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "expected batch size {expected_batch} is not positive"
        )));
    }
    let sums = if labels.is_empty() {
        None
    } else {
        let per = per_example::per_example_grads(model, images, labels, class_weights)?;
        let c = per_example::clip_and_sum(per, dp.clip_norm)?;
        Some(c.sums.into_iter().map(|(_, s)| s).collect())
    };
    let grads = noisy_gradient(model, sums, dp, expected_batch, rng)?;
    let mut out = Vec::with_capacity(model.param_count());
    for (_, var) in model.vars() {
        let g = grads
            .get(var.as_tensor())
            .expect("every parameter has a gradient");
        out.extend(g.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// DP-SGD training state that lives across calls: optimiser moments and
/// the schedule's step count (as [`Trainer`](crate::Trainer) for plain training).
///
/// The [`TrainConfig`] is used for the optimiser, learning rate, schedule,
/// weight decay, class weighting and augmentation; its `batch_size` and
/// `max_grad_norm` are replaced by the [`DpConfig`]'s sample rate and
/// clipping norm.
pub struct DpTrainer {
    cfg: TrainConfig,
    dp: DpConfig,
    opt: Optimizer,
    step: u64,
}

impl std::fmt::Debug for DpTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpTrainer")
            .field("cfg", &self.cfg)
            .field("dp", &self.dp)
            .field("step", &self.step)
            .finish()
    }
}

impl DpTrainer {
    /// A fresh trainer (zero optimiser state, schedule at step 0) for `model`.
    pub fn new(model: &Model, cfg: &TrainConfig, dp: DpConfig) -> Result<Self> {
        cfg.validate()?;
        dp.validate()?;
        Ok(DpTrainer {
            cfg: cfg.clone(),
            dp,
            opt: Optimizer::new(model, cfg.optimizer.clone(), cfg.weight_decay)?,
            step: 0,
        })
    }

    pub fn dp_config(&self) -> &DpConfig {
        &self.dp
    }

    /// Steps taken so far (the schedule's position).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Moves the schedule to `step`.
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// Changes the base learning rate (the schedule scales it), keeping the
    /// optimiser's state: a federated member that keeps its optimiser
    /// across rounds decays the rate round by round this way.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Runs `steps` DP-SGD steps on `data`, recording each in `accountant`
    /// as it is taken (so an error midway leaves the accountant counting
    /// every step whose update reached the model).
    pub fn train_steps<R: Rng + ?Sized>(
        &mut self,
        model: &mut Model,
        data: &Dataset,
        steps: u64,
        rng: &mut R,
        accountant: &mut PrivacyAccountant,
        mut on_step: impl FnMut(StepInfo),
    ) -> Result<TrainReport> {
        check_fits(model, data)?;
        let weights = class_weights(&self.cfg.class_weighting, data)?;
        let started = Instant::now();
        let n = data.len();
        let q = self.dp.sample_rate;
        let expected_batch = q * n as f64;
        let per = data.size() * data.size();
        let chunk = chunk_size(model);
        let mut loss_sum = 0.0;
        let mut loss_steps = 0u64;
        let mut first_loss = f64::NAN;
        let mut last_loss = f64::NAN;
        let mut last_lr = 0.0;
        let mut images = 0u64;
        let mut updates = 0u64;
        for _ in 0..steps {
            let batch = poisson_batch(n, q, rng);
            let mut sums: Option<Vec<Tensor>> = None;
            let mut batch_loss = 0.0f64;
            let mut batch_weight = 0.0f64;
            for part in batch.chunks(chunk) {
                let mut pixels = vec![0.0f32; part.len() * per];
                let mut labels = Vec::with_capacity(part.len());
                for (k, &i) in part.iter().enumerate() {
                    let dst = &mut pixels[k * per..(k + 1) * per];
                    match &self.cfg.augment {
                        Some(a) => augment_into(data.image(i), data.size(), a, rng, dst),
                        None => dst.copy_from_slice(data.image(i)),
                    }
                    let l = data.labels()[i];
                    labels.push(l);
                    batch_weight += f64::from(weights[l as usize]);
                }
                let x = Tensor::from_vec(
                    pixels,
                    (part.len(), 1, data.size(), data.size()),
                    model.device(),
                )?;
                let pe = per_example::per_example_grads(model, &x, &labels, &weights)?;
                let Clipped {
                    sums: s, losses, ..
                } = per_example::clip_and_sum(pe, self.dp.clip_norm)?;
                batch_loss += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
                sums = Some(match sums {
                    None => s.into_iter().map(|(_, t)| t).collect(),
                    Some(acc) => acc
                        .into_iter()
                        .zip(s)
                        .map(|(a, (_, t))| a + t)
                        .collect::<candle_core::Result<Vec<_>>>()?,
                });
            }
            if !batch_loss.is_finite() {
                return Err(ModelError::InvalidConfig(format!(
                    "training diverged at step {} (loss {batch_loss}); lower the learning rate",
                    self.step
                )));
            }
            let grads = noisy_gradient(model, sums, &self.dp, expected_batch, rng)?;
            let lr = self.cfg.schedule.lr_at(self.cfg.lr, self.step);
            self.opt.step(model, &grads, lr)?;
            accountant.record(q, self.dp.noise_multiplier, 1)?;
            let loss = if batch_weight > 0.0 {
                batch_loss / batch_weight
            } else {
                f64::NAN
            };
            if loss.is_finite() {
                if first_loss.is_nan() {
                    first_loss = loss;
                }
                last_loss = loss;
                loss_sum += loss;
                loss_steps += 1;
            }
            last_lr = lr;
            images += batch.len() as u64;
            updates += 1;
            on_step(StepInfo {
                step: self.step,
                loss,
                lr,
            });
            self.step += 1;
        }
        let wall_s = started.elapsed().as_secs_f64();
        Ok(TrainReport {
            steps: updates,
            images,
            examples: n,
            mean_loss: if loss_steps == 0 {
                f64::NAN
            } else {
                loss_sum / loss_steps as f64
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

/// One member's DP contribution to a federated round: `steps` DP-SGD steps
/// from the model's current weights (fresh optimiser state), the change,
/// and the steps recorded in `accountant`. The model is left holding the
/// trained weights.
pub fn dp_local_update<R: Rng + ?Sized>(
    model: &mut Model,
    data: &Dataset,
    steps: u64,
    cfg: &TrainConfig,
    dp: &DpConfig,
    accountant: &mut PrivacyAccountant,
    rng: &mut R,
) -> Result<LocalUpdate> {
    let before = model.flatten()?;
    let report = DpTrainer::new(model, cfg, *dp)?.train_steps(
        model,
        data,
        steps,
        rng,
        accountant,
        |_| {},
    )?;
    let after = model.flatten()?;
    let delta = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(LocalUpdate {
        delta,
        examples: data.len(),
        report,
    })
}
