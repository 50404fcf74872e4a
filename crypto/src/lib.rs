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
//! `prg::add_mask(b_u)` and, for each peer v, `add_mask`/`sub_mask` with
//! s_uv; the masks cancel in the sum, the self masks are removed with seeds
//! rebuilt from shares.
#![forbid(unsafe_code)]

pub mod aead;
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
pub use identity::{IdentityKey, PublicIdentity, Signature};
pub use ring::{Ring, add_assign, sub_assign};
pub use secret::Secret32;
pub use shamir::{Interpolator, MAX_SHARES, Share, reconstruct, split};
