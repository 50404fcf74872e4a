//! Loading a folder of class subfolders into labelled model inputs.
//!
//! `root/<class>/...` with any mix of DICOM, PNG and JPEG (by content, not
//! extension), nested folders allowed. Class names sorted byte-wise become
//! labels 0..k. Files are visited in sorted path order and the result keeps
//! that order whatever the thread count, so a load is reproducible. A file
//! that cannot be used is listed in [`FolderLoad::skipped`] with its reason;
//! loading never stops at one and never drops one silently.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{ImagingError, Limits, decode_file_with};

/// Largest `size` accepted for model input (`size` x `size`).
pub const MAX_MODEL_INPUT_SIZE: usize = 4096;

/// Bounds and knobs of [`load_folder_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Per-file bounds.
    pub limits: Limits,
    /// Upper bound on the bytes of the returned images (`4 * size * size`
    /// each). Checked against the number of candidate files before any
    /// decoding, so an oversized folder fails at once rather than after an
    /// hour.
    pub max_output_bytes: u64,
    /// How deep below a class folder files are looked for (series folders
    /// nest, symbolic link loops must not).
    pub max_depth: usize,
    /// Decoding threads; 0 means one per available core (at most 8).
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            // 4 GiB of f32: 1.4 M images at 28x28, 21 k at 224x224.
            max_output_bytes: 4 << 30,
            max_depth: 8,
            threads: 0,
        }
    }
}

/// A file the loader could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The usable images of a folder, their labels, and what was skipped.
#[derive(Debug, Clone, Default)]
pub struct FolderLoad {
    /// One `size * size` grey image a file, values in `[0, 1]`.
    pub images: Vec<Vec<f32>>,
    /// Index into `class_names`, one a image.
    pub labels: Vec<u32>,
    /// Subfolder names in sorted order: label i is `class_names[i]`.
    pub class_names: Vec<String>,
    /// Every file or entry not loaded, in path order.
    pub skipped: Vec<Skipped>,
}

impl FolderLoad {
    /// Number of images of each class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// A report for people: counts per class, then every skipped file with
    /// its reason (the first 50; the rest counted).
    pub fn summary(&self) -> String {
        const SHOWN: usize = 50;
        let classes: Vec<String> = self
            .class_names
            .iter()
            .zip(self.class_counts())
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        let mut out = format!(
            "loaded {} images in {} classes ({}); skipped {} files",
            self.images.len(),
            self.class_names.len(),
            classes.join(", "),
            self.skipped.len()
        );
        for s in self.skipped.iter().take(SHOWN) {
            let _ = write!(out, "\n  skipped {}: {}", s.path.display(), s.reason);
        }
        if self.skipped.len() > SHOWN {
            let _ = write!(out, "\n  ... and {} more", self.skipped.len() - SHOWN);
        }
        out
    }
}

/// Loads `path/<class>/...` as `size` x `size` model inputs with the default
/// [`LoadOptions`].
pub fn load_folder(path: &Path, size: usize) -> Result<FolderLoad, ImagingError> {
    load_folder_with(path, size, &LoadOptions::default())
}

/// Loads a folder of class subfolders (see the module docs). Errors only for
/// the folder as a whole (missing, no classes, over the memory bound); every
/// per-file problem becomes a [`Skipped`] entry.
pub fn load_folder_with(
    path: &Path,
    size: usize,
    options: &LoadOptions,
) -> Result<FolderLoad, ImagingError> {
    if size == 0 || size > MAX_MODEL_INPUT_SIZE {
        return Err(ImagingError::InvalidSize {
            size,
            max: MAX_MODEL_INPUT_SIZE,
        });
    }
    let meta = std::fs::metadata(path).map_err(|cause| ImagingError::Io {
        path: path.to_owned(),
        cause,
    })?;
    if !meta.is_dir() {
        return Err(ImagingError::NotADirectory {
            path: path.to_owned(),
        });
    }

    let mut skipped = Vec::new();
    let mut class_names = Vec::new();
    let mut candidates: Vec<(PathBuf, u32)> = Vec::new();
    for entry in sorted_entries(path)? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_dir = std::fs::metadata(&entry).map(|m| m.is_dir());
        match is_dir {
            Err(cause) => skipped.push(Skipped {
                path: entry,
                reason: format!("cannot read: {cause}"),
            }),
            Ok(_) if name.starts_with('.') => skipped.push(Skipped {
                path: entry,
                reason: "hidden entry, not a class".to_owned(),
            }),
            Ok(true) => {
                let label = class_names.len() as u32;
                class_names.push(name);
                collect_files(
                    &entry,
                    label,
                    0,
                    options.max_depth,
                    &mut candidates,
                    &mut skipped,
                );
            }
            Ok(false) => skipped.push(Skipped {
                path: entry,
                reason: "file outside any class folder".to_owned(),
            }),
        }
    }
    if class_names.is_empty() {
        return Err(ImagingError::NoClasses {
            path: path.to_owned(),
        });
    }

    let needed_bytes = (candidates.len() as u64).saturating_mul((size * size * 4) as u64);
    if needed_bytes > options.max_output_bytes {
        return Err(ImagingError::TooManyImages {
            path: path.to_owned(),
            files: candidates.len(),
            size,
            needed_bytes,
            max_bytes: options.max_output_bytes,
        });
    }

    let results = decode_all(&candidates, size, options);
    let mut load = FolderLoad {
        class_names,
        ..FolderLoad::default()
    };
    for ((file, label), result) in candidates.into_iter().zip(results) {
        match result {
            Ok(image) => {
                load.images.push(image);
                load.labels.push(label);
            }
            Err(err) => skipped.push(Skipped {
                path: file,
                reason: err.reason(),
            }),
        }
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    load.skipped = skipped;
    Ok(load)
}

/// The entries of a directory, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ImagingError> {
    let io = |cause| ImagingError::Io {
        path: dir.to_owned(),
        cause,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

/// Gathers the files under a class folder, in sorted order.
fn collect_files(
    dir: &Path,
    label: u32,
    depth: usize,
    max_depth: usize,
    out: &mut Vec<(PathBuf, u32)>,
    skipped: &mut Vec<Skipped>,
) {
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(err) => {
            skipped.push(Skipped {
                path: dir.to_owned(),
                reason: err.reason(),
            });
            return;
        }
    };
    for entry in entries {
        let hidden = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        match std::fs::metadata(&entry) {
            Err(cause) => skipped.push(Skipped {
                path: entry,
                reason: format!("cannot read: {cause}"),
            }),
            Ok(_) if hidden => skipped.push(Skipped {
                path: entry,
                reason: "hidden entry".to_owned(),
            }),
            Ok(m) if m.is_dir() => {
                if depth + 1 > max_depth {
                    skipped.push(Skipped {
                        path: entry,
                        reason: format!(
                            "folder nested more than {max_depth} levels below its class"
                        ),
                    });
                } else {
                    collect_files(&entry, label, depth + 1, max_depth, out, skipped);
                }
            }
            Ok(_) => out.push((entry, label)),
        }
    }
}

/// Decodes every candidate, in parallel, results in candidate order.
fn decode_all(
    candidates: &[(PathBuf, u32)],
    size: usize,
    options: &LoadOptions,
) -> Vec<Result<Vec<f32>, ImagingError>> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        n => n,
    }
    .clamp(1, candidates.len().max(1));
    let decode_one = |file: &Path| {
        decode_file_with(file, &options.limits).map(|image| image.to_model_input(size))
    };
    if threads == 1 {
        return candidates
            .iter()
            .map(|(file, _)| decode_one(file))
            .collect();
    }
    // Workers take the next index from a shared counter, so a slow file
    // does not hold up a fixed share; results are put back in order.
    let next = AtomicUsize::new(0);
    let mut indexed: Vec<(usize, Result<Vec<f32>, ImagingError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((file, _)) = candidates.get(i) else {
                            break;
                        };
                        done.push((i, decode_one(file)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(done) => done,
                // Decoding does not panic (see the module docs of
                // `imaging`); were it to, re-raise it rather than lose files.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}
