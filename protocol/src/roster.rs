//! The consortium roster, member ids, the threshold rule and the leader rule.
//!
//! A roster is what every member agrees on before any round: the consortium
//! id, each member's name, long-term ed25519 identity and network addresses,
//! and the threshold rule. Members are kept sorted by identity, so a
//! [`MemberId`] (the position in that order) means the same member to every
//! daemon whatever order its roster file lists them in.
//!
//! The identity is the ed25519 public key from which the daemon derives the
//! member's libp2p peer id (one to one); this crate speaks only of the key.

use core::fmt;

use primia_crypto::{PublicIdentity, kdf};
use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// The largest roster. Kept at or below [`primia_crypto::fixed::MAX_MEMBERS`]
/// so a sum over all members cannot wrap the ring, and small enough that
/// the leader's per-attempt state (one share ciphertext per ordered pair of
/// members, about 150 bytes each) stays near 150 MB at worst.
pub const MAX_MEMBERS: usize = 1000;

/// The smallest roster: secure aggregation of fewer members is pointless.
pub const MIN_MEMBERS: usize = 2;

/// Longest consortium id, in bytes.
pub const MAX_CONSORTIUM_ID_BYTES: usize = 64;

/// Longest member name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Most addresses one member may list.
pub const MAX_ADDRESSES: usize = 16;

/// Longest address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;

const _: () = assert!(MAX_MEMBERS as u64 <= primia_crypto::fixed::MAX_MEMBERS as u64);
const _: () = assert!(MAX_MEMBERS < u16::MAX as usize);

/// Context of the roster digest that binds every message to one roster.
const ROSTER_DIGEST: &str = "primia 2026-11 protocol roster digest v1";

/// A member's position in the roster sorted by identity. Shamir share
/// indices are `id + 1`, and "v < u" in the mask formula compares ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub u16);

impl MemberId {
    /// The position as an index into roster-sized arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The Shamir x coordinate of this member's shares (never 0).
    pub fn share_index(self) -> u16 {
        self.0 + 1
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// The consortium's name: 1 to 64 bytes of `[A-Za-z0-9._-]`, so it can be
/// hashed, printed and used in file names without escaping.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConsortiumId(String);

impl ConsortiumId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, ProtocolError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_CONSORTIUM_ID_BYTES {
            Some("longer than 64 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ProtocolError::InvalidConsortiumId { reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsortiumId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many members must take part for a round to produce a result.
///
/// The threshold t must satisfy `2t > n + 1`. Why: a malicious leader may
/// show one survivor set U3 (with member w in it) to a group A and another
/// (without w) to a group B, and sign both itself. The members of A reveal
/// shares of w's self mask, those of B shares of w's mask key; the leader
/// holds one share of each of its own. It gets t of both only if
/// `|A| + 1 >= t` and `|B| + 1 >= t`, and since A and B are disjoint
/// honest groups, each signing once per attempt, that needs
/// `2(t - 1) <= n - 1`. With `2t > n + 1` it is impossible: the proof of t
/// signatures exists for at most one U3. (Against a leader colluding with
/// c - 1 further members, choose `2t > n + c`.) t must also be at least 2, or
/// the "sum" would be one member's input.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Threshold {
    /// The smallest safe threshold, `floor((n + 1) / 2) + 1`: a majority for
    /// an even roster, a majority plus one for an odd one.
    Majority,
    /// Exactly this many; rejected unless `n + 1 < 2t` and `t <= n`.
    AtLeast(u16),
    /// Exactly this many under a weaker trust assumption, stated by the
    /// consortium: every leader follows the protocol (it may still try to
    /// learn from what it sees, "honest but curious"). The attack above
    /// needs a leader that deviates, so only a strict majority, `2t > n`, is
    /// required: 2 of 3 members, where the rule above needs all 3 and a
    /// round cannot survive one member going down.
    HonestLeader(u16),
}

impl Threshold {
    /// The threshold for a roster of `n` members, or why there is none.
    pub fn resolve(self, n: usize) -> Result<u16, ProtocolError> {
        let t = match self {
            Threshold::Majority => n.div_ceil(2) + 1,
            Threshold::AtLeast(t) => usize::from(t),
            Threshold::HonestLeader(t) => {
                let t = usize::from(t);
                if 2 * t <= n || t > n || t < 2 {
                    return Err(ProtocolError::InvalidRoster {
                        reason: format!(
                            "threshold {t} for {n} members with honest-but-curious leaders: need 2t > n, t <= n and t >= 2"
                        ),
                    });
                }
                return Ok(t as u16);
            }
        };
        if 2 * t <= n + 1 || t > n || t < 2 {
            return Err(ProtocolError::InvalidRoster {
                reason: format!(
                    "threshold {t} for {n} members: need 2t > n + 1 (so a malicious leader cannot get two survivor sets signed), t <= n and t >= 2"
                ),
            });
        }
        u16::try_from(t).map_err(|_| ProtocolError::InvalidRoster {
            reason: format!("threshold {t} does not fit in 16 bits"),
        })
    }
}

/// One member as listed in the roster.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MemberInfo {
    /// Human name of the hospital, for logs and status output.
    pub name: String,
    /// Long-term ed25519 identity (the libp2p peer id derives from it).
    pub identity: PublicIdentity,
    /// Network addresses (multiaddr text); the protocol only carries them.
    pub addresses: Vec<String>,
}

/// 32-byte digest of the roster's security-relevant content (consortium id,
/// threshold, identities in order). Every message carries it, so members
/// whose rosters differ reject each other's messages instead of computing
/// with different sets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RosterDigest(pub [u8; 32]);

impl fmt::Debug for RosterDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RosterDigest(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

/// The consortium: members sorted by identity and the resolved threshold.
#[derive(Clone, Debug)]
pub struct Roster {
    consortium: ConsortiumId,
    members: Vec<MemberInfo>,
    rule: Threshold,
    threshold: u16,
    digest: RosterDigest,
}

impl Roster {
    /// Validates and sorts the members. Rejects a roster outside
    /// [`MIN_MEMBERS`]..=[`MAX_MEMBERS`], repeated identities or names,
    /// names, addresses or address lists over their bounds, and a threshold
    /// that [`Threshold::resolve`] refuses.
    pub fn new(
        consortium: ConsortiumId,
        mut members: Vec<MemberInfo>,
        rule: Threshold,
    ) -> Result<Self, ProtocolError> {
        let bad = |reason: String| ProtocolError::InvalidRoster { reason };
        if members.len() < MIN_MEMBERS || members.len() > MAX_MEMBERS {
            return Err(bad(format!(
                "{} members, allowed are {MIN_MEMBERS} to {MAX_MEMBERS}",
                members.len()
            )));
        }
        for m in &members {
            if m.name.is_empty() || m.name.len() > MAX_NAME_BYTES {
                return Err(bad(format!(
                    "member {} has a name of {} bytes, allowed are 1 to {MAX_NAME_BYTES}",
                    m.identity,
                    m.name.len()
                )));
            }
            if m.addresses.len() > MAX_ADDRESSES {
                return Err(bad(format!(
                    "member {:?} lists {} addresses, at most {MAX_ADDRESSES} are allowed",
                    m.name,
                    m.addresses.len()
                )));
            }
            if let Some(a) = m.addresses.iter().find(|a| a.len() > MAX_ADDRESS_BYTES) {
                return Err(bad(format!(
                    "member {:?} has an address of {} bytes, at most {MAX_ADDRESS_BYTES} are allowed",
                    m.name,
                    a.len()
                )));
            }
        }
        members.sort_by_key(|m| m.identity);
        for pair in members.windows(2) {
            if pair[0].identity == pair[1].identity {
                return Err(bad(format!(
                    "identity {} is listed twice ({:?} and {:?})",
                    pair[0].identity, pair[0].name, pair[1].name
                )));
            }
        }
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            return Err(bad(format!("name {:?} is listed twice", pair[0])));
        }
        let threshold = rule.resolve(members.len())?;
        let digest = Self::compute_digest(&consortium, threshold, &members);
        Ok(Self {
            consortium,
            members,
            rule,
            threshold,
            digest,
        })
    }

    fn compute_digest(consortium: &ConsortiumId, t: u16, members: &[MemberInfo]) -> RosterDigest {
        let n = (members.len() as u16).to_le_bytes();
        let t = t.to_le_bytes();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(members.len() + 3);
        parts.push(consortium.as_str().as_bytes());
        parts.push(&t);
        parts.push(&n);
        parts.extend(members.iter().map(|m| &m.identity.as_bytes()[..]));
        RosterDigest(kdf::hash(ROSTER_DIGEST, &parts))
    }

    /// The consortium id.
    pub fn consortium(&self) -> &ConsortiumId {
        &self.consortium
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a roster has at least [`MIN_MEMBERS`] members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The threshold t.
    pub fn threshold(&self) -> usize {
        usize::from(self.threshold)
    }

    /// The rule the threshold came from.
    pub fn threshold_rule(&self) -> Threshold {
        self.rule
    }

    /// The digest every message of this consortium carries.
    pub fn digest(&self) -> RosterDigest {
        self.digest
    }

    /// The member with this id.
    pub fn member(&self, id: MemberId) -> Option<&MemberInfo> {
        self.members.get(id.index())
    }

    /// The id of the member with this identity.
    pub fn id_of(&self, identity: &PublicIdentity) -> Option<MemberId> {
        self.members
            .binary_search_by(|m| m.identity.cmp(identity))
            .ok()
            .map(|i| MemberId(i as u16))
    }

    /// All members with their ids, in id order.
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &MemberInfo)> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| (MemberId(i as u16), m))
    }

    /// All ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = MemberId> + use<> {
        (0..self.members.len() as u16).map(MemberId)
    }

    /// The members of round `round` in leader order: sorted by
    /// `blake3(consortium_id || round as u64 little-endian || identity)`
    /// (plain blake3 of the concatenation; the id's length is the only
    /// variable one and comes first, with fixed-length fields after it).
    pub fn leader_ranking(&self, round: u64) -> Vec<MemberId> {
        let mut keyed: Vec<([u8; 32], MemberId)> = self
            .members()
            .map(|(id, m)| {
                let mut h = blake3::Hasher::new();
                h.update(self.consortium.as_str().as_bytes());
                h.update(&round.to_le_bytes());
                h.update(m.identity.as_bytes());
                (*h.finalize().as_bytes(), id)
            })
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// The leader of attempt `attempt` of round `round`: the member ranked
    /// `attempt`-th (from 0, wrapping around the roster) by
    /// [`Self::leader_ranking`]. Every member computes it alone.
    pub fn leader(&self, round: u64, attempt: u32) -> MemberId {
        let ranking = self.leader_ranking(round);
        ranking[attempt as usize % ranking.len()]
    }
}
