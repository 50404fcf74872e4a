//! Privacy invariants: a malicious leader cannot get both shares of anyone
//! revealed, fewer than t shares rebuild nothing, masked inputs look
//! uniformly random, and the reveal record holds across a crash.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use common::{check_outcomes, check_privacy, failures, run};
use primia_crypto::{Secret32, reconstruct, split};
use primia_protocol::sim::{Crash, CrashPoint, LogEntry, Sim, SimConfig, Verdict};
use primia_protocol::wire::{
    self, CONSISTENCY_SIGNATURE, ConsistencyRequest, MemberSignature, Message, Payload,
    UnmaskRequest, consistency_statement,
};
use primia_protocol::{
    Event, Instant, MemberId, MessageKind, Output, RevealEntry, RevealRecord, Round, ShareKind,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn leader_of_attempt0(config: &SimConfig) -> MemberId {
    Sim::new(config.clone())
        .unwrap()
        .round(MemberId(0))
        .unwrap()
        .leader()
        .unwrap()
}

/// The leader shows U3 to group A and U3 without the victim to group B,
/// collects each group's signatures over its set, adds its own, and hands
/// each group the best proof it can make (in place of whatever it would
/// have sent next). Group B can never be shown t valid signatures over its
/// set, except group A when it has t - 1 members besides the leader (then
/// it sees one consistent set, which is safe), and everyone finishes.
fn split_view_attack(members: usize, seed: u64) {
    let mut config = SimConfig::new(members, 8, seed);
    config.max_attempts = 6;
    let leader = leader_of_attempt0(&config);
    let others: Vec<MemberId> = (0..members as u16)
        .map(MemberId)
        .filter(|m| *m != leader)
        .collect();
    let victim = others[0];
    let half = others.len() / 2;
    let group_b: Vec<MemberId> = others[others.len() - half..].to_vec();
    let mut sim = Sim::new(config).unwrap();
    let key = Arc::clone(sim.identity(leader));
    // Per group (false: A, true: B): the set it was shown and its signatures.
    type Views = [(Vec<MemberId>, Vec<MemberSignature>); 2];
    let views: Rc<RefCell<Views>> = Rc::default();
    let forged_proofs = Rc::new(RefCell::new(0usize));
    {
        let (views, forged_proofs, group_b) =
            (views.clone(), forged_proofs.clone(), group_b.clone());
        sim.set_interceptor(move |m| {
            let h = m.message.header;
            if h.attempt != 0 {
                return Verdict::Deliver;
            }
            let in_b = |id: MemberId| group_b.contains(&id);
            match &m.message.payload {
                Payload::ConsistencyRequest(req) if m.from == leader => {
                    let shown: Vec<MemberId> = if in_b(m.to) {
                        req.survivors
                            .iter()
                            .copied()
                            .filter(|v| *v != victim)
                            .collect()
                    } else {
                        req.survivors.clone()
                    };
                    views.borrow_mut()[usize::from(in_b(m.to))].0 = shown.clone();
                    let forged = Message {
                        header: h,
                        payload: Payload::ConsistencyRequest(ConsistencyRequest {
                            survivors: shown,
                        }),
                    };
                    Verdict::Replace(wire::encode(&key, &forged).unwrap())
                }
                Payload::ConsistencySignature(s) => {
                    views.borrow_mut()[usize::from(in_b(h.sender))]
                        .1
                        .push(MemberSignature {
                            member: h.sender,
                            signature: s.signature,
                        });
                    Verdict::Deliver
                }
                Payload::UnmaskRequest(_) | Payload::AttemptAborted(_) if m.from == leader => {
                    let (shown, mut signatures) = views.borrow()[usize::from(in_b(m.to))].clone();
                    let own = key.sign(CONSISTENCY_SIGNATURE, &consistency_statement(&h, &shown));
                    signatures.push(MemberSignature {
                        member: leader,
                        signature: own.into(),
                    });
                    signatures.sort_by_key(|s| s.member);
                    *forged_proofs.borrow_mut() += 1;
                    let forged = Message {
                        header: h,
                        payload: Payload::UnmaskRequest(UnmaskRequest {
                            survivors: shown,
                            signatures,
                        }),
                    };
                    Verdict::Replace(wire::encode(&key, &forged).unwrap())
                }
                _ => Verdict::Deliver,
            }
        });
    }
    let report = sim.run().unwrap();
    assert_eq!(
        *forged_proofs.borrow(),
        members - 1,
        "every member got a forged proof"
    );
    // At most one group can be shown t valid signatures: with 2t > n + 1
    // never group B (it holds fewer members), and group A only when it has
    // t - 1 members besides the leader. Whoever reveals, the victim's two
    // secrets are never both revealed.
    for b in &group_b {
        assert!(
            report.members[b.index()]
                .revealed_sent()
                .iter()
                .all(|(attempt, _)| *attempt != 0),
            "{b} revealed shares for the second survivor set"
        );
    }
    let a_revealed = others.iter().filter(|a| !group_b.contains(a)).any(|a| {
        report.members[a.index()]
            .revealed_sent()
            .iter()
            .any(|(attempt, _)| *attempt == 0)
    });
    assert_eq!(
        a_revealed,
        others.len() - group_b.len() + 1 >= report.threshold
    );
    check_privacy(&report);
    assert_eq!(check_outcomes(&report), members);
    for id in group_b {
        let f = failures(&report, id);
        assert!(
            f.iter()
                .any(|(a, r)| *a == 0 && r.contains("consistency check failed")),
            "{id}: {f:?}"
        );
    }
}

#[test]
fn malicious_leader_showing_two_survivor_sets_gets_nothing_revealed() {
    split_view_attack(5, 21);
    split_view_attack(7, 22);
    split_view_attack(10, 23);
}

#[test]
fn fewer_than_t_reveals_yield_no_sum() {
    // t = 4 of 5: the leader's own reveal plus two more is one short.
    let mut config = SimConfig::new(5, 8, 31);
    config.max_attempts = 4;
    let leader = leader_of_attempt0(&config);
    let mut sim = Sim::new(config).unwrap();
    let passed = Rc::new(RefCell::new(0));
    {
        let passed = passed.clone();
        sim.set_interceptor(move |m| {
            if m.message.header.attempt == 0
                && m.message.payload.kind() == MessageKind::UnmaskShares
            {
                let mut p = passed.borrow_mut();
                if *p >= 2 {
                    return Verdict::Drop;
                }
                *p += 1;
            }
            Verdict::Deliver
        });
    }
    let report = sim.run().unwrap();
    assert!(report.outcomes().all(|(_, o)| o.attempt >= 1));
    let f = failures(&report, leader);
    assert!(f[0].0 == 0 && f[0].1.contains("Unmask"), "{f:?}");
    check_outcomes(&report);
    check_privacy(&report);
}

#[test]
fn fewer_than_t_shares_do_not_rebuild_the_secret() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for (t, n) in [(2u16, 3u16), (4, 5), (6, 10), (26, 50)] {
        for _ in 0..50 {
            let secret = Secret32::random(&mut rng);
            let shares = split(&secret, t, n, &mut rng).unwrap();
            let short = &shares[shares.len() - usize::from(t) + 1..];
            // Either no 32-byte secret at all, or the wrong one.
            if let Ok(guess) = reconstruct(short, t - 1) {
                assert_ne!(guess.expose(), secret.expose());
            }
            assert!(reconstruct(short, t).is_err());
            let full = reconstruct(&shares[..usize::from(t)], t).unwrap();
            assert_eq!(full.expose(), secret.expose());
        }
    }
}

#[test]
fn masked_input_differs_from_the_input_everywhere_and_looks_uniform() {
    let params = 20_000;
    let report = run(SimConfig::new(4, params, 41));
    check_outcomes(&report);
    for m in &report.members {
        let y = m
            .log
            .iter()
            .find_map(|l| match l {
                LogEntry::Sent {
                    kind: MessageKind::MaskedInput,
                    bytes,
                    ..
                } => match wire::decode(bytes).unwrap().message.payload {
                    Payload::MaskedInput(p) => Some(p.vector.0),
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or_else(|| {
                // The leader masks for itself without the network: its
                // masked input is not on the wire. Skip it.
                Vec::new()
            });
        if y.is_empty() {
            continue;
        }
        let x = &m.input;
        assert_eq!(y.len(), x.len());
        let diff: Vec<u64> = y.iter().zip(x).map(|(a, b)| a.wrapping_sub(*b)).collect();
        assert!(
            diff.iter().all(|d| *d != 0),
            "{}: a coordinate is unmasked",
            m.id
        );
        let n = diff.len() as f64;
        let sigma = (n / 4.0).sqrt();
        for bit in 0..64 {
            let ones = diff.iter().filter(|d| (*d >> bit) & 1 == 1).count() as f64;
            assert!(
                (ones - n / 2.0).abs() < 6.0 * sigma,
                "{}: bit {bit} set {ones} of {n}",
                m.id
            );
        }
        let mut buckets = [0f64; 256];
        for d in &diff {
            buckets[(d >> 56) as usize] += 1.0;
        }
        let expect = n / 256.0;
        let chi2: f64 = buckets.iter().map(|b| (b - expect).powi(2) / expect).sum();
        // 255 degrees of freedom: mean 255, standard deviation about 22.6.
        assert!(chi2 < 400.0, "{}: top byte chi-square {chi2}", m.id);
    }
}

#[test]
fn crash_after_persisting_a_reveal_never_reveals_again_in_that_attempt() {
    let mut config = SimConfig::new(5, 8, 51);
    let leader = leader_of_attempt0(&config);
    let member = (0..5).map(MemberId).find(|m| *m != leader).unwrap();
    config.crashes.push(Crash {
        member,
        at: CrashPoint::AfterPersist { attempt: 0 },
        restart_after_ms: Some(5),
    });
    config.max_attempts = 6;
    let report = run(config);
    let m = &report.members[member.index()];
    assert_eq!(m.crashes, 1);
    assert!(
        m.log
            .iter()
            .any(|l| matches!(l, LogEntry::Persisted(e) if e.attempt == 0))
    );
    assert!(
        m.log
            .iter()
            .any(|l| matches!(l, LogEntry::Restarted { attempt: 0, .. }))
    );
    assert!(
        m.revealed_sent().iter().all(|(a, _)| *a != 0),
        "revealed after the restart"
    );
    check_privacy(&report);
    check_outcomes(&report);
}

fn one_member_round(record: RevealRecord, attempt: u32) -> (Round<ChaCha20Rng>, Vec<Output>) {
    let sim = Sim::new(SimConfig::new(5, 4, 61)).unwrap();
    let me = MemberId(2);
    let mut round = Round::resume(
        Arc::clone(sim.roster()),
        Arc::clone(sim.identity(me)),
        sim.round_config(),
        ChaCha20Rng::seed_from_u64(1),
        Instant::from_millis(0),
        record,
        attempt,
    )
    .unwrap();
    let outputs = std::iter::from_fn(|| round.poll_output()).collect();
    (round, outputs)
}

#[test]
fn a_resumed_round_only_watches_an_attempt_it_revealed_in() {
    let mut record = RevealRecord::new(primia_protocol::sim::SIM_ROUND);
    record
        .add(&RevealEntry {
            round: primia_protocol::sim::SIM_ROUND,
            attempt: 1,
            revealed: vec![
                (MemberId(0), ShareKind::SelfMask),
                (MemberId(3), ShareKind::MaskKey),
            ],
        })
        .unwrap();
    let (_, outputs) = one_member_round(record.clone(), 1);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Send { .. })),
        "{outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Excluded { attempt: 1, .. })))
    );
    // A fresh attempt is joined as usual.
    let (_, outputs) = one_member_round(record, 2);
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Event(Event::PhaseChanged {
            attempt: 2,
            phase: primia_protocol::Phase::AdvertiseKeys
        })
    )));
}

#[test]
fn the_reveal_record_refuses_the_other_kind() {
    let mut record = RevealRecord::new(3);
    let entry = |attempt, revealed| RevealEntry {
        round: 3,
        attempt,
        revealed,
    };
    record
        .add(&entry(
            0,
            vec![
                (MemberId(1), ShareKind::SelfMask),
                (MemberId(2), ShareKind::MaskKey),
            ],
        ))
        .unwrap();
    assert!(record.allows(0, MemberId(1), ShareKind::SelfMask));
    assert!(!record.allows(0, MemberId(1), ShareKind::MaskKey));
    assert!(!record.allows(0, MemberId(2), ShareKind::SelfMask));
    assert!(
        record.allows(1, MemberId(1), ShareKind::MaskKey),
        "another attempt has fresh keys"
    );
    let conflict = record.add(&entry(
        0,
        vec![
            (MemberId(4), ShareKind::SelfMask),
            (MemberId(1), ShareKind::MaskKey),
        ],
    ));
    assert!(conflict.is_err());
    assert!(
        record.allows(0, MemberId(4), ShareKind::MaskKey),
        "a refused entry changes nothing"
    );
    let both = entry(
        1,
        vec![
            (MemberId(5), ShareKind::SelfMask),
            (MemberId(5), ShareKind::MaskKey),
        ],
    );
    assert!(RevealRecord::from_entries(3, [&both]).is_err());
    let other_round = RevealEntry { round: 9, ..both };
    assert!(
        !RevealRecord::from_entries(3, [&other_round])
            .unwrap()
            .revealed_in(1)
    );
}

#[test]
fn a_reveal_is_recorded_when_u3_is_signed_once_and_matches_what_is_sent() {
    let config = SimConfig::new(5, 8, 71);
    let leader = leader_of_attempt0(&config);
    let report = run(config);
    check_outcomes(&report);
    for m in report.members.iter().filter(|m| m.id != leader) {
        let position = |f: &dyn Fn(&LogEntry) -> bool| m.log.iter().position(f);
        let signed = position(&|l| {
            matches!(
                l,
                LogEntry::Sent {
                    kind: MessageKind::ConsistencySignature,
                    ..
                }
            )
        })
        .expect("signed U3");
        let persisted: Vec<usize> = (0..m.log.len())
            .filter(|i| matches!(m.log[*i], LogEntry::Persisted(_)))
            .collect();
        let revealed = position(&|l| {
            matches!(
                l,
                LogEntry::Sent {
                    kind: MessageKind::UnmaskShares,
                    ..
                }
            )
        })
        .expect("revealed");
        // Right after the signature, long before the leader asks to unmask,
        // and only once.
        assert_eq!(persisted, vec![signed + 1], "{}", m.id);
        let LogEntry::Persisted(entry) = &m.log[signed + 1] else {
            unreachable!()
        };
        assert!(revealed > signed + 1);
        let mut recorded = entry.revealed.clone();
        recorded.sort();
        let sent = m.revealed_sent();
        assert_eq!(sent.len(), 1);
        let (attempt, mut pairs) = sent[0].clone();
        pairs.sort();
        assert_eq!((attempt, pairs), (entry.attempt, recorded), "{}", m.id);
    }
}
