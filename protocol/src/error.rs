//! The crate's error type: local misuse and bytes that are not a message.
//!
//! A peer's bad message never surfaces as this error from the round state
//! machine: [`crate::Round`] turns it into [`crate::Event::Rejected`]. This
//! type is what the standalone decoder returns, and what the constructors and
//! commands return when the caller misuses them.

use primia_crypto::CryptoError;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The encoded message is longer than the limit for its kind.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Length of the bytes given.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// Too short to hold a version byte and a signature.
    #[error("message of {len} bytes is too short to hold a version byte and a signature")]
    Truncated {
        /// Length of the bytes given.
        len: usize,
    },
    /// The first byte names a wire version this build does not speak.
    #[error("unsupported wire version {version}, this build speaks version {supported}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
        /// [`crate::wire::WIRE_VERSION`].
        supported: u8,
    },
    /// The body is not a postcard encoding of a message.
    #[error("malformed message body: {reason}")]
    Malformed {
        /// What postcard or a field check reported.
        reason: String,
    },
    /// Bytes left over after a complete body.
    #[error("{count} trailing bytes after the message body")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The signature does not verify under the claimed sender's identity.
    #[error("signature of member {sender} does not verify")]
    BadSignature {
        /// The sender named in the header.
        sender: u16,
    },
    /// A consortium id that is empty, too long or has characters outside
    /// `[A-Za-z0-9._-]`.
    #[error("invalid consortium id: {reason}")]
    InvalidConsortiumId {
        /// What was wrong.
        reason: &'static str,
    },
    /// A roster that breaks one of its rules (size, duplicates, threshold).
    #[error("invalid roster: {reason}")]
    InvalidRoster {
        /// What was wrong, naming the member where there is one.
        reason: String,
    },
    /// A round configuration outside its bounds.
    #[error("invalid round configuration: {reason}")]
    InvalidConfig {
        /// What was wrong.
        reason: String,
    },
    /// The local identity is not in the roster.
    #[error("identity {identity} is not a member of the roster")]
    NotAMember {
        /// Short hex of the public key.
        identity: String,
    },
    /// A submitted input has the wrong number of entries.
    #[error("input has {got} entries, the round expects {expected}")]
    InputLength {
        /// Entries given.
        got: usize,
        /// The round's vector length.
        expected: usize,
    },
    /// `submit_input` was called twice.
    #[error("an input was already submitted for this round")]
    InputAlreadySubmitted,
    /// A reveal record of another round was passed to `Round::resume`.
    #[error("reveal record is for round {got}, this round is {expected}")]
    RecordRoundMismatch {
        /// The record's round.
        got: u64,
        /// The round being resumed.
        expected: u64,
    },
    /// A primitive failed (for local misuse such as encoding an update with a
    /// NaN coordinate).
    #[error("cryptography: {0}")]
    Crypto(#[from] CryptoError),
}
