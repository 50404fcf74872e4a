//! MedMNIST `.npz` loading: a zip of `.npy` arrays with train/val/test images and labels.
//!
//! Every header field is checked (magic, version, dtype, memory order,
//! shape) and the data length must match the shape exactly, so a truncated,
//! mislabelled or hostile file is refused with the key and the reason
//! rather than misread. Sizes are bounded before anything is allocated.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Dataset, Splits};
use crate::error::{ModelError, Result};

/// Largest `.npy` member read (uncompressed): MedMNIST+ at 224x224 is a few
/// GB only for its biggest sets; this bound keeps a zip bomb from taking
/// the machine's memory.
pub const MAX_NPY_BYTES: u64 = 4 << 30;
/// Largest image side accepted from a file.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Where a problem was found, for error messages.
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Npz {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// A decoded `.npy` array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyU8 {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The header fields of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses a `.npy` file held in memory; only C-ordered uint8 arrays are accepted.
pub fn parse_npy_u8(bytes: &[u8]) -> std::result::Result<NpyU8, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy array (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not text")?;
    let header = parse_header(text)?;
    if header.fortran_order {
        return Err("array is in Fortran order; C order is expected".into());
    }
    if !matches!(header.descr.as_str(), "|u1" | "<u1" | ">u1" | "u1" | "=u1") {
        return Err(format!(
            "dtype {:?} is not supported; MedMNIST arrays are uint8 ('|u1')",
            header.descr
        ));
    }
    let expected = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[end..];
    if data.len() != expected {
        return Err(format!(
            "shape {:?} needs {expected} bytes of data, the array has {}",
            header.shape,
            data.len()
        ));
    }
    Ok(NpyU8 {
        shape: header.shape,
        data: data.to_vec(),
    })
}

/// Parses the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '|u1', 'fortran_order': False, 'shape': (4707, 28, 28), }`.
fn parse_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let t = text.trim_end_matches(['\n', ' ', '\0']).trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("header {t:?} is not a dict"))?;
    let value_of = |key: &str| -> std::result::Result<&str, String> {
        let pat = format!("'{key}':");
        let at = inner
            .find(&pat)
            .ok_or_else(|| format!("header has no {key:?} field"))?;
        Ok(inner[at + pat.len()..].trim_start())
    };
    let descr = {
        let v = value_of("descr")?;
        let v = v
            .strip_prefix('\'')
            .ok_or("descr is not a string (structured dtypes are not supported)")?;
        let close = v.find('\'').ok_or("unterminated descr")?;
        v[..close].to_string()
    };
    let fortran_order = {
        let v = value_of("fortran_order")?;
        if v.starts_with("False") {
            false
        } else if v.starts_with("True") {
            true
        } else {
            return Err("fortran_order is neither True nor False".into());
        }
    };
    let shape = {
        let v = value_of("shape")?;
        let v = v.strip_prefix('(').ok_or("shape is not a tuple")?;
        let close = v.find(')').ok_or("unterminated shape")?;
        v[..close]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| format!("shape entry {s:?} is not a size"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
    })
}

/// Reads the member `key.npy` of an open archive, with bounded memory.
fn read_member(
    ctx: &Ctx<'_>,
    zip: &mut zip::ZipArchive<std::fs::File>,
    key: &str,
) -> Result<NpyU8> {
    let name = format!("{key}.npy");
    let mut f = zip.by_name(&name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => ctx.err(format!("no array {key:?} in the archive")),
        other => ctx.err(format!("cannot open {name}: {other}")),
    })?;
    let declared = f.size();
    if declared > MAX_NPY_BYTES {
        return Err(ctx.err(format!(
            "{name} is {declared} bytes uncompressed, more than the {MAX_NPY_BYTES} limit"
        )));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    // take() bounds the read even if the declared size lies.
    (&mut f)
        .take(MAX_NPY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ctx.err(format!("cannot read {name}: {e}")))?;
    parse_npy_u8(&bytes).map_err(|r| ctx.err(format!("{name}: {r}")))
}

/// Turns an images array and a labels array into examples: grey levels in
/// [0, 1], and integer class labels.
fn to_examples(
    ctx: &Ctx<'_>,
    split: &str,
    images: NpyU8,
    labels: NpyU8,
) -> Result<(Vec<f32>, Vec<u32>, usize)> {
    let (n, h, w, c) = match images.shape.as_slice() {
        [n, h, w] => (*n, *h, *w, 1),
        [n, h, w, 3] => (*n, *h, *w, 3),
        [_, _, _, d] if *d > 4 => {
            return Err(ctx.err(format!(
                "{split}_images has shape {:?}: 3-D volumes are not supported, only 2-D images",
                images.shape
            )));
        }
        s => {
            return Err(ctx.err(format!(
                "{split}_images has shape {s:?}; expected (N, H, W) or (N, H, W, 3)"
            )));
        }
    };
    if h != w || h == 0 || h > MAX_IMAGE_SIDE {
        return Err(ctx.err(format!(
            "{split}_images are {h}x{w}; square images of 1 to {MAX_IMAGE_SIDE} pixels are expected"
        )));
    }
    let labels_n = match labels.shape.as_slice() {
        [m] | [m, 1] => *m,
        [_, k] => {
            return Err(ctx.err(format!(
                "{split}_labels has {k} columns: multi-label data sets are not supported, \
                 only one class label per image"
            )));
        }
        s => return Err(ctx.err(format!("{split}_labels has shape {s:?}; expected (N, 1)"))),
    };
    if labels_n != n {
        return Err(ctx.err(format!(
            "{split}_images has {n} images but {split}_labels has {labels_n} labels"
        )));
    }
    let pixels: Vec<f32> = if c == 1 {
        images.data.iter().map(|&v| f32::from(v) / 255.0).collect()
    } else {
        // ITU-R BT.601 luma: the networks take grey levels.
        images
            .data
            .chunks_exact(3)
            .map(|p| {
                (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
                    / 255.0
            })
            .collect()
    };
    let labels = labels.data.iter().map(|&l| u32::from(l)).collect();
    Ok((pixels, labels, h))
}

/// Loads a MedMNIST-layout `.npz` (keys `train_images`, `train_labels`,
/// `val_images`, ... `test_labels`) at its own image size. Colour sets are
/// converted to grey; the class count is the largest label plus one.
pub fn load_medmnist(path: &Path) -> Result<Splits> {
    let ctx = Ctx { path };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        action: "open",
        path: PathBuf::from(path),
        source,
    })?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| ctx.err(format!("not a zip archive: {e}")))?;
    let mut parts = Vec::new();
    for split in ["train", "val", "test"] {
        let images = read_member(&ctx, &mut zip, &format!("{split}_images"))?;
        let labels = read_member(&ctx, &mut zip, &format!("{split}_labels"))?;
        parts.push(to_examples(&ctx, split, images, labels)?);
    }
    let size = parts[0].2;
    if parts.iter().any(|p| p.2 != size) {
        return Err(ctx.err("train, val and test images differ in size"));
    }
    let classes = parts
        .iter()
        .flat_map(|p| p.1.iter())
        .max()
        .map_or(0, |&m| m as usize + 1)
        .max(2);
    let mut it =
        parts
            .into_iter()
            .zip(["train", "val", "test"])
            .map(|((pixels, labels, size), split)| {
                if labels.is_empty() {
                    return Err(ctx.err(format!("the {split} split is empty")));
                }
                Dataset::new(pixels, labels, size, classes)
            });
    let (train, val, test) = (
        it.next().expect("three splits")?,
        it.next().expect("three splits")?,
        it.next().expect("three splits")?,
    );
    Ok(Splits { train, val, test })
}

/// Writes `splits` as a MedMNIST-layout `.npz` (uint8 grey images of shape
/// (N, H, W), labels of shape (N, 1)), so that [`load_medmnist`] reads it
/// back. Grey levels are rounded to the nearest of 256 steps, which is
/// exact for data that came from 8-bit files. Used to hand each simulated
/// hospital its own share of a data set as an ordinary data file.
pub fn write_medmnist(path: &Path, splits: &Splits) -> Result<()> {
    use std::io::Write as _;
    let io = |source| ModelError::Io {
        action: "write",
        path: PathBuf::from(path),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let ctx = Ctx { path };
    for (name, d) in [
        ("train", &splits.train),
        ("val", &splits.val),
        ("test", &splits.test),
    ] {
        if d.classes() > 256 {
            return Err(ctx.err(format!("{} classes do not fit uint8 labels", d.classes())));
        }
        let s = d.size();
        let pixels: Vec<u8> = d
            .pixels()
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        let labels: Vec<u8> = d.labels().iter().map(|&l| l as u8).collect();
        for (key, shape, data) in [
            (
                format!("{name}_images"),
                format!("({}, {s}, {s})", d.len()),
                pixels,
            ),
            (
                format!("{name}_labels"),
                format!("({}, 1)", d.len()),
                labels,
            ),
        ] {
            zip.start_file(format!("{key}.npy"), options)
                .map_err(|e| ctx.err(format!("cannot add {key}: {e}")))?;
            zip.write_all(&npy_u8_header(&shape)).map_err(io)?;
            zip.write_all(&data).map_err(io)?;
        }
    }
    zip.finish()
        .map_err(|e| ctx.err(format!("cannot finish the archive: {e}")))?
        .flush()
        .map_err(io)?;
    Ok(())
}

/// A version 1.0 `.npy` header for a C-ordered uint8 array, padded so the
/// data starts on a 64-byte boundary as NumPy writes it.
fn npy_u8_header(shape: &str) -> Vec<u8> {
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        let h = parse_header(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (4707, 28, 28), }   \n",
        )
        .unwrap();
        assert_eq!(h.shape, vec![4707, 28, 28]);
        assert_eq!(h.descr, "|u1");
        assert!(!h.fortran_order);
        let h = parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (5,), }").unwrap();
        assert_eq!(h.shape, vec![5]);
        assert!(h.fortran_order);
        assert!(parse_header("{'descr': '|u1', 'shape': (1,)}").is_err());
        assert!(parse_header("{'descr': '|u1', 'fortran_order': False, 'shape': (a,)}").is_err());
    }

    #[test]
    fn written_archives_read_back() {
        let d = |n: usize, seed: u32| {
            let images = (0..n * 9)
                .map(|i| ((i as u32 * 37 + seed) % 256) as f32 / 255.0)
                .collect();
            let labels = (0..n).map(|i| (i % 2) as u32).collect();
            Dataset::new(images, labels, 3, 2).unwrap()
        };
        let splits = Splits {
            train: d(5, 1),
            val: d(2, 2),
            test: d(3, 3),
        };
        let dir = std::env::temp_dir().join(format!("primia-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard.npz");
        write_medmnist(&path, &splits).unwrap();
        let back = load_medmnist(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.train, splits.train);
        assert_eq!(back.val, splits.val);
        assert_eq!(back.test, splits.test);
        let h = npy_u8_header("(5, 3, 3)");
        assert_eq!(h.len() % 64, 0);
    }
}
