//! Ephemeral x25519 key agreement and the shared secret it yields.

use core::fmt;

use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, Result, Secret32, kdf};

/// An x25519 secret key, fresh for each attempt. Zeroized on drop (by
/// x25519-dalek); `Debug` shows only the public key.
///
/// A `StaticSecret` rather than an `EphemeralSecret` because the mask key
/// must be Shamir-shared ([`Self::to_secret32`]) and rebuilt by the survivors
/// when its owner drops out ([`Self::from_secret32`]).
pub struct AgreementSecret(StaticSecret);

impl AgreementSecret {
    /// A fresh secret from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret32(&Secret32::random(rng))
    }

    /// The secret with these 32 bytes (clamping happens inside x25519, so
    /// every byte string is a valid secret and the bytes round-trip).
    pub fn from_secret32(s: &Secret32) -> Self {
        Self(StaticSecret::from(*s.expose()))
    }

    /// The 32 secret bytes, for Shamir sharing of the mask key.
    pub fn to_secret32(&self) -> Secret32 {
        Secret32::from_bytes(self.0.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> AgreementPublic {
        AgreementPublic(PublicKey::from(&self.0).to_bytes())
    }

    /// Diffie-Hellman with a peer's public key. Rejects a non-contributory
    /// result (an all-zero output from a low-order peer key), which would
    /// give a secret everybody knows.
    pub fn agree(&self, their: &AgreementPublic) -> Result<SharedSecret> {
        let shared = self.0.diffie_hellman(&PublicKey::from(their.0));
        if !shared.was_contributory() {
            return Err(CryptoError::NonContributory);
        }
        Ok(SharedSecret(Secret32::from_bytes(*shared.as_bytes())))
    }
}

impl fmt::Debug for AgreementSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgreementSecret")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// An x25519 public key. Any 32 bytes are accepted here; a low-order key is
/// caught by [`AgreementSecret::agree`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AgreementPublic([u8; 32]);

impl AgreementPublic {
    /// Wraps 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this key is a point of order dividing 8 (on the curve or its
    /// twist, any encoding): exactly the keys for which
    /// [`AgreementSecret::agree`] fails as non-contributory, whatever the
    /// secret. An x25519 secret is clamped to a multiple of 8 below 2^255, so
    /// `[k]P = [k/8]([8]P)` and `k/8` is below the prime order of either
    /// group: the result is zero exactly when `[8]P` is.
    ///
    /// Costs four ladder steps and one inversion (a few microseconds),
    /// where a test agreement costs a whole ladder.
    pub fn is_low_order(&self) -> bool {
        // 8 = 0b1000, most significant bit first.
        let eight = [true, false, false, false];
        MontgomeryPoint(self.0).mul_bits_be(eight.into_iter()).0 == [0u8; 32]
    }
}

/// The raw x25519 output. Never used as a key directly: [`Self::derive`]
/// binds it to a purpose and a context first.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret(Secret32);

impl SharedSecret {
    /// `kdf::derive(context, shared secret, parts)`: blake3 `derive_key` under
    /// a named context over length-prefixed parts.
    pub fn derive(&self, context: &'static str, parts: &[&[u8]]) -> Secret32 {
        kdf::derive(context, self.0.expose(), parts)
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn both_sides_derive_the_same_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let a = AgreementSecret::generate(&mut rng);
        let b = AgreementSecret::generate(&mut rng);
        let ab = a.agree(&b.public()).unwrap();
        let ba = b.agree(&a.public()).unwrap();
        let k1 = ab.derive(kdf::PAIRWISE_MASK_SEED, &[b"round 1"]);
        let k2 = ba.derive(kdf::PAIRWISE_MASK_SEED, &[b"round 1"]);
        assert_eq!(k1.expose(), k2.expose());
        let k3 = ab.derive(kdf::PAIRWISE_MASK_SEED, &[b"round 2"]);
        assert_ne!(k1.expose(), k3.expose());
        let c = AgreementSecret::generate(&mut rng);
        let ac = a.agree(&c.public()).unwrap();
        assert_ne!(
            ac.derive(kdf::PAIRWISE_MASK_SEED, &[b"round 1"]).expose(),
            k1.expose()
        );
    }

    #[test]
    fn secret_roundtrips_through_secret32() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let a = AgreementSecret::generate(&mut rng);
        let rebuilt = AgreementSecret::from_secret32(&a.to_secret32());
        assert_eq!(a.public(), rebuilt.public());
        let b = AgreementSecret::generate(&mut rng);
        let s1 = a
            .agree(&b.public())
            .unwrap()
            .derive(kdf::PAIRWISE_MASK_SEED, &[]);
        let s2 = rebuilt
            .agree(&b.public())
            .unwrap()
            .derive(kdf::PAIRWISE_MASK_SEED, &[]);
        assert_eq!(s1.expose(), s2.expose());
    }

    /// `is_low_order` agrees with the agreement itself: on every point of
    /// order dividing 8 (the curve's eight-torsion, the twist's points of
    /// order 4, with and without the high bit and the non-canonical
    /// encodings u + p), and on random keys.
    #[test]
    fn low_order_keys_are_exactly_the_non_contributory_ones() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let secrets: Vec<_> = (0..4)
            .map(|_| AgreementSecret::generate(&mut rng))
            .collect();
        // p = 2^255 - 19, little-endian; u + p for u < 19 is a second
        // encoding of u that fits in 255 bits.
        let add_p = |u: [u8; 32]| -> Option<[u8; 32]> {
            let mut p = [0xffu8; 32];
            p[0] = 0xed;
            p[31] = 0x7f;
            let mut out = [0u8; 32];
            let mut carry = 0u16;
            for i in 0..32 {
                let v = u16::from(u[i]) + u16::from(p[i]) + carry;
                out[i] = v as u8;
                carry = v >> 8;
            }
            (carry == 0 && out[31] & 0x80 == 0).then_some(out)
        };
        let mut low: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|t| t.to_montgomery().to_bytes())
            .collect();
        // The twist's point of order 4 lies over u = -1 = p - 1.
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        low.push(minus_one);
        for u in low.clone() {
            low.extend(add_p(u));
            let mut high = u;
            high[31] |= 0x80;
            low.push(high);
        }
        low.sort();
        low.dedup();
        assert!(low.len() >= 10, "{} encodings", low.len());
        for u in &low {
            let key = AgreementPublic::from_bytes(*u);
            assert!(key.is_low_order(), "{u:02x?}");
            for s in &secrets {
                assert_eq!(s.agree(&key).unwrap_err(), CryptoError::NonContributory);
            }
        }
        for _ in 0..64 {
            let mut u = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rng, &mut u);
            let key = AgreementPublic::from_bytes(u);
            assert!(!key.is_low_order());
            assert!(secrets[0].agree(&key).is_ok());
        }
        // An honest key, and the ladder's own edge: the base point.
        assert!(!secrets[1].public().is_low_order());
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert!(!AgreementPublic::from_bytes(nine).is_low_order());
    }

    #[test]
    fn rejects_low_order_public_keys() {
        let a = AgreementSecret::generate(&mut ChaCha20Rng::seed_from_u64(9));
        // Zero and one are low-order Montgomery u-coordinates.
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one] {
            assert_eq!(
                a.agree(&AgreementPublic::from_bytes(bad)).unwrap_err(),
                CryptoError::NonContributory
            );
        }
    }
}
