//! Ephemeral x25519 key agreement and the shared secret it yields.

use core::fmt;

use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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

    /// Diffie-Hellman with a peer's public key: X25519 (RFC 7748) of this
    /// secret and their key. Rejects a non-contributory result (an all-zero
    /// output from a low-order peer key), which would give a secret
    /// everybody knows.
    pub fn agree(&self, their: &AgreementPublic) -> Result<SharedSecret> {
        let secret = Zeroizing::new(self.0.to_bytes());
        let shared = match agree_edwards(&secret, &their.0) {
            Some(u) => u,
            None => Zeroizing::new(self.0.diffie_hellman(&PublicKey::from(their.0)).to_bytes()),
        };
        if *shared == [0u8; 32] {
            return Err(CryptoError::NonContributory);
        }
        Ok(SharedSecret(Secret32::from_bytes(*shared)))
    }
}

/// X25519 by way of the Edwards form, where curve25519-dalek multiplies by
/// a secret scalar with AVX2 (a quarter faster than its Montgomery ladder,
/// which has only a serial implementation, conversions included). `None`
/// where that does not apply: without AVX2, or for a key that is not the
/// u-coordinate of a curve point (the twist's points, which only a
/// malicious peer sends); the caller runs the ladder then.
///
/// Why it is X25519: the result is the u-coordinate of `[k]P` for the
/// clamped scalar k and either point P over u; `to_edwards` gives one of
/// the two (they differ by sign, which u does not see). k is a multiple of
/// 8 below 2^255, so `[k]P = [k/8]([8]P)` with `[8]P` in the prime-order
/// subgroup and `k/8 < 2^252 <` its order: an ordinary scalar
/// multiplication, constant-time like the ladder. A low-order P gives the
/// identity, whose u-coordinate comes out as 0, as from the ladder. Which
/// path runs depends on the public key only.
fn agree_edwards(secret: &[u8; 32], their: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    #[cfg(target_arch = "x86_64")]
    let vector = std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    if !vector {
        return None;
    }
    let point = MontgomeryPoint(*their).to_edwards(0)?;
    let k = Zeroizing::new(clamp_integer(*secret));
    // k / 8: shift the little-endian integer right by three bits.
    let mut eighth = Zeroizing::new([0u8; 32]);
    for i in 0..32 {
        let next = k.get(i + 1).copied().unwrap_or(0);
        eighth[i] = (k[i] >> 3) | (next << 5);
    }
    let scalar = Zeroizing::new(Option::<Scalar>::from(Scalar::from_canonical_bytes(
        *eighth,
    ))?);
    // By reference: a by-value operand would leave an unwiped copy.
    #[allow(clippy::op_ref)]
    let product = point.mul_by_cofactor() * &*scalar;
    Some(Zeroizing::new(product.to_montgomery().to_bytes()))
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

    /// The Edwards path gives X25519's output bit for bit: for honest keys,
    /// keys with every torsion component added, random byte strings (half
    /// of them twist points, which take the ladder), with the high bit set
    /// and in non-canonical encodings.
    #[test]
    fn agreement_is_x25519() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let secrets: Vec<_> = (0..6)
            .map(|_| AgreementSecret::generate(&mut rng))
            .collect();
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for s in &secrets {
            let honest = *s.public().as_bytes();
            keys.push(honest);
            let e = MontgomeryPoint(honest).to_edwards(0).unwrap();
            for t in EIGHT_TORSION.iter().skip(1) {
                keys.push((e + t).to_montgomery().to_bytes());
            }
            let mut high = honest;
            high[31] |= 0x80;
            keys.push(high);
        }
        let mut on_curve = 0;
        for _ in 0..64 {
            let mut u = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rng, &mut u);
            on_curve += usize::from(MontgomeryPoint(u).to_edwards(0).is_some());
            keys.push(u);
        }
        assert!(
            on_curve > 10 && on_curve < 54,
            "{on_curve} of 64 on the curve"
        );
        // Non-canonical: u + p for small u.
        for small in [2u8, 9, 18] {
            let mut u = [0xffu8; 32];
            u[0] = 0xed + small;
            u[31] = 0x7f;
            keys.push(u);
        }
        for s in &secrets {
            for u in &keys {
                let expected = x25519_dalek::x25519(s.0.to_bytes(), *u);
                match s.agree(&AgreementPublic::from_bytes(*u)) {
                    Ok(shared) => assert_eq!(shared.0.expose(), &expected, "{u:02x?}"),
                    Err(e) => {
                        assert_eq!(e, CryptoError::NonContributory);
                        assert_eq!(expected, [0u8; 32]);
                    }
                }
            }
        }
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
