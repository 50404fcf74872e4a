//! The record of revealed shares that keeps a member from ever revealing both
//! shares of one member in one attempt, across crashes too.
//!
//! Revealing the share of b_v and the share of v's mask key in the same
//! attempt would let whoever gathers t of each strip every mask off v's
//! input. A member decides which kind to reveal from U3, so within one
//! process the rule holds by construction; the record makes it hold across
//! a crash: the round emits [`crate::Output::PersistReveal`] before the
//! corresponding send, the driver writes it durably before acting on any
//! later output, and a restarted [`crate::Round`] is given the record back.
//! The entry is made when the member signs U3, right after its signature:
//! the leader may only ask to unmask for the U3 the member signed, so the
//! reveal is decided then, and the write overlaps the leader's gathering of
//! signatures instead of delaying the reveal.
//! The round refuses any reveal the record forbids, and never joins afresh
//! an attempt the record shows it revealed in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::roster::MemberId;

/// Which secret of a member a share belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum ShareKind {
    /// A share of the self-mask seed b_v (revealed when v is in U3).
    SelfMask,
    /// A share of v's mask secret key (revealed when v dropped: in U2 \ U3).
    MaskKey,
}

/// One reveal, as the round asks the driver to persist it: in attempt
/// `attempt` of round `round`, this member revealed these shares.
///
/// `Serialize` so the driver can store it as it likes (the daemon keeps it
/// in its database next to the round journal).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RevealEntry {
    /// The round.
    pub round: u64,
    /// The attempt.
    pub attempt: u32,
    /// Whose share of which kind, ascending by member.
    pub revealed: Vec<(MemberId, ShareKind)>,
}

/// A conflicting reveal: the record already holds the other kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RevealConflict {
    /// The attempt.
    pub attempt: u32,
    /// The member whose shares are at stake.
    pub member: MemberId,
    /// The kind that was asked for.
    pub requested: ShareKind,
}

/// Everything one member revealed in one round, by attempt.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RevealRecord {
    round: u64,
    attempts: BTreeMap<u32, BTreeMap<MemberId, ShareKind>>,
}

impl RevealRecord {
    /// An empty record for `round`.
    pub fn new(round: u64) -> Self {
        Self {
            round,
            attempts: BTreeMap::new(),
        }
    }

    /// Rebuilds a record from persisted entries. Entries of other rounds are
    /// skipped; a conflicting entry is reported (it would mean the store was
    /// written by something that broke the rule).
    pub fn from_entries<'a>(
        round: u64,
        entries: impl IntoIterator<Item = &'a RevealEntry>,
    ) -> Result<Self, RevealConflict> {
        let mut record = Self::new(round);
        for e in entries.into_iter().filter(|e| e.round == round) {
            record.add(e)?;
        }
        Ok(record)
    }

    /// The round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether revealing `kind` for `member` in `attempt` is allowed: true
    /// unless the other kind was revealed for that member in that attempt.
    pub fn allows(&self, attempt: u32, member: MemberId, kind: ShareKind) -> bool {
        self.attempts
            .get(&attempt)
            .and_then(|m| m.get(&member))
            .is_none_or(|k| *k == kind)
    }

    /// Whether anything was revealed in `attempt`.
    pub fn revealed_in(&self, attempt: u32) -> bool {
        self.attempts.contains_key(&attempt)
    }

    /// The reveals of `attempt`.
    pub fn reveals(&self, attempt: u32) -> impl Iterator<Item = (MemberId, ShareKind)> + '_ {
        self.attempts
            .get(&attempt)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (*k, *v)))
    }

    /// Adds an entry, all or nothing: fails without change if any pair
    /// conflicts with what is recorded or with another pair of the entry.
    pub fn add(&mut self, entry: &RevealEntry) -> Result<(), RevealConflict> {
        let mut merged = self
            .attempts
            .get(&entry.attempt)
            .cloned()
            .unwrap_or_default();
        for &(member, kind) in &entry.revealed {
            if let Some(&old) = merged.get(&member)
                && old != kind
            {
                return Err(RevealConflict {
                    attempt: entry.attempt,
                    member,
                    requested: kind,
                });
            }
            merged.insert(member, kind);
        }
        self.attempts.insert(entry.attempt, merged);
        Ok(())
    }
}
