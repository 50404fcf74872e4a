//! A roster member asking a running daemon for models many times at once
//! (as one catching up with a slow link might, or a misbehaving one): the
//! daemon answers only a few at a time, so each answer waits its turn, but
//! every request gets the right blob (or "not found" for a model it never
//! had), and the daemon goes on with its rounds.

mod consortium_support;

use std::collections::HashMap;
use std::time::Duration;

use consortium_support::{WAIT, stock_swarm};
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use primia_tests::{Consortium, Settings};
use primiad::identity::NodeIdentity;
use primiad::net::codec::{BULK_PROTOCOL, BulkCodec};
use primiad::node::wire::{self, Request, Response};
use primiad::store::ModelHash;

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

/// A stock libp2p stack speaking only the bulk protocol, with `key`.
fn client(key: libp2p::identity::Keypair) -> Swarm<request_response::Behaviour<BulkCodec>> {
    stock_swarm(key, |_| {
        request_response::Behaviour::with_codec(
            BulkCodec::new(1 << 20, 64 << 20),
            [(BULK_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(64),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_model_requests_at_once_are_all_answered() {
    // Five, so that four carry on (t = 4) when one steps out.
    let mut settings = Settings::fast(5);
    // Large enough that answers take a moment; every model kept, so the
    // one asked for stays.
    settings.parameters = 200_000;
    settings.keep_models = 0;
    let mut c = Consortium::new(BIN, &settings);
    c.start_all();
    c.wait_until("five members past round 1", WAIT, |c| {
        (0..5).all(|i| {
            c.status(i)
                .and_then(|s| s.pointer("/latest_model/round")?.as_u64())
                .is_some_and(|r| r >= 1)
        })
    });
    // m4 steps out; the test speaks with its key (a roster member's).
    assert!(c.stop(4, Duration::from_secs(20)), "{}", c.logs());
    let key_file = c.members[4].config.parent().unwrap().join("identity.key");
    let key = NodeIdentity::load(&key_file).unwrap().keypair().clone();
    let status = c.status(0).expect("m0's status");
    let hash: ModelHash = status["latest_model"]["hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let round = status["latest_model"]["round"].as_u64().unwrap();

    let mut x = client(key);
    let peer: PeerId = c.members[0].peer_id.parse().unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", c.members[0].port)
        .parse()
        .unwrap();
    const ASKS: usize = 12;
    let unknown = ModelHash([9; 32]);
    let mut pending = HashMap::new();
    for i in 0..=ASKS {
        let asked = if i == ASKS { unknown } else { hash };
        let id = x.behaviour_mut().send_request_with_addresses(
            &peer,
            wire::encode_request(&Request::Model(asked)).into(),
            vec![addr.clone()],
        );
        pending.insert(id, asked);
    }
    let (mut models, mut not_found) = (0, 0);
    tokio::time::timeout(WAIT, async {
        while !pending.is_empty() {
            match x.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) => {
                    let asked = pending.remove(&request_id).expect("a request of ours");
                    match wire::decode_response(&response).unwrap() {
                        Response::Model(blob) => {
                            assert_eq!(asked, hash);
                            assert_eq!(ModelHash::of(blob), hash, "a blob of another model");
                            models += 1;
                        }
                        Response::NotFound => {
                            assert_eq!(asked, unknown);
                            not_found += 1;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("a request failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} requests unanswered\n{}", pending.len(), c.logs()));
    assert_eq!((models, not_found), (ASKS, 1));

    // The daemon went on with its rounds meanwhile (four are enough).
    c.wait_until("two more rounds", WAIT, |c| {
        c.status(0)
            .and_then(|s| s.pointer("/latest_model/round")?.as_u64())
            .is_some_and(|r| r >= round + 2)
    });
}
