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
            "03abababababababababababababababababababababababababababababababab07010300010101",
            "01010101010101010101010101010101010101010101010101010101010202020202020202020202",
            "0202020202020202020202020202020202020202026e67bf0210213b314da2e13d79b02a01767f01",
            "bd4b7874ccc1bd406889f8b3c95746e0f110a094387571ec0b4b4296e15e17d8ec9d29f770e3586d",
            "429819d40f",
        ),
    ),
    (
        MessageKind::KeysAnnounced,
        concat!(
            "03abababababababababababababababababababababababababababababababab070103010103a1",
            "a2a34159c7762ea3b39b60923d50cc3fb95729e40006b151728f7d792b3b1ee037c899d1a4981f0a",
            "6709113dd7888ebaf02b6e76536c8f5dafb64c0bd0dcef020f09",
        ),
    ),
    (
        MessageKind::EncryptedShares,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010302030303",
            "03030303030303030303030303030303030303030303030303030303030200050404040404020305",
            "0505a26aeb9bc0c462485d663eef7ec9c1faf316745919fa1a528d1f7f4350b3eae6837ddb446225",
            "47607ef3d77c97591caa3524747bcafa2f2d27caadfec2f5330f",
        ),
    ),
    (
        MessageKind::SharesForwarded,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010303010300",
            "01020200030606060203070707c0960f7af80225a323bb40fef87ca98bad7947d5afe67c44043fc6",
            "017126eed5536f0b3e650a34f9ab5795aac2c2367accb9d0730a33f88f6528cdacd5eec00c",
        ),
    ),
    (
        MessageKind::MaskedInput,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010304200000",
            "0000000000000100000000000000ffffffffffffffff0807060504030201c441bc21dde6856e5434",
            "32921be4c9b79d6ddc5dca36de97211497993a1393f3c52ab78b720ec170224e391f0e0515bd9781",
            "44cc6463ba0e517dcbab5fe89405",
        ),
    ),
    (
        MessageKind::ConsistencyRequest,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010305030001",
            "ac0284452ac40aaf51cac46673869304d1b9b610e7d163d1b527f11e307d724e5d94c6761fa87861",
            "b3344769276b1af2fbf9eb097dff0c75a5bf94b0d250a183530d",
        ),
    ),
    (
        MessageKind::ConsistencySignature,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010306080808",
            "08080808080808080808080808080808080808080808080808080808080808080808080808080808",
            "0808080808080808080808080808080808080808086e4205d4c358f7a053a1cbff7fceaea98721e5",
            "8ec2c9e3c8f4d2329c42a0972c364a4e8e5b14265899d09fd6d22ded338a52a2f63a04f655f1a7cc",
            "5430252e04",
        ),
    ),
    (
        MessageKind::UnmaskRequest,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010307030001",
            "03010009090909090909090909090909090909090909090909090909090909090909090909090909",
            "0909090909090909090909090909090909090909090909090909093ac27298fbc899ce65196e7be1",
            "57be68efb6c16a282010a0fae1c6bb8b292ec160ea74bf91f3b79c57cfc46ecccdb336f3e7cd60d4",
            "a4d911fd2ea8f7b5039a0f",
        ),
    ),
    (
        MessageKind::UnmaskShares,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010308010004",
            "0a0a0a0a0102040b0b0b0b3cf400c6583f1476b1848f801fc749b1228f4faaa62bec901069a80bed",
            "1ada64ae5d3b62bbd4be2e045b93a9b093d03966cda19225af0c9c64f51528a92e4605",
        ),
    ),
    (
        MessageKind::Outcome,
        concat!(
            "03abababababababababababababababababababababababababababababababab07010309030001",
            "0302040165960cf127388370f18505175aff10384787c3ad809b21731bc82f2fca71ed51dcb87a7c",
            "fe783dd06388893702f10a52b0c9183f2db7ee5a1c84d979c83b13f708",
        ),
    ),
    (
        MessageKind::AttemptAborted,
        concat!(
            "03abababababababababababababababababababababababababababababababab0701030a000202",
            "3f159a53881f0063b0deb333100a6c0748e1639ec869fbd4cd577329871126d31588cead6c4256ef",
            "175a623b2090fb0d6e2e71c577293626b8f9703316a41f06",
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
