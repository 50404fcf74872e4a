//! What a model is: its architecture, input size and classes, and the fingerprint that identifies it.

use std::fmt;
use std::str::FromStr;

use crate::error::{ModelError, Result};

/// The network families this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Architecture {
    /// The default: a compact five-convolution network that trains in minutes on a CPU.
    CompactCnn,
    /// ResNet-18 with GroupNorm, for members with more compute.
    ResNet18,
}

impl Architecture {
    /// The short name used on the command line and in weight files.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::CompactCnn => "cnn",
            Architecture::ResNet18 => "resnet18",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cnn" => Ok(Architecture::CompactCnn),
            "resnet18" => Ok(Architecture::ResNet18),
            other => Err(ModelError::InvalidSpec(format!(
                "unknown architecture {other:?} (expected cnn or resnet18)"
            ))),
        }
    }
}

/// Everything needed to build a network: two members with equal specs build
/// networks with the same parameter names and shapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Side of the square input image in pixels (28 for MedMNIST, 224 for full-size work).
    pub input_size: usize,
    /// Image channels; the networks are built for grey-level X-rays, so this is 1.
    pub in_channels: usize,
    /// Number of output classes (2 for normal / pneumonia).
    pub classes: usize,
}

/// Smallest input side the networks accept: below this, the pooling stages
/// would shrink the feature maps to nothing.
pub const MIN_INPUT_SIZE: usize = 16;
/// Largest input side accepted: beyond this a CPU cannot train in useful time,
/// and a bigger side only makes a batch's memory explode.
pub const MAX_INPUT_SIZE: usize = 1024;
/// Upper bound on classes, so a corrupt label file cannot make the head huge.
pub const MAX_CLASSES: usize = 1000;

impl ModelSpec {
    /// A spec for grey-level images.
    pub fn new(architecture: Architecture, input_size: usize, classes: usize) -> Result<Self> {
        let spec = ModelSpec {
            architecture,
            input_size,
            in_channels: 1,
            classes,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The default model: the compact CNN on 28x28 images with two classes.
    pub fn default_cnn() -> Self {
        ModelSpec {
            architecture: Architecture::CompactCnn,
            input_size: 28,
            in_channels: 1,
            classes: 2,
        }
    }

    /// Checks that the networks can be built for this spec.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&self.input_size) {
            return Err(ModelError::InvalidSpec(format!(
                "input size {} is outside {MIN_INPUT_SIZE}..={MAX_INPUT_SIZE}",
                self.input_size
            )));
        }
        if self.in_channels != 1 {
            return Err(ModelError::InvalidSpec(format!(
                "{} input channels requested; the networks take grey-level images (1 channel)",
                self.in_channels
            )));
        }
        if !(2..=MAX_CLASSES).contains(&self.classes) {
            return Err(ModelError::InvalidSpec(format!(
                "{} classes requested; between 2 and {MAX_CLASSES} are supported",
                self.classes
            )));
        }
        Ok(())
    }

    /// The canonical text form stored in weight files and hashed into the fingerprint.
    pub fn canonical(&self) -> String {
        format!(
            "arch={};input={};channels={};classes={}",
            self.architecture, self.input_size, self.in_channels, self.classes
        )
    }

    /// Parses [`ModelSpec::canonical`] back.
    pub fn parse_canonical(s: &str) -> Result<Self> {
        let bad = |why: &str| ModelError::InvalidSpec(format!("cannot parse spec {s:?}: {why}"));
        let mut arch = None;
        let mut input = None;
        let mut channels = None;
        let mut classes = None;
        for part in s.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(|| bad("missing '='"))?;
            let num = || v.parse::<usize>().map_err(|_| bad("not a number"));
            match k {
                "arch" => arch = Some(v.parse::<Architecture>()?),
                "input" => input = Some(num()?),
                "channels" => channels = Some(num()?),
                "classes" => classes = Some(num()?),
                _ => return Err(bad("unknown key")),
            }
        }
        let spec = ModelSpec {
            architecture: arch.ok_or_else(|| bad("no arch"))?,
            input_size: input.ok_or_else(|| bad("no input"))?,
            in_channels: channels.ok_or_else(|| bad("no channels"))?,
            classes: classes.ok_or_else(|| bad("no classes"))?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{}x{} -> {} classes",
            self.architecture, self.in_channels, self.input_size, self.input_size, self.classes
        )
    }
}

/// Identity of a network's architecture: blake3 of the spec and of the
/// ordered parameter names and shapes.
///
/// Members compare fingerprints before combining updates, so a hospital
/// running another architecture or input size is refused rather than
/// silently averaged in. Weights do not enter the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes a spec and its parameter list (already in the model's fixed order).
    pub(crate) fn compute<'a>(
        spec: &ModelSpec,
        params: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Self {
        let mut h = blake3::Hasher::new();
        // Domain separation: a fingerprint can never collide with another
        // blake3 use in the project that hashes similar bytes.
        h.update(b"primia/model-fingerprint/v1\0");
        let spec = spec.canonical();
        h.update(&(spec.len() as u64).to_le_bytes());
        h.update(spec.as_bytes());
        for (name, dims) in params {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(dims.len() as u64).to_le_bytes());
            for d in dims {
                h.update(&(*d as u64).to_le_bytes());
            }
        }
        Fingerprint(*h.finalize().as_bytes())
    }

    /// Lowercase hexadecimal form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_roundtrip() {
        let s = ModelSpec::new(Architecture::ResNet18, 224, 3).unwrap();
        assert_eq!(ModelSpec::parse_canonical(&s.canonical()).unwrap(), s);
    }

    #[test]
    fn refuses_impossible_specs() {
        assert!(ModelSpec::new(Architecture::CompactCnn, 8, 2).is_err());
        assert!(ModelSpec::new(Architecture::CompactCnn, 28, 1).is_err());
        assert!(ModelSpec::parse_canonical("arch=cnn;input=28").is_err());
        assert!("vgg".parse::<Architecture>().is_err());
    }
}
