//! The driver's own messages between members: the frame around a protocol
//! envelope (round, base model, recipient), signed model announcements, and
//! the requests and responses of model dissemination.
//!
//! Round messages carry the protocol's own signed envelope untouched; the
//! frame only adds what the driver needs to route it and to make sure that
//! sender and receiver start the round from the same model. Everything else
//! is small and fixed-size except a model blob, which is the tail of its
//! response. The byte layouts are written next to each type and pinned by a
//! snapshot test, because they are a contract with other hospitals' daemons.
//!
//! Decoding never panics and never allocates more than the input: every
//! length is the input's own.

use primia_crypto::{IdentityKey, PublicIdentity, Signature};
use primia_protocol::{MemberId, RosterDigest};

use crate::store::ModelHash;

/// Version byte that starts every driver message.
pub const VERSION: u8 = 1;

/// Signing context of model announcements; distinct from every protocol
/// context, so an announcement can never pass for a protocol message.
pub const ANNOUNCE_SIGNATURE: &str = "primia 2026-11 daemon model announcement v1";

/// "Every member": the recipient field of a round message for all.
const TO_ALL: u16 = u16::MAX;

const TAG_ROUND: u8 = 1;
const TAG_ANNOUNCE: u8 = 2;
const TAG_LATEST: u8 = 3;
const TAG_MODEL: u8 = 4;

const RESP_ACK: u8 = 0x80;
const RESP_LATEST: u8 = 0x81;
const RESP_MODEL: u8 = 0x82;
const RESP_NOT_FOUND: u8 = 0x83;
const RESP_REFUSED: u8 = 0x84;

/// Longest reason in a refusal, in bytes.
pub const MAX_REFUSAL_BYTES: usize = 256;

/// What was wrong with a driver message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its fixed part.
    #[error("driver message of {len} bytes is too short for a {what}")]
    Truncated {
        /// What it claimed to be.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A version this build does not speak.
    #[error("driver message version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    /// An unknown message tag.
    #[error("unknown driver message tag {0:#04x}")]
    Tag(u8),
    /// Bytes after a fixed-size message.
    #[error("{count} trailing bytes after a {what}")]
    Trailing {
        /// What it was.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A field that cannot hold this value.
    #[error("invalid {field} in a {what}")]
    Field {
        /// What it was.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// A protocol envelope with the driver's routing frame.
///
/// Layout: `VERSION | TAG_ROUND | round u64 LE | base [32] | to u16 LE |
/// envelope...` where `to` is a member id or `0xffff` for every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundFrame<'a> {
    /// The round the envelope belongs to (the protocol checks it again).
    pub round: u64,
    /// The model the sender starts the round from.
    pub base: ModelHash,
    /// The recipient; `None` for every member.
    pub to: Option<MemberId>,
    /// The protocol's signed envelope.
    pub envelope: &'a [u8],
}

const ROUND_HEADER: usize = 2 + 8 + 32 + 2;

impl RoundFrame<'_> {
    /// The framed bytes (one copy of the envelope).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROUND_HEADER + self.envelope.len());
        out.extend_from_slice(&[VERSION, TAG_ROUND]);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.base.0);
        out.extend_from_slice(&self.to.map_or(TO_ALL, |m| m.0).to_le_bytes());
        out.extend_from_slice(self.envelope);
        out
    }
}

/// A member's signed statement that it holds a model: the model of `round`
/// with hash `hash`, of `parameters` parameters, made at `created_unix_ms`.
///
/// Layout: `VERSION | TAG_ANNOUNCE | author u16 LE | round u64 LE |
/// hash [32] | parameters u64 LE | created_unix_ms u64 LE | signature [64]`.
/// The signature covers the roster digest and every field before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// Who holds the model and signed this.
    pub author: MemberId,
    /// The round that made the model (0: the initial model).
    pub round: u64,
    /// The model's blake3 hash.
    pub hash: ModelHash,
    /// Number of parameters.
    pub parameters: u64,
    /// When the model was made, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Ed25519 signature by `author` under [`ANNOUNCE_SIGNATURE`].
    pub signature: [u8; 64],
}

const ANNOUNCE_BYTES: usize = 2 + 2 + 8 + 32 + 8 + 8 + 64;

impl Announcement {
    /// Signs an announcement by `author`.
    pub fn sign(
        key: &IdentityKey,
        roster: &RosterDigest,
        author: MemberId,
        round: u64,
        hash: ModelHash,
        parameters: u64,
        created_unix_ms: u64,
    ) -> Self {
        let mut a = Self {
            author,
            round,
            hash,
            parameters,
            created_unix_ms,
            signature: [0; 64],
        };
        a.signature = key
            .sign(ANNOUNCE_SIGNATURE, &a.statement(roster))
            .to_bytes();
        a
    }

    /// What the signature covers.
    fn statement(&self, roster: &RosterDigest) -> Vec<u8> {
        let mut s = Vec::with_capacity(32 + ANNOUNCE_BYTES);
        s.extend_from_slice(&roster.0);
        s.extend_from_slice(&self.encode()[2..ANNOUNCE_BYTES - 64]);
        s
    }

    /// Checks the signature against the author's identity.
    pub fn verify(&self, roster: &RosterDigest, author: &PublicIdentity) -> bool {
        author
            .verify(
                ANNOUNCE_SIGNATURE,
                &self.statement(roster),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }

    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCE_BYTES);
        out.extend_from_slice(&[VERSION, TAG_ANNOUNCE]);
        out.extend_from_slice(&self.author.0.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.parameters.to_le_bytes());
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    fn decode_body(bytes: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "model announcement";
        let mut r = Reader::new(bytes, WHAT);
        let a = Self {
            author: MemberId(r.u16()?),
            round: r.u64()?,
            hash: ModelHash(r.array()?),
            parameters: r.u64()?,
            created_unix_ms: r.u64()?,
            signature: r.array()?,
        };
        r.finish()?;
        Ok(a)
    }
}

/// A gossip message of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gossip<'a> {
    /// A protocol control message.
    Round(RoundFrame<'a>),
    /// A member holds a new model.
    Announce(Announcement),
}

/// A request between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// A bulk protocol message (a masked input, an outcome).
    Round(RoundFrame<'a>),
    /// "What is your latest model?"; layout `VERSION | TAG_LATEST`.
    Latest,
    /// "Send me this model"; layout `VERSION | TAG_MODEL | hash [32]`.
    Model(ModelHash),
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Received (a round message); layout `VERSION | RESP_ACK`.
    Ack,
    /// The responder's latest model; layout `VERSION | RESP_LATEST |`
    /// announcement without its first two bytes.
    Latest(Announcement),
    /// The model blob asked for; layout `VERSION | RESP_MODEL | blob...`.
    Model(&'a [u8]),
    /// The responder does not hold that model.
    NotFound,
    /// The request was refused; layout `VERSION | RESP_REFUSED | reason`.
    Refused(&'a str),
}

/// Decodes a gossip message.
pub fn decode_gossip(bytes: &[u8]) -> Result<Gossip<'_>, WireError> {
    match header(bytes, "gossip message")? {
        TAG_ROUND => decode_round(bytes).map(Gossip::Round),
        TAG_ANNOUNCE => Announcement::decode_body(&bytes[2..]).map(Gossip::Announce),
        tag => Err(WireError::Tag(tag)),
    }
}

/// Encodes a gossip message.
pub fn encode_gossip(g: &Gossip<'_>) -> Vec<u8> {
    match g {
        Gossip::Round(f) => f.encode(),
        Gossip::Announce(a) => a.encode(),
    }
}

/// Decodes a request.
pub fn decode_request(bytes: &[u8]) -> Result<Request<'_>, WireError> {
    match header(bytes, "request")? {
        TAG_ROUND => decode_round(bytes).map(Request::Round),
        TAG_LATEST => {
            exact(bytes, 2, "latest-model request")?;
            Ok(Request::Latest)
        }
        TAG_MODEL => {
            let mut r = Reader::new(&bytes[2..], "model request");
            let hash = ModelHash(r.array()?);
            r.finish()?;
            Ok(Request::Model(hash))
        }
        tag => Err(WireError::Tag(tag)),
    }
}

/// Encodes a request.
pub fn encode_request(req: &Request<'_>) -> Vec<u8> {
    match req {
        Request::Round(f) => f.encode(),
        Request::Latest => vec![VERSION, TAG_LATEST],
        Request::Model(hash) => {
            let mut out = vec![VERSION, TAG_MODEL];
            out.extend_from_slice(&hash.0);
            out
        }
    }
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response<'_>, WireError> {
    match header(bytes, "response")? {
        RESP_ACK => {
            exact(bytes, 2, "acknowledgement")?;
            Ok(Response::Ack)
        }
        RESP_LATEST => Announcement::decode_body(&bytes[2..]).map(Response::Latest),
        RESP_MODEL => Ok(Response::Model(&bytes[2..])),
        RESP_NOT_FOUND => {
            exact(bytes, 2, "not-found response")?;
            Ok(Response::NotFound)
        }
        RESP_REFUSED => {
            let reason = &bytes[2..];
            if reason.len() > MAX_REFUSAL_BYTES {
                return Err(WireError::Field {
                    what: "refusal",
                    field: "reason",
                });
            }
            std::str::from_utf8(reason)
                .map(Response::Refused)
                .map_err(|_| WireError::Field {
                    what: "refusal",
                    field: "reason",
                })
        }
        tag => Err(WireError::Tag(tag)),
    }
}

/// Encodes a response. A refusal's reason is cut to [`MAX_REFUSAL_BYTES`]
/// on a character boundary.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    match resp {
        Response::Ack => vec![VERSION, RESP_ACK],
        Response::Latest(a) => {
            let mut out = a.encode();
            out[1] = RESP_LATEST;
            out
        }
        Response::Model(blob) => {
            let mut out = Vec::with_capacity(2 + blob.len());
            out.extend_from_slice(&[VERSION, RESP_MODEL]);
            out.extend_from_slice(blob);
            out
        }
        Response::NotFound => vec![VERSION, RESP_NOT_FOUND],
        Response::Refused(reason) => {
            let mut end = reason.len().min(MAX_REFUSAL_BYTES);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = vec![VERSION, RESP_REFUSED];
            out.extend_from_slice(&reason.as_bytes()[..end]);
            out
        }
    }
}

fn header(bytes: &[u8], what: &'static str) -> Result<u8, WireError> {
    match bytes {
        [VERSION, tag, ..] => Ok(*tag),
        [v, _, ..] => Err(WireError::Version(*v)),
        _ => Err(WireError::Truncated {
            what,
            len: bytes.len(),
        }),
    }
}

fn exact(bytes: &[u8], len: usize, what: &'static str) -> Result<(), WireError> {
    if bytes.len() > len {
        return Err(WireError::Trailing {
            what,
            count: bytes.len() - len,
        });
    }
    Ok(())
}

fn decode_round(bytes: &[u8]) -> Result<RoundFrame<'_>, WireError> {
    const WHAT: &str = "round message";
    let mut r = Reader::new(&bytes[2..], WHAT);
    let round = r.u64()?;
    let base = ModelHash(r.array()?);
    let to = match r.u16()? {
        TO_ALL => None,
        id => Some(MemberId(id)),
    };
    Ok(RoundFrame {
        round,
        base,
        to,
        envelope: r.rest(),
    })
}

/// Reads little-endian fields off a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    total: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            bytes,
            total: bytes.len() + 2,
            what,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        if self.bytes.len() < N {
            return Err(WireError::Truncated {
                what: self.what,
                len: self.total,
            });
        }
        let (head, tail) = self.bytes.split_at(N);
        self.bytes = tail;
        Ok(head.try_into().expect("split at N"))
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }

    fn finish(self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                what: self.what,
                count: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use primia_crypto::Secret32;

    fn hash(b: u8) -> ModelHash {
        ModelHash([b; 32])
    }

    #[test]
    fn round_frames_roundtrip_and_pin_their_layout() {
        let f = RoundFrame {
            round: 7,
            base: hash(0xab),
            to: Some(MemberId(3)),
            envelope: b"env",
        };
        let bytes = f.encode();
        let mut expected = vec![1, 1, 7, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[3, 0]);
        expected.extend_from_slice(b"env");
        assert_eq!(bytes, expected);
        assert_eq!(decode_gossip(&bytes).unwrap(), Gossip::Round(f));
        assert_eq!(decode_request(&bytes).unwrap(), Request::Round(f));
        let all = RoundFrame { to: None, ..f };
        assert_eq!(decode_gossip(&all.encode()).unwrap(), Gossip::Round(all));
    }

    #[test]
    fn announcements_sign_verify_and_roundtrip() {
        let key = IdentityKey::from_seed(&Secret32::from_bytes([5; 32]));
        let other = IdentityKey::from_seed(&Secret32::from_bytes([6; 32]));
        let roster = RosterDigest([9; 32]);
        let a = Announcement::sign(&key, &roster, MemberId(2), 4, hash(1), 10, 1234);
        assert!(a.verify(&roster, &key.public()));
        assert!(!a.verify(&roster, &other.public()));
        assert!(!a.verify(&RosterDigest([8; 32]), &key.public()));
        let forged = Announcement { round: 5, ..a };
        assert!(!forged.verify(&roster, &key.public()));
        let bytes = a.encode();
        assert_eq!(bytes.len(), ANNOUNCE_BYTES);
        assert_eq!(decode_gossip(&bytes).unwrap(), Gossip::Announce(a));
        let resp = encode_response(&Response::Latest(a));
        assert_eq!(decode_response(&resp).unwrap(), Response::Latest(a));
    }

    #[test]
    fn requests_and_responses_roundtrip() {
        for req in [Request::Latest, Request::Model(hash(3))] {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
        for resp in [
            Response::Ack,
            Response::NotFound,
            Response::Model(b"blob"),
            Response::Refused("no"),
        ] {
            assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        }
        let long = "é".repeat(400);
        match decode_response(&encode_response(&Response::Refused(&long))).unwrap() {
            Response::Refused(r) => assert!(r.len() <= MAX_REFUSAL_BYTES && !r.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(matches!(
            decode_gossip(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(decode_gossip(&[2, 1]), Err(WireError::Version(2))));
        assert!(matches!(decode_gossip(&[1, 9]), Err(WireError::Tag(9))));
        assert!(matches!(
            decode_gossip(&[1, 1, 0]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            decode_request(&[1, 3, 0]),
            Err(WireError::Trailing { .. })
        ));
        assert!(matches!(
            decode_request(&[1, 4, 0]),
            Err(WireError::Truncated { .. })
        ));
        let mut a = Announcement::sign(
            &IdentityKey::from_seed(&Secret32::from_bytes([1; 32])),
            &RosterDigest([0; 32]),
            MemberId(0),
            1,
            hash(0),
            1,
            1,
        )
        .encode();
        a.push(0);
        assert!(matches!(decode_gossip(&a), Err(WireError::Trailing { .. })));
        assert!(decode_response(&[1, RESP_REFUSED, 0xff]).is_err());
        // Every prefix of every valid message decodes or errs, never panics.
        let frame = RoundFrame {
            round: 1,
            base: hash(1),
            to: None,
            envelope: b"x",
        }
        .encode();
        for msg in [frame, a] {
            for end in 0..msg.len() {
                let _ = decode_gossip(&msg[..end]);
                let _ = decode_request(&msg[..end]);
                let _ = decode_response(&msg[..end]);
            }
        }
    }
}
