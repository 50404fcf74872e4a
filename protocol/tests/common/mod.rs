//! Shared checks for the protocol's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use primia_protocol::sim::{Crash, CrashPoint, Faults, LogEntry, Report, Sim, SimConfig};
use primia_protocol::{Event, MemberId, MessageKind, Phase, ShareKind};

/// Runs a simulation to its end; a livelock or setup error fails the test.
pub fn run(config: SimConfig) -> Report {
    let desc = format!("{config:?}");
    let mut sim = Sim::new(config).unwrap_or_else(|e| panic!("setup failed: {e:?}\n{desc}"));
    sim.run()
        .unwrap_or_else(|e| panic!("simulation failed: {e:?}\n{desc}"))
}

/// Every member that finished has the same outcome, and it is the plain
/// fixed-point sum of its participants' inputs, bit for bit, with at least t
/// participants. Returns the number of members that finished.
pub fn check_outcomes(report: &Report) -> usize {
    let mut first = None;
    let mut finished = 0;
    for (id, o) in report.outcomes() {
        finished += 1;
        assert!(
            o.participants.len() >= report.threshold,
            "{id}: outcome with {} participants, threshold {}",
            o.participants.len(),
            report.threshold
        );
        let plain = report.plain_sum(&o.participants);
        assert!(
            o.sum == plain,
            "{id}: sum differs from the plain sum of {:?}",
            o.participants
        );
        match &first {
            None => first = Some(o.clone()),
            Some(f) => assert_eq!(f, o, "{id} finished with a different outcome"),
        }
    }
    finished
}

/// No member ever sent (or recorded) both kinds of share of one member in
/// one attempt; across all members of one attempt the self-mask owners and
/// the mask-key owners are disjoint; every reveal sent was persisted first.
pub fn check_privacy(report: &Report) {
    let mut by_attempt: BTreeMap<u32, BTreeMap<MemberId, ShareKind>> = BTreeMap::new();
    for m in &report.members {
        let mut persisted: BTreeMap<u32, BTreeMap<MemberId, ShareKind>> = BTreeMap::new();
        for l in &m.log {
            match l {
                LogEntry::Persisted(e) => {
                    let a = persisted.entry(e.attempt).or_default();
                    for (v, k) in &e.revealed {
                        if let Some(old) = a.insert(*v, *k) {
                            assert_eq!(
                                old, *k,
                                "{}: recorded both kinds for {v} in attempt {}",
                                m.id, e.attempt
                            );
                        }
                    }
                }
                LogEntry::Sent {
                    kind: MessageKind::UnmaskShares,
                    attempt,
                    ..
                } => {
                    assert!(
                        persisted.contains_key(attempt),
                        "{}: sent a reveal of attempt {attempt} before persisting it",
                        m.id
                    );
                }
                _ => {}
            }
        }
        for (attempt, pairs) in m.revealed_sent() {
            let recorded = &persisted[&attempt];
            for (v, k) in pairs {
                assert_eq!(
                    recorded.get(&v),
                    Some(&k),
                    "{}: sent a reveal it did not record",
                    m.id
                );
                let all = by_attempt.entry(attempt).or_default();
                if let Some(old) = all.insert(v, k) {
                    assert_eq!(
                        old, k,
                        "attempt {attempt}: both shares of {v} were revealed (by {})",
                        m.id
                    );
                }
            }
        }
    }
}

/// Members that never crashed.
pub fn never_crashed(report: &Report) -> Vec<MemberId> {
    report
        .members
        .iter()
        .filter(|m| m.crashes == 0)
        .map(|m| m.id)
        .collect()
}

/// The attempts in which a member saw `AttemptFailed`, with reasons.
pub fn failures(report: &Report, member: MemberId) -> Vec<(u32, String)> {
    report.members[member.index()]
        .events()
        .filter_map(|e| match e {
            Event::AttemptFailed { attempt, reason } => Some((*attempt, reason.to_string())),
            _ => None,
        })
        .collect()
}

/// A simple random number generator for schedules (tests only).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random crash point in attempt 0.
pub fn random_point(rng: &mut Lcg) -> CrashPoint {
    let phases = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::ConsistencyCheck,
        Phase::Unmask,
    ];
    let kinds = [
        MessageKind::AdvertiseKeys,
        MessageKind::EncryptedShares,
        MessageKind::MaskedInput,
        MessageKind::ConsistencySignature,
        MessageKind::UnmaskShares,
        MessageKind::KeysAnnounced,
        MessageKind::SharesForwarded,
        MessageKind::ConsistencyRequest,
        MessageKind::UnmaskRequest,
        MessageKind::Outcome,
    ];
    match rng.below(6) {
        // Dropping between the share step and the masked input is the case
        // that needs mask keys rebuilt: make it common.
        4 | 5 => CrashPoint::BeforeSend {
            attempt: 0,
            kind: MessageKind::MaskedInput,
        },
        0 => CrashPoint::AtMillis(rng.below(400)),
        1 => CrashPoint::OnPhase {
            attempt: 0,
            phase: phases[rng.below(phases.len() as u64) as usize],
        },
        2 => CrashPoint::BeforeSend {
            attempt: 0,
            kind: kinds[rng.below(kinds.len() as u64) as usize],
        },
        _ => CrashPoint::AfterPersist { attempt: 0 },
    }
}

/// A config with `crashes` random crashes (without restarts) of distinct
/// members.
pub fn with_random_crashes(
    members: usize,
    params: usize,
    seed: u64,
    crashes: usize,
    faults: Faults,
) -> SimConfig {
    let mut rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut config = SimConfig::new(members, params, seed);
    config.faults = faults;
    let mut chosen: Vec<u16> = Vec::new();
    while chosen.len() < crashes.min(members) {
        let m = rng.below(members as u64) as u16;
        if !chosen.contains(&m) {
            chosen.push(m);
        }
    }
    for m in chosen {
        config.crashes.push(Crash {
            member: MemberId(m),
            at: random_point(&mut rng),
            restart_after_ms: None,
        });
    }
    config
}

/// Members that sent their shares in the outcome's attempt but are not in
/// its sum (U2 \\ U3): their mask keys had to be rebuilt.
pub fn dropped_after_sharing(report: &Report) -> usize {
    let Some((_, o)) = report.outcomes().next() else {
        return 0;
    };
    report
        .members
        .iter()
        .filter(|m| !o.participants.contains(&m.id))
        .filter(|m| {
            m.log.iter().any(|l| {
                matches!(l, LogEntry::Sent { kind: MessageKind::EncryptedShares, attempt, .. } if *attempt == o.attempt)
            })
        })
        .count()
}
