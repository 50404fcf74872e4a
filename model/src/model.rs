//! [`Model`]: a built network with its named parameters, flat-vector view, fingerprint and weight files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::error::{ModelError, Result};
use crate::layers::{PARAM_DTYPE, ParamBuilder};
use crate::nets::Net;
use crate::spec::{Fingerprint, ModelSpec};

/// Grey levels arrive in [0, 1]; the network sees (x - MEAN) / STD. The
/// constants are fixed, not estimated from any hospital's data, so every
/// member and every inference caller normalises identically.
pub const INPUT_MEAN: f32 = 0.5;
/// See [`INPUT_MEAN`].
pub const INPUT_STD: f32 = 0.25;

/// Weight files larger than this are refused before being read: ResNet-18
/// at float32 is about 45 MB, so this leaves room without letting a bad
/// path exhaust memory.
pub const MAX_WEIGHTS_BYTES: u64 = 1 << 30;

const META_SPEC: &str = "primia.spec";
const META_FINGERPRINT: &str = "primia.fingerprint";

/// A network and its trainable parameters.
///
/// Parameters live in a map sorted by name; that order is the order of
/// [`Model::flatten`], of the fingerprint and of weight files, and it does
/// not depend on how the network happens to be built.
pub struct Model {
    spec: ModelSpec,
    params: BTreeMap<String, Var>,
    net: Net,
    fingerprint: Fingerprint,
    device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec)
            .field("parameters", &self.param_count())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Model {
    /// Builds the network for `spec` with initial weights drawn from `seed`
    /// (the same seed gives the same weights, bit for bit).
    pub fn new(spec: ModelSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let device = Device::Cpu;
        let mut params = BTreeMap::new();
        let net = {
            let mut pb = ParamBuilder::new(&mut params, seed, device.clone());
            Net::build(&spec, &mut pb)?
        };
        let fingerprint = Fingerprint::compute(
            &spec,
            params
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_tensor().dims())),
        );
        Ok(Model {
            spec,
            params,
            net,
            fingerprint,
            device,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Identity of the architecture (spec, parameter names and shapes), not of the weights.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Number of trainable scalars, the length of [`Model::flatten`].
    pub fn param_count(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Parameter names and shapes, in the fixed order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec()))
            .collect()
    }

    /// The network itself (for the recording forward of per-example gradients).
    pub(crate) fn net(&self) -> &Net {
        &self.net
    }

    /// The trainable variables in the fixed order (for optimisers).
    pub(crate) fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Runs the network on a batch of images in [0, 1], shaped
    /// (N, channels, size, size); returns logits (N, classes).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = images.dims4()?;
        let s = self.spec.input_size;
        if c != self.spec.in_channels || h != s || w != s {
            return Err(ModelError::InvalidData(format!(
                "batch of {c}x{h}x{w} images given to a model for {}x{s}x{s}",
                self.spec.in_channels
            )));
        }
        let x = images.affine(
            1.0 / f64::from(INPUT_STD),
            -f64::from(INPUT_MEAN) / f64::from(INPUT_STD),
        )?;
        self.net.forward(&x)
    }

    /// All parameters concatenated into one vector, in name order, each
    /// tensor in row-major order.
    pub fn flatten(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.param_count());
        for v in self.params.values() {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Sets every parameter from a vector produced by [`Model::flatten`] of a
    /// model with the same fingerprint. Exact: flatten then unflatten gives
    /// the same bits.
    pub fn unflatten(&mut self, flat: &[f32]) -> Result<()> {
        for (v, t) in self.params.values().zip(self.split_flat(flat)?) {
            v.set(&t)?;
        }
        Ok(())
    }

    /// Cuts a vector in [`Model::flatten`] order into one tensor per
    /// variable, shaped as that variable (in [`Model::vars`] order).
    pub(crate) fn split_flat(&self, flat: &[f32]) -> Result<Vec<Tensor>> {
        let expected = self.param_count();
        if flat.len() != expected {
            return Err(ModelError::FlatLength {
                expected,
                got: flat.len(),
            });
        }
        let mut at = 0;
        let mut out = Vec::with_capacity(self.params.len());
        for v in self.params.values() {
            let n = v.elem_count();
            out.push(Tensor::from_slice(
                &flat[at..at + n],
                v.as_tensor().dims(),
                &self.device,
            )?);
            at += n;
        }
        Ok(out)
    }

    /// An independent copy (same spec and weights, separate storage), e.g.
    /// to keep the global model while a member trains its local copy.
    pub fn try_clone(&self) -> Result<Model> {
        let mut m = Model::new(self.spec.clone(), 0)?;
        m.unflatten(&self.flatten()?)?;
        Ok(m)
    }

    /// Copies all weights from another model of the same architecture.
    pub fn copy_weights_from(&mut self, other: &Model) -> Result<()> {
        if other.fingerprint != self.fingerprint {
            return Err(ModelError::Weights {
                what: "in-memory model".into(),
                reason: format!(
                    "fingerprint {} does not match this model's {}",
                    other.fingerprint, self.fingerprint
                ),
            });
        }
        self.unflatten(&other.flatten()?)
    }

    /// The weights as a safetensors file in memory, with the spec and
    /// fingerprint in its metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.params.len());
        for (name, v) in &self.params {
            let values = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.push((name.clone(), v.as_tensor().dims().to_vec(), raw));
        }
        let views = bytes
            .iter()
            .map(|(name, dims, raw)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), raw)
                    .map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.weights_err("serialisation", e))?;
        let meta = HashMap::from([
            (META_SPEC.to_string(), self.spec.canonical()),
            (META_FINGERPRINT.to_string(), self.fingerprint.to_hex()),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(|e| self.weights_err("serialisation", e))
    }

    fn weights_err(&self, what: &str, e: impl std::fmt::Display) -> ModelError {
        ModelError::Weights {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// Builds a model from a safetensors buffer written by [`Model::to_safetensors`].
    /// `what` names the source in errors (a path, a model hash).
    pub fn from_safetensors(buf: &[u8], what: &str) -> Result<Self> {
        let werr = |reason: String| ModelError::Weights {
            what: what.to_string(),
            reason,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(buf)
            .map_err(|e| werr(format!("not a safetensors file: {e}")))?;
        let info = meta.metadata().as_ref();
        let spec_text = info
            .and_then(|m| m.get(META_SPEC))
            .ok_or_else(|| werr(format!("no {META_SPEC} entry in the metadata")))?;
        let spec = ModelSpec::parse_canonical(spec_text).map_err(|e| werr(e.to_string()))?;
        let mut model = Model::new(spec, 0)?;
        model.load_safetensors_into(buf, what)?;
        Ok(model)
    }

    /// Replaces this model's weights from a safetensors buffer; refuses a
    /// file made for another architecture or input size.
    pub fn load_safetensors_into(&mut self, buf: &[u8], what: &str) -> Result<()> {
        let werr = |reason: String| ModelError::Weights {
            what: what.to_string(),
            reason,
        };
        let st = safetensors::SafeTensors::deserialize(buf)
            .map_err(|e| werr(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(buf)
            .map_err(|e| werr(format!("not a safetensors file: {e}")))?;
        if let Some(fp) = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_FINGERPRINT))
            && *fp != self.fingerprint.to_hex()
        {
            return Err(werr(format!(
                "made for model {fp}, this model is {}",
                self.fingerprint
            )));
        }
        let mut names: Vec<&str> = st.names();
        names.sort();
        let ours: Vec<&str> = self.params.keys().map(String::as_str).collect();
        if names != ours {
            let missing: Vec<_> = ours.iter().filter(|n| !names.contains(n)).collect();
            let extra: Vec<_> = names.iter().filter(|n| !ours.contains(n)).collect();
            return Err(werr(format!(
                "parameter names differ (missing {missing:?}, unexpected {extra:?})"
            )));
        }
        // Check everything before changing anything, so a bad file leaves
        // the model as it was.
        let mut values = Vec::with_capacity(self.params.len());
        for (name, v) in &self.params {
            let view = st.tensor(name).map_err(|e| werr(e.to_string()))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(werr(format!("{name} is {:?}, expected F32", view.dtype())));
            }
            if view.shape() != v.as_tensor().dims() {
                return Err(werr(format!(
                    "{name} has shape {:?}, expected {:?}",
                    view.shape(),
                    v.as_tensor().dims()
                )));
            }
            let floats: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            values.push(floats);
        }
        debug_assert_eq!(PARAM_DTYPE, candle_core::DType::F32);
        for ((_, v), floats) in self.params.iter().zip(values) {
            v.set(&Tensor::from_vec(
                floats,
                v.as_tensor().dims(),
                &self.device,
            )?)?;
        }
        Ok(())
    }

    /// Writes the weights to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let buf = self.to_safetensors()?;
        std::fs::write(path, buf).map_err(|source| ModelError::Io {
            action: "write weights",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a model (spec and weights) from a safetensors file written by [`Model::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let buf = read_bounded(path, MAX_WEIGHTS_BYTES, "read weights")?;
        Model::from_safetensors(&buf, &path.display().to_string())
    }
}

/// Reads a whole file, refusing one larger than `max_bytes` before allocating.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64, action: &'static str) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| ModelError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(ModelError::Io {
            action,
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("file is {len} bytes, the limit is {max_bytes}")),
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max_bytes + 1).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}
