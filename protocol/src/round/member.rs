//! The member role: advertise keys, share them, send the masked input, sign
//! U3, reveal.

use std::collections::BTreeMap;

use primia_crypto::prg::Masker;
use primia_crypto::{AgreementPublic, AgreementSecret, Ring, Secret32, Share, aead, split};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::binding::{Binding, PeerKeys, SHARE_PAIR_BYTES};
use super::{Auth, Event, RejectReason, Round, check_set};
use crate::reveal::{RevealEntry, ShareKind};
use crate::roster::{MemberId, Roster};
use crate::time::Instant;
use crate::wire::{
    self, AdvertiseKeys, Bytes, CONSISTENCY_SIGNATURE, ConsistencyRequest, ConsistencySignature,
    EncryptedShares, KeysAnnounced, MaskedInput, Message, MessageKind, Payload, Phase,
    RevealedShare, RingVector, SealedShares, ShareBytes, SharesForwarded, UnmaskRequest,
    UnmaskShares, consistency_statement,
};

/// Where the member role stands in an attempt, with exactly the data that
/// step needs: secrets are dropped (and wiped) as soon as they are used up.
pub(crate) enum MemberPhase {
    /// Keys advertised; waiting for U1.
    AwaitingKeys { keys: AttemptKeys },
    /// Shares sent; waiting for the shares addressed to this member (U2).
    AwaitingShares(Box<SharesSent>),
    /// Shares in; waiting for the member's own input.
    AwaitingInput(Box<Ready>),
    /// Masked input sent; waiting for U3.
    AwaitingSurvivors(Box<Held>),
    /// U3 signed; waiting for the proof of t signatures.
    AwaitingProof(Box<Signed>),
    /// Shares revealed; waiting for the outcome.
    AwaitingOutcome,
    /// Not part of this attempt; waiting for its outcome or its end.
    Spectating,
}

impl MemberPhase {
    pub(crate) fn phase(&self) -> Phase {
        match self {
            MemberPhase::AwaitingKeys { .. } | MemberPhase::Spectating => Phase::AdvertiseKeys,
            MemberPhase::AwaitingShares(_) => Phase::ShareKeys,
            MemberPhase::AwaitingInput(_) | MemberPhase::AwaitingSurvivors(_) => Phase::MaskedInput,
            MemberPhase::AwaitingProof(_) => Phase::ConsistencyCheck,
            MemberPhase::AwaitingOutcome => Phase::Unmask,
        }
    }
}

/// The two fresh x25519 secrets of one attempt.
pub(crate) struct AttemptKeys {
    share: AgreementSecret,
    mask: AgreementSecret,
}

impl AttemptKeys {
    fn public(&self) -> PeerKeys {
        PeerKeys {
            share: self.share.public(),
            mask: self.mask.public(),
        }
    }
}

pub(crate) struct SharesSent {
    u1: Vec<MemberId>,
    /// Key to open the bundle each other member of U1 sealed for us.
    open_keys: BTreeMap<MemberId, Secret32>,
    /// s_uv with each other member of U1.
    seeds: BTreeMap<MemberId, Secret32>,
    b: Secret32,
    /// Our own shares of b_u and of our mask key.
    own: (Share, Share),
}

pub(crate) struct Ready {
    u2: Vec<MemberId>,
    seeds: BTreeMap<MemberId, Secret32>,
    b: Secret32,
    held: BTreeMap<MemberId, (Share, Share)>,
}

pub(crate) struct Held {
    u2: Vec<MemberId>,
    /// Shares of (b_v, mask key of v) for each v in U2, ours included.
    held: BTreeMap<MemberId, (Share, Share)>,
    /// A proof that overtook U3 on the network (verified, at most one).
    early_proof: Option<Message>,
}

pub(crate) struct Signed {
    u2: Vec<MemberId>,
    u3: Vec<MemberId>,
    /// This member's consistency signature over U3.
    signature: wire::SignatureBytes,
    held: BTreeMap<MemberId, (Share, Share)>,
    /// Whether the reveal this U3 calls for is in the record already (see
    /// [`Round::record_reveal`]).
    recorded: bool,
}

/// A masked input ready to go: for this member's own leader role, or
/// already encoded and signed for a remote leader.
enum Masked {
    Local(Vec<Ring>),
    Envelope(Vec<u8>),
}

/// Fresh keys for an attempt and the advert announcing them.
pub(crate) fn advertise<R: CryptoRng>(
    rng: &mut R,
    binding: Binding,
    me: MemberId,
) -> (MemberPhase, Message) {
    let keys = AttemptKeys {
        share: AgreementSecret::generate(rng),
        mask: AgreementSecret::generate(rng),
    };
    let public = keys.public();
    let message = Message {
        header: binding.header(me),
        payload: Payload::AdvertiseKeys(AdvertiseKeys {
            share_public: *public.share.as_bytes(),
            mask_public: *public.mask.as_bytes(),
        }),
    };
    (MemberPhase::AwaitingKeys { keys }, message)
}

/// Checks one relayed advert: a signed envelope of its author, bound to this
/// attempt. Its signature is checked only if `needs_signature(author)`.
pub(crate) fn parse_advert(
    roster: &Roster,
    binding: Binding,
    bytes: &[u8],
    needs_signature: impl Fn(MemberId) -> bool,
) -> Result<(MemberId, PeerKeys), String> {
    // In place: an advert has no vector, and an envelope of another kind
    // relayed as one must not make this member unpack a sum.
    let d = wire::decode_in_place(bytes).map_err(|e| e.to_string())?;
    let h = d.message.header;
    if h.roster != binding.roster || h.round != binding.round || h.attempt != binding.attempt {
        return Err("bound to another roster, round or attempt".into());
    }
    let Payload::AdvertiseKeys(p) = &d.message.payload else {
        return Err(format!("a {:?}, not a key advert", d.kind()));
    };
    let member = roster
        .member(h.sender)
        .ok_or_else(|| format!("unknown member {}", h.sender.0))?;
    if needs_signature(h.sender) {
        d.verify(&member.identity).map_err(|e| e.to_string())?;
    }
    Ok((
        h.sender,
        PeerKeys {
            share: AgreementPublic::from_bytes(p.share_public),
            mask: AgreementPublic::from_bytes(p.mask_public),
        },
    ))
}

/// Draws b_u, splits it and the mask key, seals each pair of shares for its
/// recipient and derives the pairwise seeds.
fn share_keys<R: CryptoRng>(
    rng: &mut R,
    binding: Binding,
    me: MemberId,
    threshold: usize,
    roster_len: usize,
    keys: &AttemptKeys,
    u1: &[(MemberId, PeerKeys)],
) -> Result<(SharesSent, EncryptedShares), RejectReason> {
    let bad = |position: usize, reason: &str| RejectReason::BadAdvert {
        position,
        reason: reason.into(),
    };
    let b = Secret32::random(rng);
    let t = threshold as u16;
    let n = roster_len as u16;
    let split_err = |_| RejectReason::InvalidSet {
        what: "threshold does not fit the roster",
    };
    let mut b_shares: Vec<Option<Share>> = split(&b, t, n, rng)
        .map_err(split_err)?
        .into_iter()
        .map(Some)
        .collect();
    let mask_secret = keys.mask.to_secret32();
    let mut k_shares: Vec<Option<Share>> = split(&mask_secret, t, n, rng)
        .map_err(split_err)?
        .into_iter()
        .map(Some)
        .collect();
    let mut take = |v: MemberId| -> Option<(Share, Share)> {
        Some((
            b_shares.get_mut(v.index())?.take()?,
            k_shares.get_mut(v.index())?.take()?,
        ))
    };
    let mut open_keys = BTreeMap::new();
    let mut seeds = BTreeMap::new();
    let mut sealed = Vec::with_capacity(u1.len());
    for (position, (v, pk)) in u1.iter().enumerate() {
        if *v == me {
            continue;
        }
        let dh = keys
            .share
            .agree(&pk.share)
            .map_err(|_| bad(position, "share key has low order"))?;
        let (bs, ks) = take(*v).ok_or_else(|| bad(position, "member outside the roster"))?;
        let mut plaintext = Zeroizing::new(Vec::with_capacity(SHARE_PAIR_BYTES));
        plaintext.extend_from_slice(&bs.to_bytes());
        plaintext.extend_from_slice(&ks.to_bytes());
        let ciphertext = aead::seal(
            &binding.share_key(&dh, me, *v),
            &binding.share_ad(me, *v),
            &plaintext,
        );
        open_keys.insert(*v, binding.share_key(&dh, *v, me));
        sealed.push(SealedShares {
            recipient: *v,
            ciphertext: Bytes(ciphertext),
        });
        let mask_dh = keys
            .mask
            .agree(&pk.mask)
            .map_err(|_| bad(position, "mask key has low order"))?;
        seeds.insert(*v, binding.pairwise_seed(&mask_dh, me, *v));
    }
    let own = take(me).ok_or(RejectReason::InvalidSet {
        what: "U1 does not contain this member",
    })?;
    let payload = EncryptedShares {
        self_mask_commitment: binding.commitment(me, &b),
        shares: sealed,
    };
    let sent = SharesSent {
        u1: u1.iter().map(|(v, _)| *v).collect(),
        open_keys,
        seeds,
        b,
        own,
    };
    Ok((sent, payload))
}

impl<R: CryptoRng> Round<R> {
    /// Routes a leader message of the current attempt to the member role.
    pub(super) fn member_dispatch(
        &mut self,
        now: Instant,
        msg: &Message,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        match &msg.payload {
            Payload::KeysAnnounced(p) => self.member_on_keys(now, msg, p, auth),
            Payload::SharesForwarded(p) => self.member_on_shares(now, p, auth),
            Payload::ConsistencyRequest(p) => self.member_on_survivors(now, p, auth),
            Payload::UnmaskRequest(p) => self.member_on_proof(now, msg, p, auth),
            Payload::AttemptAborted(p) => {
                auth.check()?;
                self.fail_attempt(now, super::AttemptFailure::AbortedByLeader(p.reason));
                Ok(())
            }
            other => Err(RejectReason::Unexpected { kind: other.kind() }),
        }
    }

    /// The leader spoke: restart the silence timer.
    fn progress(&mut self, now: Instant) {
        let silence = self.config.leader_silence_ms;
        if let Some(att) = self.running()
            && att.member_deadline.is_some()
        {
            att.member_deadline = Some(now.plus_millis(silence));
        }
    }

    fn set_member(&mut self, phase: MemberPhase) {
        if let Some(att) = self.running() {
            let number = att.number;
            let p = phase.phase();
            let watching = matches!(phase, MemberPhase::Spectating);
            att.member = phase;
            if !watching {
                self.event(Event::PhaseChanged {
                    attempt: number,
                    phase: p,
                });
            }
        }
    }

    /// This member takes no further part in the attempt.
    fn exclude(&mut self, phase: Phase) {
        if let Some(att) = self.running() {
            let attempt = att.number;
            att.member = MemberPhase::Spectating;
            self.event(Event::Excluded { attempt, phase });
        }
    }

    /// Takes the member phase out, leaving `Spectating` until it is put back.
    fn take_member(&mut self) -> MemberPhase {
        self.running().map_or(MemberPhase::Spectating, |a| {
            std::mem::replace(&mut a.member, MemberPhase::Spectating)
        })
    }

    /// Accepts a leader message while only watching.
    fn watch(&mut self, now: Instant, auth: &Auth<'_>) -> Result<(), RejectReason> {
        auth.check()?;
        self.progress(now);
        Ok(())
    }

    fn member_on_keys(
        &mut self,
        now: Instant,
        msg: &Message,
        p: &KeysAnnounced,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        let kind = MessageKind::KeysAnnounced;
        let (n, t, me) = (self.roster.len(), self.threshold(), self.me);
        let att = self.running().ok_or(RejectReason::RoundOver)?;
        let binding = att.binding;
        match &att.member {
            MemberPhase::AwaitingKeys { .. } => {}
            MemberPhase::Spectating => return self.watch(now, auth),
            _ => return Err(RejectReason::Duplicate { kind }),
        }
        if p.adverts.len() < t || p.adverts.len() > n {
            return Err(RejectReason::InvalidSet {
                what: "U1 is smaller than the threshold or larger than the roster",
            });
        }
        auth.check()?;
        // This member's own leader role checked every advert's signature
        // as it accepted it; from another leader, this member's own advert
        // needs none (its keys must equal the ones made here, see below).
        let own_leader = msg.header.sender == me;
        let needs_signature = |author: MemberId| !own_leader && author != me;
        let mut u1 = Vec::with_capacity(p.adverts.len());
        for (position, bytes) in p.adverts.iter().enumerate() {
            let (id, keys) = parse_advert(&self.roster, binding, &bytes.0, needs_signature)
                .map_err(|reason| RejectReason::BadAdvert { position, reason })?;
            if u1.last().is_some_and(|(last, _)| *last >= id) {
                return Err(RejectReason::InvalidSet {
                    what: "U1 adverts are not in strictly ascending member order",
                });
            }
            u1.push((id, keys));
        }
        self.progress(now);
        let MemberPhase::AwaitingKeys { keys } = self.take_member() else {
            return Err(RejectReason::Duplicate { kind });
        };
        match u1.iter().find(|(id, _)| *id == me) {
            Some((_, pk)) if *pk == keys.public() => {}
            // Left out, or the announcement carries keys of an earlier life
            // of this member (before a restart): either way, watch.
            _ => {
                self.exclude(Phase::AdvertiseKeys);
                return Ok(());
            }
        }
        match share_keys(&mut self.rng, binding, me, t, n, &keys, &u1) {
            Ok((sent, payload)) => {
                self.set_member(MemberPhase::AwaitingShares(Box::new(sent)));
                let leader = self.leader_of(binding.attempt);
                self.send(leader, Payload::EncryptedShares(payload));
                Ok(())
            }
            Err(reason) => {
                self.exclude(Phase::AdvertiseKeys);
                Err(reason)
            }
        }
    }

    fn member_on_shares(
        &mut self,
        now: Instant,
        p: &SharesForwarded,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        let kind = MessageKind::SharesForwarded;
        let (n, t, me) = (self.roster.len(), self.threshold(), self.me);
        let att = self.running().ok_or(RejectReason::RoundOver)?;
        let binding = att.binding;
        let sent = match &att.member {
            MemberPhase::AwaitingShares(s) => s,
            MemberPhase::Spectating => return self.watch(now, auth),
            MemberPhase::AwaitingKeys { .. } => return Err(RejectReason::Unexpected { kind }),
            _ => return Err(RejectReason::Duplicate { kind }),
        };
        if p.recipient != me {
            return Err(RejectReason::WrongRecipient {
                recipient: p.recipient,
            });
        }
        check_set(
            &p.senders,
            n,
            "U2 is not strictly ascending or names unknown members",
        )?;
        if p.senders.len() < t
            || p.senders.binary_search(&me).is_err()
            || !p.senders.iter().all(|s| sent.u1.binary_search(s).is_ok())
        {
            return Err(RejectReason::InvalidSet {
                what: "U2 is smaller than the threshold, lacks the recipient or is not a subset of U1",
            });
        }
        let others = p.senders.iter().filter(|s| **s != me);
        if p.shares.len() + 1 != p.senders.len()
            || !p.shares.iter().zip(others).all(|(f, s)| f.sender == *s)
        {
            return Err(RejectReason::InvalidSet {
                what: "forwarded shares do not match U2",
            });
        }
        auth.check()?;
        let mut held = BTreeMap::new();
        let mut failure = None;
        for f in &p.shares {
            let opened = sent
                .open_keys
                .get(&f.sender)
                .ok_or("sender is not in U1")
                .and_then(|key| {
                    aead::open(key, &binding.share_ad(f.sender, me), &f.ciphertext.0)
                        .map_err(|_| "ciphertext does not open with the key agreed for this pair")
                })
                .and_then(|pt| {
                    if pt.len() != SHARE_PAIR_BYTES {
                        return Err("plaintext has the wrong length");
                    }
                    let (b, k) = pt.split_at(primia_crypto::Share::ENCODED_LEN);
                    let b = Share::from_bytes(b).map_err(|_| "invalid share encoding")?;
                    let k = Share::from_bytes(k).map_err(|_| "invalid share encoding")?;
                    if b.index() != me.share_index() || k.index() != me.share_index() {
                        return Err("share index is not this member's");
                    }
                    Ok((b, k))
                });
            match opened {
                Ok(pair) => {
                    held.insert(f.sender, pair);
                }
                Err(reason) => {
                    failure = Some(RejectReason::BadShares {
                        sender: f.sender,
                        reason,
                    });
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            // Without every bundle of U2 this member's mask could not be
            // removed if it dropped, so it withdraws from the attempt.
            self.exclude(Phase::ShareKeys);
            return Err(reason);
        }
        self.progress(now);
        let MemberPhase::AwaitingShares(sent) = self.take_member() else {
            return Err(RejectReason::Duplicate { kind });
        };
        let SharesSent {
            mut seeds, b, own, ..
        } = *sent;
        held.insert(me, own);
        seeds.retain(|v, _| p.senders.binary_search(v).is_ok());
        self.set_member(MemberPhase::AwaitingInput(Box::new(Ready {
            u2: p.senders.clone(),
            seeds,
            b,
            held,
        })));
        self.member_input_ready(now);
        Ok(())
    }

    /// Sends the masked input once both the shares and the input are in.
    pub(super) fn member_input_ready(&mut self, _now: Instant) {
        let me = self.me;
        let has_input = self.input.is_some();
        let ready = match self.running() {
            Some(att) if matches!(att.member, MemberPhase::AwaitingInput(_)) && has_input => {
                match self.take_member() {
                    MemberPhase::AwaitingInput(r) => r,
                    _ => return,
                }
            }
            _ => return,
        };
        let Some(att) = self.running() else { return };
        let (leader, attempt, header) = (att.leader, att.number, att.binding.header(me));
        // y_u = x_u + PRG(b_u) + sum_{v<u} PRG(s_uv) - sum_{v>u} PRG(s_uv),
        // every mask in one pass (see `prg::Masker`).
        let mut add = vec![&ready.b];
        let mut sub = Vec::new();
        for (v, seed) in &ready.seeds {
            if *v < me {
                add.push(seed);
            } else {
                sub.push(seed);
            }
        }
        let mut masker = Masker::new(&add, &sub);
        let Some(x) = self.input.as_ref() else { return };
        let masked = if leader == me {
            // To this member's own leader role: no envelope.
            let mut y = x.to_vec();
            masker.apply(&mut y);
            Ok(Masked::Local(y))
        } else {
            // Straight into the envelope, one L1-sized piece at a time.
            wire::encode_masked_input_with(&self.identity, &header, x.len(), |start, piece| {
                piece.copy_from_slice(&x[start..start + piece.len()]);
                masker.apply(piece);
            })
            .map(Masked::Envelope)
        };
        drop(masker);
        let Ready { u2, held, .. } = *ready;
        self.set_member(MemberPhase::AwaitingSurvivors(Box::new(Held {
            u2,
            held,
            early_proof: None,
        })));
        match masked {
            Ok(Masked::Local(y)) => self.send(
                leader,
                Payload::MaskedInput(MaskedInput {
                    vector: RingVector(y),
                }),
            ),
            Ok(Masked::Envelope(bytes)) => {
                self.push_send(leader, MessageKind::MaskedInput, attempt, bytes);
            }
            Err(error) => self.event(Event::EncodeFailed {
                kind: MessageKind::MaskedInput,
                error,
            }),
        }
    }

    fn member_on_survivors(
        &mut self,
        now: Instant,
        p: &ConsistencyRequest,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        let kind = MessageKind::ConsistencyRequest;
        let (n, t, me) = (self.roster.len(), self.threshold(), self.me);
        check_set(
            &p.survivors,
            n,
            "U3 is not strictly ascending or names unknown members",
        )?;
        let included = p.survivors.binary_search(&me).is_ok();
        let att = self.running().ok_or(RejectReason::RoundOver)?;
        let binding = att.binding;
        match &att.member {
            MemberPhase::AwaitingSurvivors(held) => {
                let consistent = p.survivors.len() >= t
                    && p.survivors.iter().all(|s| held.u2.binary_search(s).is_ok());
                auth.check()?;
                self.progress(now);
                if !consistent {
                    self.fail_attempt(
                        now,
                        super::AttemptFailure::ConsistencyCheckFailed {
                            reason: "U3 is smaller than the threshold or not a subset of U2".into(),
                        },
                    );
                    return Err(RejectReason::InvalidSet {
                        what: "U3 is smaller than the threshold or not a subset of U2",
                    });
                }
                if !included {
                    self.exclude(Phase::MaskedInput);
                    return Ok(());
                }
            }
            MemberPhase::Spectating => return self.watch(now, auth),
            MemberPhase::AwaitingKeys { .. }
            | MemberPhase::AwaitingShares(_)
            | MemberPhase::AwaitingInput(_) => {
                // The leader moved on without this member; fine only if U3
                // agrees.
                if included {
                    return Err(RejectReason::Unexpected { kind });
                }
                auth.check()?;
                self.progress(now);
                self.exclude(Phase::MaskedInput);
                return Ok(());
            }
            MemberPhase::AwaitingProof(s) => {
                if s.u3 == p.survivors {
                    return Err(RejectReason::Duplicate { kind });
                }
                auth.check()?;
                self.fail_attempt(
                    now,
                    super::AttemptFailure::ConsistencyCheckFailed {
                        reason: "leader showed two different survivor sets".into(),
                    },
                );
                return Err(RejectReason::ConsistencyMismatch);
            }
            MemberPhase::AwaitingOutcome => return Err(RejectReason::Duplicate { kind }),
        }
        let MemberPhase::AwaitingSurvivors(held) = self.take_member() else {
            return Err(RejectReason::Duplicate { kind });
        };
        let Held {
            u2,
            held,
            early_proof,
        } = *held;
        let statement = consistency_statement(&binding.header(me), &p.survivors);
        let signature = self.identity.sign(CONSISTENCY_SIGNATURE, &statement);
        let entry = self.record_reveal(binding.attempt, &u2, &p.survivors);
        self.set_member(MemberPhase::AwaitingProof(Box::new(Signed {
            u2,
            u3: p.survivors.clone(),
            signature: signature.into(),
            held,
            recorded: entry.is_some(),
        })));
        let leader = self.leader_of(binding.attempt);
        self.send(
            leader,
            Payload::ConsistencySignature(ConsistencySignature {
                signature: signature.into(),
            }),
        );
        if let Some(entry) = entry {
            // After the signature: the record becomes durable while the
            // leader gathers the others' signatures, not after its request
            // to unmask, when it would hold up the reveal.
            self.outputs.push_back(super::Output::PersistReveal(entry));
        }
        if let Some(proof) = early_proof
            && let Payload::UnmaskRequest(req) = &proof.payload
            && let Err(reason) = self.member_on_proof(now, &proof, req, &Auth::Local)
        {
            let from = proof.header.sender;
            self.event(Event::Rejected { from, reason });
        }
        Ok(())
    }

    fn member_on_proof(
        &mut self,
        now: Instant,
        msg: &Message,
        p: &UnmaskRequest,
        auth: &Auth<'_>,
    ) -> Result<(), RejectReason> {
        let kind = MessageKind::UnmaskRequest;
        let (t, me) = (self.threshold(), self.me);
        let roster = std::sync::Arc::clone(&self.roster);
        let att = self.running().ok_or(RejectReason::RoundOver)?;
        let binding = att.binding;
        let u3 = match &att.member {
            MemberPhase::AwaitingSurvivors(held) => {
                // Overtook U3 on the network: keep it (verified) until U3 comes.
                if held.early_proof.is_some() {
                    return Err(RejectReason::Duplicate { kind });
                }
                auth.check()?;
                if let Some(MemberPhase::AwaitingSurvivors(held)) =
                    self.running().map(|a| &mut a.member)
                {
                    held.early_proof = Some(msg.clone());
                }
                self.progress(now);
                return Ok(());
            }
            MemberPhase::AwaitingProof(s) => (s.u3.clone(), s.signature),
            MemberPhase::Spectating => return self.watch(now, auth),
            MemberPhase::AwaitingOutcome => return Err(RejectReason::Duplicate { kind }),
            _ => return Err(RejectReason::Unexpected { kind }),
        };
        let (u3, own_signature) = u3;
        // Reveal only for the U3 this member signed, proven by t valid
        // signatures of members of that U3 over it.
        let problem = if p.survivors != u3 {
            Some(RejectReason::ConsistencyMismatch)
        } else if p.signatures.len() < t
            || !p.signatures.windows(2).all(|w| w[0].member < w[1].member)
            || !p
                .signatures
                .iter()
                .all(|s| u3.binary_search(&s.member).is_ok())
        {
            Some(RejectReason::InvalidSet {
                what: "proof has fewer than t signatures, repeats a signer or names a member outside U3",
            })
        } else {
            None
        };
        if let Some(reason) = problem {
            auth.check()?;
            self.fail_attempt(
                now,
                super::AttemptFailure::ConsistencyCheckFailed {
                    reason: reason.to_string(),
                },
            );
            return Err(reason);
        }
        auth.check()?;
        let statement = consistency_statement(&binding.header(me), &u3);
        // Checked here unless this member's own leader role checked them as
        // it gathered them; this member's own signature is compared instead
        // (ed25519 signing is deterministic).
        let own_leader = msg.header.sender == me;
        let forged = p.signatures.iter().find(|s| {
            if s.member == me {
                return s.signature != own_signature;
            }
            !own_leader
                && roster.member(s.member).is_none_or(|m| {
                    m.identity
                        .verify(
                            CONSISTENCY_SIGNATURE,
                            &statement,
                            &s.signature.to_signature(),
                        )
                        .is_err()
                })
        });
        if let Some(s) = forged {
            let member = s.member;
            self.fail_attempt(
                now,
                super::AttemptFailure::ConsistencyCheckFailed {
                    reason: format!("consistency signature of {member} does not verify"),
                },
            );
            return Err(RejectReason::BadConsistencySignature { member });
        }
        self.progress(now);
        let MemberPhase::AwaitingProof(signed) = self.take_member() else {
            return Err(RejectReason::Duplicate { kind });
        };
        self.reveal(binding.attempt, *signed);
        Ok(())
    }

    /// What revealing for `u3` means (b_v shares for U3, mask-key shares
    /// for U2 \ U3), added to the record when the record allows it. The
    /// entry returned is for the driver to make durable, which it does
    /// before anything after it in the outputs happens; `None` when the
    /// record forbids it (the reveal is then withheld, see [`Self::reveal`]).
    ///
    /// Called when this member signs U3: the leader may only ask to unmask
    /// for the U3 this member signed, so the reveal is decided then, and
    /// recording it early only ever forbids more.
    fn record_reveal(
        &mut self,
        attempt: u32,
        u2: &[MemberId],
        u3: &[MemberId],
    ) -> Option<RevealEntry> {
        let revealed: Vec<(MemberId, ShareKind)> = u2
            .iter()
            .map(|v| {
                let kind = if u3.binary_search(v).is_ok() {
                    ShareKind::SelfMask
                } else {
                    ShareKind::MaskKey
                };
                (*v, kind)
            })
            .collect();
        if revealed
            .iter()
            .any(|(v, k)| !self.reveals.allows(attempt, *v, *k))
        {
            return None;
        }
        let entry = RevealEntry {
            round: self.config.round,
            attempt,
            revealed,
        };
        // `allows` passed for every pair, so this cannot fail; record
        // nothing (and so reveal nothing) rather than trust that.
        self.reveals.add(&entry).ok()?;
        Some(entry)
    }

    /// Reveals b_v shares for U3 and mask-key shares for U2 \ U3, as
    /// recorded (durably: the driver persisted the entry before this
    /// member's next input) when it signed U3.
    fn reveal(&mut self, attempt: u32, signed: Signed) {
        let Signed {
            u2,
            u3,
            held,
            recorded,
            ..
        } = signed;
        if !recorded {
            let forbidden = u2.iter().find_map(|v| {
                let kind = if u3.binary_search(v).is_ok() {
                    ShareKind::SelfMask
                } else {
                    ShareKind::MaskKey
                };
                (!self.reveals.allows(attempt, *v, kind)).then_some((*v, kind))
            });
            if let Some((member, kind)) = forbidden {
                self.event(Event::RevealWithheld {
                    attempt,
                    member,
                    kind,
                });
            }
            self.set_member(MemberPhase::Spectating);
            return;
        }
        let share = |owner: MemberId, s: &Share| RevealedShare {
            owner,
            share: ShareBytes(s.to_bytes().to_vec()),
        };
        let mut self_mask = Vec::with_capacity(u3.len());
        let mut mask_key = Vec::with_capacity(u2.len() - u3.len());
        for (v, (b, k)) in &held {
            if u3.binary_search(v).is_ok() {
                self_mask.push(share(*v, b));
            } else {
                mask_key.push(share(*v, k));
            }
        }
        self.set_member(MemberPhase::AwaitingOutcome);
        let leader = self.leader_of(attempt);
        self.send(
            leader,
            Payload::UnmaskShares(UnmaskShares {
                self_mask,
                mask_key,
            }),
        );
    }
}
