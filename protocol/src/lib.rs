//! Wire messages, roster and the sans-IO secure-aggregation round of primia.
//!
//! # Central types and how they fit
//!
//! - [`Roster`]: the consortium (id, members sorted by identity, threshold t).
//!   A member is named by its [`MemberId`], its position in that order;
//!   [`Roster::leader`] is the leader rule of each (round, attempt).
//! - [`Round`]: one member's state machine for one round, in both roles. The
//!   driver feeds it network bytes ([`Round::handle_message`]), time
//!   ([`Round::handle_timeout`]) and the member's fixed-point input
//!   ([`Round::submit_input`]), and drains [`Output`]s: messages to send
//!   (already encoded and signed), [`Output::PersistReveal`] records to make
//!   durable before going on, and [`Event`]s, ending in
//!   [`Event::Finished`] with the [`Outcome`] (the sum of the survivors'
//!   inputs and who they are). Time is an [`Instant`] value and randomness a
//!   `rand_core::CryptoRng` passed in: no clock, no IO.
//! - [`wire`]: the signed, versioned envelope and every [`wire::Payload`];
//!   [`wire::decode`], or [`wire::decode_in_place`] which leaves a bulk
//!   message's vector in the envelope, is the only way bytes from the
//!   network become a message.
//!
//! An attempt runs: advertise keys -> share keys -> masked input ->
//! consistency check -> unmask -> outcome, with all messages going through
//! the attempt's leader, which only ever sees masked inputs. A member that
//! cannot reach the leader moves to the next attempt (next leader, fresh
//! keys); [`RevealRecord`] keeps a member from revealing both shares of
//! anyone in one attempt, across restarts.
//!
//! With the `sim` feature, the `sim` module runs whole consortia over a
//! virtual clock with faults, for tests and benchmarks.
//!
//! `cargo bench -p primia-protocol --bench secagg` measures a whole round:
//! each member's compute time and the leader's aggregation against the
//! floor set by mask expansion (see `benches/secagg.rs`).
#![forbid(unsafe_code)]

mod error;
pub mod reveal;
pub mod roster;
mod round;
#[cfg(feature = "sim")]
pub mod sim;
mod time;
pub mod wire;

pub use error::ProtocolError;
pub use reveal::{RevealConflict, RevealEntry, RevealRecord, ShareKind};
pub use roster::{ConsortiumId, MemberId, MemberInfo, Roster, RosterDigest, Threshold};
pub use round::{
    AttemptFailure, Event, Outcome, Outgoing, Output, RejectReason, Round, RoundConfig, WireBytes,
};
pub use time::Instant;
pub use wire::{MessageKind, Phase};
