//! Substreams negotiate lazily: a request goes out together with its
//! protocol's name, without waiting for the listener to confirm it. A roster
//! member whose stack lacks the bulk protocol must still make a request fail
//! at once with an error that says so, never hang until the request times
//! out or pass for an answer.

mod consortium_support;

use std::time::{Duration, Instant};

use consortium_support::stock_swarm;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, ping};
use primiad::net::{NetConfig, NetError, NetEvent, Network};

const STEP: Duration = Duration::from_secs(20);

/// A member's key on a stack with no bulk protocol.
#[derive(NetworkBehaviour)]
struct NoBulk {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_member_without_the_bulk_protocol_fails_at_once_and_says_why() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let mut config = NetConfig::new("test-consortium", vec![pa, pb]);
    config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    // Far longer than the failure may take: a hang shows as a timeout.
    config.request_timeout = Duration::from_secs(60);
    let Network {
        client,
        mut events,
        event_loop,
    } = Network::new(config, ka).unwrap();
    let _a = tokio::spawn(event_loop.run(std::future::pending()));
    let addr = tokio::time::timeout(STEP, client.listen_addrs())
        .await
        .expect("listen address in time")
        .unwrap()[0]
        .clone()
        .with(Protocol::P2p(pa));

    let mut b = stock_swarm(kb, |key| NoBulk {
        identify: identify::Behaviour::new(identify::Config::new(
            "/primia/id/1".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
    });
    b.dial(addr).unwrap();
    let _b = tokio::spawn(async move {
        loop {
            b.select_next_some().await;
        }
    });
    tokio::time::timeout(STEP, async {
        while let Some(e) = events.recv().await {
            if matches!(e, NetEvent::PeerConnected { peer } if peer == pb) {
                return;
            }
        }
        panic!("events closed");
    })
    .await
    .expect("the member connects in time");

    let started = Instant::now();
    let result = tokio::time::timeout(STEP, client.request(pb, b"hello".to_vec()))
        .await
        .expect("the request ends in time");
    let elapsed = started.elapsed();
    match result {
        Err(NetError::Request { peer, reason }) => {
            assert_eq!(peer, pb);
            assert_eq!(reason, "the peer does not speak the bulk protocol");
        }
        other => panic!("expected a refusal of the protocol, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "the refusal took {elapsed:?}"
    );
}
