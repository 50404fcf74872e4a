//! Whole rounds in the simulator: sums are exact, dropouts are survived,
//! failed attempts move on to the next leader with fresh keys.

mod common;

use common::{check_outcomes, check_privacy, failures, never_crashed, run, with_random_crashes};
use primia_protocol::sim::{Crash, CrashPoint, Faults, SimConfig};
use primia_protocol::{Event, MemberId, Phase};

#[test]
fn all_members_finish_with_the_exact_sum() {
    for members in [3, 5, 10] {
        let report = run(SimConfig::new(members, 16, 1));
        assert_eq!(check_outcomes(&report), members, "n = {members}");
        let o = report.members[0].outcome.as_ref().unwrap();
        assert_eq!(o.participants.len(), members);
        assert_eq!(o.attempt, 0);
        check_privacy(&report);
    }
}

/// `Round::outcome`, decoded from the kept envelope, is the outcome the
/// `Finished` event carried, for the leader and for the other members.
#[test]
fn the_outcome_accessor_matches_the_finished_event() {
    let mut sim = primia_protocol::sim::Sim::new(SimConfig::new(5, 300, 4)).unwrap();
    let report = sim.run().unwrap();
    assert_eq!(check_outcomes(&report), 5);
    for m in &report.members {
        let round = sim.round(m.id).expect("a finished round is kept");
        assert_eq!(round.outcome(), m.outcome.as_ref(), "{}", m.id);
    }
}

fn lossless_jitter() -> Faults {
    Faults {
        drop: 0.0,
        duplicate: 0.0,
        min_delay_ms: 1,
        max_delay_ms: 20,
    }
}

/// Random crash schedules that leave at least t members: every survivor
/// finishes, all with the plain sum of the same participants, and some
/// schedules drop members between their shares and their input, so their
/// mask keys must be rebuilt.
fn dropout_schedules(members: usize, seeds: u64, params: usize) {
    let t = members.div_ceil(2) + 1;
    let mut finished_with_dropouts = 0;
    let mut rebuilt_mask_keys = 0;
    for seed in 0..seeds {
        let crashes = (seed as usize) % (members - t + 1);
        let mut config = with_random_crashes(members, params, seed, crashes, lossless_jitter());
        config.max_attempts = 4 + crashes as u32;
        let report = run(config);
        check_outcomes(&report);
        check_privacy(&report);
        for id in never_crashed(&report) {
            let m = &report.members[id.index()];
            assert!(
                m.outcome.is_some(),
                "n = {members}, seed {seed}: {id} never crashed but did not finish: {:?}",
                failures(&report, id)
            );
        }
        let o = report.outcomes().next().map(|(_, o)| o.clone()).unwrap();
        if o.participants.len() < members {
            finished_with_dropouts += 1;
        }
        rebuilt_mask_keys += common::dropped_after_sharing(&report);
    }
    assert!(
        finished_with_dropouts > 0,
        "n = {members}: no schedule had a dropout in the sum"
    );
    assert!(
        rebuilt_mask_keys > 0,
        "n = {members}: no schedule dropped a member between shares and input"
    );
}

/// With three members t = 3: a member lost before the unmask step fails the
/// attempt; once it is back (restarted from durable state) a later attempt
/// finishes with everyone. A crash after the reveal costs nothing.
#[test]
fn dropouts_of_3_members() {
    let mut recovered = 0;
    for seed in 0..30u64 {
        let mut rng = common::Lcg(seed);
        let mut config = SimConfig::new(3, 8, seed);
        config.faults = lossless_jitter();
        config.max_attempts = 20;
        let member = MemberId(rng.below(3) as u16);
        config.crashes.push(Crash {
            member,
            at: common::random_point(&mut rng),
            restart_after_ms: Some(200 + rng.below(1000)),
        });
        let report = run(config);
        check_outcomes(&report);
        check_privacy(&report);
        for m in &report.members {
            assert!(
                m.outcome.is_some(),
                "seed {seed}: {} did not finish: {:?}",
                m.id,
                failures(&report, m.id)
            );
        }
        if report.members[0].outcome.as_ref().unwrap().attempt > 0 {
            recovered += 1;
        }
    }
    assert!(recovered > 0, "no schedule needed a second attempt");
}

#[test]
fn dropouts_of_5_members() {
    dropout_schedules(5, 40, 8);
}

#[test]
fn dropouts_of_10_members() {
    dropout_schedules(10, 30, 8);
}

#[test]
fn dropouts_of_50_members() {
    dropout_schedules(50, 3, 4);
}

#[test]
fn members_dropping_after_sharing_have_their_masks_removed() {
    let mut config = SimConfig::new(8, 32, 5);
    config.faults = lossless_jitter();
    for m in [1, 4, 6] {
        config.crashes.push(Crash {
            member: MemberId(m),
            at: CrashPoint::BeforeSend {
                attempt: 0,
                kind: primia_protocol::MessageKind::MaskedInput,
            },
            restart_after_ms: None,
        });
    }
    let report = run(config);
    assert_eq!(check_outcomes(&report), 5);
    assert_eq!(common::dropped_after_sharing(&report), 3);
    check_privacy(&report);
}

#[test]
fn leader_crash_at_every_phase_moves_to_the_next_leader() {
    let phases = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::ConsistencyCheck,
        Phase::Unmask,
    ];
    for (i, phase) in phases.into_iter().enumerate() {
        let mut config = SimConfig::new(5, 8, 100 + i as u64);
        config.faults = lossless_jitter();
        let probe = primia_protocol::sim::Sim::new(config.clone()).unwrap();
        let leader = probe.round(MemberId(0)).unwrap().leader().unwrap();
        config.crashes.push(Crash {
            member: leader,
            at: CrashPoint::OnPhase { attempt: 0, phase },
            restart_after_ms: None,
        });
        let report = run(config);
        assert_eq!(
            check_outcomes(&report),
            4,
            "leader crashed on entering {phase:?}"
        );
        check_privacy(&report);
        let o = report.outcomes().next().unwrap().1;
        assert_eq!(o.attempt, 1, "{phase:?}");
        assert!(!o.participants.contains(&leader));
        for id in never_crashed(&report) {
            let f = failures(&report, id);
            assert_eq!(f.len(), 1, "{id}: {f:?}");
            assert!(f[0].1.contains("leader silent"), "{id}: {f:?}");
        }
    }
}

#[test]
fn silent_leader_leads_to_the_next_attempt_after_the_deadline() {
    let mut config = SimConfig::new(5, 8, 7);
    let probe = primia_protocol::sim::Sim::new(config.clone()).unwrap();
    let leader0 = probe.round(MemberId(0)).unwrap().leader().unwrap();
    config.crashes.push(Crash {
        member: leader0,
        at: CrashPoint::AtMillis(0),
        restart_after_ms: None,
    });
    let silence = config.leader_silence_ms;
    let report = run(config);
    for id in never_crashed(&report) {
        let m = &report.members[id.index()];
        let started: Vec<(u32, MemberId)> = m
            .events()
            .filter_map(|e| match e {
                Event::AttemptStarted { attempt, leader } => Some((*attempt, *leader)),
                _ => None,
            })
            .collect();
        assert_eq!(started.len(), 2, "{id}: {started:?}");
        assert_eq!(started[0], (0, leader0));
        assert_ne!(started[1].1, leader0, "attempt 1 has the next leader");
        assert!(failures(&report, id)[0].1.contains("leader silent"));
        assert_eq!(m.outcome.as_ref().unwrap().attempt, 1);
    }
    // Nobody moved on before the deadline: attempt 1 adverts go out at it.
    let first_attempt1_send = report
        .members
        .iter()
        .flat_map(|m| m.log.iter())
        .filter_map(|l| match l {
            primia_protocol::sim::LogEntry::Sent {
                attempt: 1, at_ms, ..
            } => Some(*at_ms),
            _ => None,
        })
        .min()
        .unwrap();
    assert!(
        first_attempt1_send >= silence,
        "attempt 1 began at {first_attempt1_send} ms"
    );
    check_outcomes(&report);
}

#[test]
fn fewer_than_t_fails_the_attempt_then_returning_members_finish_it() {
    // Three of five members are down from the start (t = 4) and come back
    // after 2 s: early attempts fail for lack of members, a later one
    // succeeds with fresh keys and its own leader.
    let mut config = SimConfig::new(5, 8, 11);
    config.faults = lossless_jitter();
    config.max_attempts = 20;
    for m in [0, 2, 4] {
        config.crashes.push(Crash {
            member: MemberId(m),
            at: CrashPoint::AtMillis(0),
            restart_after_ms: Some(2_000),
        });
    }
    let report = run(config);
    assert_eq!(check_outcomes(&report), 5);
    check_privacy(&report);
    let o = report.members[1].outcome.clone().unwrap();
    assert!(o.attempt >= 1);
    assert!(o.participants.len() >= 4);
    let f = failures(&report, MemberId(1));
    assert!(!f.is_empty());
    assert!(
        f.iter()
            .any(|(_, r)| r.contains("only") || r.contains("leader silent")),
        "{f:?}"
    );
    // Fresh keys: member 1 advertised different keys in each attempt.
    let adverts: Vec<Vec<u8>> = report.members[1]
        .log
        .iter()
        .filter_map(|l| match l {
            primia_protocol::sim::LogEntry::Sent {
                kind: primia_protocol::MessageKind::AdvertiseKeys,
                bytes,
                ..
            } => match primia_protocol::wire::decode(bytes)
                .unwrap()
                .message
                .payload
            {
                primia_protocol::wire::Payload::AdvertiseKeys(a) => Some(a.mask_public.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut unique = adverts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), adverts.len(), "keys reused across attempts");
}

#[test]
fn fewer_than_t_for_good_fails_the_round() {
    let mut config = SimConfig::new(5, 8, 12);
    config.max_attempts = 4;
    for m in [0, 1, 2] {
        config.crashes.push(Crash {
            member: MemberId(m),
            at: CrashPoint::AtMillis(0),
            restart_after_ms: None,
        });
    }
    let report = run(config);
    assert_eq!(report.outcomes().count(), 0);
    for id in [MemberId(3), MemberId(4)] {
        let m = &report.members[id.index()];
        assert!(m.round_failed, "{id}");
        assert_eq!(failures(&report, id).len(), 4);
    }
}
