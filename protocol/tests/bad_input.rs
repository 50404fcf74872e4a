//! Bad input from peers: each kind is rejected with a reason reported as an
//! event, never a panic, and changes nothing.

mod common;

use std::sync::Arc;

use primia_crypto::{IdentityKey, Secret32};
use primia_protocol::sim::{LogEntry, SIM_ROUND, Sim, SimConfig, Verdict};
use primia_protocol::wire::{
    self, AdvertiseKeys, Header, MAX_BULK_MESSAGE_BYTES, MAX_CONTROL_MESSAGE_BYTES, MaskedInput,
    Message, OutcomeMessage, Payload, RingVector, WIRE_VERSION,
};
use primia_protocol::{
    Event, MemberId, MessageKind, Phase, ProtocolError, RejectReason, RosterDigest,
};

/// The reasons of the `Rejected` events among `events`.
fn reasons(events: &[Event]) -> Vec<RejectReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Injecting `bytes` yields exactly one rejection, matching `expected`.
#[track_caller]
fn check_rejected(
    bytes: &[u8],
    sim: &mut Sim,
    to: MemberId,
    from: MemberId,
    expected: impl Fn(&RejectReason) -> bool,
) {
    let events = sim.inject(to, from, bytes);
    let r = reasons(&events);
    assert_eq!(r.len(), 1, "expected one rejection, got {events:?}");
    assert!(expected(&r[0]), "unexpected reason: {} ({:?})", r[0], r[0]);
    assert!(!r[0].to_string().is_empty());
}

fn leader(sim: &Sim) -> MemberId {
    sim.round(MemberId(0)).unwrap().leader().unwrap()
}

fn other_than(sim: &Sim, not: &[MemberId]) -> MemberId {
    (0..sim.roster().len() as u16)
        .map(MemberId)
        .find(|m| !not.contains(m))
        .unwrap()
}

fn header(sim: &Sim, sender: MemberId, attempt: u32) -> Header {
    Header {
        roster: sim.roster().digest(),
        round: SIM_ROUND,
        attempt,
        sender,
    }
}

fn advert(sim: &Sim, sender: MemberId, attempt: u32, key_byte: u8) -> Message {
    Message {
        header: header(sim, sender, attempt),
        payload: Payload::AdvertiseKeys(AdvertiseKeys {
            share_public: [key_byte; 32],
            mask_public: [key_byte.wrapping_add(1); 32],
        }),
    }
}

fn signed(sim: &Sim, by: MemberId, m: &Message) -> Vec<u8> {
    wire::encode(sim.identity(by), m).unwrap()
}

#[test]
fn forged_foreign_and_misbound_messages_are_rejected() {
    let mut sim = Sim::new(SimConfig::new(5, 4, 1)).unwrap();
    let l = leader(&sim);
    let m = other_than(&sim, &[l]);
    let good = advert(&sim, m, 0, 9);

    // A forged signature: one bit of the signature flipped.
    let mut bytes = signed(&sim, m, &good);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    check_rejected(&bytes, &mut sim, l, m, |r| *r == RejectReason::BadSignature);

    // Signed by a key outside the roster, claiming to be a member.
    let outsider = IdentityKey::from_seed(&Secret32::from_bytes([7; 32]));
    let bytes = wire::encode(&outsider, &good).unwrap();
    check_rejected(&bytes, &mut sim, l, m, |r| *r == RejectReason::BadSignature);

    // A sender id outside the roster, and a delivering peer outside it.
    let mut stranger = good.clone();
    stranger.header.sender = MemberId(99);
    let bytes = wire::encode(&outsider, &stranger).unwrap();
    check_rejected(&bytes, &mut sim, l, m, |r| {
        *r == RejectReason::UnknownSender { sender: 99 }
    });
    let bytes = signed(&sim, m, &good);
    check_rejected(&bytes, &mut sim, l, MemberId(99), |r| {
        *r == RejectReason::UnknownSender { sender: 99 }
    });

    // Delivered by someone other than its author.
    let third = other_than(&sim, &[l, m]);
    check_rejected(&bytes, &mut sim, l, third, |r| {
        matches!(r, RejectReason::SenderMismatch { .. })
    });

    // Another roster, another round, a later attempt.
    let mut other = good.clone();
    other.header.roster = RosterDigest([1; 32]);
    check_rejected(&signed(&sim, m, &other), &mut sim, l, m, |r| {
        *r == RejectReason::WrongRoster
    });
    let mut other = good.clone();
    other.header.round = SIM_ROUND + 1;
    check_rejected(&signed(&sim, m, &other), &mut sim, l, m, |r| {
        *r == RejectReason::WrongRound {
            round: SIM_ROUND + 1,
        }
    });
    let mut other = good.clone();
    other.header.attempt = 5;
    check_rejected(&signed(&sim, m, &other), &mut sim, l, m, |r| {
        *r == RejectReason::FutureAttempt {
            attempt: 5,
            current: 0,
        }
    });

    // A member-to-leader message sent to a member that does not lead.
    check_rejected(&signed(&sim, m, &good), &mut sim, third, m, |r| {
        *r == RejectReason::NotLeader {
            kind: MessageKind::AdvertiseKeys,
        }
    });

    // A leader's message from a member that does not lead.
    let fake = Message {
        header: header(&sim, m, 0),
        payload: Payload::AttemptAborted(wire::AttemptAborted {
            reason: wire::AbortReason::ReconstructionFailed,
        }),
    };
    check_rejected(&signed(&sim, m, &fake), &mut sim, third, m, |r| {
        *r == RejectReason::NotFromLeader { sender: m }
    });

    // Low-order keys, with which every agreement would fail; the rejected
    // adverts are not kept (the genuine one below is no duplicate).
    let mut one = [0u8; 32];
    one[0] = 1;
    for (share, mask) in [(None, Some([0u8; 32])), (Some(one), None)] {
        let mut weak = good.clone();
        if let Payload::AdvertiseKeys(k) = &mut weak.payload {
            k.share_public = share.unwrap_or(k.share_public);
            k.mask_public = mask.unwrap_or(k.mask_public);
        }
        check_rejected(&signed(&sim, m, &weak), &mut sim, l, m, |r| {
            *r == RejectReason::WeakKey { member: m }
        });
    }

    // The genuine advert is accepted; its replay and a second, different
    // advert are duplicates.
    let events = sim.inject(l, m, &signed(&sim, m, &good));
    assert!(reasons(&events).is_empty(), "{events:?}");
    check_rejected(&signed(&sim, m, &good), &mut sim, l, m, |r| {
        *r == RejectReason::Duplicate {
            kind: MessageKind::AdvertiseKeys,
        }
    });
    check_rejected(
        &signed(&sim, m, &advert(&sim, m, 0, 40)),
        &mut sim,
        l,
        m,
        |r| matches!(r, RejectReason::Duplicate { .. }),
    );
}

#[test]
fn stale_attempts_and_replays_of_finished_rounds_are_rejected() {
    let mut config = SimConfig::new(5, 4, 2);
    let probe = Sim::new(config.clone()).unwrap();
    let l0 = leader(&probe);
    config.crashes.push(primia_protocol::sim::Crash {
        member: l0,
        at: primia_protocol::sim::CrashPoint::AtMillis(0),
        restart_after_ms: None,
    });
    let mut sim = Sim::new(config).unwrap();
    // Record a real message of attempt 0, then let the round move on.
    let m = other_than(&sim, &[l0]);
    sim.run_until(|s| {
        (0..5)
            .map(MemberId)
            .filter(|x| *x != l0)
            .all(|x| s.round(x).and_then(|r| r.attempt()) == Some(1))
    })
    .unwrap();
    let l1 = leader(&sim);
    let to = other_than(&sim, &[l0, l1, m]);
    let old = Message {
        header: header(&sim, l0, 0),
        payload: Payload::AttemptAborted(wire::AttemptAborted {
            reason: wire::AbortReason::ReconstructionFailed,
        }),
    };
    check_rejected(&signed(&sim, l0, &old), &mut sim, to, l0, |r| {
        *r == RejectReason::StaleAttempt {
            attempt: 0,
            current: 1,
        }
    });
    let report = sim.run().unwrap();
    assert!(report.members[m.index()].outcome.is_some());
    // Replaying a message of the finished attempt to a finished member.
    let replay = report.members[m.index()]
        .log
        .iter()
        .find_map(|l| match l {
            LogEntry::Sent {
                kind: MessageKind::MaskedInput,
                bytes,
                ..
            } => Some(bytes.clone()),
            _ => None,
        })
        .unwrap();
    check_rejected(&replay, &mut sim, l1, m, |r| *r == RejectReason::RoundOver);
}

#[test]
fn undecodable_and_oversized_bytes_are_rejected() {
    let mut sim = Sim::new(SimConfig::new(5, 4, 3)).unwrap();
    let l = leader(&sim);
    let m = other_than(&sim, &[l]);
    let good = signed(&sim, m, &advert(&sim, m, 0, 9));
    for cut in [0, 1, 10, 64, good.len() - 65, good.len() - 1] {
        check_rejected(&good[..cut], &mut sim, l, m, |r| {
            matches!(r, RejectReason::Malformed(_))
        });
    }
    let mut longer = good.clone();
    longer.insert(good.len() - 64, 0);
    check_rejected(&longer, &mut sim, l, m, |r| {
        matches!(
            r,
            RejectReason::Malformed(ProtocolError::TrailingBytes { .. })
                | RejectReason::BadSignature
        )
    });
    let mut version = good.clone();
    version[0] = WIRE_VERSION + 1;
    check_rejected(&version, &mut sim, l, m, |r| {
        matches!(
            r,
            RejectReason::Malformed(ProtocolError::UnsupportedVersion { .. })
        )
    });
    check_rejected(&[0xff; 300], &mut sim, l, m, |r| {
        matches!(r, RejectReason::Malformed(_))
    });
    let huge = vec![WIRE_VERSION; MAX_BULK_MESSAGE_BYTES + 1];
    check_rejected(&huge, &mut sim, l, m, |r| {
        matches!(r, RejectReason::Malformed(ProtocolError::Oversized { .. }))
    });
    // A control message over the control limit (but under the bulk one):
    // refused after reading only its header and tag.
    let body = Message {
        header: header(&sim, m, 0),
        payload: Payload::KeysAnnounced(wire::KeysAnnounced {
            adverts: vec![wire::Bytes(vec![0; MAX_CONTROL_MESSAGE_BYTES])],
        }),
    };
    let mut bytes = vec![WIRE_VERSION];
    bytes.extend(postcard::to_allocvec(&body).unwrap());
    bytes.extend([0u8; 64]);
    check_rejected(&bytes, &mut sim, l, m, |r| {
        *r == RejectReason::Malformed(ProtocolError::Oversized {
            len: bytes.len(),
            max: MAX_CONTROL_MESSAGE_BYTES,
        })
    });
    assert!(
        wire::encode(sim.identity(m), &body).is_err(),
        "encoding refuses it too"
    );
}

#[test]
fn wrong_vector_lengths_are_rejected() {
    let mut config = SimConfig::new(5, 4, 4);
    let probe = Sim::new(config.clone()).unwrap();
    let l = leader(&probe);
    let m = other_than(&probe, &[l]);
    config.without_input.push(m);
    let mut sim = Sim::new(config).unwrap();
    sim.run_until(|s| s.round(l).unwrap().phase() == Phase::MaskedInput)
        .unwrap();
    let len = sim.round_config().vector_len;
    let h = header(&sim, m, 0);
    let input = |n: usize| Message {
        header: h,
        payload: Payload::MaskedInput(MaskedInput {
            vector: RingVector(vec![1; n]),
        }),
    };
    for n in [0, len - 1, len + 1] {
        check_rejected(&signed(&sim, m, &input(n)), &mut sim, l, m, |r| {
            *r == RejectReason::WrongVectorLength {
                got: n,
                expected: len,
            }
        });
    }
    let events = sim.inject(l, m, &signed(&sim, m, &input(len)));
    assert!(reasons(&events).is_empty(), "{events:?}");
    // An outcome of the wrong length, from the leader, to a member.
    let to = other_than(&sim, &[l, m]);
    let outcome = Message {
        header: header(&sim, l, 0),
        payload: Payload::Outcome(OutcomeMessage {
            participants: (0..5).map(MemberId).collect(),
            sum: RingVector(vec![0; len + 3]),
        }),
    };
    check_rejected(&signed(&sim, l, &outcome), &mut sim, to, l, |r| {
        *r == RejectReason::WrongVectorLength {
            got: len + 3,
            expected: len,
        }
    });
}

#[test]
fn shares_for_another_recipient_are_rejected() {
    let config = SimConfig::new(5, 4, 5);
    let probe = Sim::new(config.clone()).unwrap();
    let l = leader(&probe);
    let v = other_than(&probe, &[l]);
    let w = other_than(&probe, &[l, v]);
    let mut sim = Sim::new(config).unwrap();
    // Hold back the forwarded shares of v and w.
    type Held = Vec<(MemberId, Vec<u8>)>;
    let held: std::rc::Rc<std::cell::RefCell<Held>> = Default::default();
    {
        let held = held.clone();
        sim.set_interceptor(move |m| {
            if m.message.payload.kind() == MessageKind::SharesForwarded && (m.to == v || m.to == w)
            {
                held.borrow_mut().push((m.to, m.bytes.to_vec()));
                return Verdict::Drop;
            }
            Verdict::Deliver
        });
    }
    sim.run_until(|_| held.borrow().len() == 2).unwrap();
    let for_w = held
        .borrow()
        .iter()
        .find(|(to, _)| *to == w)
        .unwrap()
        .1
        .clone();
    // As addressed: for w, delivered to v.
    check_rejected(&for_w, &mut sim, v, l, |r| {
        *r == RejectReason::WrongRecipient { recipient: w }
    });
    // Readdressed to v by the leader: the ciphertexts do not open for v.
    let mut msg = wire::decode(&for_w).unwrap().message;
    let Payload::SharesForwarded(p) = &mut msg.payload else {
        panic!()
    };
    p.recipient = v;
    p.shares.retain(|s| s.sender != v);
    p.shares.push(wire::ForwardedShares {
        sender: w,
        ciphertext: wire::Bytes(vec![0; p.shares[0].ciphertext.0.len()]),
    });
    p.shares.sort_by_key(|s| s.sender);
    let events = sim.inject(v, l, &signed(&sim, l, &msg));
    let r = reasons(&events);
    assert!(
        matches!(r.as_slice(), [RejectReason::BadShares { .. }]),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Excluded { .. })));
}

#[test]
fn a_bad_message_changes_nothing() {
    // The same run with and without a burst of junk ends identically.
    let clean = common::run(SimConfig::new(5, 4, 6));
    let mut sim = Sim::new(SimConfig::new(5, 4, 6)).unwrap();
    let l = leader(&sim);
    let m = other_than(&sim, &[l]);
    let junk = Arc::new(vec![3u8; 200]);
    for _ in 0..10 {
        let _ = sim.inject(l, m, &junk);
    }
    let report = sim.run().unwrap();
    let a = clean.members[0].outcome.as_ref().unwrap();
    let b = report.members[0].outcome.as_ref().unwrap();
    assert_eq!(a, b);
}

/// What a forging leader changes in the messages it sends one member.
#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// Another member's advert in the key announcement.
    Advert,
    /// Another member's consistency signature in the proof.
    Signature,
    /// The recipient's own consistency signature in the proof.
    OwnSignature,
}

/// The leader of attempt 0 tampers with what it relays to one member: the
/// member checks every advert and consistency signature from a leader that
/// is not itself (its own advert by its keys, its own signature by its
/// bytes), so it rejects the forgery and reveals nothing in that attempt.
#[test]
fn forged_adverts_and_consistency_signatures_from_a_leader_are_caught() {
    use primia_protocol::wire::{
        CONSISTENCY_SIGNATURE, KeysAnnounced, MemberSignature, UnmaskRequest, consistency_statement,
    };
    use std::cell::RefCell;
    use std::rc::Rc;

    for forgery in [Forgery::Advert, Forgery::Signature, Forgery::OwnSignature] {
        let mut config = SimConfig::new(5, 4, 11);
        config.max_attempts = 3;
        let mut sim = Sim::new(config).unwrap();
        let l = leader(&sim);
        let victim = other_than(&sim, &[l]);
        let other = other_than(&sim, &[l, victim]);
        let key = Arc::clone(sim.identity(l));
        let victim_key = Arc::clone(sim.identity(victim));
        let forged = Rc::new(RefCell::new(0usize));
        let seen = Rc::clone(&forged);
        sim.set_interceptor(move |m| {
            let h = m.message.header;
            if h.attempt != 0 || m.from != l || m.to != victim {
                return Verdict::Deliver;
            }
            let flip = |bytes: &mut [u8]| bytes[bytes.len() - 1] ^= 1;
            let payload = match (&m.message.payload, forgery) {
                (Payload::KeysAnnounced(p), Forgery::Advert) => {
                    let mut adverts = p.adverts.clone();
                    for a in &mut adverts {
                        if wire::decode(&a.0).unwrap().message.header.sender == other {
                            flip(&mut a.0);
                        }
                    }
                    Payload::KeysAnnounced(KeysAnnounced { adverts })
                }
                (Payload::UnmaskRequest(p), Forgery::Signature) => {
                    let mut p = p.clone();
                    let s = p
                        .signatures
                        .iter_mut()
                        .find(|s| s.member != victim)
                        .unwrap();
                    flip(&mut s.signature.0);
                    Payload::UnmaskRequest(p)
                }
                (Payload::UnmaskRequest(p), Forgery::OwnSignature) => {
                    let mut p = p.clone();
                    p.signatures.retain(|s| s.member != victim);
                    let statement = consistency_statement(&h, &p.survivors);
                    let mut own: MemberSignature = MemberSignature {
                        member: victim,
                        signature: victim_key.sign(CONSISTENCY_SIGNATURE, &statement).into(),
                    };
                    flip(&mut own.signature.0);
                    p.signatures.push(own);
                    p.signatures.sort_by_key(|s| s.member);
                    Payload::UnmaskRequest(UnmaskRequest { ..p })
                }
                _ => return Verdict::Deliver,
            };
            *seen.borrow_mut() += 1;
            let message = Message { header: h, payload };
            Verdict::Replace(wire::encode(&key, &message).unwrap())
        });
        let report = sim.run().unwrap();
        assert_eq!(*forged.borrow(), 1, "{forgery:?}: one forged message");
        let rejected: Vec<RejectReason> = reasons(
            &report.members[victim.index()]
                .events()
                .cloned()
                .collect::<Vec<_>>(),
        );
        let caught = rejected.iter().any(|r| match forgery {
            Forgery::Advert => matches!(r, RejectReason::BadAdvert { .. }),
            Forgery::Signature => {
                matches!(r, RejectReason::BadConsistencySignature { member } if *member != victim)
            }
            Forgery::OwnSignature => *r == RejectReason::BadConsistencySignature { member: victim },
        });
        assert!(caught, "{forgery:?} not caught: {rejected:?}");
        assert!(
            report.members[victim.index()]
                .revealed_sent()
                .iter()
                .all(|(attempt, _)| *attempt != 0),
            "{forgery:?}: revealed in the forged attempt"
        );
    }
}
