//! Differential privacy: the Renyi-DP accountant and DP-SGD.
//!
//! - [`accountant`]: epsilon of the Poisson-subsampled Gaussian mechanism
//!   after T steps, the noise multiplier for a target epsilon, and
//!   [`PrivacyAccountant`], which records the steps a data set has been
//!   through and reports what they spent.

pub mod accountant;

pub use accountant::{
    Composition, NoiseSearch, PrivacyAccountant, PrivacySpent, compute_rdp, default_orders,
    epsilon, epsilon_from_rdp, noise_multiplier_for,
};
