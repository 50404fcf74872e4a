//! A peer that is not on the roster, running a plain libp2p stack with
//! identify, gossipsub and request-response, cannot hold a connection to a
//! member, cannot get a gossip message delivered (directly or relayed by a
//! member that trusts it), and cannot get a request answered.

mod consortium_support;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use consortium_support::stock_swarm;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use primiad::net::codec::{BULK_PROTOCOL, BulkCodec};
use primiad::net::{NetConfig, NetEvent, Network, NetworkClient};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const STEP: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// The outsider's stack: stock behaviours, nothing of ours but the framing
/// of the bulk protocol (which an attacker can read off the wire).
#[derive(NetworkBehaviour)]
struct Stock {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    bulk: request_response::Behaviour<BulkCodec>,
}

fn topic(config: &NetConfig) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(config.gossip_topic())
}

fn outsider(key: Keypair, topic: &gossipsub::IdentTopic) -> Swarm<Stock> {
    let mut swarm = stock_swarm(key, |key| {
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .heartbeat_interval(Duration::from_millis(100))
            .build()
            .unwrap();
        Stock {
            identify: identify::Behaviour::new(identify::Config::new(
                "/primia/id/1".into(),
                key.public(),
            )),
            gossipsub: gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .unwrap(),
            bulk: request_response::Behaviour::with_codec(
                BulkCodec::new(1 << 20, 1 << 20),
                [(BULK_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        }
    });
    swarm.behaviour_mut().gossipsub.subscribe(topic).unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    swarm
}

/// Drives the outsider's swarm until `f` picks an event.
async fn drive<T>(
    swarm: &mut Swarm<Stock>,
    what: &str,
    mut f: impl FnMut(SwarmEvent<StockEvent>) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            if let Some(v) = f(swarm.select_next_some().await) {
                return v;
            }
        }
    })
    .await
}

struct Node {
    peer: PeerId,
    client: NetworkClient,
    events: mpsc::Receiver<NetEvent>,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
    addr: Multiaddr,
}

fn config(roster: &[PeerId], bootstrap: &[Multiaddr]) -> NetConfig {
    let mut c = NetConfig::new("test-consortium", roster.to_vec());
    c.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap_addrs = bootstrap.to_vec();
    c.redial_interval = Duration::from_millis(200);
    c.gossip_heartbeat = Duration::from_millis(100);
    c
}

async fn start(key: Keypair, config: NetConfig) -> Node {
    let peer = key.public().to_peer_id();
    let Network {
        client,
        events,
        event_loop,
    } = Network::new(config, key).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(event_loop.run(async {
        let _ = stopped.await;
    }));
    let addr = within("listen", client.listen_addrs()).await.unwrap()[0]
        .clone()
        .with(Protocol::P2p(peer));
    Node {
        peer,
        client,
        events,
        _stop: stop,
        _task: task,
        addr,
    }
}

impl Node {
    async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(NetEvent) -> Option<T>) -> T {
        let events = &mut self.events;
        within(what, async {
            loop {
                if let Some(v) = f(events.recv().await.expect("events open")) {
                    return v;
                }
            }
        })
        .await
    }

    async fn wait_subscribed(&mut self, peers: &[PeerId]) {
        let mut missing: HashSet<PeerId> =
            peers.iter().copied().filter(|p| *p != self.peer).collect();
        self.wait_for("members subscribed", |e| {
            if let NetEvent::PeerSubscribed { peer } = e {
                missing.remove(&peer);
            }
            missing.is_empty().then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_connect_publish_or_request() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let roster = [ka.public().to_peer_id(), kb.public().to_peer_id()];
    let mut a = start(ka, config(&roster, &[])).await;
    let mut b = start(kb, config(&roster, &[a.addr.clone()])).await;
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;

    let stranger_key = Keypair::generate_ed25519();
    let stranger = stranger_key.public().to_peer_id();
    let topic = topic(&config(&roster, &[]));
    let mut x = outsider(stranger_key, &topic);

    // 1. Dialing: the member drops the connection as soon as the Noise
    // handshake names the stranger.
    x.dial(a.addr.clone()).unwrap();
    let mut got_subscription = false;
    drive(&mut x, "stranger's connection ends", |e| match e {
        SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == a.peer => Some(()),
        SwarmEvent::OutgoingConnectionError { .. } => Some(()),
        SwarmEvent::Behaviour(StockEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
            got_subscription = true;
            None
        }
        _ => None,
    })
    .await;
    assert!(!got_subscription, "the member talked gossip to a stranger");
    assert!(!x.is_connected(&a.peer));

    // 2. Publishing: the stranger has nobody to send to, and whatever it
    // sends is never delivered.
    let published = x
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), b"evil".to_vec());
    assert!(published.is_err(), "the stranger found a gossip peer");

    // 3. Requesting: it fails instead of being answered.
    let mut a_addr = a.addr.clone();
    a_addr.pop();
    let request = x.behaviour_mut().bulk.send_request_with_addresses(
        &a.peer,
        b"let me in".to_vec().into(),
        vec![a_addr],
    );
    let outcome = drive(&mut x, "stranger's request ends", |e| match e {
        SwarmEvent::Behaviour(StockEvent::Bulk(request_response::Event::OutboundFailure {
            request_id,
            error,
            ..
        })) if request_id == request => Some(Err(error.to_string())),
        SwarmEvent::Behaviour(StockEvent::Bulk(request_response::Event::Message {
            message: request_response::Message::Response { .. },
            ..
        })) => Some(Ok(())),
        _ => None,
    })
    .await;
    assert!(outcome.is_err(), "the stranger's request was answered");

    // The first gossip the member delivers after all this is a member's.
    b.client.publish(b"sentinel".to_vec()).await.unwrap();
    let (from, data) = a
        .wait_for("sentinel", |e| match e {
            NetEvent::GossipMessage { from, data, .. } => Some((from, data)),
            NetEvent::Request { from, .. } => panic!("request from {from} delivered"),
            NetEvent::PeerConnected { peer } if peer == stranger => panic!("stranger connected"),
            _ => None,
        })
        .await;
    assert_eq!((from, data.as_slice()), (b.peer, &b"sentinel"[..]));

    let stats = a.client.stats().await.unwrap();
    assert!(stats.refused_connections >= 2, "{stats:?}");
    assert_eq!(a.client.connected_peers().await.unwrap(), vec![b.peer]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_authored_by_a_stranger_is_not_delivered_even_when_relayed() {
    // Member `a` wrongly trusts the stranger (its roster lists it); member
    // `b`'s roster does not. A message the stranger signs reaches `a`,
    // which forwards it to `b`; `b` must reject it.
    let (ka, kb, kx) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let (pa, pb, px) = (
        ka.public().to_peer_id(),
        kb.public().to_peer_id(),
        kx.public().to_peer_id(),
    );
    let mut a = start(ka, config(&[pa, pb, px], &[])).await;
    let mut b = start(kb, config(&[pa, pb], &[a.addr.clone()])).await;
    a.wait_subscribed(&[pb]).await;
    b.wait_subscribed(&[pa]).await;

    let topic = topic(&config(&[pa], &[]));
    let mut x = outsider(kx, &topic);
    x.dial(a.addr.clone()).unwrap();
    drive(&mut x, "stranger sees a's subscription", |e| {
        matches!(
            e,
            SwarmEvent::Behaviour(StockEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }))
                if peer_id == pa
        )
        .then_some(())
    })
    .await;
    x.behaviour_mut()
        .gossipsub
        .publish(topic.clone(), b"relayed evil".to_vec())
        .unwrap();

    // `a` (which trusts the stranger) delivers it; keep the stranger's swarm
    // running meanwhile so its message leaves.
    let x_task = tokio::spawn(async move {
        loop {
            x.select_next_some().await;
        }
    });
    let (from, _) = a
        .wait_for("a gets the stranger's message", |e| match e {
            NetEvent::GossipMessage { from, data, .. } => Some((from, data)),
            _ => None,
        })
        .await;
    assert_eq!(from, px);

    // `b` receives it from `a` (directly through the mesh or by gossip)
    // and rejects it. There is no event for a rejection, so poll the
    // counter, within the step timeout.
    within("b rejects the relayed message", async {
        loop {
            if b.client.stats().await.unwrap().rejected_gossip_messages >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    a.client.publish(b"sentinel".to_vec()).await.unwrap();
    let (from, data) = b
        .wait_for("sentinel", |e| match e {
            NetEvent::GossipMessage { from, data, .. } => Some((from, data)),
            _ => None,
        })
        .await;
    assert_eq!(
        (from, data.as_slice()),
        (pa, &b"sentinel"[..]),
        "b delivered the stranger's message"
    );
    x_task.abort();
}
