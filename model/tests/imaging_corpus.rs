//! The decoder against every file of the shared DICOM corpus and what pydicom
//! decodes from it (`EXPECTED.json`).

mod imaging_support;

use std::collections::BTreeMap;
use std::path::Path;

use primia_model::imaging::{self, DecodedImage, ImageFormat, ImagingError};
use serde_json::Value;

/// Position-weighted checksums of pydicom's `pixel_array` (first frame,
/// C order: row, column, sample): sum of value * (i % 251 + 1) over the flat
/// index i, and the first four values. Computed with pydicom 3.0.2 and the
/// pylibjpeg plugins (libjpeg, openjpeg, rle). Min, max and mean do not see
/// the order of the samples; these do, so they pin the planar
/// configuration 1 reordering, the big endian byte order, the 1-bit bit
/// order and the RLE segment order.
const PYDICOM_CHECKSUMS: &[(&str, f64, [f32; 4])] = &[
    (
        "CT_small.dcm",
        1_875_799_965.0,
        [175.0, 180.0, 166.0, 143.0],
    ),
    (
        "ExplVR_BigEnd.dcm",
        309_427_241.0,
        [171.0, 171.0, 171.0, 173.0],
    ),
    ("JPEG2000.dcm", 448_826_792.0, [0.0, 0.0, 0.0, 0.0]),
    (
        "MR_small.dcm",
        264_991_985.0,
        [905.0, 1019.0, 1227.0, 1259.0],
    ),
    (
        "MR_small_expb.dcm",
        264_991_985.0,
        [905.0, 1019.0, 1227.0, 1259.0],
    ),
    (
        "MR_small_implicit.dcm",
        264_991_985.0,
        [905.0, 1019.0, 1227.0, 1259.0],
    ),
    (
        "MR_small_jp2klossless.dcm",
        264_991_985.0,
        [905.0, 1019.0, 1227.0, 1259.0],
    ),
    (
        "SC_rgb_jpeg_gdcm.dcm",
        481_785_150.0,
        [255.0, 0.0, 0.0, 255.0],
    ),
    ("SC_rgb_rle.dcm", 481_785_150.0, [255.0, 0.0, 0.0, 255.0]),
    (
        "image_dfl.dcm",
        4_199_268_233.0,
        [213.0, 213.0, 213.0, 213.0],
    ),
    ("liver_1frame.dcm", 4_556_061.0, [0.0, 0.0, 0.0, 0.0]),
    (
        "rtdose_1frame.dcm",
        4_706_067_000.0,
        [1_249_000.0, 1_249_000.0, 1_250_000.0, 1_250_000.0],
    ),
];

fn expected(dir: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(dir.join("EXPECTED.json")).expect("read EXPECTED.json");
    let doc: Value = serde_json::from_str(&text).expect("parse EXPECTED.json");
    doc.as_object()
        .expect("EXPECTED.json is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn num(entry: &Value, key: &str) -> f64 {
    entry[key]
        .as_f64()
        .unwrap_or_else(|| panic!("EXPECTED.json entry lacks numeric {key}: {entry}"))
}

/// Means are compared to 1e-9 relative: both sides add exact integers in
/// f64 (numpy pairwise, ours sequentially), so only the last bits may differ.
fn check_close(file: &str, what: &str, ours: f64, theirs: f64) {
    let tolerance = 1e-9 * theirs.abs().max(1.0);
    assert!(
        (ours - theirs).abs() <= tolerance,
        "{file}: {what} is {ours}, pydicom says {theirs}"
    );
}

fn check_image(file: &str, entry: &Value, image: &DecodedImage) {
    assert_eq!(image.format, ImageFormat::Dicom, "{file}");
    let ts = image
        .transfer_syntax
        .as_ref()
        .expect("DICOM has a transfer syntax");
    assert_eq!(
        ts.uid,
        entry["ts"].as_str().unwrap(),
        "{file}: transfer syntax"
    );
    assert!(!ts.name.is_empty(), "{file}: transfer syntax name");
    assert_eq!(image.rows as f64, num(entry, "rows"), "{file}: rows");
    assert_eq!(
        image.columns as f64,
        num(entry, "columns"),
        "{file}: columns"
    );
    assert_eq!(
        image.samples_per_pixel as f64,
        num(entry, "samples_per_pixel"),
        "{file}: samples per pixel"
    );
    assert_eq!(
        f64::from(image.bits_allocated),
        num(entry, "bits_allocated"),
        "{file}: bits allocated"
    );
    assert_eq!(
        image.photometric,
        entry["photometric"].as_str().unwrap(),
        "{file}: photometric interpretation"
    );
    let shape: usize = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .product();
    assert_eq!(
        image.pixels.len(),
        shape,
        "{file}: first-frame sample count"
    );
    let dtype = entry["dtype"].as_str().unwrap();
    let signed = !dtype.contains('u') && dtype.contains('i');
    assert_eq!(
        image.signed, signed,
        "{file}: signedness (pydicom dtype {dtype})"
    );

    // Stored values: min and max exactly, mean tightly.
    let stats = image.stats();
    assert_eq!(stats.min, num(entry, "min"), "{file}: min");
    assert_eq!(stats.max, num(entry, "max"), "{file}: max");
    check_close(file, "mean", stats.mean, num(entry, "mean"));

    match entry.get("rescale") {
        Some(r) => {
            let ours = image
                .rescale
                .unwrap_or_else(|| panic!("{file}: rescale not found"));
            assert_eq!(ours.slope, num(r, "slope"), "{file}: rescale slope");
            assert_eq!(
                ours.intercept,
                num(r, "intercept"),
                "{file}: rescale intercept"
            );
            let rs = image.rescaled_stats().unwrap();
            assert_eq!(rs.min, num(entry, "rescaled_min"), "{file}: rescaled min");
            assert_eq!(rs.max, num(entry, "rescaled_max"), "{file}: rescaled max");
            check_close(file, "rescaled mean", rs.mean, num(entry, "rescaled_mean"));
        }
        None => assert!(image.rescale.is_none(), "{file}: unexpected rescale"),
    }

    let (_, checksum, first) = PYDICOM_CHECKSUMS
        .iter()
        .find(|(name, ..)| *name == file)
        .unwrap_or_else(|| panic!("{file}: no pydicom checksum recorded"));
    let ours: f64 = image
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| f64::from(v) * ((i % 251) + 1) as f64)
        .sum();
    assert_eq!(ours, *checksum, "{file}: sample order checksum");
    assert_eq!(&image.pixels[..4], first, "{file}: first samples");
}

#[test]
fn every_corpus_file_matches_pydicom_or_is_refused_like_it() {
    let Some(dir) = imaging_support::dicom_corpus("every_corpus_file_matches_pydicom") else {
        return;
    };
    let expected = expected(&dir);

    // Every file in the folder has an entry, and the reverse, so a file
    // added later cannot go untested.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "EXPECTED.json")
        .collect();
    files.sort();
    assert_eq!(files, expected.keys().cloned().collect::<Vec<_>>());

    for (file, entry) in &expected {
        let path = dir.join(file);
        let result = imaging::decode_file(&path);
        if let Some(error) = entry.get("error") {
            let err = match result {
                Err(e) => e,
                Ok(_) => panic!("{file}: decoded, pydicom refuses it: {error}"),
            };
            let message = err.to_string();
            assert!(
                message.contains(file.as_str()),
                "{file}: error does not name the file: {message}"
            );
            // A difference in wording, not in outcome: pydicom reads the
            // truncated RT plan leniently (it stops at the short element)
            // and then finds no pixel data; the structural check here sees
            // the element that claims more bytes than the file holds and
            // says the file is truncated. Both refuse it; either reason is
            // accepted, nothing else.
            if error.as_str().unwrap().contains("no 'Pixel Data'") {
                let truncated = matches!(err, ImagingError::MalformedDicom { .. })
                    && message.contains("truncated");
                assert!(
                    truncated || matches!(err, ImagingError::NoPixelData { .. }),
                    "{file}: expected a truncation or no-pixel-data refusal, got {message}"
                );
            }
            continue;
        }
        let image = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        check_image(file, entry, &image);
    }
}

#[test]
fn model_input_of_every_corpus_image_is_sized_and_in_range() {
    let Some(dir) = imaging_support::dicom_corpus("model_input_of_every_corpus_image") else {
        return;
    };
    for (file, entry) in expected(&dir) {
        if entry.get("error").is_some() {
            continue;
        }
        let image = imaging::decode_file(&dir.join(&file)).unwrap();
        for size in [28, 64] {
            let input = image.to_model_input(size);
            assert_eq!(input.len(), size * size, "{file}");
            assert!(
                input.iter().all(|v| (0.0..=1.0).contains(v)),
                "{file}: out of [0, 1]"
            );
            let lo = input.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = input.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!(hi > lo, "{file}: model input is flat ({lo}..{hi})");
        }
    }
}
