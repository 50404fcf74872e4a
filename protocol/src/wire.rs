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
//! binds it to its phase. Ring vectors travel as little-endian `u64` bytes
//! (postcard's varints would make random-looking masked values 25% longer).
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
pub const WIRE_VERSION: u8 = 1;

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
                if !b.len().is_multiple_of(8) {
                    return Err(E::custom(format_args!(
                        "ring vector of {} bytes is not a whole number of 8-byte entries",
                        b.len()
                    )));
                }
                if b.len() / 8 > MAX_VECTOR_LEN {
                    return Err(E::custom(format_args!(
                        "ring vector of {} entries exceeds the limit of {MAX_VECTOR_LEN}",
                        b.len() / 8
                    )));
                }
                Ok(RingVector(
                    b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                ))
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
    /// The sum of their inputs over the ring.
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
pub fn encode(identity: &IdentityKey, message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let kind = message.payload.kind();
    let mut out = Vec::with_capacity(message.payload.size_hint() + SIGNATURE_BYTES);
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(message, out).map_err(|e| ProtocolError::Malformed {
        reason: e.to_string(),
    })?;
    let len = out.len() + SIGNATURE_BYTES;
    if len > kind.max_bytes() {
        return Err(ProtocolError::Oversized {
            len,
            max: kind.max_bytes(),
        });
    }
    let signature = identity.sign(kdf::MESSAGE_SIGNATURE, &out);
    out.extend_from_slice(&signature.to_bytes());
    Ok(out)
}

/// A parsed envelope whose signature is not yet checked.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The message.
    pub message: Message,
    signed: &'a [u8],
    signature: Signature,
}

impl Decoded<'_> {
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
}

/// Parses an envelope: size, version, body and trailing bytes are checked;
/// the signature is not (see [`Decoded::verify`]). Never panics, and never
/// allocates more than a small multiple of `bytes.len()`.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, ProtocolError> {
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
    if bytes.len() > MAX_CONTROL_MESSAGE_BYTES {
        // Only a bulk kind may be this long: read the header and the variant
        // tag before parsing megabytes.
        let (_, rest) = postcard::take_from_bytes::<Header>(body).map_err(malformed)?;
        let (tag, _) = postcard::take_from_bytes::<u32>(rest).map_err(malformed)?;
        let max =
            MessageKind::from_tag(tag).map_or(MAX_CONTROL_MESSAGE_BYTES, MessageKind::max_bytes);
        if bytes.len() > max {
            return Err(ProtocolError::Oversized {
                len: bytes.len(),
                max,
            });
        }
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(body).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes { count: rest.len() });
    }
    let mut sig = [0u8; SIGNATURE_BYTES];
    sig.copy_from_slice(signature);
    Ok(Decoded {
        message,
        signed,
        signature: Signature::from_bytes(&sig),
    })
}
