//! Wire format: the versioned, signed envelope and every message of a round.
//!
//! These types are a contract with other hospitals' daemons. Field order and
//! enum variant order are the encoding: append, never reorder, and bump
//! [`WIRE_VERSION`] for any change. `tests/wire_snapshot.rs` pins the bytes.
//!
//! # Envelope (pinned)
//!
//! ```text
//! envelope  = version || body || signature
//! version   = 1 byte, WIRE_VERSION
//! body      = postcard(Message { header, payload })
//! signature = 64 bytes, ed25519 by the identity of header.sender over
//!             IdentityKey::sign(kdf::MESSAGE_SIGNATURE, version || body)
//! ```
//!
//! The signature covers every byte before it, so the version is bound too.
//! The header binds each message to (roster digest, which covers the
//! consortium id; round; attempt; sender) and the payload's enum variant
//! binds it to its phase.
//!
//! # Vectors (pinned)
//!
//! A masked input's vector travels as little-endian `u64` bytes: its
//! entries are uniform over the ring, so nothing shorter holds them
//! (postcard's varints would make them 25% longer). An outcome's sum is
//! not uniform: it is the sum of bounded fixed-point updates (see
//! `primia_crypto::fixed`), whose entries, read as two's-complement
//! integers, need far fewer than 64 bits. It travels packed:
//!
//! ```text
//! sum    = count (varint) || width (u8, 1..=64) || byte string of
//!          ceil(count * width / 8) bytes
//! bytes  = the low `width` bits of each entry, entry 0 first, as one
//!          little-endian bit stream; the unused high bits of the last
//!          byte are zero
//! ```
//!
//! An entry is read back by sign extension from `width` bits, so the sum
//! arrives bit for bit; the sender picks the narrowest width that holds
//! every entry. A sum of 10 members' test vectors (values in [-1, 1), up
//! to 1000 examples each) needs 45 bits, 30 % off the outcome, the bulk
//! message every member receives; one of real model updates, whose values
//! are far smaller, needs fewer.
//!
//! # Limits
//!
//! Control messages may be at most [`MAX_CONTROL_MESSAGE_BYTES`]; the two bulk
//! kinds ([`MessageKind::MaskedInput`] and [`MessageKind::Outcome`], which
//! carry a vector of up to [`MAX_VECTOR_LEN`] entries) at most
//! [`MAX_BULK_MESSAGE_BYTES`]. [`decode`] checks the size before it parses
//! anything, and the kind-specific limit after reading only the header and
//! the variant tag.

use core::fmt;

use primia_crypto::{IdentityKey, PublicIdentity, Ring, Signature, kdf};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use crate::ProtocolError;
use crate::roster::{MemberId, RosterDigest};

/// The wire version this build speaks; the first byte of every envelope.
///
/// It versions what the bytes mean as well as their layout: 2 packed the
/// outcome's sum; 3 changed the mask PRG (`primia_crypto::prg`) from a blake3
/// XOF to AES-128 in counter mode, so a masked input of version 2 does not
/// unmask under version 3 although its bytes look the same.
pub const WIRE_VERSION: u8 = 3;

/// Largest ring vector (model parameters plus the example count): 2^24
/// parameters, room for a ResNet-18 (11 M) with margin.
pub const MAX_VECTOR_LEN: usize = (1 << 24) + 1;

/// Largest control message. The biggest control messages grow with the
/// roster: a key announcement holds one signed advert (about 180 bytes) per
/// member, a share bundle one 148-byte ciphertext per member; with
/// [`crate::roster::MAX_MEMBERS`] members both stay below 200 KiB.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 1 << 20;

/// Largest bulk message: a full-length vector of 8-byte entries plus room
/// for the header and the participant list.
pub const MAX_BULK_MESSAGE_BYTES: usize = MAX_VECTOR_LEN * 8 + 8 * 1024;

/// Length of the signature that ends every envelope.
pub const SIGNATURE_BYTES: usize = 64;

/// A ring vector on the wire: little-endian `u64`s. `Debug` shows only the
/// length (a vector may hold millions of entries).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RingVector(pub Vec<Ring>);

impl fmt::Debug for RingVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RingVector(len = {})", self.0.len())
    }
}

impl Serialize for RingVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for v in &self.0 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for RingVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RingVector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string of little-endian u64 values")
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<RingVector, E> {
                check_vector_bytes(b.len()).map_err(E::custom)?;
                Ok(RingVector(ring_from_le(b)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Opaque bytes (a ciphertext or a nested envelope), encoded as a
/// length-prefixed byte string. `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes(len = {})", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<u8>, E> {
        Ok(b.to_vec())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor).map(Bytes)
    }
}

/// A revealed Shamir share in its [`primia_crypto::Share`] encoding. Secret
/// until the leader combines it: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ShareBytes(pub Vec<u8>);

impl Drop for ShareBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ShareBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShareBytes(<redacted>)")
    }
}

impl Serialize for ShareBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ShareBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor).map(ShareBytes)
    }
}

/// A 64-byte ed25519 signature inside a payload (serde has no impl for
/// arrays this long); 64 raw bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl SignatureBytes {
    /// As the crypto crate's type.
    pub fn to_signature(self) -> Signature {
        Signature::from_bytes(&self.0)
    }
}

impl From<Signature> for SignatureBytes {
    fn from(s: Signature) -> Self {
        Self(s.to_bytes())
    }
}

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SignatureBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SignatureBytes, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(SignatureBytes(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// The steps of an attempt, in order. On the wire only inside
/// [`AbortReason`]; also what [`crate::Round::phase`] reports.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Phase {
    /// Members advertise fresh keys; the leader announces U1.
    AdvertiseKeys,
    /// Members of U1 send encrypted shares; the leader forwards them (U2).
    ShareKeys,
    /// Members of U2 send masked inputs (U3).
    MaskedInput,
    /// Members of U3 sign U3; the leader shows t signatures.
    ConsistencyCheck,
    /// Members reveal shares; the leader rebuilds the masks.
    Unmask,
    /// The sum is known.
    Outcome,
}

/// Who binds a message: the roster, the round, the attempt and the sender.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Header {
    /// Digest of the roster, which covers the consortium id.
    pub roster: RosterDigest,
    /// Round number.
    pub round: u64,
    /// Attempt number within the round, from 0.
    pub attempt: u32,
    /// Author (and signer) of the message; a relay keeps it.
    pub sender: MemberId,
}

/// A complete message: what the envelope signs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    /// The binding.
    pub header: Header,
    /// The content.
    pub payload: Payload,
}

/// Every message of a round. The variant order is the wire tag.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Payload {
    /// Member to leader: fresh per-attempt public keys.
    AdvertiseKeys(AdvertiseKeys),
    /// Leader to all: the accepted adverts (U1), each still signed by its
    /// author.
    KeysAnnounced(KeysAnnounced),
    /// Member to leader: shares of b_u and of the mask key, one ciphertext per
    /// other member of U1.
    EncryptedShares(EncryptedShares),
    /// Leader to one member of U2: U2 and the ciphertexts addressed to it.
    SharesForwarded(SharesForwarded),
    /// Member to leader (bulk): the masked input y_u.
    MaskedInput(MaskedInput),
    /// Leader to all: U3, to be signed.
    ConsistencyRequest(ConsistencyRequest),
    /// Member to leader: its signature over (roster, round, attempt, U3).
    ConsistencySignature(ConsistencySignature),
    /// Leader to all: U3 and at least t signatures over it.
    UnmaskRequest(UnmaskRequest),
    /// Member to leader: its shares of b_v for v in U3 and of the mask key
    /// of v for v in U2 \ U3.
    UnmaskShares(UnmaskShares),
    /// Leader to all (bulk): the unmasked sum and who is in it.
    Outcome(OutcomeMessage),
    /// Leader to all: this attempt cannot finish.
    AttemptAborted(AttemptAborted),
}

/// Fresh x25519 public keys of one member for one attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// For the AEAD of shares between members.
    pub share_public: [u8; 32],
    /// For the pairwise mask seeds s_uv.
    pub mask_public: [u8; 32],
}

/// U1: complete signed [`AdvertiseKeys`] envelopes, sorted by sender. The
/// leader relays them untouched, so every member checks every key against
/// its owner's signature and the leader cannot substitute keys.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeysAnnounced {
    /// Envelopes, in ascending sender order.
    pub adverts: Vec<Bytes>,
}

/// One sender's share bundle.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// `hash(SELF_MASK_COMMITMENT, [roster, round, attempt, sender, b_u])`:
    /// lets the leader check that the b_u it rebuilt is the real one.
    pub self_mask_commitment: [u8; 32],
    /// One ciphertext per other member of U1, in ascending recipient order.
    pub shares: Vec<SealedShares>,
}

/// The shares of one sender for one recipient, sealed for the recipient.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SealedShares {
    /// Who can open it.
    pub recipient: MemberId,
    /// AEAD of `share(b_u) || share(mask key of u)`.
    pub ciphertext: Bytes,
}

/// What the leader forwards to one member of U2.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SharesForwarded {
    /// The member this is for.
    pub recipient: MemberId,
    /// U2, ascending.
    pub senders: Vec<MemberId>,
    /// One ciphertext from each member of U2 other than the recipient, in
    /// ascending sender order.
    pub shares: Vec<ForwardedShares>,
}

/// One ciphertext in a [`SharesForwarded`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ForwardedShares {
    /// Who sealed it.
    pub sender: MemberId,
    /// As in [`SealedShares::ciphertext`].
    pub ciphertext: Bytes,
}

/// y_u.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Exactly the round's vector length.
    pub vector: RingVector,
}

/// U3.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConsistencyRequest {
    /// Members whose masked input the leader holds, ascending.
    pub survivors: Vec<MemberId>,
}

/// A member's signature over the U3 it was shown.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConsistencySignature {
    /// Over [`consistency_statement`], under [`CONSISTENCY_SIGNATURE`].
    pub signature: SignatureBytes,
}

/// The leader's proof that t members saw the same U3.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// U3, ascending.
    pub survivors: Vec<MemberId>,
    /// At least t signatures over U3 by members of U3, ascending by member.
    pub signatures: Vec<MemberSignature>,
}

/// One member's consistency signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MemberSignature {
    /// The signer.
    pub member: MemberId,
    /// Its signature.
    pub signature: SignatureBytes,
}

/// A member's reveal.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UnmaskShares {
    /// Shares of b_v, one for each v in U3, ascending.
    pub self_mask: Vec<RevealedShare>,
    /// Shares of the mask key of v, one for each v in U2 \ U3, ascending.
    pub mask_key: Vec<RevealedShare>,
}

/// One revealed share.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RevealedShare {
    /// Whose secret the share belongs to.
    pub owner: MemberId,
    /// The share; its index is the revealing member's share index.
    pub share: ShareBytes,
}

/// The result of an attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OutcomeMessage {
    /// U3: whose inputs are in the sum, ascending.
    pub participants: Vec<MemberId>,
    /// The sum of their inputs over the ring; packed on the wire (see
    /// the module doc).
    #[serde(with = "packed")]
    pub sum: RingVector,
}

/// Why the leader gave up an attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AttemptAborted {
    /// The reason.
    pub reason: AbortReason,
}

/// Reasons a leader aborts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum AbortReason {
    /// Fewer than t members answered in a phase.
    TooFewMembers {
        /// The phase that fell short.
        phase: Phase,
        /// How many answered.
        got: u16,
    },
    /// The revealed shares did not rebuild the committed secrets.
    ReconstructionFailed,
}

/// The tag of a [`Payload`] variant, for routing and limits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum MessageKind {
    /// [`Payload::AdvertiseKeys`].
    AdvertiseKeys,
    /// [`Payload::KeysAnnounced`].
    KeysAnnounced,
    /// [`Payload::EncryptedShares`].
    EncryptedShares,
    /// [`Payload::SharesForwarded`].
    SharesForwarded,
    /// [`Payload::MaskedInput`] (bulk).
    MaskedInput,
    /// [`Payload::ConsistencyRequest`].
    ConsistencyRequest,
    /// [`Payload::ConsistencySignature`].
    ConsistencySignature,
    /// [`Payload::UnmaskRequest`].
    UnmaskRequest,
    /// [`Payload::UnmaskShares`].
    UnmaskShares,
    /// [`Payload::Outcome`] (bulk).
    Outcome,
    /// [`Payload::AttemptAborted`].
    AttemptAborted,
}

impl MessageKind {
    /// All kinds, in tag order.
    pub const ALL: [MessageKind; 11] = [
        MessageKind::AdvertiseKeys,
        MessageKind::KeysAnnounced,
        MessageKind::EncryptedShares,
        MessageKind::SharesForwarded,
        MessageKind::MaskedInput,
        MessageKind::ConsistencyRequest,
        MessageKind::ConsistencySignature,
        MessageKind::UnmaskRequest,
        MessageKind::UnmaskShares,
        MessageKind::Outcome,
        MessageKind::AttemptAborted,
    ];

    /// The kind with this wire tag.
    pub fn from_tag(tag: u32) -> Option<Self> {
        Self::ALL.get(tag as usize).copied()
    }

    /// Whether it carries a full-length vector: the driver should send it
    /// over a bulk transport (a direct stream), not gossip.
    pub fn is_bulk(self) -> bool {
        matches!(self, MessageKind::MaskedInput | MessageKind::Outcome)
    }

    /// The size limit of an envelope of this kind.
    pub fn max_bytes(self) -> usize {
        if self.is_bulk() {
            MAX_BULK_MESSAGE_BYTES
        } else {
            MAX_CONTROL_MESSAGE_BYTES
        }
    }

    /// Whether members send it to the leader (otherwise the leader sends it).
    pub fn is_to_leader(self) -> bool {
        matches!(
            self,
            MessageKind::AdvertiseKeys
                | MessageKind::EncryptedShares
                | MessageKind::MaskedInput
                | MessageKind::ConsistencySignature
                | MessageKind::UnmaskShares
        )
    }

    /// The phase it belongs to.
    pub fn phase(self) -> Phase {
        match self {
            MessageKind::AdvertiseKeys | MessageKind::KeysAnnounced => Phase::AdvertiseKeys,
            MessageKind::EncryptedShares | MessageKind::SharesForwarded => Phase::ShareKeys,
            MessageKind::MaskedInput => Phase::MaskedInput,
            MessageKind::ConsistencyRequest | MessageKind::ConsistencySignature => {
                Phase::ConsistencyCheck
            }
            MessageKind::UnmaskRequest | MessageKind::UnmaskShares => Phase::Unmask,
            MessageKind::Outcome | MessageKind::AttemptAborted => Phase::Outcome,
        }
    }
}

impl Payload {
    /// The tag.
    pub fn kind(&self) -> MessageKind {
        match self {
            Payload::AdvertiseKeys(_) => MessageKind::AdvertiseKeys,
            Payload::KeysAnnounced(_) => MessageKind::KeysAnnounced,
            Payload::EncryptedShares(_) => MessageKind::EncryptedShares,
            Payload::SharesForwarded(_) => MessageKind::SharesForwarded,
            Payload::MaskedInput(_) => MessageKind::MaskedInput,
            Payload::ConsistencyRequest(_) => MessageKind::ConsistencyRequest,
            Payload::ConsistencySignature(_) => MessageKind::ConsistencySignature,
            Payload::UnmaskRequest(_) => MessageKind::UnmaskRequest,
            Payload::UnmaskShares(_) => MessageKind::UnmaskShares,
            Payload::Outcome(_) => MessageKind::Outcome,
            Payload::AttemptAborted(_) => MessageKind::AttemptAborted,
        }
    }

    /// The vector of a bulk kind.
    fn vector_mut(&mut self) -> Option<&mut RingVector> {
        match self {
            Payload::MaskedInput(m) => Some(&mut m.vector),
            Payload::Outcome(o) => Some(&mut o.sum),
            _ => None,
        }
    }

    /// A close upper bound of the encoded size, to allocate once.
    fn size_hint(&self) -> usize {
        match self {
            Payload::MaskedInput(m) => m.vector.0.len() * 8 + 128,
            Payload::Outcome(o) => o.sum.0.len() * 8 + o.participants.len() * 3 + 128,
            _ => 512,
        }
    }
}

/// Signing context of [`ConsistencySignature`]s; distinct from
/// [`kdf::MESSAGE_SIGNATURE`] so a statement can never pass for a message.
pub const CONSISTENCY_SIGNATURE: &str = "primia 2026-11 secagg consistency check v1";

/// The bytes a member signs in the consistency check:
/// `roster (32) || round (u64 LE) || attempt (u32 LE) || |U3| (u16 LE) ||
/// each id of U3 (u16 LE), ascending`.
pub fn consistency_statement(header: &Header, survivors: &[MemberId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(46 + 2 * survivors.len());
    out.extend_from_slice(&header.roster.0);
    out.extend_from_slice(&header.round.to_le_bytes());
    out.extend_from_slice(&header.attempt.to_le_bytes());
    out.extend_from_slice(&(survivors.len() as u16).to_le_bytes());
    for id in survivors {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
    out
}

/// Encodes and signs `message` as its sender, whose key `identity` must be.
/// Fails only if the result would exceed the limit of its kind.
///
/// The two bulk kinds write their vector straight into the envelope (the
/// same bytes serde would produce, without its intermediate copy of the
/// vector); every other kind goes through postcard.
pub fn encode(identity: &IdentityKey, message: &Message) -> Result<Vec<u8>, ProtocolError> {
    match &message.payload {
        Payload::MaskedInput(m) => {
            let vector = &m.vector.0;
            let layout = Layout::Le { len: vector.len() };
            let mut out = bulk_prefix(&message.header, MessageKind::MaskedInput, None, layout)?;
            for piece in vector.chunks(VECTOR_PIECE) {
                put_le(&mut out, piece);
            }
            sign_envelope(identity, out)
        }
        Payload::Outcome(o) => {
            let (sum, width) = (&o.sum.0, packed::width(&o.sum.0));
            let layout = Layout::Packed {
                count: sum.len(),
                width,
            };
            let participants = Some(&o.participants[..]);
            let mut out = bulk_prefix(&message.header, MessageKind::Outcome, participants, layout)?;
            packed::pack_into(&mut out, sum, width);
            sign_envelope(identity, out)
        }
        _ => encode_with_postcard(identity, message),
    }
}

/// Encodes and signs a [`MaskedInput`] of `len` entries whose vector is
/// produced piece by piece straight into the envelope: `fill(start, piece)`
/// must write entries `start .. start + piece.len()` (every entry of `piece`).
///
/// The result is byte for byte what [`encode`] gives for the same vector,
/// but the vector never exists whole: a member masks its input one
/// L1-sized piece at a time and writes it out, instead of building the
/// masked vector and then copying it into the envelope. The scratch piece,
/// which briefly holds the caller's data, is wiped.
pub fn encode_masked_input_with(
    identity: &IdentityKey,
    header: &Header,
    len: usize,
    mut fill: impl FnMut(usize, &mut [Ring]),
) -> Result<Vec<u8>, ProtocolError> {
    let mut out = bulk_prefix(header, MessageKind::MaskedInput, None, Layout::Le { len })?;
    let mut scratch = zeroize::Zeroizing::new(vec![0; VECTOR_PIECE.min(len)]);
    let mut start = 0;
    while start < len {
        let piece = &mut scratch[..VECTOR_PIECE.min(len - start)];
        fill(start, piece);
        put_le(&mut out, piece);
        start += piece.len();
    }
    sign_envelope(identity, out)
}

/// Entries per piece when a vector is written into an envelope: 8 KiB, so
/// a piece and its bytes stay in L1 cache.
const VECTOR_PIECE: usize = 1024;

/// How a bulk message's vector is laid out (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `len` little-endian `u64`s (a masked input).
    Le { len: usize },
    /// `count` entries of `width` bits (an outcome's sum).
    Packed { count: usize, width: u32 },
}

/// Version, header, tag, participants (outcome only) and the vector's
/// length fields: everything of a bulk envelope before the vector's bytes,
/// in a buffer with room for the rest. Checks the kind's size limit first.
fn bulk_prefix(
    header: &Header,
    kind: MessageKind,
    participants: Option<&[MemberId]>,
    layout: Layout,
) -> Result<Vec<u8>, ProtocolError> {
    let malformed = |e: postcard::Error| ProtocolError::Malformed {
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(64 + participants.map_or(0, |p| p.len() * 3));
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(header, out).map_err(malformed)?;
    out = postcard::to_extend(&(kind as u32), out).map_err(malformed)?;
    if let Some(p) = participants {
        out = postcard::to_extend(p, out).map_err(malformed)?;
    }
    let (vector_len, vector_bytes) = match layout {
        Layout::Le { len } => (len, len.saturating_mul(8)),
        Layout::Packed { count, width } => {
            out = postcard::to_extend(&count, out).map_err(malformed)?;
            out = postcard::to_extend(&(width as u8), out).map_err(malformed)?;
            (count, packed::byte_len(count, width))
        }
    };
    out = postcard::to_extend(&vector_bytes, out).map_err(malformed)?;
    let len = out
        .len()
        .saturating_add(vector_bytes)
        .saturating_add(SIGNATURE_BYTES);
    // Over MAX_VECTOR_LEN the decoder would refuse it, whatever the bytes.
    if len > kind.max_bytes() || vector_len > MAX_VECTOR_LEN {
        return Err(ProtocolError::Oversized {
            len,
            max: kind.max_bytes(),
        });
    }
    out.reserve_exact(len - out.len());
    Ok(out)
}

/// Appends `v` as little-endian bytes. `v` is at most one piece, so the
/// zeros written by `resize` and their overwrite both stay in L1.
fn put_le(out: &mut Vec<u8>, v: &[Ring]) {
    let start = out.len();
    out.resize(start + v.len() * 8, 0);
    for (dst, x) in out[start..].chunks_exact_mut(8).zip(v) {
        dst.copy_from_slice(&x.to_le_bytes());
    }
}

/// Postcard body for the control kinds.
fn encode_with_postcard(
    identity: &IdentityKey,
    message: &Message,
) -> Result<Vec<u8>, ProtocolError> {
    let kind = message.payload.kind();
    let mut out = Vec::with_capacity(message.payload.size_hint() + SIGNATURE_BYTES);
    out.push(WIRE_VERSION);
    let out = postcard::to_extend(message, out).map_err(|e| ProtocolError::Malformed {
        reason: e.to_string(),
    })?;
    let len = out.len() + SIGNATURE_BYTES;
    if len > kind.max_bytes() {
        return Err(ProtocolError::Oversized {
            len,
            max: kind.max_bytes(),
        });
    }
    sign_envelope(identity, out)
}

/// Appends the signature over everything before it.
fn sign_envelope(identity: &IdentityKey, mut out: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
    let signature = identity.sign(kdf::MESSAGE_SIGNATURE, &out);
    out.extend_from_slice(&signature.to_bytes());
    Ok(out)
}

/// A parsed envelope whose signature is not yet checked.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The message, complete when it comes from [`decode`]. (The round's
    /// own in-place decoding leaves a bulk message's vector in the envelope
    /// and this one empty.)
    pub message: Message,
    signed: &'a [u8],
    signature: Signature,
    vector: Option<InPlace<'a>>,
}

/// A bulk message's vector left in its envelope.
#[derive(Clone, Copy, Debug)]
enum InPlace<'a> {
    /// A masked input's little-endian `u64`s.
    Le(&'a [u8]),
    /// An outcome's packed sum, its length and padding checked.
    Packed {
        bytes: &'a [u8],
        count: usize,
        width: u32,
    },
}

impl InPlace<'_> {
    /// The vector's entries.
    fn to_ring(self) -> Vec<Ring> {
        match self {
            InPlace::Le(le) => ring_from_le(le),
            InPlace::Packed {
                bytes,
                count,
                width,
            } => packed::unpack(bytes, count, width),
        }
    }
}

impl<'a> Decoded<'a> {
    /// The kind of the payload.
    pub fn kind(&self) -> MessageKind {
        self.message.payload.kind()
    }

    /// Checks the signature against the sender's identity, which the caller
    /// looks up in its roster by `message.header.sender`.
    pub fn verify(&self, sender_identity: &PublicIdentity) -> Result<(), ProtocolError> {
        sender_identity
            .verify(kdf::MESSAGE_SIGNATURE, self.signed, &self.signature)
            .map_err(|_| ProtocolError::BadSignature {
                sender: self.message.header.sender.0,
            })
    }

    /// The vector of a masked input left in the envelope by
    /// [`decode_in_place`]: little-endian `u64`s, a whole number of them.
    /// (An outcome's sum is packed: see [`Decoded::vector_len`].)
    pub fn vector_le(&self) -> Option<&'a [u8]> {
        match self.vector {
            Some(InPlace::Le(le)) => Some(le),
            _ => None,
        }
    }

    /// The number of entries of a bulk message's vector left in the
    /// envelope by [`decode_in_place`], whichever its layout.
    pub fn vector_len(&self) -> Option<usize> {
        self.vector.map(|v| match v {
            InPlace::Le(le) => le.len() / 8,
            InPlace::Packed { count, .. } => count,
        })
    }

    /// Checks the signature and takes the vector of a bulk message out of
    /// it. Decoded in place, a masked input's vector is converted from the
    /// envelope piece by piece as the signature's hash passes over it (one
    /// read of the bytes, not two) and an outcome's packed sum is unpacked
    /// after the check; otherwise the vector is moved out of the payload.
    /// On a bad signature nothing is returned.
    pub fn verify_vector(
        &mut self,
        sender_identity: &PublicIdentity,
    ) -> Result<Vec<Ring>, ProtocolError> {
        let bad = |sender: u16| ProtocolError::BadSignature { sender };
        let sender = self.message.header.sender.0;
        let le = match self.vector {
            Some(InPlace::Le(le)) => le,
            Some(packed @ InPlace::Packed { .. }) => {
                // Packed entries do not line up with the hash's progress in
                // whole bytes; the sum is a fraction of a masked input's
                // size, so it is read twice: hashed, then unpacked.
                self.verify(sender_identity)?;
                return Ok(packed.to_ring());
            }
            None => {
                self.verify(sender_identity)?;
                return Ok(self
                    .message
                    .payload
                    .vector_mut()
                    .map(|v| std::mem::take(&mut v.0))
                    .unwrap_or_default());
            }
        };
        let start = self.signed.len() - le.len();
        let mut out = Vec::with_capacity(le.len() / 8);
        sender_identity
            .verify_with_progress(
                kdf::MESSAGE_SIGNATURE,
                self.signed,
                &self.signature,
                |hashed| {
                    let upto = hashed.saturating_sub(start) / 8;
                    let done = out.len();
                    if upto > done {
                        out.extend(
                            le[done * 8..upto * 8]
                                .chunks_exact(8)
                                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
                        );
                    }
                },
            )
            .map_err(|_| bad(sender))?;
        Ok(out)
    }

    /// For a masked input decoded in place: checks the signature and adds
    /// the vector to `sum` in the same pass, each piece right after it was
    /// hashed, so the leader reads megabytes from memory once instead of
    /// twice. On a bad signature the addition is undone: `sum` is as before.
    ///
    /// The caller has checked that the vector has `sum.len()` entries; if
    /// not (or if the message was not decoded in place) nothing is added
    /// and this fails.
    pub fn verify_adding_vector(
        &self,
        sender_identity: &PublicIdentity,
        sum: &mut [Ring],
    ) -> Result<(), ProtocolError> {
        let Some(le) = self.vector_le().filter(|le| le.len() == sum.len() * 8) else {
            return Err(ProtocolError::Malformed {
                reason: "no in-place vector of the sum's length".into(),
            });
        };
        // The vector is the last field: it ends where the signed bytes end.
        let start = self.signed.len() - le.len();
        let mut added = 0;
        let result = sender_identity.verify_with_progress(
            kdf::MESSAGE_SIGNATURE,
            self.signed,
            &self.signature,
            |hashed| {
                let upto = hashed.saturating_sub(start) / 8;
                if upto > added {
                    add_le_assign(&mut sum[added..upto], &le[added * 8..upto * 8]);
                    added = upto;
                }
            },
        );
        if result.is_err() {
            sub_le_assign(&mut sum[..added], &le[..added * 8]);
            return Err(ProtocolError::BadSignature {
                sender: self.message.header.sender.0,
            });
        }
        Ok(())
    }
}

/// Parses an envelope: size, version, body and trailing bytes are checked;
/// the signature is not (see [`Decoded::verify`]). Never panics. It
/// allocates at most a small multiple of `bytes.len()`, except for the sum
/// of an outcome, which it unpacks: up to 64 times its packed bytes (one
/// bit per entry), and never more than [`MAX_VECTOR_LEN`] entries.
/// Untrusted bytes whose vector is not wanted, or wanted only once the
/// signature holds, go through [`decode_in_place`].
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, ProtocolError> {
    let mut d = decode_in_place(bytes)?;
    if let (Some(in_place), Some(v)) = (d.vector.take(), d.message.payload.vector_mut()) {
        *v = RingVector(in_place.to_ring());
    }
    Ok(d)
}

/// [`decode`], except that the vector of a bulk message (masked input or
/// outcome) stays in `bytes` ([`Decoded::vector_len`]): the leader adds a
/// masked input to its running sum from there while checking its
/// signature, and a member unpacks an outcome only once its signature
/// holds, instead of first allocating and filling a copy of megabytes. Accepts and rejects exactly what [`decode`]
/// does.
pub fn decode_in_place(bytes: &[u8]) -> Result<Decoded<'_>, ProtocolError> {
    if bytes.len() > MAX_BULK_MESSAGE_BYTES {
        return Err(ProtocolError::Oversized {
            len: bytes.len(),
            max: MAX_BULK_MESSAGE_BYTES,
        });
    }
    if bytes.len() < 1 + SIGNATURE_BYTES {
        return Err(ProtocolError::Truncated { len: bytes.len() });
    }
    if bytes[0] != WIRE_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            version: bytes[0],
            supported: WIRE_VERSION,
        });
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_BYTES);
    let body = &signed[1..];
    let malformed = |e: postcard::Error| ProtocolError::Malformed {
        reason: e.to_string(),
    };
    let mut sig = [0u8; SIGNATURE_BYTES];
    sig.copy_from_slice(signature);
    let signature = Signature::from_bytes(&sig);
    // Header and tag first: they route the rest, and a long message must be
    // of a bulk kind before megabytes are parsed.
    let (header, rest) = postcard::take_from_bytes::<Header>(body).map_err(malformed)?;
    let (tag, rest) = postcard::take_from_bytes::<u32>(rest).map_err(malformed)?;
    let kind = MessageKind::from_tag(tag);
    if bytes.len() > MAX_CONTROL_MESSAGE_BYTES {
        let max = kind.map_or(MAX_CONTROL_MESSAGE_BYTES, MessageKind::max_bytes);
        if bytes.len() > max {
            return Err(ProtocolError::Oversized {
                len: bytes.len(),
                max,
            });
        }
    }
    if let Some(bulk @ (MessageKind::MaskedInput | MessageKind::Outcome)) = kind {
        // An outcome starts with its participants and its sum's count and
        // width; then, for both, the vector is the last field: a
        // byte-string length and the bytes.
        let (participants, packing, rest) = if bulk == MessageKind::Outcome {
            let (p, rest) = postcard::take_from_bytes::<Vec<MemberId>>(rest).map_err(malformed)?;
            let (count, rest) = postcard::take_from_bytes::<usize>(rest).map_err(malformed)?;
            let (width, rest) = postcard::take_from_bytes::<u8>(rest).map_err(malformed)?;
            (Some(p), Some((count, u32::from(width))), rest)
        } else {
            (None, None, rest)
        };
        let (byte_len, rest) = postcard::take_from_bytes::<usize>(rest).map_err(malformed)?;
        if byte_len > rest.len() {
            return Err(malformed(postcard::Error::DeserializeUnexpectedEnd));
        }
        let (vector, rest) = rest.split_at(byte_len);
        if !rest.is_empty() {
            return Err(ProtocolError::TrailingBytes { count: rest.len() });
        }
        let vector = match packing {
            Some((count, width)) => {
                packed::check(vector, count, width)
                    .map_err(|reason| ProtocolError::Malformed { reason })?;
                InPlace::Packed {
                    bytes: vector,
                    count,
                    width,
                }
            }
            None => {
                check_vector_bytes(byte_len)
                    .map_err(|reason| ProtocolError::Malformed { reason })?;
                InPlace::Le(vector)
            }
        };
        let payload = match participants {
            Some(participants) => Payload::Outcome(OutcomeMessage {
                participants,
                sum: RingVector::default(),
            }),
            None => Payload::MaskedInput(MaskedInput {
                vector: RingVector::default(),
            }),
        };
        return Ok(Decoded {
            message: Message { header, payload },
            signed,
            signature,
            vector: Some(vector),
        });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(body).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes { count: rest.len() });
    }
    Ok(Decoded {
        message,
        signed,
        signature,
        vector: None,
    })
}

/// Why `byte_len` bytes are not a ring vector, if they are not.
fn check_vector_bytes(byte_len: usize) -> Result<(), String> {
    if !byte_len.is_multiple_of(8) {
        return Err(format!(
            "ring vector of {byte_len} bytes is not a whole number of 8-byte entries"
        ));
    }
    if byte_len / 8 > MAX_VECTOR_LEN {
        return Err(format!(
            "ring vector of {} entries exceeds the limit of {MAX_VECTOR_LEN}",
            byte_len / 8
        ));
    }
    Ok(())
}

/// Little-endian bytes (a whole number of entries) to ring entries.
fn ring_from_le(b: &[u8]) -> Vec<Ring> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// `acc[i] -= entry i of le` (wrapping): undoes [`add_le_assign`].
///
/// # Panics
/// As [`add_le_assign`].
fn sub_le_assign(acc: &mut [Ring], le: &[u8]) {
    assert_eq!(
        le.len(),
        acc.len() * 8,
        "ring vectors must have equal length"
    );
    for (a, c) in acc.iter_mut().zip(le.chunks_exact(8)) {
        *a = a.wrapping_sub(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
}

/// `acc[i] += entry i of le` (wrapping), straight from little-endian bytes.
///
/// # Panics
/// If `le` does not hold exactly `acc.len()` entries (local misuse: the
/// caller checks the length against the round's first).
fn add_le_assign(acc: &mut [Ring], le: &[u8]) {
    assert_eq!(
        le.len(),
        acc.len() * 8,
        "ring vectors must have equal length"
    );
    for (a, c) in acc.iter_mut().zip(le.chunks_exact(8)) {
        *a = a.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
}

/// The packed layout of an outcome's sum (see the module doc), and its
/// serde form for [`OutcomeMessage::sum`].
mod packed {
    use super::*;

    /// The narrowest width that holds every entry of `v` read as a
    /// two's-complement integer (1 for an empty or all-zero vector).
    pub(super) fn width(v: &[Ring]) -> u32 {
        // An entry's magnitude bits: its own for a non-negative one, those
        // of its complement for a negative one; one more for the sign.
        let bits = v
            .iter()
            .fold(0u64, |acc, &x| acc | (x ^ ((x as i64 >> 63) as u64)));
        (64 - bits.leading_zeros() + 1).min(64)
    }

    /// Bytes of `count` entries of `width` bits (saturating: a count that
    /// large is refused anyway).
    pub(super) fn byte_len(count: usize, width: u32) -> usize {
        count.saturating_mul(width as usize).div_ceil(8)
    }

    /// Appends the low `width` bits of each entry of `v` as one
    /// little-endian bit stream, [`byte_len`] bytes in all.
    pub(super) fn pack_into(out: &mut Vec<u8>, v: &[Ring], width: u32) {
        debug_assert!((1..=64).contains(&width));
        let mask = u64::MAX >> (64 - width);
        let start = out.len();
        out.reserve(byte_len(v.len(), width));
        let (mut acc, mut bits) = (0u128, 0u32);
        for &x in v {
            acc |= u128::from(x & mask) << bits;
            bits += width;
            if bits >= 64 {
                out.extend_from_slice(&(acc as u64).to_le_bytes());
                acc >>= 64;
                bits -= 64;
            }
        }
        out.extend_from_slice(&(acc as u64).to_le_bytes()[..bits.div_ceil(8) as usize]);
        debug_assert_eq!(out.len() - start, byte_len(v.len(), width));
    }

    /// Why `bytes` are not `count` entries of `width` bits, if they are
    /// not: the width, the count, the length and the padding bits (zero,
    /// so that a sum has one encoding per width) are checked.
    pub(super) fn check(bytes: &[u8], count: usize, width: u32) -> Result<(), String> {
        if !(1..=64).contains(&width) {
            return Err(format!("packed sum of width {width}, not 1 to 64 bits"));
        }
        if count > MAX_VECTOR_LEN {
            return Err(format!(
                "packed sum of {count} entries exceeds the limit of {MAX_VECTOR_LEN}"
            ));
        }
        if bytes.len() != byte_len(count, width) {
            return Err(format!(
                "packed sum of {count} entries of {width} bits in {} bytes, not {}",
                bytes.len(),
                byte_len(count, width)
            ));
        }
        let used = (count * width as usize) % 8;
        if used != 0 && bytes.last().is_some_and(|last| last >> used != 0) {
            return Err("packed sum with padding bits set".into());
        }
        Ok(())
    }

    /// The entries of a packed sum that [`check`] accepted, each sign
    /// extended from `width` bits.
    pub(super) fn unpack(bytes: &[u8], count: usize, width: u32) -> Vec<Ring> {
        let (w, shift) = (width as usize, 64 - width);
        // Up to 57 bits an entry and its offset within its first byte fit
        // one 64-bit word: every entry whose 8 bytes from there lie in the
        // buffer is one unaligned load and two shifts.
        let fast = if width <= 57 {
            count.min((bytes.len().saturating_sub(7) * 8).div_ceil(w))
        } else {
            0
        };
        let mut out = Vec::with_capacity(count);
        out.extend((0..fast).map(|i| {
            let off = i * w;
            let word: [u8; 8] = bytes[off / 8..off / 8 + 8].try_into().expect("8 bytes");
            let raw = u64::from_le_bytes(word) >> (off % 8);
            ((raw << shift) as i64 >> shift) as u64
        }));
        // The last few entries, or every entry of a wider sum: from up to
        // 16 bytes, zero beyond the end.
        out.extend((fast..count).map(|i| {
            let off = i * w;
            let rest = bytes.get(off / 8..).unwrap_or_default();
            let mut word = [0u8; 16];
            let n = rest.len().min(16);
            word[..n].copy_from_slice(&rest[..n]);
            let raw = (u128::from_le_bytes(word) >> (off % 8)) as u64;
            ((raw << shift) as i64 >> shift) as u64
        }));
        out
    }

    /// `(count, width, bytes)`: the same bytes as the bulk encoder writes.
    pub(super) fn serialize<S: Serializer>(v: &RingVector, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let width = width(&v.0);
        let mut packed = Bytes::default();
        pack_into(&mut packed.0, &v.0, width);
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&v.0.len())?;
        t.serialize_element(&(width as u8))?;
        t.serialize_element(&packed)?;
        t.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RingVector, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RingVector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a packed sum: count, width and bytes")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RingVector, A::Error> {
                let missing = || de::Error::custom("packed sum is incomplete");
                let count: usize = seq.next_element()?.ok_or_else(missing)?;
                let width: u8 = seq.next_element()?.ok_or_else(missing)?;
                let bytes: Bytes = seq.next_element()?.ok_or_else(missing)?;
                let width = u32::from(width);
                check(&bytes.0, count, width).map_err(de::Error::custom)?;
                Ok(RingVector(unpack(&bytes.0, count, width)))
            }
        }
        d.deserialize_tuple(3, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use primia_crypto::Secret32;

    fn key() -> IdentityKey {
        IdentityKey::from_seed(&Secret32::from_bytes([3; 32]))
    }

    fn header() -> Header {
        Header {
            roster: RosterDigest([9; 32]),
            round: 300,
            attempt: 2,
            sender: MemberId(260),
        }
    }

    fn vector(len: usize) -> Vec<Ring> {
        (0..len as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect()
    }

    /// What serde and postcard make of the message: the reference the bulk
    /// path must match byte for byte.
    fn via_postcard(message: &Message) -> Vec<u8> {
        encode_with_postcard(&key(), message).unwrap()
    }

    /// The decoder as it was before bulk vectors were read in place: all
    /// of the body through postcard. The reference `decode` must match.
    fn reference_decode(bytes: &[u8]) -> Option<Message> {
        if bytes.len() < 1 + SIGNATURE_BYTES || bytes[0] != WIRE_VERSION {
            return None;
        }
        let body = &bytes[1..bytes.len() - SIGNATURE_BYTES];
        match postcard::take_from_bytes::<Message>(body) {
            Ok((m, [])) => Some(m),
            _ => None,
        }
    }

    /// Every truncation, one-byte change and one-byte insertion of `bytes`
    /// before the signature, and `bytes` itself.
    fn variants(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (0..=bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for i in 0..bytes.len() - SIGNATURE_BYTES {
            for delta in [1u8, 0x80] {
                let mut b = bytes.to_vec();
                b[i] = b[i].wrapping_add(delta);
                out.push(b);
            }
            let mut longer = bytes.to_vec();
            longer.insert(i, 0);
            out.push(longer);
        }
        out
    }

    /// `decode` and `decode_in_place` (vector materialised) agree with the
    /// reference on every variant.
    fn check_decoders_agree(bytes: &[u8]) {
        for b in variants(bytes) {
            let reference = reference_decode(&b);
            let full = decode(&b).ok().map(|d| d.message);
            let in_place = decode_in_place(&b).ok().map(|mut d| {
                if let (Some(in_place), Some(v)) = (d.vector, d.message.payload.vector_mut()) {
                    *v = RingVector(in_place.to_ring());
                }
                d.message
            });
            assert_eq!(full, reference);
            assert_eq!(in_place, reference);
        }
    }

    #[test]
    fn bulk_encoding_matches_postcard() {
        for len in [0, 1, VECTOR_PIECE - 1, VECTOR_PIECE, 3 * VECTOR_PIECE + 5] {
            let masked = Message {
                header: header(),
                payload: Payload::MaskedInput(MaskedInput {
                    vector: RingVector(vector(len)),
                }),
            };
            assert_eq!(encode(&key(), &masked).unwrap(), via_postcard(&masked));
            let outcome = Message {
                header: header(),
                payload: Payload::Outcome(OutcomeMessage {
                    participants: vec![MemberId(1), MemberId(200), MemberId(1000)],
                    sum: RingVector(vector(len)),
                }),
            };
            assert_eq!(encode(&key(), &outcome).unwrap(), via_postcard(&outcome));
        }
    }

    #[test]
    fn streamed_masked_input_matches_encode() {
        let v = vector(2 * VECTOR_PIECE + 77);
        let message = Message {
            header: header(),
            payload: Payload::MaskedInput(MaskedInput {
                vector: RingVector(v.clone()),
            }),
        };
        let mut seen = 0;
        let streamed = encode_masked_input_with(&key(), &header(), v.len(), |start, piece| {
            assert_eq!(start, seen, "pieces come in order");
            seen += piece.len();
            piece.copy_from_slice(&v[start..start + piece.len()]);
        })
        .unwrap();
        assert_eq!(seen, v.len());
        assert_eq!(streamed, encode(&key(), &message).unwrap());
    }

    #[test]
    fn oversized_vectors_are_refused_before_allocating() {
        for len in [MAX_VECTOR_LEN + 1, usize::MAX / 4] {
            let err = encode_masked_input_with(&key(), &header(), len, |_, _| {
                unreachable!("nothing is filled")
            })
            .unwrap_err();
            assert!(matches!(err, ProtocolError::Oversized { .. }));
        }
    }

    /// In-place decoding of a masked input agrees with postcard on the
    /// genuine message and on every truncation and one-byte change of it,
    /// and the vector it leaves in place is the right one.
    #[test]
    fn in_place_decoding_agrees_with_full_decoding() {
        let v = vector(40);
        let message = Message {
            header: header(),
            payload: Payload::MaskedInput(MaskedInput {
                vector: RingVector(v.clone()),
            }),
        };
        let bytes = encode(&key(), &message).unwrap();
        let lazy = decode_in_place(&bytes).unwrap();
        let le = lazy.vector_le().unwrap();
        let mut sum = vec![1u64; v.len()];
        add_le_assign(&mut sum, le);
        let expect: Vec<Ring> = v.iter().map(|x| x.wrapping_add(1)).collect();
        assert_eq!(sum, expect);
        lazy.verify(&key().public()).unwrap();
        let full = decode(&bytes).unwrap();
        assert_eq!(full.message, message);
        assert!(full.vector_le().is_none());

        check_decoders_agree(&bytes);
    }

    #[test]
    fn verify_adding_vector_adds_only_verified_vectors() {
        let v = vector(3 * 2048 + 5);
        let message = Message {
            header: header(),
            payload: Payload::MaskedInput(MaskedInput {
                vector: RingVector(v.clone()),
            }),
        };
        let bytes = encode(&key(), &message).unwrap();
        let start: Vec<Ring> = (0..v.len() as u64).collect();
        let mut sum = start.clone();
        decode_in_place(&bytes)
            .unwrap()
            .verify_adding_vector(&key().public(), &mut sum)
            .unwrap();
        let expect: Vec<Ring> = start
            .iter()
            .zip(&v)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        assert_eq!(sum, expect);
        // A flipped bit anywhere in the vector: refused, the sum untouched.
        for at in [bytes.len() - SIGNATURE_BYTES - 1, bytes.len() / 2, 60] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let d = decode_in_place(&bad).unwrap();
            let mut sum = start.clone();
            let err = d
                .verify_adding_vector(&key().public(), &mut sum)
                .unwrap_err();
            assert!(matches!(err, ProtocolError::BadSignature { .. }));
            assert_eq!(sum, start);
        }
        // Another signer's key: refused too.
        let other = IdentityKey::from_seed(&Secret32::from_bytes([4; 32])).public();
        let mut sum = start.clone();
        assert!(
            decode_in_place(&bytes)
                .unwrap()
                .verify_adding_vector(&other, &mut sum)
                .is_err()
        );
        assert_eq!(sum, start);
        // A sum of the wrong length: nothing added.
        let mut short = vec![0; v.len() - 1];
        assert!(
            decode_in_place(&bytes)
                .unwrap()
                .verify_adding_vector(&key().public(), &mut short)
                .is_err()
        );
        assert!(short.iter().all(|x| *x == 0));
    }

    /// The same agreement for an outcome, whose participants come before
    /// the vector, and `verify_vector` gives the vector only when the
    /// signature holds.
    #[test]
    fn in_place_outcome_decoding_agrees_and_verifies() {
        let v = vector(3 * 8192 + 3);
        let message = Message {
            header: header(),
            payload: Payload::Outcome(OutcomeMessage {
                participants: vec![MemberId(0), MemberId(5), MemberId(300)],
                sum: RingVector(v.clone()),
            }),
        };
        let bytes = encode(&key(), &message).unwrap();
        let mut lazy = decode_in_place(&bytes).unwrap();
        assert_eq!(lazy.vector_len(), Some(v.len()));
        assert!(lazy.vector_le().is_none(), "an outcome's sum is packed");
        assert_eq!(lazy.verify_vector(&key().public()).unwrap(), v);
        let Payload::Outcome(o) = &lazy.message.payload else {
            panic!("an outcome")
        };
        assert_eq!(
            o.participants,
            vec![MemberId(0), MemberId(5), MemberId(300)]
        );
        let mut full = decode(&bytes).unwrap();
        assert_eq!(full.message, message);
        assert_eq!(full.verify_vector(&key().public()).unwrap(), v);
        let mut bad = bytes.clone();
        bad[bytes.len() - SIGNATURE_BYTES - 9] ^= 1;
        assert!(
            decode_in_place(&bad)
                .unwrap()
                .verify_vector(&key().public())
                .is_err()
        );
        let small = Message {
            header: header(),
            payload: Payload::Outcome(OutcomeMessage {
                participants: vec![MemberId(1), MemberId(2)],
                sum: RingVector(vector(5)),
            }),
        };
        check_decoders_agree(&encode(&key(), &small).unwrap());
    }

    /// Entries at both ends of what `width` bits hold, and between.
    fn spanning(width: u32) -> Vec<Ring> {
        let max = if width == 1 {
            0
        } else {
            (u64::MAX >> (65 - width)) as i64
        };
        let min = -max - 1;
        let mut v = vec![max as u64, min as u64, 0, u64::MAX, 1];
        v.extend((0..37u64).map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) as i64;
            (if width == 64 {
                x
            } else {
                x.rem_euclid(max + 1) - (max + 1) / 2
            }) as u64
        }));
        v.truncate(if width == 1 { 4 } else { v.len() });
        v
    }

    fn outcome(sum: Vec<Ring>) -> Message {
        Message {
            header: header(),
            payload: Payload::Outcome(OutcomeMessage {
                participants: vec![MemberId(0), MemberId(4), MemberId(9)],
                sum: RingVector(sum),
            }),
        }
    }

    #[test]
    fn packed_sums_come_back_bit_for_bit_at_every_width() {
        for width in 1..=64 {
            let v = spanning(width);
            assert_eq!(packed::width(&v), width, "entries {v:?}");
            let message = outcome(v.clone());
            let bytes = encode(&key(), &message).unwrap();
            assert_eq!(bytes, via_postcard(&message), "width {width}");
            let mut lazy = decode_in_place(&bytes).unwrap();
            assert_eq!(lazy.vector_len(), Some(v.len()));
            assert_eq!(lazy.verify_vector(&key().public()).unwrap(), v);
            assert_eq!(decode(&bytes).unwrap().message, message);
            // The vector takes ceil(len * width / 8) bytes, not 8 per entry
            // (the length prefix may be a byte shorter too).
            let full = encode(&key(), &outcome(vec![u64::MAX >> 1; v.len()])).unwrap();
            let saved = v.len() * 8 - (v.len() * width as usize).div_ceil(8);
            let diff = full.len() - bytes.len();
            assert!(diff == saved || diff == saved + 1, "width {width}: {diff}");
        }
        assert_eq!(packed::width(&[]), 1);
        check_decoders_agree(&encode(&key(), &outcome(spanning(13))).unwrap());
    }

    /// A sum of fixed-point updates of values in [-1, 1) by 10 members of
    /// up to 1000 examples each (the round bench's test vectors) needs
    /// 45 bits, not 64.
    #[test]
    fn fixed_point_sums_pack_to_what_their_bound_needs() {
        let mut sum = vec![0u64; 1001];
        let mut x = Vec::new();
        for _member in 0..10 {
            let delta: Vec<f32> = (0..1000)
                .map(|i| if i % 2 == 0 { 0.999_999 } else { -1.0 })
                .collect();
            primia_crypto::fixed::encode_update(1000, &delta, &mut x).unwrap();
            primia_crypto::add_assign(&mut sum, &x);
        }
        assert_eq!(packed::width(&sum), 45);
    }

    #[test]
    fn malformed_packed_sums_are_refused() {
        let v = spanning(13);
        let bytes = encode(&key(), &outcome(v.clone())).unwrap();
        let n = v.len();
        let packed_bytes = (n * 13).div_ceil(8);
        assert!(
            packed::check(&[0; 3], 2, 0)
                .unwrap_err()
                .contains("width 0")
        );
        assert!(
            packed::check(&[0; 3], 2, 65)
                .unwrap_err()
                .contains("width 65")
        );
        assert!(
            packed::check(&[0; 3], 2, 13)
                .unwrap_err()
                .contains("in 3 bytes, not 4")
        );
        assert!(packed::check(&[], MAX_VECTOR_LEN + 1, 1).is_err());
        // 2 entries of 13 bits leave 6 bits of the fourth byte unused.
        assert!(packed::check(&[0, 0, 0, 0x03], 2, 13).is_ok());
        assert!(
            packed::check(&[0, 0, 0, 0x04], 2, 13)
                .unwrap_err()
                .contains("padding")
        );
        // In an envelope: the last vector byte is just before the signature.
        let last = bytes.len() - SIGNATURE_BYTES - 1;
        assert_ne!(n * 13 % 8, 0, "the test needs padding bits");
        let mut padded = bytes.clone();
        padded[last] |= 0x80;
        assert!(matches!(
            decode_in_place(&padded),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(decode(&padded).is_err());
        let mut wide = bytes.clone();
        let width_at = last + 1 - packed_bytes - 2;
        assert_eq!(wide[width_at], 13);
        wide[width_at] = 65;
        assert!(decode_in_place(&wide).is_err());
        check_decoders_agree(&bytes);
    }

    #[test]
    fn tags_are_declaration_order() {
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(*k as u32, i as u32);
            assert_eq!(MessageKind::from_tag(i as u32), Some(*k));
        }
    }
}
