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
            "02abababababababababababababababababababababababababababababababab07010300010101",
            "01010101010101010101010101010101010101010101010101010101010202020202020202020202",
            "02020202020202020202020202020202020202020226ed30ad51cfc779c6ef44852bd2e338744f96",
            "265767dd1f393b881e75665a2d17f765299bdde277e3df2d7027894b344e6b26a540d29be3ac5612",
            "b01043a305",
        ),
    ),
    (
        MessageKind::KeysAnnounced,
        concat!(
            "02abababababababababababababababababababababababababababababababab070103010103a1",
            "a2a39c49655c5b4948f1b1898109dc74d73ae31c50d58c4c778aabb7247348de34d0e8feb6a3c53d",
            "3f3f1d594487a2fe9776c7bc35ee6739bd495634b18bc3a65a0e",
        ),
    ),
    (
        MessageKind::EncryptedShares,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010302030303",
            "03030303030303030303030303030303030303030303030303030303030200050404040404020305",
            "0505b9e88afa9e8523d0b67a877b47e5433d58798886647c27a917c46e7a86d98c178e34df6717a0",
            "5e2a9112372b6e2e21a6adac8b67d0da4ed246045493408ee205",
        ),
    ),
    (
        MessageKind::SharesForwarded,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010303010300",
            "010202000306060602030707070561524794cf7eee19ee6d0bdfd4fb9cd45ff24b89baad25e46456",
            "81eb469f1566a086690692951ae3864e7da08243e550928483da5b74b0edb27b69b8bec20e",
        ),
    ),
    (
        MessageKind::MaskedInput,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010304200000",
            "0000000000000100000000000000ffffffffffffffff0807060504030201e2951ac664747b351264",
            "1f951e026c64bf45fd566798bd8ab7f93d72b0ea9a74cab46035207fac4c0ed71f9aaad7791a9d22",
            "995bab1f944b5a48816077d85a0e",
        ),
    ),
    (
        MessageKind::ConsistencyRequest,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010305030001",
            "ac025e91fe442bfc6fcc88988f3d2124548e7e83d6630931219d6daca06b291ba03d2418d1f1fc4e",
            "95b79f545ee41557641053d6360224fb38f5c0c024db29d7030e",
        ),
    ),
    (
        MessageKind::ConsistencySignature,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010306080808",
            "08080808080808080808080808080808080808080808080808080808080808080808080808080808",
            "080808080808080808080808080808080808080808a619c19ad048c87b903c5d83afde80264330d4",
            "d251cd76521daa87fb3f61ca7e7133359d1b63d7ce0b099c2d8a382a1557f90e8a168528964df679",
            "242078a80b",
        ),
    ),
    (
        MessageKind::UnmaskRequest,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010307030001",
            "03010009090909090909090909090909090909090909090909090909090909090909090909090909",
            "0909090909090909090909090909090909090909090909090909096302374b7bd64516d1001a5101",
            "6d7a0c17f07b677424960f4f48a0a4adbff4d38ad0e1c6f5198ef65d3e07f15ed6c4a876723a2100",
            "c6e0431a7c30fe4a24d70d",
        ),
    ),
    (
        MessageKind::UnmaskShares,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010308010004",
            "0a0a0a0a0102040b0b0b0b1d7fd680c55fb2a1196a4aec87aa6ff961ede1c62f4385879045c5c487",
            "f0b15e3725a881edb844ddc233b6c5a84c1d96915b6df384c8656d1d18623adcb0b40d",
        ),
    ),
    (
        MessageKind::Outcome,
        concat!(
            "02abababababababababababababababababababababababababababababababab07010309030001",
            "0302040165bdc79d2462618f7538e1428f65e8e26df47a7a98f61367e1ed67aac6c06b59cd0a091f",
            "1849d8b6103c13ed3a758988d92c42f68a9c5c16e71b0af8bdf4e5f501",
        ),
    ),
    (
        MessageKind::AttemptAborted,
        concat!(
            "02abababababababababababababababababababababababababababababababab0701030a000202",
            "45251d207e5a1f8ea49c84a1fd2a671b090d3ff1fe0e947c38c3197094ac05623d5edbded77ec764",
            "0b1bd1948aca297f8ce104bff35e191543b54496f1590905",
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
