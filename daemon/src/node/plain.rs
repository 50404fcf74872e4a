//! A round without masking, for measurement only: every member sends its
//! fixed-point input x_u in the clear to the round's leader, which sums and
//! sends the sum back, over the same transport and in the same signed
//! envelopes as a secure round (a masked-input message that carries x_u
//! itself, and an outcome message), checked the same way on arrival. The
//! round benchmark runs it beside the secure round, so the difference
//! between the two is what secure aggregation adds: key agreement, Shamir
//! shares, mask expansion, the consistency check, the reveals and the
//! unmasking.
//!
//! It is never selected by a config file: it hides nothing, so only
//! [`super::NodeOptions::plain_sums`], set by code, turns it on.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use primia_crypto::{IdentityKey, Ring, add_assign};
use primia_protocol::wire::{self, Header, Message, OutcomeMessage, Payload, RingVector};
use primia_protocol::{
    AttemptFailure, Event, Instant, MemberId, MessageKind, Outcome, Outgoing, Output, Phase,
    ProtocolError, RejectReason, Roster, RoundConfig, WireBytes,
};
use zeroize::Zeroizing;

/// One member's plain-sum round.
pub struct PlainRound {
    config: RoundConfig,
    roster: Arc<Roster>,
    identity: Arc<IdentityKey>,
    me: MemberId,
    leader: MemberId,
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
    pub fn new(
        roster: &Arc<Roster>,
        identity: Arc<IdentityKey>,
        me: MemberId,
        config: RoundConfig,
        now: Instant,
    ) -> Self {
        let leader = roster.leader(config.round, 0);
        let mut round = Self {
            config,
            roster: Arc::clone(roster),
            identity,
            me,
            leader,
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

    fn header(&self) -> Header {
        Header {
            roster: self.roster.digest(),
            round: self.config.round,
            attempt: 0,
            sender: self.me,
        }
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
            // Written into the envelope piece by piece, as a masked input is.
            let bytes = wire::encode_masked_input_with(
                &self.identity,
                &self.header(),
                x.len(),
                |at, p| {
                    p.copy_from_slice(&x[at..at + p.len()]);
                },
            )?;
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

    fn start_sum(&mut self, now: Instant) {
        if self.sum.is_empty() {
            self.sum = vec![0; self.config.vector_len];
            self.deadline = Some(now.plus_millis(self.config.collect_ms));
        }
    }

    fn add(&mut self, now: Instant, from: MemberId, x: &[Ring]) {
        self.start_sum(now);
        add_assign(&mut self.sum, x);
        self.added(from);
    }

    fn added(&mut self, from: MemberId) {
        self.got.insert(from);
        if self.got.len() == self.roster.len() {
            self.finish_leader();
        }
    }

    fn finish_leader(&mut self) {
        let message = Message {
            header: self.header(),
            payload: Payload::Outcome(OutcomeMessage {
                participants: std::mem::take(&mut self.got).into_iter().collect(),
                sum: RingVector(std::mem::take(&mut self.sum)),
            }),
        };
        let encoded = wire::encode(&self.identity, &message);
        let Payload::Outcome(o) = message.payload else {
            return;
        };
        match encoded {
            Ok(bytes) => {
                self.outputs.push_back(Output::Broadcast {
                    message: Outgoing {
                        kind: MessageKind::Outcome,
                        attempt: 0,
                        bytes: WireBytes::new(bytes),
                    },
                });
                self.finish(Outcome {
                    round: self.config.round,
                    attempt: 0,
                    participants: o.participants,
                    sum: o.sum.0,
                });
            }
            Err(error) => {
                self.event(Event::EncodeFailed {
                    kind: MessageKind::Outcome,
                    error,
                });
                self.fail(AttemptFailure::LeaderSilent {
                    phase: Phase::Outcome,
                });
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.deadline = None;
        self.phase = Phase::Outcome;
        self.event(Event::Finished(outcome));
    }

    fn fail(&mut self, reason: AttemptFailure) {
        self.done = true;
        self.deadline = None;
        self.event(Event::AttemptFailed { attempt: 0, reason });
        self.event(Event::RoundFailed { attempts: 1 });
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
        // The vector stays in `bytes` until it is checked (and added).
        let mut decoded = wire::decode_in_place(bytes).map_err(RejectReason::Malformed)?;
        let h = decoded.message.header;
        if h.roster != self.roster.digest() {
            return Err(RejectReason::WrongRoster);
        }
        if h.round != self.config.round {
            return Err(RejectReason::WrongRound { round: h.round });
        }
        if h.sender != from {
            return Err(RejectReason::SenderMismatch {
                claimed: h.sender,
                delivered_by: from,
            });
        }
        let roster = Arc::clone(&self.roster);
        let key = &roster
            .member(from)
            .ok_or(RejectReason::UnknownSender { sender: from.0 })?
            .identity;
        let kind = decoded.kind();
        if let Some(le) = decoded.vector_le()
            && le.len() / 8 != self.config.vector_len
        {
            return Err(RejectReason::WrongVectorLength {
                got: le.len() / 8,
                expected: self.config.vector_len,
            });
        }
        match kind {
            MessageKind::MaskedInput if self.me == self.leader => {
                if self.got.contains(&from) {
                    return Err(RejectReason::Duplicate { kind });
                }
                self.start_sum(now);
                decoded
                    .verify_adding_vector(key, &mut self.sum)
                    .map_err(|_| RejectReason::BadSignature)?;
                self.added(from);
                Ok(())
            }
            MessageKind::Outcome if from == self.leader => {
                let sum = decoded
                    .verify_vector(key)
                    .map_err(|_| RejectReason::BadSignature)?;
                let participants = match decoded.message.payload {
                    Payload::Outcome(o) => o.participants,
                    _ => Vec::new(),
                };
                self.finish(Outcome {
                    round: self.config.round,
                    attempt: 0,
                    participants,
                    sum,
                });
                Ok(())
            }
            MessageKind::MaskedInput => Err(RejectReason::NotLeader { kind }),
            MessageKind::Outcome => Err(RejectReason::NotFromLeader { sender: from }),
            _ => Err(RejectReason::Unexpected { kind }),
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
            self.fail(AttemptFailure::LeaderSilent { phase: self.phase });
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

#[cfg(test)]
mod tests {
    use super::*;
    use primia_crypto::Secret32;
    use primia_protocol::{ConsortiumId, MemberInfo, Threshold};

    const LEN: usize = 5;

    /// Three members, each with its round, started at time 0.
    fn rounds() -> Vec<(MemberId, PlainRound)> {
        let keys: Vec<Arc<IdentityKey>> = (1..=3u8)
            .map(|i| Arc::new(IdentityKey::from_seed(&Secret32::from_bytes([i; 32]))))
            .collect();
        let infos = keys
            .iter()
            .enumerate()
            .map(|(i, k)| MemberInfo {
                name: format!("m{i}"),
                identity: k.public(),
                addresses: Vec::new(),
            })
            .collect();
        let consortium = ConsortiumId::new("plain").unwrap();
        let roster = Arc::new(Roster::new(consortium, infos, Threshold::Majority).unwrap());
        keys.into_iter()
            .map(|k| {
                let me = roster.id_of(&k.public()).unwrap();
                let config = RoundConfig::new(7, LEN);
                (
                    me,
                    PlainRound::new(&roster, k, me, config, Instant::from_millis(0)),
                )
            })
            .collect()
    }

    fn input(me: MemberId) -> Vec<Ring> {
        (0..LEN as u64).map(|i| u64::from(me.0) * 100 + i).collect()
    }

    /// What a round put out since the last look.
    #[derive(Default)]
    struct Drained {
        /// (recipient, or None for all; bytes).
        sends: Vec<(Option<MemberId>, WireBytes)>,
        finished: Option<Vec<Ring>>,
        rejected: Vec<RejectReason>,
    }

    fn drain(round: &mut PlainRound) -> Drained {
        let mut d = Drained::default();
        while let Some(o) = round.poll_output() {
            match o {
                Output::Send { to, message } => d.sends.push((Some(to), message.bytes)),
                Output::Broadcast { message } => d.sends.push((None, message.bytes)),
                Output::Event(Event::Finished(o)) => d.finished = Some(o.sum),
                Output::Event(Event::Rejected { reason, .. }) => d.rejected.push(reason),
                _ => {}
            }
        }
        d
    }

    #[test]
    fn signed_inputs_and_outcome_give_every_member_the_sum() {
        let mut rs = rounds();
        let leader = rs[0].1.leader();
        let now = Instant::from_millis(1);
        let mut to_leader = Vec::new();
        for (me, r) in &mut rs {
            r.submit_input(now, input(*me)).unwrap();
            if *me != leader {
                let out = drain(r).sends;
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].0, Some(leader));
                to_leader.push((*me, out[0].1.clone()));
            }
        }
        let want: Vec<Ring> = (0..LEN)
            .map(|i| rs.iter().map(|(me, _)| input(*me)[i]).sum())
            .collect();
        let l = rs.iter().position(|(me, _)| *me == leader).unwrap();
        for (from, bytes) in &to_leader {
            rs[l].1.handle_message(now, *from, bytes);
        }
        let out = drain(&mut rs[l].1);
        assert_eq!(out.finished.as_deref(), Some(&want[..]), "the leader");
        assert_eq!(out.sends.len(), 1);
        assert_eq!(out.sends[0].0, None);
        let outcome = out.sends[0].1.clone();
        for (me, r) in &mut rs {
            if *me != leader {
                r.handle_message(now, leader, &outcome);
                assert_eq!(drain(r).finished.as_deref(), Some(&want[..]), "member {me}");
            }
        }
    }

    #[test]
    fn forged_or_misdelivered_messages_are_refused_and_not_added() {
        let mut rs = rounds();
        let leader = rs[0].1.leader();
        let now = Instant::from_millis(1);
        let l = rs.iter().position(|(me, _)| *me == leader).unwrap();
        let (a, b) = {
            let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
            (others[0], others[1])
        };
        let a_id = rs[a].0;
        let b_id = rs[b].0;
        rs[a].1.submit_input(now, input(a_id)).unwrap();
        let bytes = drain(&mut rs[a].1).sends.remove(0).1.to_vec();

        // A flipped bit in the vector breaks the signature.
        let mut tampered = bytes.clone();
        let at = tampered.len() - 64 - 3;
        tampered[at] ^= 1;
        rs[l].1.handle_message(now, a_id, &tampered);
        // Delivered by another member than its signer.
        rs[l].1.handle_message(now, b_id, &bytes);
        // Not an envelope at all.
        rs[l].1.handle_message(now, a_id, b"P\0garbage");
        let got = drain(&mut rs[l].1).rejected;
        assert!(matches!(got[0], RejectReason::BadSignature), "{got:?}");
        assert!(
            matches!(got[1], RejectReason::SenderMismatch { .. }),
            "{got:?}"
        );
        assert!(matches!(got[2], RejectReason::Malformed(_)), "{got:?}");

        // The genuine message still counts once, and only once.
        rs[l].1.handle_message(now, a_id, &bytes);
        rs[l].1.handle_message(now, a_id, &bytes);
        let got = drain(&mut rs[l].1).rejected;
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], RejectReason::Duplicate { .. }), "{got:?}");

        // The leader's own input and b's complete the sum: a's is in it
        // exactly once, the tampered copy not at all.
        rs[l].1.submit_input(now, input(leader)).unwrap();
        rs[b].1.submit_input(now, input(b_id)).unwrap();
        let from_b = drain(&mut rs[b].1).sends.remove(0).1;
        rs[l].1.handle_message(now, b_id, &from_b);
        let want: Vec<Ring> = (0..LEN)
            .map(|i| input(leader)[i] + input(a_id)[i] + input(b_id)[i])
            .collect();
        let outcome = drain(&mut rs[l].1).sends.remove(0).1;
        // A member accepts the outcome only from the leader.
        rs[a].1.handle_message(now, b_id, &outcome);
        let got = drain(&mut rs[a].1).rejected;
        assert!(
            matches!(got[0], RejectReason::SenderMismatch { .. }),
            "{got:?}"
        );
        rs[a].1.handle_message(now, leader, &outcome);
        assert_eq!(drain(&mut rs[a].1).finished.as_deref(), Some(&want[..]));
    }
}
