//! Decoding of real medical image files (DICOM, PNG, JPEG) and folders of them.
//!
//! [`decode_file`] turns one file into a [`DecodedImage`]: its header facts
//! and the stored pixel values of its first frame, as pydicom's
//! `pixel_array` gives them. [`DecodedImage::to_model_input`] turns that into
//! what the network eats: one grey channel in `[0, 1]`, `size` x `size`.
//! [`load_folder`] does both for a folder of class subfolders and reports
//! every file it could not use.
//!
//! The format is decided by content, never by file name. DICOM goes through
//! dicom-rs for parsing (after a structural check, see `dicom_scan`), with
//! pixel data decoded here: native (little and big endian, implicit and
//! explicit VR, deflated; 1, 8, 16 and 32 bits; planar configuration 0 and
//! 1), RLE Lossless, JPEG baseline, extended (8-bit) and lossless (through
//! jpeg-decoder) and JPEG 2000 (through the pure-Rust openjp2). JPEG-LS,
//! 12-bit lossy JPEG, MPEG and the rest are refused with an error naming the
//! transfer syntax.
//!
//! Every input is untrusted: a malformed file gives an [`ImagingError`]
//! naming the file and the reason, never a panic, and nothing is allocated
//! beyond the bounds in [`Limits`].

mod convert;
mod dicom;
mod dicom_scan;
mod error;
mod folder;
mod raster;
mod rle;

use std::io::Read;
use std::path::Path;

pub use error::ImagingError;
pub use folder::{
    FolderLoad, LoadOptions, MAX_MODEL_INPUT_SIZE, Skipped, load_folder, load_folder_with,
};

/// Bounds on what decoding one file may hold in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read at all (and largest inflated deflate data set).
    pub max_file_bytes: u64,
    /// Largest first frame, in samples (rows x columns x samples per pixel).
    /// Decoded samples are held as `f32`, so this bounds that buffer at four
    /// times as many bytes.
    pub max_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A multi-frame CT series of a few hundred slices fits; a file
            // beyond this is not one image a training run should read whole.
            max_file_bytes: 512 << 20,
            // 64 Mi samples: a 4096 x 5300 mammogram (21.7 M) fits with room;
            // 256 MiB as f32.
            max_samples: 64 << 20,
        }
    }
}

/// The container format, decided from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Dicom,
    Png,
    Jpeg,
}

impl ImageFormat {
    /// Lowercase name, as `primiad inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dicom => "dicom",
            Self::Png => "png",
            Self::Jpeg => "jpeg",
        }
    }

    /// Decides the format from the first bytes: PNG and JPEG signatures,
    /// DICOM with or without its 128-byte preamble and `DICM`.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        // `DICM` after the preamble first: the preamble is free for other
        // uses (dual-format files put a TIFF header there).
        if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            Some(Self::Dicom)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if dicom_scan::looks_like_dicom(bytes) {
            Some(Self::Dicom)
        } else {
            None
        }
    }
}

/// A DICOM transfer syntax: its UID and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSyntax {
    pub uid: String,
    pub name: String,
}

/// How the decoded samples are to be read as colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColourModel {
    /// One sample, the lowest value displayed white.
    Monochrome1,
    /// One sample, the lowest value displayed black.
    Monochrome2,
    /// Three samples, red, green, blue (also what JPEG and JPEG 2000
    /// decoders give for YCbCr-coded DICOM, as pydicom does).
    Rgb,
    /// Three samples, full-range Y, Cb, Cr as stored (native or RLE
    /// `YBR_FULL`).
    YbrFull,
}

/// The modality LUT of a DICOM file: stored value x slope + intercept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

/// The VOI LUT function of a window (PS3.3 C.11.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// The first VOI window of a DICOM file (Window Center / Width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

/// Minimum, maximum and mean of a set of pixel values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl PixelStats {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        let mut sum = 0.0;
        let mut n = 0usize;
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
        if n == 0 {
            return Self {
                min: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Self {
            min,
            max,
            mean: sum / n as f64,
        }
    }
}

/// One decoded image file: header facts and the first frame's stored values.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub format: ImageFormat,
    /// DICOM only. For a bare data set without a file meta group, the one
    /// inferred from its first element.
    pub transfer_syntax: Option<TransferSyntax>,
    pub rows: usize,
    pub columns: usize,
    pub samples_per_pixel: usize,
    /// As the file states it (`MONOCHROME2`, `RGB`...); PNG and JPEG files
    /// are described as `MONOCHROME2` or `RGB`.
    pub photometric: String,
    /// How to read `pixels` as colour (after any codec colour conversion).
    pub colour: ColourModel,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub number_of_frames: u32,
    /// The first frame's stored values, row by row, samples of a pixel
    /// adjacent (planar configuration 1 is reordered to this), unsigned
    /// values masked to Bits Stored and signed ones sign-extended from it,
    /// as pydicom does. `f32` is exact up to 2^24; 32-bit values beyond
    /// that lose their low bits.
    pub pixels: Vec<f32>,
    /// Present when the file has Rescale Slope or Rescale Intercept.
    pub rescale: Option<Rescale>,
    /// The first valid window, when the file has one.
    pub window: Option<Window>,
}

impl DecodedImage {
    /// Statistics of the stored values (all samples of the first frame).
    pub fn stats(&self) -> PixelStats {
        PixelStats::of(self.pixels.iter().map(|&v| f64::from(v)))
    }

    /// Statistics after the modality LUT, when the file has one. Computed in
    /// `f64`, as pydicom's `apply_modality_lut` does.
    pub fn rescaled_stats(&self) -> Option<PixelStats> {
        let r = self.rescale?;
        Some(PixelStats::of(
            self.pixels
                .iter()
                .map(|&v| f64::from(v) * r.slope + r.intercept),
        ))
    }

    /// The first frame after the modality LUT, when the file has one.
    pub fn rescaled(&self) -> Option<Vec<f32>> {
        let r = self.rescale?;
        Some(
            self.pixels
                .iter()
                .map(|&v| (f64::from(v) * r.slope + r.intercept) as f32)
                .collect(),
        )
    }

    /// The network's input: `size * size` grey values in `[0, 1]`, row by
    /// row: BT.601 luma for colour, the modality LUT, the first VOI window
    /// (or the image's range for monochrome DICOM without one, the bit
    /// depth's full scale otherwise), MONOCHROME1 inverted, then area
    /// averaging to shrink and bilinear interpolation to enlarge, each axis
    /// on its own (a non-square image is stretched). An empty vector for
    /// `size` 0.
    pub fn to_model_input(&self, size: usize) -> Vec<f32> {
        convert::to_model_input(self, size)
    }
}

/// Reads and decodes one file with the default [`Limits`].
pub fn decode_file(path: &Path) -> Result<DecodedImage, ImagingError> {
    decode_file_with(path, &Limits::default())
}

/// Reads and decodes one file, refusing anything beyond `limits`.
pub fn decode_file_with(path: &Path, limits: &Limits) -> Result<DecodedImage, ImagingError> {
    let bytes = read_bounded(path, limits.max_file_bytes)?;
    decode_bytes(&bytes, path, limits)
}

/// Decodes a file's content; `origin` names it in errors.
pub fn decode_bytes(
    bytes: &[u8],
    origin: &Path,
    limits: &Limits,
) -> Result<DecodedImage, ImagingError> {
    match ImageFormat::sniff(bytes) {
        Some(ImageFormat::Dicom) => dicom::decode(bytes, origin, limits),
        Some(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => {
            raster::decode(bytes, format, origin, limits)
        }
        None => Err(ImagingError::UnknownFormat {
            path: origin.to_owned(),
        }),
    }
}

/// Reads a whole file, refusing one larger than `max_bytes` without reading
/// it (and without trusting the size the directory reports: the read itself
/// stops one byte past the limit).
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImagingError> {
    let io = |cause| ImagingError::Io {
        path: path.to_owned(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(ImagingError::FileTooLarge {
            path: path.to_owned(),
            bytes: len,
            max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ImagingError::FileTooLarge {
            path: path.to_owned(),
            bytes: bytes.len() as u64,
            max_bytes,
        });
    }
    Ok(bytes)
}
