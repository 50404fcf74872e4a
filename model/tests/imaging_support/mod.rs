//! Shared helpers of the imaging tests: finding the shared data corpus.

#![allow(dead_code)]

use std::path::PathBuf;

/// The shared DICOM corpus folder, or `None` (after saying so on stderr)
/// when it is missing; with `PRIMIA_REQUIRE_DATA=1` a missing corpus fails.
pub fn dicom_corpus(test: &str) -> Option<PathBuf> {
    let base = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let dir = base.join("dicom");
    if dir.join("EXPECTED.json").is_file() {
        return Some(dir);
    }
    if std::env::var("PRIMIA_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "{test}: PRIMIA_REQUIRE_DATA=1 but the DICOM corpus {} is missing",
            dir.display()
        );
    }
    eprintln!(
        "skipping {test}: DICOM corpus {} not found (set PRIMIA_DATA_DIR)",
        dir.display()
    );
    None
}
