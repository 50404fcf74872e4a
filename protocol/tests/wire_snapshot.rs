//! Snapshot of the encoded bytes of every message kind: a change to the
//! wire format fails here and shows up in review. Update a constant only
//! together with [`primia_protocol::wire::WIRE_VERSION`] (or when the change
//! is deliberate and no deployed daemon speaks the old bytes). The
//! signatures are deterministic (ed25519), so they are pinned too.

use primia_crypto::{IdentityKey, Secret32};
use primia_protocol::wire::*;
use primia_protocol::{MemberId, RosterDigest};

fn key() -> IdentityKey {
    IdentityKey::from_seed(&Secret32::from_bytes([0x11; 32]))
}

fn header() -> Header {
    Header {
        roster: RosterDigest([0xab; 32]),
        round: 7,
        attempt: 1,
        sender: MemberId(3),
    }
}

fn payloads() -> Vec<Payload> {
    let m = MemberId;
    vec![
        Payload::AdvertiseKeys(AdvertiseKeys {
            share_public: [1; 32],
            mask_public: [2; 32],
        }),
        Payload::KeysAnnounced(KeysAnnounced {
            adverts: vec![Bytes(vec![0xa1, 0xa2, 0xa3])],
        }),
        Payload::EncryptedShares(EncryptedShares {
            self_mask_commitment: [3; 32],
            shares: vec![
                SealedShares {
                    recipient: m(0),
                    ciphertext: Bytes(vec![4; 5]),
                },
                SealedShares {
                    recipient: m(2),
                    ciphertext: Bytes(vec![5; 3]),
                },
            ],
        }),
        Payload::SharesForwarded(SharesForwarded {
            recipient: m(1),
            senders: vec![m(0), m(1), m(2)],
            shares: vec![
                ForwardedShares {
                    sender: m(0),
                    ciphertext: Bytes(vec![6; 3]),
                },
                ForwardedShares {
                    sender: m(2),
                    ciphertext: Bytes(vec![7; 3]),
                },
            ],
        }),
        Payload::MaskedInput(MaskedInput {
            vector: RingVector(vec![0, 1, u64::MAX, 0x0102_0304_0506_0708]),
        }),
        Payload::ConsistencyRequest(ConsistencyRequest {
            survivors: vec![m(0), m(1), m(300)],
        }),
        Payload::ConsistencySignature(ConsistencySignature {
            signature: SignatureBytes([8; 64]),
        }),
        Payload::UnmaskRequest(UnmaskRequest {
            survivors: vec![m(0), m(1), m(3)],
            signatures: vec![MemberSignature {
                member: m(0),
                signature: SignatureBytes([9; 64]),
            }],
        }),
        Payload::UnmaskShares(UnmaskShares {
            self_mask: vec![RevealedShare {
                owner: m(0),
                share: ShareBytes(vec![10; 4]),
            }],
            mask_key: vec![RevealedShare {
                owner: m(2),
                share: ShareBytes(vec![11; 4]),
            }],
        }),
        Payload::Outcome(OutcomeMessage {
            participants: vec![m(0), m(1), m(3)],
            sum: RingVector(vec![5, 6]),
        }),
        Payload::AttemptAborted(AttemptAborted {
            reason: AbortReason::TooFewMembers {
                phase: Phase::MaskedInput,
                got: 2,
            },
        }),
    ]
}

/// Expected envelopes, in the order of `payloads()`.
const EXPECTED: [(MessageKind, &str); 11] = [
    (
        MessageKind::AdvertiseKeys,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010300010101",
            "01010101010101010101010101010101010101010101010101010101010202020202020202020202",
            "0202020202020202020202020202020202020202026ed48da9c4203c9ebb744b864c8acf5a497c5a",
            "ba48bc301083e1dc68ce5bcfa34baa076d38b4ad7984120b8c4e51f676b0389c340c436899c29095",
            "a67ec67c09",
        ),
    ),
    (
        MessageKind::KeysAnnounced,
        concat!(
            "01abababababababababababababababababababababababababababababababab070103010103a1",
            "a2a3b52dffea67e11af82e185a0ea3da8c27bb359602783ea0260c6666bf15189c5715998d73e366",
            "214b95935018640857eef38f541b28e272076aa8a724be969e06",
        ),
    ),
    (
        MessageKind::EncryptedShares,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010302030303",
            "03030303030303030303030303030303030303030303030303030303030200050404040404020305",
            "050502f02ebeb4a6331dfd8b4170c9261f4487925e58e52d10adc0982aeb5593e66e5c821e185c25",
            "7032f417b16567967541eb83ed64eca8d0c07ba81eb4254fd60a",
        ),
    ),
    (
        MessageKind::SharesForwarded,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010303010300",
            "01020200030606060203070707c595334c5a0e11c9bb8a598fa053702b5bba289c38f0931c6f4fb8",
            "85081cfb84841ae2e75b2a765c3e543a3606a9c777e1a831acc48e8fa67db942ec5f4f4a00",
        ),
    ),
    (
        MessageKind::MaskedInput,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010304200000",
            "0000000000000100000000000000ffffffffffffffff08070605040302018dcf285baceb84bbc6cc",
            "1dabbd9073cc7a5eabba1a83a4844f095cb7c99601345204816292d89e81a01370e4795a5185c817",
            "20df51a5ed28f9575a72181b680a",
        ),
    ),
    (
        MessageKind::ConsistencyRequest,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010305030001",
            "ac02a41f3edf30e4ed8e5fc9d97268cbba2058687df2398e67381dbc9f0a9c0b5fb15c8049f7c00e",
            "43291eebeb9706b47e390ff8508bda9f11a5bb9da315ddba8a08",
        ),
    ),
    (
        MessageKind::ConsistencySignature,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010306080808",
            "08080808080808080808080808080808080808080808080808080808080808080808080808080808",
            "0808080808080808080808080808080808080808081d09e222e4c02e3587b87fe7ebaef7c317cae8",
            "784f33ebe4e7cd372b5bdefde49654e79a353fdb4009d23fd4b8a173bdb55e67bc06abbc604117cc",
            "b6c5dff203",
        ),
    ),
    (
        MessageKind::UnmaskRequest,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010307030001",
            "03010009090909090909090909090909090909090909090909090909090909090909090909090909",
            "0909090909090909090909090909090909090909090909090909096a2bb0e33ac3d6e60587ebf9b3",
            "704db4dd3a2a1091604ce6ed5bba9cdcd9c44e502904ee563801192188be9df3cc5419db08caa790",
            "6841d30172394c2cb4fe04",
        ),
    ),
    (
        MessageKind::UnmaskShares,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010308010004",
            "0a0a0a0a0102040b0b0b0bc8023601e25910db11fa5817727e4625cbbdeb53885afdfd4b46883353",
            "001c9087e011718604fab09592bac9ff4ea4bdb6e36b46ee8c48aa958f3cae9c622c0e",
        ),
    ),
    (
        MessageKind::Outcome,
        concat!(
            "01abababababababababababababababababababababababababababababababab07010309030001",
            "03100500000000000000060000000000000029a23735bd1699d8a2618c6951f72701dccc31b8eb0b",
            "b46a509f6a7aa10c67970acc0aecc732b9f20caf79b91f53b2e2559f79a07fb7a9a3e8d43f7b8c56",
            "e608",
        ),
    ),
    (
        MessageKind::AttemptAborted,
        concat!(
            "01abababababababababababababababababababababababababababababababab0701030a000202",
            "e774b88881a43f92ec32f5184e6ee83ea4ec93123f24d244861574c2fbccc514e50491d9932a9e03",
            "95264537423841a2157b2da633aa5d6d7d9858b54e2e4f09",
        ),
    ),
];

#[test]
fn every_message_kind_encodes_to_its_snapshot() {
    let payloads = payloads();
    assert_eq!(payloads.len(), MessageKind::ALL.len());
    for (payload, (kind, expected)) in payloads.into_iter().zip(EXPECTED) {
        assert_eq!(payload.kind(), kind);
        let message = Message {
            header: header(),
            payload,
        };
        let bytes = encode(&key(), &message).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            expected,
            "the wire format of {kind:?} changed"
        );
        // And it decodes back to the same message under the same key.
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.message, message);
        decoded.verify(&key().public()).unwrap();
    }
}

#[test]
fn the_envelope_layout_is_version_body_signature() {
    let message = Message {
        header: header(),
        payload: payloads().remove(0),
    };
    let bytes = encode(&key(), &message).unwrap();
    assert_eq!(bytes[0], WIRE_VERSION);
    let body = postcard::to_allocvec(&message).unwrap();
    assert_eq!(&bytes[1..bytes.len() - SIGNATURE_BYTES], &body[..]);
    let signature =
        primia_crypto::Signature::from_bytes(bytes[bytes.len() - 64..].try_into().unwrap());
    key()
        .public()
        .verify(
            primia_crypto::kdf::MESSAGE_SIGNATURE,
            &bytes[..bytes.len() - 64],
            &signature,
        )
        .unwrap();
    // Ring vectors are raw little-endian u64s: 8 bytes per entry.
    let vector = |n: usize| Message {
        header: header(),
        payload: Payload::MaskedInput(MaskedInput {
            vector: RingVector(vec![u64::MAX; n]),
        }),
    };
    let a = encode(&key(), &vector(1000)).unwrap().len();
    let b = encode(&key(), &vector(2000)).unwrap().len();
    assert!(b - a >= 8000 && b - a <= 8002, "{a} {b}");
}
