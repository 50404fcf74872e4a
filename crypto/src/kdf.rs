//! Named blake3 contexts, key derivation and domain-separated hashing.
//!
//! Every derived key and every hash used by primia goes through a context
//! string of the form `"primia <YYYY-MM> <purpose> v<N>"` (the month the
//! use was defined and its version), as blake3's `derive_key` mode asks:
//! hard-coded, globally unique, and naming exactly one use. Two uses never share a context, so a value computed for one
//! purpose is useless for any other.
//!
//! # Encoding of inputs (pinned)
//!
//! Both [`derive()`] and [`hash`] run blake3 in `derive_key` mode under the
//! context and feed it, for each input in order, the input's length as a
//! little-endian `u64` followed by the input's bytes. The length prefixes make
//! the encoding injective: `["ab", "c"]` and `["a", "bc"]` hash differently.
//! For [`derive()`] the key material is the first input.

use zeroize::Zeroize;

use crate::Secret32;

/// Key for the AEAD of Shamir shares from one member to another, derived from
/// their share-encryption DH secret and bound to (consortium, round, attempt,
/// sender, recipient). Each key encrypts exactly one message.
pub const SHARE_ENCRYPTION_KEY: &str = "primia 2026-11 secagg share-encryption key v1";

/// The pairwise mask seed s_uv, derived from the mask DH secret of u and v and
/// bound to (consortium, round, attempt); both members derive the same seed.
pub const PAIRWISE_MASK_SEED: &str = "primia 2026-11 secagg pairwise mask seed v1";

/// The self-mask seed b_u, for a protocol that derives it from a member
/// secret instead of drawing it fresh.
pub const SELF_MASK_SEED: &str = "primia 2026-11 secagg self mask seed v1";

/// The signing context of protocol messages, passed to
/// [`crate::IdentityKey::sign`] and [`crate::PublicIdentity::verify`].
pub const MESSAGE_SIGNATURE: &str = "primia 2026-11 protocol message signature v1";

/// The id of a model blob: its hash under this context.
pub const MODEL_ID: &str = "primia 2026-11 model blob id v1";

/// Leader ranking: `hash(LEADER_RANK, [consortium_id, round, peer_id])`.
pub const LEADER_RANK: &str = "primia 2026-11 round leader rank v1";

/// The mask PRG's AES-128 key (the first 16 bytes of this derivation),
/// derived from a mask seed (b_u or s_uv); see [`crate::prg`].
pub const MASK_PRG_KEY: &str = "primia 2026-12 secagg mask prg aes-128 key v2";

/// The digest that ed25519 actually signs: a hash of (signing context,
/// message); see [`crate::IdentityKey::sign`].
pub const SIGNED_DIGEST: &str = "primia 2026-11 ed25519 signed message digest v1";

/// Feeds `part` to `hasher` with its length prefix.
fn update_part(hasher: &mut blake3::Hasher, part: &[u8]) {
    hasher.update(&(part.len() as u64).to_le_bytes());
    hasher.update(part);
}

/// `blake3::derive_key(context, len-prefixed key_material, len-prefixed parts...)`.
///
/// Use for anything secret: the hasher state is wiped before returning.
pub fn derive(context: &'static str, key_material: &[u8], parts: &[&[u8]]) -> Secret32 {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    update_part(&mut hasher, key_material);
    for part in parts {
        update_part(&mut hasher, part);
    }
    let out = Secret32::from_bytes(*hasher.finalize().as_bytes());
    hasher.zeroize();
    out
}

/// Hash of public data under a named context, e.g. leader ranking and ids.
pub fn hash(context: &'static str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in parts {
        update_part(&mut hasher, part);
    }
    *hasher.finalize().as_bytes()
}

/// All contexts defined here, for the uniqueness test.
#[cfg(test)]
pub(crate) const ALL: [&str; 8] = [
    SHARE_ENCRYPTION_KEY,
    PAIRWISE_MASK_SEED,
    SELF_MASK_SEED,
    MESSAGE_SIGNATURE,
    MODEL_ID,
    LEADER_RANK,
    MASK_PRG_KEY,
    SIGNED_DIGEST,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_distinct_and_well_formed() {
        for (i, a) in ALL.iter().enumerate() {
            // "primia YYYY-MM <purpose> vN"
            let words: Vec<&str> = a.split(' ').collect();
            let date = words[1].as_bytes();
            let version = words.last().unwrap();
            assert!(
                words.len() >= 4
                    && words[0] == "primia"
                    && date.len() == 7
                    && date[4] == b'-'
                    && version.starts_with('v')
                    && version[1..].parse::<u32>().is_ok(),
                "{a}"
            );
            for b in &ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn length_prefix_makes_encoding_injective() {
        assert_ne!(
            hash(MODEL_ID, &[b"ab", b"c"]),
            hash(MODEL_ID, &[b"a", b"bc"])
        );
        assert_ne!(hash(MODEL_ID, &[b"abc"]), hash(MODEL_ID, &[b"abc", b""]));
        let a = derive(SHARE_ENCRYPTION_KEY, b"k", &[b"xy"]);
        let b = derive(SHARE_ENCRYPTION_KEY, b"kx", &[b"y"]);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn contexts_separate_outputs() {
        let a = derive(SHARE_ENCRYPTION_KEY, b"same", &[b"parts"]);
        let b = derive(PAIRWISE_MASK_SEED, b"same", &[b"parts"]);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn derive_matches_pinned_encoding() {
        // The spec in the module doc, written out with blake3 directly.
        let mut material = Vec::new();
        for p in [&b"key"[..], b"p1", b""] {
            material.extend_from_slice(&(p.len() as u64).to_le_bytes());
            material.extend_from_slice(p);
        }
        let expect = blake3::derive_key(PAIRWISE_MASK_SEED, &material);
        assert_eq!(
            derive(PAIRWISE_MASK_SEED, b"key", &[b"p1", b""]).expose(),
            &expect
        );
        assert_eq!(hash(PAIRWISE_MASK_SEED, &[b"key", b"p1", b""]), expect);
    }
}
