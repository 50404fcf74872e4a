//! Data sets in the form the networks take: [`Dataset`] and the train/validation/test [`Splits`].
//!
//! Loaders (MedMNIST `.npz`, a folder of images, the synthetic phantom) all
//! end here, and splitting across hospitals starts here.

pub mod folder;
pub mod npz;
pub mod phantom;
pub mod resize;
pub mod split;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Labelled grey-level square images, ready for a model.
///
/// Pixel values are grey levels in [0, 1] at the model's input size; the
/// fixed normalisation to the network's input range happens inside
/// [`crate::Model::forward`], so that it travels with the model.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// `len() * size * size` values, image after image, row-major.
    images: Vec<f32>,
    labels: Vec<u32>,
    size: usize,
    classes: usize,
    class_names: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("size", &self.size)
            .field("classes", &self.class_names)
            .field("class_counts", &self.class_counts())
            .finish()
    }
}

impl Dataset {
    /// Checks and wraps images and labels. Class names default to "0", "1", ...
    pub fn new(images: Vec<f32>, labels: Vec<u32>, size: usize, classes: usize) -> Result<Self> {
        let names = (0..classes).map(|c| c.to_string()).collect();
        Dataset::with_class_names(images, labels, size, names)
    }

    /// As [`Dataset::new`], with names for the classes (their number sets the class count).
    pub fn with_class_names(
        images: Vec<f32>,
        labels: Vec<u32>,
        size: usize,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let classes = class_names.len();
        if size == 0 {
            return Err(ModelError::InvalidData("image size 0".into()));
        }
        if classes < 2 {
            return Err(ModelError::InvalidData(format!(
                "{classes} classes; at least 2 are needed"
            )));
        }
        let per = size * size;
        if images.len() != labels.len() * per {
            return Err(ModelError::InvalidData(format!(
                "{} pixel values for {} labels of {size}x{size} images",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes)
        {
            return Err(ModelError::InvalidData(format!(
                "label {l} of example {i} is not below the class count {classes}"
            )));
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidData(format!(
                "pixel {} of example {} is not a finite number",
                i % per,
                i / per
            )));
        }
        Ok(Dataset {
            images,
            labels,
            size,
            classes,
            class_names,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Side of the square images.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[f32] {
        &self.images
    }

    /// Image `i`, `size * size` values.
    pub fn image(&self, i: usize) -> &[f32] {
        let per = self.size * self.size;
        &self.images[i * per..(i + 1) * per]
    }

    /// Examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The examples at `indices`, in that order (indices may repeat).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let per = self.size * self.size;
        let mut images = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(ModelError::InvalidData(format!(
                    "index {i} out of range for a data set of {}",
                    self.len()
                )));
            }
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            images,
            labels,
            size: self.size,
            classes: self.classes,
            class_names: self.class_names.clone(),
        })
    }

    /// The same examples resized to `size` (area averaging when shrinking,
    /// bilinear when enlarging). Returns a clone when the size already fits.
    pub fn resized(&self, size: usize) -> Result<Dataset> {
        if size == self.size {
            return Ok(self.clone());
        }
        if size == 0 {
            return Err(ModelError::InvalidData("cannot resize to 0x0".into()));
        }
        let mut images = Vec::with_capacity(self.len() * size * size);
        for i in 0..self.len() {
            images.extend(resize::resize(
                self.image(i),
                self.size,
                self.size,
                size,
                size,
            ));
        }
        Ok(Dataset {
            images,
            labels: self.labels.clone(),
            size,
            classes: self.classes,
            class_names: self.class_names.clone(),
        })
    }

    /// Makes the batch tensor (N, 1, size, size) of the examples at `indices`.
    pub fn batch_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let per = self.size * self.size;
        let mut buf = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            buf.extend_from_slice(self.image(i));
        }
        Ok(Tensor::from_vec(
            buf,
            (indices.len(), 1, self.size, self.size),
            device,
        )?)
    }
}

/// A data set cut into the usual three parts.
#[derive(Debug, Clone)]
pub struct Splits {
    /// What the model learns from.
    pub train: Dataset,
    /// For choices made during training: when to stop, which epoch to keep, the decision threshold.
    pub val: Dataset,
    /// Touched only for the final figures.
    pub test: Dataset,
}

impl Splits {
    /// All three parts resized to `size`.
    pub fn resized(&self, size: usize) -> Result<Splits> {
        Ok(Splits {
            train: self.train.resized(size)?,
            val: self.val.resized(size)?,
            test: self.test.resized(size)?,
        })
    }

    /// Cuts one labelled collection into train/validation/test, stratified by
    /// class and deterministic by seed (for a folder of images, which has no
    /// official split). `val_frac` and `test_frac` are fractions of each class.
    pub fn stratified(all: &Dataset, val_frac: f64, test_frac: f64, seed: u64) -> Result<Splits> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        if !(0.0..1.0).contains(&val_frac)
            || !(0.0..1.0).contains(&test_frac)
            || val_frac + test_frac >= 1.0
        {
            return Err(ModelError::InvalidConfig(format!(
                "validation {val_frac} and test {test_frac} fractions must be in [0, 1) and sum below 1"
            )));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut tr, mut va, mut te) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..all.classes() {
            let mut idx: Vec<usize> = (0..all.len())
                .filter(|&i| all.labels()[i] as usize == c)
                .collect();
            idx.shuffle(&mut rng);
            let n = idx.len();
            let n_te = (n as f64 * test_frac).round() as usize;
            let n_va = (n as f64 * val_frac).round() as usize;
            te.extend_from_slice(&idx[..n_te]);
            va.extend_from_slice(&idx[n_te..n_te + n_va]);
            tr.extend_from_slice(&idx[n_te + n_va..]);
        }
        // Sorted, so the order inside each part does not depend on class order.
        tr.sort_unstable();
        va.sort_unstable();
        te.sort_unstable();
        for (name, part) in [("training", &tr), ("validation", &va), ("test", &te)] {
            if part.is_empty() {
                return Err(ModelError::InvalidData(format!(
                    "{} examples are too few: the {name} part would be empty",
                    all.len()
                )));
            }
        }
        Ok(Splits {
            train: all.subset(&tr)?,
            val: all.subset(&va)?,
            test: all.subset(&te)?,
        })
    }
}

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The built-in synthetic phantom ([`phantom`]); needs no files.
    Phantom,
    /// A MedMNIST-layout `.npz` with its official splits ([`npz`]).
    MedMnist(PathBuf),
    /// A folder with one subfolder of images per class ([`folder`]).
    Folder(PathBuf),
}

impl DataSource {
    /// No path: the phantom; a directory: a folder of classes; a file: an `.npz`.
    pub fn from_path(path: Option<&Path>) -> Self {
        match path {
            None => DataSource::Phantom,
            Some(p) if p.is_dir() => DataSource::Folder(p.to_path_buf()),
            Some(p) => DataSource::MedMnist(p.to_path_buf()),
        }
    }
}

/// Fractions of a folder's images (per class) held out for validation and test.
pub const FOLDER_VAL_FRAC: f64 = 0.1;
/// See [`FOLDER_VAL_FRAC`].
pub const FOLDER_TEST_FRAC: f64 = 0.2;

/// Data ready for centralised training.
#[derive(Debug, Clone)]
pub struct LoadedData {
    pub splits: Splits,
    /// One line saying what was loaded, for people.
    pub description: String,
    /// Files of a folder that could not be used, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Default model input side when the data does not come with one.
pub const DEFAULT_INPUT_SIZE: usize = 28;

/// Loads `source` at `input_size` x `input_size` (by default an `.npz`'s
/// own size, else [`DEFAULT_INPUT_SIZE`]). A folder (which has no official
/// split) is split stratified by `seed`; the phantom's images depend on
/// `seed` too.
pub fn load(source: &DataSource, input_size: Option<usize>, seed: u64) -> Result<LoadedData> {
    let default = input_size.unwrap_or(DEFAULT_INPUT_SIZE);
    let (splits, what, skipped) = match source {
        DataSource::Phantom => (
            phantom::phantom_splits(
                default,
                phantom::PHANTOM_TRAIN,
                phantom::PHANTOM_VAL,
                phantom::PHANTOM_TEST,
                seed,
            )?,
            "synthetic chest X-ray phantom".to_string(),
            Vec::new(),
        ),
        DataSource::MedMnist(path) => {
            let s = npz::load_medmnist(path)?;
            let native = s.train.size();
            (
                s.resized(input_size.unwrap_or(native))?,
                format!(
                    "{} (MedMNIST, {native}x{native}, official splits)",
                    path.display()
                ),
                Vec::new(),
            )
        }
        DataSource::Folder(path) => {
            let f = folder::load_folder_dataset(path, default)?;
            (
                Splits::stratified(&f.dataset, FOLDER_VAL_FRAC, FOLDER_TEST_FRAC, seed)?,
                format!(
                    "{} (image folder, stratified split by seed {seed})",
                    path.display()
                ),
                f.skipped,
            )
        }
    };
    let description = format!(
        "{what}: train {} {:?}, val {} {:?}, test {} {:?}",
        splits.train.len(),
        splits.train.class_counts(),
        splits.val.len(),
        splits.val.class_counts(),
        splits.test.len(),
        splits.test.class_counts(),
    );
    Ok(LoadedData {
        splits,
        description,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Dataset {
        let images = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
        let labels = (0..n).map(|i| (i % 2) as u32).collect();
        Dataset::new(images, labels, 2, 2).unwrap()
    }

    #[test]
    fn refuses_inconsistent_data() {
        assert!(Dataset::new(vec![0.0; 7], vec![0, 1], 2, 2).is_err());
        assert!(Dataset::new(vec![0.0; 8], vec![0, 2], 2, 2).is_err());
        assert!(Dataset::new(vec![f32::NAN; 8], vec![0, 1], 2, 2).is_err());
        assert!(Dataset::new(vec![0.0; 8], vec![0, 0], 2, 1).is_err());
    }

    #[test]
    fn subset_and_counts() {
        let d = tiny(10);
        assert_eq!(d.class_counts(), vec![5, 5]);
        let s = d.subset(&[1, 3, 3]).unwrap();
        assert_eq!(s.labels(), &[1, 1, 1]);
        assert_eq!(s.image(1), d.image(3));
        assert!(d.subset(&[10]).is_err());
    }

    #[test]
    fn stratified_split_keeps_every_example_once() {
        let d = tiny(100);
        let s = Splits::stratified(&d, 0.1, 0.2, 7).unwrap();
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 100);
        assert_eq!(s.test.class_counts(), vec![10, 10]);
        assert_eq!(s.val.class_counts(), vec![5, 5]);
        let again = Splits::stratified(&d, 0.1, 0.2, 7).unwrap();
        assert_eq!(s.test, again.test);
        assert!(Splits::stratified(&tiny(2), 0.1, 0.1, 7).is_err());
    }
}
