//! Data sources end to end: a folder of class subfolders through the imaging loader, and the phantom default.

use std::path::Path;

use primia_model::data::{self, DataSource};

/// Writes a `side` x `side` grey PNG whose pixels are `value`, with a bright
/// square for class "pneumonia" so the classes differ.
fn write_png(path: &Path, side: u32, value: u8, bright: bool) {
    let img = image::GrayImage::from_fn(side, side, |x, y| {
        let inside =
            bright && (side / 4..side / 2).contains(&x) && (side / 4..side / 2).contains(&y);
        image::Luma([if inside { 250 } else { value }])
    });
    img.save(path).unwrap();
}

#[test]
fn folder_of_classes_loads_splits_and_reports_skipped_files() {
    let dir = tempfile::tempdir().unwrap();
    for (class, bright) in [("normal", false), ("pneumonia", true)] {
        let sub = dir.path().join(class);
        std::fs::create_dir(&sub).unwrap();
        for i in 0..20u8 {
            write_png(&sub.join(format!("{i:02}.png")), 40, 20 + i, bright);
        }
    }
    // A file that is not an image must be reported, not silently dropped.
    std::fs::write(dir.path().join("normal").join("notes.png"), b"not a png").unwrap();

    let source = DataSource::from_path(Some(dir.path()));
    assert_eq!(source, DataSource::Folder(dir.path().to_path_buf()));
    let loaded = data::load(&source, Some(16), 3).unwrap();
    let s = &loaded.splits;
    assert_eq!(
        s.train.class_names(),
        &["normal".to_string(), "pneumonia".to_string()]
    );
    assert_eq!(s.train.size(), 16);
    assert_eq!(s.train.len() + s.val.len() + s.test.len(), 40);
    // 10% / 20% of each class of 20.
    assert_eq!(s.val.class_counts(), vec![2, 2]);
    assert_eq!(s.test.class_counts(), vec![4, 4]);
    assert_eq!(loaded.skipped.len(), 1, "{:?}", loaded.skipped);
    assert!(loaded.skipped[0].0.ends_with("notes.png"));
    assert!(!loaded.skipped[0].1.is_empty());
    assert!(s.train.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
    // Same seed, same split; another seed, another split.
    let again = data::load(&source, Some(16), 3).unwrap();
    assert_eq!(again.splits.test, s.test);
    let other = data::load(&source, Some(16), 4).unwrap();
    assert_ne!(other.splits.test, s.test);
}

#[test]
fn folder_with_one_class_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("normal");
    std::fs::create_dir(&sub).unwrap();
    for i in 0..4u8 {
        write_png(&sub.join(format!("{i}.png")), 20, 10 * i, false);
    }
    let err = data::load(&DataSource::Folder(dir.path().to_path_buf()), Some(16), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn no_path_means_the_phantom() {
    assert_eq!(DataSource::from_path(None), DataSource::Phantom);
    let missing = Path::new("/nonexistent/data.npz");
    assert_eq!(
        DataSource::from_path(Some(missing)),
        DataSource::MedMnist(missing.to_path_buf())
    );
    let err = data::load(&DataSource::MedMnist(missing.to_path_buf()), None, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/data.npz"), "{err}");
}
