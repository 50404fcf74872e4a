//! Time as a value: the protocol never reads a clock, the driver passes `now`.

use core::ops::Add;
use core::time::Duration;

/// A point in time, in milliseconds since an epoch the driver chooses (a
/// daemon uses a monotonic clock, the simulator its virtual clock). Only
/// differences matter to the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at the end of time rather than wrapping.
    pub const fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, d: Duration) -> Instant {
        self.plus_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
