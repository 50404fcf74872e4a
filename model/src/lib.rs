//! Chest X-ray networks, training, evaluation and medical image loading.

pub mod imaging;
