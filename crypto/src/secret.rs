//! `Secret32`: the one container for 32-byte secrets (seeds, derived keys).

use core::fmt;

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret: zeroized on drop, never printed, not `Clone`.
///
/// Deliberately not `Clone`: copies of a secret are the ones that escape
/// zeroization. A caller that truly needs a second copy writes
/// `Secret32::from_bytes(*s.expose())` and so makes the copy visible.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Takes ownership of `bytes` (the caller's copy is its own to wipe).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Draws 32 uniformly random bytes from `rng`.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut s = Self([0u8; 32]);
        rng.fill_bytes(&mut s.0);
        s
    }

    /// The secret bytes. Callers must not log or persist them except where the
    /// protocol says so (the identity key file).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}
