//! Exact per-example gradients from one batched forward and backward pass, and their clipping.
//!
//! DP-SGD bounds each example's influence by clipping its own gradient, so
//! it needs every example's gradient separately. One backward pass per
//! example would cost a batch's worth of passes; instead the network runs
//! once on the whole batch through a recording forward ([`Tape`]) that keeps
//! each parameterised layer's input and passes its output through a
//! "probe", an identity op whose backward keeps the gradient flowing through
//! it (candle's backward pass drops intermediate gradients once used). The
//! backward pass of the summed per-example losses then leaves in the probes
//! dL/d(output) of every layer, row i holding example i's part alone (every
//! layer, GroupNorm included, treats examples independently). That pass
//! runs on detached copies of the parameters, so it computes only the
//! gradients flowing between layers, not the batch weight gradients that
//! the per-example ones replace. Each layer's per-example weight gradient is
//! a small product of the probe's gradient with the layer's saved input:
//!
//! - convolution: `dW_i = dY_i . unfold(X_i)^T` (each core unfolds one
//!   example at a time into a reused buffer and multiplies with gemm), bias
//!   `db_i = sum_hw dY_i`;
//! - GroupNorm: scale `sum_hw dY_i * xhat_i`, shift `sum_hw dY_i`, with
//!   xhat recomputed from the layer's input and dY taken before the fused
//!   ReLU (`dY * [output > 0]`);
//! - linear: `dW_i = dY_i^T x_i`, `db_i = dY_i`.
//!
//! Only each layer's input tensor, its weight shape, stride and padding and
//! the gradient of its output are used, so this works whatever kernels the
//! layers' forward passes run on.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Storage, Tensor, TensorId, Var,
};

use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, ConvNormRelu, DetachMap, GroupNorm, Linear};
use crate::model::{INPUT_MEAN, INPUT_STD, Model};

/// What one parameterised layer saw in the recording forward.
enum Record<'a> {
    Conv {
        layer: &'a Conv2d,
        input: Tensor,
        probe: Probe,
    },
    Norm {
        layer: &'a GroupNorm,
        input: Tensor,
        /// The layer's output (after the ReLU when `relu`).
        output: Tensor,
        relu: bool,
        probe: Probe,
    },
    Linear {
        layer: &'a Linear,
        input: Tensor,
        probe: Probe,
    },
}

/// Where a probe leaves the gradient of the tensor it marks.
struct Probe {
    slot: Arc<Mutex<Option<Tensor>>>,
    dims: Vec<usize>,
}

impl Probe {
    /// dL/d(marked tensor), or zeros when the loss does not depend on it.
    fn grad(&self) -> Result<Tensor> {
        let g = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(match g {
            Some(g) => g,
            None => Tensor::zeros(self.dims.as_slice(), DType::F32, &Device::Cpu)?,
        })
    }
}

/// Identity forward (a copy); the backward hands the incoming gradient on
/// unchanged and keeps it in the slot.
struct ProbeOp(Arc<Mutex<Option<Tensor>>>);

impl CustomOp1 for ProbeOp {
    fn name(&self) -> &'static str {
        "dp-probe"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("dp-probe: only float32 tensors are supported")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("dp-probe: the input must be contiguous")
        };
        Ok((
            CpuStorage::F32(v[start..end].to_vec()),
            layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(grad_res.clone());
        Ok(Some(grad_res.clone()))
    }
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

    /// Passes `y` through a new probe.
    fn probe(y: Tensor) -> Result<(Tensor, Probe)> {
        let probe = Probe {
            slot: Arc::new(Mutex::new(None)),
            dims: y.dims().to_vec(),
        };
        let marked = y.contiguous()?.apply_op1(ProbeOp(probe.slot.clone()))?;
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
/// parameter order, `batch` rows of the parameter's size.
pub(crate) struct PerExampleGrads {
    pub(crate) batch: usize,
    /// (parameter tensor, per-example gradients row by row), in `Model::vars` order.
    pub(crate) grads: Vec<(Tensor, Vec<f32>)>,
    /// Each example's squared gradient norm over all parameters.
    pub(crate) sq_norms: Vec<f64>,
    /// Each example's (class-weighted) loss.
    pub(crate) losses: Vec<f32>,
}

/// The float32 values of a tensor in row-major order.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `f` on a CPU float32 tensor's values in row-major order, read in
/// place (activations are megabytes; copying each would cost a pass).
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(ModelError::InvalidConfig(
            "per-example gradients need contiguous float32 tensors on the CPU".into(),
        ));
    };
    Ok(f(&v[start..end]))
}

/// Runs `f(first_example, rows, sq)` over `out` split into contiguous runs
/// of examples (`row` values each, with their entries of `sq`), one run per
/// available core.
fn par_examples(
    out: &mut [f32],
    row: usize,
    sq: &mut [f64],
    f: impl Fn(usize, &mut [f32], &mut [f64]) + Sync,
) {
    if out.is_empty() || row == 0 {
        return;
    }
    let b = out.len() / row;
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(b);
    if threads <= 1 {
        f(0, out, sq);
        return;
    }
    let per_thread = b.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, (part, sq)) in out
            .chunks_mut(per_thread * row)
            .zip(sq.chunks_mut(per_thread))
            .enumerate()
        {
            let f = &f;
            scope.spawn(move || f(t * per_thread, part, sq));
        }
    });
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// Geometry of one convolution, for its per-example weight gradients.
#[derive(Clone, Copy)]
struct Geom {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn kk(&self) -> usize {
        self.c_in * self.k * self.k
    }
}

/// Unfolds one example's input into the rows a convolution multiplies:
/// cols[oy * wo + ox][(ci * k + ky) * k + kx] = x[ci][oy*s + ky - p][ox*s + kx - p]
/// (zero outside the image), matching the weight layout (c_out, c_in, k, k).
fn im2col(g: &Geom, xs: &[f32], cols: &mut [f32]) {
    let kk = g.kk();
    cols.fill(0.0);
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            let row = &mut cols[(oy * g.wo + ox) * kk..(oy * g.wo + ox + 1) * kk];
            for ci in 0..g.c_in {
                let plane = &xs[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for ky in 0..g.k {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue; // stays zero
                    }
                    let line = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let base = (ci * g.k + ky) * g.k;
                    for kx in 0..g.k {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if ix >= 0 && ix < g.w as isize {
                            row[base + kx] = line[ix as usize];
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)`, all row-major and contiguous.
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    // SAFETY: the assert above keeps every access of the three row-major
    // matrices inside their slices; dst is a distinct mutable borrow, so it
    // aliases neither operand. read_dst is false, so dst's old values are
    // not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Per-example convolution weight gradients, `dW_n = dY_n . cols(X_n)`,
/// one (c_out x c_in k k) block per example; each core unfolds one example
/// at a time into a buffer it reuses, so the unfolded batch never exists whole.
fn conv_per_example(g: &Geom, b: usize, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let kk = g.kk();
    let hw = g.ho * g.wo;
    let xsz = g.c_in * g.h * g.w;
    let mut out = vec![0.0f32; b * g.c_out * kk];
    let mut sq = vec![0.0f64; b];
    par_examples(&mut out, g.c_out * kk, &mut sq, |first, rows, sq| {
        let mut cols = vec![0.0f32; hw * kk];
        for (j, dst) in rows.chunks_mut(g.c_out * kk).enumerate() {
            let n = first + j;
            im2col(g, &x[n * xsz..(n + 1) * xsz], &mut cols);
            let dyn_ = &dy[n * g.c_out * hw..(n + 1) * g.c_out * hw];
            matmul(g.c_out, kk, hw, dst, dyn_, &cols);
            // While the block is in cache: its share of the example's norm.
            sq[j] = sum_sq(dst);
        }
    });
    (out, sq)
}

/// Per-example GroupNorm scale and shift gradients: `sum_hw dY * xhat` and
/// `sum_hw dY` per channel, with xhat recomputed from the layer's input
/// (the statistics in f64) and dY zeroed where a fused ReLU cut the output.
/// Returns, per example, the c scale gradients then the c shift gradients.
fn norm_per_example(
    (b, c, hw): (usize, usize, usize),
    groups: usize,
    eps: f64,
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
) -> (Vec<f32>, Vec<f64>) {
    let cpg = c / groups;
    let mut out = vec![0.0f32; b * 2 * c];
    let mut sq = vec![0.0f64; b];
    par_examples(&mut out, 2 * c, &mut sq, |first, rows, sq| {
        for (j, dst) in rows.chunks_mut(2 * c).enumerate() {
            let n = first + j;
            for g in 0..groups {
                let start = (n * c + g * cpg) * hw;
                let xs = &x[start..start + cpg * hw];
                let count = xs.len() as f64;
                let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
                let var = xs
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / count;
                let inv = 1.0 / (var + eps).sqrt();
                for ch in 0..cpg {
                    let off = start + ch * hw;
                    let (mut sw, mut sb) = (0.0f64, 0.0f64);
                    for p in 0..hw {
                        if let Some(o) = relu_out
                            && o[off + p] <= 0.0
                        {
                            continue;
                        }
                        let d = f64::from(dy[off + p]);
                        sw += d * (f64::from(x[off + p]) - mean) * inv;
                        sb += d;
                    }
                    dst[g * cpg + ch] = sw as f32;
                    dst[c + g * cpg + ch] = sb as f32;
                }
            }
            sq[j] = sum_sq(dst);
        }
    });
    (out, sq)
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
    // The network runs with detached copies of its parameters, so the
    // backward pass computes no batch weight gradients (they would be
    // thrown away); the input is made a variable instead, to give the
    // backward pass a graph to follow.
    let mut detach_map = DetachMap::new();
    let net = model.net().detached(&mut detach_map);
    let x = Var::from_tensor(&normalised_input(model, images)?)?;
    let mut tape = Tape::new();
    let logits = net.forward_recorded(x.as_tensor(), &mut tape)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let target = Tensor::from_vec(target, (b, classes), model.device())?;
    let per_loss = (logp * target)?.sum(1)?.neg()?;
    let losses = per_loss.to_vec1::<f32>()?;
    // The sum, not the mean: row i of every gradient is then example i's own.
    // The parameters' own gradients are computed too and dropped.
    drop(per_loss.sum_all()?.backward()?);

    let mut found: Vec<(TensorId, Vec<f32>)> = Vec::new();
    // Each example's squared gradient norm, summed over parameters as they come.
    let mut sq = vec![0.0f64; b];
    let mut add_sq = |part: &[f64]| {
        for (s, p) in sq.iter_mut().zip(part) {
            *s += p;
        }
    };
    for record in &tape.records {
        match record {
            Record::Conv {
                layer,
                input,
                probe,
            } => {
                let dy = probe.grad()?;
                let (_, c_in, h, w) = input.dims4()?;
                let (c_out, _, k, _) = layer.weight().dims4()?;
                let (ho, wo) = match probe.dims[..] {
                    [_, _, ho, wo] => (ho, wo),
                    _ => {
                        return Err(ModelError::InvalidConfig(format!(
                            "convolution output of shape {:?}",
                            probe.dims
                        )));
                    }
                };
                let g = Geom {
                    c_in,
                    h,
                    w,
                    c_out,
                    k,
                    stride: layer.stride(),
                    pad: layer.padding(),
                    ho,
                    wo,
                };
                let (gw, part) = with_values(&dy, |dy| {
                    with_values(input, |xs| conv_per_example(&g, b, xs, dy))
                })??;
                add_sq(&part);
                found.push((layer.weight().id(), gw));
                if let Some(bias) = layer.bias() {
                    let hw = ho * wo;
                    let gb: Vec<f32> =
                        with_values(&dy, |dy| dy.chunks(hw).map(|r| r.iter().sum()).collect())?;
                    let part: Vec<f64> = gb.chunks(c_out).map(sum_sq).collect();
                    add_sq(&part);
                    found.push((bias.id(), gb));
                }
            }
            Record::Norm {
                layer,
                input,
                output,
                relu,
                probe,
            } => {
                let dy = probe.grad()?;
                let (_, c, h, w) = input.dims4()?;
                let run = |xs: &[f32], dy: &[f32], out: Option<&[f32]>| {
                    norm_per_example((b, c, h * w), layer.groups(), layer.eps(), xs, dy, out)
                };
                let (both, part) = with_values(input, |xs| {
                    with_values(&dy, |dy| {
                        if *relu {
                            with_values(output, |out| run(xs, dy, Some(out)))
                        } else {
                            Ok(run(xs, dy, None))
                        }
                    })
                })???;
                add_sq(&part);
                let mut gw = Vec::with_capacity(b * c);
                let mut gb = Vec::with_capacity(b * c);
                for row in both.chunks(2 * c) {
                    gw.extend_from_slice(&row[..c]);
                    gb.extend_from_slice(&row[c..]);
                }
                found.push((layer.weight().id(), gw));
                found.push((layer.bias().id(), gb));
            }
            Record::Linear {
                layer,
                input,
                probe,
            } => {
                let dy = values(&probe.grad()?)?;
                let (_, d_in) = input.dims2()?;
                let d_out = dy.len() / b;
                let xs = values(input)?;
                let mut gw = vec![0.0f32; b * d_out * d_in];
                for n in 0..b {
                    for o in 0..d_out {
                        let d = dy[n * d_out + o];
                        let row = &mut gw[(n * d_out + o) * d_in..(n * d_out + o + 1) * d_in];
                        for (r, xv) in row.iter_mut().zip(&xs[n * d_in..(n + 1) * d_in]) {
                            *r = d * xv;
                        }
                    }
                }
                let part: Vec<f64> = gw
                    .chunks(d_out * d_in)
                    .zip(dy.chunks(d_out))
                    .map(|(w, b)| sum_sq(w) + sum_sq(b))
                    .collect();
                add_sq(&part);
                found.push((layer.weight().id(), gw));
                found.push((layer.bias().id(), dy));
            }
        }
    }
    drop(tape);

    // Back from the detached copies to the trainable parameters.
    for (id, _) in &mut found {
        if let Some((_, original)) = detach_map.iter().find(|(d, _)| d == id) {
            *id = *original;
        }
    }
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
        sq_norms: sq,
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
    let norms: Vec<f64> = per.sq_norms.iter().map(|s| s.sqrt()).collect();
    let factors: Vec<f64> = norms.iter().map(|&n| clip_factor(n, clip)).collect();
    let f32s: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    let mut sums = Vec::with_capacity(per.grads.len());
    for (param, g) in per.grads {
        let len = param.elem_count();
        let mut sum = vec![0.0f32; len];
        // (1 x b) factors times (b x len) gradients.
        matmul(1, len, b, &mut sum, &f32s, &g);
        let sum = Tensor::from_vec(sum, param.shape(), param.device())?;
        sums.push((param, sum));
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
    let mut out = vec![Vec::with_capacity(model.param_count()); per.batch];
    for (param, g) in &per.grads {
        for (dst, row) in out.iter_mut().zip(g.chunks(param.elem_count())) {
            dst.extend_from_slice(row);
        }
    }
    Ok(out)
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
        sum.extend(values(s)?);
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
        // The recording forward computes what the ordinary one does (to
        // rounding: the ordinary one may fuse layers into one kernel).
        let plain = model.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let mut tape = Tape::new();
        let xn = normalised_input(&model, &x).unwrap();
        let recorded = model.net().forward_recorded(&xn, &mut tape).unwrap();
        for (p, r) in plain
            .iter()
            .flatten()
            .zip(recorded.to_vec2::<f32>().unwrap().iter().flatten())
        {
            assert!(
                (p - r).abs() <= 1e-4 * (1.0 + p.abs()),
                "logit {p} vs recorded {r}"
            );
        }
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
