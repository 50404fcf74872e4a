//! `primiad inspect --json` run as a user runs it, on every file of the shared
//! DICOM corpus (checked against `EXPECTED.json`) and on refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The shared DICOM corpus, or `None` after saying so; fails instead under
/// `PRIMIA_REQUIRE_DATA=1`.
fn dicom_corpus() -> Option<PathBuf> {
    primia_tests::shared_data_file("dicom/EXPECTED.json")
        .and_then(|f| f.parent().map(Path::to_path_buf))
}

/// Runs `primiad inspect --json FILE`: exit success and the parsed document.
fn inspect_json(file: &Path) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_primiad"))
        .args(["inspect", "--json"])
        .arg(file)
        .output()
        .expect("run primiad");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let doc = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {stdout}", file.display()));
    (out.status.success(), doc)
}

/// Means to 1e-9 relative: sums of exact integers in f64 on both sides.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn inspect_json_agrees_with_expected_json_on_every_corpus_file() {
    let Some(dir) = dicom_corpus() else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("EXPECTED.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let expected = expected.as_object().unwrap();
    assert!(!expected.is_empty());

    for (file, want) in expected {
        let (ok, got) = inspect_json(&dir.join(file));
        if want.get("error").is_some() {
            // Refused, with a non-zero exit and an `error` field (pydicom
            // and we word the truncated RT plan differently; the model
            // crate's corpus test pins the reason).
            assert!(!ok, "{file}: exit status success for a refused file");
            let error = got["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: {got}"));
            assert!(!error.is_empty());
            continue;
        }
        assert!(ok, "{file}: {got}");
        assert_eq!(got["format"], "dicom", "{file}");
        for key in [
            "ts",
            "rows",
            "columns",
            "samples_per_pixel",
            "bits_allocated",
            "photometric",
        ] {
            assert_eq!(got[key], want[key], "{file}: {key}");
        }
        let num = |doc: &Value, key: &str| {
            doc[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{file}: no {key} in {doc}"))
        };
        assert_eq!(num(&got, "min"), num(want, "min"), "{file}: min");
        assert_eq!(num(&got, "max"), num(want, "max"), "{file}: max");
        assert!(
            close(num(&got, "mean"), num(want, "mean")),
            "{file}: mean {got}"
        );
        if want.get("rescale").is_some() {
            assert_eq!(got["rescale"], want["rescale"], "{file}: rescale");
            assert_eq!(
                num(&got, "rescaled_min"),
                num(want, "rescaled_min"),
                "{file}"
            );
            assert_eq!(
                num(&got, "rescaled_max"),
                num(want, "rescaled_max"),
                "{file}"
            );
            assert!(
                close(num(&got, "rescaled_mean"), num(want, "rescaled_mean")),
                "{file}: rescaled mean {got}"
            );
        } else {
            assert!(
                got.get("rescaled_min").is_none(),
                "{file}: rescaled stats without a rescale"
            );
        }
    }
}

#[test]
fn inspect_reports_errors_as_json_and_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, b"not an image\n").unwrap();

    let (ok, doc) = inspect_json(&path);
    assert!(!ok);
    assert_eq!(
        doc["error"],
        "not an image file (no DICOM, PNG or JPEG signature)"
    );
    assert_eq!(doc["file"], path.display().to_string());

    let out = Command::new(env!("CARGO_BIN_EXE_primiad"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("notes.txt: not an image file"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn inspect_text_output_names_the_fields() {
    let Some(dir) = dicom_corpus() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_primiad"))
        .arg("inspect")
        .arg(dir.join("CT_small.dcm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "format             dicom",
        "ts                 1.2.840.10008.1.2.1",
        "rows               128",
        "rescaled_min       -896.0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
