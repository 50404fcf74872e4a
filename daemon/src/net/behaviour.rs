//! The composed libp2p behaviour of a member and the swarm that runs it:
//! transport, allow-list, connection limits, discovery, gossip and bulk
//! request-response, configured from a [`NetConfig`].

use std::collections::HashSet;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Swarm, allow_block_list, connection_limits, gossipsub, identify, kad, mdns, noise, ping,
    request_response, tcp, yamux,
};

use super::codec::{BULK_PROTOCOL, BulkCodec};
use super::{NetConfig, NetError};

/// Identify's protocol version: members only talk to daemons of the same
/// protocol family.
const IDENTIFY_PROTOCOL: &str = "/primia/id/1";

/// Kademlia protocol name: a private DHT of the consortium, never the public
/// IPFS one.
const KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/primia/kad/1");

/// Room for gossipsub's envelope around a payload: source, sequence number,
/// topic, signature and public key, plus protobuf framing.
const GOSSIP_ENVELOPE_BYTES: usize = 1024;

/// Yamux streams per connection: bulk streams are capped separately by
/// request-response; this leaves room for gossip, identify, ping and kad.
const YAMUX_MAX_STREAMS: usize = 256;

/// How a member opens a substream. With one protocol to offer (every
/// request-response substream, identify, ping, kad), `V1Lazy` sends the
/// protocol's name and the request's bytes together instead of waiting a
/// round trip for the listener's confirmation first: a round message goes
/// out in one flight instead of two. The wire format is multistream-select
/// 1.0 either way. Its one pitfall, nested negotiations on a stream, does
/// not arise: each substream carries one protocol, and where a listener
/// lacks it, its refusal is the first thing the dialer reads, so the request
/// ends with an error.
/// Gossipsub offers several protocol versions, so its long-lived substreams
/// still negotiate with a round trip, once per connection.
const SUBSTREAM_NEGOTIATION: libp2p::core::upgrade::Version =
    libp2p::core::upgrade::Version::V1Lazy;

pub(crate) type Gossipsub =
    gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::WhitelistSubscriptionFilter>;

/// Everything a member's swarm does. The allow-list and the connection limits
/// come first so that they refuse a connection before any other behaviour
/// keeps state about it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) gossipsub: Gossipsub,
    pub(crate) bulk: request_response::Behaviour<BulkCodec>,
    pub(crate) messages: libp2p_stream::Behaviour,
}

impl Behaviour {
    fn new(config: &NetConfig, key: &Keypair, codec: &BulkCodec) -> Result<Self, NetError> {
        let local = key.public().to_peer_id();

        let mut allow = allow_block_list::Behaviour::default();
        for peer in &config.roster {
            allow.allow_peer(*peer);
        }

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(config.limits.max_pending_incoming))
                .with_max_pending_outgoing(Some(config.limits.max_pending_outgoing))
                .with_max_established(Some(config.max_established()))
                .with_max_established_per_peer(Some(config.limits.max_established_per_peer)),
        );

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("primiad/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // Only roster members enter the routing table, and we add them
        // ourselves; nobody may store records with us.
        kad_config
            .set_kbucket_inserts(kad::BucketInserts::Manual)
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_query_timeout(
                config
                    .request_timeout
                    .min(std::time::Duration::from_secs(30)),
            );
        let mut kad =
            kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config);
        // Answer lookups even without a confirmed external address: on a LAN
        // or loopback there never is one.
        kad.set_mode(Some(kad::Mode::Server));

        let mdns = if config.mdns {
            let m = mdns::tokio::Behaviour::new(mdns::Config::default(), local)
                .map_err(|e| NetError::Transport(format!("cannot start mdns: {e}")))?;
            Toggle::from(Some(m))
        } else {
            Toggle::from(None)
        };

        let topic = gossipsub::IdentTopic::new(config.gossip_topic());
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Hold each message until the event loop checks its author
            // against the roster; only accepted ones are forwarded.
            .validate_messages()
            .max_transmit_size(config.max_gossip_message_bytes + GOSSIP_ENVELOPE_BYTES)
            .heartbeat_interval(config.gossip_heartbeat)
            .heartbeat_initial_delay(config.gossip_heartbeat)
            // A mesh of 1 (at most 2) rather than the default 6. Every
            // member dials every other and publishes to all of them at once
            // (flood publishing, the default), so relaying by the mesh only
            // matters to a member without a link to the author, and gossip
            // (IHAVE/IWANT to other peers each heartbeat) repairs what the
            // mesh misses. But every relayed copy costs its receiver an
            // ed25519 verification before the duplicate is dropped (strict
            // validation checks the signature in the codec), and relays go
            // out as soon as the author is checked against the roster, so
            // IDONTWANT cannot stop them: at 10 members a mesh of 3 had each
            // message arrive about 3.7 times. The round bench at 10 members
            // and 10^5 parameters, five interleaved pairs of runs against a
            // mesh of 3 (medians of 11 rounds each): secure rounds 70-78 ms
            // against 79-90, plain rounds 32-39 ms against 41-50, and
            // 149-175 ms of CPU per secure round against 176-189. (From the
            // default 6, a mesh of 3 had already made the secure round 8 %
            // faster.)
            .mesh_n(1)
            .mesh_n_low(1)
            .mesh_n_high(2)
            .mesh_outbound_min(0)
            .build()
            .map_err(|e| NetError::InvalidConfig {
                field: "gossip",
                reason: e.to_string(),
            })?;
        let filter = gossipsub::WhitelistSubscriptionFilter(HashSet::from([topic.hash()]));
        let mut gossipsub = Gossipsub::new_with_subscription_filter(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
            filter,
        )
        .map_err(|e| NetError::Transport(format!("cannot start gossipsub: {e}")))?;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Transport(format!("cannot subscribe to {topic}: {e}")))?;

        let bulk = request_response::Behaviour::with_codec(
            codec.clone(),
            [(BULK_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(config.limits.max_concurrent_streams_per_connection),
        );

        Ok(Self {
            allow,
            limits,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            mdns,
            gossipsub,
            bulk,
            messages: libp2p_stream::Behaviour::new(),
        })
    }
}

fn yamux_config() -> yamux::Config {
    // Yamux grows each stream's receive window on demand (up to 16 MiB per
    // stream, 1 GiB per connection), which is what bulk transfers need.
    let mut c = yamux::Config::default();
    c.set_max_num_streams(YAMUX_MAX_STREAMS);
    c
}

fn tcp_config() -> tcp::Config {
    tcp::Config::new().nodelay(true)
}

/// Builds the swarm: TCP (and QUIC with the `quic` feature) with Noise and
/// yamux, DNS resolution, and the behaviour above.
pub(crate) fn build_swarm(
    config: &NetConfig,
    key: Keypair,
    codec: &BulkCodec,
) -> Result<Swarm<Behaviour>, NetError> {
    let behaviour = Behaviour::new(config, &key, codec)?;
    let transport_err = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux_config)
        .map_err(|e| transport_err(&e))?;
    #[cfg(feature = "quic")]
    let builder = builder.with_quic();
    let swarm = builder
        .with_dns()
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_connection_timeout)
                .with_substream_upgrade_protocol_override(SUBSTREAM_NEGOTIATION)
        })
        .build();
    Ok(swarm)
}
