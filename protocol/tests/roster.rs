//! The roster: validation, canonical order, digest, threshold and leader
//! rules.

use primia_crypto::{IdentityKey, Secret32};
use primia_protocol::{ConsortiumId, MemberId, MemberInfo, ProtocolError, Roster, Threshold};

fn members(n: u8) -> Vec<MemberInfo> {
    (0..n)
        .map(|i| MemberInfo {
            name: format!("hospital-{i}"),
            identity: IdentityKey::from_seed(&Secret32::from_bytes([i + 1; 32])).public(),
            addresses: vec![format!("/ip4/10.0.0.{i}/tcp/4001")],
        })
        .collect()
}

fn roster(n: u8, rule: Threshold) -> Result<Roster, ProtocolError> {
    Roster::new(
        ConsortiumId::new("paediatric-xray").unwrap(),
        members(n),
        rule,
    )
}

#[test]
fn threshold_rule_needs_more_than_half_plus_the_leader() {
    let t = |n, rule| roster(n, rule).map(|r| r.threshold());
    assert_eq!(t(2, Threshold::Majority).unwrap(), 2);
    assert_eq!(t(3, Threshold::Majority).unwrap(), 3);
    assert_eq!(t(4, Threshold::Majority).unwrap(), 3);
    assert_eq!(t(5, Threshold::Majority).unwrap(), 4);
    assert_eq!(t(10, Threshold::Majority).unwrap(), 6);
    assert_eq!(t(50, Threshold::Majority).unwrap(), 26);
    assert!(
        t(5, Threshold::AtLeast(3)).is_err(),
        "2t = n + 1 lets a leader split the view"
    );
    assert_eq!(t(5, Threshold::AtLeast(5)).unwrap(), 5);
    assert!(t(5, Threshold::AtLeast(6)).is_err());
    assert!(t(6, Threshold::AtLeast(3)).is_err());
}

#[test]
fn honest_leaders_need_only_a_strict_majority() {
    let t = |n, rule| roster(n, rule).map(|r| r.threshold());
    assert_eq!(t(3, Threshold::HonestLeader(2)).unwrap(), 2);
    assert_eq!(t(5, Threshold::HonestLeader(3)).unwrap(), 3);
    assert!(
        t(4, Threshold::HonestLeader(2)).is_err(),
        "2 of 4 is no majority"
    );
    assert!(t(3, Threshold::HonestLeader(1)).is_err());
    assert!(t(3, Threshold::HonestLeader(4)).is_err());
    assert_eq!(
        roster(3, Threshold::HonestLeader(2))
            .unwrap()
            .threshold_rule(),
        Threshold::HonestLeader(2)
    );
}

#[test]
fn bad_rosters_are_refused_with_a_reason() {
    let err = |r: Result<Roster, ProtocolError>| r.unwrap_err().to_string();
    assert!(err(roster(1, Threshold::Majority)).contains("1 members"));
    let mut twice = members(3);
    twice[2].identity = twice[0].identity;
    let e = err(Roster::new(
        ConsortiumId::new("c").unwrap(),
        twice,
        Threshold::Majority,
    ));
    assert!(e.contains("listed twice"), "{e}");
    let mut named = members(3);
    named[1].name = named[0].name.clone();
    let e = err(Roster::new(
        ConsortiumId::new("c").unwrap(),
        named,
        Threshold::Majority,
    ));
    assert!(e.contains("name"), "{e}");
    let mut long = members(3);
    long[0].addresses = vec!["x".repeat(300)];
    assert!(Roster::new(ConsortiumId::new("c").unwrap(), long, Threshold::Majority).is_err());
    assert!(ConsortiumId::new("").is_err());
    assert!(ConsortiumId::new("a b").is_err());
    assert!(ConsortiumId::new("x".repeat(65)).is_err());
}

#[test]
fn order_in_the_file_does_not_matter_but_content_does() {
    let a = roster(6, Threshold::Majority).unwrap();
    let mut shuffled = members(6);
    shuffled.reverse();
    let b = Roster::new(
        ConsortiumId::new("paediatric-xray").unwrap(),
        shuffled,
        Threshold::Majority,
    )
    .unwrap();
    assert_eq!(a.digest(), b.digest());
    for (id, m) in a.members() {
        assert_eq!(b.id_of(&m.identity), Some(id));
    }
    let c = Roster::new(
        ConsortiumId::new("other").unwrap(),
        members(6),
        Threshold::Majority,
    )
    .unwrap();
    assert_ne!(a.digest(), c.digest());
    let d = roster(6, Threshold::AtLeast(5)).unwrap();
    assert_ne!(a.digest(), d.digest());
}

#[test]
fn leader_rule_follows_the_blake3_ranking() {
    let r = roster(7, Threshold::Majority).unwrap();
    for round in [0u64, 1, 99] {
        let mut expected: Vec<([u8; 32], MemberId)> = r
            .members()
            .map(|(id, m)| {
                let mut bytes = b"paediatric-xray".to_vec();
                bytes.extend_from_slice(&round.to_le_bytes());
                bytes.extend_from_slice(m.identity.as_bytes());
                (*blake3::hash(&bytes).as_bytes(), id)
            })
            .collect();
        expected.sort();
        let ranking = r.leader_ranking(round);
        assert_eq!(
            ranking,
            expected.iter().map(|(_, id)| *id).collect::<Vec<_>>()
        );
        for attempt in 0..10u32 {
            assert_eq!(r.leader(round, attempt), ranking[attempt as usize % 7]);
        }
    }
    assert_ne!(
        r.leader_ranking(0),
        r.leader_ranking(1),
        "rounds rotate the order"
    );
}
