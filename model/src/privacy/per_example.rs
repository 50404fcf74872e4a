//! Exact per-example gradients from one batched forward and backward pass, and their clipping.
//!
//! DP-SGD bounds each example's influence by clipping its own gradient, so
//! it needs every example's gradient separately. One backward pass per
//! example would cost a batch's worth of passes; instead the network runs
//! once on the whole batch through a recording forward ([`Tape`]) that keeps
//! each parameterised layer's input and adds a zero "probe" variable to its
//! output. The backward pass of the summed per-example losses then yields,
//! as the probes' gradients, dL/d(output) of every layer, row i holding
//! example i's part alone (every layer, GroupNorm included, treats examples
//! independently). Each layer's per-example weight gradient is a small
//! product of that with its saved input:
//!
//! - convolution: `dW_i = dY_i . unfold(X_i)^T` (im2col, then one batched
//!   matrix product), bias `db_i = sum_hw dY_i`;
//! - GroupNorm: scale `sum_hw dY_i * xhat_i`, shift `sum_hw dY_i`, with
//!   xhat recomputed from the layer's input and dY taken before the fused
//!   ReLU (`dY * [output > 0]`);
//! - linear: `dW_i = dY_i^T x_i`, `db_i = dY_i`.
//!
//! Only each layer's input tensor, its weight shape, stride and padding and
//! the gradient of its output are used, so this works whatever kernels the
//! layers' forward passes run on.

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Tensor, TensorId, Var};

use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, ConvNormRelu, GroupNorm, Linear};
use crate::model::{INPUT_MEAN, INPUT_STD, Model};

/// What one parameterised layer saw in the recording forward.
enum Record<'a> {
    Conv {
        layer: &'a Conv2d,
        input: Tensor,
        probe: Var,
    },
    Norm {
        layer: &'a GroupNorm,
        input: Tensor,
        /// The layer's output (after the ReLU when `relu`).
        output: Tensor,
        relu: bool,
        probe: Var,
    },
    Linear {
        layer: &'a Linear,
        input: Tensor,
        probe: Var,
    },
}

/// The recording of one forward pass: each parameterised layer's input and
/// a probe on its output (see the module documentation).
pub(crate) struct Tape<'a> {
    records: Vec<Record<'a>>,
}

impl<'a> Tape<'a> {
    fn new() -> Self {
        Tape {
            records: Vec::new(),
        }
    }

    /// Adds a zero variable to `y`: the sum has y's value, and the
    /// variable's gradient after backward is dL/dy.
    fn probe(y: Tensor) -> Result<(Tensor, Var)> {
        let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let marked = (y + probe.as_tensor())?;
        Ok((marked, probe))
    }

    pub(crate) fn conv(&mut self, layer: &'a Conv2d, x: &Tensor) -> Result<Tensor> {
        let (y, probe) = Self::probe(layer.forward(x)?)?;
        self.records.push(Record::Conv {
            layer,
            input: x.detach(),
            probe,
        });
        Ok(y)
    }

    pub(crate) fn norm(&mut self, layer: &'a GroupNorm, x: &Tensor, relu: bool) -> Result<Tensor> {
        let y = layer.forward_relu(x, relu)?;
        let output = y.detach();
        let (y, probe) = Self::probe(y)?;
        self.records.push(Record::Norm {
            layer,
            input: x.detach(),
            output,
            relu,
            probe,
        });
        Ok(y)
    }

    pub(crate) fn linear(&mut self, layer: &'a Linear, x: &Tensor) -> Result<Tensor> {
        let (y, probe) = Self::probe(layer.forward(x)?)?;
        self.records.push(Record::Linear {
            layer,
            input: x.detach(),
            probe,
        });
        Ok(y)
    }

    /// Conv, GroupNorm, ReLU, exactly as `ConvNormRelu::forward` runs them.
    pub(crate) fn conv_norm_relu(&mut self, unit: &'a ConvNormRelu, x: &Tensor) -> Result<Tensor> {
        let c = self.conv(unit.conv(), x)?;
        self.norm(unit.norm(), &c, true)
    }
}

/// Per-example gradients of one batch: for each parameter, in the model's
/// parameter order, a (batch, parameter size) matrix.
pub(crate) struct PerExampleGrads {
    pub(crate) batch: usize,
    /// (parameter tensor, per-example gradients), in `Model::vars` order.
    pub(crate) grads: Vec<(Tensor, Tensor)>,
    /// Each example's (class-weighted) loss.
    pub(crate) losses: Vec<f32>,
}

/// Unfolds each example's input into the rows a convolution multiplies:
/// out[n][oy * wo + ox][(ci * k + ky) * k + kx] = x[n][ci][oy*s + ky - p][ox*s + kx - p]
/// (zero outside the image), matching the weight layout (c_out, c_in, k, k).
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    stride: usize,
    pad: usize,
    (ho, wo): (usize, usize),
) -> Vec<f32> {
    let kk = c * k * k;
    let hw = ho * wo;
    let mut out = vec![0.0f32; b * hw * kk];
    if out.is_empty() {
        return out;
    }
    let fill = |n: usize, dst: &mut [f32]| {
        let xs = &x[n * c * h * w..(n + 1) * c * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let row = &mut dst[(oy * wo + ox) * kk..(oy * wo + ox + 1) * kk];
                for ci in 0..c {
                    let plane = &xs[ci * h * w..(ci + 1) * h * w];
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let base = (ci * k + ky) * k;
                        if iy < 0 || iy >= h as isize {
                            continue; // already zero
                        }
                        let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix >= 0 && ix < w as isize {
                                row[base + kx] = line[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    };
    // Examples are independent: split them over the available cores.
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(b);
    let per_thread = b.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, part) in out.chunks_mut(per_thread * hw * kk).enumerate() {
            let fill = &fill;
            scope.spawn(move || {
                for (j, dst) in part.chunks_mut(hw * kk).enumerate() {
                    fill(t * per_thread + j, dst);
                }
            });
        }
    });
    out
}

fn grad_of(grads: &GradStore, probe: &Var) -> Result<Tensor> {
    Ok(match grads.get(probe.as_tensor()) {
        Some(g) => g.detach().contiguous()?,
        // Not reached by the loss: a zero gradient.
        None => probe.as_tensor().zeros_like()?,
    })
}

/// Checks a batch against the model and normalises it as `Model::forward` does.
fn normalised_input(model: &Model, images: &Tensor) -> Result<Tensor> {
    let spec = model.spec();
    let (_, c, h, w) = images.dims4()?;
    let s = spec.input_size;
    if c != spec.in_channels || h != s || w != s {
        return Err(ModelError::InvalidData(format!(
            "batch of {c}x{h}x{w} images given to a model for {}x{s}x{s}",
            spec.in_channels
        )));
    }
    Ok(images.affine(
        1.0 / f64::from(INPUT_STD),
        -f64::from(INPUT_MEAN) / f64::from(INPUT_STD),
    )?)
}

/// Per-example gradients of the class-weighted cross-entropy of each
/// example, `loss_i = -w[y_i] log softmax(f(x_i))[y_i]`, for a non-empty batch.
pub(crate) fn per_example_grads(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    class_weights: &[f32],
) -> Result<PerExampleGrads> {
    let b = images.dim(0)?;
    let classes = model.spec().classes;
    if b == 0 || labels.len() != b {
        return Err(ModelError::InvalidData(format!(
            "{b} images and {} labels for per-example gradients",
            labels.len()
        )));
    }
    if class_weights.len() != classes {
        return Err(ModelError::InvalidConfig(format!(
            "{} class weights for {classes} classes",
            class_weights.len()
        )));
    }
    let x = normalised_input(model, images)?;
    let mut tape = Tape::new();
    let logits = model.net().forward_recorded(&x, &mut tape)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let mut target = vec![0.0f32; b * classes];
    for (k, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l >= classes {
            return Err(ModelError::InvalidData(format!(
                "label {l} for a model with {classes} classes"
            )));
        }
        target[k * classes + l] = class_weights[l];
    }
    let target = Tensor::from_vec(target, (b, classes), model.device())?;
    let per_loss = (logp * target)?.sum(1)?.neg()?;
    let losses = per_loss.to_vec1::<f32>()?;
    // The sum, not the mean: row i of every gradient is then example i's own.
    let grads = per_loss.sum_all()?.backward()?;

    let mut found: Vec<(TensorId, Tensor)> = Vec::new();
    for record in &tape.records {
        match record {
            Record::Conv {
                layer,
                input,
                probe,
            } => {
                let dy = grad_of(&grads, probe)?;
                let (_, c_in, h, w) = input.dims4()?;
                let (c_out, _, k, _) = layer.weight().dims4()?;
                let (_, _, ho, wo) = dy.dims4()?;
                let xs = input.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let cols = im2col(
                    &xs,
                    (b, c_in, h, w),
                    k,
                    layer.stride(),
                    layer.padding(),
                    (ho, wo),
                );
                let cols = Tensor::from_vec(cols, (b, ho * wo, c_in * k * k), input.device())?;
                let dy = dy.reshape((b, c_out, ho * wo))?;
                let gw = dy.matmul(&cols)?.reshape((b, c_out * c_in * k * k))?;
                found.push((layer.weight().id(), gw));
                if let Some(bias) = layer.bias() {
                    found.push((bias.id(), dy.sum(2)?));
                }
            }
            Record::Norm {
                layer,
                input,
                output,
                relu,
                probe,
            } => {
                let mut dy = grad_of(&grads, probe)?;
                if *relu {
                    // Gradient before the fused ReLU: zero where it cut.
                    dy = (dy * output.gt(0.0)?.to_dtype(DType::F32)?)?;
                }
                let (_, c, h, w) = input.dims4()?;
                let groups = layer.groups();
                let g = input.reshape((b, groups, (c / groups) * h * w))?;
                let mean = g.mean_keepdim(D::Minus1)?;
                let centred = g.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
                let xhat = centred
                    .broadcast_div(&(var + layer.eps())?.sqrt()?)?
                    .reshape((b, c, h * w))?;
                let dy = dy.reshape((b, c, h * w))?;
                found.push((layer.weight().id(), (&dy * xhat)?.sum(2)?));
                found.push((layer.bias().id(), dy.sum(2)?));
            }
            Record::Linear {
                layer,
                input,
                probe,
            } => {
                let dy = grad_of(&grads, probe)?;
                let (_, d_out) = dy.dims2()?;
                let (_, d_in) = input.dims2()?;
                let gw = dy
                    .unsqueeze(2)?
                    .matmul(&input.contiguous()?.unsqueeze(1)?)?
                    .reshape((b, d_out * d_in))?;
                found.push((layer.weight().id(), gw));
                found.push((layer.bias().id(), dy));
            }
        }
    }
    drop(tape);

    let mut ordered = Vec::with_capacity(found.len());
    for (name, var) in model.vars() {
        let id = var.as_tensor().id();
        let Some(pos) = found.iter().position(|(i, _)| *i == id) else {
            return Err(ModelError::InvalidConfig(format!(
                "parameter {name} has no per-example gradient: the network has a layer DP-SGD does not support"
            )));
        };
        let (_, g) = found.swap_remove(pos);
        ordered.push((var.as_tensor().clone(), g));
    }
    Ok(PerExampleGrads {
        batch: b,
        grads: ordered,
        losses,
    })
}

/// The clipped sum of one batch's per-example gradients.
pub(crate) struct Clipped {
    /// Sum over examples of `factor_i * g_i`, one tensor per parameter
    /// (shaped like it), in `Model::vars` order.
    pub(crate) sums: Vec<(Tensor, Tensor)>,
    pub(crate) norms: Vec<f64>,
    pub(crate) factors: Vec<f64>,
    pub(crate) losses: Vec<f32>,
}

/// Clipping factor of an example whose gradient norm is `norm`:
/// `min(1, clip / (norm + 1e-6))`, as Opacus, so the clipped norm is
/// strictly below `clip` even with rounding.
pub(crate) fn clip_factor(norm: f64, clip: f64) -> f64 {
    (clip / (norm + 1e-6)).min(1.0)
}

/// Clips each example's whole gradient (all parameters together) to L2
/// norm `clip` and sums over the batch.
pub(crate) fn clip_and_sum(per: PerExampleGrads, clip: f64) -> Result<Clipped> {
    let b = per.batch;
    let mut sq = vec![0.0f64; b];
    for (_, g) in &per.grads {
        let s = g.sqr()?.sum(1)?.to_vec1::<f32>()?;
        for (acc, v) in sq.iter_mut().zip(s) {
            *acc += f64::from(v);
        }
    }
    let norms: Vec<f64> = sq.iter().map(|s| s.sqrt()).collect();
    let factors: Vec<f64> = norms.iter().map(|&n| clip_factor(n, clip)).collect();
    let device = per.grads.first().map(|(p, _)| p.device().clone());
    let mut sums = Vec::with_capacity(per.grads.len());
    if let Some(device) = device {
        let f32s: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
        let f = Tensor::from_vec(f32s, (1, b), &device)?;
        for (param, g) in per.grads {
            let s = f.matmul(&g)?.reshape(param.shape())?;
            sums.push((param, s));
        }
    }
    Ok(Clipped {
        sums,
        norms,
        factors,
        losses: per.losses,
    })
}

/// Per-example gradients of a batch, each flattened in [`Model::flatten`]
/// order: `result[i]` is the gradient of example i's class-weighted
/// cross-entropy `-class_weights[y_i] log p(y_i | x_i)`.
///
/// `images` is (N, channels, size, size) in [0, 1], as for [`Model::forward`].
pub fn per_example_gradients(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    class_weights: &[f32],
) -> Result<Vec<Vec<f32>>> {
    let per = per_example_grads(model, images, labels, class_weights)?;
    let parts: Vec<Tensor> = per.grads.into_iter().map(|(_, g)| g).collect();
    Ok(Tensor::cat(&parts, 1)?.to_vec2::<f32>()?)
}

/// A batch's per-example gradients clipped and summed (the part of a DP-SGD
/// step before noise), with what the clipping did.
#[derive(Debug, Clone)]
pub struct ClippedSum {
    /// Sum of the clipped per-example gradients, in [`Model::flatten`] order.
    pub sum: Vec<f32>,
    /// Each example's gradient norm before clipping.
    pub norms: Vec<f64>,
    /// Each example's clipping factor: its clipped gradient is factor times the original.
    pub factors: Vec<f64>,
}

/// Clips each example's gradient in the batch to L2 norm `clip_norm` and sums them.
pub fn clipped_gradient_sum(
    model: &Model,
    images: &Tensor,
    labels: &[u32],
    class_weights: &[f32],
    clip_norm: f64,
) -> Result<ClippedSum> {
    let per = per_example_grads(model, images, labels, class_weights)?;
    let c = clip_and_sum(per, clip_norm)?;
    let mut sum = Vec::with_capacity(model.param_count());
    for (_, s) in &c.sums {
        sum.extend(s.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(ClippedSum {
        sum,
        norms: c.norms,
        factors: c.factors,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::spec::{Architecture, ModelSpec};

    fn batch(n: usize, size: usize, seed: u64) -> (Tensor, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pixels: Vec<f32> = (0..n * size * size).map(|_| rng.random()).collect();
        let labels = (0..n).map(|_| rng.random_range(0..2u32)).collect();
        let x = Tensor::from_vec(pixels, (n, 1, size, size), &candle_core::Device::Cpu).unwrap();
        (x, labels)
    }

    /// The gradient of one example's loss through the ordinary forward pass
    /// and candle's backward, in flatten order: the reference.
    fn one_at_a_time(model: &Model, x: &Tensor, label: u32, weights: &[f32]) -> Vec<f32> {
        let logits = model.forward(x).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let loss = (logp.get(0).unwrap().get(label as usize).unwrap()
            * -f64::from(weights[label as usize]))
        .unwrap();
        let grads = loss.backward().unwrap();
        let mut out = Vec::new();
        for (_, v) in model.vars() {
            let g = grads.get(v.as_tensor()).unwrap();
            out.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        out
    }

    fn check(arch: Architecture, size: usize, n: usize) {
        let model = Model::new(ModelSpec::new(arch, size, 2).unwrap(), 7).unwrap();
        let (x, labels) = batch(n, size, 11);
        let weights = [0.7f32, 2.1];
        // The recording forward computes what the ordinary one does.
        let plain = model.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let mut tape = Tape::new();
        let xn = normalised_input(&model, &x).unwrap();
        let recorded = model.net().forward_recorded(&xn, &mut tape).unwrap();
        assert_eq!(plain, recorded.to_vec2::<f32>().unwrap());
        drop(tape);

        let per = per_example_gradients(&model, &x, &labels, &weights).unwrap();
        assert_eq!(per.len(), n);
        for (i, got) in per.iter().enumerate() {
            let xi = x.narrow(0, i, 1).unwrap();
            let want = one_at_a_time(&model, &xi, labels[i], &weights);
            assert_eq!(got.len(), want.len());
            let diff: f64 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = want
                .iter()
                .map(|a| f64::from(*a).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(norm > 0.0);
            assert!(
                diff <= 1e-4 * norm,
                "{arch:?} {size}px example {i}: |per-example - reference| = {diff}, |reference| = {norm}"
            );
        }
    }

    #[test]
    fn per_example_gradients_match_one_backward_per_example_compact_cnn() {
        check(Architecture::CompactCnn, 28, 5);
    }

    #[test]
    fn per_example_gradients_match_with_strided_stem() {
        // 64 px: the compact CNN's stride-2 stem convolutions.
        check(Architecture::CompactCnn, 64, 3);
    }

    #[test]
    fn per_example_gradients_match_resnet18() {
        // 28 px (small-image stem): stride-2 3x3 convolutions, 1x1
        // projections, zero-initialised scales, residual sums. (At 64 px and
        // above the stem's 3x3/2 max-pool has no backward in candle 0.11, so
        // ResNet-18 does not train there at all.)
        check(Architecture::ResNet18, 28, 2);
    }
}
