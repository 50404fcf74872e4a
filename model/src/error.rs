//! The error type of `primia-model`: one enum, each variant carrying what went wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Messages are lowercase with no trailing period, and name the file, key or
/// parameter concerned so that an operator can act on them.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed inside candle (a shape bug or an allocation failure).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A NumPy `.npz` archive or one of its `.npy` members is unusable.
    #[error("bad npz file {path}: {reason}")]
    Npz { path: PathBuf, reason: String },

    /// A weights file (safetensors) is unusable or belongs to another model.
    #[error("bad weights {what}: {reason}")]
    Weights { what: String, reason: String },

    /// A flat parameter vector does not have the model's length.
    #[error("flat parameter vector has {got} values, the model has {expected}")]
    FlatLength { expected: usize, got: usize },

    /// A model description is impossible (input too small, no classes, ...).
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),

    /// A training or evaluation setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A data set is empty, inconsistent, or does not fit the model.
    #[error("invalid data: {0}")]
    InvalidData(String),

    /// Loading a folder of medical images failed.
    #[error("cannot load image folder {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
}

/// Result type of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
