//! The task that owns the swarm: it turns client commands into swarm calls
//! and libp2p's nested events into flat [`NetEvent`]s, enforces the roster
//! on gossip, keeps roster members connected, and bounds every queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::core::upgrade::NegotiationError;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, ListenError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, gossipsub, identify, kad, mdns,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent, build_swarm};
use super::codec::{BulkCodec, BulkMessage};
use super::config::{peer_id_of, without_peer_id};
use super::messages::{self, MESSAGE_PROTOCOL};
use super::{Answer, Command, NetConfig, NetError, NetEvent, NetStats, ResponseHandle};

/// Addresses remembered per roster member (besides its bootstrap ones);
/// the most recently learned are kept.
const MAX_ADDRS_PER_PEER: usize = 8;

/// Redials of an unreachable member back off up to `2^MAX_BACKOFF_EXP`
/// times the redial interval.
const MAX_BACKOFF_EXP: u32 = 5;

/// Callers of `listen_addrs` parked until the first address is bound.
const MAX_LISTEN_WAITERS: usize = 64;

/// Where the answer to an outbound request goes.
type ReplyTo = (PeerId, oneshot::Sender<Result<Vec<u8>, NetError>>);

/// Request timeouts after which what an answer holds is let go even if the
/// swarm never said the answer ended (the stream's own timeout ends it
/// after one): a turn can never be lost for good.
const HOLD_AT_MOST: u32 = 2;

type PendingResponse = BoxFuture<
    'static,
    (
        InboundRequestId,
        ResponseChannel<BulkMessage>,
        Option<Answer>,
    ),
>;

/// When to dial a disconnected member next.
#[derive(Debug, Clone, Copy)]
struct Redial {
    next_at: Instant,
    failures: u32,
}

/// Owns the swarm. Create it with [`Network::new`](super::Network::new) and
/// run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    local: PeerId,
    roster: HashSet<PeerId>,
    topic: gossipsub::IdentTopic,
    bootstrap: HashMap<PeerId, Vec<Multiaddr>>,
    max_request_bytes: usize,
    max_response_bytes: usize,
    max_gossip_message_bytes: usize,
    max_pending_outbound: usize,
    max_pending_inbound: usize,
    request_timeout: Duration,
    redial_interval: Duration,

    commands: mpsc::Receiver<Command>,
    commands_closed: bool,
    events: mpsc::Sender<NetEvent>,
    events_closed: bool,
    /// Events produced but not yet accepted by the bounded event channel.
    /// While it is not empty the swarm is not polled, so it holds at most
    /// the few events of one swarm event.
    outbox: VecDeque<NetEvent>,

    connected: HashSet<PeerId>,
    /// Learned addresses of roster members, most recent first.
    addresses: HashMap<PeerId, VecDeque<Multiaddr>>,
    redial: HashMap<PeerId, Redial>,
    /// Kademlia lookups of roster members we cannot reach, at most one each.
    lookups: HashMap<kad::QueryId, PeerId>,
    bootstrap_query: Option<kad::QueryId>,

    /// Outbound requests awaiting their response (capped).
    pending_requests: HashMap<OutboundRequestId, ReplyTo>,
    /// Inbound requests handed out as events, awaiting the consumer's
    /// answer (capped; each ends by the request timeout at the latest).
    pending_responses: FuturesUnordered<PendingResponse>,
    /// What answers handed to the swarm hold until they are written out or
    /// fail (see [`ResponseHandle::respond_holding`]), and since when.
    /// Bounded by the streams the swarm has open: every entry ends with
    /// `ResponseSent` or `InboundFailure`, or at the latest after
    /// [`HOLD_AT_MOST`] request timeouts.
    holding: HashMap<InboundRequestId, (Instant, Box<dyn Send>)>,

    /// The codec's shared counter of bad incoming frames.
    codec: BulkCodec,
    /// Incoming message streams, until [`Self::run`] starts reading them.
    incoming: Option<libp2p_stream::IncomingStreams>,
    message_control: libp2p_stream::Control,
    listen_addrs: Vec<Multiaddr>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    stats: NetStats,
}

impl EventLoop {
    pub(crate) fn new(
        config: NetConfig,
        keypair: Keypair,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
    ) -> Result<Self, NetError> {
        let local = keypair.public().to_peer_id();
        let codec = BulkCodec::new(config.max_request_bytes, config.max_response_bytes);
        let mut swarm = build_swarm(&config, keypair, &codec)?;
        for addr in &config.listen_addrs {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut bootstrap: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for addr in &config.bootstrap_addrs {
            // validate() checked that each one names a roster peer.
            if let Some(peer) = peer_id_of(addr).filter(|p| *p != local) {
                bootstrap
                    .entry(peer)
                    .or_default()
                    .push(without_peer_id(addr));
            }
        }
        let topic = gossipsub::IdentTopic::new(config.gossip_topic());
        let mut message_control = swarm.behaviour().messages.new_control();
        let incoming = message_control
            .accept(MESSAGE_PROTOCOL)
            .map_err(|e| NetError::Transport(format!("cannot accept message streams: {e}")))?;
        Ok(Self {
            swarm,
            local,
            roster: config.roster_set(),
            topic,
            bootstrap,
            max_request_bytes: config.max_request_bytes,
            max_response_bytes: config.max_response_bytes,
            max_gossip_message_bytes: config.max_gossip_message_bytes,
            max_pending_outbound: config.limits.max_pending_outbound_requests,
            max_pending_inbound: config.limits.max_pending_inbound_requests,
            request_timeout: config.request_timeout,
            redial_interval: config.redial_interval,
            commands,
            commands_closed: false,
            events,
            events_closed: false,
            outbox: VecDeque::new(),
            connected: HashSet::new(),
            addresses: HashMap::new(),
            redial: HashMap::new(),
            lookups: HashMap::new(),
            bootstrap_query: None,
            pending_requests: HashMap::new(),
            pending_responses: FuturesUnordered::new(),
            holding: HashMap::new(),
            codec,
            incoming: Some(incoming),
            message_control,
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            stats: NetStats::default(),
        })
    }

    /// Runs until `shutdown` resolves, then drops the swarm, which closes
    /// every connection. Pending requests then fail with
    /// [`NetError::Stopped`].
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.redial_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Readers of incoming message streams hand messages straight to the
        // event queue; they stop with the loop.
        let acceptor = self.incoming.take().map(|incoming| {
            tokio::spawn(messages::accept(
                incoming,
                Arc::new(self.roster.clone()),
                self.events.clone(),
                self.codec.clone(),
                self.max_request_bytes,
            ))
            .abort_handle()
        });
        self.start();
        loop {
            let deliver = !self.outbox.is_empty() && !self.events_closed;
            // An owned permit, so that the select's output borrows nothing
            // from `self` while the other branches' handlers run.
            let events = self.events.clone();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = events.reserve_owned(), if deliver => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        // Nobody listens any more: drop events from now on
                        // (a dropped request handle refuses that request).
                        self.events_closed = true;
                        self.outbox.clear();
                    }
                },
                command = self.commands.recv(), if !self.commands_closed => match command {
                    Some(command) => self.on_command(command),
                    None => self.commands_closed = true,
                },
                Some((id, channel, answer)) = self.pending_responses.next(),
                    if !self.pending_responses.is_empty() =>
                {
                    self.on_response_ready(id, channel, answer);
                }
                event = self.swarm.select_next_some(), if self.outbox.is_empty() => {
                    self.on_swarm_event(event);
                }
                _ = tick.tick() => self.maintain(false),
            }
        }
        if let Some(acceptor) = acceptor {
            acceptor.abort();
        }
        debug!(peer = %self.local, "network event loop stopped");
    }

    /// Opens message streams to members (see [`messages::Outboxes`]).
    pub(crate) fn message_control(&self) -> libp2p_stream::Control {
        self.message_control.clone()
    }

    fn emit(&mut self, event: NetEvent) {
        if !self.events_closed {
            self.outbox.push_back(event);
        }
    }

    fn start(&mut self) {
        let bootstrap: Vec<_> = self
            .bootstrap
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addrs) in bootstrap {
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            self.dial(peer);
        }
    }

    /// Every address we know for a roster member: learned ones first, then
    /// its bootstrap addresses.
    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .addresses
            .get(peer)
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default();
        for addr in self.bootstrap.get(peer).into_iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        addrs
    }

    fn learn_address(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == self.local || !self.roster.contains(&peer) {
            return;
        }
        let addr = without_peer_id(&addr);
        let known = self.addresses.entry(peer).or_default();
        if known.front() == Some(&addr) {
            return;
        }
        known.retain(|a| a != &addr);
        known.push_front(addr.clone());
        known.truncate(MAX_ADDRS_PER_PEER);
        self.swarm.behaviour_mut().kad.add_address(&peer, addr);
    }

    fn dial(&mut self, peer: PeerId) {
        let addrs = self.addresses_of(&peer);
        if addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => debug!(%peer, error = %e, "dial not started"),
        }
    }

    /// Keeps roster members connected: dials the ones due for a redial and
    /// looks up in the DHT those we have no working address for.
    fn maintain(&mut self, now_all: bool) {
        let now = Instant::now();
        let hold_limit = self.request_timeout * HOLD_AT_MOST;
        self.holding
            .retain(|_, (since, _)| now.saturating_duration_since(*since) < hold_limit);
        let missing: Vec<PeerId> = self
            .roster
            .iter()
            .filter(|p| **p != self.local && !self.connected.contains(p))
            .copied()
            .collect();
        for peer in missing {
            let redial = self.redial.get(&peer).copied();
            if !now_all && redial.is_some_and(|r| now < r.next_at) {
                continue;
            }
            let failures = redial.map_or(0, |r| r.failures);
            if self.addresses_of(&peer).is_empty() || failures >= 2 {
                self.look_up(peer);
            }
            self.dial(peer);
            let backoff = self.redial_interval * 2u32.pow(failures.min(MAX_BACKOFF_EXP));
            self.redial.insert(
                peer,
                Redial {
                    next_at: now + backoff,
                    failures,
                },
            );
        }
    }

    fn look_up(&mut self, peer: PeerId) {
        if self.lookups.values().any(|p| *p == peer) {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        if kad.kbuckets().all(|b| b.num_entries() == 0) {
            return;
        }
        let query = kad.get_closest_peers(peer);
        self.lookups.insert(query, peer);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                if self.listen_addrs.is_empty() && self.listen_waiters.len() < MAX_LISTEN_WAITERS {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::Dial { peer, addrs, reply } => {
                let result = if !self.roster.contains(&peer) {
                    Err(NetError::NotOnRoster(peer))
                } else if peer == self.local {
                    Err(NetError::Dial {
                        peer,
                        reason: "that is this node".into(),
                    })
                } else {
                    for addr in addrs {
                        self.learn_address(peer, addr);
                    }
                    if self.addresses_of(&peer).is_empty() {
                        Err(NetError::Dial {
                            peer,
                            reason: "no known address".into(),
                        })
                    } else {
                        self.dial(peer);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Reconnect { reply } => {
                self.maintain(true);
                let _ = reply.send(());
            }
            Command::Publish { data, reply } => {
                let _ = reply.send(self.publish(data));
            }
            Command::Request {
                peer,
                payload,
                reply,
            } => {
                if let Err(e) = self.check_request(peer, payload.len()) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let addrs = self.addresses_of(&peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .bulk
                    .send_request_with_addresses(&peer, payload, addrs);
                self.pending_requests.insert(id, (peer, reply));
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.connected_peers = self.connected.len();
                stats.bad_bulk_frames = self.codec.bad_frames();
                let _ = reply.send(stats);
            }
        }
    }

    fn check_request(&self, peer: PeerId, len: usize) -> Result<(), NetError> {
        if !self.roster.contains(&peer) {
            return Err(NetError::NotOnRoster(peer));
        }
        if peer == self.local {
            return Err(NetError::Request {
                peer,
                reason: "cannot send a request to this node itself".into(),
            });
        }
        if len > self.max_request_bytes {
            return Err(NetError::PayloadTooLarge {
                what: "request",
                len,
                max: self.max_request_bytes,
            });
        }
        if self.pending_requests.len() >= self.max_pending_outbound {
            return Err(NetError::TooManyPendingRequests {
                max: self.max_pending_outbound,
            });
        }
        Ok(())
    }

    fn publish(&mut self, data: Vec<u8>) -> Result<(), NetError> {
        if data.len() > self.max_gossip_message_bytes {
            return Err(NetError::PayloadTooLarge {
                what: "gossip message",
                len: data.len(),
                max: self.max_gossip_message_bytes,
            });
        }
        let topic = self.topic.clone();
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, data)
            .map(|_| ())
            .map_err(|e| {
                NetError::Publish(match e {
                    gossipsub::PublishError::NoPeersSubscribedToTopic => {
                        "no member is subscribed to the topic yet".into()
                    }
                    gossipsub::PublishError::AllQueuesFull(n) => {
                        format!("the send queues of all {n} members are full")
                    }
                    other => other.to_string(),
                })
            })
    }

    fn on_response_ready(
        &mut self,
        id: InboundRequestId,
        channel: ResponseChannel<BulkMessage>,
        answer: Option<Answer>,
    ) {
        match answer {
            Some(Answer { payload, hold }) => {
                if self
                    .swarm
                    .behaviour_mut()
                    .bulk
                    .send_response(channel, payload)
                    .is_err()
                {
                    debug!("response not sent: the request is gone");
                } else if let Some(hold) = hold {
                    self.holding.insert(id, (Instant::now(), hold));
                }
            }
            // The handle was dropped or not used in time: dropping the
            // channel closes the stream, so the requester learns at once.
            None => drop(channel),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Bulk(e)) => self.on_bulk(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(peer = %self.local, %address, "listening");
                self.listen_addrs.push(address.clone());
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(self.listen_addrs.clone());
                }
                self.emit(NetEvent::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.learn_address(peer_id, address.clone());
                }
                self.redial.remove(&peer_id);
                if num_established.get() == 1 && self.roster.contains(&peer_id) {
                    info!(peer = %peer_id, "member connected");
                    self.connected.insert(peer_id);
                    self.emit(NetEvent::PeerConnected { peer: peer_id });
                    if self.bootstrap_query.is_none() {
                        self.bootstrap_query = self.swarm.behaviour_mut().kad.bootstrap().ok();
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } if num_established == 0 && self.connected.remove(&peer_id) => {
                info!(peer = %peer_id, cause = ?cause, "member disconnected");
                self.redial.insert(
                    peer_id,
                    Redial {
                        next_at: Instant::now() + self.redial_interval,
                        failures: 0,
                    },
                );
                self.emit(NetEvent::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                peer_id,
                ..
            } => self.on_incoming_error(&error, &send_back_addr, peer_id),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let DialError::Denied { cause } = &error
                    && cause
                        .downcast_ref::<allow_block_list::NotAllowed>()
                        .is_some()
                {
                    // A lookup reached a peer that is not on the roster.
                    return;
                }
                if self.roster.contains(&peer) && !self.connected.contains(&peer) {
                    debug!(%peer, error = %error, "dial failed");
                    let r = self.redial.entry(peer).or_insert(Redial {
                        next_at: Instant::now(),
                        failures: 0,
                    });
                    r.failures = r.failures.saturating_add(1);
                    let backoff = self.redial_interval * 2u32.pow(r.failures.min(MAX_BACKOFF_EXP));
                    r.next_at = Instant::now() + backoff;
                }
            }
            _ => {}
        }
    }

    fn on_incoming_error(&mut self, error: &ListenError, addr: &Multiaddr, peer: Option<PeerId>) {
        let ListenError::Denied { cause } = error else {
            debug!(%addr, error = %error, "incoming connection failed");
            return;
        };
        if cause
            .downcast_ref::<allow_block_list::NotAllowed>()
            .is_some()
        {
            self.stats.refused_connections += 1;
            info!(peer = ?peer, %addr, "refused a connection from a peer not on the roster");
        } else if cause
            .downcast_ref::<connection_limits::Exceeded>()
            .is_some()
        {
            self.stats.refused_by_limits += 1;
            warn!(peer = ?peer, %addr, reason = %cause, "refused a connection over the limits");
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let author = message.source.filter(|a| self.roster.contains(a));
                let accepted = author.is_some()
                    && self.roster.contains(&propagation_source)
                    && message.topic == self.topic.hash();
                let verdict = if accepted {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                match author {
                    Some(from) if accepted => self.emit(NetEvent::GossipMessage {
                        from,
                        topic: message.topic.into_string(),
                        data: message.data,
                    }),
                    _ => {
                        self.stats.rejected_gossip_messages += 1;
                        warn!(
                            author = ?message.source,
                            via = %propagation_source,
                            "rejected a gossip message not authored by a roster member"
                        );
                    }
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic }
                if topic == self.topic.hash() && self.roster.contains(&peer_id) =>
            {
                self.emit(NetEvent::PeerSubscribed { peer: peer_id });
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                warn!(peer = %peer_id, ?failed_messages, "member too slow to take gossip");
            }
            _ => {}
        }
    }

    fn on_bulk(&mut self, event: request_response::Event<BulkMessage, BulkMessage>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    if !self.roster.contains(&peer) {
                        return;
                    }
                    if self.pending_responses.len() >= self.max_pending_inbound {
                        self.stats.refused_requests += 1;
                        warn!(%peer, limit = self.max_pending_inbound, "refused a request: too many pending");
                        return;
                    }
                    let (tx, rx) = oneshot::channel();
                    let timeout = self.request_timeout;
                    self.pending_responses.push(
                        async move {
                            let answer = tokio::time::timeout(timeout, rx).await;
                            (request_id, channel, answer.ok().and_then(Result::ok))
                        }
                        .boxed(),
                    );
                    self.emit(NetEvent::Request {
                        from: peer,
                        // Without a copy: the codec read it as one part.
                        payload: request.into_vec(),
                        reply: ResponseHandle {
                            tx,
                            max_response_bytes: self.max_response_bytes,
                        },
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response.into_vec()));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                    let err = match error {
                        request_response::OutboundFailure::Timeout => NetError::Timeout {
                            peer,
                            after_ms: self.request_timeout.as_millis(),
                        },
                        other => NetError::Request {
                            peer,
                            reason: describe_outbound_failure(&other),
                        },
                    };
                    let _ = reply.send(Err(err));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.holding.remove(&request_id);
                if !matches!(error, request_response::InboundFailure::ResponseOmission) {
                    self.stats.failed_inbound_requests += 1;
                }
                debug!(%peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.holding.remove(&request_id);
            }
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            for addr in info.listen_addrs {
                self.learn_address(peer_id, addr);
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.learn_address(peer, address)
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                let found = match result {
                    kad::QueryResult::GetClosestPeers(Ok(ok)) => ok.peers,
                    kad::QueryResult::GetClosestPeers(Err(
                        kad::GetClosestPeersError::Timeout { peers, .. },
                    )) => peers,
                    _ => Vec::new(),
                };
                for info in found {
                    let peer = info.peer_id;
                    if !self.roster.contains(&peer) || peer == self.local {
                        continue;
                    }
                    for addr in info.addrs {
                        self.learn_address(peer, addr);
                    }
                    if !self.connected.contains(&peer) {
                        self.dial(peer);
                    }
                }
                if step.last {
                    self.lookups.remove(&id);
                    if self.bootstrap_query == Some(id) {
                        self.bootstrap_query = None;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            for (peer, addr) in found {
                if self.roster.contains(&peer) && peer != self.local {
                    self.learn_address(peer, addr);
                    if !self.connected.contains(&peer) {
                        self.dial(peer);
                    }
                }
            }
        }
    }
}

fn describe_outbound_failure(error: &request_response::OutboundFailure) -> String {
    match error {
        request_response::OutboundFailure::DialFailure => "the peer could not be reached".into(),
        request_response::OutboundFailure::ConnectionClosed => {
            "the connection closed before the response arrived".into()
        }
        request_response::OutboundFailure::UnsupportedProtocols => {
            "the peer does not speak the bulk protocol".into()
        }
        // Substreams negotiate lazily (see `behaviour`), so a peer's refusal
        // of the protocol arrives as the first read of the response.
        request_response::OutboundFailure::Io(e)
            if e.get_ref()
                .and_then(|inner| inner.downcast_ref::<NegotiationError>())
                .is_some_and(|n| matches!(n, NegotiationError::Failed)) =>
        {
            "the peer does not speak the bulk protocol".into()
        }
        request_response::OutboundFailure::Io(e) => format!("stream error: {e}"),
        other => other.to_string(),
    }
}
