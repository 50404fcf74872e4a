//! Chest X-ray networks, training, evaluation and medical image loading.
//!
//! The central types:
//!
//! - [`Model`]: a network built from a [`ModelSpec`] (architecture, input
//!   size, classes) with seeded weights. Its parameters flatten to one
//!   `Vec<f32>` in a fixed order and back, bit for bit, which is what secure
//!   aggregation sums; its [`Fingerprint`] lets members refuse updates from
//!   another architecture; its weights save as safetensors.
//! - [`Dataset`]: grey-level square images in [0, 1] with class labels, as
//!   loaded from MedMNIST `.npz` ([`data::npz`]), a folder of DICOM, PNG and
//!   JPEG files (through [`imaging`]), or generated ([`data::phantom`]), and
//!   split across hospitals ([`data::split`]).
//! - [`train_steps`] and [`evaluate`]: train k mini-batch steps with a
//!   [`TrainConfig`] and report a [`TrainReport`] (what a federated member
//!   does each round; [`Trainer`] keeps optimiser state across calls for
//!   centralised training), and measure [`Metrics`] (accuracy, exact
//!   ROC-AUC, sensitivity, specificity, MCC, confusion matrix, loss).
//!
//! Everything random takes a seed or an `Rng`: the same inputs give the same
//! weights. The networks use GroupNorm, not BatchNorm: GroupNorm has no
//! running statistics, so a model is fully described by its trainable
//! weights (nothing that cannot be averaged across hospitals, nothing that
//! depends on one hospital's batch mix), it behaves the same in training and
//! inference, and it normalises each example on its own, which per-example
//! gradient clipping in DP-SGD requires.

pub mod augment;
pub mod data;
pub mod error;
pub mod fit;
pub mod imaging;
pub mod kernels;
mod layers;
pub mod metrics;
pub mod model;
mod nets;
pub mod optim;
pub mod privacy;
pub mod runtime;
pub mod spec;
pub mod train;

pub use augment::AugmentConfig;
pub use data::{Dataset, Splits};
pub use error::{ModelError, Result};
pub use fit::{FitConfig, FitReport, Selection, ThresholdPolicy, fit};
pub use metrics::Metrics;
pub use model::Model;
pub use optim::{LrSchedule, OptimizerKind};
pub use spec::{Architecture, Fingerprint, ModelSpec};
pub use train::{
    ClassWeighting, LocalUpdate, TrainConfig, TrainReport, Trainer, evaluate, evaluate_at,
    local_update, predict_proba, train_steps,
};
