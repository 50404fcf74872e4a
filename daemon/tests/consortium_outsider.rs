//! A peer that is not on the roster, running a stock libp2p stack (TCP,
//! Noise, yamux, identify, gossipsub, request-response with the bulk
//! framing, which anyone can read off the wire), tries a running consortium
//! of real daemons: it cannot hold a connection, cannot get a model or the
//! latest-model answer, and cannot get a message in. The daemons go on with
//! their rounds and never list it.

mod consortium_support;

use std::future::Future;
use std::time::Duration;

use consortium_support::{WAIT, latest_model, names, stock_swarm};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use primia_crypto::IdentityKey;
use primia_tests::{Consortium, Settings};
use primiad::net::codec::{BULK_PROTOCOL, BulkCodec};
use primiad::node::wire::{self, Announcement, Gossip, Request};
use primiad::store::ModelHash;

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

#[derive(NetworkBehaviour)]
struct Stock {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    bulk: request_response::Behaviour<BulkCodec>,
}

fn stock(key: Keypair, topic: &gossipsub::IdentTopic) -> Swarm<Stock> {
    let mut swarm = stock_swarm(key, |key| Stock {
        identify: identify::Behaviour::new(identify::Config::new(
            "/primia/id/1".into(),
            key.public(),
        )),
        gossipsub: gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .unwrap(),
        bulk: request_response::Behaviour::with_codec(
            BulkCodec::new(1 << 20, 64 << 20),
            [(BULK_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    });
    swarm.behaviour_mut().gossipsub.subscribe(topic).unwrap();
    swarm
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Sends one request and returns whether it was answered.
async fn answered(x: &mut Swarm<Stock>, peer: PeerId, addr: &Multiaddr, payload: Vec<u8>) -> bool {
    let id = x.behaviour_mut().bulk.send_request_with_addresses(
        &peer,
        payload.into(),
        vec![addr.clone()],
    );
    within("the stranger's request ends", async {
        loop {
            match x.select_next_some().await {
                SwarmEvent::Behaviour(StockEvent::Bulk(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, .. },
                    ..
                })) if request_id == id => return true,
                SwarmEvent::Behaviour(StockEvent::Bulk(
                    request_response::Event::OutboundFailure { request_id, .. },
                )) if request_id == id => return false,
                SwarmEvent::Behaviour(StockEvent::Gossipsub(gossipsub::Event::Subscribed {
                    peer_id,
                    ..
                })) => panic!("{peer_id} talked gossip to the stranger"),
                _ => {}
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_connect_fetch_or_inject() {
    let mut c = Consortium::new(BIN, &Settings::fast(3));
    c.start_all();
    c.wait_until("three members connected and past round 1", WAIT, |c| {
        (0..3).all(|i| {
            c.status(i).is_some_and(|s| {
                s["connected"].as_array().is_some_and(|a| a.len() == 2)
                    && s.pointer("/latest_model/round").and_then(|r| r.as_u64()) >= Some(1)
            })
        })
    });
    let before = c.status(0).unwrap();
    let (hash, round) = latest_model(&before);

    let key = Keypair::generate_ed25519();
    let topic = gossipsub::IdentTopic::new(format!("/primia/{}/control/1", c.consortium));
    let mut x = stock(key, &topic);
    let peer: PeerId = c.members[0].peer_id.parse().unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", c.members[0].port)
        .parse()
        .unwrap();

    // Asking for the current model, or for the latest one, gets nothing:
    // the member drops the connection once Noise names the stranger.
    let model = wire::encode_request(&Request::Model(hash));
    assert!(
        !answered(&mut x, peer, &addr, model).await,
        "the stranger got a model"
    );
    let latest = wire::encode_request(&Request::Latest(""));
    assert!(
        !answered(&mut x, peer, &addr, latest).await,
        "the stranger got an answer"
    );
    assert!(!x.is_connected(&peer));

    // A round message or a model announcement it makes up has nobody to
    // go to; sent as a request it is refused like the others.
    let forged = Announcement::sign(
        &IdentityKey::from_seed(&primia_crypto::Secret32::from_bytes([7; 32])),
        &primia_protocol::RosterDigest([0; 32]),
        primia_protocol::MemberId(0),
        round + 100,
        ModelHash([1; 32]),
        16,
        0,
    );
    let gossip = wire::encode_gossip(&Gossip::Announce(forged));
    assert!(
        x.behaviour_mut()
            .gossipsub
            .publish(topic.clone(), gossip.clone())
            .is_err(),
        "the stranger found a gossip peer"
    );
    assert!(!answered(&mut x, peer, &addr, gossip).await);

    // The consortium goes on, never lists the stranger, and agrees.
    c.wait_until("two more rounds", WAIT, |c| {
        (0..3).all(|i| {
            c.status(i)
                .and_then(|s| s.pointer("/latest_model/round")?.as_u64())
                .is_some_and(|r| r >= round + 2)
        })
    });
    for i in 0..3 {
        let s = c.status_cli(i);
        let mut expected: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| c.members[j].name.clone())
            .collect();
        expected.sort();
        assert_eq!(names(&s, "connected"), expected, "{s}");
        assert!(names(&s, "missing").is_empty(), "{s}");
        assert!(s["latest_model"]["round"].as_u64().unwrap() < round + 100);
    }
    let log = std::fs::read_to_string(&c.members[0].log).unwrap();
    assert!(
        log.contains("refused a connection from a peer not on the roster"),
        "m0's log does not show the refusal\n{}",
        c.logs()
    );
    for i in 0..3 {
        assert!(c.stop(i, Duration::from_secs(20)), "{}", c.logs());
    }
}
