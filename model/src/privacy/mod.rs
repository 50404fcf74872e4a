//! Differential privacy: the Renyi-DP accountant and DP-SGD.
//!
//! - [`accountant`]: epsilon of the Poisson-subsampled Gaussian mechanism
//!   after T steps, the noise multiplier for a target epsilon, and
//!   [`PrivacyAccountant`], which records the steps a data set has been
//!   through and reports what they spent.
//! - [`dpsgd`]: DP-SGD training, [`DpTrainer`] and [`dp_local_update`]
//!   (Poisson-sampled batches, per-example clipping, Gaussian noise),
//!   configured by a [`DpConfig`]; per-example gradients come from one
//!   batched backward pass ([`per_example`]).

pub mod accountant;
pub mod dpsgd;
pub mod per_example;

pub use accountant::{
    Composition, NoiseSearch, PrivacyAccountant, PrivacySpent, compute_rdp, default_orders,
    epsilon, epsilon_from_rdp, noise_multiplier_for,
};
pub use dpsgd::{DpConfig, DpTrainer, dp_local_update, private_gradient};
pub use per_example::{ClippedSum, clipped_gradient_sum, per_example_gradients};
