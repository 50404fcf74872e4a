//! One round in progress at this member: the state machine (the protocol's
//! secure [`Round`], or the plain-sum round of the benchmark), the base model
//! it starts from, and the log of its attempts that becomes the journal.

use std::sync::Arc;

use primia_crypto::IdentityKey;
use primia_protocol::{
    Event, Instant, MemberId, Output, Phase, ProtocolError, RevealRecord, Roster, Round,
    RoundConfig, WireBytes,
};
use rand::rngs::StdRng;
use tracing::Span;

use super::plain::PlainRound;
use crate::store::ModelHash;

/// The state machine of one round.
pub(crate) enum Machine {
    /// Secure aggregation.
    Secure(Box<Round<StdRng>>),
    /// Plain sums (measurement only).
    Plain(Box<PlainRound>),
}

impl Machine {
    /// A secure round resumed at `attempt` with what the store says this
    /// member revealed in it, drawing its randomness from a fresh generator
    /// seeded by the operating system.
    pub(crate) fn secure(
        roster: Arc<Roster>,
        identity: Arc<IdentityKey>,
        config: RoundConfig,
        now: Instant,
        record: RevealRecord,
        attempt: u32,
    ) -> anyhow::Result<Self> {
        use rand::SeedableRng as _;
        let rng = StdRng::try_from_os_rng()
            .map_err(|e| anyhow::anyhow!("no randomness for the round: {e}"))?;
        let round = Round::resume(roster, identity, config, rng, now, record, attempt)?;
        Ok(Self::Secure(Box::new(round)))
    }

    /// Feeds a protocol envelope as it came off the network, handed over
    /// without a copy (the round keeps an outcome envelope as it is).
    pub(crate) fn handle_envelope(&mut self, now: Instant, from: MemberId, envelope: Vec<u8>) {
        match self {
            Self::Secure(r) => r.handle_owned_message(now, from, WireBytes::new(envelope)),
            Self::Plain(r) => r.handle_message(now, from, &envelope),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self {
            Self::Secure(r) => r.handle_timeout(now),
            Self::Plain(r) => r.handle_timeout(now),
        }
    }

    pub(crate) fn submit_input(
        &mut self,
        now: Instant,
        input: Vec<primia_crypto::Ring>,
    ) -> Result<(), ProtocolError> {
        match self {
            Self::Secure(r) => r.submit_input(now, input),
            Self::Plain(r) => r.submit_input(now, input),
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        match self {
            Self::Secure(r) => r.poll_output(),
            Self::Plain(r) => r.poll_output(),
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::Secure(r) => r.poll_timeout(),
            Self::Plain(r) => r.poll_timeout(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        match self {
            Self::Secure(r) => r.is_done(),
            Self::Plain(r) => r.is_done(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self {
            Self::Secure(r) => r.phase(),
            Self::Plain(r) => r.phase(),
        }
    }
}

/// What happened in one attempt so far, for the journal and the reports.
pub(crate) struct AttemptLog {
    pub(crate) attempt: u32,
    pub(crate) leader: MemberId,
    pub(crate) started: std::time::Instant,
    pub(crate) started_unix_ms: u64,
    /// Phases this member entered, with when.
    pub(crate) phases: Vec<(Phase, std::time::Instant)>,
    /// Left out of a participant set.
    pub(crate) excluded: bool,
}

impl AttemptLog {
    pub(crate) fn new(attempt: u32, leader: MemberId) -> Self {
        Self {
            attempt,
            leader,
            started: std::time::Instant::now(),
            started_unix_ms: crate::store::now_unix_ms(),
            phases: Vec::new(),
            excluded: false,
        }
    }

    /// Milliseconds spent in each phase, up to `end`.
    pub(crate) fn phase_ms(&self, end: std::time::Instant) -> Vec<(Phase, u64)> {
        let mut out = Vec::with_capacity(self.phases.len());
        for (i, (phase, at)) in self.phases.iter().enumerate() {
            let until = self.phases.get(i + 1).map_or(end, |(_, t)| *t);
            out.push((
                *phase,
                until.saturating_duration_since(*at).as_millis() as u64,
            ));
        }
        out
    }
}

/// Where this member's contribution to the round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputState {
    /// The update source is working on it.
    Preparing,
    /// Handed to the round.
    Submitted,
    /// The source failed; the round goes on without this member's input.
    Failed,
}

/// One round at this member.
pub(crate) struct Runner {
    pub(crate) round: u64,
    /// Hash of the model the round starts from; only messages framed with
    /// the same base reach the machine.
    pub(crate) base: ModelHash,
    pub(crate) machine: Machine,
    pub(crate) started: std::time::Instant,
    pub(crate) started_unix_ms: u64,
    pub(crate) input: InputState,
    pub(crate) attempt: Option<AttemptLog>,
    /// Which retry of the round this is (after every attempt failed).
    pub(crate) retry: u32,
    pub(crate) span: Span,
}

impl Runner {
    /// The leader of the current attempt.
    pub(crate) fn leader(&self) -> Option<MemberId> {
        self.attempt.as_ref().map(|a| a.leader)
    }

    /// Notes an event in the attempt log; returns the log of an attempt that
    /// ended with it.
    pub(crate) fn note(&mut self, event: &Event) -> Option<AttemptLog> {
        match event {
            Event::AttemptStarted { attempt, leader } => {
                let ended = self.attempt.take();
                self.attempt = Some(AttemptLog::new(*attempt, *leader));
                self.span = tracing::info_span!("round", round = self.round, attempt = *attempt);
                ended
            }
            Event::PhaseChanged { attempt, phase } => {
                if let Some(log) = self.attempt.as_mut().filter(|l| l.attempt == *attempt) {
                    log.phases.push((*phase, std::time::Instant::now()));
                }
                None
            }
            Event::Excluded { attempt, .. } => {
                if let Some(log) = self.attempt.as_mut().filter(|l| l.attempt == *attempt) {
                    log.excluded = true;
                }
                None
            }
            _ => None,
        }
    }
}
