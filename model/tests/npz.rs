//! MedMNIST `.npz` loading: well-formed files of several layouts load; crafted bad files are refused with clear errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use primia_model::ModelError;
use primia_model::data::npz::{load_medmnist, parse_npy_u8};

/// A `.npy` (format 1.0) with the given header fields and raw data.
fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let fortran = if fortran { "True" } else { "False" };
    npy_raw(
        &format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"),
        data,
    )
}

/// A `.npy` (format 1.0) with the given header text and raw data.
fn npy_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.to_string();
    // Pad so that magic + version + length + header is a multiple of 64, ending in '\n'.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn u8_images(n: usize, side: usize, channels: usize) -> Vec<u8> {
    (0..n * side * side * channels)
        .map(|i| (i * 7 % 256) as u8)
        .collect()
}

/// Arrays of a well-formed file: n images per split of side `side`, labels cycling over `classes`.
fn good_members(n: usize, side: usize, classes: u8) -> Vec<(String, Vec<u8>)> {
    let mut m = Vec::new();
    for split in ["train", "val", "test"] {
        m.push((
            format!("{split}_images.npy"),
            npy("|u1", false, &[n, side, side], &u8_images(n, side, 1)),
        ));
        let labels: Vec<u8> = (0..n).map(|i| i as u8 % classes).collect();
        m.push((
            format!("{split}_labels.npy"),
            npy("|u1", false, &[n, 1], &labels),
        ));
    }
    m
}

fn write_npz(dir: &Path, name: &str, members: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        z.start_file(name.as_str(), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    path
}

/// Replaces one member's bytes.
fn with(mut m: Vec<(String, Vec<u8>)>, name: &str, bytes: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    let e = m.iter_mut().find(|(n, _)| n == name).unwrap();
    e.1 = bytes;
    m
}

/// Loading must fail, and the message must name the file and contain `needle`.
fn refused(path: &Path, needle: &str) {
    match load_medmnist(path) {
        Ok(s) => panic!("{} loaded: {s:?}", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle) && msg.contains(&path.display().to_string()),
                "{needle:?} not in {msg:?}"
            );
        }
    }
}

#[test]
fn loads_a_well_formed_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_npz(dir.path(), "ok.npz", &good_members(5, 28, 2));
    let s = load_medmnist(&p).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (5, 5, 5));
    assert_eq!(s.train.size(), 28);
    assert_eq!(s.train.classes(), 2);
    assert_eq!(s.train.labels(), &[0, 1, 0, 1, 0]);
    // uint8 v -> v / 255.
    let raw = u8_images(5, 28, 1);
    assert_eq!(s.train.image(0)[3], f32::from(raw[3]) / 255.0);
}

#[test]
fn loads_multiclass_and_colour_sets() {
    let dir = tempfile::tempdir().unwrap();
    // Nine classes, as in PathMNIST, with RGB images and flat (N,) labels.
    let mut m = good_members(9, 28, 9);
    for split in ["train", "val", "test"] {
        m = with(
            m,
            &format!("{split}_images.npy"),
            npy("|u1", false, &[9, 28, 28, 3], &u8_images(9, 28, 3)),
        );
        m = with(
            m,
            &format!("{split}_labels.npy"),
            npy("|u1", false, &[9], &(0..9).collect::<Vec<u8>>()),
        );
    }
    let p = write_npz(dir.path(), "rgb.npz", &m);
    let s = load_medmnist(&p).unwrap();
    assert_eq!(s.train.classes(), 9);
    assert_eq!(s.test.class_counts(), vec![1; 9]);
    let raw = u8_images(9, 28, 3);
    let want =
        (0.299 * f32::from(raw[0]) + 0.587 * f32::from(raw[1]) + 0.114 * f32::from(raw[2])) / 255.0;
    assert!((s.train.image(0)[0] - want).abs() < 1e-6);
    // Resizing to a model's input keeps labels and changes the side.
    let r = s.resized(16).unwrap();
    assert_eq!(r.train.size(), 16);
    assert_eq!(r.train.labels(), s.train.labels());
}

#[test]
fn refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = || good_members(4, 28, 2);
    let ti = "train_images.npy";

    refused(
        &write_npz(
            d,
            "dtype.npz",
            &with(
                good(),
                ti,
                npy("<f4", false, &[4, 28, 28], &vec![0; 4 * 784 * 4]),
            ),
        ),
        "dtype",
    );
    refused(
        &write_npz(
            d,
            "fortran.npz",
            &with(
                good(),
                ti,
                npy("|u1", true, &[4, 28, 28], &u8_images(4, 28, 1)),
            ),
        ),
        "Fortran",
    );
    refused(
        &write_npz(
            d,
            "short.npz",
            &with(
                good(),
                ti,
                npy("|u1", false, &[4, 28, 28], &u8_images(3, 28, 1)),
            ),
        ),
        "needs 3136 bytes",
    );
    refused(
        &write_npz(
            d,
            "long.npz",
            &with(
                good(),
                ti,
                npy("|u1", false, &[4, 28, 28], &u8_images(5, 28, 1)),
            ),
        ),
        "needs 3136 bytes",
    );
    refused(
        &write_npz(
            d,
            "magic.npz",
            &with(good(), ti, b"PK not an npy at all".to_vec()),
        ),
        "bad magic",
    );
    refused(
        &write_npz(
            d,
            "version.npz",
            &with(good(), ti, {
                let mut b = npy("|u1", false, &[4, 28, 28], &u8_images(4, 28, 1));
                b[6] = 9;
                b
            }),
        ),
        "version 9",
    );
    refused(
        &write_npz(
            d,
            "nonsquare.npz",
            &with(
                good(),
                ti,
                npy(
                    "|u1",
                    false,
                    &[4, 28, 14],
                    &u8_images(4, 28, 1)[..4 * 28 * 14],
                ),
            ),
        ),
        "square",
    );
    refused(
        &write_npz(
            d,
            "volume.npz",
            &with(
                good(),
                ti,
                npy("|u1", false, &[1, 28, 28, 28], &vec![0; 28 * 28 * 28]),
            ),
        ),
        "3-D",
    );
    refused(
        &write_npz(
            d,
            "count.npz",
            &with(
                good(),
                "train_labels.npy",
                npy("|u1", false, &[3, 1], &[0, 1, 0]),
            ),
        ),
        "has 4 images but train_labels has 3",
    );
    refused(
        &write_npz(
            d,
            "multilabel.npz",
            &with(
                good(),
                "val_labels.npy",
                npy("|u1", false, &[4, 14], &[0; 56]),
            ),
        ),
        "multi-label",
    );
    refused(
        &write_npz(
            d,
            "structured.npz",
            &with(
                good(),
                ti,
                npy_raw(
                    "{'descr': [('a', '<u1')], 'fortran_order': False, 'shape': (1,), }",
                    &[0],
                ),
            ),
        ),
        "structured",
    );
    let mut missing = good();
    missing.retain(|(n, _)| n != "test_labels.npy");
    refused(
        &write_npz(d, "missing.npz", &missing),
        "no array \"test_labels\"",
    );
    let mut empty = good();
    for split in ["train", "val", "test"] {
        empty = with(
            empty,
            &format!("{split}_images.npy"),
            npy("|u1", false, &[0, 28, 28], &[]),
        );
        empty = with(
            empty,
            &format!("{split}_labels.npy"),
            npy("|u1", false, &[0, 1], &[]),
        );
    }
    refused(&write_npz(d, "empty.npz", &empty), "empty");

    let junk = d.join("junk.npz");
    std::fs::write(&junk, b"this is not a zip archive").unwrap();
    refused(&junk, "not a zip archive");
    match load_medmnist(&d.join("absent.npz")) {
        Err(ModelError::Io { path, .. }) => assert!(path.ends_with("absent.npz")),
        other => panic!("expected an io error, got {other:?}"),
    }
}

#[test]
fn npy_parser_accepts_version_2_headers() {
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }\n";
    b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&[1, 2, 3, 4]);
    let a = parse_npy_u8(&b).unwrap();
    assert_eq!(a.shape, vec![2, 2]);
    assert_eq!(a.data, vec![1, 2, 3, 4]);
    // A header length pointing past the end is refused, not read out of bounds.
    let mut cut = b.clone();
    cut[8] = 0xff;
    assert!(parse_npy_u8(&cut).is_err());
}

/// The shared PneumoniaMNIST file, when present, has the documented layout.
#[test]
fn shared_pneumoniamnist_layout() {
    let Some(dir) = data_dir() else { return };
    let s = load_medmnist(&dir.join("pneumoniamnist.npz")).unwrap();
    assert_eq!(s.train.class_counts(), vec![1213, 3494]);
    assert_eq!(s.val.class_counts(), vec![135, 389]);
    assert_eq!(s.test.class_counts(), vec![234, 390]);
    assert_eq!(s.train.size(), 28);
}

/// `PRIMIA_DATA_DIR`, else the shared data beside the workspace.
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.join("pneumoniamnist.npz").is_file() {
        return Some(dir);
    }
    if std::env::var("PRIMIA_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "PRIMIA_REQUIRE_DATA=1 but {} has no pneumoniamnist.npz",
            dir.display()
        );
    }
    eprintln!("skipping: shared data not found at {}", dir.display());
    None
}
