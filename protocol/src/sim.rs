//! A deterministic discrete-event simulator: a whole consortium running one
//! round over a virtual clock, with faults, for tests and benchmarks.
//!
//! Everything comes from one seed: identities, inputs, every member's
//! randomness and every network decision. The network delays each message
//! by a uniform draw (so messages overtake each other), drops and duplicates
//! at given rates, and an interceptor may drop or replace any message (to
//! play a malicious leader, say). Members crash at a time, on entering a
//! phase, just before a send, or right after persisting a reveal; a crashed
//! member's messages in flight to it are lost, and it may restart from its
//! durable state (the reveal record and the attempt it was in). A bound on
//! steps turns a livelock into an error.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use primia_crypto::{IdentityKey, Ring, Secret32, fixed};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::reveal::{RevealEntry, RevealRecord, ShareKind};
use crate::roster::{ConsortiumId, MemberId, MemberInfo, Roster, Threshold};
use crate::round::{Event, Outcome, Output, Round, RoundConfig, WireBytes};
use crate::time::Instant;
use crate::wire::{self, Message, MessageKind, Payload, Phase};

/// Network faults.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Smallest delay, in ms.
    pub min_delay_ms: u64,
    /// Largest delay, in ms; messages reorder when this exceeds the minimum.
    pub max_delay_ms: u64,
}

impl Faults {
    /// A perfect network with a 1 ms delay.
    pub fn none() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            min_delay_ms: 1,
            max_delay_ms: 1,
        }
    }
}

/// When a member crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// At this virtual time.
    AtMillis(u64),
    /// When it enters `phase` of `attempt` (its `PhaseChanged` event).
    OnPhase {
        /// The attempt.
        attempt: u32,
        /// The phase.
        phase: Phase,
    },
    /// Just before its first message of `kind` in `attempt` leaves; the
    /// message is lost.
    BeforeSend {
        /// The attempt.
        attempt: u32,
        /// The kind.
        kind: MessageKind,
    },
    /// Right after it emitted (and the simulator persisted) its reveal
    /// record of `attempt`, before the reveal is sent.
    AfterPersist {
        /// The attempt.
        attempt: u32,
    },
}

/// One crash.
#[derive(Clone, Copy, Debug)]
pub struct Crash {
    /// Who.
    pub member: MemberId,
    /// When.
    pub at: CrashPoint,
    /// Restart this long after the crash, from durable state; never if
    /// `None`.
    pub restart_after_ms: Option<u64>,
}

/// A simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Roster size.
    pub members: usize,
    /// Threshold rule.
    pub threshold: Threshold,
    /// Model parameters; inputs have one more entry (the example count).
    pub params: usize,
    /// The seed of everything.
    pub seed: u64,
    /// Network faults.
    pub faults: Faults,
    /// Crashes, each applied once.
    pub crashes: Vec<Crash>,
    /// Members that never submit an input (they still take part in the key
    /// steps, then drop out of U3).
    pub without_input: Vec<MemberId>,
    /// Round timing (the round number and vector length are set from the
    /// rest of this config).
    pub collect_ms: u64,
    /// See [`RoundConfig::leader_silence_ms`].
    pub leader_silence_ms: u64,
    /// See [`RoundConfig::max_attempts`].
    pub max_attempts: u32,
    /// The step bound: exceeding it is a livelock.
    pub max_steps: u64,
}

impl SimConfig {
    /// `members` members, majority threshold, a perfect network, no crashes,
    /// 100 ms collection windows and 300 ms leader silence.
    pub fn new(members: usize, params: usize, seed: u64) -> Self {
        Self {
            members,
            threshold: Threshold::Majority,
            params,
            seed,
            faults: Faults::none(),
            crashes: Vec::new(),
            without_input: Vec::new(),
            collect_ms: 100,
            leader_silence_ms: 300,
            max_attempts: 8,
            max_steps: 2_000_000,
        }
    }
}

/// Why a simulation did not run to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    /// The step bound was reached: something loops.
    Livelock {
        /// Steps taken.
        steps: u64,
    },
    /// The configuration cannot be simulated.
    Setup(String),
}

/// A message about to enter the network, shown to the interceptor.
#[derive(Debug)]
pub struct Intercept<'a> {
    /// Virtual time.
    pub now_ms: u64,
    /// Sender.
    pub from: MemberId,
    /// Recipient.
    pub to: MemberId,
    /// The envelope.
    pub bytes: &'a [u8],
    /// The decoded message (the simulator only carries well-formed ones).
    pub message: &'a Message,
}

/// What the interceptor does with a message.
#[derive(Debug)]
pub enum Verdict {
    /// Let it through (subject to the network faults).
    Deliver,
    /// Lose it.
    Drop,
    /// Deliver these bytes instead.
    Replace(Vec<u8>),
}

type Interceptor = Box<dyn FnMut(&Intercept<'_>) -> Verdict>;

/// One thing in a member's output log.
#[derive(Clone, Debug)]
pub enum LogEntry {
    /// An event.
    Event(Event),
    /// A reveal record it asked to persist (the simulator persisted it).
    Persisted(RevealEntry),
    /// A message it sent.
    Sent {
        /// Virtual time.
        at_ms: u64,
        /// Recipient, `None` for a broadcast.
        to: Option<MemberId>,
        /// Kind.
        kind: MessageKind,
        /// Attempt.
        attempt: u32,
        /// Envelope.
        bytes: WireBytes,
    },
    /// It crashed.
    Crashed {
        /// Virtual time.
        at_ms: u64,
    },
    /// It restarted from durable state.
    Restarted {
        /// Virtual time.
        at_ms: u64,
        /// The attempt it resumed at.
        attempt: u32,
    },
}

/// What one member did.
#[derive(Clone, Debug)]
pub struct MemberReport {
    /// Its id.
    pub id: MemberId,
    /// Its input x_u.
    pub input: Vec<Ring>,
    /// Its outcome, if it finished.
    pub outcome: Option<Outcome>,
    /// Whether it ended with `RoundFailed`.
    pub round_failed: bool,
    /// Whether it is running at the end.
    pub alive: bool,
    /// How often it crashed.
    pub crashes: u32,
    /// Everything it output, in order, across restarts.
    pub log: Vec<LogEntry>,
}

impl MemberReport {
    /// Its events.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.log.iter().filter_map(|l| match l {
            LogEntry::Event(e) => Some(e),
            _ => None,
        })
    }

    /// What its sent unmask messages actually revealed, per attempt (decoded
    /// from the bytes it sent).
    pub fn revealed_sent(&self) -> Vec<(u32, Vec<(MemberId, ShareKind)>)> {
        let mut out = Vec::new();
        for l in &self.log {
            if let LogEntry::Sent {
                kind: MessageKind::UnmaskShares,
                bytes,
                attempt,
                ..
            } = l
                && let Ok(d) = wire::decode(bytes)
                && let Payload::UnmaskShares(u) = &d.message.payload
            {
                let mut pairs: Vec<(MemberId, ShareKind)> = u
                    .self_mask
                    .iter()
                    .map(|s| (s.owner, ShareKind::SelfMask))
                    .chain(u.mask_key.iter().map(|s| (s.owner, ShareKind::MaskKey)))
                    .collect();
                pairs.sort();
                out.push((*attempt, pairs));
            }
        }
        out
    }
}

/// The end state of a simulation.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per member, by id.
    pub members: Vec<MemberReport>,
    /// Steps taken.
    pub steps: u64,
    /// Virtual time at the end.
    pub end_ms: u64,
    /// The threshold.
    pub threshold: usize,
}

impl Report {
    /// Outcomes of the members that finished.
    pub fn outcomes(&self) -> impl Iterator<Item = (MemberId, &Outcome)> {
        self.members
            .iter()
            .filter_map(|m| m.outcome.as_ref().map(|o| (m.id, o)))
    }

    /// The plain ring sum of the inputs of `participants`.
    pub fn plain_sum(&self, participants: &[MemberId]) -> Vec<Ring> {
        let len = self.members.first().map_or(0, |m| m.input.len());
        let mut sum = vec![0u64; len];
        for p in participants {
            primia_crypto::add_assign(&mut sum, &self.members[p.index()].input);
        }
        sum
    }
}

enum Item {
    Deliver {
        to: MemberId,
        from: MemberId,
        bytes: WireBytes,
    },
    Timer {
        member: MemberId,
        generation: u64,
    },
    Crash {
        index: usize,
    },
    Restart {
        member: MemberId,
    },
}

struct Queued {
    at: u64,
    seq: u64,
    item: Item,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Node {
    identity: Arc<IdentityKey>,
    input: Vec<Ring>,
    submit: bool,
    round: Option<Round<ChaCha20Rng>>,
    /// Durable state: what a daemon keeps on disk.
    persisted: Vec<RevealEntry>,
    last_attempt: u32,
    incarnation: u64,
    timer: Option<(u64, u64)>,
    generation: u64,
    report: MemberReport,
}

/// A running simulation. See the module doc.
pub struct Sim {
    config: SimConfig,
    roster: Arc<Roster>,
    round_config: RoundConfig,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    now: u64,
    steps: u64,
    net: ChaCha20Rng,
    crash_used: Vec<bool>,
    pending_restarts: usize,
    interceptor: Option<Interceptor>,
    last_stepped: Option<MemberId>,
}

/// The round number every simulation runs.
pub const SIM_ROUND: u64 = 7;

fn derive_seed(seed: u64, what: &str, index: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"primia sim seed");
    h.update(&seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(&index.to_le_bytes());
    *h.finalize().as_bytes()
}

impl Sim {
    /// Builds the consortium: deterministic identities and inputs, every
    /// member's round started at time 0 with its input submitted.
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        let identities: Vec<Arc<IdentityKey>> = (0..config.members as u64)
            .map(|i| {
                let seed = Secret32::from_bytes(derive_seed(config.seed, "identity", i));
                Arc::new(IdentityKey::from_seed(&seed))
            })
            .collect();
        let infos = identities
            .iter()
            .enumerate()
            .map(|(i, k)| MemberInfo {
                name: format!("hospital-{i}"),
                identity: k.public(),
                addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)],
            })
            .collect();
        let consortium =
            ConsortiumId::new("sim-consortium").map_err(|e| SimError::Setup(e.to_string()))?;
        let roster = Arc::new(
            Roster::new(consortium, infos, config.threshold)
                .map_err(|e| SimError::Setup(e.to_string()))?,
        );
        let round_config = RoundConfig {
            round: SIM_ROUND,
            vector_len: config.params + 1,
            collect_ms: config.collect_ms,
            leader_silence_ms: config.leader_silence_ms,
            max_attempts: config.max_attempts,
        };
        let mut by_id: Vec<Option<Arc<IdentityKey>>> = vec![None; config.members];
        for k in identities {
            let id = roster
                .id_of(&k.public())
                .ok_or_else(|| SimError::Setup("identity missing from roster".into()))?;
            by_id[id.index()] = Some(k);
        }
        let mut nodes = Vec::with_capacity(config.members);
        for (i, k) in by_id.into_iter().enumerate() {
            let identity = k.ok_or_else(|| SimError::Setup("roster id without identity".into()))?;
            let id = MemberId(i as u16);
            let mut data = ChaCha20Rng::from_seed(derive_seed(config.seed, "input", i as u64));
            let n_examples = 1 + data.next_u32() % 1000;
            let delta: Vec<f32> = (0..config.params)
                .map(|_| (data.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0)
                .collect();
            let mut input = Vec::new();
            fixed::encode_update(n_examples, &delta, &mut input)
                .map_err(|e| SimError::Setup(e.to_string()))?;
            nodes.push(Node {
                identity,
                input: input.clone(),
                submit: !config.without_input.contains(&id),
                round: None,
                persisted: Vec::new(),
                last_attempt: 0,
                incarnation: 0,
                timer: None,
                generation: 0,
                report: MemberReport {
                    id,
                    input,
                    outcome: None,
                    round_failed: false,
                    alive: true,
                    crashes: 0,
                    log: Vec::new(),
                },
            });
        }
        let mut sim = Self {
            net: ChaCha20Rng::from_seed(derive_seed(config.seed, "network", 0)),
            crash_used: vec![false; config.crashes.len()],
            config,
            roster,
            round_config,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            steps: 0,
            pending_restarts: 0,
            interceptor: None,
            last_stepped: None,
        };
        for (index, c) in sim.config.crashes.clone().iter().enumerate() {
            if let CrashPoint::AtMillis(at) = c.at {
                sim.push(at, Item::Crash { index });
            }
        }
        for i in 0..sim.nodes.len() {
            sim.boot(MemberId(i as u16), 0)?;
        }
        Ok(sim)
    }

    /// The roster.
    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// A member's identity (to sign forged messages in adversarial tests).
    pub fn identity(&self, member: MemberId) -> &Arc<IdentityKey> {
        &self.nodes[member.index()].identity
    }

    /// A member's round, while it runs.
    pub fn round(&self, member: MemberId) -> Option<&Round<ChaCha20Rng>> {
        self.nodes.get(member.index())?.round.as_ref()
    }

    /// The round configuration every member uses.
    pub fn round_config(&self) -> RoundConfig {
        self.round_config
    }

    /// Virtual time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Installs a function that sees every message entering the network.
    pub fn set_interceptor(&mut self, f: impl FnMut(&Intercept<'_>) -> Verdict + 'static) {
        self.interceptor = Some(Box::new(f));
    }

    /// Runs until every running member is done and no restart is pending,
    /// or nothing is left to happen.
    pub fn run(&mut self) -> Result<Report, SimError> {
        while !self.all_done() {
            if !self.step()? {
                break;
            }
        }
        Ok(self.report())
    }

    /// Runs until `stop` holds (checked before each step) or nothing is
    /// left to happen.
    pub fn run_until(&mut self, mut stop: impl FnMut(&Sim) -> bool) -> Result<(), SimError> {
        while !stop(self) {
            if !self.step()? {
                break;
            }
        }
        Ok(())
    }

    /// Whether every running member is done and no restart is pending.
    pub fn all_done(&self) -> bool {
        self.pending_restarts == 0
            && self
                .nodes
                .iter()
                .all(|n| n.round.as_ref().is_none_or(Round::is_done))
    }

    /// Delivers `bytes` to `to` as if `from` sent them, now, bypassing the
    /// network; returns the events it produced.
    pub fn inject(&mut self, to: MemberId, from: MemberId, bytes: &[u8]) -> Vec<Event> {
        let before = self.nodes[to.index()].report.log.len();
        if let Some(round) = self.nodes[to.index()].round.as_mut() {
            round.handle_message(Instant::from_millis(self.now), from, bytes);
        }
        self.pump(to);
        self.nodes[to.index()].report.log[before..]
            .iter()
            .filter_map(|l| match l {
                LogEntry::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// The member whose round the last [`Self::step`] ran, if any: a bench
    /// times each step and charges it to that member.
    pub fn last_stepped(&self) -> Option<MemberId> {
        self.last_stepped
    }

    /// One event off the queue; `false` when the queue is empty.
    pub fn step(&mut self) -> Result<bool, SimError> {
        self.last_stepped = None;
        let Some(Reverse(q)) = self.queue.pop() else {
            return Ok(false);
        };
        self.steps += 1;
        if self.steps > self.config.max_steps {
            return Err(SimError::Livelock { steps: self.steps });
        }
        self.now = self.now.max(q.at);
        let now = Instant::from_millis(self.now);
        match q.item {
            Item::Deliver { to, from, bytes } => {
                if let Some(round) = self.nodes[to.index()].round.as_mut() {
                    // Both ways a driver may hand bytes over, alternately.
                    if q.seq % 2 == 0 {
                        round.handle_owned_message(now, from, bytes);
                    } else {
                        round.handle_message(now, from, &bytes);
                    }
                    self.pump(to);
                    self.last_stepped = Some(to);
                }
            }
            Item::Timer { member, generation } => {
                let node = &mut self.nodes[member.index()];
                if node.generation == generation
                    && let Some(round) = node.round.as_mut()
                {
                    node.timer = None;
                    round.handle_timeout(now);
                    self.pump(member);
                    self.last_stepped = Some(member);
                }
            }
            Item::Crash { index } => {
                if !self.crash_used[index] {
                    self.crash_used[index] = true;
                    let member = self.config.crashes[index].member;
                    self.crash(member, index);
                }
            }
            Item::Restart { member } => {
                self.pending_restarts -= 1;
                let attempt = self.nodes[member.index()].last_attempt;
                self.boot(member, attempt)?;
            }
        }
        Ok(true)
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        Report {
            members: self.nodes.iter().map(|n| n.report.clone()).collect(),
            steps: self.steps,
            end_ms: self.now,
            threshold: self.roster.threshold(),
        }
    }

    fn push(&mut self, at: u64, item: Item) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            item,
        }));
    }

    /// Starts (or restarts) a member's round from its durable state.
    fn boot(&mut self, member: MemberId, attempt: u32) -> Result<(), SimError> {
        let now = Instant::from_millis(self.now);
        let node = &mut self.nodes[member.index()];
        node.incarnation += 1;
        let rng = ChaCha20Rng::from_seed(derive_seed(
            self.config.seed,
            "member",
            (u64::from(member.0) << 32) | node.incarnation,
        ));
        let record = RevealRecord::from_entries(SIM_ROUND, &node.persisted)
            .map_err(|c| SimError::Setup(format!("conflicting persisted reveals: {c:?}")))?;
        let mut round = Round::resume(
            Arc::clone(&self.roster),
            Arc::clone(&node.identity),
            self.round_config,
            rng,
            now,
            record,
            attempt,
        )
        .map_err(|e| SimError::Setup(e.to_string()))?;
        if node.submit {
            round
                .submit_input(now, node.input.clone())
                .map_err(|e| SimError::Setup(e.to_string()))?;
        }
        if node.incarnation > 1 {
            node.report.log.push(LogEntry::Restarted {
                at_ms: self.now,
                attempt,
            });
        }
        node.round = Some(round);
        node.report.alive = true;
        self.pump(member);
        Ok(())
    }

    /// Kills a member: its state is gone, its durable state stays.
    fn crash(&mut self, member: MemberId, index: usize) {
        let node = &mut self.nodes[member.index()];
        if node.round.is_none() {
            return;
        }
        node.round = None;
        node.timer = None;
        node.generation += 1;
        node.report.alive = false;
        node.report.crashes += 1;
        node.report.log.push(LogEntry::Crashed { at_ms: self.now });
        if let Some(after) = self.config.crashes[index].restart_after_ms {
            self.pending_restarts += 1;
            let at = self.now + after;
            self.push(at, Item::Restart { member });
        }
    }

    /// The first unused crash of `member` whose point matches.
    fn crash_due(&self, member: MemberId, hit: impl Fn(&CrashPoint) -> bool) -> Option<usize> {
        self.config
            .crashes
            .iter()
            .enumerate()
            .find(|(i, c)| !self.crash_used[*i] && c.member == member && hit(&c.at))
            .map(|(i, _)| i)
    }

    /// Drains a member's outputs into the network and its log, then
    /// reschedules its timer.
    fn pump(&mut self, member: MemberId) {
        loop {
            let Some(round) = self.nodes[member.index()].round.as_mut() else {
                return;
            };
            let Some(output) = round.poll_output() else {
                break;
            };
            let crash = match &output {
                Output::Event(Event::PhaseChanged { attempt, phase }) => {
                    self.crash_due(member, |p| {
                        *p == CrashPoint::OnPhase {
                            attempt: *attempt,
                            phase: *phase,
                        }
                    })
                }
                Output::PersistReveal(e) => {
                    // Durable first, exactly as a daemon must.
                    self.nodes[member.index()].persisted.push(e.clone());
                    self.crash_due(member, |p| {
                        *p == CrashPoint::AfterPersist { attempt: e.attempt }
                    })
                }
                Output::Send { message, .. } | Output::Broadcast { message } => {
                    self.crash_due(member, |p| {
                        *p == CrashPoint::BeforeSend {
                            attempt: message.attempt,
                            kind: message.kind,
                        }
                    })
                }
                Output::Event(_) => None,
            };
            let is_send = matches!(output, Output::Send { .. } | Output::Broadcast { .. });
            if let (Some(index), true) = (crash, is_send) {
                self.crash_used[index] = true;
                self.crash(member, index);
                return;
            }
            self.record(member, output);
            if let Some(index) = crash {
                self.crash_used[index] = true;
                self.crash(member, index);
                return;
            }
        }
        self.reschedule(member);
    }

    fn record(&mut self, member: MemberId, output: Output) {
        let now = self.now;
        let node = &mut self.nodes[member.index()];
        match output {
            Output::Event(e) => {
                match &e {
                    Event::AttemptStarted { attempt, .. } => node.last_attempt = *attempt,
                    Event::Finished(o) => node.report.outcome = Some(o.clone()),
                    Event::RoundFailed { .. } => node.report.round_failed = true,
                    _ => {}
                }
                node.report.log.push(LogEntry::Event(e));
            }
            Output::PersistReveal(e) => node.report.log.push(LogEntry::Persisted(e)),
            Output::Send { to, message } => {
                node.report.log.push(LogEntry::Sent {
                    at_ms: now,
                    to: Some(to),
                    kind: message.kind,
                    attempt: message.attempt,
                    bytes: message.bytes.clone(),
                });
                self.transmit(member, to, message.bytes);
            }
            Output::Broadcast { message } => {
                node.report.log.push(LogEntry::Sent {
                    at_ms: now,
                    to: None,
                    kind: message.kind,
                    attempt: message.attempt,
                    bytes: message.bytes.clone(),
                });
                for i in 0..self.nodes.len() {
                    let to = MemberId(i as u16);
                    if to != member {
                        self.transmit(member, to, message.bytes.clone());
                    }
                }
            }
        }
    }

    fn transmit(&mut self, from: MemberId, to: MemberId, bytes: WireBytes) {
        let mut bytes = bytes;
        if let Some(f) = self.interceptor.as_mut()
            && let Ok(d) = wire::decode(&bytes)
        {
            let verdict = f(&Intercept {
                now_ms: self.now,
                from,
                to,
                bytes: &bytes,
                message: &d.message,
            });
            match verdict {
                Verdict::Deliver => {}
                Verdict::Drop => return,
                Verdict::Replace(b) => bytes = WireBytes::new(b),
            }
        }
        let f = self.config.faults;
        if self.chance(f.drop) {
            return;
        }
        let copies = if self.chance(f.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let span = f.max_delay_ms.saturating_sub(f.min_delay_ms);
            let delay = f.min_delay_ms
                + if span == 0 {
                    0
                } else {
                    self.net.next_u64() % (span + 1)
                };
            let at = self.now + delay;
            self.push(
                at,
                Item::Deliver {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.net.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn reschedule(&mut self, member: MemberId) {
        let node = &mut self.nodes[member.index()];
        let Some(round) = node.round.as_ref() else {
            return;
        };
        let Some(at) = round.poll_timeout() else {
            node.timer = None;
            return;
        };
        let at = at.as_millis().max(self.now);
        if node.timer.is_some_and(|(t, _)| t == at) {
            return;
        }
        node.generation += 1;
        let generation = node.generation;
        node.timer = Some((at, generation));
        self.push(at, Item::Timer { member, generation });
    }
}
