//! The error type of the crate: one enum, never carrying secret bytes.

/// Everything that can go wrong in this crate.
///
/// Variants carry only public context (indices, lengths, counts); no variant
/// ever holds key material, a share value or an update coordinate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Bytes that should hold an ed25519 public key do not.
    #[error("invalid ed25519 public key: {reason}")]
    InvalidPublicKey {
        /// What was wrong with the bytes.
        reason: &'static str,
    },
    /// An ed25519 signature did not verify (strict verification).
    #[error("signature does not verify under context {context:?}")]
    BadSignature {
        /// The signing context the signature was checked under.
        context: String,
    },
    /// The x25519 result was all zero: the peer's public key has low order.
    #[error("key agreement is not contributory: peer public key has low order")]
    NonContributory,
    /// Threshold or share count outside `1 <= threshold <= n <= MAX_SHARES`.
    #[error(
        "invalid sharing parameters: threshold {threshold} of {n} shares (need 1 <= threshold <= n <= {max})"
    )]
    InvalidThreshold {
        /// Requested threshold.
        threshold: u16,
        /// Requested number of shares.
        n: u16,
        /// [`crate::MAX_SHARES`].
        max: u16,
    },
    /// Fewer shares than the threshold were supplied.
    #[error("too few shares: got {got}, need {need}")]
    TooFewShares {
        /// Shares supplied.
        got: usize,
        /// Threshold.
        need: usize,
    },
    /// Two shares (or two interpolation points) have the same index.
    #[error("duplicate share index {index}")]
    DuplicateShareIndex {
        /// The repeated index.
        index: u16,
    },
    /// Share index 0 would be the secret itself.
    #[error("share index 0 is not allowed (it is the secret's position)")]
    ZeroShareIndex,
    /// An encoded share has the wrong length.
    #[error("encoded share has {got} bytes, expected {expected}")]
    ShareLength {
        /// Bytes given.
        got: usize,
        /// [`crate::Share::ENCODED_LEN`].
        expected: usize,
    },
    /// An encoded share holds a scalar that is not reduced mod the group order.
    #[error("share with index {index} holds a non-canonical scalar")]
    NonCanonicalShare {
        /// Index of the offending share.
        index: u16,
    },
    /// Shares given to an [`crate::Interpolator`] do not match its index set.
    #[error("share at position {position} has index {got}, interpolator expects {expected}")]
    ShareIndexMismatch {
        /// Position in the slice.
        position: usize,
        /// Index the interpolator was built for at that position.
        expected: u16,
        /// Index of the share found there.
        got: u16,
    },
    /// An [`crate::Interpolator`] got a different number of shares than indices.
    #[error("interpolator built for {expected} shares, got {got}")]
    ShareCountMismatch {
        /// Shares supplied.
        got: usize,
        /// Indices the interpolator was built for.
        expected: usize,
    },
    /// An [`crate::Interpolator`] was built for an empty index set.
    #[error("interpolation needs at least one index")]
    EmptyIndexSet,
    /// Interpolation produced a value that no honest split can produce.
    #[error("shares are inconsistent: the interpolated value is not a 32-byte secret")]
    InconsistentShares,
    /// AEAD decryption failed.
    #[error("decryption failed: wrong key, wrong associated data or tampered ciphertext")]
    Decrypt,
    /// An update coordinate was NaN or infinite.
    #[error("update coordinate {index} is not finite")]
    NonFinite {
        /// Position of the coordinate.
        index: usize,
    },
    /// A member claims more training examples than the fixed-point bound allows.
    #[error("{n} training examples exceed the maximum of {max}")]
    TooManyExamples {
        /// Claimed number.
        n: u32,
        /// [`crate::fixed::MAX_EXAMPLES`].
        max: u32,
    },
    /// A ring vector to decode was empty (it must end with the example count).
    #[error("summed vector is empty: it must end with the example count")]
    EmptySum,
    /// The example count of a sum exceeds `MAX_MEMBERS * MAX_EXAMPLES`.
    #[error("summed example count {total} exceeds the bound {max}: the sum is corrupt")]
    TotalOutOfRange {
        /// Decoded count.
        total: u64,
        /// `MAX_MEMBERS * MAX_EXAMPLES`.
        max: u64,
    },
    /// A summed coordinate exceeds what the clipping bound allows.
    #[error("summed coordinate {index} exceeds total_examples * CLIP: the sum is corrupt")]
    SumOutOfRange {
        /// Position of the coordinate.
        index: usize,
    },
}

/// Result with [`CryptoError`].
pub type Result<T> = core::result::Result<T, CryptoError>;
