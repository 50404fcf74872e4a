//! DICOM files: attributes through dicom-rs, first-frame pixel data decoded here.
//!
//! dicom-pixeldata's own decoding is not used: its `to_vec` conversions
//! refuse planar configuration 1, 1-bit and 32-bit data, and its RLE, JPEG
//! and JPEG 2000 adapters index and unwrap on sizes taken from the file, so
//! a corrupt file panics them. Native data is reinterpreted here from the
//! raw element bytes; RLE is decoded in [`super::rle`]; JPEG and JPEG 2000
//! frames go to jpeg-decoder and openjp2 after their headers are checked
//! against the DICOM attributes.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::dicom_scan::{self, Encoding, Framing};
use super::{
    ColourModel, DecodedImage, ImageFormat, ImagingError, Limits, Rescale, TransferSyntax,
    VoiFunction, Window, rle,
};

/// How a transfer syntax's pixel data is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PixelCodec {
    Native,
    Encapsulated(Compression),
}

/// The codecs of encapsulated pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    /// Encapsulated Uncompressed Explicit VR Little Endian: native bytes
    /// split into fragments.
    None,
    Rle,
    Jpeg,
    Jpeg2000,
}

fn codec_for(ts_uid: &str) -> Option<PixelCodec> {
    use Compression as C;
    Some(match ts_uid {
        dicom_scan::IMPLICIT_VR_LE
        | dicom_scan::EXPLICIT_VR_LE
        | dicom_scan::EXPLICIT_VR_BE
        | dicom_scan::DEFLATED_EXPLICIT_VR_LE => PixelCodec::Native,
        "1.2.840.10008.1.2.1.98" => PixelCodec::Encapsulated(C::None),
        "1.2.840.10008.1.2.5" => PixelCodec::Encapsulated(C::Rle),
        // Baseline, extended (8-bit only: jpeg-decoder refuses 12-bit lossy
        // with a clear error), lossless, lossless first-order prediction.
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => PixelCodec::Encapsulated(C::Jpeg),
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => {
            PixelCodec::Encapsulated(C::Jpeg2000)
        }
        // JPEG-LS (.4.80/.81) would need CharLS, a C++ library this build
        // does not link; HTJ2K, JPEG 2000 part 2, JPEG XL, MPEG and the
        // deflated-frame syntax are not decoded either.
        _ => return None,
    })
}

/// The registry's name for a transfer syntax UID.
fn ts_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_owned())
        .unwrap_or_else(|| "unknown transfer syntax".to_owned())
}

/// Context for building errors about one file.
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn malformed(&self, reason: impl Into<String>) -> ImagingError {
        ImagingError::MalformedDicom {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }
    fn unsupported(&self, reason: impl Into<String>) -> ImagingError {
        ImagingError::Unsupported {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }
    fn invalid(&self, attribute: &'static str, reason: impl Into<String>) -> ImagingError {
        ImagingError::InvalidAttribute {
            path: self.path.to_owned(),
            attribute,
            reason: reason.into(),
        }
    }
    fn codec(&self, codec: &'static str, reason: impl Into<String>) -> ImagingError {
        ImagingError::Decode {
            path: self.path.to_owned(),
            codec,
            reason: reason.into(),
        }
    }
}

/// A message with its chain of causes, as dicom-rs nests them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The image attributes decoding needs, checked.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub rows: usize,
    pub columns: usize,
    pub samples_per_pixel: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub planar: bool,
    pub photometric: String,
    pub number_of_frames: u32,
}

impl Layout {
    pub fn pixels(&self) -> usize {
        self.rows * self.columns
    }
    pub fn samples(&self) -> usize {
        self.pixels() * self.samples_per_pixel
    }
    /// Bytes of one native frame (1-bit frames are packed).
    fn frame_bytes(&self) -> usize {
        if self.bits_allocated == 1 {
            self.samples().div_ceil(8)
        } else {
            self.samples() * usize::from(self.bits_allocated / 8)
        }
    }

    /// A raw sample as the stored value: unsigned masked to Bits Stored,
    /// signed sign-extended from it (pydicom's default
    /// `correct_unused_bits`).
    pub fn stored_value(&self, raw: u64) -> f32 {
        let bits = u32::from(self.bits_stored);
        let masked = if bits >= 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        if self.signed && bits > 0 && bits < 64 && masked >> (bits - 1) & 1 == 1 {
            (masked as i64 - (1i64 << bits)) as f32
        } else {
            masked as f32
        }
    }
}

pub(crate) fn decode(
    bytes: &[u8],
    path: &Path,
    limits: &Limits,
) -> Result<DecodedImage, ImagingError> {
    let cx = Ctx { path };
    let meta = dicom_scan::read_meta(bytes).map_err(|r| cx.malformed(r))?;
    let ts = TransferSyntax {
        name: ts_name(&meta.ts_uid),
        uid: meta.ts_uid.clone(),
    };
    let Some(codec) = codec_for(&ts.uid) else {
        return Err(ImagingError::UnsupportedTransferSyntax {
            path: path.to_owned(),
            uid: ts.uid,
            name: ts.name,
        });
    };
    let max_inflated = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    let dataset =
        dicom_scan::dataset_bytes(bytes, &meta, max_inflated).map_err(|r| cx.malformed(r))?;
    let encoding = match meta.framing {
        Framing::Bare if meta.ts_uid == dicom_scan::IMPLICIT_VR_LE => Encoding::ImplicitLe,
        _ => dicom_scan::encoding_of(&meta.ts_uid),
    };
    match &dataset {
        // Offsets in errors are file offsets...
        Cow::Borrowed(_) => dicom_scan::check_dataset(bytes, meta.dataset_start, encoding),
        // ...or, after inflation, offsets in what was inflated.
        Cow::Owned(inflated) => dicom_scan::check_dataset(inflated, 0, encoding)
            .map_err(|r| format!("{r} (offsets in the inflated data set)")),
    }
    .map_err(|r| cx.malformed(r))?;

    // The structure is sound: parse it with the transfer syntax of its
    // encoding (the deflated one is already inflated).
    let parse_uid = match encoding {
        Encoding::ImplicitLe => dicom_scan::IMPLICIT_VR_LE,
        Encoding::ExplicitLe => dicom_scan::EXPLICIT_VR_LE,
        Encoding::ExplicitBe => dicom_scan::EXPLICIT_VR_BE,
    };
    let parse_ts = TransferSyntaxRegistry
        .get(parse_uid)
        .ok_or_else(|| cx.malformed(format!("transfer syntax {parse_uid} is not registered")))?;
    let obj = InMemDicomObject::read_dataset_with_ts(&dataset[..], parse_ts)
        .map_err(|e| cx.malformed(chain(&e)))?;

    let pixel_element = match obj.get(tags::PIXEL_DATA) {
        Some(e) => e,
        None if obj.get(tags::FLOAT_PIXEL_DATA).is_some()
            || obj.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some() =>
        {
            return Err(cx.unsupported("float pixel data (7FE0,0008/0009) is not supported"));
        }
        None => {
            return Err(ImagingError::NoPixelData {
                path: path.to_owned(),
            });
        }
    };

    let layout = read_layout(&obj, &cx)?;
    if layout.samples() > limits.max_samples {
        return Err(ImagingError::ImageTooLarge {
            path: path.to_owned(),
            rows: layout.rows,
            columns: layout.columns,
            samples_per_pixel: layout.samples_per_pixel,
            max_samples: limits.max_samples,
        });
    }
    let colour = colour_of(&layout, codec, &cx)?;

    let pixels = match (codec, pixel_element.value()) {
        // The common case, fast: 16-bit samples that dicom-rs already
        // decoded to native words (in either byte order).
        (PixelCodec::Native, Value::Primitive(PrimitiveValue::U16(words)))
            if layout.bits_allocated == 16 =>
        {
            let n = layout.samples();
            if words.len() < n {
                return Err(ImagingError::PixelDataTruncated {
                    path: path.to_owned(),
                    needed: layout.frame_bytes(),
                    found: words.len() * 2,
                });
            }
            let samples: Vec<f32> = words[..n]
                .iter()
                .map(|&w| layout.stored_value(u64::from(w)))
                .collect();
            if layout.planar && layout.samples_per_pixel > 1 {
                interleave_planes(&samples, layout.samples_per_pixel)
            } else {
                samples
            }
        }
        (PixelCodec::Native, Value::Primitive(value)) => {
            let big_endian = encoding == Encoding::ExplicitBe;
            let raw = file_order_bytes(
                value,
                big_endian,
                pixel_element.vr(),
                &layout,
                layout.frame_bytes(),
            )
            .map_err(|r| cx.unsupported(r))?;
            native_samples(&raw, big_endian, &layout, path)?
        }
        (PixelCodec::Native, _) => {
            return Err(
                cx.malformed("encapsulated pixel data in a native (uncompressed) transfer syntax")
            );
        }
        (PixelCodec::Encapsulated(_), Value::Primitive(_) | Value::Sequence(_)) => {
            return Err(cx.malformed(format!(
                "transfer syntax {} needs encapsulated pixel data",
                ts.name
            )));
        }
        (PixelCodec::Encapsulated(compression), Value::PixelSequence(seq)) => {
            let fragments = seq.fragments();
            if fragments.is_empty() {
                return Err(cx.malformed("encapsulated pixel data holds no fragments"));
            }
            match compression {
                // RLE has exactly one fragment per frame (PS3.5 G.2).
                Compression::Rle => {
                    rle::decode_frame(&fragments[0], &layout).map_err(|r| cx.codec("RLE", r))?
                }
                Compression::None => {
                    let frame = first_frame(fragments, seq.offset_table(), &layout);
                    native_samples(&frame, false, &layout, path)?
                }
                Compression::Jpeg => {
                    let frame = first_frame(fragments, seq.offset_table(), &layout);
                    decode_jpeg(&frame, &layout, limits, &cx)?
                }
                Compression::Jpeg2000 => {
                    let frame = first_frame(fragments, seq.offset_table(), &layout);
                    decode_j2k(&frame, &layout, &cx)?
                }
            }
        }
    };

    Ok(DecodedImage {
        format: ImageFormat::Dicom,
        transfer_syntax: Some(ts),
        rows: layout.rows,
        columns: layout.columns,
        samples_per_pixel: layout.samples_per_pixel,
        photometric: layout.photometric.clone(),
        colour,
        bits_allocated: layout.bits_allocated,
        bits_stored: layout.bits_stored,
        signed: layout.signed,
        number_of_frames: layout.number_of_frames,
        pixels,
        rescale: read_rescale(&obj, &cx)?,
        window: read_window(&obj),
    })
}

/// An element that is absent or holds nothing counts as absent, as in
/// pydicom.
fn present(obj: &InMemDicomObject, tag: Tag) -> Option<&dicom_object::mem::InMemElement> {
    let e = obj.get(tag)?;
    match e.value() {
        Value::Primitive(PrimitiveValue::Empty) => None,
        Value::Primitive(p) if p.to_str().trim_matches(['\0', ' ']).is_empty() => None,
        _ => Some(e),
    }
}

fn get_u16(obj: &InMemDicomObject, tag: Tag) -> Result<Option<u16>, String> {
    match present(obj, tag) {
        None => Ok(None),
        Some(e) => e.to_int::<u16>().map(Some).map_err(|err| err.to_string()),
    }
}

fn get_f64(obj: &InMemDicomObject, tag: Tag) -> Result<Option<f64>, String> {
    match present(obj, tag) {
        None => Ok(None),
        Some(e) => {
            let v = e.to_float64().map_err(|err| err.to_string())?;
            if v.is_finite() {
                Ok(Some(v))
            } else {
                Err(format!("{v} is not a finite number"))
            }
        }
    }
}

fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

fn read_layout(obj: &InMemDicomObject, cx: &Ctx<'_>) -> Result<Layout, ImagingError> {
    let required = |tag: Tag, name: &'static str| -> Result<u16, ImagingError> {
        get_u16(obj, tag)
            .map_err(|r| cx.invalid(name, r))?
            .ok_or_else(|| cx.invalid(name, "missing"))
    };
    let optional = |tag: Tag, name: &'static str, default: u16| -> Result<u16, ImagingError> {
        Ok(get_u16(obj, tag)
            .map_err(|r| cx.invalid(name, r))?
            .unwrap_or(default))
    };

    let rows = required(tags::ROWS, "Rows (0028,0010)")?;
    let columns = required(tags::COLUMNS, "Columns (0028,0011)")?;
    if rows == 0 || columns == 0 {
        return Err(cx.invalid("image size", format!("{rows}x{columns}")));
    }
    let samples_per_pixel = optional(tags::SAMPLES_PER_PIXEL, "Samples per Pixel (0028,0002)", 1)?;
    let bits_allocated = required(tags::BITS_ALLOCATED, "Bits Allocated (0028,0100)")?;
    if !matches!(bits_allocated, 1 | 8 | 16 | 32) {
        return Err(cx.unsupported(format!(
            "Bits Allocated {bits_allocated} (only 1, 8, 16 and 32 are decoded)"
        )));
    }
    let bits_stored = optional(tags::BITS_STORED, "Bits Stored (0028,0101)", bits_allocated)?;
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(cx.invalid(
            "Bits Stored (0028,0101)",
            format!("{bits_stored} with Bits Allocated {bits_allocated}"),
        ));
    }
    let representation = optional(
        tags::PIXEL_REPRESENTATION,
        "Pixel Representation (0028,0103)",
        0,
    )?;
    if representation > 1 {
        return Err(cx.invalid(
            "Pixel Representation (0028,0103)",
            representation.to_string(),
        ));
    }
    let planar = optional(
        tags::PLANAR_CONFIGURATION,
        "Planar Configuration (0028,0006)",
        0,
    )?;
    if planar > 1 {
        return Err(cx.invalid("Planar Configuration (0028,0006)", planar.to_string()));
    }
    let photometric = get_str(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| {
        // Absent in some old files; pydicom assumes the same.
        if samples_per_pixel == 3 {
            "RGB"
        } else {
            "MONOCHROME2"
        }
        .to_owned()
    });
    let number_of_frames = match present(obj, tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => {
            let n = e
                .to_int::<i64>()
                .map_err(|err| cx.invalid("Number of Frames (0028,0008)", err.to_string()))?;
            u32::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| cx.invalid("Number of Frames (0028,0008)", n.to_string()))?
        }
    };
    if bits_allocated == 1 && samples_per_pixel != 1 {
        return Err(cx.unsupported("1-bit pixel data with more than one sample per pixel"));
    }
    if bits_allocated == 1 && representation == 1 {
        return Err(cx.invalid("Pixel Representation (0028,0103)", "signed 1-bit data"));
    }
    Ok(Layout {
        rows: usize::from(rows),
        columns: usize::from(columns),
        samples_per_pixel: usize::from(samples_per_pixel),
        bits_allocated,
        bits_stored,
        signed: representation == 1,
        planar: planar == 1,
        photometric,
        number_of_frames,
    })
}

fn colour_of(
    layout: &Layout,
    codec: PixelCodec,
    cx: &Ctx<'_>,
) -> Result<ColourModel, ImagingError> {
    let spp = layout.samples_per_pixel;
    let pi = layout.photometric.as_str();
    let need = |n: usize, model: ColourModel| {
        if spp == n {
            Ok(model)
        } else {
            Err(cx.invalid(
                "Samples per Pixel (0028,0002)",
                format!("{spp} with Photometric Interpretation {pi}"),
            ))
        }
    };
    // The JPEG decoder turns YCbCr into RGB (told so by the photometric
    // interpretation) and openjp2 undoes the JPEG 2000 component transform
    // of YBR_ICT and YBR_RCT, as pydicom's decoders do; native, RLE and
    // JPEG 2000 YBR_FULL data are the stored samples.
    let jpeg = codec == PixelCodec::Encapsulated(Compression::Jpeg);
    let j2k = codec == PixelCodec::Encapsulated(Compression::Jpeg2000);
    match pi {
        "MONOCHROME1" => need(1, ColourModel::Monochrome1),
        "MONOCHROME2" => need(1, ColourModel::Monochrome2),
        "RGB" => need(3, ColourModel::Rgb),
        "YBR_FULL" | "YBR_FULL_422" if jpeg => need(3, ColourModel::Rgb),
        "YBR_ICT" | "YBR_RCT" if j2k => need(3, ColourModel::Rgb),
        "YBR_FULL" => need(3, ColourModel::YbrFull),
        "PALETTE COLOR" => Err(cx.unsupported("PALETTE COLOR images are not supported")),
        other => Err(cx.unsupported(format!(
            "Photometric Interpretation {other} with this transfer syntax"
        ))),
    }
}

fn read_rescale(obj: &InMemDicomObject, cx: &Ctx<'_>) -> Result<Option<Rescale>, ImagingError> {
    let slope = get_f64(obj, tags::RESCALE_SLOPE)
        .map_err(|r| cx.invalid("Rescale Slope (0028,1053)", r))?;
    let intercept = get_f64(obj, tags::RESCALE_INTERCEPT)
        .map_err(|r| cx.invalid("Rescale Intercept (0028,1052)", r))?;
    if slope.is_none() && intercept.is_none() {
        return Ok(None);
    }
    Ok(Some(Rescale {
        slope: slope.unwrap_or(1.0),
        intercept: intercept.unwrap_or(0.0),
    }))
}

/// The first window, when it is usable; an invalid one (width below the
/// function's minimum, an unparsable value) is ignored rather than fatal,
/// since the image is still usable with range normalisation.
fn read_window(obj: &InMemDicomObject) -> Option<Window> {
    let first = |tag: Tag| -> Option<f64> {
        let v = obj.get(tag)?.value().to_multi_float64().ok()?;
        v.first().copied().filter(|v| v.is_finite())
    };
    let center = first(tags::WINDOW_CENTER)?;
    let width = first(tags::WINDOW_WIDTH)?;
    let function = match get_str(obj, tags::VOILUT_FUNCTION).as_deref() {
        Some("LINEAR_EXACT") => VoiFunction::LinearExact,
        Some("SIGMOID") => VoiFunction::Sigmoid,
        _ => VoiFunction::Linear,
    };
    let valid = match function {
        VoiFunction::Linear => width >= 1.0,
        VoiFunction::LinearExact | VoiFunction::Sigmoid => width > 0.0,
    };
    valid.then_some(Window {
        center,
        width,
        function,
    })
}

/// The first `needed` bytes of native pixel data in the order the file
/// holds them. dicom-rs hands OW data over as native-endian 16-bit words, so
/// the words are written back in the file's byte order, then the 8-bit-in-OW
/// big endian case is swapped as pydicom does (such words hold two samples,
/// the first in the low byte).
fn file_order_bytes<'a>(
    value: &'a PrimitiveValue,
    big_endian: bool,
    vr: VR,
    layout: &Layout,
    needed: usize,
) -> Result<Cow<'a, [u8]>, String> {
    // Only the words that hold the first frame are written back.
    let (w2, w4) = (needed.div_ceil(2), needed.div_ceil(4));
    let bytes: Cow<'a, [u8]> = match value {
        PrimitiveValue::U8(b) => Cow::Borrowed(&b[..]),
        PrimitiveValue::U16(w) => Cow::Owned(
            w.iter()
                .take(w2)
                .flat_map(|x| {
                    if big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
        PrimitiveValue::I16(w) => Cow::Owned(
            w.iter()
                .take(w2)
                .flat_map(|x| {
                    if big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
        PrimitiveValue::U32(w) => Cow::Owned(
            w.iter()
                .take(w4)
                .flat_map(|x| {
                    if big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
        PrimitiveValue::I32(w) => Cow::Owned(
            w.iter()
                .take(w4)
                .flat_map(|x| {
                    if big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
        PrimitiveValue::Empty => Cow::Borrowed(&[][..]),
        _ => return Err(format!("pixel data held as {vr:?} values")),
    };
    if big_endian && layout.bits_allocated == 8 && vr == VR::OW {
        let mut swapped = bytes.into_owned();
        for pair in swapped.chunks_exact_mut(2) {
            pair.swap(0, 1);
        }
        return Ok(Cow::Owned(swapped));
    }
    Ok(bytes)
}

/// Native first-frame samples from file-order bytes.
pub(crate) fn native_samples(
    raw: &[u8],
    big_endian: bool,
    layout: &Layout,
    path: &Path,
) -> Result<Vec<f32>, ImagingError> {
    let needed = layout.frame_bytes();
    if raw.len() < needed {
        return Err(ImagingError::PixelDataTruncated {
            path: path.to_owned(),
            needed,
            found: raw.len(),
        });
    }
    let raw = &raw[..needed];
    let n = layout.samples();
    let mut out = Vec::with_capacity(n);
    match layout.bits_allocated {
        // Packed bits, the first pixel in the least significant bit.
        1 => out.extend((0..n).map(|i| f32::from((raw[i / 8] >> (i % 8)) & 1))),
        8 => out.extend(raw.iter().map(|&b| layout.stored_value(u64::from(b)))),
        16 => out.extend(raw.chunks_exact(2).map(|c| {
            let b = [c[0], c[1]];
            let v = if big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            };
            layout.stored_value(u64::from(v))
        })),
        _ => out.extend(raw.chunks_exact(4).map(|c| {
            let b = [c[0], c[1], c[2], c[3]];
            let v = if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            };
            layout.stored_value(u64::from(v))
        })),
    }
    if layout.planar && layout.samples_per_pixel > 1 {
        out = interleave_planes(&out, layout.samples_per_pixel);
    }
    Ok(out)
}

/// Planar configuration 1 (all reds, all greens, all blues) to pixel order.
fn interleave_planes(planes: &[f32], spp: usize) -> Vec<f32> {
    let n = planes.len() / spp;
    let mut out = vec![0.0; planes.len()];
    for s in 0..spp {
        for (i, &v) in planes[s * n..(s + 1) * n].iter().enumerate() {
            out[i * spp + s] = v;
        }
    }
    out
}

/// The bytes of the first frame of encapsulated pixel data. A single-frame
/// image may span several fragments; a multi-frame one has one fragment per
/// frame, or a Basic Offset Table that says where frame 1 starts; failing
/// both, all fragments are handed over (JPEG and JPEG 2000 decoders stop at
/// the end of the first codestream).
fn first_frame<'a>(fragments: &'a [Vec<u8>], offsets: &[u32], layout: &Layout) -> Cow<'a, [u8]> {
    if fragments.len() == 1 {
        return Cow::Borrowed(&fragments[0]);
    }
    if layout.number_of_frames > 1 {
        if fragments.len() == layout.number_of_frames as usize {
            return Cow::Borrowed(&fragments[0]);
        }
        if let (Some(&start), Some(&next)) = (offsets.first(), offsets.get(1)) {
            // Offsets count from the first fragment's item header (8 bytes).
            let mut position = 0u64;
            let mut out = Vec::new();
            for fragment in fragments {
                if position >= u64::from(next) {
                    break;
                }
                if position >= u64::from(start) {
                    out.extend_from_slice(fragment);
                }
                position += fragment.len() as u64 + 8;
            }
            if !out.is_empty() {
                return Cow::Owned(out);
            }
        }
    }
    Cow::Owned(fragments.concat())
}

/// Runs a third-party codec on untrusted bytes, turning a panic into an
/// error. The last resort the no-panic rule allows: jpeg-decoder and the
/// openjp2 port check most input, but their internals on hostile entropy
/// data cannot be validated from outside short of decoding it. Everything
/// that can be checked first (dimensions, component counts, precision) is.
fn guarded<T>(
    codec: &'static str,
    cx: &Ctx<'_>,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, ImagingError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(reason)) => Err(cx.codec(codec, reason)),
        Err(_) => Err(cx.codec(codec, "the decoder failed on malformed data")),
    }
}

fn decode_jpeg(
    frame: &[u8],
    layout: &Layout,
    limits: &Limits,
    cx: &Ctx<'_>,
) -> Result<Vec<f32>, ImagingError> {
    use jpeg_decoder::{ColorTransform, Decoder, PixelFormat};
    let max_bytes = limits.max_samples.saturating_mul(2);
    guarded("JPEG", cx, || {
        let mut decoder = Decoder::new(frame);
        decoder.set_max_decoding_buffer_size(max_bytes);
        // DICOM says what the components are; JPEG markers are often absent.
        match layout.photometric.as_str() {
            "RGB" => decoder.set_color_transform(ColorTransform::RGB),
            "YBR_FULL" | "YBR_FULL_422" => decoder.set_color_transform(ColorTransform::YCbCr),
            _ => {}
        }
        decoder.read_info().map_err(|e| e.to_string())?;
        let info = decoder.info().ok_or("no frame header")?;
        let channels = match info.pixel_format {
            PixelFormat::L8 | PixelFormat::L16 => 1,
            PixelFormat::RGB24 => 3,
            PixelFormat::CMYK32 => return Err("CMYK JPEG data".to_owned()),
        };
        if usize::from(info.width) != layout.columns
            || usize::from(info.height) != layout.rows
            || channels != layout.samples_per_pixel
        {
            return Err(format!(
                "JPEG frame is {}x{} with {channels} components, the DICOM header says {}x{} with {}",
                info.width, info.height, layout.columns, layout.rows, layout.samples_per_pixel
            ));
        }
        if info.pixel_format == PixelFormat::L16 && layout.bits_allocated < 16 {
            return Err(format!(
                "JPEG precision above 8 bits with Bits Allocated {}",
                layout.bits_allocated
            ));
        }
        let data = decoder.decode().map_err(|e| e.to_string())?;
        let n = layout.samples();
        let samples: Vec<f32> = if info.pixel_format == PixelFormat::L16 {
            // jpeg-decoder writes 16-bit samples in native byte order.
            data.chunks_exact(2)
                .take(n)
                .map(|c| layout.stored_value(u64::from(u16::from_ne_bytes([c[0], c[1]]))))
                .collect()
        } else {
            data.iter()
                .take(n)
                .map(|&b| layout.stored_value(u64::from(b)))
                .collect()
        };
        if samples.len() != n {
            return Err(format!(
                "JPEG decoder produced {} samples, expected {n}",
                samples.len()
            ));
        }
        Ok(samples)
    })
}

/// The image and component geometry a JPEG 2000 SIZ marker declares.
struct J2kSize {
    width: u64,
    height: u64,
    /// (precision in bits, signed, x subsampling, y subsampling)
    components: Vec<(u8, bool, u8, u8)>,
}

/// Reads the SIZ marker segment of a JPEG 2000 codestream (raw, or inside
/// a JP2 file, found by searching for SOC followed by SIZ).
fn j2k_size(data: &[u8]) -> Result<J2kSize, String> {
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    let start = data
        .windows(4)
        .take(4096)
        .position(|w| w == SOC_SIZ)
        .ok_or("no JPEG 2000 codestream header (SOC, SIZ)")?;
    let siz = &data[start + 4..];
    let be16 = |at: usize| {
        siz.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let be32 = |at: usize| {
        siz.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let short = || "JPEG 2000 SIZ marker truncated".to_owned();
    // Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4) XTsiz YTsiz XTOsiz YTOsiz Csiz(2)
    let xsiz = be32(4).ok_or_else(short)?;
    let ysiz = be32(8).ok_or_else(short)?;
    let xosiz = be32(12).ok_or_else(short)?;
    let yosiz = be32(16).ok_or_else(short)?;
    let csiz = be16(36).ok_or_else(short)?;
    if xosiz >= xsiz || yosiz >= ysiz {
        return Err("JPEG 2000 image offset beyond its size".to_owned());
    }
    let mut components = Vec::new();
    for c in 0..usize::from(csiz.min(16_384)) {
        let at = 38 + 3 * c;
        let b = siz.get(at..at + 3).ok_or_else(short)?;
        components.push(((b[0] & 0x7F) + 1, b[0] & 0x80 != 0, b[1], b[2]));
    }
    Ok(J2kSize {
        width: u64::from(xsiz - xosiz),
        height: u64::from(ysiz - yosiz),
        components,
    })
}

/// Decodes a JPEG 2000 frame after checking its SIZ header against the
/// DICOM attributes (openjp2 allocates from the header's sizes).
fn decode_j2k(frame: &[u8], layout: &Layout, cx: &Ctx<'_>) -> Result<Vec<f32>, ImagingError> {
    let size = j2k_size(frame).map_err(|r| cx.codec("JPEG 2000", r))?;
    let spp = layout.samples_per_pixel;
    if size.width != layout.columns as u64
        || size.height != layout.rows as u64
        || size.components.len() != spp
    {
        return Err(cx.codec(
            "JPEG 2000",
            format!(
                "codestream is {}x{} with {} components, the DICOM header says {}x{} with {spp}",
                size.width,
                size.height,
                size.components.len(),
                layout.columns,
                layout.rows
            ),
        ));
    }
    if let Some(&(precision, ..)) = size
        .components
        .iter()
        .find(|c| c.0 > 32 || c.0 as u16 > layout.bits_allocated)
    {
        return Err(cx.codec(
            "JPEG 2000",
            format!(
                "{precision}-bit components with Bits Allocated {}",
                layout.bits_allocated
            ),
        ));
    }
    if size.components.iter().any(|c| c.2 != 1 || c.3 != 1) {
        return Err(cx.unsupported("subsampled JPEG 2000 components"));
    }
    let n = layout.pixels();
    guarded("JPEG 2000", cx, || {
        let image = jpeg2k::Image::from_bytes(frame).map_err(|e| e.to_string())?;
        let components = image.components();
        if components.len() != spp {
            return Err(format!(
                "decoded {} components, expected {spp}",
                components.len()
            ));
        }
        let mut out = vec![0.0f32; n * spp];
        for (s, component) in components.iter().enumerate() {
            let data = component.data();
            if data.len() != n {
                return Err(format!(
                    "component {s} holds {} samples, expected {n}",
                    data.len()
                ));
            }
            for (i, &v) in data.iter().enumerate() {
                // Two's complement bits reinterpreted per the DICOM header,
                // which is what a reader of the stored values expects even
                // where the codestream's sign flag disagrees.
                out[i * spp + s] = layout.stored_value(v as u32 as u64);
            }
        }
        Ok(out)
    })
}
