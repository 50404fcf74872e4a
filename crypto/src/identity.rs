//! Long-term ed25519 identity of a member: signing and strict verification.
//!
//! # What is signed (pinned)
//!
//! `sign(context, msg)` signs with ed25519 the 32-byte digest
//! `kdf::hash(kdf::SIGNED_DIGEST, [context, msg])` (blake3 in derive-key mode
//! over the length-prefixed context and message). The context separates
//! domains; the length prefixes make (context, msg) unambiguous; hashing first
//! with blake3 keeps signing a multi-megabyte message cheap, where ed25519
//! alone would run SHA-512 over it twice. Verification accepts exactly what
//! ed25519-dalek's `verify_strict` accepts, which rejects non-canonical and
//! small-order encodings (see [`PublicIdentity::verify`] for how it gets
//! there without decompressing R).

use core::fmt;
use std::sync::OnceLock;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand_core::CryptoRng;

use crate::{CryptoError, Result, Secret32, hex, kdf};

/// A member's long-term signing key. Zeroized on drop (by ed25519-dalek and by
/// [`Secret32`]); `Debug` shows only the public key.
pub struct IdentityKey {
    /// Kept beside the expanded key because the key file stores the seed.
    seed: Secret32,
    signing: SigningKey,
}

impl IdentityKey {
    /// The key whose ed25519 secret is `seed`.
    pub fn from_seed(seed: &Secret32) -> Self {
        Self {
            seed: Secret32::from_bytes(*seed.expose()),
            signing: SigningKey::from_bytes(seed.expose()),
        }
    }

    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_seed(&Secret32::random(rng))
    }

    /// The seed, for writing the key file (mode 0600) only.
    pub fn seed(&self) -> &Secret32 {
        &self.seed
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        let key = self.signing.verifying_key();
        PublicIdentity {
            bytes: key.to_bytes(),
            key,
        }
    }

    /// Signs `msg` under `context` (see the module doc for the exact bytes).
    pub fn sign(&self, context: &str, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(&signed_digest(context, msg)).to_bytes())
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// Bytes hashed between two progress calls of
/// [`PublicIdentity::verify_with_progress`]: 64 blake3 chunks. 16 chunks
/// (one AVX-512 batch, L1-sized) hashed measurably slower, because each
/// piece then also pays for its own small tree of parent nodes; 64 KiB
/// still sits in L2 when the caller reads it.
pub const VERIFY_PIECE_BYTES: usize = 64 * BLAKE3_CHUNK_BYTES;

const BLAKE3_CHUNK_BYTES: usize = 1024;

/// The digest that ed25519 signs for (context, msg).
fn signed_digest(context: &str, msg: &[u8]) -> [u8; 32] {
    kdf::hash(kdf::SIGNED_DIGEST, &[context.as_bytes(), msg])
}

/// The canonical encodings of the eight points of order dividing 8.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS
        .get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// A member's ed25519 public key, validated on construction.
///
/// Keeps the decompressed curve point beside the 32 bytes: a round verifies
/// hundreds of signatures per member key, and decompressing (a square root
/// in the field) is a fifth of each verification. Equality, order and hash
/// are those of the bytes.
#[derive(Clone, Copy)]
pub struct PublicIdentity {
    bytes: [u8; 32],
    key: VerifyingKey,
}

impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicIdentity {}

impl PartialOrd for PublicIdentity {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicIdentity {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl core::hash::Hash for PublicIdentity {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PublicIdentity {
    /// Parses a public key; rejects bytes that are not a curve point and
    /// small-order (weak) points, for which a signature proves nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey {
            reason: "not a valid compressed edwards point",
        })?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPublicKey {
                reason: "small-order point",
            });
        }
        Ok(Self { bytes: *bytes, key })
    }

    /// The 32 encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// All 32 bytes as lower-case hex (`Display` shows only the first 8).
    pub fn to_hex(&self) -> String {
        hex::to_hex(&self.bytes)
    }

    /// Strictly verifies `sig` over (context, msg).
    ///
    /// Accepts exactly the signatures `verify_strict` accepts, a fifth
    /// cheaper. `verify_strict` is the plain ed25519 check (recompute R from
    /// s and the hash, compare its canonical encoding with the signature's R
    /// byte for byte; s must be canonical) plus three rejections: an R that
    /// does not decompress, a small-order R, a small-order key. The first
    /// never passes the byte comparison (a recomputed R always decodes), a
    /// small-order key is refused when a `PublicIdentity` is made, and of
    /// the small-order R only the eight canonical encodings can pass the
    /// byte comparison: those are refused by comparing bytes, without the
    /// square root that decompressing R costs.
    pub fn verify(&self, context: &str, msg: &[u8], sig: &Signature) -> Result<()> {
        self.verify_digest(context, &signed_digest(context, msg), sig)
    }

    /// [`Self::verify`], calling `hashed(n)` each time the first `n` bytes
    /// of `msg` have been hashed (n grows; the last call has
    /// `n == msg.len()`, before the signature itself is checked).
    ///
    /// Lets a caller work on a large message piece by piece while each
    /// piece is still in cache from hashing, instead of reading it from
    /// memory a second time: the leader adds a masked input to its sum this
    /// way. What the caller did with the bytes is unverified until this
    /// returns `Ok`, and it must undo it on `Err`. Pieces are
    /// [`VERIFY_PIECE_BYTES`] long and aligned to that length in blake3's
    /// input stream, so hashing keeps its full SIMD width.
    pub fn verify_with_progress(
        &self,
        context: &str,
        msg: &[u8],
        sig: &Signature,
        mut hashed: impl FnMut(usize),
    ) -> Result<()> {
        let mut hasher = blake3::Hasher::new_derive_key(kdf::SIGNED_DIGEST);
        hasher.update(&(context.len() as u64).to_le_bytes());
        hasher.update(context.as_bytes());
        hasher.update(&(msg.len() as u64).to_le_bytes());
        // blake3 hashes a piece at full SIMD width only if the piece starts
        // at a multiple of its own length in the stream (it splits input
        // into power-of-two subtrees aligned to the count so far): end the
        // first piece at such a boundary, then go in whole pieces.
        let prefix = 16 + context.len();
        let first = (VERIFY_PIECE_BYTES - prefix % VERIFY_PIECE_BYTES) % VERIFY_PIECE_BYTES;
        let mut done = 0;
        let mut next = first.min(msg.len());
        loop {
            hasher.update(&msg[done..next]);
            done = next;
            hashed(done);
            if done == msg.len() {
                break;
            }
            next = (done + VERIFY_PIECE_BYTES).min(msg.len());
        }
        self.verify_digest(context, hasher.finalize().as_bytes(), sig)
    }

    fn verify_digest(&self, context: &str, digest: &[u8; 32], sig: &Signature) -> Result<()> {
        let bad = || CryptoError::BadSignature {
            context: context.to_owned(),
        };
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        if small_order_encodings().contains(sig.r_bytes()) {
            return Err(bad());
        }
        self.key.verify(digest, &sig).map_err(|_| bad())
    }
}

impl fmt::Display for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex::write_hex(f, &self.bytes[..8])
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({self})")
    }
}

/// An ed25519 signature (64 bytes). Parsing never fails; a malformed
/// signature fails verification.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps 64 bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Self(*b)
    }

    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(")?;
        hex::write_hex(f, &self.0[..8])?;
        f.write_str("..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> IdentityKey {
        IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn sign_verify_roundtrip() {
        let k = key(1);
        let sig = k.sign(kdf::MESSAGE_SIGNATURE, b"hello");
        let public = PublicIdentity::from_bytes(k.public().as_bytes()).unwrap();
        public
            .verify(kdf::MESSAGE_SIGNATURE, b"hello", &sig)
            .unwrap();
        let sig2 = Signature::from_bytes(&sig.to_bytes());
        assert_eq!(sig, sig2);
    }

    #[test]
    fn wrong_message_context_key_or_bits_fail() {
        let k = key(2);
        let sig = k.sign("ctx", b"msg");
        let p = k.public();
        assert!(p.verify("ctx", b"msg!", &sig).is_err());
        assert!(p.verify("ctx2", b"msg", &sig).is_err());
        // Moving bytes between context and message changes the digest.
        assert!(p.verify("ct", b"xmsg", &sig).is_err());
        assert!(key(3).public().verify("ctx", b"msg", &sig).is_err());
        for bit in [0usize, 100, 300, 511] {
            let mut b = sig.to_bytes();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(p.verify("ctx", b"msg", &Signature::from_bytes(&b)).is_err());
        }
        let err = p.verify("ctx", b"other", &sig).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature does not verify under context \"ctx\""
        );
    }

    #[test]
    fn verify_with_progress_matches_verify() {
        let k = key(6);
        let p = k.public();
        for len in [
            0usize,
            1,
            900,
            1000,
            1024,
            5000,
            3 * VERIFY_PIECE_BYTES + 17,
        ] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sig = k.sign("ctx", &msg);
            let mut seen = vec![0usize];
            p.verify_with_progress("ctx", &msg, &sig, |n| {
                assert!(n >= *seen.last().unwrap(), "progress goes forward");
                seen.push(n);
            })
            .unwrap();
            assert_eq!(*seen.last().unwrap(), len);
            assert!(seen.windows(2).all(|w| w[1] - w[0] <= VERIFY_PIECE_BYTES));
            if len > 0 {
                let mut bad = msg.clone();
                bad[len / 2] ^= 1;
                let mut last = 0;
                assert!(
                    p.verify_with_progress("ctx", &bad, &sig, |n| last = n)
                        .is_err()
                );
                assert_eq!(last, len, "the whole message is hashed before failing");
                assert!(p.verify_with_progress("ctx2", &msg, &sig, |_| {}).is_err());
            }
        }
    }

    /// A signature whose R is a small-order point: accepted by plain
    /// ed25519 verification, refused by `verify_strict` and by `verify`.
    /// With R = the identity point, s = k a (k the challenge hash, a the
    /// secret scalar) satisfies [s]B - [k]A = R; only the signer can make
    /// it, but strict verification must refuse it all the same.
    #[test]
    fn small_order_r_is_refused_as_verify_strict_refuses_it() {
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let k = key(8);
        let public = k.public();
        let digest = signed_digest("ctx", b"msg");
        let h = Sha512::digest(k.seed().expose());
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut challenge = Sha512::new();
        challenge.update(identity);
        challenge.update(public.as_bytes());
        challenge.update(digest);
        let c = Scalar::from_bytes_mod_order_wide(&challenge.finalize().into());
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        forged[32..].copy_from_slice((c * a).as_bytes());
        let dalek = ed25519_dalek::Signature::from_bytes(&forged);
        assert!(
            public.key.verify(&digest, &dalek).is_ok(),
            "plain check passes"
        );
        assert!(public.key.verify_strict(&digest, &dalek).is_err());
        assert!(public.verify("ctx", b"msg", &Signature(forged)).is_err());
        assert!(small_order_encodings().contains(&identity));
    }

    /// `verify` and `verify_strict` agree on honest signatures and on
    /// every single-bit corruption of one.
    #[test]
    fn verify_agrees_with_verify_strict() {
        let k = key(9);
        let p = k.public();
        let digest = signed_digest("ctx", b"agreement");
        let good = k.sign("ctx", b"agreement");
        for bit in 0..=512 {
            let mut b = good.to_bytes();
            if bit < 512 {
                b[bit / 8] ^= 1 << (bit % 8);
            }
            let strict = p
                .key
                .verify_strict(&digest, &ed25519_dalek::Signature::from_bytes(&b))
                .is_ok();
            let ours = p
                .verify("ctx", b"agreement", &Signature::from_bytes(&b))
                .is_ok();
            assert_eq!(ours, strict, "bit {bit}");
            assert_eq!(ours, bit == 512);
        }
    }

    #[test]
    fn signature_is_deterministic_and_seed_roundtrips() {
        let k = key(4);
        let k2 = IdentityKey::from_seed(k.seed());
        assert_eq!(k.public(), k2.public());
        assert_eq!(k.sign("c", b"m"), k2.sign("c", b"m"));
    }

    #[test]
    fn rejects_invalid_and_weak_public_keys() {
        // The identity point (small order) encodes as 1 followed by zeros.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicIdentity::from_bytes(&identity),
            Err(CryptoError::InvalidPublicKey {
                reason: "small-order point"
            })
        ));
        // About half of all y coordinates are not on the curve.
        let rejected = (2u8..40)
            .filter(|&y| {
                let mut b = [0u8; 32];
                b[0] = y;
                PublicIdentity::from_bytes(&b)
                    == Err(CryptoError::InvalidPublicKey {
                        reason: "not a valid compressed edwards point",
                    })
            })
            .count();
        assert!(rejected > 5, "only {rejected} of 38 rejected");
    }

    #[test]
    fn display_is_short_hex() {
        let k = key(5);
        let p = k.public();
        assert_eq!(p.to_string().len(), 16);
        assert!(p.to_hex().starts_with(&p.to_string()));
        assert_eq!(format!("{p:?}"), format!("PublicIdentity({p})"));
        assert_eq!(
            format!("{k:?}"),
            format!("IdentityKey {{ public: PublicIdentity({p}), .. }}")
        );
    }
}
