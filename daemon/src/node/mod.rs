//! The round driver: runs this member's part of the consortium round after
//! round, over the network, with durable state and a status for operators.
//!
//! [`run`] (and [`run_with`], which benches and tests use to plug in their
//! own [`UpdateSource`] or to watch [`RoundReport`]s) loads the identity,
//! roster and store, starts the network and the control socket, and drives:
//!
//! - **Rounds.** Round r starts from the model of round r - 1 (the *base*,
//!   named by its blake3 hash). Per round the driver builds a protocol
//!   [`primia_protocol::Round`] with fresh OS randomness, asks the update
//!   source for this member's update on a blocking thread, and feeds the
//!   round network messages and timeouts. Every round message travels in a
//!   frame that names the round and the base ([`wire::RoundFrame`]); a
//!   message whose base differs from this member's never reaches the round,
//!   so members only ever aggregate updates to the same model. Every round
//!   message, small or bulk, goes straight to its recipients on this
//!   member's message stream to each
//!   ([`crate::net::NetworkClient::send_message`]): one frame, no answer,
//!   the bytes of a message for several members shared between them. A
//!   [`primia_protocol::Output::PersistReveal`] is written to the store by
//!   a blocking task while the driver goes on, and is flushed before any
//!   later message of the round leaves (every send settles it first).
//! - **Outcomes.** The new model is the base plus the weighted mean of the
//!   round's sum; it is stored by hash, made current, journaled, and
//!   announced on gossip ([`wire::Announcement`], signed).
//! - **Dissemination and catch-up.** A member that learns of a model newer
//!   than its own (an announcement, a peer's answer to "what is your latest
//!   model?", asked on every new connection, or a round message of a later
//!   round) fetches the blob from a member that has it, checks the hash and
//!   the round inside the blob, stores it, announces it, and joins the next
//!   round. Messages of rounds this member has not started yet are kept
//!   (bounded) until it starts them.
//!
//! Every round and attempt runs in a `tracing` span `round{round, attempt}`.

mod driver;
pub mod model;
pub mod plain;
mod runner;
pub mod source;
pub mod train;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use anyhow::Context as _;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use primia_protocol::{MemberId, Phase};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, LoadedRoster, TrainingMode};
use crate::control::ControlServer;
use crate::identity::NodeIdentity;
use crate::net::{NetConfig, Network};
use crate::store::{ModelHash, Store};

pub use model::GlobalModel;
pub use source::{TestVectors, Update, UpdateSource, test_examples, test_vector};
pub use train::LocalTraining;

/// What a member reports when a round ends here, for benches and tests.
#[derive(Clone, Debug)]
pub struct RoundReport {
    /// This member.
    pub me: MemberId,
    /// The round.
    pub round: u64,
    /// The attempt that produced the outcome.
    pub attempt: u32,
    /// Its leader.
    pub leader: MemberId,
    /// When this member started the round.
    pub started: StdInstant,
    /// When this member started the attempt that finished.
    pub attempt_started: StdInstant,
    /// When this member had the outcome (before storing the model).
    pub finished: StdInstant,
    /// When the new model was stored and announced.
    pub committed: StdInstant,
    /// The phases of this member's part in the finishing attempt, with the
    /// time each was entered.
    pub phases: Vec<(Phase, StdInstant)>,
    /// The members whose inputs are in the sum (empty in a plain round seen
    /// by a non-leader).
    pub participants: Vec<MemberId>,
    /// The new model.
    pub model: ModelHash,
    /// Its parameters.
    pub params: Arc<GlobalModel>,
}

/// Ways to run a node other than from its config alone.
#[derive(Default)]
pub struct NodeOptions {
    /// Where this member's updates come from; by default the config's
    /// training mode decides (test vectors, or training once available).
    pub source: Option<Box<dyn UpdateSource>>,
    /// Run rounds without masking (every input in the clear to the leader).
    /// For measuring what secure aggregation costs, never for real data.
    pub plain_sums: bool,
    /// Receives a [`RoundReport`] per finished round; reports that do not
    /// fit are dropped.
    pub reports: Option<mpsc::Sender<RoundReport>>,
    /// When set, round r starts only once the value is at least r: lets a
    /// bench or a test start every member's round at the same moment.
    pub round_gate: Option<watch::Receiver<u64>>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("plain_sums", &self.plain_sums)
            .finish_non_exhaustive()
    }
}

/// Runs the daemon described by `config` until `shutdown` resolves or the
/// configured number of rounds is done.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, NodeOptions::default(), shutdown).await
}

/// [`run`] with [`NodeOptions`].
pub async fn run_with(
    config: Config,
    options: NodeOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let NodeOptions {
        source,
        plain_sums,
        reports,
        round_gate,
    } = options;
    let roster = LoadedRoster::load(&config.roster)?;
    let identity = NodeIdentity::load(&config.key)?;
    let me = roster.roster.id_of(&identity.public()).with_context(|| {
        format!(
            "key {} (peer id {}) is not a member of the roster {}",
            config.key.display(),
            identity.peer_id(),
            config.roster.display()
        )
    })?;
    let name = roster.name_of(me).to_owned();
    let storage_dir = config.storage_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&storage_dir))
        .await
        .context("store task failed")??;
    let store = Arc::new(store);
    let source = match source {
        Some(s) => s,
        None => match config.training.mode {
            TrainingMode::TestVectors => Box::new(TestVectors::new(
                name.clone(),
                config.training.vector_len,
                None,
            )) as Box<dyn UpdateSource>,
            TrainingMode::Train => {
                let data = config
                    .data_dir
                    .clone()
                    .context("training mode \"train\" needs data_dir")?;
                let training = config.training.clone();
                let horizon = config.round.rounds;
                let member = name.clone();
                let privacy = config
                    .privacy
                    .enabled
                    .then(|| (config.privacy.clone(), Arc::clone(&store)));
                let source = tokio::task::spawn_blocking(move || {
                    LocalTraining::load(&data, &training, horizon, privacy, &member)
                })
                .await
                .context("data loading task failed")?
                .with_context(|| format!("config {}", config.path.display()))?;
                Box::new(source) as Box<dyn UpdateSource>
            }
        },
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let net_config = net_config(&config, &roster)?;
    let Network {
        client,
        events,
        event_loop,
    } = Network::new(net_config, identity.keypair().clone()).context("cannot start the network")?;
    let net_task = tokio::spawn(event_loop.run(stopped(stop_rx.clone())));

    let hooks = driver::Hooks {
        plain: plain_sums,
        reports,
        gate: round_gate,
    };
    let (driver, status_rx) = driver::Driver::new(
        config,
        roster,
        &identity,
        me,
        store,
        client.clone(),
        source,
        hooks,
    )
    .await?;
    let control = ControlServer::bind(&driver.config().storage_dir, status_rx)
        .context("cannot open the control socket")?;
    let control_task = tokio::spawn(control.run(stopped(stop_rx.clone())));

    let result = driver.run(events, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = net_task.await;
    match control_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "control socket"),
        Err(e) => tracing::warn!(error = %e, "control socket task"),
        Ok(Ok(())) => {}
    }
    result
}

/// The network settings of this member: listen addresses from the config,
/// every other roster member's addresses (and the config's bootstrap ones)
/// to dial.
fn net_config(config: &Config, roster: &LoadedRoster) -> anyhow::Result<NetConfig> {
    let mut net = NetConfig::new(roster.roster.consortium().as_str(), roster.peer_ids.clone());
    net.listen_addrs = config.network.listen.clone();
    net.mdns = config.network.mdns;
    for (id, m) in roster.roster.members() {
        let peer = roster.peer_ids[id.index()];
        for a in &m.addresses {
            let addr: Multiaddr = a
                .parse()
                .with_context(|| format!("roster member {}: address {a:?}", m.name))?;
            net.bootstrap_addrs.push(match addr.iter().last() {
                Some(Protocol::P2p(_)) => addr,
                _ => addr.with(Protocol::P2p(peer)),
            });
        }
    }
    for addr in &config.network.bootstrap {
        match crate::net::peer_id_of(addr) {
            Some(p) if roster.by_peer.contains_key(&p) => net.bootstrap_addrs.push(addr.clone()),
            Some(p) => {
                tracing::warn!(%addr, peer = %p, "bootstrap address of a peer not on the roster: ignored")
            }
            None => {
                tracing::warn!(%addr, "bootstrap address without /p2p/<peer id>: ignored (the roster lists member addresses)")
            }
        }
    }
    Ok(net)
}
