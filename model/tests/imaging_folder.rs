//! The folder loader on a mixed folder: PNG, JPEG and DICOM in class
//! subfolders, with a corrupt file, a non-image file, a DICOM without pixel
//! data, a refused transfer syntax and entries outside any class.

mod imaging_support;

use std::path::Path;

use image::{ImageFormat as Fmt, Luma, Rgb};
use imaging_support::DicomWriter;
use primia_model::imaging::{self, FolderLoad, ImagingError, LoadOptions};

fn encode(image: image::DynamicImage, format: Fmt) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// root/
///   README.txt                 outside any class
///   .cache/                    hidden
///   normal/
///     a.png                    8-bit grey
///     b.jpg                    RGB JPEG
///     series/c.dcm             DICOM MONOCHROME2 (nested folder)
///     d.dat                    PNG content under an odd name
///   pneumonia/
///     e.png                    16-bit grey
///     f.dcm                    DICOM MONOCHROME1, no preamble
///     corrupt.png              PNG cut in half
///     notes.txt                text
///     plan.dcm                 DICOM without pixel data
///     ls.dcm                   JPEG-LS transfer syntax
fn make_folder(root: &Path) {
    let write = |rel: &str, bytes: &[u8]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let grey = image::ImageBuffer::from_fn(40, 30, |x, y| Luma([(x * 5 + y) as u8]));
    let png = encode(grey.into(), Fmt::Png);
    write("README.txt", b"class folders below\n");
    write(".cache/thumbs.db", b"\0\0");
    write("normal/a.png", &png);
    let rgb = image::ImageBuffer::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 128]));
    write("normal/b.jpg", &encode(rgb.into(), Fmt::Jpeg));
    let dicom = DicomWriter::mono(8, 8, 16, 12, false, "MONOCHROME2")
        .pixels_u16(&(0..64).map(|i| i * 60).collect::<Vec<u16>>());
    write("normal/series/c.dcm", &dicom.file());
    write("normal/d.dat", &png);
    let grey16 = image::ImageBuffer::from_fn(10, 10, |x, y| Luma([(x * 6000 + y) as u16]));
    write("pneumonia/e.png", &encode(grey16.into(), Fmt::Png));
    let mono1 = DicomWriter::mono(4, 4, 8, 8, false, "MONOCHROME1")
        .pixels_u8(&(0..16).map(|i| i * 16).collect::<Vec<u8>>());
    let mut no_preamble = b"DICM".to_vec();
    no_preamble.extend(mono1.meta());
    no_preamble.extend(mono1.dataset());
    write("pneumonia/f.dcm", &no_preamble);
    write("pneumonia/corrupt.png", &png[..png.len() / 2]);
    write("pneumonia/notes.txt", b"not an image\n");
    write(
        "pneumonia/plan.dcm",
        &DicomWriter::mono(2, 2, 8, 8, false, "MONOCHROME2").file(),
    );
    write(
        "pneumonia/ls.dcm",
        &DicomWriter::mono(2, 2, 8, 8, false, "MONOCHROME2")
            .pixels_u8(&[0; 4])
            .with_ts("1.2.840.10008.1.2.4.80")
            .file(),
    );
}

fn reason_of<'a>(load: &'a FolderLoad, root: &Path, rel: &str) -> &'a str {
    let path = root.join(rel);
    &load
        .skipped
        .iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("{rel} not listed as skipped: {:#?}", load.skipped))
        .reason
}

#[test]
fn mixed_folder_loads_usable_files_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_folder(root);

    let load = imaging::load_folder(root, 16).unwrap();
    assert_eq!(load.class_names, vec!["normal", "pneumonia"]);
    assert_eq!(load.images.len(), 6, "{}", load.summary());
    // Sorted path order: a.png, b.jpg, d.dat, series/c.dcm | e.png, f.dcm.
    assert_eq!(load.labels, vec![0, 0, 0, 0, 1, 1]);
    assert_eq!(load.class_counts(), vec![4, 2]);
    for image in &load.images {
        assert_eq!(image.len(), 16 * 16);
        assert!(image.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // d.dat is a.png under another name: the same input.
    assert_eq!(load.images[0], load.images[2]);
    // f.dcm is MONOCHROME1 rising left to right by rows: after inversion the
    // first row is brighter than the last.
    let f = &load.images[5];
    assert!(
        f[0] > f[255],
        "MONOCHROME1 not inverted: {} vs {}",
        f[0],
        f[255]
    );

    assert_eq!(load.skipped.len(), 6, "{:#?}", load.skipped);
    assert!(reason_of(&load, root, "pneumonia/corrupt.png").contains("PNG decoding failed"));
    assert!(reason_of(&load, root, "pneumonia/notes.txt").contains("not an image file"));
    assert!(reason_of(&load, root, "pneumonia/plan.dcm").contains("no pixel data"));
    assert!(
        reason_of(&load, root, "pneumonia/ls.dcm").contains("unsupported transfer syntax JPEG-LS")
    );
    assert!(reason_of(&load, root, "README.txt").contains("outside any class"));
    assert!(reason_of(&load, root, ".cache").contains("hidden"));

    let summary = load.summary();
    assert!(
        summary
            .starts_with("loaded 6 images in 2 classes (normal: 4, pneumonia: 2); skipped 6 files"),
        "{summary}"
    );
    assert!(
        summary.contains("notes.txt: not an image file"),
        "{summary}"
    );
}

#[test]
fn loading_is_deterministic_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path());
    let one = LoadOptions {
        threads: 1,
        ..LoadOptions::default()
    };
    let four = LoadOptions {
        threads: 4,
        ..LoadOptions::default()
    };
    let a = imaging::load_folder_with(dir.path(), 12, &one).unwrap();
    let b = imaging::load_folder_with(dir.path(), 12, &four).unwrap();
    assert_eq!(a.images, b.images);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.skipped, b.skipped);
}

#[test]
fn folder_level_problems_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = imaging::load_folder(&dir.path().join("missing"), 28).unwrap_err();
    assert!(matches!(err, ImagingError::Io { .. }), "{err}");

    let file = dir.path().join("file.png");
    std::fs::write(&file, b"x").unwrap();
    let err = imaging::load_folder(&file, 28).unwrap_err();
    assert!(matches!(err, ImagingError::NotADirectory { .. }), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("stray.png"), b"x").unwrap();
    let err = imaging::load_folder(&empty, 28).unwrap_err();
    assert!(matches!(err, ImagingError::NoClasses { .. }), "{err}");

    for size in [0, imaging::MAX_MODEL_INPUT_SIZE + 1] {
        let err = imaging::load_folder(dir.path(), size).unwrap_err();
        assert!(matches!(err, ImagingError::InvalidSize { .. }), "{err}");
    }

    // The memory bound is checked against the candidate count up front.
    let full = dir.path().join("full");
    make_folder(&full);
    let tight = LoadOptions {
        max_output_bytes: 1000,
        ..LoadOptions::default()
    };
    let err = imaging::load_folder_with(&full, 28, &tight).unwrap_err();
    assert!(
        matches!(err, ImagingError::TooManyImages { files: 10, .. }),
        "{err}"
    );
}

#[test]
fn files_nested_too_deep_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let png = encode(
        image::ImageBuffer::from_pixel(4, 4, Luma([50u8])).into(),
        Fmt::Png,
    );
    let deep = dir.path().join("class/1/2/3");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("x.png"), &png).unwrap();
    std::fs::write(dir.path().join("class/top.png"), &png).unwrap();
    let shallow = LoadOptions {
        max_depth: 2,
        ..LoadOptions::default()
    };
    let load = imaging::load_folder_with(dir.path(), 4, &shallow).unwrap();
    assert_eq!(load.images.len(), 1);
    assert_eq!(load.skipped.len(), 1);
    assert!(
        load.skipped[0].reason.contains("nested more than 2"),
        "{:?}",
        load.skipped
    );
}
