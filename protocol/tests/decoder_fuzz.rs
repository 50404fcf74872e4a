//! The decoder and the round take 100,000 random and mutated byte strings
//! without a panic, and no mutation of a signed message is ever accepted.

mod common;

use std::collections::BTreeSet;

use primia_protocol::sim::{Crash, CrashPoint, LogEntry, Sim, SimConfig};
use primia_protocol::{Event, MemberId, MessageKind, wire};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Every envelope some member sent in two runs (one with aborts), tagged by
/// kind.
fn corpus() -> (Sim, Vec<(MessageKind, Vec<u8>)>) {
    let mut out = Vec::new();
    let mut config = SimConfig::new(5, 3, 77);
    config.crashes.push(Crash {
        member: MemberId(1),
        at: CrashPoint::BeforeSend {
            attempt: 0,
            kind: MessageKind::MaskedInput,
        },
        restart_after_ms: None,
    });
    let mut aborted = SimConfig::new(5, 3, 78);
    aborted.max_attempts = 2;
    for m in [0, 1] {
        aborted.crashes.push(Crash {
            member: MemberId(m),
            at: CrashPoint::AtMillis(0),
            restart_after_ms: None,
        });
    }
    for c in [config.clone(), aborted] {
        for m in common::run(c).members {
            for l in m.log {
                if let LogEntry::Sent { kind, bytes, .. } = l {
                    out.push((kind, bytes.to_vec()));
                }
            }
        }
    }
    let kinds: BTreeSet<MessageKind> = out.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds.len(),
        MessageKind::ALL.len(),
        "corpus lacks a kind: {kinds:?}"
    );
    (Sim::new(config).unwrap(), out)
}

fn mutate(rng: &mut ChaCha20Rng, corpus: &[(MessageKind, Vec<u8>)]) -> (Vec<u8>, Option<usize>) {
    let below = |rng: &mut ChaCha20Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    if below(rng, 10) < 4 {
        let len = if below(rng, 20) == 0 {
            below(rng, 4096)
        } else {
            below(rng, 300)
        };
        let mut b = vec![0u8; len];
        rng.fill_bytes(&mut b);
        if len > 0 && below(rng, 2) == 0 {
            b[0] = wire::WIRE_VERSION;
        }
        return (b, None);
    }
    let i = below(rng, corpus.len());
    let mut b = corpus[i].1.clone();
    for _ in 0..1 + below(rng, 3) {
        let len = b.len();
        match below(rng, 7) {
            0 => {
                let p = below(rng, len * 8);
                if len > 0 {
                    b[p / 8] ^= 1 << (p % 8);
                }
            }
            1 => {
                if len > 0 {
                    let p = below(rng, len);
                    b[p] = rng.next_u32() as u8;
                }
            }
            2 => b.truncate(below(rng, len + 1)),
            3 => {
                let p = below(rng, len + 1);
                let mut extra = vec![0u8; 1 + below(rng, 16)];
                rng.fill_bytes(&mut extra);
                b.splice(p..p, extra);
            }
            4 => {
                let a = below(rng, len + 1);
                let e = (a + below(rng, 32)).min(len);
                b.drain(a..e);
            }
            5 => {
                let other = &corpus[below(rng, corpus.len())].1;
                let cut = below(rng, len.min(other.len()) + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[cut.min(other.len())..]);
            }
            _ => {
                // Varint-looking bytes at a random place: length fields.
                if len > 2 {
                    let p = 1 + below(rng, len - 1);
                    b[p] = 0x80 | rng.next_u32() as u8;
                }
            }
        }
    }
    (b, Some(i))
}

#[test]
fn random_and_mutated_bytes_never_panic_and_never_verify() {
    let (mut sim, corpus) = corpus();
    let roster = sim.roster().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let mut decoded_ok = 0;
    let genuine: std::collections::HashSet<Vec<u8>> =
        corpus.iter().map(|(_, b)| b.clone()).collect();
    let leader = sim.round(MemberId(0)).unwrap().leader().unwrap();
    let member = MemberId(if leader.0 == 2 { 3 } else { 2 });
    for n in 0..100_000u32 {
        let (bytes, origin) = mutate(&mut rng, &corpus);
        // A splice may rebuild a whole other genuine message.
        let unchanged = origin.is_some() && genuine.contains(&bytes);
        if let Ok(d) = wire::decode(&bytes) {
            decoded_ok += 1;
            let key = roster.member(d.message.header.sender).map(|m| m.identity);
            let verified = key.is_some_and(|k| d.verify(&k).is_ok());
            assert!(
                !verified || unchanged,
                "case {n}: a mutated message verified"
            );
        }
        // One in five also goes through a round, alternating leader and
        // member, and must be turned into a rejection event.
        if n % 5 == 0 && !unchanged {
            let to = if n % 10 == 0 { leader } else { member };
            let from = MemberId((n % 5) as u16);
            let events = sim.inject(to, from, &bytes);
            assert!(
                events.iter().any(|e| matches!(e, Event::Rejected { .. })),
                "case {n}: no rejection: {events:?}"
            );
        }
    }
    // The mutations reach past the envelope checks into the body.
    assert!(decoded_ok > 1_000, "only {decoded_ok} mutations decoded");
}
