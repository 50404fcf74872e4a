//! The consortium network: one event loop owns the libp2p swarm; the rest of
//! the daemon talks to it through a cloneable [`NetworkClient`] and reads
//! flat [`NetEvent`]s. Payloads are opaque bytes and peers are libp2p
//! [`PeerId`]s, so this layer knows nothing of rounds or models.
//!
//! [`Network::new`] builds the three parts from a [`NetConfig`] and the
//! member's identity key:
//!
//! - [`EventLoop`]: spawn `event_loop.run(shutdown)`; it owns the swarm
//!   (TCP, or QUIC with the `quic` feature, with Noise and yamux; identify,
//!   ping, Kademlia, optional mDNS, gossipsub, bulk request-response, the
//!   roster allow-list and connection limits) and stops when `shutdown`
//!   resolves.
//! - [`NetworkClient`]: commands (publish, request, dial, ...) over a bounded
//!   channel, each answered on a oneshot.
//! - a bounded receiver of [`NetEvent`]s: members connecting and leaving,
//!   gossip from members, and requests to answer through a [`ResponseHandle`].
//!
//! Only roster members may hold a connection: anyone else is refused once
//! the Noise handshake shows who they are. Gossip is signed by its author
//! and delivered (and forwarded) only when the author is on the roster.
//! Gossip carries announcements to every member; one-way messages (a
//! round's) go on a long-lived stream per member and direction
//! ([`NetworkClient::send_message`]), and questions with answers (a model
//! blob) over request-response, both with a hard size cap.

mod behaviour;
pub mod codec;
mod config;
mod event_loop;
mod messages;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

pub use codec::BulkMessage;
pub use config::{
    DEFAULT_MAX_BULK_MESSAGE_BYTES, DEFAULT_MAX_GOSSIP_MESSAGE_BYTES, NetConfig, NetLimits,
    peer_id_of,
};
pub use event_loop::EventLoop;
pub use messages::MESSAGE_PROTOCOL;

/// Extra time a client waits for a request's answer beyond the configured
/// request timeout: dialing a disconnected peer comes first, and libp2p
/// reports the timeout itself; this is only a guard against a stuck loop.
const REQUEST_GUARD: Duration = Duration::from_secs(30);

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A setting is wrong; `field` names it.
    #[error("invalid network setting {field}: {reason}")]
    InvalidConfig {
        /// The offending field of [`NetConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The transport or a behaviour could not be set up.
    #[error("cannot set up the network: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address from the configuration.
        addr: Multiaddr,
        /// Why it failed.
        reason: String,
    },
    /// The peer is not on the roster, so we neither dial it nor send to it.
    #[error("peer {0} is not on the roster")]
    NotOnRoster(PeerId),
    /// A dial could not be started.
    #[error("cannot dial {peer}: {reason}")]
    Dial {
        /// The peer dialed.
        peer: PeerId,
        /// Why it failed.
        reason: String,
    },
    /// A payload is larger than the configured cap.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Which kind of payload ("gossip message", "request", "response").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A gossip message could not be published.
    #[error("cannot publish: {0}")]
    Publish(String),
    /// The queue of messages for this peer is full: it reads them more
    /// slowly than we send.
    #[error("too many messages queued for {peer} (limit {max})")]
    OutboxFull {
        /// The peer.
        peer: PeerId,
        /// The configured cap ([`NetLimits::message_queue`]).
        max: usize,
    },
    /// Too many requests await responses already.
    #[error("too many requests in flight (limit {max})")]
    TooManyPendingRequests {
        /// The configured cap.
        max: usize,
    },
    /// A request failed: the peer refused or could not be reached, the
    /// stream broke, or a side's size cap was exceeded.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why it failed.
        reason: String,
    },
    /// A request got no response in time.
    #[error("request to {peer} timed out after {after_ms} ms")]
    Timeout {
        /// The peer asked.
        peer: PeerId,
        /// How long we waited.
        after_ms: u128,
    },
    /// The event loop is not running (it was stopped or never started).
    #[error("the network event loop has stopped")]
    Stopped,
}

/// What the network tells the rest of the daemon.
pub enum NetEvent {
    /// We listen on a new address (sent once per address).
    Listening {
        /// The bound address, without `/p2p/`.
        addr: Multiaddr,
    },
    /// A roster member connected (its first connection).
    PeerConnected {
        /// The member.
        peer: PeerId,
    },
    /// A roster member's last connection closed.
    PeerDisconnected {
        /// The member.
        peer: PeerId,
    },
    /// A roster member subscribed to the consortium's gossip topic: from
    /// now on it receives what we publish.
    PeerSubscribed {
        /// The member.
        peer: PeerId,
    },
    /// A gossip message authored (and signed) by a roster member.
    GossipMessage {
        /// The author (not necessarily the peer that forwarded it).
        from: PeerId,
        /// The topic it was published on.
        topic: String,
        /// The payload.
        data: Vec<u8>,
    },
    /// A roster member sent a message (see [`NetworkClient::send_message`]).
    Message {
        /// The member.
        from: PeerId,
        /// The message.
        payload: Vec<u8>,
    },
    /// A roster member asks something; answer through `reply`. Dropping
    /// `reply` refuses the request: the requester gets an error at once.
    Request {
        /// The member asking.
        from: PeerId,
        /// The request payload.
        payload: Vec<u8>,
        /// Where the answer goes.
        reply: ResponseHandle,
    },
}

impl fmt::Debug for NetEvent {
    // Payloads can be hundreds of megabytes: print their lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Listening { addr } => f.debug_struct("Listening").field("addr", addr).finish(),
            Self::PeerConnected { peer } => {
                f.debug_struct("PeerConnected").field("peer", peer).finish()
            }
            Self::PeerDisconnected { peer } => f
                .debug_struct("PeerDisconnected")
                .field("peer", peer)
                .finish(),
            Self::PeerSubscribed { peer } => f
                .debug_struct("PeerSubscribed")
                .field("peer", peer)
                .finish(),
            Self::GossipMessage { from, topic, data } => f
                .debug_struct("GossipMessage")
                .field("from", from)
                .field("topic", topic)
                .field("data_bytes", &data.len())
                .finish(),
            Self::Message { from, payload } => f
                .debug_struct("Message")
                .field("from", from)
                .field("payload_bytes", &payload.len())
                .finish(),
            Self::Request { from, payload, .. } => f
                .debug_struct("Request")
                .field("from", from)
                .field("payload_bytes", &payload.len())
                .finish_non_exhaustive(),
        }
    }
}

/// The way back to a peer that sent a request. Use it once with
/// [`ResponseHandle::respond`] or [`ResponseHandle::respond_holding`];
/// dropping it refuses the request.
pub struct ResponseHandle {
    tx: oneshot::Sender<Answer>,
    max_response_bytes: usize,
}

/// A response on its way to the event loop, and what must live as long as
/// it is being sent.
pub(crate) struct Answer {
    pub(crate) payload: BulkMessage,
    pub(crate) hold: Option<Box<dyn Send>>,
}

impl fmt::Debug for ResponseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseHandle").finish_non_exhaustive()
    }
}

impl ResponseHandle {
    /// Sends `payload` as the response. Fails if it is over the configured
    /// cap, or if the request is gone (timed out, the peer left, or the
    /// event loop stopped). Like a request, it may be a [`BulkMessage`] of
    /// shared parts, sent without being copied into one buffer.
    pub fn respond(self, payload: impl Into<BulkMessage>) -> Result<(), NetError> {
        self.answer(payload.into(), None)
    }

    /// Sends `payload` as the response, and keeps `hold` (a turn, a
    /// permit) until the response is written to the asker's stream or can
    /// no longer be: it was sent, timed out, or the connection closed. An
    /// asker that reads slowly then holds the turn, not only the bytes.
    pub fn respond_holding(
        self,
        payload: Vec<u8>,
        hold: impl Send + 'static,
    ) -> Result<(), NetError> {
        self.answer(payload.into(), Some(Box::new(hold)))
    }

    /// Whether the request is gone (timed out, the peer left, or the event
    /// loop stopped): an answer would be dropped, so it need not be made.
    pub fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }

    fn answer(self, payload: BulkMessage, hold: Option<Box<dyn Send>>) -> Result<(), NetError> {
        if payload.len() > self.max_response_bytes {
            return Err(NetError::PayloadTooLarge {
                what: "response",
                len: payload.len(),
                max: self.max_response_bytes,
            });
        }
        self.tx
            .send(Answer { payload, hold })
            .map_err(|_| NetError::Stopped)
    }
}

/// Counters of what the network refused or failed, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Roster members connected now.
    pub connected_peers: usize,
    /// Connections refused because the peer is not on the roster.
    pub refused_connections: u64,
    /// Connections refused by the connection limits.
    pub refused_by_limits: u64,
    /// Gossip messages rejected (author or forwarder not on the roster).
    pub rejected_gossip_messages: u64,
    /// Inbound requests refused because too many were already pending.
    pub refused_requests: u64,
    /// Inbound requests that failed after they were read: not answered in
    /// time, or the connection closed before the response went out.
    pub failed_inbound_requests: u64,
    /// Incoming requests, responses and messages refused while reading:
    /// over the size cap, truncated, or broken off.
    pub bad_bulk_frames: u64,
}

/// A command for the event loop, each with the channel of its answer.
pub(crate) enum Command {
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Reconnect {
        reply: oneshot::Sender<()>,
    },
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        payload: BulkMessage,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Stats {
        reply: oneshot::Sender<NetStats>,
    },
}

/// The network layer's three parts; see the module documentation.
pub struct Network {
    /// Sends commands to the event loop; clone freely.
    pub client: NetworkClient,
    /// Events from the network, bounded by
    /// [`NetLimits::event_queue`]. Keep draining it: while it is full the
    /// event loop stops reading from the network.
    pub events: mpsc::Receiver<NetEvent>,
    /// Owns the swarm; run it with [`EventLoop::run`].
    pub event_loop: EventLoop,
}

impl Network {
    /// Builds the swarm and starts listening on the configured addresses.
    /// Must be called inside a tokio runtime. Nothing is dialed until
    /// [`EventLoop::run`] starts.
    pub fn new(config: NetConfig, keypair: Keypair) -> Result<Self, NetError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetError::Transport(
                "the network must be created inside a tokio runtime".into(),
            ));
        }
        let (command_tx, command_rx) = mpsc::channel(config.limits.command_queue);
        let (event_tx, event_rx) = mpsc::channel(config.limits.event_queue);
        let local_peer_id = keypair.public().to_peer_id();
        let event_loop = EventLoop::new(config.clone(), keypair, command_rx, event_tx)?;
        let outboxes =
            messages::Outboxes::new(event_loop.message_control(), local_peer_id, &config);
        let client = NetworkClient {
            commands: command_tx,
            local_peer_id,
            request_guard: config.request_timeout + REQUEST_GUARD,
            outboxes: Arc::new(outboxes),
        };
        Ok(Self {
            client,
            events: event_rx,
            event_loop,
        })
    }
}

/// The handle through which the daemon uses the network.
#[derive(Clone)]
pub struct NetworkClient {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    request_guard: Duration,
    outboxes: Arc<messages::Outboxes>,
}

impl fmt::Debug for NetworkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkClient")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl NetworkClient {
    /// Our own peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// The addresses we listen on, without `/p2p/`. Waits until the first
    /// listener has reported its bound address.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Roster members we hold a connection to.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Remembers `addrs` for roster member `peer` and dials it unless
    /// connected. Returns once the dial has started; the outcome arrives as
    /// [`NetEvent::PeerConnected`].
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { peer, addrs, reply })
            .await?
    }

    /// Dials every roster member we are not connected to now, ignoring the
    /// redial back-off, and looks up the ones without a known address.
    pub async fn reconnect(&self) -> Result<(), NetError> {
        self.call(|reply| Command::Reconnect { reply }).await
    }

    /// Publishes `data` on the consortium's gossip topic, signed with our
    /// key. Fails when no member is subscribed yet (see
    /// [`NetEvent::PeerSubscribed`]) or `data` is over the cap.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish { data, reply }).await?
    }

    /// Queues `payload` for roster member `peer`, to be written to our
    /// message stream to it (opened, dialing first if needed, on the first
    /// message), where it arrives as a [`NetEvent::Message`]. Returns at
    /// once: fails for a peer off the roster, a payload over the request
    /// cap, or a full queue; a message that cannot be delivered later is
    /// dropped (and logged at debug level). Messages to one peer arrive in
    /// the order they were queued.
    ///
    /// Much cheaper than [`Self::request`] for small messages, and without
    /// an answer. `payload` may share its parts with other messages.
    pub fn send_message(
        &self,
        peer: PeerId,
        payload: impl Into<BulkMessage>,
    ) -> Result<(), NetError> {
        self.outboxes.send(peer, payload.into())
    }

    /// Sends `payload` to roster member `peer` and waits for its response,
    /// dialing it first if needed. Fails on refusal, broken streams, a size
    /// cap on either side, or after the configured request timeout.
    ///
    /// `payload` may be a `Vec<u8>`, or a [`BulkMessage`] of shared parts:
    /// a message for several members is then sent to each without a copy.
    pub async fn request(
        &self,
        peer: PeerId,
        payload: impl Into<BulkMessage>,
    ) -> Result<Vec<u8>, NetError> {
        let payload = payload.into();
        let guard = self.request_guard;
        match tokio::time::timeout(
            guard,
            self.call(|reply| Command::Request {
                peer,
                payload,
                reply,
            }),
        )
        .await
        {
            Ok(answer) => answer?,
            Err(_) => Err(NetError::Timeout {
                peer,
                after_ms: guard.as_millis(),
            }),
        }
    }

    /// How long a request waits for its response at most, as the peer
    /// sees it: whoever holds a request must answer well within this.
    pub fn request_timeout(&self) -> Duration {
        self.request_guard.saturating_sub(REQUEST_GUARD)
    }

    /// Counters of refusals and failures so far.
    pub async fn stats(&self) -> Result<NetStats, NetError> {
        self.call(|reply| Command::Stats { reply }).await
    }
}
