//! What the model crate's slow and data-bound tests share: the opt-in
//! switch for slow tests and the locator of the shared PneumoniaMNIST file.

use std::path::{Path, PathBuf};

/// Whether `PRIMIA_SLOW_TESTS=1`; otherwise prints that `name` skips.
pub fn slow_tests_enabled(name: &str) -> bool {
    if std::env::var("PRIMIA_SLOW_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping {name}: slow test, set PRIMIA_SLOW_TESTS=1 to run it");
    false
}

/// `pneumoniamnist.npz` in `PRIMIA_DATA_DIR`, else in the shared data beside
/// the workspace. Missing: a panic under `PRIMIA_REQUIRE_DATA=1` (CI), else
/// `None` with a message.
pub fn pneumoniamnist() -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let file = dir.join("pneumoniamnist.npz");
    if file.is_file() {
        return Some(file);
    }
    if std::env::var("PRIMIA_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "PRIMIA_REQUIRE_DATA=1 but {} has no pneumoniamnist.npz",
            dir.display()
        );
    }
    eprintln!(
        "skipping: pneumoniamnist.npz not found in {}",
        dir.display()
    );
    None
}
