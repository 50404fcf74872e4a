//! Ephemeral x25519 key agreement and the shared secret it yields.

use core::fmt;

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
