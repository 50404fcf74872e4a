//! A round without masking, for measurement only: every member sends its
//! fixed-point input x_u in the clear to the round's leader, which sums and
//! sends the sum back, over the same transport and in the same envelopes as
//! a secure round. The round benchmark runs it beside the secure round to
//! show what secure aggregation costs on top of moving the vectors.
//!
//! It is never selected by a config file: it hides nothing, so only
//! [`super::NodeOptions::plain_sums`], set by code, turns it on.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use primia_crypto::{Ring, add_assign};
use primia_protocol::{
    Event, Instant, MemberId, MessageKind, Outcome, Outgoing, Output, Phase, ProtocolError,
    RejectReason, Roster, RoundConfig, WireBytes,
};
use zeroize::Zeroizing;

const TAG: u8 = b'P';
const KIND_INPUT: u8 = 0;
const KIND_SUM: u8 = 1;

/// One member's plain-sum round.
pub struct PlainRound {
    config: RoundConfig,
    me: MemberId,
    leader: MemberId,
    members: usize,
    input: Option<Zeroizing<Vec<Ring>>>,
    /// The leader's running sum and who is in it.
    sum: Vec<Ring>,
    got: BTreeSet<MemberId>,
    deadline: Option<Instant>,
    phase: Phase,
    done: bool,
    outputs: VecDeque<Output>,
}

impl PlainRound {
    /// Starts the round: the leader is the protocol's leader of attempt 0.
    pub fn new(roster: &Arc<Roster>, me: MemberId, config: RoundConfig, now: Instant) -> Self {
        let leader = roster.leader(config.round, 0);
        let mut round = Self {
            config,
            me,
            leader,
            members: roster.len(),
            input: None,
            sum: Vec::new(),
            got: BTreeSet::new(),
            deadline: Some(now.plus_millis(config.leader_silence_ms)),
            phase: Phase::MaskedInput,
            done: false,
            outputs: VecDeque::new(),
        };
        round.event(Event::AttemptStarted { attempt: 0, leader });
        round.event(Event::PhaseChanged {
            attempt: 0,
            phase: Phase::MaskedInput,
        });
        round
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    /// Submits x_u as [`primia_crypto::fixed::encode_update`] makes it.
    pub fn submit_input(&mut self, now: Instant, input: Vec<Ring>) -> Result<(), ProtocolError> {
        let x = Zeroizing::new(input);
        if x.len() != self.config.vector_len {
            return Err(ProtocolError::InputLength {
                got: x.len(),
                expected: self.config.vector_len,
            });
        }
        if self.input.is_some() {
            return Err(ProtocolError::InputAlreadySubmitted);
        }
        if self.me == self.leader {
            self.add(now, self.me, &x);
        } else {
            let bytes = encode(KIND_INPUT, &x);
            self.outputs.push_back(Output::Send {
                to: self.leader,
                message: Outgoing {
                    kind: MessageKind::MaskedInput,
                    attempt: 0,
                    bytes: WireBytes::new(bytes),
                },
            });
            self.phase = Phase::Outcome;
            self.event(Event::PhaseChanged {
                attempt: 0,
                phase: Phase::Outcome,
            });
        }
        self.input = Some(x);
        Ok(())
    }

    fn add(&mut self, now: Instant, from: MemberId, x: &[Ring]) {
        if self.sum.is_empty() {
            self.sum = vec![0; self.config.vector_len];
            self.deadline = Some(now.plus_millis(self.config.collect_ms));
        }
        add_assign(&mut self.sum, x);
        self.got.insert(from);
        if self.got.len() == self.members {
            self.finish_leader();
        }
    }

    fn finish_leader(&mut self) {
        let sum = std::mem::take(&mut self.sum);
        let bytes = WireBytes::new(encode(KIND_SUM, &sum));
        self.outputs.push_back(Output::Broadcast {
            message: Outgoing {
                kind: MessageKind::Outcome,
                attempt: 0,
                bytes,
            },
        });
        let participants = std::mem::take(&mut self.got).into_iter().collect();
        self.finish(Outcome {
            round: self.config.round,
            attempt: 0,
            participants,
            sum,
        });
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.deadline = None;
        self.phase = Phase::Outcome;
        self.event(Event::Finished(outcome));
    }

    /// Feeds bytes that member `from` delivered.
    pub fn handle_message(&mut self, now: Instant, from: MemberId, bytes: &[u8]) {
        if let Err(reason) = self.on_message(now, from, bytes) {
            self.event(Event::Rejected { from, reason });
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        from: MemberId,
        bytes: &[u8],
    ) -> Result<(), RejectReason> {
        if self.done {
            return Err(RejectReason::RoundOver);
        }
        let malformed = |reason: &str| {
            RejectReason::Malformed(ProtocolError::Malformed {
                reason: reason.into(),
            })
        };
        let (kind, body) = match bytes {
            [TAG, kind, body @ ..] if body.len() % 8 == 0 => (*kind, body),
            _ => return Err(malformed("not a plain-sum message")),
        };
        if body.len() / 8 != self.config.vector_len {
            return Err(RejectReason::WrongVectorLength {
                got: body.len() / 8,
                expected: self.config.vector_len,
            });
        }
        let vector: Vec<Ring> = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        match kind {
            KIND_INPUT if self.me == self.leader => {
                if self.got.contains(&from) {
                    return Err(RejectReason::Duplicate {
                        kind: MessageKind::MaskedInput,
                    });
                }
                self.add(now, from, &vector);
                Ok(())
            }
            KIND_SUM if from == self.leader => {
                self.finish(Outcome {
                    round: self.config.round,
                    attempt: 0,
                    participants: Vec::new(),
                    sum: vector,
                });
                Ok(())
            }
            KIND_INPUT => Err(RejectReason::NotLeader {
                kind: MessageKind::MaskedInput,
            }),
            KIND_SUM => Err(RejectReason::NotFromLeader { sender: from }),
            _ => Err(malformed("unknown plain-sum message kind")),
        }
    }

    /// Lets time pass: the leader goes on with the inputs it has; a member
    /// whose leader stays silent gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done || self.deadline.is_none_or(|d| d > now) {
            return;
        }
        if self.me == self.leader && !self.got.is_empty() {
            self.finish_leader();
        } else {
            self.done = true;
            self.deadline = None;
            self.event(Event::AttemptFailed {
                attempt: 0,
                reason: primia_protocol::AttemptFailure::LeaderSilent { phase: self.phase },
            });
            self.event(Event::RoundFailed { attempts: 1 });
        }
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the round is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The leader.
    pub fn leader(&self) -> MemberId {
        self.leader
    }

    /// This member's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

fn encode(kind: u8, v: &[Ring]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 8 * v.len());
    out.extend_from_slice(&[TAG, kind]);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}
