//! Single-file decoding and model-input conversion on files the tests write:
//! PNG and JPEG (grey, RGB, 8 and 16 bits) with known statistics, and small
//! DICOM files for what the corpus lacks (MONOCHROME1, windows, planar RGB,
//! masked and sign-extended bits, refusals), plus the corpus files re-framed
//! without their preamble.

mod imaging_support;

use std::path::Path;

use image::{ImageFormat as Fmt, Luma, Rgb};
use imaging_support::{DicomWriter, EXPLICIT_VR_LE};
use primia_model::imaging::{
    self, ColourModel, DecodedImage, ImageFormat, ImagingError, Limits, PixelStats,
};

fn encode(image: image::DynamicImage, format: Fmt) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn decode(name: &str, bytes: &[u8]) -> Result<DecodedImage, ImagingError> {
    imaging::decode_bytes(bytes, Path::new(name), &Limits::default())
}

fn stats_of(values: impl Iterator<Item = f64>) -> PixelStats {
    let v: Vec<f64> = values.collect();
    PixelStats {
        min: v.iter().cloned().fold(f64::INFINITY, f64::min),
        max: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tolerance, "{what}: [{i}] {x} vs {y}");
    }
}

#[test]
fn png_8_bit_grey_has_exact_statistics_and_scales_by_255() {
    let img = image::ImageBuffer::from_fn(30, 20, |x, y| Luma([(x * 7 + y * 3) as u8]));
    let image = decode("grey.png", &encode(img.clone().into(), Fmt::Png)).unwrap();
    assert_eq!(image.format, ImageFormat::Png);
    assert_eq!(
        (image.rows, image.columns, image.samples_per_pixel),
        (20, 30, 1)
    );
    assert_eq!(image.bits_allocated, 8);
    assert!(image.transfer_syntax.is_none());
    let expected = stats_of(img.pixels().map(|p| f64::from(p.0[0])));
    assert_eq!(image.stats(), expected);
    assert!(
        expected.min == 0.0 && expected.max > 250.0,
        "a wide range: {expected:?}"
    );

    // A square image at its own size: no resampling, values / 255.
    let square = image::ImageBuffer::from_fn(4, 4, |x, y| Luma([(x * 60 + y) as u8]));
    let image = decode("square.png", &encode(square.clone().into(), Fmt::Png)).unwrap();
    let want: Vec<f32> = square.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect();
    assert_close(&image.to_model_input(4), &want, 1e-6, "grey model input");
}

#[test]
fn png_16_bit_keeps_its_full_range() {
    let img = image::ImageBuffer::from_fn(16, 8, |x, y| Luma([(x * 4096 + y * 7) as u16]));
    let image = decode("grey16.png", &encode(img.clone().into(), Fmt::Png)).unwrap();
    assert_eq!(image.bits_allocated, 16);
    assert_eq!(
        image.stats(),
        stats_of(img.pixels().map(|p| f64::from(p.0[0])))
    );
    assert_eq!(image.stats().max, f64::from(15 * 4096 + 7 * 7));
    let input = image.to_model_input(8);
    assert!(input.iter().all(|v| (0.0..=1.0).contains(v)));
    // Full scale is 65535: the brightest column averages to about 0.94.
    let top = input.iter().cloned().fold(0.0, f32::max);
    assert!((0.9..0.97).contains(&top), "{top}");
}

#[test]
fn png_rgb_becomes_bt601_luma() {
    let img = image::ImageBuffer::from_fn(2, 2, |x, y| match (x, y) {
        (0, 0) => Rgb([255u8, 0, 0]),
        (1, 0) => Rgb([0, 255, 0]),
        (0, 1) => Rgb([0, 0, 255]),
        _ => Rgb([255, 255, 255]),
    });
    let image = decode("rgb.png", &encode(img.into(), Fmt::Png)).unwrap();
    assert_eq!(
        (image.samples_per_pixel, image.colour),
        (3, ColourModel::Rgb)
    );
    assert_eq!(image.photometric, "RGB");
    let s = image.stats();
    assert_eq!((s.min, s.max), (0.0, 255.0));
    assert!((s.mean - 255.0 * 6.0 / 12.0).abs() < 1e-9);
    assert_close(
        &image.to_model_input(2),
        &[0.299, 0.587, 0.114, 1.0],
        1e-6,
        "luma",
    );
}

#[test]
fn jpeg_grey_and_rgb_decode_within_lossy_tolerance() {
    // JPEG is lossy: values come back within a few levels, not exactly.
    // Flat 8x8 blocks keep only DC terms, which quantise to within 2.
    let grey = image::ImageBuffer::from_fn(32, 16, |x, _| Luma([if x < 16 { 40u8 } else { 200 }]));
    let image = decode("grey.jpg", &encode(grey.into(), Fmt::Jpeg)).unwrap();
    assert_eq!(image.format, ImageFormat::Jpeg);
    assert_eq!(
        (image.rows, image.columns, image.samples_per_pixel),
        (16, 32, 1)
    );
    let s = image.stats();
    assert!(
        (s.min - 40.0).abs() <= 2.0 && (s.max - 200.0).abs() <= 2.0,
        "{s:?}"
    );
    assert!((s.mean - 120.0).abs() <= 2.0, "{s:?}");

    let rgb = image::ImageBuffer::from_fn(16, 16, |_, _| Rgb([200u8, 100, 50]));
    let image = decode("rgb.jpg", &encode(rgb.into(), Fmt::Jpeg)).unwrap();
    assert_eq!(image.samples_per_pixel, 3);
    // Colour goes through YCbCr and chroma quantisation: a few levels more.
    let luma = (0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0) / 255.0;
    for v in image.to_model_input(4) {
        assert!((v - luma).abs() < 4.0 / 255.0, "{v} vs {luma}");
    }
}

#[test]
fn format_is_decided_by_content_not_name() {
    let png = encode(
        image::ImageBuffer::from_pixel(3, 3, Luma([9u8])).into(),
        Fmt::Png,
    );
    assert_eq!(
        decode("looks_like.dcm", &png).unwrap().format,
        ImageFormat::Png
    );
    let dicom = DicomWriter::mono(2, 2, 8, 8, false, "MONOCHROME2")
        .pixels_u8(&[1, 2, 3, 4])
        .file();
    assert_eq!(
        decode("looks_like.png", &dicom).unwrap().format,
        ImageFormat::Dicom
    );
    let err = decode("notes.txt", b"Patient notes, not an image\n").unwrap_err();
    assert!(matches!(err, ImagingError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().starts_with("notes.txt: "), "{err}");
}

#[test]
fn monochrome1_with_a_window_follows_the_standard_and_inverts() {
    let image = DicomWriter::mono(2, 2, 16, 16, false, "MONOCHROME1")
        .text((0x0028, 0x1050), b"DS", "150")
        .text((0x0028, 0x1051), b"DS", "201")
        .pixels_u16(&[0, 100, 200, 300])
        .file();
    let image = decode("mono1.dcm", &image).unwrap();
    assert_eq!(image.colour, ColourModel::Monochrome1);
    let w = image.window.unwrap();
    assert_eq!((w.center, w.width), (150.0, 201.0));
    // PS3.3 C.11.2.1.2.1: x <= 49.5 -> 0; x > 249.5 -> 1; else
    // (x - 149.5) / 200 + 0.5. Then MONOCHROME1 inverts.
    let want = [1.0, 1.0 - 0.2525, 1.0 - 0.7525, 0.0];
    assert_close(
        &image.to_model_input(2),
        &want,
        1e-6,
        "windowed MONOCHROME1",
    );
}

#[test]
fn rescale_then_range_normalisation_without_a_window() {
    let file = DicomWriter::mono(1, 4, 16, 16, true, "MONOCHROME2")
        .text((0x0028, 0x1052), b"DS", "-1024")
        .text((0x0028, 0x1053), b"DS", "2")
        .pixels_u16(&[0, 10, 20, 0xFFFF])
        .file();
    let image = decode("ct.dcm", &file).unwrap();
    assert_eq!(image.pixels, vec![0.0, 10.0, 20.0, -1.0]);
    let r = image.rescaled_stats().unwrap();
    assert_eq!((r.min, r.max), (-1026.0, -984.0));
    assert_eq!(
        image.rescaled().unwrap(),
        vec![-1024.0, -1004.0, -984.0, -1026.0]
    );
    // Range after rescale: -1026 -> 0, -984 -> 1.
    // 1x4 to 2x2: rows are repeated (bilinear up), column pairs averaged
    // (area down).
    let normalised = [2.0 / 42.0, 22.0 / 42.0, 1.0, 0.0];
    let left = (normalised[0] + normalised[1]) / 2.0;
    let right = (normalised[2] + normalised[3]) / 2.0;
    assert_close(
        &image.to_model_input(2),
        &[left, right, left, right],
        1e-6,
        "rescaled range",
    );
}

#[test]
fn unused_high_bits_are_masked_or_sign_extended() {
    // 12 bits stored in 16: garbage in the top 4 bits (old overlays).
    let unsigned = DicomWriter::mono(1, 3, 16, 12, false, "MONOCHROME2")
        .pixels_u16(&[0xF123, 0x0FFF, 0xA000])
        .file();
    assert_eq!(
        decode("u12.dcm", &unsigned).unwrap().pixels,
        vec![0x123 as f32, 4095.0, 0.0]
    );
    let signed = DicomWriter::mono(1, 3, 16, 12, true, "MONOCHROME2")
        .pixels_u16(&[0x0FFF, 0xF800, 0x07FF])
        .file();
    assert_eq!(
        decode("s12.dcm", &signed).unwrap().pixels,
        vec![-1.0, -2048.0, 2047.0]
    );
}

#[test]
fn planar_rgb_is_reordered_to_pixel_order() {
    let file = DicomWriter::new(EXPLICIT_VR_LE)
        .us((0x0028, 0x0002), 3)
        .text((0x0028, 0x0004), b"CS", "RGB")
        .us((0x0028, 0x0006), 1)
        .us((0x0028, 0x0010), 1)
        .us((0x0028, 0x0011), 2)
        .us((0x0028, 0x0100), 8)
        .us((0x0028, 0x0101), 8)
        .us((0x0028, 0x0103), 0)
        .pixels_u8(&[10, 20, 30, 40, 50, 60])
        .file();
    let image = decode("planar.dcm", &file).unwrap();
    assert_eq!(image.pixels, vec![10.0, 30.0, 50.0, 20.0, 40.0, 60.0]);
}

#[test]
fn one_bit_data_unpacks_least_significant_bit_first() {
    // 3x4 = 12 pixels in two bytes: 0b1010_0101, 0b0000_1111.
    let file = DicomWriter::mono(3, 4, 1, 1, false, "MONOCHROME2")
        .pixels_u8(&[0b1010_0101, 0b0000_1111])
        .file();
    let image = decode("bits.dcm", &file).unwrap();
    assert_eq!(
        image.pixels,
        vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    );
}

#[test]
fn refusals_name_the_file_and_the_reason() {
    let no_pixels = DicomWriter::mono(2, 2, 8, 8, false, "MONOCHROME2").file();
    let err = decode("plan.dcm", &no_pixels).unwrap_err();
    assert!(matches!(err, ImagingError::NoPixelData { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "plan.dcm: DICOM file has no pixel data (7FE0,0010)"
    );

    let jpeg_ls = DicomWriter::mono(2, 2, 8, 8, false, "MONOCHROME2")
        .pixels_u8(&[0; 4])
        .with_ts("1.2.840.10008.1.2.4.80");
    let err = decode("ls.dcm", &jpeg_ls.file()).unwrap_err();
    assert!(
        matches!(err, ImagingError::UnsupportedTransferSyntax { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "ls.dcm: unsupported transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
    );

    let short = DicomWriter::mono(4, 4, 16, 16, false, "MONOCHROME2")
        .pixels_u16(&[1, 2, 3])
        .file();
    let err = decode("short.dcm", &short).unwrap_err();
    assert!(
        matches!(
            err,
            ImagingError::PixelDataTruncated {
                needed: 32,
                found: 6,
                ..
            }
        ),
        "{err}"
    );

    let huge = DicomWriter::mono(60000, 60000, 8, 8, false, "MONOCHROME2")
        .pixels_u8(&[0; 16])
        .file();
    let err = decode("huge.dcm", &huge).unwrap_err();
    assert!(matches!(err, ImagingError::ImageTooLarge { .. }), "{err}");

    let palette = DicomWriter::mono(1, 2, 8, 8, false, "PALETTE COLOR")
        .pixels_u8(&[0, 1])
        .file();
    let err = decode("palette.dcm", &palette).unwrap_err();
    assert!(matches!(err, ImagingError::Unsupported { .. }), "{err}");

    // A file cut inside the pixel data: the length runs past the end.
    let whole = DicomWriter::mono(4, 4, 8, 8, false, "MONOCHROME2")
        .pixels_u8(&[7; 16])
        .file();
    let err = decode("cut.dcm", &whole[..whole.len() - 5]).unwrap_err();
    assert!(matches!(err, ImagingError::MalformedDicom { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn files_over_the_size_limit_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, vec![0u8; 5000]).unwrap();
    let limits = Limits {
        max_file_bytes: 4096,
        ..Limits::default()
    };
    let err = imaging::decode_file_with(&path, &limits).unwrap_err();
    assert!(
        matches!(err, ImagingError::FileTooLarge { bytes: 5000, .. }),
        "{err}"
    );
    let err = imaging::decode_file(&dir.path().join("missing.png")).unwrap_err();
    assert!(matches!(err, ImagingError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.png"), "{err}");
}

#[test]
fn dicom_without_preamble_magic_or_meta_group_decodes_the_same() {
    let writer =
        DicomWriter::mono(2, 3, 16, 16, false, "MONOCHROME2").pixels_u16(&[1, 2, 3, 400, 500, 600]);
    let standard = decode("a.dcm", &writer.file()).unwrap();
    let mut magic_only = b"DICM".to_vec();
    magic_only.extend(writer.meta());
    magic_only.extend(writer.dataset());
    let mut meta_only = writer.meta();
    meta_only.extend(writer.dataset());
    let bare = writer.dataset();
    for (name, bytes) in [("magic", magic_only), ("meta", meta_only), ("bare", bare)] {
        let image = decode(name, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(image.pixels, standard.pixels, "{name}");
        assert_eq!(image.transfer_syntax.unwrap().uid, EXPLICIT_VR_LE, "{name}");
    }
}

#[test]
fn corpus_files_without_their_preamble_decode_the_same() {
    let Some(dir) = imaging_support::dicom_corpus("corpus_files_without_their_preamble") else {
        return;
    };
    for file in ["MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let standard = decode(file, &bytes).unwrap();
        // Without the 128-byte preamble: `DICM` first.
        let image = decode(file, &bytes[128..]).unwrap();
        assert_eq!(image.pixels, standard.pixels, "{file} without preamble");
        // Without preamble, magic and meta group: the bare data set, whose
        // encoding is inferred from its first element.
        let meta_end = dataset_start(&bytes);
        let image = decode(file, &bytes[meta_end..]).unwrap();
        assert_eq!(image.pixels, standard.pixels, "{file} bare");
        assert_eq!(
            image.transfer_syntax.unwrap().uid,
            standard.transfer_syntax.unwrap().uid,
            "{file}: inferred transfer syntax"
        );
    }
}

/// Where the data set starts: after group 0002 (explicit VR LE, short or
/// long length headers).
fn dataset_start(bytes: &[u8]) -> usize {
    let mut pos = 132;
    while u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) == 0x0002 {
        let vr = &bytes[pos + 4..pos + 6];
        if matches!(vr, b"OB" | b"OW" | b"UN" | b"UT" | b"SQ") {
            let len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
            pos += 12 + len;
        } else {
            let len = u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize;
            pos += 8 + len;
        }
    }
    pos
}
