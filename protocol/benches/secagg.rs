//! Cost of one whole secure-aggregation round: compute time of each member and
//! of the leader's aggregation, against the floor set by the mask PRG.
//!
//! `cargo bench -p primia-protocol --bench secagg`
//!
//! # What runs
//!
//! Real [`Round`]s, one per member, with the leader role inside one of them,
//! exchange real signed envelopes synchronously in one thread: a FIFO queue
//! of messages, no network, no simulator. Virtual time only moves when the
//! queue is empty (to close the leader's collection step after dropouts).
//! Every call into a round (`Round::new`, `submit_input`, `handle_message`,
//! `handle_timeout`) is timed and charged to the member whose round it is.
//! Each run checks the outcome of every finishing member against the plain
//! sum of the survivors' inputs, so a bench that computes the wrong thing
//! fails.
//!
//! Times are CPU time of this thread (`CLOCK_THREAD_CPUTIME_ID`), so other
//! processes on a busy machine do not inflate them; they still slow memory
//! and caches. Wall time is printed beside for comparison. Every figure is a
//! median over the runs (`SECAGG_RUNS`, default 5).
//!
//! # Figures
//!
//! - `member_ms`: a member's compute time for the whole round (keys, shares,
//!   masking, consistency, reveal, checking the outcome), median over the
//!   members that are not the leader and did not drop.
//! - `aggregate_ms`: the leader's calls that deliver masked inputs (decode,
//!   check the signature and add to the running sum in one pass) and
//!   reveals (parse the shares; with the t-th: rebuild the seeds and keys,
//!   remove the masks, encode and sign the outcome; after it, turn away the
//!   reveals beyond t). The leader's other work (relaying
//!   adverts and shares, checking consistency signatures) and its own member
//!   role are printed in the detail table, not in this figure.
//! - `floor_ms`: expand one mask into a vector (`prg::add_mask`, fused) plus
//!   add one vector (`add_assign`), measured in the same run before and
//!   after every round (median of those medians of 7).
//!
//! Floors: a member expands N masks (its self mask and N - 1 pairwise masks),
//! so its floor is N x `floor_ms`. The leader adds |U3| vectors and expands
//! |U3| self masks plus, for every dropped member, one pairwise mask with
//! each survivor: `agg_floor = |U3| x add + (|U3| + |dropped| x |U3|) x mask`.
//! The target is to stay within 3x of both.
//!
//! Dropout 0.3 means 30% of the members (never the leader) drop after
//! sending their shares and before their masked input: their pairwise masks
//! with every survivor must be rebuilt and removed, the expensive case.
//!
//! The detail table also gives, inside `aggregate_ms`, the signature checks
//! of the masked inputs and reveals the leader accepted (timed again on their
//! own, on the same envelopes) and the aggregation without them: checking
//! one masked input hashes all of it (blake3, then one ed25519
//! verification), which costs about 1.7 floor units by itself, so with the
//! checks included `aggregate_ms` cannot come near its floor.
//!
//! # Measured
//!
//! On the project's 2-core AMD EPYC (Zen 4, AVX-512) VM, shared with other
//! builds (load average 6.6-6.8 during the run), 5 runs each, ms of CPU:
//!
//! ```text
//! secagg members=10 params=1000000 dropout=0.0 member_ms=29.80 aggregate_ms=45.69 floor_ms=1.852
//! secagg members=10 params=1000000 dropout=0.3 member_ms=29.57 aggregate_ms=57.60 floor_ms=1.788
//! secagg members=100 params=100000 dropout=0.0 member_ms=35.54 aggregate_ms=46.22 floor_ms=0.154
//! secagg members=100 params=100000 dropout=0.3 member_ms=34.07 aggregate_ms=442.07 floor_ms=0.154
//! ```
//!
//! Members stay within 1.6-2.3x of N x floor; a member of 100 spends about
//! as much on its 198 x25519 agreements and ~150 signature checks as on its
//! 100 masks. The aggregation is within 1.4-1.5x of its floor with dropouts
//! (the 2,100 x25519 agreements to rebuild pairwise seeds are the excess),
//! 2.5x and 3.0x without; without the signature checks it would be 1.2-1.7x.
//! At load 9-12 the same code measured up to 0.5 higher ratios; 100 members
//! without dropouts then ranged 2.8-3.5x.
//!
//! # Against Bonawitz et al. (CCS 2017)
//!
//! They report about 0.85 s of client computation for 500 members and
//! 100,000 parameters. One run of this bench at that size
//! (`SECAGG_SIZES=500x100000 SECAGG_DROPOUTS=0 SECAGG_RUNS=1`, load 8-14)
//! gave `member_ms=196.02` (N x floor = 99 ms: 500 masks, then 998 x25519
//! agreements and ~750 signature checks) and `aggregate_ms=359.68` (115 ms of
//! it signature checks): a member about 4x faster than their client, with
//! the same shape of cost, linear in members x parameters and bounded below
//! by mask expansion.

use std::collections::{BTreeMap, VecDeque};
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::Duration;

use primia_crypto::{
    AgreementPublic, AgreementSecret, IdentityKey, PublicIdentity, Ring, Secret32, Signature,
    add_assign, fixed, kdf, prg,
};
use primia_protocol::{
    ConsortiumId, Event, Instant, MemberId, MemberInfo, MessageKind, Outcome, Output, RejectReason,
    Roster, Round, RoundConfig, Threshold, WireBytes, wire,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const ROUND: u64 = 1;

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a valid, exclusive
    // pointer and reads nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU and wall time of some work.
#[derive(Clone, Copy, Default, Debug)]
struct Cost {
    cpu: Duration,
    wall: Duration,
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.cpu += o.cpu;
        self.wall += o.wall;
    }
}

impl Cost {
    fn cpu_ms(self) -> f64 {
        self.cpu.as_secs_f64() * 1e3
    }
    fn wall_ms(self) -> f64 {
        self.wall.as_secs_f64() * 1e3
    }
}

/// Runs `f` and returns its result and cost.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let wall = std::time::Instant::now();
    let cpu = thread_cpu();
    let out = f();
    let cost = Cost {
        cpu: thread_cpu() - cpu,
        wall: wall.elapsed(),
    };
    (out, cost)
}

fn median(mut xs: Vec<f64>) -> f64 {
    assert!(!xs.is_empty());
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

/// A consortium and its members' inputs, built once per size.
struct Consortium {
    roster: Arc<Roster>,
    identities: Vec<Arc<IdentityKey>>,
    inputs: Vec<Vec<Ring>>,
    leader: MemberId,
    params: usize,
}

impl Consortium {
    fn new(members: usize, params: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(members as u64 * 7919 + params as u64);
        let keys: Vec<Arc<IdentityKey>> = (0..members)
            .map(|_| Arc::new(IdentityKey::generate(&mut rng)))
            .collect();
        let infos = keys
            .iter()
            .enumerate()
            .map(|(i, k)| MemberInfo {
                name: format!("hospital-{i}"),
                identity: k.public(),
                addresses: Vec::new(),
            })
            .collect();
        let roster = Arc::new(
            Roster::new(
                ConsortiumId::new("bench").unwrap(),
                infos,
                Threshold::Majority,
            )
            .unwrap(),
        );
        let mut identities = vec![None; members];
        for k in keys {
            let id = roster.id_of(&k.public()).unwrap();
            identities[id.index()] = Some(k);
        }
        let identities: Vec<Arc<IdentityKey>> =
            identities.into_iter().map(Option::unwrap).collect();
        let inputs = (0..members)
            .map(|_| {
                let delta: Vec<f32> = (0..params)
                    .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 0.2 - 0.1)
                    .collect();
                let mut x = Vec::new();
                fixed::encode_update(1 + rng.next_u32() % 1000, &delta, &mut x).unwrap();
                x
            })
            .collect();
        let leader = roster.leader(ROUND, 0);
        Self {
            roster,
            identities,
            inputs,
            leader,
            params,
        }
    }

    fn len(&self) -> usize {
        self.identities.len()
    }

    /// The members that drop at `dropout`: the highest ids, never the leader.
    fn dropped(&self, dropout: f64) -> Vec<bool> {
        let n = self.len();
        let k = (n as f64 * dropout).round() as usize;
        let mut dropped = vec![false; n];
        let candidates = (0..n).rev().filter(|&i| i != self.leader.index());
        for i in candidates.take(k) {
            dropped[i] = true;
        }
        dropped
    }
}

/// What one round cost.
struct RunCosts {
    /// Per member, everything its round did.
    member: Vec<Cost>,
    /// Per member, its calls by the kind of message delivered.
    member_parts: Vec<BTreeMap<&'static str, Cost>>,
    /// The part of the aggregation that checks others' signatures,
    /// measured apart (see [`signature_checks`]).
    signature_checks: Cost,
    /// The leader's calls, by the kind of message delivered ("timeout" and
    /// "start" for the other calls).
    leader: BTreeMap<&'static str, Cost>,
}

fn kind_label(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::AdvertiseKeys => "advertise_keys",
        MessageKind::KeysAnnounced => "keys_announced",
        MessageKind::EncryptedShares => "encrypted_shares",
        MessageKind::SharesForwarded => "shares_forwarded",
        MessageKind::MaskedInput => "masked_input",
        MessageKind::ConsistencyRequest => "consistency_request",
        MessageKind::ConsistencySignature => "consistency_signature",
        MessageKind::UnmaskRequest => "unmask_request",
        MessageKind::UnmaskShares => "unmask_shares",
        MessageKind::Outcome => "outcome",
        MessageKind::AttemptAborted => "attempt_aborted",
    }
}

struct Net {
    queue: VecDeque<(MemberId, MemberId, MessageKind, WireBytes)>,
    dropped: Vec<bool>,
    dead: Vec<bool>,
    outcomes: Vec<Option<Outcome>>,
}

impl Net {
    /// Moves `from`'s outputs onto the queue. A member that drops dies when
    /// it is about to send its masked input: that and everything after is
    /// lost. Anything but a clean round is a bench failure.
    fn drain(&mut self, from: MemberId, round: &mut Round<ChaCha20Rng>, n: usize) {
        while let Some(out) = round.poll_output() {
            let i = from.index();
            match out {
                Output::Send { to, message } => {
                    if self.dropped[i] && message.kind == MessageKind::MaskedInput {
                        self.dead[i] = true;
                    }
                    if !self.dead[i] {
                        self.queue
                            .push_back((from, to, message.kind, message.bytes));
                    }
                }
                Output::Broadcast { message } => {
                    if self.dead[i] {
                        continue;
                    }
                    for j in (0..n).filter(|&j| j != i) {
                        self.queue.push_back((
                            from,
                            MemberId(j as u16),
                            message.kind,
                            message.bytes.clone(),
                        ));
                    }
                }
                Output::PersistReveal(_) => {}
                Output::Event(Event::Finished(o)) => self.outcomes[i] = Some(o),
                // The leader finishes with the first t reveals; later ones
                // find the round over.
                Output::Event(Event::Rejected {
                    reason: RejectReason::RoundOver,
                    ..
                }) => {}
                Output::Event(
                    e @ (Event::Rejected { .. }
                    | Event::AttemptFailed { .. }
                    | Event::RoundFailed { .. }
                    | Event::EncodeFailed { .. }
                    | Event::RevealWithheld { .. }),
                ) => panic!("{from}: unexpected {e:?}"),
                Output::Event(_) => {}
            }
        }
    }
}

/// Runs one round and checks its outcome.
fn run_round(c: &Consortium, dropout: f64, seed: u64) -> RunCosts {
    let n = c.len();
    let leader = c.leader;
    let config = RoundConfig::new(ROUND, c.params + 1);
    let mut now = Instant::from_millis(0);
    let mut net = Net {
        queue: VecDeque::new(),
        dropped: c.dropped(dropout),
        dead: vec![false; n],
        outcomes: vec![None; n],
    };
    let mut member = vec![Cost::default(); n];
    let mut parts: Vec<BTreeMap<&'static str, Cost>> = vec![BTreeMap::new(); n];
    // The envelopes whose signatures the aggregation checked.
    let mut checked = Vec::new();
    let mut lead: BTreeMap<&'static str, Cost> = BTreeMap::new();
    let mut rounds = Vec::with_capacity(n);
    for (i, spent) in member.iter_mut().enumerate() {
        let id = MemberId(i as u16);
        let input = c.inputs[i].clone();
        let rng = ChaCha20Rng::seed_from_u64(seed.wrapping_mul(1_000_003) + i as u64);
        let (mut round, cost) = timed(|| {
            let mut r = Round::new(
                Arc::clone(&c.roster),
                Arc::clone(&c.identities[i]),
                config,
                rng,
                now,
            )
            .unwrap();
            r.submit_input(now, input).unwrap();
            r
        });
        *spent += cost;
        *parts[i].entry("start").or_default() += cost;
        if id == leader {
            *lead.entry("start").or_default() += cost;
        }
        net.drain(id, &mut round, n);
        rounds.push(round);
    }
    let mut timeouts = 0;
    loop {
        while let Some((from, to, kind, bytes)) = net.queue.pop_front() {
            let j = to.index();
            if net.dead[j] {
                continue;
            }
            let was_done = rounds[j].is_done();
            if to == leader
                && !was_done
                && matches!(kind, MessageKind::MaskedInput | MessageKind::UnmaskShares)
            {
                checked.push(bytes.clone());
            }
            // As a driver hands over a buffer fresh from the network.
            let ((), cost) = timed(|| rounds[j].handle_owned_message(now, from, bytes));
            member[j] += cost;
            *parts[j].entry(kind_label(kind)).or_default() += cost;
            if to == leader {
                // The call that finished the round did the unmasking; later
                // ones only turn away reveals beyond the first t.
                let label = match (was_done, rounds[j].is_done()) {
                    (true, _) => "late (after the outcome)",
                    (false, true) => "unmask (rebuild, unmask, outcome)",
                    (false, false) => kind_label(kind),
                };
                *lead.entry(label).or_default() += cost;
            }
            net.drain(to, &mut rounds[j], n);
        }
        let alive = (0..n).filter(|&i| !net.dead[i]);
        if alive.clone().all(|i| rounds[i].is_done()) {
            break;
        }
        timeouts += 1;
        assert!(timeouts < 10, "the round does not finish");
        now = alive
            .filter_map(|i| rounds[i].poll_timeout())
            .min()
            .expect("a running round has a deadline");
        for i in 0..n {
            if !net.dead[i] && rounds[i].poll_timeout().is_some_and(|d| d <= now) {
                let ((), cost) = timed(|| rounds[i].handle_timeout(now));
                member[i] += cost;
                *parts[i].entry("timeout").or_default() += cost;
                if MemberId(i as u16) == leader {
                    *lead.entry("timeout").or_default() += cost;
                }
                net.drain(MemberId(i as u16), &mut rounds[i], n);
            }
        }
    }
    check_outcomes(c, &net);
    RunCosts {
        member,
        member_parts: parts,
        leader: lead,
        signature_checks: signature_checks(c, &checked),
    }
}

/// The signature checks inside the aggregation, timed again on their own:
/// each masked input and reveal the leader accepted, verified once more
/// with the same key (decoding not timed).
fn signature_checks(c: &Consortium, envelopes: &[WireBytes]) -> Cost {
    let mut total = Cost::default();
    for bytes in envelopes {
        let d = wire::decode(bytes).unwrap();
        let key = c.roster.member(d.message.header.sender).unwrap().identity;
        let (r, cost) = timed(|| d.verify(&key));
        r.unwrap();
        total += cost;
    }
    total
}

/// Every member that did not drop finished with the plain sum of the
/// survivors' inputs.
fn check_outcomes(c: &Consortium, net: &Net) {
    let survivors: Vec<MemberId> = (0..c.len())
        .filter(|&i| !net.dropped[i])
        .map(|i| MemberId(i as u16))
        .collect();
    let mut plain = vec![0; c.params + 1];
    for s in &survivors {
        add_assign(&mut plain, &c.inputs[s.index()]);
    }
    for s in &survivors {
        let o = net.outcomes[s.index()]
            .as_ref()
            .unwrap_or_else(|| panic!("{s} did not finish"));
        assert_eq!(o.participants, survivors, "{s}: wrong participants");
        assert!(o.sum == plain, "{s}: the sum is not the plain sum");
    }
}

/// The floor's parts, in ms of CPU: one fused mask expansion and one vector
/// addition over `len` entries.
fn floor_parts(len: usize) -> (f64, f64) {
    let seed = Secret32::from_bytes([7; 32]);
    let mut acc = vec![0u64; len];
    let x: Vec<Ring> = (0..len as u64).collect();
    let mut mask = Vec::new();
    let mut add = Vec::new();
    for _ in 0..7 {
        let ((), m) = timed(|| prg::add_mask(&seed, &mut acc));
        let ((), a) = timed(|| add_assign(&mut acc, &x));
        mask.push(m.cpu_ms());
        add.push(a.cpu_ms());
    }
    std::hint::black_box(&acc);
    (median(mask), median(add))
}

/// Other costs a round cannot avoid, in ms of CPU, for the detail table:
/// checking the signature of one envelope of `len` entries (a blake3 pass
/// and an ed25519 verification), one small-message verification and one
/// x25519 agreement.
fn primitive_costs(len: usize) -> (f64, f64, f64) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let key = IdentityKey::generate(&mut rng);
    let public = key.public();
    let big = vec![0x5a_u8; len * 8];
    let big_sig = key.sign(kdf::MESSAGE_SIGNATURE, &big);
    // Twenty different signers and messages, as in a round (the same
    // signature over and over verifies faster than any real sequence).
    let small: Vec<(PublicIdentity, [u8; 100], Signature)> = (0..20u8)
        .map(|i| {
            let k = IdentityKey::generate(&mut rng);
            let m = [i; 100];
            let sig = k.sign(kdf::MESSAGE_SIGNATURE, &m);
            (k.public(), m, sig)
        })
        .collect();
    let a = AgreementSecret::generate(&mut rng);
    let peers: Vec<AgreementPublic> = (0..20)
        .map(|_| AgreementSecret::generate(&mut rng).public())
        .collect();
    let (mut v_big, mut v_small, mut dh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        let (r, c) = timed(|| public.verify(kdf::MESSAGE_SIGNATURE, &big, &big_sig));
        r.unwrap();
        v_big.push(c.cpu_ms());
        let (r, c) = timed(|| {
            for (k, m, sig) in &small {
                k.verify(kdf::MESSAGE_SIGNATURE, m, sig)?;
            }
            Ok::<(), primia_crypto::CryptoError>(())
        });
        r.unwrap();
        v_small.push(c.cpu_ms() / 20.0);
        let (r, c) = timed(|| {
            peers
                .iter()
                .map(|b| a.agree(b).map(drop))
                .collect::<Result<Vec<()>, _>>()
        });
        r.unwrap();
        dh.push(c.cpu_ms() / 20.0);
    }
    (median(v_big), median(v_small), median(dh))
}

struct Summary {
    members: usize,
    params: usize,
    dropout: f64,
    member_ms: f64,
    aggregate_ms: f64,
    floor_ms: f64,
}

fn bench(c: &Consortium, dropout: f64, runs: usize) -> Summary {
    let n = c.len();
    let dropped = c.dropped(dropout);
    let survivors = n - dropped.iter().filter(|d| **d).count();
    let k = n - survivors;
    let len = c.params + 1;
    let mut mask_ms = Vec::new();
    let mut add_ms = Vec::new();
    let mut member_cpu = Vec::new();
    let mut member_wall = Vec::new();
    let mut member_max = Vec::new();
    let mut agg_cpu = Vec::new();
    let mut agg_wall = Vec::new();
    let mut sig_cpu = Vec::new();
    let mut leader_parts: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut leader_total = Vec::new();
    let mut member_parts: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    // One warm-up round, not counted.
    run_round(c, dropout, 1_000);
    for run in 0..runs {
        let (m, a) = floor_parts(len);
        mask_ms.push(m);
        add_ms.push(a);
        let costs = run_round(c, dropout, run as u64);
        // The floor on both sides of each round, so it sees the same load.
        let (m, a) = floor_parts(len);
        mask_ms.push(m);
        add_ms.push(a);
        let measured: Vec<Cost> = (0..n)
            .filter(|&i| !dropped[i] && i != c.leader.index())
            .map(|i| costs.member[i])
            .collect();
        member_cpu.push(median(measured.iter().map(|c| c.cpu_ms()).collect()));
        member_wall.push(median(measured.iter().map(|c| c.wall_ms()).collect()));
        member_max.push(measured.iter().map(|c| c.cpu_ms()).fold(0.0, f64::max));
        for i in (0..n).filter(|&i| !dropped[i] && i != c.leader.index()) {
            for (kind, cost) in &costs.member_parts[i] {
                member_parts.entry(kind).or_default().push(cost.cpu_ms());
            }
        }
        let mut agg = Cost::default();
        for kind in [
            "masked_input",
            "unmask_shares",
            "unmask (rebuild, unmask, outcome)",
            "late (after the outcome)",
        ] {
            if let Some(c) = costs.leader.get(kind) {
                agg += *c;
            }
        }
        agg_cpu.push(agg.cpu_ms());
        sig_cpu.push(costs.signature_checks.cpu_ms());
        agg_wall.push(agg.wall_ms());
        let mut total = 0.0;
        for (kind, cost) in &costs.leader {
            leader_parts.entry(kind).or_default().push(cost.cpu_ms());
            total += cost.cpu_ms();
        }
        leader_total.push(total);
    }
    let (mask, add) = (median(mask_ms), median(add_ms));
    let floor_ms = mask + add;
    let member_floor = n as f64 * floor_ms;
    let agg_floor = survivors as f64 * add + (survivors + k * survivors) as f64 * mask;
    let s = Summary {
        members: n,
        params: c.params,
        dropout,
        member_ms: median(member_cpu),
        aggregate_ms: median(agg_cpu),
        floor_ms,
    };
    println!(
        "\n== members={n} params={} dropout={dropout:.1} (t={}, {k} dropped, {survivors} survive, leader {}, {runs} runs) ==",
        c.params,
        c.roster.threshold(),
        c.leader
    );
    println!("floor: mask {mask:.3} ms + add {add:.3} ms = {floor_ms:.3} ms");
    let (v_big, v_small, dh) = primitive_costs(len);
    println!(
        "beside the floor: verify one masked input {v_big:.3} ms, verify a small message {:.1} us, x25519 {:.1} us",
        v_small * 1e3,
        dh * 1e3
    );
    println!(
        "member:    cpu {:9.2} ms  wall {:9.2} ms  slowest {:9.2} ms  floor N x floor = {member_floor:9.2} ms  ratio {:.2}",
        s.member_ms,
        median(member_wall),
        median(member_max),
        s.member_ms / member_floor
    );
    println!(
        "aggregate: cpu {:9.2} ms  wall {:9.2} ms  floor {} adds + {} masks = {agg_floor:9.2} ms  ratio {:.2}",
        s.aggregate_ms,
        median(agg_wall),
        survivors,
        survivors + k * survivors,
        s.aggregate_ms / agg_floor
    );
    let sig = median(sig_cpu);
    println!(
        "  of which signature checks of {} masked inputs and {} reveals: {sig:9.2} ms; without them {:9.2} ms, ratio {:.2}",
        survivors - 1,
        c.roster.threshold() - 1,
        s.aggregate_ms - sig,
        (s.aggregate_ms - sig) / agg_floor
    );
    println!("member, by message delivered (median over members and runs):");
    for (kind, xs) in member_parts {
        println!("    {kind:<34} {:9.2} ms", median(xs));
    }
    println!(
        "leader round, all calls: cpu {:9.2} ms, by message delivered:",
        median(leader_total)
    );
    for (kind, xs) in leader_parts {
        println!("    {kind:<34} {:9.2} ms", median(xs));
    }
    s
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing.
    let runs: usize = std::env::var("SECAGG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    // `SECAGG_SIZES=10x1000000,100x100000` (members x parameters).
    let sizes: Vec<(usize, usize)> = std::env::var("SECAGG_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|p| {
                    let (m, k) = p.split_once('x').expect("SECAGG_SIZES: MEMBERSxPARAMS");
                    (m.trim().parse().unwrap(), k.trim().parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_else(|| vec![(10, 1_000_000), (100, 100_000)]);
    // `SECAGG_DROPOUTS=0.3` (fractions).
    let dropouts: Vec<f64> = std::env::var("SECAGG_DROPOUTS")
        .ok()
        .map(|v| v.split(',').map(|d| d.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![0.0, 0.3]);
    let mut summaries = Vec::new();
    for (members, params) in sizes {
        let c = Consortium::new(members, params);
        for &dropout in &dropouts {
            summaries.push(bench(&c, dropout, runs));
        }
    }
    println!();
    for s in summaries {
        println!(
            "secagg members={} params={} dropout={:.1} member_ms={:.2} aggregate_ms={:.2} floor_ms={:.3}",
            s.members, s.params, s.dropout, s.member_ms, s.aggregate_ms, s.floor_ms
        );
    }
}
