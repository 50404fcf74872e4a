//! The sans-IO secure-aggregation round: one state machine per member and
//! round, holding both the member role and, in the attempts it leads, the
//! leader role.
//!
//! The driver feeds it bytes from the network ([`Round::handle_message`]),
//! the passing of time ([`Round::handle_timeout`]) and the member's input
//! ([`Round::submit_input`]); it drains [`Output`]s with
//! [`Round::poll_output`] and asks [`Round::poll_timeout`] when to call
//! again. Nothing here reads a clock, draws OS randomness or does IO.
//!
//! # Driver contract
//!
//! - After every input, take outputs until [`Round::poll_output`] returns
//!   `None`: messages between this member's own two roles are delivered
//!   while the outputs are taken, so the round's state (and
//!   [`Round::poll_timeout`]) is complete only then.
//! - Execute outputs in the order they come. An [`Output::PersistReveal`]
//!   must be durable (written and synced) before the driver carries out any
//!   `Send` or `Broadcast` after it: the send of the reveal it describes
//!   follows it (a leader's own reveal goes into its outcome, a
//!   `Broadcast`). The driver may go on taking outputs and feeding inputs
//!   while the write runs; nothing leaves the member meanwhile.
//! - Map transport peers to [`MemberId`]s with the roster; bytes from a peer
//!   outside the roster never reach the round.
//! - Keep a finished round around for a while: it answers members that are
//!   still in a later attempt with the outcome, so they stop too.

mod binding;
mod leader;
mod member;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, OnceLock};

use primia_crypto::{IdentityKey, PublicIdentity, Ring, fixed};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::ProtocolError;
use crate::reveal::{RevealEntry, RevealRecord, ShareKind};
use crate::roster::{MemberId, Roster};
use crate::time::Instant;
use crate::wire::{
    self, AbortReason, Decoded, MAX_VECTOR_LEN, Message, MessageKind, Payload, Phase,
};

use binding::Binding;
use leader::Lead;
use member::MemberPhase;

/// Settings of one round; the same at every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundConfig {
    /// The round number r.
    pub round: u64,
    /// Length of every input and of the sum: parameters plus one (the
    /// example count n_u that [`fixed::encode_update`] appends).
    pub vector_len: usize,
    /// How long the leader waits, from the start of a collection step, for
    /// members that have not answered yet. With t answers it then moves on
    /// without the others; with fewer it aborts the attempt.
    pub collect_ms: u64,
    /// How long a member waits for the leader's next message before it gives
    /// up on the attempt and moves to the next one (next leader, fresh keys).
    /// At least twice `collect_ms`: between two leader messages a member may
    /// wait through two collection steps.
    pub leader_silence_ms: u64,
    /// Attempts before the round fails for good.
    pub max_attempts: u32,
}

impl RoundConfig {
    /// Defaults sized for a real network: 10 s collection windows, a leader
    /// silent for 30 s is given up on, 8 attempts.
    pub fn new(round: u64, vector_len: usize) -> Self {
        Self {
            round,
            vector_len,
            collect_ms: 10_000,
            leader_silence_ms: 30_000,
            max_attempts: 8,
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |reason: String| Err(ProtocolError::InvalidConfig { reason });
        if self.vector_len < 1 || self.vector_len > MAX_VECTOR_LEN {
            return bad(format!(
                "vector length {} outside 1..={MAX_VECTOR_LEN}",
                self.vector_len
            ));
        }
        if self.collect_ms == 0 {
            return bad("collect_ms must be positive".into());
        }
        if self.leader_silence_ms < self.collect_ms.saturating_mul(2) {
            return bad(format!(
                "leader_silence_ms {} must be at least twice collect_ms {}",
                self.leader_silence_ms, self.collect_ms
            ));
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// Encoded, signed bytes shared between outputs without copying (a broadcast
/// outcome may be a hundred megabytes). `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct WireBytes(Arc<Vec<u8>>);

impl WireBytes {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Arc::new(bytes))
    }
}

impl AsRef<[u8]> for WireBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for WireBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WireBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireBytes(len = {})", self.0.len())
    }
}

/// A message to put on the network.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// What it is: [`MessageKind::is_bulk`] tells the transport to use.
    pub kind: MessageKind,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// The envelope.
    pub bytes: WireBytes,
}

/// What the round asks of its driver.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send to one member.
    Send {
        /// Recipient.
        to: MemberId,
        /// The message.
        message: Outgoing,
    },
    /// Send to every roster member except this one.
    Broadcast {
        /// The message.
        message: Outgoing,
    },
    /// Make this reveal durable before carrying out any later `Send` or
    /// `Broadcast`.
    PersistReveal(RevealEntry),
    /// Something happened.
    Event(Event),
}

/// The result of a round.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The round.
    pub round: u64,
    /// The attempt that produced it.
    pub attempt: u32,
    /// U3: the members whose inputs are in the sum, ascending.
    pub participants: Vec<MemberId>,
    /// The sum of their inputs in the ring: `sum n_u * delta_u` in fixed
    /// point, then `sum n_u`.
    pub sum: Vec<Ring>,
}

impl Outcome {
    /// The sum decoded from fixed point; [`fixed::DecodedSum::mean`] is the
    /// weighted FedAvg mean.
    pub fn decode(&self) -> Result<fixed::DecodedSum, ProtocolError> {
        Ok(fixed::decode_sum(&self.sum)?)
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("round", &self.round)
            .field("attempt", &self.attempt)
            .field("participants", &self.participants)
            .field("sum_len", &self.sum.len())
            .finish()
    }
}

/// What happened, for the driver's logs, metrics and status.
#[derive(Clone, Debug)]
pub enum Event {
    /// An attempt began, with fresh keys.
    AttemptStarted {
        /// The attempt.
        attempt: u32,
        /// Its leader.
        leader: MemberId,
    },
    /// This member's part moved on.
    PhaseChanged {
        /// The attempt.
        attempt: u32,
        /// The phase it is now in.
        phase: Phase,
    },
    /// This member is not (or no longer) part of the attempt: left out of a
    /// participant set, or withdrawn after a bad share bundle. It still
    /// accepts the attempt's outcome.
    Excluded {
        /// The attempt.
        attempt: u32,
        /// The phase where it happened.
        phase: Phase,
    },
    /// A message was dropped; nothing in it was acted on.
    Rejected {
        /// Who delivered it.
        from: MemberId,
        /// Why.
        reason: RejectReason,
    },
    /// The reveal record forbade a reveal the leader asked for; this member
    /// revealed nothing in this attempt.
    RevealWithheld {
        /// The attempt.
        attempt: u32,
        /// The member whose share was asked for.
        member: MemberId,
        /// The kind asked for.
        kind: ShareKind,
    },
    /// The attempt ended without a result here; the next one starts.
    AttemptFailed {
        /// The attempt.
        attempt: u32,
        /// Why.
        reason: AttemptFailure,
    },
    /// The round has its result.
    Finished(Outcome),
    /// Every attempt failed; the round is over without a result.
    RoundFailed {
        /// Attempts made.
        attempts: u32,
    },
    /// A message could not be encoded (only if a limit of this crate is
    /// inconsistent with the configuration); it was not sent.
    EncodeFailed {
        /// What was not sent.
        kind: MessageKind,
        /// Why.
        error: ProtocolError,
    },
}

/// Why an attempt ended without a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The leader sent nothing for `leader_silence_ms`.
    LeaderSilent {
        /// Where this member was waiting.
        phase: Phase,
    },
    /// Fewer than t members answered (seen by the leader).
    TooFewMembers {
        /// The step that fell short.
        phase: Phase,
        /// Answers.
        got: usize,
        /// t.
        needed: usize,
    },
    /// The leader announced that it gave up.
    AbortedByLeader(AbortReason),
    /// The leader's survivor set or its proof did not check out: it showed
    /// different sets to different members, or forged the proof.
    ConsistencyCheckFailed {
        /// What did not check out.
        reason: String,
    },
    /// Revealed shares did not rebuild the committed secrets (a member sent
    /// a wrong share).
    ReconstructionFailed {
        /// Which secret.
        reason: String,
    },
    /// A message of a later attempt showed the consortium had moved on.
    Superseded {
        /// The later attempt.
        by: u32,
    },
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptFailure::LeaderSilent { phase } => {
                write!(f, "leader silent past the deadline in phase {phase:?}")
            }
            AttemptFailure::TooFewMembers { phase, got, needed } => write!(
                f,
                "only {got} members answered in phase {phase:?}, the threshold is {needed}"
            ),
            AttemptFailure::AbortedByLeader(r) => write!(f, "leader aborted the attempt: {r:?}"),
            AttemptFailure::ConsistencyCheckFailed { reason } => {
                write!(f, "consistency check failed: {reason}")
            }
            AttemptFailure::ReconstructionFailed { reason } => {
                write!(f, "reconstruction failed: {reason}")
            }
            AttemptFailure::Superseded { by } => write!(f, "superseded by attempt {by}"),
        }
    }
}

/// Why a message was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a well-formed envelope (size, version, body).
    Malformed(ProtocolError),
    /// Names or comes from a member id outside the roster.
    UnknownSender {
        /// The id.
        sender: u16,
    },
    /// Claims to come from this member.
    FromSelf,
    /// Delivered by one member but signed as another, for a kind that is
    /// never relayed.
    SenderMismatch {
        /// The author in the header.
        claimed: MemberId,
        /// Who delivered it.
        delivered_by: MemberId,
    },
    /// The signature does not verify.
    BadSignature,
    /// Bound to another roster (consortium, members or threshold differ).
    WrongRoster,
    /// Bound to another round.
    WrongRound {
        /// Its round.
        round: u64,
    },
    /// From an earlier attempt.
    StaleAttempt {
        /// Its attempt.
        attempt: u32,
        /// Ours.
        current: u32,
    },
    /// From a later attempt that gives no reason to move on.
    FutureAttempt {
        /// Its attempt.
        attempt: u32,
        /// Ours.
        current: u32,
    },
    /// A message for the leader, but this member does not lead the attempt.
    NotLeader {
        /// The kind.
        kind: MessageKind,
    },
    /// A leader's message from a member that does not lead the attempt.
    NotFromLeader {
        /// Its author.
        sender: MemberId,
    },
    /// Not expected in the current phase (too early or too late).
    Unexpected {
        /// The kind.
        kind: MessageKind,
    },
    /// A second message of this kind from the same member in this attempt.
    Duplicate {
        /// The kind.
        kind: MessageKind,
    },
    /// The sender is not in the participant set this step requires.
    NotParticipant {
        /// The kind.
        kind: MessageKind,
    },
    /// A vector of the wrong length.
    WrongVectorLength {
        /// Its length.
        got: usize,
        /// The round's.
        expected: usize,
    },
    /// Shares addressed to another member.
    WrongRecipient {
        /// The member they are for.
        recipient: MemberId,
    },
    /// A member list that is unsorted, repeats or names unknown members, or
    /// is too small or inconsistent with an earlier one.
    InvalidSet {
        /// Which list and what is wrong.
        what: &'static str,
    },
    /// A key advert inside a key announcement does not check out.
    BadAdvert {
        /// Its position in the announcement.
        position: usize,
        /// What is wrong.
        reason: String,
    },
    /// A key advert with a low-order public key, which would make every
    /// key agreement with it fail.
    WeakKey {
        /// Whose key.
        member: MemberId,
    },
    /// A share ciphertext or share does not check out.
    BadShares {
        /// Whose shares.
        sender: MemberId,
        /// What is wrong.
        reason: &'static str,
    },
    /// A consistency signature does not verify.
    BadConsistencySignature {
        /// The member it claims to be from.
        member: MemberId,
    },
    /// A proof for a survivor set other than the one this member was shown.
    ConsistencyMismatch,
    /// The round is over here.
    RoundOver,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Malformed(e) => write!(f, "undecodable message: {e}"),
            RejectReason::UnknownSender { sender } => {
                write!(f, "member {sender} is not in the roster")
            }
            RejectReason::FromSelf => f.write_str("message claims to come from this member"),
            RejectReason::SenderMismatch {
                claimed,
                delivered_by,
            } => {
                write!(
                    f,
                    "message signed as {claimed} was delivered by {delivered_by}"
                )
            }
            RejectReason::BadSignature => f.write_str("signature does not verify"),
            RejectReason::WrongRoster => f.write_str("message is bound to another roster"),
            RejectReason::WrongRound { round } => write!(f, "message is for round {round}"),
            RejectReason::StaleAttempt { attempt, current } => {
                write!(
                    f,
                    "message is for earlier attempt {attempt}, current is {current}"
                )
            }
            RejectReason::FutureAttempt { attempt, current } => {
                write!(
                    f,
                    "message is for later attempt {attempt}, current is {current}"
                )
            }
            RejectReason::NotLeader { kind } => {
                write!(f, "{kind:?} sent to a member that does not lead")
            }
            RejectReason::NotFromLeader { sender } => {
                write!(f, "leader message from {sender}, which does not lead")
            }
            RejectReason::Unexpected { kind } => write!(f, "{kind:?} not expected in this phase"),
            RejectReason::Duplicate { kind } => write!(f, "duplicate {kind:?}"),
            RejectReason::NotParticipant { kind } => {
                write!(
                    f,
                    "{kind:?} from a member outside this step's participant set"
                )
            }
            RejectReason::WrongVectorLength { got, expected } => {
                write!(f, "vector of length {got}, the round expects {expected}")
            }
            RejectReason::WrongRecipient { recipient } => {
                write!(f, "shares are addressed to {recipient}")
            }
            RejectReason::InvalidSet { what } => write!(f, "invalid member set: {what}"),
            RejectReason::BadAdvert { position, reason } => {
                write!(f, "bad key advert at position {position}: {reason}")
            }
            RejectReason::WeakKey { member } => {
                write!(f, "key advert of {member} has a low-order key")
            }
            RejectReason::BadShares { sender, reason } => {
                write!(f, "bad shares from {sender}: {reason}")
            }
            RejectReason::BadConsistencySignature { member } => {
                write!(f, "consistency signature of {member} does not verify")
            }
            RejectReason::ConsistencyMismatch => {
                f.write_str("proof is for a survivor set other than the one this member was shown")
            }
            RejectReason::RoundOver => f.write_str("the round is over"),
        }
    }
}

/// Whether a message's signature still needs checking.
enum Auth<'a> {
    /// From this member's other role: nothing to check.
    Local,
    /// From the network; checked only once cheaper checks passed, so junk
    /// does not cost a signature verification.
    Remote(&'a Decoded<'a>, &'a PublicIdentity),
}

impl<'a> Auth<'a> {
    fn check(&self) -> Result<(), RejectReason> {
        match self {
            Auth::Local => Ok(()),
            Auth::Remote(d, key) => d.verify(key).map_err(|_| RejectReason::BadSignature),
        }
    }

    /// A masked input's vector still in its envelope (see
    /// [`wire::decode_in_place`]); `None` for a local message, whose vector
    /// is in the payload.
    fn vector_le(&self) -> Option<&'a [u8]> {
        match self {
            Auth::Local => None,
            Auth::Remote(d, _) => d.vector_le(),
        }
    }
}

/// A message between this member's two roles.
struct Local {
    to_leader: bool,
    message: Message,
    /// The signed envelope, for adverts (the leader relays them as they are).
    envelope: Option<Vec<u8>>,
}

/// One attempt in progress.
struct Attempt {
    number: u32,
    leader: MemberId,
    binding: Binding,
    member: MemberPhase,
    /// When this member gives up on a silent leader; `None` while it leads
    /// (then the leader role's own deadlines end a stuck attempt).
    member_deadline: Option<Instant>,
    lead: Option<Lead>,
    /// Verified adverts for the next attempt, kept when this member leads it
    /// (members whose clock ran out earlier arrive first); at most one per
    /// member.
    next_adverts: BTreeMap<MemberId, (Message, Vec<u8>)>,
}

/// The result, kept to answer members still in a later attempt.
struct Finished {
    /// The attempt that produced the outcome.
    attempt: u32,
    /// The leader-signed outcome envelope.
    envelope: WireBytes,
    /// The outcome for [`Round::outcome`], decoded from `envelope` the first
    /// time it is asked for. [`Event::Finished`] carries the original; a
    /// second copy kept here would cost a copy of the whole sum (megabytes)
    /// in every round for an accessor drivers rarely use.
    outcome: OnceLock<Option<Outcome>>,
    /// Highest attempt each member was answered for: one answer per member
    /// and attempt bounds what a peer can make this member send.
    answered: BTreeMap<MemberId, u32>,
}

enum State {
    Running(Box<Attempt>),
    Finished(Box<Finished>),
    Failed,
}

/// One member's state machine for one round. See the module doc.
pub struct Round<R> {
    roster: Arc<Roster>,
    identity: Arc<IdentityKey>,
    me: MemberId,
    config: RoundConfig,
    rng: R,
    /// Leader order of this round, computed once.
    ranking: Vec<MemberId>,
    /// x_u, secret: wiped on drop, kept across attempts.
    input: Option<Zeroizing<Vec<Ring>>>,
    reveals: RevealRecord,
    state: State,
    outputs: VecDeque<Output>,
    /// Messages between this member's two roles, delivered by
    /// [`Self::poll_output`] once the outputs before them are taken.
    local: VecDeque<Local>,
    /// The time of the last input, for delivering `local`.
    local_now: Instant,
}

impl<R: CryptoRng> Round<R> {
    /// Starts round `config.round` at attempt 0: advertises fresh keys to the
    /// attempt's leader (see [`Self::poll_output`]).
    pub fn new(
        roster: Arc<Roster>,
        identity: Arc<IdentityKey>,
        config: RoundConfig,
        rng: R,
        now: Instant,
    ) -> Result<Self, ProtocolError> {
        let record = RevealRecord::new(config.round);
        Self::resume(roster, identity, config, rng, now, record, 0)
    }

    /// Starts (after a crash: restarts) the round at `attempt`, with the
    /// reveals recorded so far. An attempt the record shows reveals for is
    /// never joined afresh (this member only waits for its outcome), and the
    /// record forbids the other kind of share in every attempt it covers.
    pub fn resume(
        roster: Arc<Roster>,
        identity: Arc<IdentityKey>,
        config: RoundConfig,
        rng: R,
        now: Instant,
        reveals: RevealRecord,
        attempt: u32,
    ) -> Result<Self, ProtocolError> {
        config.validate()?;
        let me = roster
            .id_of(&identity.public())
            .ok_or_else(|| ProtocolError::NotAMember {
                identity: identity.public().to_string(),
            })?;
        if reveals.round() != config.round {
            return Err(ProtocolError::RecordRoundMismatch {
                got: reveals.round(),
                expected: config.round,
            });
        }
        let ranking = roster.leader_ranking(config.round);
        let mut round = Self {
            roster,
            identity,
            me,
            config,
            rng,
            ranking,
            input: None,
            reveals,
            state: State::Failed,
            outputs: VecDeque::new(),
            local: VecDeque::new(),
            local_now: now,
        };
        round.start_attempt(now, attempt, false);
        Ok(round)
    }

    /// Submits x_u: `n_u * delta_u` in fixed point followed by `n_u`, as
    /// [`fixed::encode_update`] makes it, of exactly `vector_len` entries.
    /// May come at any time; the masked input goes out once the shares are in.
    pub fn submit_input(&mut self, now: Instant, input: Vec<Ring>) -> Result<(), ProtocolError> {
        let input = Zeroizing::new(input);
        if input.len() != self.config.vector_len {
            return Err(ProtocolError::InputLength {
                got: input.len(),
                expected: self.config.vector_len,
            });
        }
        if self.input.is_some() {
            return Err(ProtocolError::InputAlreadySubmitted);
        }
        self.input = Some(input);
        self.local_now = now;
        self.member_input_ready(now);
        Ok(())
    }

    /// Encodes `n_examples * delta` with [`fixed::encode_update`] and submits
    /// it; `delta` has `vector_len - 1` entries.
    pub fn submit_update(
        &mut self,
        now: Instant,
        n_examples: u32,
        delta: &[f32],
    ) -> Result<(), ProtocolError> {
        let mut x = Vec::new();
        fixed::encode_update(n_examples, delta, &mut x)?;
        let x = Zeroizing::new(x);
        self.submit_input(now, x.to_vec())
    }

    /// Feeds bytes that member `from` delivered. A bad message becomes an
    /// [`Event::Rejected`]; it never fails, never panics.
    pub fn handle_message(&mut self, now: Instant, from: MemberId, bytes: &[u8]) {
        self.handle(now, from, bytes, None);
    }

    /// [`Self::handle_message`] for a buffer the driver owns (as it comes
    /// off the network). The one message a round keeps, the outcome
    /// envelope (to answer members still in a later attempt), is then kept
    /// as it is instead of copied: megabytes less per round.
    pub fn handle_owned_message(&mut self, now: Instant, from: MemberId, bytes: WireBytes) {
        self.handle(now, from, &bytes, Some(&bytes));
    }

    fn handle(&mut self, now: Instant, from: MemberId, bytes: &[u8], owned: Option<&WireBytes>) {
        self.local_now = now;
        if let Err(reason) = self.on_remote(now, from, bytes, owned) {
            self.event(Event::Rejected { from, reason });
        }
    }

    /// Lets time pass: expires deadlines at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.local_now = now;
        let State::Running(att) = &self.state else {
            return;
        };
        let number = att.number;
        if att.lead.as_ref().is_some_and(|l| l.deadline <= now) {
            self.leader_deadline(now);
        }
        if let State::Running(att) = &self.state
            && att.number == number
            && att.member_deadline.is_some_and(|d| d <= now)
        {
            let phase = att.member.phase();
            self.fail_attempt(now, AttemptFailure::LeaderSilent { phase });
        }
    }

    /// The next output, in order. Take them all after every input: a
    /// message between this member's own roles (the leader's announcement
    /// to itself as a member, a member's message to itself as the leader)
    /// is delivered here, after the outputs made before it, so a driver
    /// puts a leader's announcement on the network before this member does
    /// its own share of the work it asks for, which the others do at the
    /// same time.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            let local = self.local.pop_front()?;
            self.deliver_local(local);
        }
    }

    /// When to call [`Self::handle_timeout`] next; `None` once the round is
    /// over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let State::Running(att) = &self.state else {
            return None;
        };
        let lead = att.lead.as_ref().map(|l| l.deadline);
        match (lead, att.member_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// This member's id.
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// The round's configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The current attempt, while the round runs.
    pub fn attempt(&self) -> Option<u32> {
        match &self.state {
            State::Running(a) => Some(a.number),
            _ => None,
        }
    }

    /// The leader of the current attempt, while the round runs.
    pub fn leader(&self) -> Option<MemberId> {
        match &self.state {
            State::Running(a) => Some(a.leader),
            _ => None,
        }
    }

    /// Where this member's part stands ([`Phase::Outcome`] once finished).
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Running(a) => a.member.phase(),
            State::Finished(_) | State::Failed => Phase::Outcome,
        }
    }

    /// The outcome, once finished: the same as [`Event::Finished`] carried.
    /// The first call decodes it from the kept envelope.
    pub fn outcome(&self) -> Option<&Outcome> {
        let State::Finished(f) = &self.state else {
            return None;
        };
        f.outcome
            .get_or_init(|| {
                let d = wire::decode(&f.envelope).ok()?;
                let Payload::Outcome(o) = d.message.payload else {
                    return None;
                };
                Some(Outcome {
                    round: self.config.round,
                    attempt: f.attempt,
                    participants: o.participants,
                    sum: o.sum.0,
                })
            })
            .as_ref()
    }

    /// Whether the round is over here (finished or failed).
    pub fn is_done(&self) -> bool {
        !matches!(self.state, State::Running(_))
    }

    /// Everything this member revealed in this round.
    pub fn reveal_record(&self) -> &RevealRecord {
        &self.reveals
    }

    // ---- internals shared by both roles ----

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    fn threshold(&self) -> usize {
        self.roster.threshold()
    }

    fn leader_of(&self, attempt: u32) -> MemberId {
        self.ranking[attempt as usize % self.ranking.len()]
    }

    fn running(&mut self) -> Option<&mut Attempt> {
        match &mut self.state {
            State::Running(a) => Some(a),
            _ => None,
        }
    }

    fn binding(&self, attempt: u32) -> Binding {
        Binding {
            roster: self.roster.digest(),
            round: self.config.round,
            attempt,
        }
    }

    /// Begins attempt `number`: fresh keys advertised to its leader, or only
    /// watching when `spectate` or when the record shows reveals in it.
    fn start_attempt(&mut self, now: Instant, number: u32, spectate: bool) {
        let carried = match std::mem::replace(&mut self.state, State::Failed) {
            State::Running(old) if old.number + 1 == number => old.next_adverts,
            _ => BTreeMap::new(),
        };
        if number >= self.config.max_attempts {
            self.event(Event::RoundFailed { attempts: number });
            return;
        }
        let leader = self.leader_of(number);
        let binding = self.binding(number);
        self.event(Event::AttemptStarted {
            attempt: number,
            leader,
        });
        let leads = leader == self.me;
        let lead = leads.then(|| Lead::new(now.plus_millis(self.config.collect_ms)));
        let member_deadline = (!leads).then(|| now.plus_millis(self.config.leader_silence_ms));
        let watch = spectate || self.reveals.revealed_in(number);
        let (member, advert) = if watch {
            (MemberPhase::Spectating, None)
        } else {
            let (phase, advert) = member::advertise(&mut self.rng, binding, self.me);
            (phase, Some(advert))
        };
        self.state = State::Running(Box::new(Attempt {
            number,
            leader,
            binding,
            member,
            member_deadline,
            lead,
            next_adverts: BTreeMap::new(),
        }));
        if let Some(advert) = advert {
            match wire::encode(&self.identity, &advert) {
                Ok(bytes) => {
                    if leads {
                        self.local.push_back(Local {
                            to_leader: true,
                            message: advert,
                            envelope: Some(bytes),
                        });
                    } else {
                        self.push_send(leader, MessageKind::AdvertiseKeys, number, bytes);
                    }
                }
                Err(error) => self.event(Event::EncodeFailed {
                    kind: MessageKind::AdvertiseKeys,
                    error,
                }),
            }
            self.event(Event::PhaseChanged {
                attempt: number,
                phase: Phase::AdvertiseKeys,
            });
        } else {
            self.event(Event::Excluded {
                attempt: number,
                phase: Phase::AdvertiseKeys,
            });
        }
        if leads {
            for (_, (message, envelope)) in carried {
                self.local.push_back(Local {
                    to_leader: true,
                    message,
                    envelope: Some(envelope),
                });
            }
        }
    }

    /// Ends the current attempt without a result and starts the next.
    fn fail_attempt(&mut self, now: Instant, reason: AttemptFailure) {
        let Some(att) = self.running() else { return };
        let number = att.number;
        self.event(Event::AttemptFailed {
            attempt: number,
            reason,
        });
        self.start_attempt(now, number + 1, false);
    }

    /// Ends the round with `outcome`. `envelope` is the leader-signed
    /// outcome message, kept to answer stragglers.
    fn finish(&mut self, outcome: Outcome, envelope: WireBytes) {
        // If this member leads a later attempt than the outcome's, its
        // members wait on it: pass the outcome on.
        if let State::Running(att) = &self.state
            && att.leader == self.me
            && att.number != outcome.attempt
        {
            let message = Outgoing {
                kind: MessageKind::Outcome,
                attempt: outcome.attempt,
                bytes: envelope.clone(),
            };
            self.outputs.push_back(Output::Broadcast { message });
        }
        self.local.clear();
        let attempt = outcome.attempt;
        self.event(Event::Finished(outcome));
        self.state = State::Finished(Box::new(Finished {
            attempt,
            envelope,
            outcome: OnceLock::new(),
            answered: BTreeMap::new(),
        }));
    }

    fn push_send(&mut self, to: MemberId, kind: MessageKind, attempt: u32, bytes: Vec<u8>) {
        let message = Outgoing {
            kind,
            attempt,
            bytes: WireBytes::new(bytes),
        };
        self.outputs.push_back(Output::Send { to, message });
    }

    /// Sends `payload` of the current attempt to `to`, through the local
    /// queue when that is this member.
    fn send(&mut self, to: MemberId, payload: Payload) {
        let me = self.me;
        let Some(att) = self.running() else { return };
        let attempt = att.number;
        let message = Message {
            header: att.binding.header(me),
            payload,
        };
        if to == self.me {
            self.local.push_back(Local {
                to_leader: message.payload.kind().is_to_leader(),
                message,
                envelope: None,
            });
            return;
        }
        let kind = message.payload.kind();
        match wire::encode(&self.identity, &message) {
            Ok(bytes) => self.push_send(to, kind, attempt, bytes),
            Err(error) => self.event(Event::EncodeFailed { kind, error }),
        }
    }

    /// Sends `payload` of the current attempt to every member, this one
    /// included (through the local queue). Returns the envelope.
    fn broadcast(&mut self, payload: Payload) -> Option<WireBytes> {
        let me = self.me;
        let att = self.running()?;
        let attempt = att.number;
        let message = Message {
            header: att.binding.header(me),
            payload,
        };
        let kind = message.payload.kind();
        let bytes = match wire::encode(&self.identity, &message) {
            Ok(b) => WireBytes::new(b),
            Err(error) => {
                self.event(Event::EncodeFailed { kind, error });
                return None;
            }
        };
        self.outputs.push_back(Output::Broadcast {
            message: Outgoing {
                kind,
                attempt,
                bytes: bytes.clone(),
            },
        });
        if kind != MessageKind::Outcome {
            self.local.push_back(Local {
                to_leader: false,
                message,
                envelope: None,
            });
        }
        Some(bytes)
    }

    /// Delivers one message between this member's roles.
    fn deliver_local(&mut self, l: Local) {
        let now = self.local_now;
        let Some(att) = self.running() else {
            self.local.clear();
            return;
        };
        if l.message.header.attempt != att.number {
            return;
        }
        let result = if l.to_leader {
            self.leader_dispatch(now, &l.message, l.envelope.as_deref(), &Auth::Local)
        } else {
            self.member_dispatch(now, &l.message, &Auth::Local)
        };
        if let Err(reason) = result {
            let from = self.me;
            self.event(Event::Rejected { from, reason });
        }
    }

    /// Checks and routes one network message.
    fn on_remote(
        &mut self,
        now: Instant,
        from: MemberId,
        bytes: &[u8],
        owned: Option<&WireBytes>,
    ) -> Result<(), RejectReason> {
        if self.roster.member(from).is_none() {
            return Err(RejectReason::UnknownSender { sender: from.0 });
        }
        if from == self.me {
            return Err(RejectReason::FromSelf);
        }
        // A masked input stays in `bytes` until the leader adds it.
        let decoded = wire::decode_in_place(bytes).map_err(RejectReason::Malformed)?;
        let h = decoded.message.header;
        if h.roster != self.roster.digest() {
            return Err(RejectReason::WrongRoster);
        }
        if h.round != self.config.round {
            return Err(RejectReason::WrongRound { round: h.round });
        }
        let roster = Arc::clone(&self.roster);
        let key = &roster
            .member(h.sender)
            .ok_or(RejectReason::UnknownSender { sender: h.sender.0 })?
            .identity;
        if h.sender == self.me {
            return Err(RejectReason::FromSelf);
        }
        let kind = decoded.kind();
        // Only an outcome may be relayed: it is the one message a member
        // needs from whoever has it.
        if kind != MessageKind::Outcome && from != h.sender {
            return Err(RejectReason::SenderMismatch {
                claimed: h.sender,
                delivered_by: from,
            });
        }
        let auth = Auth::Remote(&decoded, key);
        let current = match &mut self.state {
            State::Failed => return Err(RejectReason::RoundOver),
            State::Finished(f) => {
                // A member still in a later attempt: answer with the outcome,
                // once per member and attempt.
                if h.attempt <= f.attempt
                    || kind == MessageKind::Outcome
                    || f.answered.get(&from).is_some_and(|a| *a >= h.attempt)
                {
                    return Err(RejectReason::RoundOver);
                }
                auth.check()?;
                f.answered.insert(from, h.attempt);
                let message = Outgoing {
                    kind: MessageKind::Outcome,
                    attempt: f.attempt,
                    bytes: f.envelope.clone(),
                };
                self.outputs.push_back(Output::Send { to: from, message });
                return Ok(());
            }
            State::Running(att) => att.number,
        };
        if kind == MessageKind::Outcome {
            return self.on_outcome(decoded, key, bytes, owned);
        }
        if h.attempt < current {
            return Err(RejectReason::StaleAttempt {
                attempt: h.attempt,
                current,
            });
        }
        if h.attempt > current {
            return self.on_future(now, &decoded, &auth, bytes);
        }
        if kind.is_to_leader() {
            self.leader_dispatch(now, &decoded.message, Some(bytes), &auth)
        } else {
            let leader = self.leader_of(current);
            if h.sender != leader {
                return Err(RejectReason::NotFromLeader { sender: h.sender });
            }
            self.member_dispatch(now, &decoded.message, &auth)
        }
    }

    /// An outcome of any attempt of this round, from that attempt's leader
    /// (possibly relayed).
    fn on_outcome(
        &mut self,
        mut decoded: Decoded<'_>,
        key: &PublicIdentity,
        bytes: &[u8],
        owned: Option<&WireBytes>,
    ) -> Result<(), RejectReason> {
        let h = decoded.message.header;
        if h.sender != self.leader_of(h.attempt) {
            return Err(RejectReason::NotFromLeader { sender: h.sender });
        }
        let Payload::Outcome(o) = &decoded.message.payload else {
            return Err(RejectReason::Unexpected {
                kind: decoded.kind(),
            });
        };
        check_set(&o.participants, self.roster.len(), "outcome participants")?;
        if o.participants.len() < self.threshold() {
            return Err(RejectReason::InvalidSet {
                what: "outcome has fewer participants than the threshold",
            });
        }
        let got = decoded.vector_len().unwrap_or(o.sum.0.len());
        if got != self.config.vector_len {
            return Err(RejectReason::WrongVectorLength {
                got,
                expected: self.config.vector_len,
            });
        }
        // Unpacked from the envelope once its signature holds.
        let sum = decoded
            .verify_vector(key)
            .map_err(|_| RejectReason::BadSignature)?;
        let Payload::Outcome(o) = decoded.message.payload else {
            return Err(RejectReason::RoundOver);
        };
        let outcome = Outcome {
            round: self.config.round,
            attempt: h.attempt,
            participants: o.participants,
            sum,
        };
        let envelope = owned
            .cloned()
            .unwrap_or_else(|| WireBytes::new(bytes.to_vec()));
        self.finish(outcome, envelope);
        Ok(())
    }

    /// A message of a later attempt: kept if it is an advert for the next
    /// attempt that this member leads; followed if it shows that the
    /// consortium moved on while this member was only watching.
    fn on_future(
        &mut self,
        now: Instant,
        decoded: &Decoded<'_>,
        auth: &Auth<'_>,
        bytes: &[u8],
    ) -> Result<(), RejectReason> {
        let h = decoded.message.header;
        let kind = decoded.kind();
        let me = self.me;
        let leader_of_msg = self.leader_of(h.attempt);
        let leads_next = leader_of_msg == me;
        let Some(att) = self.running() else {
            return Err(RejectReason::RoundOver);
        };
        let current = att.number;
        let future = RejectReason::FutureAttempt {
            attempt: h.attempt,
            current,
        };
        if kind == MessageKind::AdvertiseKeys && h.attempt == current + 1 && leads_next {
            if att.next_adverts.contains_key(&h.sender) {
                return Err(RejectReason::Duplicate { kind });
            }
            auth.check()?;
            let att = self.running().ok_or(RejectReason::RoundOver)?;
            att.next_adverts
                .insert(h.sender, (decoded.message.clone(), bytes.to_vec()));
            return Ok(());
        }
        let idle = matches!(
            att.member,
            MemberPhase::Spectating | MemberPhase::AwaitingKeys { .. }
        );
        if idle
            && h.sender == leader_of_msg
            && matches!(
                kind,
                MessageKind::KeysAnnounced | MessageKind::AttemptAborted
            )
        {
            auth.check()?;
            self.event(Event::AttemptFailed {
                attempt: current,
                reason: AttemptFailure::Superseded { by: h.attempt },
            });
            if kind == MessageKind::AttemptAborted {
                self.start_attempt(now, h.attempt + 1, false);
            } else {
                self.start_attempt(now, h.attempt, true);
            }
            return Ok(());
        }
        Err(future)
    }
}

/// Checks a member list: strictly ascending (so no repeats) and inside the
/// roster.
fn check_set(ids: &[MemberId], roster_len: usize, what: &'static str) -> Result<(), RejectReason> {
    let ascending = ids.windows(2).all(|w| w[0] < w[1]);
    let known = ids.last().is_none_or(|id| id.index() < roster_len);
    if ascending && known {
        Ok(())
    } else {
        Err(RejectReason::InvalidSet { what })
    }
}
