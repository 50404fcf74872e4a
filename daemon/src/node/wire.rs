//! The driver's own messages between members: the frame around a protocol
//! envelope (round, base model, recipient), signed model announcements, and
//! the requests and responses of model dissemination.
//!
//! Round messages carry the protocol's own signed envelope untouched; the
//! frame only adds what the driver needs to route it and to make sure that
//! sender and receiver start the round from the same model. Everything else
//! is small and fixed-size except a model blob.
//!
//! # Layout
//!
//! Every message is `body | tag u8 | VERSION u8`: what it is comes *last*,
//! after the fixed fields, so that a large payload (a protocol envelope, a
//! model blob) is a prefix of the bytes received. The receiver keeps it by
//! truncating the buffer, without copying megabytes. Integers are little
//! endian. The layouts are written next to each type and pinned by tests,
//! because they are a contract with other hospitals' daemons.
//!
//! Decoding never panics and never allocates: every length is the input's
//! own.

use primia_crypto::{IdentityKey, PublicIdentity, Signature};
use primia_protocol::{MemberId, RosterDigest};

use crate::store::ModelHash;

/// Version byte that ends every driver message.
pub const VERSION: u8 = 1;

/// Generation of the round exchange between daemons, the first word of
/// every member's settings line (`round-protocol=N`). Members compare
/// settings lines on every new connection, so daemons that would misread
/// each other's round messages refuse each other, showing both lines,
/// instead of failing rounds silently. Generation 3: round messages are
/// one-way messages on each member's message stream
/// ([`crate::net::MESSAGE_PROTOCOL`], decoded by [`decode_message`]);
/// generation 2 sent them as requests and had a leader answer with its
/// next message, which generation 3 neither sends nor reads.
pub const ROUND_PROTOCOL: u32 = 3;

/// Signing context of model announcements; distinct from every protocol
/// context, so an announcement can never pass for a protocol message.
pub const ANNOUNCE_SIGNATURE: &str = "primia 2026-11 daemon model announcement v1";

/// "Every member": the recipient field of a round message for all.
const TO_ALL: u16 = u16::MAX;

const TAG_ROUND: u8 = 1;
const TAG_ANNOUNCE: u8 = 2;
const TAG_LATEST: u8 = 3;
const TAG_MODEL: u8 = 4;

// 0x80 (an acknowledgement) and 0x85 (a round message as an answer) were
// generation 2's and are not reused.
const RESP_LATEST: u8 = 0x81;
const RESP_MODEL: u8 = 0x82;
const RESP_NOT_FOUND: u8 = 0x83;
const RESP_REFUSED: u8 = 0x84;

/// Longest reason in a refusal, in bytes: room for a member's settings line.
pub const MAX_REFUSAL_BYTES: usize = 512;

/// Longest settings line in a latest-model request, in bytes.
pub const MAX_SETTINGS_BYTES: usize = 512;

/// How a refusal because of different settings starts; the responder's own
/// settings line follows.
pub const SETTINGS_DIFFER: &str = "settings differ: ";

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
/// Layout: `envelope | round u64 | base [32] | to u16 | TAG_ROUND | VERSION`
/// where `to` is a member id or `0xffff` for every member.
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

/// Bytes after the envelope of a round frame.
pub const ROUND_TRAILER_BYTES: usize = 8 + 32 + 2 + 2;

impl RoundFrame<'_> {
    /// The framed bytes (one copy of the envelope).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.envelope.len() + ROUND_TRAILER_BYTES);
        out.extend_from_slice(self.envelope);
        out.extend_from_slice(&self.trailer());
        out
    }

    /// The bytes after the envelope: the frame is `envelope ++ trailer`,
    /// so a transport that sends parts can send the envelope as it is.
    pub fn trailer(&self) -> [u8; ROUND_TRAILER_BYTES] {
        let mut out = [0u8; ROUND_TRAILER_BYTES];
        out[..8].copy_from_slice(&self.round.to_le_bytes());
        out[8..40].copy_from_slice(&self.base.0);
        out[40..42].copy_from_slice(&self.to.map_or(TO_ALL, |m| m.0).to_le_bytes());
        out[42] = TAG_ROUND;
        out[43] = VERSION;
        out
    }
}

/// A member's signed statement that it holds a model: the model of `round`
/// with hash `hash`, of `parameters` parameters, made at `created_unix_ms`.
///
/// Layout: `author u16 | round u64 | hash [32] | parameters u64 |
/// created_unix_ms u64 | signature [64] | TAG_ANNOUNCE | VERSION`. The
/// signature covers the roster digest and every field before it.
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

/// The fields of an announcement before its signature.
const ANNOUNCE_SIGNED_BYTES: usize = 2 + 8 + 32 + 8 + 8;
const ANNOUNCE_BODY_BYTES: usize = ANNOUNCE_SIGNED_BYTES + 64;

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
        let mut s = Vec::with_capacity(32 + ANNOUNCE_BODY_BYTES);
        s.extend_from_slice(&roster.0);
        self.put_body(&mut s);
        s.truncate(32 + ANNOUNCE_SIGNED_BYTES);
        s
    }

    fn put_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.author.0.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.parameters.to_le_bytes());
        out.extend_from_slice(&self.created_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.signature);
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

    /// The encoded bytes, as gossip.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCE_BODY_BYTES + 2);
        self.put_body(&mut out);
        out.extend_from_slice(&[TAG_ANNOUNCE, VERSION]);
        out
    }

    fn decode_body(body: &[u8], what: &'static str) -> Result<Self, WireError> {
        let mut r = Reader::new(body, what);
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
pub enum Gossip {
    /// A member holds a new model.
    Announce(Announcement),
}

/// A request between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// "What is your latest model? These are my settings"; layout
    /// `settings (UTF-8, at most MAX_SETTINGS_BYTES) | TAG_LATEST | VERSION`.
    /// The answer is a refusal starting with [`SETTINGS_DIFFER`] when the
    /// responder's settings line differs.
    Latest(&'a str),
    /// "Send me this model"; layout `hash [32] | TAG_MODEL | VERSION`.
    Model(ModelHash),
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// The responder's latest model; layout: an announcement's body, then
    /// `RESP_LATEST | VERSION`.
    Latest(Announcement),
    /// The model blob asked for; layout `blob | RESP_MODEL | VERSION`.
    Model(&'a [u8]),
    /// The responder does not hold that model; `RESP_NOT_FOUND | VERSION`.
    NotFound,
    /// The request was refused; layout `reason | RESP_REFUSED | VERSION`.
    Refused(&'a str),
}

/// Bytes after a model blob in a [`Response::Model`]: truncate a response
/// by this much to keep the blob.
pub const MODEL_TRAILER_BYTES: usize = 2;

/// Decodes a message from a member's message stream: a round frame.
pub fn decode_message(bytes: &[u8]) -> Result<RoundFrame<'_>, WireError> {
    let (body, tag) = split(bytes, "message")?;
    match tag {
        TAG_ROUND => decode_round(body),
        tag => Err(WireError::Tag(tag)),
    }
}

/// Decodes a gossip message.
pub fn decode_gossip(bytes: &[u8]) -> Result<Gossip, WireError> {
    let (body, tag) = split(bytes, "gossip message")?;
    match tag {
        TAG_ANNOUNCE => Announcement::decode_body(body, "model announcement").map(Gossip::Announce),
        tag => Err(WireError::Tag(tag)),
    }
}

/// Encodes a gossip message.
pub fn encode_gossip(g: &Gossip) -> Vec<u8> {
    match g {
        Gossip::Announce(a) => a.encode(),
    }
}

/// Decodes a request.
pub fn decode_request(bytes: &[u8]) -> Result<Request<'_>, WireError> {
    let (body, tag) = split(bytes, "request")?;
    match tag {
        TAG_LATEST => {
            let bad = WireError::Field {
                what: "latest-model request",
                field: "settings",
            };
            if body.len() > MAX_SETTINGS_BYTES {
                return Err(bad);
            }
            std::str::from_utf8(body)
                .map(Request::Latest)
                .map_err(|_| bad)
        }
        TAG_MODEL => {
            let mut r = Reader::new(body, "model request");
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
        Request::Latest(settings) => {
            let mut end = settings.len().min(MAX_SETTINGS_BYTES);
            while !settings.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = settings.as_bytes()[..end].to_vec();
            out.extend_from_slice(&[TAG_LATEST, VERSION]);
            out
        }
        Request::Model(hash) => {
            let mut out = hash.0.to_vec();
            out.extend_from_slice(&[TAG_MODEL, VERSION]);
            out
        }
    }
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response<'_>, WireError> {
    let (body, tag) = split(bytes, "response")?;
    match tag {
        RESP_LATEST => Announcement::decode_body(body, "latest-model answer").map(Response::Latest),
        RESP_MODEL => Ok(Response::Model(body)),
        RESP_NOT_FOUND => {
            Reader::new(body, "not-found answer").finish()?;
            Ok(Response::NotFound)
        }
        RESP_REFUSED => {
            let bad = WireError::Field {
                what: "refusal",
                field: "reason",
            };
            if body.len() > MAX_REFUSAL_BYTES {
                return Err(bad);
            }
            std::str::from_utf8(body)
                .map(Response::Refused)
                .map_err(|_| bad)
        }
        tag => Err(WireError::Tag(tag)),
    }
}

/// Makes a model blob a [`Response::Model`] in place: the trailer goes
/// after the blob in its own buffer, which is not copied (nor moved, if
/// it has [`MODEL_TRAILER_BYTES`] to spare), where [`encode_response`]
/// would copy the whole model.
pub fn model_response(mut blob: Vec<u8>) -> Vec<u8> {
    blob.extend_from_slice(&[RESP_MODEL, VERSION]);
    blob
}

/// Encodes a response. A refusal's reason is cut to [`MAX_REFUSAL_BYTES`]
/// on a character boundary.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    let (mut out, tag) = match resp {
        Response::Latest(a) => {
            let mut out = Vec::with_capacity(ANNOUNCE_BODY_BYTES + 2);
            a.put_body(&mut out);
            (out, RESP_LATEST)
        }
        Response::Model(blob) => {
            let mut out = Vec::with_capacity(blob.len() + MODEL_TRAILER_BYTES);
            out.extend_from_slice(blob);
            return model_response(out);
        }
        Response::NotFound => (Vec::with_capacity(2), RESP_NOT_FOUND),
        Response::Refused(reason) => {
            let mut end = reason.len().min(MAX_REFUSAL_BYTES);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            (reason.as_bytes()[..end].to_vec(), RESP_REFUSED)
        }
    };
    out.extend_from_slice(&[tag, VERSION]);
    out
}

/// Splits off the trailing tag and version.
fn split<'a>(bytes: &'a [u8], what: &'static str) -> Result<(&'a [u8], u8), WireError> {
    match bytes {
        [body @ .., tag, VERSION] => Ok((body, *tag)),
        [.., v] => Err(WireError::Version(*v)),
        [] => Err(WireError::Truncated { what, len: 0 }),
    }
}

fn decode_round(body: &[u8]) -> Result<RoundFrame<'_>, WireError> {
    const FIXED: usize = ROUND_TRAILER_BYTES - 2;
    if body.len() < FIXED {
        return Err(WireError::Truncated {
            what: "round message",
            len: body.len() + 2,
        });
    }
    let (envelope, fixed) = body.split_at(body.len() - FIXED);
    let mut r = Reader::new(fixed, "round message");
    let round = r.u64()?;
    let base = ModelHash(r.array()?);
    let to = match r.u16()? {
        TO_ALL => None,
        id => Some(MemberId(id)),
    };
    r.finish()?;
    Ok(RoundFrame {
        round,
        base,
        to,
        envelope,
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

    fn announcement() -> Announcement {
        let key = IdentityKey::from_seed(&Secret32::from_bytes([5; 32]));
        Announcement::sign(
            &key,
            &RosterDigest([9; 32]),
            MemberId(2),
            4,
            hash(1),
            10,
            1234,
        )
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
        let mut expected = b"env".to_vec();
        expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[3, 0, TAG_ROUND, VERSION]);
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 3 + ROUND_TRAILER_BYTES);
        assert_eq!(decode_message(&bytes).unwrap(), f);
        let all = RoundFrame {
            to: None,
            envelope: b"",
            ..f
        };
        assert_eq!(decode_message(&all.encode()).unwrap(), all);
        // Only on a message stream: neither gossip nor a request nor an
        // answer reads as a round frame.
        for wrong in [
            decode_gossip(&bytes).err(),
            decode_request(&bytes).err(),
            decode_response(&bytes).err(),
        ] {
            assert!(matches!(wrong, Some(WireError::Tag(TAG_ROUND))));
        }
        let latest = encode_request(&Request::Model(hash(1)));
        assert!(matches!(
            decode_message(&latest),
            Err(WireError::Tag(TAG_MODEL))
        ));
    }

    #[test]
    fn announcements_sign_verify_roundtrip_and_pin_their_layout() {
        let key = IdentityKey::from_seed(&Secret32::from_bytes([5; 32]));
        let other = IdentityKey::from_seed(&Secret32::from_bytes([6; 32]));
        let roster = RosterDigest([9; 32]);
        let a = announcement();
        assert!(a.verify(&roster, &key.public()));
        assert!(!a.verify(&roster, &other.public()));
        assert!(!a.verify(&RosterDigest([8; 32]), &key.public()));
        for forged in [
            Announcement { round: 5, ..a },
            Announcement { hash: hash(2), ..a },
            Announcement {
                author: MemberId(1),
                ..a
            },
            Announcement {
                parameters: 11,
                ..a
            },
            Announcement {
                created_unix_ms: 1,
                ..a
            },
        ] {
            assert!(!forged.verify(&roster, &key.public()));
        }
        let bytes = a.encode();
        let mut expected = vec![2, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&10u64.to_le_bytes());
        expected.extend_from_slice(&1234u64.to_le_bytes());
        expected.extend_from_slice(&a.signature);
        expected.extend_from_slice(&[TAG_ANNOUNCE, VERSION]);
        assert_eq!(bytes, expected);
        assert_eq!(decode_gossip(&bytes).unwrap(), Gossip::Announce(a));
        let resp = encode_response(&Response::Latest(a));
        assert_eq!(resp[..resp.len() - 2], bytes[..bytes.len() - 2]);
        assert_eq!(decode_response(&resp).unwrap(), Response::Latest(a));
    }

    #[test]
    fn requests_and_responses_roundtrip() {
        assert_eq!(encode_request(&Request::Latest("")), [TAG_LATEST, VERSION]);
        assert_eq!(
            encode_request(&Request::Latest("a")),
            [b'a', TAG_LATEST, VERSION]
        );
        for req in [
            Request::Latest(""),
            Request::Latest("cnn steps=3"),
            Request::Model(hash(3)),
        ] {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
        for resp in [
            Response::NotFound,
            Response::Model(b"blob"),
            Response::Model(b""),
            Response::Refused("no"),
        ] {
            assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        }
        // The blob is a prefix: truncating keeps it.
        let mut bytes = encode_response(&Response::Model(b"blob"));
        bytes.truncate(bytes.len() - MODEL_TRAILER_BYTES);
        assert_eq!(bytes, b"blob");
        // Made in place, it is the same answer.
        assert_eq!(
            model_response(b"blob".to_vec()),
            encode_response(&Response::Model(b"blob"))
        );
        assert_eq!(
            decode_response(&model_response(b"blob".to_vec())).unwrap(),
            Response::Model(b"blob")
        );
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
        assert!(matches!(
            decode_gossip(&[1]),
            Err(WireError::Version(1)) | Err(WireError::Truncated { .. })
        ));
        assert!(matches!(decode_gossip(&[1, 2]), Err(WireError::Version(2))));
        assert!(matches!(
            decode_gossip(&[9, VERSION]),
            Err(WireError::Tag(9))
        ));
        assert!(matches!(
            decode_message(&[0, TAG_ROUND, VERSION]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            decode_message(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            decode_request(&[0xff, TAG_LATEST, VERSION]),
            Err(WireError::Field { .. })
        ));
        let mut long = vec![b'a'; MAX_SETTINGS_BYTES + 1];
        long.extend_from_slice(&[TAG_LATEST, VERSION]);
        assert!(decode_request(&long).is_err());
        assert!(matches!(
            decode_request(&[0, TAG_MODEL, VERSION]),
            Err(WireError::Truncated { .. })
        ));
        let mut a = vec![0];
        a.extend_from_slice(&announcement().encode());
        assert!(matches!(decode_gossip(&a), Err(WireError::Trailing { .. })));
        assert!(decode_response(&[0xff, RESP_REFUSED, VERSION]).is_err());
        // Every suffix and prefix of every valid message decodes or errs,
        // never panics.
        let frame = RoundFrame {
            round: 1,
            base: hash(1),
            to: None,
            envelope: b"x",
        }
        .encode();
        let latest = encode_response(&Response::Latest(announcement()));
        for msg in [frame, latest, announcement().encode()] {
            for cut in 0..msg.len() {
                for part in [&msg[..cut], &msg[cut..]] {
                    let _ = decode_message(part);
                    let _ = decode_gossip(part);
                    let _ = decode_request(part);
                    let _ = decode_response(part);
                }
            }
        }
    }
}
