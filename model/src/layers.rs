//! The layers the networks are made of, and the named, seeded parameters behind them.
//!
//! This file is the single place where a network touches candle's
//! convolution and normalisation kernels: [`Conv2d::forward`] and
//! [`GroupNorm::forward`]. On the CPU they run the custom ops of
//! [`crate::kernels`]; parameter names, shapes and the training code stay
//! as they are, so fingerprints and saved weights remain valid.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::Result;
use crate::kernels;

/// How a parameter starts out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// Normal(0, sqrt(2 / fan_in)): keeps activations' scale through ReLU layers (He et al. 2015).
    KaimingNormal {
        fan_in: usize,
    },
    /// Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), the usual choice for a linear head.
    FanInUniform {
        fan_in: usize,
    },
    Zeros,
    Ones,
}

/// Creates named parameters with deterministic initial values.
///
/// Each parameter draws from its own ChaCha stream keyed by (seed, full
/// name), so the initial weights depend only on the seed and the name, not
/// on the order in which layers are built.
pub(crate) struct ParamBuilder<'a> {
    store: &'a mut BTreeMap<String, Var>,
    prefix: String,
    seed: u64,
    device: Device,
}

impl<'a> ParamBuilder<'a> {
    pub(crate) fn new(store: &'a mut BTreeMap<String, Var>, seed: u64, device: Device) -> Self {
        ParamBuilder {
            store,
            prefix: String::new(),
            seed,
            device,
        }
    }

    /// A builder whose names are prefixed with `name.`.
    pub(crate) fn sub(&mut self, name: &str) -> ParamBuilder<'_> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        ParamBuilder {
            store: self.store,
            prefix,
            seed: self.seed,
            device: self.device.clone(),
        }
    }

    /// Creates the parameter `prefix.name` and returns its tensor (which
    /// shares storage with the stored variable, so optimiser updates show up).
    pub(crate) fn param(&mut self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        let full = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        let n: usize = dims.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::KaimingNormal { fan_in } => {
                let std = (2.0 / fan_in.max(1) as f64).sqrt() as f32;
                let dist = Normal::new(0.0f32, std).expect("finite std");
                let mut rng = self.rng_for(&full);
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
            Init::FanInUniform { fan_in } => {
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                let dist = Uniform::new_inclusive(-bound, bound).expect("finite bound");
                let mut rng = self.rng_for(&full);
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
        };
        let var = Var::from_vec(values, dims, &self.device)?;
        let tensor = var.as_tensor().clone();
        let previous = self.store.insert(full.clone(), var);
        assert!(previous.is_none(), "parameter {full} defined twice");
        Ok(tensor)
    }

    fn rng_for(&self, full_name: &str) -> ChaCha8Rng {
        let mut h = blake3::Hasher::new();
        h.update(b"primia/model-init/v1\0");
        h.update(&self.seed.to_le_bytes());
        h.update(full_name.as_bytes());
        ChaCha8Rng::from_seed(*h.finalize().as_bytes())
    }
}

/// A 2-D convolution with square kernels, optional bias.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// `bias` is false when a normalisation follows, whose shift makes a bias redundant.
    pub(crate) fn new(
        pb: &mut ParamBuilder<'_>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let fan_in = c_in * kernel * kernel;
        let weight = pb.param(
            "weight",
            &[c_out, c_in, kernel, kernel],
            Init::KaimingNormal { fan_in },
        )?;
        let bias = if bias {
            Some(pb.param("bias", &[c_out], Init::Zeros)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// NCHW in, NCHW out: the custom kernel on the CPU, candle's own elsewhere.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if x.device().is_cpu() {
            kernels::conv2d(x, &self.weight, self.stride, self.padding)?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => y,
        })
    }
}

/// Group normalisation (Wu and He 2018) with a learned per-channel scale and shift.
///
/// Statistics are computed per example over groups of channels, so there
/// are no running averages: nothing that differs between training and
/// inference, nothing that depends on a hospital's batch composition, and
/// nothing besides ordinary weights to average in federated training.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `zero_init` starts the scale at 0 (used on the last normalisation of a
    /// residual branch so each block starts as the identity).
    pub(crate) fn new(
        pb: &mut ParamBuilder<'_>,
        channels: usize,
        groups: usize,
        zero_init: bool,
    ) -> Result<Self> {
        assert!(
            channels.is_multiple_of(groups),
            "{channels} channels in {groups} groups"
        );
        let weight = pb.param(
            "weight",
            &[channels],
            if zero_init { Init::Zeros } else { Init::Ones },
        )?;
        let bias = pb.param("bias", &[channels], Init::Zeros)?;
        Ok(GroupNorm {
            weight,
            bias,
            groups,
            eps: 1e-5,
        })
    }

    /// NCHW in, NCHW out.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_relu(x, false)
    }

    /// NCHW in, NCHW out, followed by ReLU if `relu`: one fused kernel on
    /// the CPU, candle's tensor ops elsewhere.
    pub(crate) fn forward_relu(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if x.device().is_cpu() {
            return Ok(kernels::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                relu,
            )?);
        }
        let (b, c, h, w) = x.dims4()?;
        let per_group = (c / self.groups) * h * w;
        let g = x.reshape((b, self.groups, per_group))?;
        let mean = g.mean_keepdim(D::Minus1)?;
        let centred = g.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let normed = normed.reshape((b, c, h, w))?;
        let y = normed
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        Ok(if relu { y.relu()? } else { y })
    }
}

/// A fully connected layer: y = x W^T + b.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub(crate) fn new(pb: &mut ParamBuilder<'_>, d_in: usize, d_out: usize) -> Result<Self> {
        let weight = pb.param(
            "weight",
            &[d_out, d_in],
            Init::FanInUniform { fan_in: d_in },
        )?;
        let bias = pb.param("bias", &[d_out], Init::FanInUniform { fan_in: d_in })?;
        Ok(Linear { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Conv, GroupNorm, ReLU: the unit both networks are made of.
#[derive(Debug, Clone)]
pub(crate) struct ConvNormRelu {
    conv: Conv2d,
    norm: GroupNorm,
}

impl ConvNormRelu {
    pub(crate) fn new(
        pb: &mut ParamBuilder<'_>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let conv = Conv2d::new(
            &mut pb.sub("conv"),
            c_in,
            c_out,
            kernel,
            stride,
            kernel / 2,
            false,
        )?;
        let norm = GroupNorm::new(&mut pb.sub("norm"), c_out, groups, false)?;
        Ok(ConvNormRelu { conv, norm })
    }

    /// One fused kernel on the CPU; the two layers in turn elsewhere.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, kernels::conv_norm_relu) {
            Some(y) => y,
            None => self.norm.forward_relu(&self.conv.forward(x)?, true),
        }
    }

    /// [`Self::forward`] followed by [`max_pool2x2`]: one fused kernel on
    /// the CPU, which keeps the full-size activation and its gradient out
    /// of the graph.
    pub(crate) fn forward_pooled(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, kernels::conv_norm_relu_pool) {
            Some(y) => y,
            None => max_pool2x2(&self.forward(x)?),
        }
    }

    /// `kernel` (one of the fused CPU kernels) applied with this layer's
    /// parameters, or `None` where it does not apply (another device, a
    /// convolution bias).
    fn fused(&self, x: &Tensor, kernel: FusedKernel) -> Option<Result<Tensor>> {
        (x.device().is_cpu() && self.conv.bias.is_none()).then(|| {
            Ok(kernel(
                x,
                &self.conv.weight,
                &self.norm.weight,
                &self.norm.bias,
                self.conv.stride,
                self.conv.padding,
                self.norm.groups,
                self.norm.eps,
            )?)
        })
    }
}

/// The signature shared by [`kernels::conv_norm_relu`] and [`kernels::conv_norm_relu_pool`].
type FusedKernel =
    fn(&Tensor, &Tensor, &Tensor, &Tensor, usize, usize, usize, f64) -> candle_core::Result<Tensor>;

/// 2x2 max-pooling with stride 2: the custom kernel on the CPU, candle's
/// own elsewhere.
///
/// The kernel's gradient goes to each window's maximum, as in PyTorch;
/// candle 0.11's `max_pool2d` backward scales it by the window's share of
/// maxima (a quarter when there is no tie), which would weaken the
/// gradient reaching the earlier stages.
pub(crate) fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    Ok(if x.device().is_cpu() {
        kernels::max_pool2x2(x)?
    } else {
        x.max_pool2d(2)?
    })
}

/// Global average pooling: NCHW to NC.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean((2, 3))?)
}

/// All parameters are float32: the flat vector, the weight files and the
/// fixed-point conversion for secure aggregation all assume it.
pub(crate) const PARAM_DTYPE: DType = DType::F32;

/// Read access to parameters and geometry, for per-example gradients
/// (DP-SGD), which rebuild each layer's weight gradient example by example
/// from its input and the gradient of its output.
impl Conv2d {
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
    pub(crate) fn padding(&self) -> usize {
        self.padding
    }
}

impl GroupNorm {
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }
    pub(crate) fn eps(&self) -> f64 {
        self.eps
    }
}

impl Linear {
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl ConvNormRelu {
    pub(crate) fn conv(&self) -> &Conv2d {
        &self.conv
    }
    pub(crate) fn norm(&self) -> &GroupNorm {
        &self.norm
    }
}

/// Pairs (detached parameter, trainable parameter) made by `detached`.
pub(crate) type DetachMap = Vec<(candle_core::TensorId, candle_core::TensorId)>;

fn detach_param(t: &Tensor, map: &mut DetachMap) -> Tensor {
    let d = t.detach();
    map.push((d.id(), t.id()));
    d
}

// Copies whose parameters share the weights' storage but are not trainable
// variables, so a backward pass through them computes no weight gradients
// (DP-SGD forms those per example itself). `map` records which detached
// tensor stands for which parameter.
impl Conv2d {
    pub(crate) fn detached(&self, map: &mut DetachMap) -> Self {
        Conv2d {
            weight: detach_param(&self.weight, map),
            bias: self.bias.as_ref().map(|b| detach_param(b, map)),
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl GroupNorm {
    pub(crate) fn detached(&self, map: &mut DetachMap) -> Self {
        GroupNorm {
            weight: detach_param(&self.weight, map),
            bias: detach_param(&self.bias, map),
            groups: self.groups,
            eps: self.eps,
        }
    }
}

impl Linear {
    pub(crate) fn detached(&self, map: &mut DetachMap) -> Self {
        Linear {
            weight: detach_param(&self.weight, map),
            bias: detach_param(&self.bias, map),
        }
    }
}

impl ConvNormRelu {
    pub(crate) fn detached(&self, map: &mut DetachMap) -> Self {
        ConvNormRelu {
            conv: self.conv.detached(map),
            norm: self.norm.detached(map),
        }
    }
}
