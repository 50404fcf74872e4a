//! Known-answer tests that pin the byte formats, reproduced independently.
//!
//! The expected values were computed with Python's `cryptography` (ChaCha20-
//! Poly1305, Ed25519) and `blake3` packages, not with this crate:
//!
//! ```python
//! key = bytes(range(32))
//! lp = lambda *ps: b"".join(struct.pack("<Q", len(p)) + p for p in ps)
//! ChaCha20Poly1305(key).encrypt(bytes(12), b"primia share", b"header")
//! digest = blake3(lp(MESSAGE_SIGNATURE.encode(), b"hello"),
//!                 derive_key_context=SIGNED_DIGEST).digest()
//! Ed25519PrivateKey.from_private_bytes(key).sign(digest)
//! blake3(lp(b"key material", b"part"),
//!        derive_key_context=SHARE_ENCRYPTION_KEY).digest()
//! ```
//!
//! A failure here means a wire or storage format changed: peers running the
//! old code would no longer interoperate.

use primia_crypto::{IdentityKey, PublicIdentity, Secret32, Signature, kdf, open, seal};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key() -> Secret32 {
    Secret32::from_bytes(core::array::from_fn(|i| i as u8))
}

#[test]
fn aead_zero_nonce_known_answer() {
    let expect = unhex("68ca2b5cc48786a27b002e048c7913d63361a40488ddcb38e487b9f6");
    assert_eq!(seal(&key(), b"header", b"primia share"), expect);
    assert_eq!(
        &**open(&key(), b"header", &expect).unwrap(),
        b"primia share"
    );
}

#[test]
fn signature_known_answer() {
    let id = IdentityKey::from_seed(&key());
    let public = unhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
    assert_eq!(id.public().as_bytes().as_slice(), public.as_slice());
    let sig = unhex(
        "ad14cd16f762e0f0cdec81fcdde0adcc2e1cd660e022b5d2f7964bdc5e21009f\
         2fec611b10ecf2bd7ab2ff0da490a2dd948ac3f70198368b9591fc138189c306",
    );
    let got = id.sign(kdf::MESSAGE_SIGNATURE, b"hello");
    assert_eq!(got.to_bytes().as_slice(), sig.as_slice());
    let p = PublicIdentity::from_bytes(&public.try_into().unwrap()).unwrap();
    let sig = Signature::from_bytes(&sig.try_into().unwrap());
    p.verify(kdf::MESSAGE_SIGNATURE, b"hello", &sig).unwrap();
}

#[test]
fn derive_known_answer() {
    let expect = unhex("9f002933ceb4e9c69ce0d5fec064cf88a81aa2256b0cc290ecf38078a759bcf6");
    let got = kdf::derive(kdf::SHARE_ENCRYPTION_KEY, b"key material", &[b"part"]);
    assert_eq!(got.expose().as_slice(), expect.as_slice());
}
