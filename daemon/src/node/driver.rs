//! The driver's event loop: one task that owns the rounds, the current
//! model and the status, and reacts to network events, timers and the work
//! it hands to other tasks (preparing an update, fetching a model).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context as _;
use primia_crypto::{IdentityKey, fixed};
use primia_protocol::{
    Event, Instant, MemberId, Outcome, Outgoing, Output, RevealEntry, RevealRecord, Roster,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, error, info, trace, warn};
use zeroize::Zeroizing;

use super::RoundReport;
use super::model::GlobalModel;
use super::plain::PlainRound;
use super::runner::{AttemptLog, InputState, Machine, Runner};
use super::source::UpdateSource;
use super::wire::{self, Announcement, Gossip, Request, Response, RoundFrame};
use crate::config::{Config, LoadedRoster};
use crate::control::{ModelStatus, RoundStatus, SNAPSHOT_VERSION, StatusSnapshot, phase_name};
use crate::identity::NodeIdentity;
use crate::net::{BulkMessage, NetEvent, NetworkClient, ResponseHandle};
use crate::store::{
    AttemptOutcome, JournalEntry, MetricsEntry, ModelHash, ModelMeta, PhaseTiming, PrivacySpent,
    RevealReceipt, Store, StoreError, StoreUsage, now_unix_ms,
};

/// Journal entries kept in the status.
const RECENT_ATTEMPTS: usize = 10;

/// Messages of rounds not started yet, kept until they start.
const MAX_BUFFERED_MESSAGES: usize = 1024;

/// Bytes of such messages kept at most.
const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// A member is asked for its latest model at most this often (except on a
/// new connection).
const LATEST_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest time a member that finished its last round stays up to answer
/// members still in it.
const MIN_LINGER: Duration = Duration::from_secs(5);

/// How long a member that refused another's request for other settings
/// stays up before it stops, so that the refusal (which tells the asker
/// both settings lines) reaches the asker first.
const SETTINGS_REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// A reveal entry being written by a blocking task.
struct Persisting {
    entry: RevealEntry,
    task: tokio::task::JoinHandle<Result<RevealReceipt, StoreError>>,
}

/// Work done by other tasks, reported back to the loop.
enum Internal {
    /// The update source finished preparing `round`'s update.
    UpdateReady {
        round: u64,
        source: Box<dyn UpdateSource>,
        result: anyhow::Result<Input>,
        /// The source's metrics of the base model (of round `round - 1`).
        metrics: BTreeMap<String, f64>,
    },
    /// The update source measured the final model.
    Evaluated {
        round: u64,
        source: Box<dyn UpdateSource>,
        metrics: BTreeMap<String, f64>,
    },
    /// A member answered "what is your latest model?".
    Latest {
        from: MemberId,
        result: Result<Announcement, LatestError>,
    },
    /// A model fetch ended.
    Fetched {
        announcement: Announcement,
        result: Result<Vec<u8>, String>,
    },
}

/// Why a member's latest model was not learned.
enum LatestError {
    /// It refused because its settings differ; its settings line.
    Settings(String),
    /// Anything else (a transport error, a bad answer).
    Other(String),
}

/// Recent metrics kept for the status.
const RECENT_METRICS: usize = 10;

/// Models read and answered at once. Each answer holds a whole model in
/// memory (45 MB for ResNet-18) until it is written to the asker's stream;
/// without a bound, a member asking many times at once (up to its streams
/// per connection), reading slowly, or many members catching up together
/// would make this daemon hold a copy per request. The others wait their
/// turn; a turn held by an asker that stops reading ends with the request
/// timeout at the latest. A member holds at most one turn at a time, so one
/// that asks many times or reads slowly delays only its own answers.
const MAX_MODEL_SERVES: usize = 2;

/// A turn to answer a model request; held until dropped.
type Turn = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

/// Turns to answer model requests: [`MAX_MODEL_SERVES`] in all, one per
/// asking member.
struct ModelServes {
    all: Arc<tokio::sync::Semaphore>,
    /// Indexed by `MemberId`.
    per_member: Vec<Arc<tokio::sync::Semaphore>>,
}

impl ModelServes {
    fn new(members: usize) -> Self {
        Self {
            all: Arc::new(tokio::sync::Semaphore::new(MAX_MODEL_SERVES)),
            per_member: (0..members)
                .map(|_| Arc::new(tokio::sync::Semaphore::new(1)))
                .collect(),
        }
    }

    /// Waits for `member`'s turn: its own first, then one of all turns.
    fn turn(&self, member: MemberId) -> impl Future<Output = Option<Turn>> + Send + use<> {
        let mine = self.per_member.get(member.index()).cloned();
        let all = Arc::clone(&self.all);
        async move {
            let mine = mine?.acquire_owned().await.ok()?;
            let any = all.acquire_owned().await.ok()?;
            Some((mine, any))
        }
    }
}

/// What the driver is doing between rounds.
enum Stage {
    /// Waiting to start `round`: until `until`, and until enough members
    /// are reachable.
    Pause {
        round: u64,
        retry: u32,
        until: TokioInstant,
    },
    /// A round runs.
    Running(Box<Runner>),
    /// The configured rounds are done; staying up a while for the others.
    Done { since: TokioInstant },
    /// Only while a runner is taken out to be driven.
    Idle,
}

/// How a round ended at this member.
enum End {
    Finished(Outcome, Option<AttemptLog>),
    Failed,
}

/// Messages of rounds not started yet.
#[derive(Default)]
struct Buffer {
    items: VecDeque<Buffered>,
    bytes: usize,
}

struct Buffered {
    from: MemberId,
    round: u64,
    base: ModelHash,
    envelope: Vec<u8>,
}

impl Buffer {
    /// Keeps a message, dropping the oldest ones beyond the bounds.
    fn push(&mut self, item: Buffered) {
        if item.envelope.len() > MAX_BUFFERED_BYTES {
            return;
        }
        while self.items.len() >= MAX_BUFFERED_MESSAGES
            || self.bytes + item.envelope.len() > MAX_BUFFERED_BYTES
        {
            match self.items.pop_front() {
                Some(old) => self.bytes -= old.envelope.len(),
                None => break,
            }
        }
        self.bytes += item.envelope.len();
        self.items.push_back(item);
    }

    /// Takes the messages of `round`, dropping those of earlier rounds.
    fn take_round(&mut self, round: u64) -> Vec<Buffered> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            if item.round == round {
                out.push(item);
            } else if item.round > round {
                keep.push_back(item);
            }
        }
        self.items = keep;
        self.bytes = self.items.iter().map(|i| i.envelope.len()).sum();
        out
    }
}

/// What [`super::NodeOptions`] asks of the driver.
pub(super) struct Hooks {
    pub(super) plain: bool,
    pub(super) reports: Option<mpsc::Sender<RoundReport>>,
    pub(super) gate: Option<watch::Receiver<u64>>,
}

pub(super) struct Driver {
    config: Config,
    roster: Arc<LoadedRoster>,
    protocol_roster: Arc<Roster>,
    identity: Arc<IdentityKey>,
    me: MemberId,
    name: String,
    /// This member's peer id in base58, as the status shows it (encoding
    /// it for every status update was 0.7 % of a small round's CPU).
    peer_id: String,
    store: Arc<Store>,
    net: NetworkClient,
    status: watch::Sender<StatusSnapshot>,
    /// The protocol's clock: milliseconds since this instant.
    epoch: TokioInstant,
    plain: bool,
    reports: Option<mpsc::Sender<RoundReport>>,
    parameters: usize,

    model: Arc<GlobalModel>,
    model_hash: ModelHash,
    model_created_unix_ms: u64,
    /// This member's signed announcement of `model`.
    announcement: Announcement,

    stage: Stage,
    /// The last round that finished here, kept to answer members still in
    /// it (the protocol sends them the outcome).
    previous: Option<Box<Runner>>,
    buffer: Buffer,
    connected: BTreeSet<MemberId>,
    subscribed: BTreeSet<MemberId>,
    /// The newest model each member said it holds.
    latest_of: BTreeMap<MemberId, Announcement>,
    asked_latest: BTreeMap<MemberId, StdInstant>,
    /// The model being fetched, if any.
    fetching: Option<ModelHash>,
    /// When to fetch the model of the round this member is running, if it
    /// has not finished the round by itself by then (see `fetch_newer`).
    fetch_due: Option<TokioInstant>,
    /// A member asked with other settings and was refused: this member
    /// starts no round and stops too, at the instant given, once the
    /// refusal had time to reach the asker (see [`SETTINGS_REFUSAL_GRACE`]).
    settings_conflict: Option<(TokioInstant, anyhow::Error)>,
    /// (member, hash) fetches that failed; not tried again until the member
    /// announces something new.
    failed_fetches: BTreeSet<(MemberId, ModelHash)>,
    /// `None` while it prepares an update on another thread.
    source: Option<Box<dyn UpdateSource>>,
    /// The update for the next round, prepared as soon as its base model
    /// is known (during the pause between rounds, as training would be).
    prepared: Option<(u64, anyhow::Result<Input>)>,
    recent: VecDeque<JournalEntry>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: Option<mpsc::Receiver<Internal>>,
    /// Whether the status document is behind (see [`Self::publish_status`]).
    dirty: bool,
    /// Whether its attempt or metrics history is.
    history_dirty: bool,
    /// Turns to answer a model request (see [`MAX_MODEL_SERVES`]).
    model_serves: ModelServes,
    /// What the store holds, as of the last commit.
    stored: StoreUsage,
    exit: bool,
    /// Rounds up to this number may start (see `NodeOptions::round_gate`).
    gate_open: u64,
    gate: Option<watch::Receiver<u64>>,
    /// Messages dropped because their base model differs from ours.
    base_mismatches: u64,
    /// This member's settings line: the round protocol's generation
    /// ([`wire::ROUND_PROTOCOL`]) and the update source's settings (see
    /// [`UpdateSource::settings`]).
    settings: String,
    /// The newest metrics of this member, newest first.
    metrics: VecDeque<MetricsEntry>,
    /// The last model the source measured, so it is measured once.
    evaluated: Option<u64>,
    /// The differential-privacy budget spent, as the store has it.
    privacy: PrivacySpent,
    /// The reveal record of the round after the current model, as the
    /// store has it: read at start, then kept in step with every entry
    /// this member persists, so that starting a round needs no read (a
    /// trip to the blocking pool on every round's critical path). A model
    /// this member commits was not committed by an earlier life of it, so
    /// no earlier life took part in the round after it: that round's record
    /// starts empty.
    reveals: RevealRecord,
    /// A reveal entry on its way to the store (see [`Self::settle_reveal`]).
    persisting: Option<Persisting>,
}

/// Runs blocking store work off the event loop's thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task failed")
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn new(
        config: Config,
        roster: LoadedRoster,
        identity: &NodeIdentity,
        me: MemberId,
        store: Arc<Store>,
        net: NetworkClient,
        source: Box<dyn UpdateSource>,
        hooks: Hooks,
    ) -> anyhow::Result<(Self, watch::Receiver<StatusSnapshot>)> {
        let parameters = source.parameter_count();
        let settings = format!(
            "round-protocol={} {}",
            wire::ROUND_PROTOCOL,
            source.settings()
        );
        let vector_len = parameters + 1;
        if vector_len > primia_protocol::wire::MAX_VECTOR_LEN {
            anyhow::bail!(
                "the model has {parameters} parameters, more than a round can carry ({})",
                primia_protocol::wire::MAX_VECTOR_LEN - 1
            );
        }
        let name = roster.name_of(me).to_owned();
        let identity_key = Arc::new(IdentityKey::from_seed(identity.key().seed()));
        let (source, model, hash, created) =
            load_or_create_model(Arc::clone(&store), source, parameters).await?;
        let recent = {
            let store = Arc::clone(&store);
            blocking(move || store.recent_attempts(RECENT_ATTEMPTS)).await??
        };
        let metrics = {
            let store = Arc::clone(&store);
            blocking(move || store.metrics_history(RECENT_METRICS)).await??
        };
        let stored = {
            let store = Arc::clone(&store);
            blocking(move || store.usage()).await??
        };
        let privacy = {
            let store = Arc::clone(&store);
            blocking(move || store.privacy_spent()).await??
        };
        let reveals = {
            let store = Arc::clone(&store);
            let round = model.round + 1;
            blocking(move || store.reveal_record(round)).await??
        };
        let protocol_roster = Arc::new(roster.roster.clone());
        let members = protocol_roster.len();
        let announcement = Announcement::sign(
            &identity_key,
            &protocol_roster.digest(),
            me,
            model.round,
            hash,
            parameters as u64,
            created,
        );
        let (internal_tx, internal_rx) = mpsc::channel(64);
        let started_unix_ms = now_unix_ms();
        let epoch = TokioInstant::now();
        let placeholder = StatusSnapshot {
            version: SNAPSHOT_VERSION,
            name: name.clone(),
            peer_id: identity.peer_id().to_base58(),
            consortium: protocol_roster.consortium().as_str().to_owned(),
            members: protocol_roster.len(),
            threshold: protocol_roster.threshold(),
            connected: Vec::new(),
            missing: Vec::new(),
            round: None,
            latest_model: None,
            recent_attempts: Vec::new(),
            metrics: Vec::new(),
            privacy_spent: Default::default(),
            storage_dir: config.storage_dir.display().to_string(),
            stored: stored.clone(),
            started_unix_ms,
            updated_unix_ms: started_unix_ms,
        };
        let (status, status_rx) = watch::channel(placeholder);
        let first_round = model.round + 1;
        let mut latest_of = BTreeMap::new();
        latest_of.insert(me, announcement);
        let mut driver = Self {
            roster: Arc::new(roster),
            protocol_roster,
            identity: identity_key,
            me,
            name,
            peer_id: identity.peer_id().to_base58(),
            store,
            net,
            status,
            epoch,
            plain: hooks.plain,
            reports: hooks.reports,
            parameters,
            model: Arc::new(model),
            model_hash: hash,
            model_created_unix_ms: created,
            announcement,
            stage: Stage::Pause {
                round: first_round,
                retry: 0,
                until: epoch,
            },
            previous: None,
            buffer: Buffer::default(),
            connected: BTreeSet::new(),
            subscribed: BTreeSet::new(),
            latest_of,
            asked_latest: BTreeMap::new(),
            fetching: None,
            fetch_due: None,
            settings_conflict: None,
            failed_fetches: BTreeSet::new(),
            source: Some(source),
            prepared: None,
            recent: recent.into(),
            internal_tx,
            internal_rx: Some(internal_rx),
            dirty: true,
            history_dirty: true,
            model_serves: ModelServes::new(members),
            stored,
            exit: false,
            gate_open: if hooks.gate.is_some() { 0 } else { u64::MAX },
            gate: hooks.gate,
            base_mismatches: 0,
            settings,
            metrics: metrics.into_iter().rev().collect(),
            evaluated: None,
            privacy,
            reveals,
            persisting: None,
            config,
        };
        let target = driver.config.round.rounds;
        if target > 0 && driver.model.round >= target {
            // Restarted after its last round: only serve the others.
            driver.stage = Stage::Done { since: epoch };
        }
        driver.publish_status();
        info!(
            member = %driver.name,
            peer = %driver.peer_id,
            model = %driver.model_hash,
            model_round = driver.model.round,
            parameters,
            plain = driver.plain,
            "node started"
        );
        Ok((driver, status_rx))
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// The protocol's clock.
    fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn to_tokio(&self, at: Instant) -> TokioInstant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    fn name_of(&self, id: MemberId) -> String {
        self.roster.name_of(id).to_owned()
    }

    fn others(&self) -> impl Iterator<Item = MemberId> + '_ {
        let me = self.me;
        self.protocol_roster.ids().filter(move |id| *id != me)
    }

    /// Runs until `shutdown` resolves, the configured rounds are done (and
    /// the others had time to finish them), or a fatal error.
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut internal = self.internal_rx.take().context("driver already ran")?;
        let mut gate = self.gate.take();
        if let Some(g) = &gate {
            self.gate_open = *g.borrow();
        }
        let mut shutdown = std::pin::pin!(shutdown);
        self.prepare_update();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!("shutting down");
                    break;
                }
                event = events.recv() => match event {
                    Some(e) => self.on_net(e).await?,
                    None => anyhow::bail!("the network stopped"),
                },
                Some(msg) = internal.recv() => self.on_internal(msg).await?,
                () = sleep_until(deadline) => self.on_timer().await?,
                open = gate_changed(&mut gate) => match open {
                    Some(v) => self.gate_open = v,
                    // Whoever held the gate is gone: no more limit.
                    None => {
                        gate = None;
                        self.gate_open = u64::MAX;
                    }
                },
            }
            self.try_start().await?;
            if self.dirty {
                self.publish_status();
            }
            if self.exit {
                info!(round = self.model.round, "configured rounds done");
                break;
            }
        }
        Ok(())
    }

    // ----- timers and round starts -----

    fn next_deadline(&self) -> Option<TokioInstant> {
        [
            self.stage_deadline(),
            self.fetch_due,
            self.settings_conflict.as_ref().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn stage_deadline(&self) -> Option<TokioInstant> {
        match &self.stage {
            Stage::Running(r) => r.machine.poll_timeout().map(|t| self.to_tokio(t)),
            // A closed gate wakes the loop when it opens.
            Stage::Pause { round, .. } if *round > self.gate_open => None,
            Stage::Pause { until, .. } => {
                let now = TokioInstant::now();
                if now < *until {
                    Some(*until)
                } else if self.subscribed.len() + 1 >= self.protocol_roster.threshold() {
                    Some(*until + Duration::from_millis(self.config.round.collect_ms))
                } else {
                    None
                }
            }
            Stage::Done { since } => Some(*since + self.linger()),
            Stage::Idle => None,
        }
    }

    fn linger(&self) -> Duration {
        Duration::from_millis(self.config.round.leader_silence_ms.saturating_mul(2)).max(MIN_LINGER)
    }

    async fn on_timer(&mut self) -> anyhow::Result<()> {
        if let Some((at, _)) = &self.settings_conflict
            && *at <= TokioInstant::now()
            && let Some((_, error)) = self.settings_conflict.take()
        {
            return Err(error);
        }
        if self.fetch_due.is_some_and(|t| t <= TokioInstant::now()) {
            self.fetch_due = None;
            self.fetch_newer_now(true);
        }
        match &self.stage {
            Stage::Running(_) => self.drive(Drive::Timeout).await,
            Stage::Done { since } => {
                if since.elapsed() >= self.linger() {
                    self.exit = true;
                }
                Ok(())
            }
            Stage::Pause { .. } | Stage::Idle => Ok(()),
        }
    }

    /// Starts the pending round once its pause is over, this member's
    /// update is ready (or one collection window has passed), and enough
    /// members are reachable: all of them, or at least t after one more
    /// collection window of waiting for the rest.
    async fn try_start(&mut self) -> anyhow::Result<()> {
        if self.settings_conflict.is_some() {
            // Stopping: no round with members of other settings.
            return Ok(());
        }
        let Stage::Pause {
            round,
            retry,
            until,
        } = self.stage
        else {
            if let Stage::Done { .. } = self.stage {
                let all_have = self.others().all(|m| {
                    self.latest_of
                        .get(&m)
                        .is_some_and(|a| a.round >= self.model.round)
                });
                if all_have {
                    self.exit = true;
                }
            }
            return Ok(());
        };
        let now = TokioInstant::now();
        if now < until || round > self.gate_open {
            return Ok(());
        }
        let waited = now >= until + Duration::from_millis(self.config.round.collect_ms);
        // Still training for this round: start once the update is ready, so
        // that the round's deadlines are not spent on training, but no later
        // than one collection window after the pause.
        let training = self.source.is_none() && self.prepared.is_none();
        if training && !waited {
            return Ok(());
        }
        let reachable = self.subscribed.len() + 1;
        let everyone = reachable == self.protocol_roster.len();
        if everyone || (waited && reachable >= self.protocol_roster.threshold()) {
            self.start_round(round, retry).await?;
        }
        Ok(())
    }

    async fn start_round(&mut self, round: u64, retry: u32) -> anyhow::Result<()> {
        debug_assert_eq!(round, self.model.round + 1);
        let now = self.now();
        let max = self.config.round.max_attempts;
        let mut cfg = self.config.round_config(round, self.parameters + 1);
        // A retried round goes on numbering attempts where the last try
        // stopped: nothing of a failed attempt is reused, and the reveal
        // record of earlier attempts stays in force.
        let first_attempt = retry.saturating_mul(max);
        cfg.max_attempts = retry.saturating_add(1).saturating_mul(max);
        let machine = if self.plain {
            Machine::Plain(Box::new(PlainRound::new(
                &self.protocol_roster,
                Arc::clone(&self.identity),
                self.me,
                cfg,
                now,
            )))
        } else {
            self.settle_reveal().await?;
            let record = if self.reveals.round() == round {
                self.reveals.clone()
            } else {
                let store = Arc::clone(&self.store);
                let record = blocking(move || store.reveal_record(round)).await??;
                self.reveals = record.clone();
                record
            };
            Machine::secure(
                Arc::clone(&self.protocol_roster),
                Arc::clone(&self.identity),
                cfg,
                now,
                record,
                first_attempt,
            )?
        };
        info!(round, retry, base = %self.model_hash, "round started");
        self.stage = Stage::Running(Box::new(Runner {
            round,
            base: self.model_hash,
            machine,
            started: StdInstant::now(),
            started_unix_ms: now_unix_ms(),
            input: InputState::Preparing,
            attempt: None,
            retry,
            span: tracing::info_span!("round", round, attempt = first_attempt),
        }));
        self.dirty = true;
        self.drive(Drive::Nothing).await?;
        match self.prepared.take() {
            Some((r, result)) if r == round => self.take_update(result).await?,
            _ => self.prepare_update(),
        }
        for item in self.buffer.take_round(round) {
            if item.base == self.model_hash {
                self.drive(Drive::Message(item.from, item.envelope)).await?;
            }
        }
        Ok(())
    }

    /// Has the update source prepare the update for the round after the
    /// current model, unless it is busy or that update is ready.
    fn prepare_update(&mut self) {
        let round = self.model.round + 1;
        if matches!(self.stage, Stage::Done { .. })
            || self.prepared.as_ref().is_some_and(|(r, _)| *r == round)
        {
            return;
        }
        if let Stage::Running(r) = &self.stage
            && (r.round != round || r.input != InputState::Preparing)
        {
            return;
        }
        let Some(mut source) = self.source.take() else {
            // Busy with an older round; asked again when it returns.
            return;
        };
        let base = Arc::clone(&self.model);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || {
                let metrics = measure(&mut source, &base);
                let result = source.update(round, &base).and_then(|update| {
                    // Encoded here too: the round only adds masks to it.
                    let mut x = Zeroizing::new(Vec::new());
                    fixed::encode_update(update.n_examples, &update.delta, &mut x)
                        .context("the update cannot be encoded")?;
                    Ok(Input(x))
                });
                (source, result, metrics)
            });
            match job.await {
                Ok((source, result, metrics)) => {
                    let _ = tx
                        .send(Internal::UpdateReady {
                            round,
                            source,
                            result,
                            metrics,
                        })
                        .await;
                }
                // The source panicked and is gone: nothing to send rounds
                // from any more. Dropping `tx` unused leaves the round to
                // go on without this member.
                Err(e) => error!(error = %e, "the update source panicked"),
            }
        });
    }

    /// Has the update source measure the final model once, when the
    /// configured rounds are done.
    fn evaluate_final(&mut self) {
        if !matches!(self.stage, Stage::Done { .. }) || self.evaluated == Some(self.model.round) {
            return;
        }
        let Some(mut source) = self.source.take() else {
            // Busy; asked again when it returns.
            return;
        };
        self.evaluated = Some(self.model.round);
        let model = Arc::clone(&self.model);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || {
                let metrics = measure(&mut source, &model);
                (source, model.round, metrics)
            });
            match job.await {
                Ok((source, round, metrics)) => {
                    let _ = tx
                        .send(Internal::Evaluated {
                            round,
                            source,
                            metrics,
                        })
                        .await;
                }
                Err(e) => error!(error = %e, "the update source panicked"),
            }
        });
    }

    /// Stores metrics of the model of `round` and shows them in the status.
    async fn record_metrics(
        &mut self,
        round: u64,
        values: BTreeMap<String, f64>,
    ) -> anyhow::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let entry = MetricsEntry {
            round,
            recorded_unix_ms: now_unix_ms(),
            values,
        };
        info!(
            round,
            metrics = %entry
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v:.4}"))
                .collect::<Vec<_>>()
                .join(" "),
            "model measured on local validation data"
        );
        let store = Arc::clone(&self.store);
        let stored = entry.clone();
        blocking(move || store.record_metrics(&stored))
            .await?
            .context("cannot store metrics")?;
        self.metrics.retain(|m| m.round != round);
        self.metrics.push_front(entry);
        self.metrics.truncate(RECENT_METRICS);
        self.history_dirty = true;
        self.dirty = true;
        Ok(())
    }

    /// Hands the running round this member's update, or notes that there
    /// is none.
    async fn take_update(&mut self, result: anyhow::Result<Input>) -> anyhow::Result<()> {
        match result {
            Ok(input) => self.drive(Drive::Input(input)).await,
            Err(e) => {
                error!(
                    round = self.model.round + 1,
                    error = format!("{e:#}"),
                    "cannot prepare this member's update; the round goes on without it"
                );
                if let Stage::Running(r) = &mut self.stage {
                    r.input = InputState::Failed;
                }
                self.dirty = true;
                Ok(())
            }
        }
    }

    // ----- driving a round -----

    /// Feeds the current round and carries out what it asks.
    async fn drive(&mut self, input: Drive) -> anyhow::Result<()> {
        let mut runner = match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Running(r) => r,
            other => {
                self.stage = other;
                return Ok(());
            }
        };
        let now = self.now();
        match input {
            Drive::Nothing => {}
            Drive::Timeout => runner.machine.handle_timeout(now),
            Drive::Message(from, envelope) => {
                trace!(from = %self.name_of(from), bytes = envelope.len(), "round message in");
                runner.machine.handle_envelope(now, from, envelope)
            }
            Drive::Input(mut input) => {
                // Moved, not copied: the round wipes it when done.
                match runner
                    .machine
                    .submit_input(now, std::mem::take(&mut *input.0))
                {
                    Ok(()) => runner.input = InputState::Submitted,
                    Err(e) => {
                        let _g = runner.span.enter();
                        error!(error = %e, "the update was refused; the round goes on without it");
                        runner.input = InputState::Failed;
                    }
                }
            }
        }
        self.dirty = true;
        match self.pump(&mut runner).await? {
            None => self.stage = Stage::Running(runner),
            Some(End::Finished(outcome, log)) => self.finish_round(runner, outcome, log).await?,
            Some(End::Failed) => {
                let _g = runner.span.enter();
                warn!(
                    retry = runner.retry,
                    "every attempt of the round failed; trying again after the pause"
                );
                drop(_g);
                self.stage = Stage::Pause {
                    round: runner.round,
                    retry: runner.retry + 1,
                    until: TokioInstant::now() + Duration::from_millis(self.config.round.pause_ms),
                };
                self.prepare_update();
            }
        }
        Ok(())
    }

    /// Waits until the reveal entry on its way to the store is durable, and
    /// adds it to the record of its round. Called by [`Self::send`], the
    /// only way a round message leaves, and before the record is read.
    async fn settle_reveal(&mut self) -> anyhow::Result<()> {
        let Some(Persisting { entry, task }) = self.persisting.take() else {
            return Ok(());
        };
        let receipt = task.await.context("a blocking task failed")?.context(
            "cannot record a reveal durably; stopping rather than risk revealing both shares of a member",
        )?;
        anyhow::ensure!(
            receipt.covers(&entry),
            "the store's receipt does not cover the reveal of round {} attempt {}",
            entry.round,
            entry.attempt
        );
        if self.reveals.round() == entry.round {
            self.reveals.add(&entry).map_err(|c| {
                anyhow::anyhow!(
                    "the reveal of round {} attempt {} conflicts with this member's record (member {})",
                    entry.round,
                    c.attempt,
                    c.member.0
                )
            })?;
        }
        Ok(())
    }

    /// Feeds the last finished round (it answers members still in it).
    async fn drive_previous(&mut self, from: MemberId, envelope: Vec<u8>) -> anyhow::Result<()> {
        let Some(mut prev) = self.previous.take() else {
            return Ok(());
        };
        prev.machine.handle_envelope(self.now(), from, envelope);
        let end = self.pump(&mut prev).await?;
        debug_assert!(end.is_none());
        self.previous = Some(prev);
        Ok(())
    }

    /// Carries out a round's outputs in order. A reveal is durable before
    /// any message after it leaves (see [`Self::settle_reveal`]).
    async fn pump(&mut self, runner: &mut Runner) -> anyhow::Result<Option<End>> {
        let mut end = None;
        while let Some(output) = runner.machine.poll_output() {
            match output {
                Output::Send { to, message } => {
                    self.send(runner.round, runner.base, Some(to), message)
                        .await?;
                }
                Output::Broadcast { message } => {
                    self.send(runner.round, runner.base, None, message).await?;
                }
                Output::PersistReveal(entry) => {
                    // Written while the driver goes on feeding the round
                    // (a leader gathers the other members' signatures
                    // meanwhile); nothing leaves this member before it is
                    // durable, as every send settles it first.
                    self.settle_reveal().await?;
                    let store = Arc::clone(&self.store);
                    let e = entry.clone();
                    let task = tokio::task::spawn_blocking(move || store.record_reveal(&e));
                    self.persisting = Some(Persisting { entry, task });
                }
                Output::Event(event) => {
                    if let Some(e) = self.on_event(runner, event).await? {
                        end = Some(e);
                    }
                }
            }
        }
        Ok(end)
    }

    async fn on_event(&mut self, runner: &mut Runner, event: Event) -> anyhow::Result<Option<End>> {
        runner.note(&event);
        let span = runner.span.clone();
        let _g = span.enter();
        match event {
            Event::AttemptStarted { attempt, leader } => {
                info!(attempt, leader = %self.name_of(leader), "attempt started");
            }
            Event::PhaseChanged { phase, .. } => debug!(phase = phase_name(phase), "phase"),
            Event::Excluded { attempt, phase } => {
                info!(
                    attempt,
                    phase = phase_name(phase),
                    "left out of the attempt; waiting for its outcome"
                );
            }
            Event::Rejected { from, reason } => {
                debug!(from = %self.name_of(from), %reason, "message dropped");
            }
            Event::RevealWithheld {
                attempt,
                member,
                kind,
            } => warn!(
                attempt,
                member = %self.name_of(member),
                ?kind,
                "leader asked for a share the reveal record forbids; revealed nothing"
            ),
            Event::AttemptFailed { attempt, reason } => {
                warn!(attempt, %reason, "attempt failed");
                let log = runner
                    .attempt
                    .take()
                    .filter(|l| l.attempt == attempt)
                    .unwrap_or_else(|| {
                        AttemptLog::new(attempt, self.protocol_roster.leader(runner.round, attempt))
                    });
                let entry = self.journal_entry(
                    runner.round,
                    &log,
                    AttemptOutcome::Failed {
                        reason: reason.to_string(),
                    },
                    &[],
                    None,
                );
                drop(_g);
                self.journal(entry).await?;
            }
            Event::Finished(outcome) => {
                info!(
                    attempt = outcome.attempt,
                    participants = outcome.participants.len(),
                    "round finished"
                );
                let log = runner
                    .attempt
                    .take()
                    .filter(|l| l.attempt == outcome.attempt);
                return Ok(Some(End::Finished(outcome, log)));
            }
            Event::RoundFailed { attempts } => {
                warn!(attempts, "round failed");
                return Ok(Some(End::Failed));
            }
            Event::EncodeFailed { kind, error } => {
                error!(?kind, %error, "a message could not be encoded and was not sent");
            }
        }
        Ok(None)
    }

    /// Puts a round message on the network: on this member's message
    /// stream to each recipient (see [`crate::net::NetworkClient::send_message`]),
    /// one frame each, the envelope's bytes shared between recipients. A
    /// message that cannot be queued is logged and dropped; the round
    /// copes with lost messages as with a silent member.
    ///
    /// Waits first for a reveal entry still being written: this is the only
    /// way a round message leaves, so none leaves before the record is
    /// durable.
    async fn send(
        &mut self,
        round: u64,
        base: ModelHash,
        to: Option<MemberId>,
        message: Outgoing,
    ) -> anyhow::Result<()> {
        self.settle_reveal().await?;
        trace!(kind = ?message.kind, to = ?to.map(|t| self.name_of(t)), bytes = message.bytes.len(), "round message out");
        let kind = message.kind;
        // The envelope as it is (shared with the round, and between the
        // targets of an outcome) and the frame's trailer after it: no copy
        // of megabytes per message.
        let envelope = bytes::Bytes::from_owner(message.bytes);
        let frame = RoundFrame {
            round,
            base,
            to,
            envelope: &envelope,
        };
        let trailer = bytes::Bytes::copy_from_slice(&frame.trailer());
        let frame = BulkMessage::from_parts([envelope.clone(), trailer]);
        let targets: Vec<MemberId> = match to {
            Some(t) => vec![t],
            None => self.others().collect(),
        };
        for t in targets {
            let peer = self.roster.peer_ids[t.index()];
            if let Err(e) = self.net.send_message(peer, frame.clone()) {
                debug!(member = %self.name_of(t), ?kind, error = %e, "round message not sent");
            }
        }
        Ok(())
    }

    /// The round produced its sum: make the model, store it, journal the
    /// attempt, announce the model, and pause before the next round.
    async fn finish_round(
        &mut self,
        runner: Box<Runner>,
        outcome: Outcome,
        log: Option<AttemptLog>,
    ) -> anyhow::Result<()> {
        let finished = StdInstant::now();
        let round = runner.round;
        let log = log.unwrap_or_else(|| {
            AttemptLog::new(
                outcome.attempt,
                self.protocol_roster.leader(round, outcome.attempt),
            )
        });
        let next = match self.model.apply(round, &outcome.sum) {
            Ok(m) => m,
            Err(e) => {
                let _g = runner.span.enter();
                error!(error = %e, "the round's outcome does not make a model; trying the round again");
                drop(_g);
                let entry = self.journal_entry(
                    round,
                    &log,
                    AttemptOutcome::Failed {
                        reason: e.to_string(),
                    },
                    &outcome.participants,
                    None,
                );
                self.journal(entry).await?;
                self.stage = Stage::Pause {
                    round,
                    retry: runner.retry + 1,
                    until: TokioInstant::now() + Duration::from_millis(self.config.round.pause_ms),
                };
                self.prepare_update();
                return Ok(());
            }
        };
        let next = Arc::new(next);
        let created = now_unix_ms();
        let hash = self
            .commit(Committed::Model(Arc::clone(&next)), round, created)
            .await?;
        let entry = self.journal_entry(
            round,
            &log,
            AttemptOutcome::Completed,
            &outcome.participants,
            Some(hash),
        );
        self.journal(entry).await?;
        self.adopt(next, hash, created).await?;
        let committed = StdInstant::now();
        {
            let _g = runner.span.enter();
            info!(model = %hash, "new global model");
        }
        if let Some(reports) = &self.reports {
            let report = RoundReport {
                me: self.me,
                round,
                attempt: outcome.attempt,
                leader: log.leader,
                started: runner.started,
                attempt_started: log.started,
                finished,
                committed,
                phases: log.phases.clone(),
                participants: outcome.participants.clone(),
                model: hash,
                params: Arc::clone(&self.model),
            };
            let _ = reports.try_send(report);
        }
        self.previous = Some(runner);
        self.after_adopt();
        Ok(())
    }

    /// Where to go once the current model changed.
    fn after_adopt(&mut self) {
        self.prepared = None;
        let target = self.config.round.rounds;
        self.stage = if target > 0 && self.model.round >= target {
            Stage::Done {
                since: TokioInstant::now(),
            }
        } else {
            Stage::Pause {
                round: self.model.round + 1,
                retry: 0,
                until: TokioInstant::now() + Duration::from_millis(self.config.round.pause_ms),
            }
        };
        self.dirty = true;
        if let Stage::Pause { .. } = self.stage {
            self.prepare_update();
        }
        self.evaluate_final();
    }

    /// Stores a model and makes it current, durably.
    async fn commit(
        &mut self,
        model: Committed,
        round: u64,
        created: u64,
    ) -> anyhow::Result<ModelHash> {
        let store = Arc::clone(&self.store);
        let meta = ModelMeta {
            round,
            created_unix_ms: created,
            parameter_count: self.parameters as u64,
            size_bytes: 0,
        };
        let keep = self.config.keep_models;
        let (hash, pruned, usage) = blocking(move || {
            let hash = match &model {
                Committed::Blob(blob) => store.commit_model(blob, meta)?,
                Committed::Model(m) => store.commit_model_parts(&[&m.header(), &m.body()], meta)?,
            };
            // The model is committed whatever pruning does.
            let pruned = keep.map(|k| store.prune_models(k));
            Ok::<_, crate::store::StoreError>((hash, pruned, store.usage()))
        })
        .await?
        .with_context(|| format!("cannot store the model of round {round}"))?;
        match pruned {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => debug!(deleted = n, "old models pruned"),
            Some(Err(e)) => warn!(error = %e, "cannot prune old models"),
        }
        match usage {
            Ok(u) => {
                self.stored = u;
                self.dirty = true;
            }
            Err(e) => debug!(error = %e, "cannot measure the store"),
        }
        Ok(hash)
    }

    /// Makes `model` current in memory and tells the others.
    async fn adopt(
        &mut self,
        model: Arc<GlobalModel>,
        hash: ModelHash,
        created: u64,
    ) -> anyhow::Result<()> {
        self.announcement = Announcement::sign(
            &self.identity,
            &self.protocol_roster.digest(),
            self.me,
            model.round,
            hash,
            self.parameters as u64,
            created,
        );
        self.latest_of.insert(self.me, self.announcement);
        self.fetch_due = None;
        self.settle_reveal().await?;
        if self.reveals.round() != model.round + 1 {
            self.reveals = RevealRecord::new(model.round + 1);
        }
        self.model = model;
        self.model_hash = hash;
        self.model_created_unix_ms = created;
        self.dirty = true;
        let bytes = wire::encode_gossip(&Gossip::Announce(self.announcement));
        if let Err(e) = self.net.publish(bytes).await {
            debug!(error = %e, "model announcement not published");
        }
        Ok(())
    }

    fn journal_entry(
        &self,
        round: u64,
        log: &AttemptLog,
        outcome: AttemptOutcome,
        participants: &[MemberId],
        model: Option<ModelHash>,
    ) -> JournalEntry {
        let end = StdInstant::now();
        let completed = matches!(outcome, AttemptOutcome::Completed);
        let in_sum: BTreeSet<MemberId> = participants.iter().copied().collect();
        JournalEntry {
            round,
            attempt: log.attempt,
            leader: self.name_of(log.leader),
            outcome,
            participants: participants.iter().map(|m| self.name_of(*m)).collect(),
            dropouts: if completed && !in_sum.is_empty() {
                self.protocol_roster
                    .ids()
                    .filter(|m| !in_sum.contains(m))
                    .map(|m| self.name_of(m))
                    .collect()
            } else {
                Vec::new()
            },
            started_unix_ms: log.started_unix_ms,
            duration_ms: end.saturating_duration_since(log.started).as_millis() as u64,
            phases: log
                .phase_ms(end)
                .into_iter()
                .map(|(p, ms)| PhaseTiming {
                    phase: phase_name(p).to_owned(),
                    ms,
                })
                .collect(),
            model,
        }
    }

    async fn journal(&mut self, entry: JournalEntry) -> anyhow::Result<()> {
        let store = Arc::clone(&self.store);
        let e = entry.clone();
        blocking(move || store.record_attempt(&e))
            .await?
            .context("cannot write the round journal")?;
        self.recent.push_front(entry);
        self.recent.truncate(RECENT_ATTEMPTS);
        self.history_dirty = true;
        self.dirty = true;
        Ok(())
    }

    // ----- network events -----

    async fn on_net(&mut self, event: NetEvent) -> anyhow::Result<()> {
        match event {
            NetEvent::Listening { .. } => {}
            NetEvent::PeerConnected { peer } => {
                if let Some(&m) = self.roster.by_peer.get(&peer) {
                    self.connected.insert(m);
                    self.dirty = true;
                    // A member that was away, or this one after a restart:
                    // compare models at once.
                    self.asked_latest.remove(&m);
                    self.ask_latest(m);
                }
            }
            NetEvent::PeerDisconnected { peer } => {
                if let Some(m) = self.roster.by_peer.get(&peer) {
                    self.connected.remove(m);
                    self.subscribed.remove(m);
                    self.dirty = true;
                }
            }
            NetEvent::PeerSubscribed { peer } => {
                if let Some(&m) = self.roster.by_peer.get(&peer) {
                    self.subscribed.insert(m);
                    self.dirty = true;
                }
            }
            NetEvent::GossipMessage { from, data, .. } => {
                let Some(&member) = self.roster.by_peer.get(&from) else {
                    return Ok(());
                };
                match wire::decode_gossip(&data) {
                    Ok(Gossip::Announce(a)) => self.on_announcement(member, a),
                    Err(e) => {
                        warn!(from = %self.name_of(member), error = %e, "undecodable gossip message dropped");
                    }
                }
            }
            NetEvent::Message { from, payload } => {
                let Some(&member) = self.roster.by_peer.get(&from) else {
                    return Ok(());
                };
                match wire::decode_message(&payload) {
                    Ok(frame) => {
                        if frame.to.is_none_or(|t| t == self.me) {
                            let meta = FrameMeta::of(&frame);
                            self.on_framed(member, meta, payload).await?;
                        }
                    }
                    Err(e) => {
                        warn!(from = %self.name_of(member), error = %e, "undecodable message dropped");
                    }
                }
            }
            NetEvent::Request {
                from,
                payload,
                reply,
            } => {
                let Some(&member) = self.roster.by_peer.get(&from) else {
                    return Ok(());
                };
                self.on_request(member, payload, reply).await?;
            }
        }
        Ok(())
    }

    async fn on_request(
        &mut self,
        from: MemberId,
        payload: Vec<u8>,
        reply: ResponseHandle,
    ) -> anyhow::Result<()> {
        let answer = |reply: ResponseHandle, r: Response<'_>| {
            if let Err(e) = reply.respond(wire::encode_response(&r)) {
                debug!(error = %e, "response not sent");
            }
        };
        match wire::decode_request(&payload) {
            Ok(Request::Latest(theirs)) => {
                if theirs == self.settings {
                    answer(reply, Response::Latest(self.announcement));
                } else {
                    warn!(
                        member = %self.name_of(from),
                        theirs,
                        ours = %self.settings,
                        "member uses other settings: refused"
                    );
                    let reason = format!("{}{}", wire::SETTINGS_DIFFER, self.settings);
                    answer(reply, Response::Refused(&reason));
                    // Learning of the conflict from a question is learning
                    // it all the same: stop as an asker that was refused
                    // would, whichever of the two asked first.
                    if self.settings_conflict.is_none() {
                        let at = TokioInstant::now() + SETTINGS_REFUSAL_GRACE;
                        self.settings_conflict = Some((at, self.settings_error(from, theirs)));
                    }
                }
            }
            Ok(Request::Model(hash)) => {
                let store = Arc::clone(&self.store);
                let turn = self.model_serves.turn(from);
                tokio::spawn(async move {
                    // Held until the answer is written to the asker's
                    // stream (or cannot be any more).
                    let Some(turn) = turn.await else {
                        return;
                    };
                    // Its turn may come after the asker gave up.
                    if reply.is_gone() {
                        return;
                    }
                    let blob = tokio::task::spawn_blocking(move || store.model_blob(hash)).await;
                    match blob {
                        Ok(Ok(Some(blob))) => {
                            if let Err(e) = reply.respond_holding(wire::model_response(blob), turn)
                            {
                                debug!(error = %e, "model not sent");
                            }
                        }
                        Ok(Ok(None)) => answer(reply, Response::NotFound),
                        Ok(Err(e)) => {
                            error!(model = %hash, error = %e, "cannot read a stored model");
                            answer(reply, Response::Refused("cannot read that model"));
                        }
                        Err(e) => error!(error = %e, "model read task failed"),
                    }
                });
            }
            Err(e) => {
                warn!(from = %self.name_of(from), error = %e, "undecodable request refused");
                answer(reply, Response::Refused(&e.to_string()));
            }
        }
        Ok(())
    }

    /// Routes a round frame as it came off the network (a request or an
    /// answer, whole): the envelope is the bytes before the frame's
    /// trailer, so the buffer is kept instead of copied.
    async fn on_framed(
        &mut self,
        from: MemberId,
        frame: FrameMeta,
        mut bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        bytes.truncate(bytes.len() - wire::ROUND_TRAILER_BYTES);
        self.on_frame(from, frame, bytes).await
    }

    /// Routes a round message by its round and base model.
    async fn on_frame(
        &mut self,
        from: MemberId,
        frame: FrameMeta,
        envelope: Vec<u8>,
    ) -> anyhow::Result<()> {
        let round = frame.round;
        if let Stage::Running(runner) = &self.stage
            && runner.round == round
        {
            if frame.base != runner.base {
                self.base_mismatch(from, &frame);
                return Ok(());
            }
            return self.drive(Drive::Message(from, envelope)).await;
        }
        if let Some(prev) = &self.previous
            && prev.round == round
        {
            if frame.base == prev.base {
                self.drive_previous(from, envelope).await?;
            }
            return Ok(());
        }
        if round > self.model.round {
            if round > self.model.round + 1 {
                // The sender is past the round after ours: we are behind.
                self.ask_latest(from);
            }
            self.buffer.push(Buffered {
                from,
                round,
                base: frame.base,
                envelope,
            });
        }
        Ok(())
    }

    fn base_mismatch(&mut self, from: MemberId, frame: &FrameMeta) {
        self.base_mismatches += 1;
        if self.base_mismatches.is_power_of_two() {
            warn!(
                from = %self.name_of(from),
                round = frame.round,
                their_base = %frame.base,
                our_base = %self.model_hash,
                dropped = self.base_mismatches,
                "a member runs this round from another model; its messages are dropped"
            );
        }
        self.ask_latest(from);
    }

    fn on_announcement(&mut self, from: MemberId, a: Announcement) {
        let Some(info) = self.protocol_roster.member(a.author) else {
            return;
        };
        if a.author != from || !a.verify(&self.protocol_roster.digest(), &info.identity) {
            warn!(from = %self.name_of(from), "model announcement with a bad author or signature dropped");
            return;
        }
        if a.parameters != self.parameters as u64 {
            warn!(
                from = %self.name_of(from),
                parameters = a.parameters,
                ours = self.parameters,
                "a member announces a model of another size; ignored"
            );
            return;
        }
        let newer = self
            .latest_of
            .get(&from)
            .is_none_or(|old| a.round > old.round);
        if newer {
            debug!(from = %self.name_of(from), round = a.round, model = %a.hash, "member holds a model");
            self.failed_fetches.retain(|(m, _)| *m != from);
            self.latest_of.insert(from, a);
            self.dirty = true;
        }
        self.fetch_newer();
    }

    /// Asks a member for its latest model, at most once a second.
    fn ask_latest(&mut self, member: MemberId) {
        let now = StdInstant::now();
        if self
            .asked_latest
            .get(&member)
            .is_some_and(|t| now.duration_since(*t) < LATEST_INTERVAL)
        {
            return;
        }
        self.asked_latest.insert(member, now);
        let peer = self.roster.peer_ids[member.index()];
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        let request = wire::encode_request(&Request::Latest(&self.settings));
        tokio::spawn(async move {
            let result = match net.request(peer, request).await {
                Ok(resp) => match wire::decode_response(&resp) {
                    Ok(Response::Latest(a)) => Ok(a),
                    Ok(Response::Refused(r)) => match r.strip_prefix(wire::SETTINGS_DIFFER) {
                        Some(theirs) => Err(LatestError::Settings(theirs.to_owned())),
                        None => Err(LatestError::Other(format!("refused: {r}"))),
                    },
                    Ok(other) => Err(LatestError::Other(format!("unexpected answer {other:?}"))),
                    Err(e) => Err(LatestError::Other(e.to_string())),
                },
                Err(e) => Err(LatestError::Other(e.to_string())),
            };
            let _ = tx
                .send(Internal::Latest {
                    from: member,
                    result,
                })
                .await;
        });
    }

    /// Why this member stops: `from` uses the settings line `theirs`.
    fn settings_error(&self, from: MemberId, theirs: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "member {} uses other settings than this member, and every member must use the same \
             (the primiad release's round protocol, the [training] section of the config, except \
             mode, and the data's classes):\n  \
             {}: {theirs}\n  {} (this member): {}",
            self.name_of(from),
            self.name_of(from),
            self.name,
            self.settings
        )
    }

    /// Starts fetching the newest model a member announced, if it is newer
    /// than ours and no fetch runs.
    fn fetch_newer(&mut self) {
        self.fetch_newer_now(false);
    }

    /// [`Self::fetch_newer`]; `now` skips the wait for this member's own
    /// round to finish.
    fn fetch_newer_now(&mut self, now: bool) {
        if self.fetching.is_some() {
            return;
        }
        let best = self
            .latest_of
            .values()
            .filter(|a| a.author != self.me && a.round > self.model.round)
            .filter(|a| !self.failed_fetches.contains(&(a.author, a.hash)))
            .max_by_key(|a| (a.round, self.connected.contains(&a.author)))
            .copied();
        let Some(a) = best else {
            self.fetch_due = None;
            return;
        };
        // A model of the very round this member is running: its own round
        // most likely finishes in a moment with the same model (the others
        // just got the outcome first). Fetch only if it has not done so
        // within a leader's silence deadline.
        if !now && matches!(&self.stage, Stage::Running(r) if r.round == a.round) {
            if self.fetch_due.is_none() {
                let wait = Duration::from_millis(self.config.round.leader_silence_ms);
                self.fetch_due = Some(TokioInstant::now() + wait);
            }
            return;
        }
        self.fetch_due = None;
        info!(
            from = %self.name_of(a.author),
            round = a.round,
            model = %a.hash,
            our_round = self.model.round,
            "fetching a newer model"
        );
        self.fetching = Some(a.hash);
        let peer = self.roster.peer_ids[a.author.index()];
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let request = wire::encode_request(&Request::Model(a.hash));
            let result = match net.request(peer, request).await {
                Ok(mut resp) => match wire::decode_response(&resp) {
                    Ok(Response::Model(_)) => {
                        // The blob is the response before its trailer.
                        resp.truncate(resp.len() - wire::MODEL_TRAILER_BYTES);
                        Ok(resp)
                    }
                    Ok(other) => Err(format!("answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            let _ = tx
                .send(Internal::Fetched {
                    announcement: a,
                    result,
                })
                .await;
        });
    }

    // ----- work from other tasks -----

    async fn on_internal(&mut self, msg: Internal) -> anyhow::Result<()> {
        match msg {
            Internal::UpdateReady {
                round,
                source,
                result,
                metrics,
            } => {
                self.source = Some(source);
                self.record_metrics(round - 1, metrics).await?;
                let store = Arc::clone(&self.store);
                self.privacy = blocking(move || store.privacy_spent()).await??;
                self.dirty = true;
                self.evaluate_final();
                if round != self.model.round + 1 {
                    // Made from a model this member has since left behind.
                    self.prepare_update();
                    return Ok(());
                }
                let waiting = matches!(&self.stage, Stage::Running(r) if r.round == round && r.input == InputState::Preparing);
                if waiting {
                    self.take_update(result).await?;
                } else {
                    self.prepared = Some((round, result));
                }
            }
            Internal::Evaluated {
                round,
                source,
                metrics,
            } => {
                self.source = Some(source);
                self.record_metrics(round, metrics).await?;
            }
            Internal::Latest { from, result } => match result {
                Ok(a) => self.on_announcement(from, a),
                Err(LatestError::Settings(theirs)) => {
                    return Err(self.settings_error(from, &theirs));
                }
                Err(LatestError::Other(e)) => {
                    debug!(member = %self.name_of(from), error = %e, "latest model not learned")
                }
            },
            Internal::Fetched {
                announcement,
                result,
            } => {
                self.fetching = None;
                if let Err(reason) = self.on_fetched(announcement, result).await? {
                    warn!(
                        from = %self.name_of(announcement.author),
                        model = %announcement.hash,
                        %reason,
                        "model fetch failed"
                    );
                    self.failed_fetches
                        .insert((announcement.author, announcement.hash));
                }
                self.fetch_newer();
            }
        }
        Ok(())
    }

    /// Checks a fetched blob and adopts it. `Ok(Err(reason))` is a bad or
    /// failed fetch; `Err` is a local failure (the store).
    async fn on_fetched(
        &mut self,
        a: Announcement,
        result: Result<Vec<u8>, String>,
    ) -> anyhow::Result<Result<(), String>> {
        let blob = match result {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if ModelHash::of(&blob) != a.hash {
            return Ok(Err("the blob does not match the announced hash".into()));
        }
        let model = match GlobalModel::decode(&blob, self.parameters) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if model.round != a.round {
            return Ok(Err(format!(
                "the blob is of round {}, announced as round {}",
                model.round, a.round
            )));
        }
        if model.round <= self.model.round {
            return Ok(Ok(()));
        }
        self.commit(Committed::Blob(blob), model.round, a.created_unix_ms)
            .await?;
        info!(
            round = model.round,
            model = %a.hash,
            from = %self.name_of(a.author),
            "caught up to a newer model"
        );
        // The round this member was in is over for the others: journal it
        // as left behind and drop it.
        let stage = std::mem::replace(&mut self.stage, Stage::Idle);
        if let Stage::Running(mut runner) = stage
            && let Some(log) = runner.attempt.take()
        {
            let entry = self.journal_entry(
                runner.round,
                &log,
                AttemptOutcome::Failed {
                    reason: format!(
                        "left behind: caught up to the model of round {} from {}",
                        model.round,
                        self.name_of(a.author)
                    ),
                },
                &[],
                None,
            );
            self.journal(entry).await?;
        }
        self.previous = None;
        let round = model.round;
        self.adopt(Arc::new(model), a.hash, a.created_unix_ms)
            .await?;
        self.buffer.take_round(round);
        self.after_adopt();
        // The others are likely in the next round already: no pause.
        if let Stage::Pause { until, .. } = &mut self.stage {
            *until = TokioInstant::now();
        }
        Ok(Ok(()))
    }

    // ----- status -----

    /// Brings the status document up to date, in place: what changes from
    /// event to event is rewritten, the attempt and metrics history (ten
    /// journal entries each, cloned and dropped again on every event when
    /// the whole document was rebuilt) only when it changed.
    fn publish_status(&mut self) {
        self.dirty = false;
        let history = std::mem::take(&mut self.history_dirty);
        let names = |ids: &mut dyn Iterator<Item = MemberId>| {
            let mut v: Vec<String> = ids.map(|m| self.name_of(m)).collect();
            v.sort();
            v
        };
        let connected = names(&mut self.connected.iter().copied());
        let missing = names(&mut self.others().filter(|m| !self.connected.contains(m)));
        let round = match &self.stage {
            Stage::Running(r) => Some(RoundStatus {
                round: r.round,
                attempt: r.attempt.as_ref().map_or(0, |a| a.attempt),
                phase: if r.input == InputState::Preparing && !r.machine.is_done() {
                    "training".to_owned()
                } else {
                    phase_name(r.machine.phase()).to_owned()
                },
                leader: r.leader().map_or_else(String::new, |l| self.name_of(l)),
                started_unix_ms: r.started_unix_ms,
            }),
            _ => None,
        };
        let latest_model = ModelStatus {
            hash: self.model_hash,
            round: self.model.round,
            created_unix_ms: self.model_created_unix_ms,
            parameter_count: self.parameters as u64,
        };
        self.status.send_modify(|s| {
            s.connected = connected;
            s.missing = missing;
            s.round = round;
            s.latest_model = Some(latest_model);
            if history {
                s.recent_attempts = self.recent.iter().cloned().collect();
                s.metrics = self.metrics.iter().cloned().collect();
            }
            s.privacy_spent = self.privacy;
            s.stored = self.stored.clone();
            s.updated_unix_ms = now_unix_ms();
        });
    }
}

/// A model to store: a blob as it came from a member, or one this member
/// made (written from its parameters as they are).
enum Committed {
    Blob(Vec<u8>),
    Model(Arc<GlobalModel>),
}

/// What to feed the current round.
enum Drive {
    Nothing,
    Timeout,
    Message(MemberId, Vec<u8>),
    Input(Input),
}

/// This member's update in fixed point (x_u), as the round takes it.
/// Secret: wiped on drop.
struct Input(Zeroizing<Vec<primia_crypto::Ring>>);

/// A round frame's fields besides its envelope.
#[derive(Clone, Copy, Debug)]
struct FrameMeta {
    round: u64,
    base: ModelHash,
}

impl FrameMeta {
    fn of(frame: &RoundFrame<'_>) -> Self {
        Self {
            round: frame.round,
            base: frame.base,
        }
    }
}

/// The gate's new value; `None` once its sender is gone. Never resolves
/// without a gate.
async fn gate_changed(gate: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    match gate {
        Some(g) => match g.changed().await {
            Ok(()) => Some(*g.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The source's metrics of `model`; a failure is logged, not fatal.
fn measure(source: &mut Box<dyn UpdateSource>, model: &GlobalModel) -> BTreeMap<String, f64> {
    source.evaluate(model).unwrap_or_else(|e| {
        warn!(
            round = model.round,
            error = format!("{e:#}"),
            "cannot measure the model"
        );
        BTreeMap::new()
    })
}

/// The current model from the store, or the source's initial model stored
/// as round 0.
async fn load_or_create_model(
    store: Arc<Store>,
    mut source: Box<dyn UpdateSource>,
    parameters: usize,
) -> anyhow::Result<(Box<dyn UpdateSource>, GlobalModel, ModelHash, u64)> {
    blocking(move || {
        if let Some((hash, meta)) = store.current_model_meta()? {
            let blob = store
                .model_blob(hash)?
                .with_context(|| format!("the current model {hash} is not stored"))?;
            let model = GlobalModel::decode(&blob, parameters)
                .with_context(|| format!("the stored current model {hash}"))?;
            return Ok((source, model, hash, meta.created_unix_ms));
        }
        let params = source
            .initial_model()
            .context("cannot make the initial model")?;
        anyhow::ensure!(
            params.len() == parameters,
            "the initial model has {} parameters, the update source says {parameters}",
            params.len()
        );
        let model = GlobalModel { round: 0, params };
        let (blob, hash) = model.encode_hashed();
        let created = now_unix_ms();
        store.commit_model(
            &blob,
            ModelMeta {
                round: 0,
                created_unix_ms: created,
                parameter_count: parameters as u64,
                size_bytes: 0,
            },
        )?;
        Ok((source, model, hash, created))
    })
    .await?
}
