//! Authenticated encryption of Shamir shares from one member to another.
//!
//! ChaCha20-Poly1305 (RFC 8439) with a fixed all-zero nonce. That is safe
//! here, and only here, because every key encrypts exactly one message: the
//! key is derived with [`crate::kdf::SHARE_ENCRYPTION_KEY`] from the DH secret
//! of the sender's and recipient's fresh per-attempt x25519 keys, bound to
//! (consortium, round, attempt, sender, recipient), and each sender sends one
//! share message to each recipient per attempt. A nonce exists to separate
//! messages under one key; with one message per key there is nothing to
//! separate, and a random or counter nonce would add bytes and state without
//! adding security. The associated data should repeat the binding (the
//! protocol's message header), so a ciphertext cannot be moved to another
//! context even if a key were somehow reused.
//!
//! Output layout: `ciphertext || tag`, [`OVERHEAD`] bytes longer than the
//! plaintext.

use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit as _, Nonce};
use zeroize::Zeroizing;

use crate::{CryptoError, Result, Secret32};

/// Bytes added by [`seal`]: the Poly1305 tag.
pub const OVERHEAD: usize = 16;

/// Encrypts `plaintext` under a single-use `key`, authenticating
/// `associated_data` too.
pub fn seal(key: &Secret32, associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
    // Capacity for the tag up front, so the buffer holding the plaintext is
    // never reallocated (which would leave a plaintext copy behind).
    let mut buf = Vec::with_capacity(plaintext.len() + OVERHEAD);
    buf.extend_from_slice(plaintext);
    cipher(key)
        .encrypt_in_place(&Nonce::default(), associated_data, &mut buf)
        // Fails only for plaintexts over 256 GiB, which no share message is.
        .expect("chacha20poly1305 plaintext within the 2^38-byte limit");
    buf
}

/// Decrypts and authenticates; any change to the ciphertext, the associated
/// data or the key gives [`CryptoError::Decrypt`]. The plaintext buffer is
/// wiped on drop.
pub fn open(
    key: &Secret32,
    associated_data: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if ciphertext.len() < OVERHEAD {
        return Err(CryptoError::Decrypt);
    }
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher(key)
        .decrypt_in_place(&Nonce::default(), associated_data, &mut *buf)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buf)
}

/// The cipher instance; it wipes its key copy on drop.
fn cipher(key: &Secret32) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(key.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Secret32 {
        Secret32::from_bytes([b; 32])
    }

    #[test]
    fn roundtrip() {
        for len in [0usize, 1, 66, 132, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = seal(&key(1), b"ad", &pt);
            assert_eq!(ct.len(), len + OVERHEAD);
            assert_eq!(&*open(&key(1), b"ad", &ct).unwrap(), &pt);
        }
    }

    #[test]
    fn ciphertext_hides_plaintext() {
        let pt = [0u8; 64];
        let ct = seal(&key(2), b"", &pt);
        assert_ne!(&ct[..64], &pt);
    }

    #[test]
    fn tampering_wrong_ad_wrong_key_fail() {
        let pt = b"two shares of 66 bytes each".to_vec();
        let ct = seal(&key(3), b"header", &pt);
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                open(&key(3), b"header", &bad).unwrap_err(),
                CryptoError::Decrypt
            );
        }
        assert_eq!(
            open(&key(3), b"headex", &ct).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(open(&key(3), b"", &ct).unwrap_err(), CryptoError::Decrypt);
        assert_eq!(
            open(&key(4), b"header", &ct).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            open(&key(3), b"header", &ct[..ct.len() - 1]).unwrap_err(),
            CryptoError::Decrypt
        );
        for len in 0..OVERHEAD {
            assert_eq!(
                open(&key(3), b"header", &ct[..len]).unwrap_err(),
                CryptoError::Decrypt
            );
        }
    }

    /// Same key, same input, same output: the construction is deterministic,
    /// which is why each key must seal only one message.
    #[test]
    fn deterministic_under_one_key() {
        // Encrypting zeros with an empty AD yields the keystream then the tag.
        let k = Secret32::from_bytes(core::array::from_fn(|i| i as u8));
        let ct = seal(&k, b"", &[0u8; 16]);
        let ct2 = seal(&k, b"", &[0u8; 16]);
        assert_eq!(ct, ct2, "deterministic under one key");
        assert_eq!(&*open(&k, b"", &ct).unwrap(), &[0u8; 16]);
    }
}
