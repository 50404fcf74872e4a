//! The two networks: the compact default CNN and ResNet-18, both with GroupNorm.

use candle_core::Tensor;

use crate::error::Result;
use crate::layers::{
    Conv2d, ConvNormRelu, DetachMap, GroupNorm, Linear, ParamBuilder, global_avg_pool, max_pool2x2,
};
use crate::privacy::per_example::Tape;
use crate::spec::{Architecture, ModelSpec};

/// GroupNorm groups: up to 8 in the compact CNN (fewer in its 16-channel
/// stage, see below); ResNet-18 uses the GroupNorm paper's 32.
const CNN_GROUPS: usize = 8;
const RESNET_GROUPS: usize = 32;

/// Inputs larger than this get stride-2 stem stages in the compact CNN
/// until they are at most this size, so its body always works on roughly
/// MedMNIST-sized maps and the cost stays small at 224x224.
const CNN_BODY_MAX_SIZE: usize = 40;
const CNN_STEM_CHANNELS: usize = 16;

/// A built network, ready to run forward.
#[derive(Debug, Clone)]
pub(crate) enum Net {
    Cnn(CompactCnn),
    ResNet(ResNet18),
}

impl Net {
    pub(crate) fn build(spec: &ModelSpec, pb: &mut ParamBuilder<'_>) -> Result<Self> {
        Ok(match spec.architecture {
            Architecture::CompactCnn => Net::Cnn(CompactCnn::new(spec, pb)?),
            Architecture::ResNet18 => Net::ResNet(ResNet18::new(spec, pb)?),
        })
    }

    /// Normalised NCHW images in, logits (N x classes) out.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Net::Cnn(n) => n.forward(x),
            Net::ResNet(n) => n.forward(x),
        }
    }
}

/// The default network.
///
/// At 28x28: three stages of two 3x3 convolutions (16, 32 and 64 channels)
/// with 2x2 max-pooling between stages, global average pooling and a linear
/// head; every convolution is followed by GroupNorm and ReLU. 72 k
/// parameters and about 15 MFLOP per image forward: cheap enough to train
/// on two CPU cores with candle's stock kernels in minutes, and its
/// receptive field (about 32 px) covers a whole 28x28 chest, so it can compare
/// the two lungs. Larger inputs first go through stride-2 stem
/// convolutions down to at most 40x40.
#[derive(Debug, Clone)]
pub(crate) struct CompactCnn {
    stem: Vec<ConvNormRelu>,
    blocks: Vec<Vec<ConvNormRelu>>,
    head: Linear,
}

/// Channels of the compact CNN's three stages (at full, 1/2 and 1/4 resolution).
const CNN_WIDTHS: [usize; 3] = [16, 32, 64];
/// Convolutions per stage.
const CNN_DEPTH: usize = 2;

impl CompactCnn {
    fn new(spec: &ModelSpec, pb: &mut ParamBuilder<'_>) -> Result<Self> {
        let mut stem = Vec::new();
        let mut size = spec.input_size;
        let mut c = spec.in_channels;
        while size > CNN_BODY_MAX_SIZE {
            let i = stem.len();
            stem.push(ConvNormRelu::new(
                &mut pb.sub(&format!("stem{i}")),
                c,
                CNN_STEM_CHANNELS,
                3,
                2,
                CNN_GROUPS.min(CNN_STEM_CHANNELS / 4),
            )?);
            c = CNN_STEM_CHANNELS;
            size = size.div_ceil(2);
        }
        let mut blocks = Vec::new();
        for (b, &w) in CNN_WIDTHS.iter().enumerate() {
            let mut convs = Vec::new();
            for i in 0..CNN_DEPTH {
                let name = format!("block{}.{i}", b + 1);
                // At least 4 channels per group, so the statistics are not
                // those of a single channel (which would be InstanceNorm).
                let groups = CNN_GROUPS.min(w / 4);
                convs.push(ConvNormRelu::new(&mut pb.sub(&name), c, w, 3, 1, groups)?);
                c = w;
            }
            blocks.push(convs);
        }
        let head = Linear::new(&mut pb.sub("head"), c, spec.classes)?;
        Ok(CompactCnn { stem, blocks, head })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for s in &self.stem {
            x = s.forward(&x)?;
        }
        // Every stage but the last ends with a 2x2 max-pool, fused into
        // its last convolution.
        let stages = self.blocks.len();
        for (b, convs) in self.blocks.iter().enumerate() {
            for (i, conv) in convs.iter().enumerate() {
                x = if b + 1 < stages && i + 1 == convs.len() {
                    conv.forward_pooled(&x)?
                } else {
                    conv.forward(&x)?
                };
            }
        }
        self.head.forward(&global_avg_pool(&x)?)
    }
}

/// Inputs smaller than this use the small-image stem (3x3, stride 1, no
/// max-pool), as MedMNIST does at 28x28; larger ones the ImageNet stem.
const RESNET_SMALL_STEM_BELOW: usize = 64;

/// ResNet-18 (He et al. 2016) with GroupNorm instead of BatchNorm.
#[derive(Debug, Clone)]
pub(crate) struct ResNet18 {
    stem: ConvNormRelu,
    stem_pool: bool,
    layers: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet18 {
    fn new(spec: &ModelSpec, pb: &mut ParamBuilder<'_>) -> Result<Self> {
        let small = spec.input_size < RESNET_SMALL_STEM_BELOW;
        let stem = if small {
            ConvNormRelu::new(
                &mut pb.sub("stem"),
                spec.in_channels,
                64,
                3,
                1,
                RESNET_GROUPS,
            )?
        } else {
            ConvNormRelu::new(
                &mut pb.sub("stem"),
                spec.in_channels,
                64,
                7,
                2,
                RESNET_GROUPS,
            )?
        };
        let mut layers = Vec::new();
        let mut c_in = 64;
        for (li, c_out) in [64usize, 128, 256, 512].into_iter().enumerate() {
            for bi in 0..2 {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let name = format!("layer{}.{bi}", li + 1);
                layers.push(BasicBlock::new(&mut pb.sub(&name), c_in, c_out, stride)?);
                c_in = c_out;
            }
        }
        let fc = Linear::new(&mut pb.sub("fc"), 512, spec.classes)?;
        Ok(ResNet18 {
            stem,
            stem_pool: !small,
            layers,
            fc,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        if self.stem_pool {
            // 3x3 max-pool, stride 2, padding 1. The input is a ReLU output
            // (>= 0) and every window holds at least one real pixel, so zero
            // padding gives the same maxima as the usual -inf padding.
            x = x
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)?;
        }
        for b in &self.layers {
            x = b.forward(&x)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}

/// Two 3x3 convolutions with a shortcut; a 1x1 projection when the shape changes.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: ConvNormRelu,
    conv2: Conv2d,
    norm2: GroupNorm,
    downsample: Option<(Conv2d, GroupNorm)>,
}

impl BasicBlock {
    fn new(pb: &mut ParamBuilder<'_>, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let conv1 = ConvNormRelu::new(&mut pb.sub("conv1"), c_in, c_out, 3, stride, RESNET_GROUPS)?;
        let conv2 = Conv2d::new(&mut pb.sub("conv2"), c_out, c_out, 3, 1, 1, false)?;
        // Zero-initialised scale: each residual branch starts silent, which
        // makes deep GroupNorm ResNets train stably from the first step.
        let norm2 = GroupNorm::new(&mut pb.sub("norm2"), c_out, RESNET_GROUPS, true)?;
        let downsample = if stride != 1 || c_in != c_out {
            let mut d = pb.sub("downsample");
            let conv = Conv2d::new(&mut d.sub("conv"), c_in, c_out, 1, stride, 0, false)?;
            let norm = GroupNorm::new(&mut d.sub("norm"), c_out, RESNET_GROUPS, false)?;
            Some((conv, norm))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1,
            conv2,
            norm2,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .norm2
            .forward(&self.conv2.forward(&self.conv1.forward(x)?)?)?;
        let shortcut = match &self.downsample {
            Some((conv, norm)) => norm.forward(&conv.forward(x)?)?,
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }
}

// The recording forward of DP-SGD's per-example gradients: the same
// computation as `forward`, but each parameterised layer goes through the
// tape, which keeps its input and marks its output. It must compute exactly
// what `forward` computes (tests compare outputs and gradients).
impl Net {
    pub(crate) fn forward_recorded<'a>(
        &'a self,
        x: &Tensor,
        tape: &mut Tape<'a>,
    ) -> Result<Tensor> {
        match self {
            Net::Cnn(n) => n.forward_recorded(x, tape),
            Net::ResNet(n) => n.forward_recorded(x, tape),
        }
    }
}

impl CompactCnn {
    fn forward_recorded<'a>(&'a self, x: &Tensor, tape: &mut Tape<'a>) -> Result<Tensor> {
        let mut x = x.clone();
        for s in &self.stem {
            x = tape.conv_norm_relu(s, &x)?;
        }
        for (b, convs) in self.blocks.iter().enumerate() {
            if b > 0 {
                x = max_pool2x2(&x)?;
            }
            for conv in convs {
                x = tape.conv_norm_relu(conv, &x)?;
            }
        }
        tape.linear(&self.head, &global_avg_pool(&x)?)
    }
}

impl ResNet18 {
    fn forward_recorded<'a>(&'a self, x: &Tensor, tape: &mut Tape<'a>) -> Result<Tensor> {
        let mut x = tape.conv_norm_relu(&self.stem, x)?;
        if self.stem_pool {
            x = x
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)?;
        }
        for b in &self.layers {
            x = b.forward_recorded(&x, tape)?;
        }
        tape.linear(&self.fc, &global_avg_pool(&x)?)
    }
}

impl BasicBlock {
    fn forward_recorded<'a>(&'a self, x: &Tensor, tape: &mut Tape<'a>) -> Result<Tensor> {
        let h = tape.conv_norm_relu(&self.conv1, x)?;
        let h = tape.conv(&self.conv2, &h)?;
        let y = tape.norm(&self.norm2, &h, false)?;
        let shortcut = match &self.downsample {
            Some((conv, norm)) => {
                let s = tape.conv(conv, x)?;
                tape.norm(norm, &s, false)?
            }
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }
}

// Copies with detached parameters, for DP-SGD's recording forward (see
// `Conv2d::detached`).
impl Net {
    pub(crate) fn detached(&self, map: &mut DetachMap) -> Net {
        match self {
            Net::Cnn(n) => Net::Cnn(CompactCnn {
                stem: n.stem.iter().map(|s| s.detached(map)).collect(),
                blocks: n
                    .blocks
                    .iter()
                    .map(|b| b.iter().map(|c| c.detached(map)).collect())
                    .collect(),
                head: n.head.detached(map),
            }),
            Net::ResNet(n) => Net::ResNet(ResNet18 {
                stem: n.stem.detached(map),
                stem_pool: n.stem_pool,
                layers: n
                    .layers
                    .iter()
                    .map(|b| BasicBlock {
                        conv1: b.conv1.detached(map),
                        conv2: b.conv2.detached(map),
                        norm2: b.norm2.detached(map),
                        downsample: b
                            .downsample
                            .as_ref()
                            .map(|(c, g)| (c.detached(map), g.detached(map))),
                    })
                    .collect(),
                fc: n.fc.detached(map),
            }),
        }
    }
}
