//! The network layer over real libp2p on 127.0.0.1: discovery from a
//! bootstrap node, gossip and bulk requests between members, size caps, and
//! members that restart. Every wait has a hard timeout.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use primiad::net::{BulkMessage, NetConfig, NetError, NetEvent, Network, NetworkClient};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longest any single step of a test may take.
const STEP: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

struct Node {
    key: Keypair,
    peer: PeerId,
    client: NetworkClient,
    events: mpsc::Receiver<NetEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// A dialable address ending in `/p2p/<peer id>`.
    addr: Multiaddr,
}

fn config(roster: &[PeerId], bootstrap: &[Multiaddr]) -> NetConfig {
    let mut c = NetConfig::new("test-consortium", roster.to_vec());
    c.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap_addrs = bootstrap.to_vec();
    c.redial_interval = Duration::from_millis(200);
    c.gossip_heartbeat = Duration::from_millis(100);
    c.request_timeout = Duration::from_secs(15);
    c
}

async fn start(key: Keypair, config: NetConfig) -> Node {
    let peer = key.public().to_peer_id();
    let Network {
        client,
        events,
        event_loop,
    } = Network::new(config, key.clone()).expect("network starts");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(event_loop.run(async {
        let _ = stopped.await;
    }));
    let addrs = within("listen address", client.listen_addrs())
        .await
        .unwrap();
    let addr = addrs[0].clone().with(Protocol::P2p(peer));
    Node {
        key,
        peer,
        client,
        events,
        stop: Some(stop),
        task,
        addr,
    }
}

impl Node {
    /// Stops the event loop and waits until the swarm is gone.
    async fn shut_down(mut self) -> Keypair {
        drop(self.stop.take());
        within("event loop stops", &mut self.task).await.unwrap();
        self.key
    }

    /// Reads events until `f` picks one; other events are discarded
    /// (a discarded request is refused).
    async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(NetEvent) -> Option<T>) -> T {
        let events = &mut self.events;
        within(what, async {
            loop {
                let event = events.recv().await.expect("event stream open");
                if let Some(v) = f(event) {
                    return v;
                }
            }
        })
        .await
    }

    /// Waits until each of `peers` has subscribed to our gossip topic.
    async fn wait_subscribed(&mut self, peers: &[PeerId]) {
        let mut missing: HashSet<PeerId> =
            peers.iter().copied().filter(|p| *p != self.peer).collect();
        let me = self.peer;
        self.wait_for(&format!("{me} sees every member subscribed"), |e| {
            if let NetEvent::PeerSubscribed { peer } = e {
                missing.remove(&peer);
            }
            missing.is_empty().then_some(())
        })
        .await;
    }

    /// Waits for a gossip message and returns its author and payload.
    async fn next_gossip(&mut self) -> (PeerId, Vec<u8>) {
        self.wait_for("a gossip message", |e| match e {
            NetEvent::GossipMessage { from, data, .. } => Some((from, data)),
            _ => None,
        })
        .await
    }

    /// Waits for the next message (see [`NetworkClient::send_message`]).
    async fn next_message(&mut self) -> (PeerId, Vec<u8>) {
        self.wait_for("a message", |e| match e {
            NetEvent::Message { from, payload } => Some((from, payload)),
            _ => None,
        })
        .await
    }

    /// Answers the next request with `answer(payload)`.
    async fn serve_one(&mut self, answer: impl FnOnce(Vec<u8>) -> Vec<u8>) -> PeerId {
        let (from, payload, reply) = self
            .wait_for("a request", |e| match e {
                NetEvent::Request {
                    from,
                    payload,
                    reply,
                } => Some((from, payload, reply)),
                _ => None,
            })
            .await;
        reply.respond(answer(payload)).expect("response accepted");
        from
    }
}

fn keys(n: usize) -> (Vec<Keypair>, Vec<PeerId>) {
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let peers = keys.iter().map(|k| k.public().to_peer_id()).collect();
    (keys, peers)
}

/// Starts node 0, then the others with node 0 as their only bootstrap
/// address, and waits until every member sees every other subscribed.
async fn cluster(n: usize) -> Vec<Node> {
    let (keys, roster) = keys(n);
    let mut keys = keys.into_iter();
    let first = start(keys.next().unwrap(), config(&roster, &[])).await;
    let bootstrap = [first.addr.clone()];
    let mut nodes = vec![first];
    for key in keys {
        nodes.push(start(key, config(&roster, &bootstrap)).await);
    }
    for node in &mut nodes {
        node.wait_subscribed(&roster).await;
    }
    nodes
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every member publishes once; every member must receive every other
/// member's message, attributed to its author.
async fn check_gossip_reaches_everyone(nodes: &mut [Node]) {
    for (i, node) in nodes.iter().enumerate() {
        within(
            "publish",
            node.client.publish(format!("hello from {i}").into_bytes()),
        )
        .await
        .unwrap();
    }
    let peers: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
    for node in nodes.iter_mut() {
        let mut expected: HashSet<(PeerId, Vec<u8>)> = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| **p != node.peer)
            .map(|(i, p)| (*p, format!("hello from {i}").into_bytes()))
            .collect();
        while !expected.is_empty() {
            let got = node.next_gossip().await;
            assert!(expected.remove(&got), "unexpected gossip {got:?}");
        }
    }
}

/// `from` asks `to` and gets `payload` back reversed.
async fn check_request(nodes: &mut [Node], from: usize, to: usize, payload: Vec<u8>) {
    let client = nodes[from].client.clone();
    let target = nodes[to].peer;
    let expected: Vec<u8> = payload.iter().rev().copied().collect();
    let requester = nodes[from].peer;
    let (answer, asker) = tokio::join!(
        within("request answered", client.request(target, payload)),
        nodes[to].serve_one(|mut p| {
            p.reverse();
            p
        })
    );
    assert_eq!(asker, requester);
    assert!(
        answer.unwrap() == expected,
        "response from {to} to {from} differs"
    );
}

/// `from` sends `to` a few messages, one of `bulk` bytes among them; they
/// arrive whole, in order, from `from`.
async fn check_messages(nodes: &mut [Node], from: usize, to: usize, bulk: usize) {
    let target = nodes[to].peer;
    let sent: Vec<Vec<u8>> = [200, bulk, 1, 300]
        .into_iter()
        .enumerate()
        .map(|(i, len)| payload(len, (from * 16 + to * 4 + i) as u8))
        .collect();
    for m in &sent {
        nodes[from]
            .client
            .send_message(target, m.clone())
            .expect("message queued");
    }
    let sender = nodes[from].peer;
    for (i, m) in sent.iter().enumerate() {
        let (got_from, got) = nodes[to].next_message().await;
        assert_eq!(got_from, sender);
        assert!(got == *m, "message {i} from {from} to {to} differs");
    }
}

async fn check_cluster(n: usize) {
    let mut nodes = cluster(n).await;
    for node in &nodes {
        let connected = node.client.connected_peers().await.unwrap();
        assert_eq!(
            connected.len(),
            n - 1,
            "{} is connected to {connected:?}",
            node.peer
        );
    }
    check_gossip_reaches_everyone(&mut nodes).await;
    for from in 0..n {
        for to in 0..n {
            if from != to {
                check_request(&mut nodes, from, to, payload(1000, (from * n + to) as u8)).await;
            }
        }
    }
    for from in 0..n {
        for to in 0..n {
            if from != to {
                check_messages(&mut nodes, from, to, 1000).await;
            }
        }
    }
    // Bulk: several megabytes between two members that only met through
    // the bootstrap node.
    check_request(&mut nodes, 1, n - 1, payload(6 << 20, 7)).await;
    check_messages(&mut nodes, n - 1, 1, 6 << 20).await;
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_discover_each_other_and_exchange_gossip_and_requests() {
    check_cluster(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_discover_each_other_and_exchange_gossip_and_requests() {
    check_cluster(5).await;
}

/// Requests held unanswered for a while, then answered with shared parts
/// (one large part for all, a small one each), reach every asker whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_answered_with_shared_parts_reach_every_asker() {
    let mut nodes = cluster(3).await;
    let target = nodes[0].peer;
    let asks: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let client = nodes[i].client.clone();
            tokio::spawn(async move { client.request(target, payload(100, i as u8)).await })
        })
        .collect();
    let mut held = Vec::new();
    while held.len() < 2 {
        let (from, reply) = nodes[0]
            .wait_for("a request to hold", |e| match e {
                NetEvent::Request { from, reply, .. } => Some((from, reply)),
                _ => None,
            })
            .await;
        held.push((from, reply));
    }
    // Held past what a plain answer takes, the askers still waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(asks.iter().all(|a| !a.is_finished()));
    let shared = bytes::Bytes::from(payload(3 << 20, 9));
    for (from, reply) in held {
        let own = bytes::Bytes::from(from.to_bytes());
        reply
            .respond(BulkMessage::from_parts([shared.clone(), own]))
            .expect("response accepted");
    }
    for (i, ask) in asks.into_iter().enumerate() {
        let answer = within("held request answered", ask)
            .await
            .unwrap()
            .expect("answered");
        let mut expected = shared.to_vec();
        expected.extend_from_slice(&nodes[i + 1].peer.to_bytes());
        assert!(answer == expected, "asker {} got another answer", i + 1);
    }
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payloads_fail_with_an_error_and_the_connection_survives() {
    let (keys, roster) = keys(2);
    let mut keys = keys.into_iter();
    let mut small_inbox = config(&roster, &[]);
    small_inbox.max_request_bytes = 1 << 20;
    let mut a = start(keys.next().unwrap(), small_inbox).await;
    let mut small_answers = config(&roster, &[a.addr.clone()]);
    small_answers.max_response_bytes = 1 << 20;
    let mut b = start(keys.next().unwrap(), small_answers).await;
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;

    // A request over the receiver's cap: refused by the receiver after the
    // length prefix; the sender sees an error, not a hang.
    let err = within(
        "oversize request fails",
        b.client.request(a.peer, payload(2 << 20, 1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Request { .. }), "{err}");

    // A request over our own cap never leaves.
    let err = a
        .client
        .request(b.peer, payload((1 << 20) + 1, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::PayloadTooLarge {
                what: "request",
                ..
            }
        ),
        "{err}"
    );

    // A response over the requester's cap: the requester refuses it.
    let (answer, _) = tokio::join!(
        within(
            "oversize response fails",
            b.client.request(a.peer, b"small".to_vec())
        ),
        a.serve_one(|_| payload(2 << 20, 3))
    );
    assert!(
        matches!(answer, Err(NetError::Request { .. })),
        "{answer:?}"
    );

    // A refused request (handle dropped) fails at once.
    let (answer, ()) = tokio::join!(
        within(
            "refused request fails",
            b.client.request(a.peer, b"refuse me".to_vec())
        ),
        a.wait_for("request to refuse", |e| matches!(
            e,
            NetEvent::Request { .. }
        )
        .then_some(()))
    );
    assert!(
        matches!(answer, Err(NetError::Request { .. })),
        "{answer:?}"
    );

    // The connection is still good for requests within the caps.
    let mut nodes = vec![a, b];
    check_request(&mut nodes, 1, 0, payload(1 << 20, 4)).await;
    // Each side counted the frame it refused: `a` the request, `b` the
    // response.
    for node in &nodes {
        let stats = node.client.stats().await.unwrap();
        assert_eq!(stats.bad_bulk_frames, 1, "{stats:?}");
        assert_eq!(stats.connected_peers, 1);
    }
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_members_reconnect() {
    let mut nodes = cluster(3).await;
    let roster: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();

    // A member that only knows the bootstrap node restarts on a new port:
    // it dials the bootstrap node and finds the third member again.
    let b = nodes.remove(1);
    let b_peer = b.peer;
    let key = b.shut_down().await;
    for node in &mut nodes {
        node.wait_for("b leaves", |e| {
            matches!(e, NetEvent::PeerDisconnected { peer } if peer == b_peer).then_some(())
        })
        .await;
    }
    let mut b = start(key, config(&roster, &[nodes[0].addr.clone()])).await;
    b.wait_subscribed(&roster).await;
    for node in &mut nodes {
        node.wait_subscribed(&[b_peer]).await;
    }
    nodes.insert(1, b);
    check_gossip_reaches_everyone(&mut nodes).await;

    // The bootstrap node restarts on the same address: the others redial it.
    let a = nodes.remove(0);
    let (a_peer, a_addr) = (a.peer, a.addr.clone());
    let key = a.shut_down().await;
    for node in &mut nodes {
        node.wait_for("a leaves", |e| {
            matches!(e, NetEvent::PeerDisconnected { peer } if peer == a_peer).then_some(())
        })
        .await;
    }
    let mut a_config = config(&roster, &[]);
    let mut listen = a_addr.clone();
    listen.pop();
    a_config.listen_addrs = vec![listen];
    let mut a = start(key, a_config).await;
    assert_eq!(a.addr, a_addr);
    a.wait_subscribed(&roster).await;
    for node in &mut nodes {
        node.wait_subscribed(&[a_peer]).await;
    }
    nodes.insert(0, a);
    check_gossip_reaches_everyone(&mut nodes).await;
    check_request(&mut nodes, 2, 0, payload(1000, 9)).await;
    // Message streams to the restarted member broke with its connection;
    // new ones are opened for the next messages.
    check_messages(&mut nodes, 2, 0, 1000).await;
    check_messages(&mut nodes, 0, 2, 1000).await;
    for node in nodes {
        node.shut_down().await;
    }
}

/// One message shared by two members arrives whole at both; a message over
/// the receiver's cap breaks only its stream (the next message goes on a
/// new one); misuse fails at once with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_share_parts_survive_a_refused_frame_and_misuse_is_an_error() {
    let (keys, roster) = keys(3);
    let mut keys = keys.into_iter();
    let mut small_inbox = config(&roster, &[]);
    small_inbox.max_request_bytes = 1 << 20;
    let a = start(keys.next().unwrap(), small_inbox).await;
    let b = start(
        keys.next().unwrap(),
        config(&roster, std::slice::from_ref(&a.addr)),
    )
    .await;
    let mut short_queue = config(&roster, std::slice::from_ref(&a.addr));
    short_queue.limits.message_queue = 1;
    let c = start(keys.next().unwrap(), short_queue).await;
    let mut nodes = vec![a, b, c];
    for node in &mut nodes {
        node.wait_subscribed(&roster).await;
    }

    let shared = bytes::Bytes::from(payload(512 << 10, 5));
    for to in [1, 2] {
        let own = bytes::Bytes::from(vec![to as u8; 10]);
        let message = BulkMessage::from_parts([shared.clone(), own]);
        nodes[0]
            .client
            .send_message(nodes[to].peer, message)
            .expect("queued");
    }
    for to in [1, 2] {
        let (from, got) = nodes[to].next_message().await;
        assert_eq!(from, nodes[0].peer);
        let mut expected = shared.to_vec();
        expected.extend_from_slice(&[to as u8; 10]);
        assert!(got == expected, "member {to} got another message");
    }

    // Over a's cap: a refuses the frame after its length and drops the
    // stream; the message after it still arrives.
    let a_peer = nodes[0].peer;
    let b_client = nodes[1].client.clone();
    b_client
        .send_message(a_peer, payload(2 << 20, 1))
        .expect("queued");
    b_client
        .send_message(a_peer, payload(100, 2))
        .expect("queued");
    let (from, got) = nodes[0].next_message().await;
    assert_eq!(from, nodes[1].peer);
    assert_eq!(got, payload(100, 2));
    let stats = nodes[0].client.stats().await.unwrap();
    assert_eq!(stats.bad_bulk_frames, 1, "{stats:?}");

    // c may queue one message for a member: sent faster than its writer
    // takes them, the others are refused at once; the queued ones arrive
    // in order.
    let b_peer = nodes[1].peer;
    let c_client = nodes[2].client.clone();
    let sent: Vec<Result<(), NetError>> = (0..4)
        .map(|i| c_client.send_message(b_peer, payload(512 << 10, 10 + i)))
        .collect();
    assert!(
        sent.iter()
            .any(|r| matches!(r, Err(NetError::OutboxFull { peer, max: 1 }) if *peer == b_peer)),
        "{sent:?}"
    );
    for (i, _) in sent.iter().enumerate().filter(|(_, r)| r.is_ok()) {
        let (from, got) = nodes[1].next_message().await;
        assert_eq!(from, nodes[2].peer);
        assert!(
            got == payload(512 << 10, 10 + i as u8),
            "message {i} differs"
        );
    }

    // Over our own cap, off the roster, or to ourselves: refused at once.
    let err = nodes[0]
        .client
        .send_message(nodes[1].peer, payload((1 << 20) + 1, 3))
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::PayloadTooLarge {
                what: "message",
                ..
            }
        ),
        "{err}"
    );
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let err = nodes[0]
        .client
        .send_message(stranger, b"hi".to_vec())
        .unwrap_err();
    assert!(
        matches!(err, NetError::NotOnRoster(p) if p == stranger),
        "{err}"
    );
    let err = nodes[0]
        .client
        .send_message(a_peer, b"hi".to_vec())
        .unwrap_err();
    assert!(err.to_string().contains("ourselves"), "{err}");
    for node in nodes {
        node.shut_down().await;
    }
}

/// Messages for a member that cannot be reached are dropped, not held:
/// once its stream cannot be opened, what waits in its queue goes too, so
/// the queue takes messages again at once instead of after each has tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_an_unreachable_member_are_dropped_not_held() {
    let (mut keys, roster) = keys(2);
    let a = start(keys.remove(0), config(&roster, &[])).await;
    let ghost = roster[1];
    let fill = |a: &Node| -> (usize, usize) {
        let results: Vec<_> = (0..40)
            .map(|i| a.client.send_message(ghost, payload(1000, i)))
            .collect();
        for r in &results {
            assert!(
                matches!(r, Ok(()) | Err(NetError::OutboxFull { .. })),
                "{r:?}"
            );
        }
        let queued = results.iter().filter(|r| r.is_ok()).count();
        (queued, results.len() - queued)
    };
    let (queued, refused) = fill(&a);
    assert!(
        queued >= 32 && refused > 0,
        "{queued} queued, {refused} refused"
    );
    // Each message would take eight failed opens (about 250 ms of pauses)
    // if the queue were worked through one by one: about 8 s for 32.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (queued, _) = fill(&a);
    assert!(
        queued >= 32,
        "only {queued} queued: the old messages are still held"
    );
    a.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_redials_a_restarted_peer_once_discovery_is_idle() {
    let (keys, roster) = keys(2);
    let mut a = start(keys[0].clone(), config(&roster, &[])).await;
    let mut b = start(keys[1].clone(), config(&roster, &[a.addr.clone()])).await;
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;
    // Kademlia bootstraps on its own 500 ms after a peer enters its routing
    // table, and such a lookup would also reach a restarted peer. Let it
    // finish first (there is no event for that), so that only the redial
    // of disconnected members can bring the connection back.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let a_addr = a.addr.clone();
    let key = a.shut_down().await;
    b.wait_for("a leaves", |e| {
        matches!(e, NetEvent::PeerDisconnected { peer } if peer == roster[0]).then_some(())
    })
    .await;
    let mut a_config = config(&roster, &[]);
    let mut listen = a_addr.clone();
    listen.pop();
    a_config.listen_addrs = vec![listen];
    let mut a = start(key, a_config).await;
    b.wait_subscribed(&[roster[0]]).await;
    a.wait_subscribed(&[roster[1]]).await;
    let mut nodes = vec![a, b];
    check_request(&mut nodes, 1, 0, payload(1000, 5)).await;
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_pauses_the_network_without_losing_events() {
    let (keys, roster) = keys(2);
    let mut tiny_queue = config(&roster, &[]);
    tiny_queue.limits.event_queue = 1;
    let mut a = start(keys[0].clone(), tiny_queue).await;
    let mut b = start(keys[1].clone(), config(&roster, &[a.addr.clone()])).await;
    // Nothing has read `a`'s events yet, so its queue is full and its
    // event loop has stopped reading the network; commands still work.
    within(
        "a command while the event queue is full",
        a.client.connected_peers(),
    )
    .await
    .unwrap();
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;
    let sent: HashSet<Vec<u8>> = (0..50u32).map(|i| i.to_be_bytes().to_vec()).collect();
    for data in &sent {
        b.client.publish(data.clone()).await.unwrap();
    }
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let (from, data) = a.next_gossip().await;
        assert_eq!(from, b.peer);
        got.insert(data);
    }
    assert_eq!(got, sent);
    for node in [a, b] {
        node.shut_down().await;
    }
}

/// Whether some interface other than loopback is up and takes multicast:
/// mDNS needs one. Linux only; elsewhere the mDNS test skips.
fn multicast_interface() -> bool {
    const IFF_UP: u32 = 0x1;
    const IFF_LOOPBACK: u32 = 0x8;
    const IFF_MULTICAST: u32 = 0x1000;
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return false;
    };
    dir.flatten().any(|iface| {
        std::fs::read_to_string(iface.path().join("flags"))
            .ok()
            .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|f| {
                f & (IFF_UP | IFF_MULTICAST) == IFF_UP | IFF_MULTICAST && f & IFF_LOOPBACK == 0
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_a_lan_find_each_other_by_mdns() {
    if !multicast_interface() {
        eprintln!("skipping: no network interface with multicast for mDNS");
        return;
    }
    let (keys, roster) = keys(2);
    let lan = || {
        let mut c = config(&roster, &[]);
        c.mdns = true;
        c.listen_addrs = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
        c
    };
    // No bootstrap addresses: only mDNS can bring them together.
    let mut a = start(keys[0].clone(), lan()).await;
    let mut b = start(keys[1].clone(), lan()).await;
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;
    let mut nodes = vec![a, b];
    check_request(&mut nodes, 0, 1, payload(1000, 13)).await;
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_misuse_are_errors() {
    let (keys, roster) = keys(2);
    let outsider = Keypair::generate_ed25519().public().to_peer_id();
    let mut c = config(&roster, &[]);
    c.listen_addrs = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    if !cfg!(feature = "quic") {
        let err = Network::new(c, keys[0].clone())
            .err()
            .expect("quic address refused without the quic feature");
        assert!(matches!(err, NetError::Listen { .. }), "{err}");
    }
    let mut c = config(&roster, &[]);
    c.bootstrap_addrs = vec![
        format!("/ip4/127.0.0.1/tcp/1/p2p/{outsider}")
            .parse()
            .unwrap(),
    ];
    let err = Network::new(c, keys[0].clone())
        .err()
        .expect("bootstrap off the roster refused");
    assert!(
        matches!(
            err,
            NetError::InvalidConfig {
                field: "bootstrap_addrs",
                ..
            }
        ),
        "{err}"
    );

    let node = start(keys[0].clone(), config(&roster, &[])).await;
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
    let err = node.client.dial(outsider, vec![addr]).await.unwrap_err();
    assert!(
        matches!(err, NetError::NotOnRoster(p) if p == outsider),
        "{err}"
    );
    let err = node.client.request(outsider, vec![1]).await.unwrap_err();
    assert!(matches!(err, NetError::NotOnRoster(_)), "{err}");
    // Nobody else is there yet: publishing says so instead of vanishing.
    let err = node.client.publish(b"anyone?".to_vec()).await.unwrap_err();
    assert!(matches!(err, NetError::Publish(_)), "{err}");
    let err = node
        .client
        .publish(vec![0; (1 << 20) + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::PayloadTooLarge {
                what: "gossip message",
                ..
            }
        ),
        "{err}"
    );
    // A member that cannot be reached fails the request, it does not hang.
    let err = within(
        "unreachable member",
        node.client.request(roster[1], vec![1]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Request { .. }), "{err}");

    let client = node.client.clone();
    node.shut_down().await;
    assert!(matches!(
        client.connected_peers().await,
        Err(NetError::Stopped)
    ));
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_talk_over_quic() {
    let (keys, roster) = keys(2);
    let quic = |bootstrap: &[Multiaddr]| {
        let mut c = config(&roster, bootstrap);
        c.listen_addrs = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
        c
    };
    let mut a = start(keys[0].clone(), quic(&[])).await;
    assert!(
        a.addr.iter().any(|p| matches!(p, Protocol::QuicV1)),
        "{}",
        a.addr
    );
    let mut b = start(keys[1].clone(), quic(&[a.addr.clone()])).await;
    a.wait_subscribed(&roster).await;
    b.wait_subscribed(&roster).await;
    let mut nodes = vec![a, b];
    check_gossip_reaches_everyone(&mut nodes).await;
    check_request(&mut nodes, 1, 0, payload(6 << 20, 11)).await;
    for node in nodes {
        node.shut_down().await;
    }
}
