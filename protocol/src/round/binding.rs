//! The per-attempt binding and the cryptographic glue built on it: share
//! encryption keys, pairwise mask seeds, commitments.

use primia_crypto::{AgreementPublic, Secret32, SharedSecret, kdf};

use crate::roster::{MemberId, RosterDigest};
use crate::wire::Header;

/// Context of the commitment to b_u that lets the leader check a rebuilt
/// seed.
pub(crate) const SELF_MASK_COMMITMENT: &str = "primia 2026-11 secagg self mask commitment v1";

/// Length of the plaintext of a share bundle: two encoded shares.
pub(crate) const SHARE_PAIR_BYTES: usize = 2 * primia_crypto::Share::ENCODED_LEN;

/// Length of a sealed share bundle.
pub(crate) const SEALED_PAIR_BYTES: usize = SHARE_PAIR_BYTES + primia_crypto::aead::OVERHEAD;

/// A member's fresh public keys for one attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PeerKeys {
    pub(crate) share: AgreementPublic,
    pub(crate) mask: AgreementPublic,
}

/// (roster, round, attempt): what every key, associated data and statement
/// of an attempt repeats, so nothing from one attempt is usable in another.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding {
    pub(crate) roster: RosterDigest,
    pub(crate) round: u64,
    pub(crate) attempt: u32,
}

impl Binding {
    pub(crate) fn header(&self, sender: MemberId) -> Header {
        Header {
            roster: self.roster,
            round: self.round,
            attempt: self.attempt,
            sender,
        }
    }

    /// `roster || round || attempt || a || b` as key-derivation parts.
    fn with_pair<T>(&self, a: MemberId, b: MemberId, f: impl FnOnce(&[&[u8]]) -> T) -> T {
        let round = self.round.to_le_bytes();
        let attempt = self.attempt.to_le_bytes();
        let a = a.0.to_le_bytes();
        let b = b.0.to_le_bytes();
        f(&[&self.roster.0, &round, &attempt, &a, &b])
    }

    /// Key of the one AEAD message from `sender` to `recipient` this attempt.
    pub(crate) fn share_key(
        &self,
        dh: &SharedSecret,
        sender: MemberId,
        recipient: MemberId,
    ) -> Secret32 {
        self.with_pair(sender, recipient, |parts| {
            dh.derive(kdf::SHARE_ENCRYPTION_KEY, parts)
        })
    }

    /// Associated data of that message: the same binding, spelled out.
    pub(crate) fn share_ad(&self, sender: MemberId, recipient: MemberId) -> [u8; 48] {
        let mut ad = [0u8; 48];
        ad[..32].copy_from_slice(&self.roster.0);
        ad[32..40].copy_from_slice(&self.round.to_le_bytes());
        ad[40..44].copy_from_slice(&self.attempt.to_le_bytes());
        ad[44..46].copy_from_slice(&sender.0.to_le_bytes());
        ad[46..48].copy_from_slice(&recipient.0.to_le_bytes());
        ad
    }

    /// s_uv: the same for (u, v) and (v, u), because the pair is ordered.
    pub(crate) fn pairwise_seed(&self, dh: &SharedSecret, u: MemberId, v: MemberId) -> Secret32 {
        let (lo, hi) = if u < v { (u, v) } else { (v, u) };
        self.with_pair(lo, hi, |parts| dh.derive(kdf::PAIRWISE_MASK_SEED, parts))
    }

    /// Commitment to b_u.
    pub(crate) fn commitment(&self, member: MemberId, b: &Secret32) -> [u8; 32] {
        let round = self.round.to_le_bytes();
        let attempt = self.attempt.to_le_bytes();
        let m = member.0.to_le_bytes();
        kdf::hash(
            SELF_MASK_COMMITMENT,
            &[&self.roster.0, &round, &attempt, &m, b.expose()],
        )
    }
}
