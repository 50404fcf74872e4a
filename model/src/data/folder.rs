//! A folder of class subfolders (DICOM, PNG, JPEG in any mix) as a [`Dataset`], through [`crate::imaging`].

use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{ModelError, Result};
use crate::imaging;

/// A folder loaded for training: the examples and the files that could not be used.
#[derive(Debug, Clone)]
pub struct FolderData {
    pub dataset: Dataset,
    /// Each unusable file and why, so the caller can report them.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads `path/<class>/<files>` at `size` x `size`; classes are the
/// subfolder names in the imaging loader's order.
pub fn load_folder_dataset(path: &Path, size: usize) -> Result<FolderData> {
    let load = imaging::load_folder(path, size).map_err(|e| ModelError::Folder {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let skipped: Vec<(PathBuf, String)> = load
        .skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect();
    if load.class_names.len() < 2 {
        return Err(ModelError::Folder {
            path: path.to_path_buf(),
            reason: format!(
                "{} class subfolder(s) with usable images; at least 2 are needed",
                load.class_names.len()
            ),
        });
    }
    let per = size * size;
    let mut pixels = Vec::with_capacity(load.images.len() * per);
    for (i, img) in load.images.iter().enumerate() {
        if img.len() != per {
            return Err(ModelError::Folder {
                path: path.to_path_buf(),
                reason: format!("image {i} has {} values, expected {size}x{size}", img.len()),
            });
        }
        pixels.extend_from_slice(img);
    }
    let dataset = Dataset::with_class_names(pixels, load.labels, size, load.class_names)?;
    Ok(FolderData { dataset, skipped })
}
