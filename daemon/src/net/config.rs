//! Settings of the network layer: addresses, the roster allow-list, message
//! caps, timeouts and the bounds on everything a peer can make us hold.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::NetError;

/// Largest gossip payload by default. It matches the largest control message
/// of a round (a key announcement for the largest roster stays well below
/// it); anything bigger belongs on request-response.
pub const DEFAULT_MAX_GOSSIP_MESSAGE_BYTES: usize = 1 << 20;

/// Largest request or response by default: a masked vector or a model blob
/// of up to 2^24 parameters at 8 bytes each fits with room to spare.
pub const DEFAULT_MAX_BULK_MESSAGE_BYTES: usize = 256 << 20;

/// Settings of one node's network layer.
///
/// Build one with [`NetConfig::new`] and adjust the public fields; the
/// defaults suit a consortium on a LAN or the internet. [`NetConfig::validate`]
/// names the field that is wrong.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The consortium id; the gossip topic is derived from it, so two
    /// consortia never share a topic even if a peer belongs to both.
    pub consortium_id: String,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/7400`. Port 0 picks a
    /// free port; the bound addresses are reported by
    /// [`NetEvent::Listening`](super::NetEvent::Listening).
    pub listen_addrs: Vec<Multiaddr>,
    /// Addresses of roster members to contact first. Each must end with
    /// `/p2p/<peer id>` so that the Noise handshake checks who answers.
    pub bootstrap_addrs: Vec<Multiaddr>,
    /// The allow-list: peer ids of the roster. Nobody else may hold a
    /// connection, enter the routing table or have a gossip message
    /// delivered. Our own id may be included.
    pub roster: Vec<PeerId>,
    /// Discover roster members on the local network by mDNS.
    pub mdns: bool,
    /// Largest gossip payload we publish or accept, in bytes.
    pub max_gossip_message_bytes: usize,
    /// Largest request we send or read, in bytes (at most `u32::MAX`, the
    /// length prefix). A larger incoming request is refused after reading
    /// its 4-byte length, before any buffer is allocated for it.
    pub max_request_bytes: usize,
    /// Largest response we send or read, in bytes (at most `u32::MAX`).
    pub max_response_bytes: usize,
    /// Time allowed for one request: sending it, the peer's answer and
    /// reading the response. It must cover the largest transfer on the
    /// slowest link between members.
    pub request_timeout: Duration,
    /// How often to redial roster members we are not connected to, and to
    /// look up the ones whose address we do not know. Failed redials of a
    /// peer back off up to 32 times this interval.
    pub redial_interval: Duration,
    /// Gossipsub heartbeat: how often the mesh is repaired and gossip about
    /// recent messages is sent.
    pub gossip_heartbeat: Duration,
    /// A connection with no open stream is closed after this long. Roster
    /// members are few, so connections are kept for long; the gossip mesh
    /// keeps them open anyway.
    pub idle_connection_timeout: Duration,
    /// Bounds on queues, streams and connections.
    pub limits: NetLimits,
}

/// Bounds on everything a peer (or a slow consumer) can make the network
/// layer hold.
#[derive(Debug, Clone)]
pub struct NetLimits {
    /// Commands queued from [`NetworkClient`](super::NetworkClient)s to the
    /// event loop. When full, a client call waits for room.
    pub command_queue: usize,
    /// Events queued from the event loop to the consumer. When full, the
    /// event loop stops reading from the network (nothing is dropped; peers
    /// see TCP back-pressure) but keeps serving commands, until the consumer
    /// catches up.
    pub event_queue: usize,
    /// Round messages queued for one member and not yet written to its
    /// stream; more fail at once with [`NetError::OutboxFull`]. A message
    /// for several members shares its bytes between their queues.
    pub message_queue: usize,
    /// Outbound requests awaiting a response; more fail at once with
    /// [`NetError::TooManyPendingRequests`].
    pub max_pending_outbound_requests: usize,
    /// Inbound requests handed to the consumer and not yet answered; more
    /// are refused at once (the requester sees its stream closed).
    pub max_pending_inbound_requests: usize,
    /// Concurrent request-response streams per connection (inbound and
    /// outbound together). Bounds the memory one member can make us spend
    /// on bulk transfers to this many times the size caps.
    pub max_concurrent_streams_per_connection: usize,
    /// Established connections per peer (2 lets a simultaneous dial from
    /// both sides succeed).
    pub max_established_per_peer: u32,
    /// Established connections in total; `None` means twice the roster size.
    pub max_established: Option<u32>,
    /// Incoming connections still in the handshake. Strangers can occupy
    /// these until Noise shows who they are, so keep it small.
    pub max_pending_incoming: u32,
    /// Outgoing dials in progress.
    pub max_pending_outgoing: u32,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            command_queue: 256,
            event_queue: 1024,
            message_queue: 32,
            max_pending_outbound_requests: 256,
            max_pending_inbound_requests: 256,
            max_concurrent_streams_per_connection: 16,
            max_established_per_peer: 2,
            max_established: None,
            max_pending_incoming: 32,
            max_pending_outgoing: 64,
        }
    }
}

impl NetConfig {
    /// Defaults for the given consortium and roster: listen on every IPv4
    /// interface on a free TCP port, no bootstrap addresses, mDNS off.
    pub fn new(consortium_id: impl Into<String>, roster: Vec<PeerId>) -> Self {
        Self {
            consortium_id: consortium_id.into(),
            listen_addrs: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr")],
            bootstrap_addrs: Vec::new(),
            roster,
            mdns: false,
            max_gossip_message_bytes: DEFAULT_MAX_GOSSIP_MESSAGE_BYTES,
            max_request_bytes: DEFAULT_MAX_BULK_MESSAGE_BYTES,
            max_response_bytes: DEFAULT_MAX_BULK_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(120),
            redial_interval: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_secs(1),
            idle_connection_timeout: Duration::from_secs(3600),
            limits: NetLimits::default(),
        }
    }

    /// The gossipsub topic of this consortium.
    pub fn gossip_topic(&self) -> String {
        format!("/primia/{}/control/1", self.consortium_id)
    }

    /// The roster as a set.
    pub(crate) fn roster_set(&self) -> HashSet<PeerId> {
        self.roster.iter().copied().collect()
    }

    /// Checks the settings, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), NetError> {
        let invalid =
            |field: &'static str, reason: String| NetError::InvalidConfig { field, reason };
        if self.consortium_id.is_empty() {
            return Err(invalid("consortium_id", "is empty".into()));
        }
        if self.roster.is_empty() {
            return Err(invalid("roster", "is empty".into()));
        }
        if self.listen_addrs.is_empty() {
            return Err(invalid("listen_addrs", "is empty".into()));
        }
        let roster = self.roster_set();
        for addr in &self.bootstrap_addrs {
            let Some(peer) = peer_id_of(addr) else {
                return Err(invalid(
                    "bootstrap_addrs",
                    format!("{addr} does not end with /p2p/<peer id>"),
                ));
            };
            if !roster.contains(&peer) {
                return Err(invalid(
                    "bootstrap_addrs",
                    format!("{addr} names peer {peer}, which is not on the roster"),
                ));
            }
        }
        let caps = [
            ("max_gossip_message_bytes", self.max_gossip_message_bytes),
            ("max_request_bytes", self.max_request_bytes),
            ("max_response_bytes", self.max_response_bytes),
        ];
        for (field, cap) in caps {
            if cap == 0 || cap > u32::MAX as usize {
                return Err(invalid(
                    field,
                    format!("{cap} is not between 1 and {}", u32::MAX),
                ));
            }
        }
        let durations = [
            ("request_timeout", self.request_timeout),
            ("redial_interval", self.redial_interval),
            ("gossip_heartbeat", self.gossip_heartbeat),
            ("idle_connection_timeout", self.idle_connection_timeout),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return Err(invalid(field, "is zero".into()));
            }
        }
        let l = &self.limits;
        let counts = [
            ("limits.command_queue", l.command_queue),
            ("limits.event_queue", l.event_queue),
            ("limits.message_queue", l.message_queue),
            (
                "limits.max_pending_outbound_requests",
                l.max_pending_outbound_requests,
            ),
            (
                "limits.max_pending_inbound_requests",
                l.max_pending_inbound_requests,
            ),
            (
                "limits.max_concurrent_streams_per_connection",
                l.max_concurrent_streams_per_connection,
            ),
            (
                "limits.max_established_per_peer",
                l.max_established_per_peer as usize,
            ),
            (
                "limits.max_pending_incoming",
                l.max_pending_incoming as usize,
            ),
            (
                "limits.max_pending_outgoing",
                l.max_pending_outgoing as usize,
            ),
        ];
        for (field, n) in counts {
            if n == 0 {
                return Err(invalid(field, "is zero".into()));
            }
        }
        if l.max_established == Some(0) {
            return Err(invalid("limits.max_established", "is zero".into()));
        }
        Ok(())
    }

    /// Total established connections allowed.
    pub(crate) fn max_established(&self) -> u32 {
        self.limits.max_established.unwrap_or_else(|| {
            let n = u32::try_from(self.roster.len()).unwrap_or(u32::MAX);
            n.saturating_mul(self.limits.max_established_per_peer)
        })
    }
}

/// The peer id a multiaddr ends with (`.../p2p/<peer id>`), if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` without a trailing `/p2p/<peer id>`.
pub(crate) fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn check_invalid(config: &NetConfig, field: &str) {
        match config.validate() {
            Err(NetError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error about {field}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        NetConfig::new("c", vec![peer()]).validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let a = peer();
        let mut c = NetConfig::new("c", vec![a]);
        c.bootstrap_addrs = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()];
        check_invalid(&c, "bootstrap_addrs");
        c.bootstrap_addrs = vec![
            format!("/ip4/127.0.0.1/tcp/1/p2p/{}", peer())
                .parse()
                .unwrap(),
        ];
        check_invalid(&c, "bootstrap_addrs");
        c.bootstrap_addrs = vec![format!("/ip4/127.0.0.1/tcp/1/p2p/{a}").parse().unwrap()];
        c.validate().unwrap();

        let mut c = NetConfig::new("c", vec![a]);
        c.max_request_bytes = u32::MAX as usize + 1;
        check_invalid(&c, "max_request_bytes");
        let mut c = NetConfig::new("c", vec![a]);
        c.limits.event_queue = 0;
        check_invalid(&c, "limits.event_queue");
        check_invalid(&NetConfig::new("", vec![a]), "consortium_id");
        check_invalid(&NetConfig::new("c", vec![]), "roster");
    }

    #[test]
    fn peer_id_is_stripped() {
        let a = peer();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{a}").parse().unwrap();
        assert_eq!(peer_id_of(&addr), Some(a));
        assert_eq!(
            without_peer_id(&addr),
            "/ip4/127.0.0.1/tcp/1".parse().unwrap()
        );
    }
}
