//! The leader role: collect, re-publish, announce the participant sets, and
//! rebuild the masks to compute the sum. It only ever holds masked inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use primia_crypto::{
    AgreementPublic, AgreementSecret, Interpolator, Ring, Secret32, Share, add_assign, prg,
};
use rand_core::CryptoRng;

use super::binding::{PeerKeys, SEALED_PAIR_BYTES};
use super::{
    AttemptFailure, Auth, Event, Outcome, Outgoing, Output, RejectReason, Round, WireBytes,
};
use crate::roster::MemberId;
use crate::time::Instant;
use crate::wire::{
    self, AbortReason, AttemptAborted, Bytes, CONSISTENCY_SIGNATURE, ConsistencyRequest,
    ForwardedShares, KeysAnnounced, MemberSignature, Message, MessageKind, OutcomeMessage, Payload,
    Phase, RingVector, SharesForwarded, SignatureBytes, UnmaskRequest, consistency_statement,
};

/// The leader role in the attempt it leads.
pub(crate) struct Lead {
    pub(crate) phase: LeaderPhase,
    /// When the current collection step closes with whoever answered.
    pub(crate) deadline: Instant,
}

impl Lead {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self {
            phase: LeaderPhase::Keys {
                adverts: BTreeMap::new(),
            },
            deadline,
        }
    }
}

/// What the leader is collecting, with what it has so far. Every map holds at
/// most one entry per roster member, which bounds what peers can make it
/// hold.
pub(crate) enum LeaderPhase {
    /// Adverts: parsed keys and the signed envelope to relay.
    Keys {
        adverts: BTreeMap<MemberId, (PeerKeys, Vec<u8>)>,
    },
    /// Share bundles from members of U1.
    Shares {
        peers: BTreeMap<MemberId, PeerKeys>,
        bundles: BTreeMap<MemberId, Bundle>,
    },
    /// Masked inputs from members of U2, summed as they arrive.
    Inputs(Box<Inputs>),
    /// Consistency signatures from members of U3.
    Signatures(Box<Signatures>),
    /// Reveals from members of U3.
    Reveals(Box<Reveals>),
    /// Nothing more to collect.
    Done,
}

pub(crate) struct Bundle {
    commitment: [u8; 32],
    /// Ciphertext for each recipient.
    to: BTreeMap<MemberId, Bytes>,
}

/// What the aggregation needs from the earlier steps.
pub(crate) struct Agg {
    peers: BTreeMap<MemberId, PeerKeys>,
    u2: Vec<MemberId>,
    commitments: BTreeMap<MemberId, [u8; 32]>,
    /// Running sum of the masked inputs received.
    sum: Vec<Ring>,
}

pub(crate) struct Inputs {
    agg: Agg,
    u3: BTreeSet<MemberId>,
}

pub(crate) struct Signatures {
    agg: Agg,
    u3: Vec<MemberId>,
    statement: Vec<u8>,
    sigs: BTreeMap<MemberId, SignatureBytes>,
}

pub(crate) struct Reveals {
    agg: Agg,
    u3: Vec<MemberId>,
    /// U2 \ U3.
    dropped: Vec<MemberId>,
    /// Per revealing member: its shares of b_v for U3 and of the mask keys
    /// of the dropped, in set order.
    got: BTreeMap<MemberId, (Vec<Share>, Vec<Share>)>,
}

impl<R: CryptoRng> Round<R> {
    /// Routes a member message of the current attempt to the leader role.
    pub(super) fn leader_dispatch(
        &mut self,
        now: Instant,
        msg: &Message,
        envelope: Option<&[u8]>,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        let kind = msg.payload.kind();
        let sender = msg.header.sender;
        let (n, t, me, len) = (
            self.roster.len(),
            self.threshold(),
            self.me,
            self.config.vector_len,
        );
        let roster = Arc::clone(&self.roster);
        let att = self.running().ok_or(RejectReason::RoundOver)?;
        if att.leader != me {
            return Err(RejectReason::NotLeader { kind });
        }
        let lead = att.lead.as_mut().ok_or(RejectReason::NotLeader { kind })?;
        let full = match (&mut lead.phase, &msg.payload) {
            (LeaderPhase::Keys { adverts }, Payload::AdvertiseKeys(p)) => {
                if adverts.contains_key(&sender) {
                    return Err(RejectReason::Duplicate { kind });
                }
                let envelope = envelope.ok_or(RejectReason::Unexpected { kind })?;
                auth.check()?;
                let keys = PeerKeys {
                    share: AgreementPublic::from_bytes(p.share_public),
                    mask: AgreementPublic::from_bytes(p.mask_public),
                };
                if keys.share.is_low_order() || keys.mask.is_low_order() {
                    return Err(RejectReason::WeakKey { member: sender });
                }
                adverts.insert(sender, (keys, envelope.to_vec()));
                adverts.len() == n
            }
            (LeaderPhase::Shares { peers, bundles }, Payload::EncryptedShares(p)) => {
                if !peers.contains_key(&sender) {
                    return Err(RejectReason::NotParticipant { kind });
                }
                if bundles.contains_key(&sender) {
                    return Err(RejectReason::Duplicate { kind });
                }
                let expected = peers.keys().filter(|k| **k != sender);
                if p.shares.len() + 1 != peers.len()
                    || !p
                        .shares
                        .iter()
                        .zip(expected)
                        .all(|(s, e)| s.recipient == *e)
                {
                    return Err(RejectReason::InvalidSet {
                        what: "share bundle recipients do not match U1 without the sender",
                    });
                }
                if p.shares
                    .iter()
                    .any(|s| s.ciphertext.0.len() != SEALED_PAIR_BYTES)
                {
                    return Err(RejectReason::BadShares {
                        sender,
                        reason: "ciphertext of the wrong length",
                    });
                }
                auth.check()?;
                let to = p
                    .shares
                    .iter()
                    .map(|s| (s.recipient, s.ciphertext.clone()))
                    .collect();
                bundles.insert(
                    sender,
                    Bundle {
                        commitment: p.self_mask_commitment,
                        to,
                    },
                );
                bundles.len() == peers.len()
            }
            (LeaderPhase::Inputs(i), Payload::MaskedInput(p)) => {
                if i.agg.u2.binary_search(&sender).is_err() {
                    return Err(RejectReason::NotParticipant { kind });
                }
                if i.u3.contains(&sender) {
                    return Err(RejectReason::Duplicate { kind });
                }
                // From the network the vector is still in the envelope: it
                // is added from there while its signature is checked.
                let got = auth.vector_le().map_or(p.vector.0.len(), |b| b.len() / 8);
                if got != len {
                    return Err(RejectReason::WrongVectorLength { got, expected: len });
                }
                match auth {
                    Auth::Remote(d, key) if d.vector_le().is_some() => d
                        .verify_adding_vector(key, &mut i.agg.sum)
                        .map_err(|_| RejectReason::BadSignature)?,
                    _ => {
                        auth.check()?;
                        add_assign(&mut i.agg.sum, &p.vector.0);
                    }
                }
                i.u3.insert(sender);
                i.u3.len() == i.agg.u2.len()
            }
            (LeaderPhase::Signatures(s), Payload::ConsistencySignature(p)) => {
                if s.u3.binary_search(&sender).is_err() {
                    return Err(RejectReason::NotParticipant { kind });
                }
                if s.sigs.contains_key(&sender) {
                    return Err(RejectReason::Duplicate { kind });
                }
                auth.check()?;
                let member = roster
                    .member(sender)
                    .ok_or(RejectReason::UnknownSender { sender: sender.0 })?;
                member
                    .identity
                    .verify(
                        CONSISTENCY_SIGNATURE,
                        &s.statement,
                        &p.signature.to_signature(),
                    )
                    .map_err(|_| RejectReason::BadConsistencySignature { member: sender })?;
                s.sigs.insert(sender, p.signature);
                s.sigs.len() == s.u3.len()
            }
            (LeaderPhase::Reveals(r), Payload::UnmaskShares(p)) => {
                if r.u3.binary_search(&sender).is_err() {
                    return Err(RejectReason::NotParticipant { kind });
                }
                if r.got.contains_key(&sender) {
                    return Err(RejectReason::Duplicate { kind });
                }
                let owners_match = |shares: &[wire::RevealedShare], set: &[MemberId]| {
                    shares.len() == set.len() && shares.iter().zip(set).all(|(s, v)| s.owner == *v)
                };
                if !owners_match(&p.self_mask, &r.u3) || !owners_match(&p.mask_key, &r.dropped) {
                    return Err(RejectReason::InvalidSet {
                        what: "revealed shares are not one per member of U3 and of U2 minus U3",
                    });
                }
                auth.check()?;
                let parse = |shares: &[wire::RevealedShare]| -> Result<Vec<Share>, RejectReason> {
                    shares
                        .iter()
                        .map(|s| {
                            let share = Share::from_bytes(&s.share.0).map_err(|_| {
                                RejectReason::BadShares {
                                    sender,
                                    reason: "invalid share encoding",
                                }
                            })?;
                            if share.index() != sender.share_index() {
                                return Err(RejectReason::BadShares {
                                    sender,
                                    reason: "share index is not the sender's",
                                });
                            }
                            Ok(share)
                        })
                        .collect()
                };
                let pair = (parse(&p.self_mask)?, parse(&p.mask_key)?);
                r.got.insert(sender, pair);
                r.got.len() >= t
            }
            _ => return Err(RejectReason::Unexpected { kind }),
        };
        if full {
            self.leader_close(now);
        }
        Ok(())
    }

    /// The leader's deadline passed: close the step with whoever answered.
    pub(super) fn leader_deadline(&mut self, now: Instant) {
        self.leader_close(now);
    }

    /// Closes the current collection step: announce the set and move on, or
    /// abort when fewer than t answered.
    fn leader_close(&mut self, now: Instant) {
        let (t, me, len, collect) = (
            self.threshold(),
            self.me,
            self.config.vector_len,
            self.config.collect_ms,
        );
        let Some(att) = self.running() else { return };
        let binding = att.binding;
        let Some(lead) = att.lead.as_mut() else {
            return;
        };
        let phase = std::mem::replace(&mut lead.phase, LeaderPhase::Done);
        lead.deadline = now.plus_millis(collect);
        match phase {
            LeaderPhase::Keys { adverts } => {
                if adverts.len() < t {
                    return self.abort(now, Phase::AdvertiseKeys, adverts.len());
                }
                let mut peers = BTreeMap::new();
                let mut envelopes = Vec::with_capacity(adverts.len());
                for (id, (keys, envelope)) in adverts {
                    peers.insert(id, keys);
                    envelopes.push(Bytes(envelope));
                }
                lead.phase = LeaderPhase::Shares {
                    peers,
                    bundles: BTreeMap::new(),
                };
                self.broadcast(Payload::KeysAnnounced(KeysAnnounced { adverts: envelopes }));
            }
            LeaderPhase::Shares { peers, mut bundles } => {
                if bundles.len() < t {
                    return self.abort(now, Phase::ShareKeys, bundles.len());
                }
                let u2: Vec<MemberId> = bundles.keys().copied().collect();
                let commitments = bundles.iter().map(|(k, b)| (*k, b.commitment)).collect();
                let mut forwards = Vec::with_capacity(u2.len());
                for v in &u2 {
                    let mut shares = Vec::with_capacity(u2.len() - 1);
                    for u in u2.iter().filter(|u| *u != v) {
                        let ciphertext = bundles
                            .get_mut(u)
                            .and_then(|b| b.to.remove(v))
                            .unwrap_or_default();
                        shares.push(ForwardedShares {
                            sender: *u,
                            ciphertext,
                        });
                    }
                    forwards.push((
                        *v,
                        SharesForwarded {
                            recipient: *v,
                            senders: u2.clone(),
                            shares,
                        },
                    ));
                }
                drop(bundles);
                lead.phase = LeaderPhase::Inputs(Box::new(Inputs {
                    agg: Agg {
                        peers,
                        u2,
                        commitments,
                        sum: vec![0; len],
                    },
                    u3: BTreeSet::new(),
                }));
                for (v, payload) in forwards {
                    self.send(v, Payload::SharesForwarded(payload));
                }
            }
            LeaderPhase::Inputs(i) => {
                if i.u3.len() < t {
                    return self.abort(now, Phase::MaskedInput, i.u3.len());
                }
                let u3: Vec<MemberId> = i.u3.into_iter().collect();
                let statement = consistency_statement(&binding.header(me), &u3);
                lead.phase = LeaderPhase::Signatures(Box::new(Signatures {
                    agg: i.agg,
                    u3: u3.clone(),
                    statement,
                    sigs: BTreeMap::new(),
                }));
                self.broadcast(Payload::ConsistencyRequest(ConsistencyRequest {
                    survivors: u3,
                }));
            }
            LeaderPhase::Signatures(s) => {
                if s.sigs.len() < t {
                    return self.abort(now, Phase::ConsistencyCheck, s.sigs.len());
                }
                // t signatures prove that t members signed this U3; more
                // would only cost every member more verifications.
                let signatures = s
                    .sigs
                    .iter()
                    .take(t)
                    .map(|(member, signature)| MemberSignature {
                        member: *member,
                        signature: *signature,
                    })
                    .collect();
                let dropped = s
                    .agg
                    .u2
                    .iter()
                    .filter(|v| s.u3.binary_search(v).is_err())
                    .copied()
                    .collect();
                let u3 = s.u3.clone();
                lead.phase = LeaderPhase::Reveals(Box::new(Reveals {
                    agg: s.agg,
                    u3: s.u3,
                    dropped,
                    got: BTreeMap::new(),
                }));
                self.broadcast(Payload::UnmaskRequest(UnmaskRequest {
                    survivors: u3,
                    signatures,
                }));
            }
            LeaderPhase::Reveals(r) => {
                if r.got.len() < t {
                    return self.abort(now, Phase::Unmask, r.got.len());
                }
                self.aggregate(now, *r);
            }
            LeaderPhase::Done => {}
        }
    }

    /// Tells everyone the attempt is over and starts the next.
    fn abort(&mut self, now: Instant, phase: Phase, got: usize) {
        let needed = self.threshold();
        self.broadcast(Payload::AttemptAborted(AttemptAborted {
            reason: AbortReason::TooFewMembers {
                phase,
                got: got as u16,
            },
        }));
        self.fail_attempt(now, AttemptFailure::TooFewMembers { phase, got, needed });
    }

    /// Rebuilds b_u for every u in U3 and the mask key of every dropped v
    /// from the first t reveals, removes their masks from the sum and
    /// publishes it.
    fn aggregate(&mut self, now: Instant, r: Reveals) {
        let Some(att) = self.running() else { return };
        let binding = att.binding;
        let attempt = att.number;
        let t = self.threshold();
        let Reveals {
            mut agg,
            u3,
            dropped,
            got,
        } = r;
        let used: Vec<_> = got.iter().take(t).collect();
        let indices: Vec<u16> = used.iter().map(|(m, _)| m.share_index()).collect();
        let result = (|| -> Result<(), String> {
            let interpolator = Interpolator::new(&indices).map_err(|e| e.to_string())?;
            // Every mask to remove, then one fused pass over the sum.
            let mut add = Vec::new();
            let mut sub = Vec::with_capacity(u3.len() * (dropped.len() + 1));
            for (pos, u) in u3.iter().enumerate() {
                let shares: Vec<&Share> =
                    used.iter().filter_map(|(_, (b, _))| b.get(pos)).collect();
                let b = interpolator
                    .combine(&shares)
                    .map_err(|e| format!("self-mask seed of {u}: {e}"))?;
                if agg.commitments.get(u) != Some(&binding.commitment(*u, &b)) {
                    return Err(format!(
                        "self-mask seed of {u} does not match its commitment"
                    ));
                }
                sub.push(b);
            }
            for (pos, v) in dropped.iter().enumerate() {
                let shares: Vec<&Share> =
                    used.iter().filter_map(|(_, (_, k))| k.get(pos)).collect();
                let secret = interpolator
                    .combine(&shares)
                    .map_err(|e| format!("mask key of {v}: {e}"))?;
                let key = AgreementSecret::from_secret32(&secret);
                let advertised = agg.peers.get(v).map(|p| p.mask);
                if advertised != Some(key.public()) {
                    return Err(format!("mask key of {v} does not match its advert"));
                }
                for u in &u3 {
                    let peer = agg
                        .peers
                        .get(u)
                        .ok_or_else(|| format!("{u} has no advert"))?;
                    let dh = key
                        .agree(&peer.mask)
                        .map_err(|_| format!("mask key of {u} has low order"))?;
                    // u added +PRG(s_uv) for v < u and -PRG(s_uv) for v > u.
                    let seed = binding.pairwise_seed(&dh, *v, *u);
                    if v < u {
                        sub.push(seed);
                    } else {
                        add.push(seed);
                    }
                }
            }
            let add: Vec<&Secret32> = add.iter().collect();
            let sub: Vec<&Secret32> = sub.iter().collect();
            // The members wait for this: use the cores.
            prg::apply_masks_parallel(&add, &sub, &mut agg.sum, prg::mask_threads());
            Ok(())
        })();
        if let Err(reason) = result {
            self.broadcast(Payload::AttemptAborted(AttemptAborted {
                reason: AbortReason::ReconstructionFailed,
            }));
            self.fail_attempt(now, AttemptFailure::ReconstructionFailed { reason });
            return;
        }
        let message = Message {
            header: binding.header(self.me),
            payload: Payload::Outcome(OutcomeMessage {
                participants: u3,
                sum: RingVector(agg.sum),
            }),
        };
        let bytes = match wire::encode(&self.identity, &message) {
            Ok(b) => WireBytes::new(b),
            Err(error) => {
                self.event(Event::EncodeFailed {
                    kind: MessageKind::Outcome,
                    error,
                });
                return;
            }
        };
        self.outputs.push_back(Output::Broadcast {
            message: Outgoing {
                kind: MessageKind::Outcome,
                attempt,
                bytes: bytes.clone(),
            },
        });
        let Payload::Outcome(o) = message.payload else {
            return;
        };
        let outcome = Outcome {
            round: self.config.round,
            attempt,
            participants: o.participants,
            sum: o.sum.0,
        };
        self.finish(outcome, bytes);
    }
}
