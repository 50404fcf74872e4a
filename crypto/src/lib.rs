//! Pure cryptographic primitives of primia: no IO, no clock, no OS randomness.
//!
//! Everything a secure-aggregation round needs, and nothing that talks to the
//! outside world: callers pass randomness in (`&mut R` with
//! `R: rand_core::CryptoRng`), so a whole consortium can be replayed from a
//! seed.
//!
//! # Central types and how they fit
//!
//! - [`IdentityKey`] / [`PublicIdentity`]: a member's long-term ed25519
//!   identity; every protocol message is signed with it under a named
//!   context ([`kdf::MESSAGE_SIGNATURE`]).
//! - [`AgreementSecret`] / [`AgreementPublic`]: fresh x25519 pairs per
//!   attempt. [`AgreementSecret::agree`] yields a [`SharedSecret`], from which
//!   [`SharedSecret::derive`] produces purpose-bound keys under the named
//!   contexts of [`kdf`]: the share-encryption key for [`seal`]/[`open`] and
//!   the pairwise mask seed s_uv.
//! - [`Secret32`]: every 32-byte secret (seeds, derived keys); zeroized on
//!   drop and never printed.
//! - [`split`] / [`reconstruct`] / [`Interpolator`]: Shamir t-of-n sharing of a
//!   [`Secret32`] over the curve25519 scalar field, so survivors can rebuild
//!   the self-mask seed b_u of a member that stayed, or the mask key of one
//!   that dropped.
//! - [`prg`]: expands a seed into the mask over the ring [`Ring`] = Z/2^64;
//!   [`prg::add_mask`] / [`prg::sub_mask`] apply it in place.
//! - [`fixed`]: encodes a member's weighted update `n_u * delta_u` and `n_u`
//!   into the ring and decodes the sum, with bounds chosen so that a sum of
//!   [`fixed::MAX_MEMBERS`] members can never wrap.
//!
//! A member's masked input is `fixed::encode_update(..)` followed by
//! [`prg::apply_masks`] with its self-mask seed b_u and, for each peer v, the
//! pairwise seed s_uv added (v < u) or subtracted (v > u); the pairwise masks
//! cancel in the sum, the self masks are removed with seeds rebuilt from
//! shares:
//!
//! ```
//! use primia_crypto::{AgreementSecret, Secret32, add_assign, fixed, kdf, prg, split, reconstruct};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(1);
//! let (k1, k2) = (AgreementSecret::generate(&mut rng), AgreementSecret::generate(&mut rng));
//! // Both members derive the same pairwise seed from their DH secret.
//! let s12 = k1.agree(&k2.public())?.derive(kdf::PAIRWISE_MASK_SEED, &[b"consortium", b"round 7"]);
//! let s21 = k2.agree(&k1.public())?.derive(kdf::PAIRWISE_MASK_SEED, &[b"consortium", b"round 7"]);
//! let (b1, b2) = (Secret32::random(&mut rng), Secret32::random(&mut rng));
//!
//! let (mut y1, mut y2) = (Vec::new(), Vec::new());
//! fixed::encode_update(10, &[0.5, -0.25], &mut y1)?;
//! fixed::encode_update(30, &[0.1, 0.75], &mut y2)?;
//! prg::apply_masks(&[&b1, &s12], &[], &mut y1); // member 1 < member 2: adds s12
//! prg::apply_masks(&[&b2], &[&s21], &mut y2); // member 2 subtracts it
//!
//! // The aggregator sums, then removes the self masks rebuilt from shares.
//! let b1_shares = split(&b1, 2, 3, &mut rng)?;
//! let b1_rebuilt = reconstruct(&b1_shares[1..], 2)?;
//! let mut sum = y1.clone();
//! add_assign(&mut sum, &y2);
//! prg::apply_masks(&[], &[&b1_rebuilt, &b2], &mut sum);
//! let mean = fixed::decode_sum(&sum)?.mean();
//! assert!((mean[0] - 0.2).abs() < 1e-6 && (mean[1] - 0.5).abs() < 1e-6);
//! # Ok::<(), primia_crypto::CryptoError>(())
//! ```
// Only `aes_ctr`, the mask PRG's vector kernel, may use `unsafe`.
#![deny(unsafe_code)]

pub mod aead;
#[allow(unsafe_code)]
mod aes_ctr;
mod agreement;
mod error;
pub mod fixed;
mod hex;
mod identity;
pub mod kdf;
pub mod prg;
mod ring;
mod secret;
pub mod shamir;

pub use aead::{open, seal};
pub use agreement::{AgreementPublic, AgreementSecret, SharedSecret};
pub use error::{CryptoError, Result};
pub use identity::{IdentityKey, PublicIdentity, Signature, VERIFY_PIECE_BYTES};
pub use ring::{Ring, add_assign, sub_assign};
pub use secret::Secret32;
pub use shamir::{Interpolator, MAX_SHARES, Share, reconstruct, split};
