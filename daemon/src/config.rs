//! The daemon's TOML configuration and the consortium roster file.
//!
//! Both are read once at start. Every error names the file and the field
//! (``config /etc/primia/node.toml: field `network.listen[1]`: invalid
//! multiaddr ...``), and relative paths in a config are resolved against the
//! directory of the config file, so a config means the same thing whatever
//! directory the daemon is started from.
//!
//! [`Config::example`] is a commented template with every field at its
//! default, for documentation and scripts; a test keeps it parsing to the
//! same values as the defaults in the code.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use primia_protocol::roster::{ConsortiumId, MAX_MEMBERS, MemberInfo, Roster, Threshold};
use serde::{Deserialize, Serialize};

use crate::identity;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest roster file read: [`MAX_MEMBERS`] entries of well under 2 KiB.
const MAX_ROSTER_BYTES: u64 = 4 << 20;

/// Longest test vector: the protocol's limit less the appended count.
pub const MAX_TEST_VECTOR_LEN: usize = primia_protocol::wire::MAX_VECTOR_LEN - 1;

/// Most listen or bootstrap addresses.
pub const MAX_LISTEN_ADDRESSES: usize = 16;

/// Most bootstrap addresses.
pub const MAX_BOOTSTRAP_ADDRESSES: usize = 64;

/// What went wrong reading a config or roster file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{kind} {}: cannot read: {source}", path.display())]
    Read {
        /// "config" or "roster".
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than any sane one.
    #[error("{kind} {}: {size} bytes, at most {max} are read", path.display())]
    TooLarge {
        /// "config" or "roster".
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Not TOML, or not the expected shape (unknown or missing field, wrong
    /// type).
    #[error("{kind} {}: line {line}: {message}", path.display())]
    Syntax {
        /// "config" or "roster".
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// One field has a value that is not allowed.
    #[error("{kind} {}: field `{field}`: {reason}", path.display())]
    Field {
        /// "config" or "roster".
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `network.listen[1]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The roster as a whole is refused (too few members, repeated
    /// identities or names, impossible threshold).
    #[error("roster {}: {reason}", path.display())]
    Roster {
        /// The file.
        path: PathBuf,
        /// The protocol's reason.
        reason: String,
    },
}

/// A validated daemon configuration with all paths resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file this was read from (absolute when read with [`Config::load`]).
    pub path: PathBuf,
    /// The consortium roster file.
    pub roster: PathBuf,
    /// This member's identity key file (see [`crate::identity`]).
    pub key: PathBuf,
    /// The hospital's images: a folder with one subfolder of DICOM, PNG or
    /// JPEG files per class, or a MedMNIST-layout `.npz` file. Needed when
    /// `training.mode` is `train`.
    pub data_dir: Option<PathBuf>,
    /// Where the daemon keeps its state: the database `db/`, the models'
    /// files `models/` (one without the other is of no use: back them up
    /// together) and its control socket.
    pub storage_dir: PathBuf,
    /// How many models the store keeps, newest first and always the
    /// current one (`keep_models`, default [`DEFAULT_KEEP_MODELS`]; 0 in the
    /// file keeps every model, `None` here).
    pub keep_models: Option<NonZeroUsize>,
    /// Addresses and discovery.
    pub network: NetworkConfig,
    /// Round timing.
    pub round: RoundTiming,
    /// What each member contributes to a round.
    pub training: TrainingConfig,
    /// Differentially private training.
    pub privacy: PrivacyConfig,
}

/// `[network]`: where to listen and how to find the others.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Addresses to listen on. Default `["/ip4/0.0.0.0/tcp/7470"]`.
    pub listen: Vec<Multiaddr>,
    /// Extra addresses to dial at start, besides the roster's addresses of
    /// every member. A trailing `/p2p/<peer id>` is allowed. Default none.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover members on the local network by mDNS. Default off: hospital
    /// networks rarely want multicast, and the roster lists addresses.
    pub mdns: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/7470".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mdns: false,
        }
    }
}

/// `[round]`: the deadlines of the protocol and the rhythm of rounds. Every
/// member of a consortium should use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundTiming {
    /// How long a leader waits for answers in each collection step before
    /// it moves on with the members that answered (at least t). Default
    /// 10000.
    pub collect_ms: u64,
    /// How long a member waits for the leader's next message before it
    /// moves to the next attempt. At least twice `collect_ms`. Default 30000.
    pub leader_silence_ms: u64,
    /// Attempts per round before the round fails. Default 8.
    pub max_attempts: u32,
    /// Rounds to run before the daemon stops; 0 runs until stopped.
    /// Default 0.
    pub rounds: u64,
    /// Pause between the end of one round and the start of the next, for
    /// training and for the new model to spread. Default 5000.
    pub pause_ms: u64,
}

impl Default for RoundTiming {
    fn default() -> Self {
        Self {
            collect_ms: 10_000,
            leader_silence_ms: 30_000,
            max_attempts: 8,
            rounds: 0,
            pause_ms: 5_000,
        }
    }
}

/// What a member feeds into secure aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainingMode {
    /// Train the model on the images in `data_dir` and send the update.
    Train,
    /// Send a deterministic test vector of `vector_len` entries derived from
    /// the round and the member, so the aggregate can be checked against the
    /// plain mean without any training.
    TestVectors,
}

/// `[training]`: local training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// `train` (default) or `test-vectors`.
    pub mode: TrainingMode,
    /// Architecture: `cnn` (default) or `resnet18`. All members must agree.
    pub model: String,
    /// Side of the square input image in pixels. Default 28.
    pub input_size: usize,
    /// Optimiser steps per round on local data. Default 20.
    pub local_steps: u32,
    /// Images per step. Default 32.
    pub batch_size: u32,
    /// Learning rate of local training. Default 0.02.
    pub learning_rate: f64,
    /// `cosine` (default): the learning rate decays over the configured
    /// rounds (`round.rounds`) to 5 %; `constant`: it does not.
    pub lr_schedule: String,
    /// Local optimiser: `sgd` (default; momentum 0.9, Nesterov) or `adamw`.
    /// It starts afresh from each global model unless `keep_optimizer_state`.
    pub optimizer: String,
    /// Keep the local optimiser's state (momentum, Adam's moments) from
    /// round to round instead of starting afresh from each global model.
    /// Default false: with skewed data, moments from this member's last
    /// round make the global model swing. With IID data and DP-SGD, kept
    /// moments average the noise over more steps.
    pub keep_optimizer_state: bool,
    /// How members' local training combines: `scaffold` (default; local
    /// gradients corrected by control variates summed in the same secure
    /// aggregation, against the drift of members whose data is skewed) or
    /// `fedavg` (plain averaging of the changes).
    pub algorithm: String,
    /// Weight decay on convolution and linear weights. Default 0.0005.
    pub weight_decay: f64,
    /// Random rotation, shift, zoom, brightness and contrast of training
    /// images. Default true.
    pub augment: bool,
    /// Class weights in the loss: `balanced` (default: each class of the
    /// member's own data counts equally), `none`, or one weight per class
    /// agreed by the consortium (`"1.9,0.7"`).
    pub class_weights: String,
    /// Seed of the initial model (the same at every member) and, mixed with
    /// the member's name, of local shuffling and augmentation. Default 0.
    pub seed: u64,
    /// Length of the test vector in `test-vectors` mode. Default 100000.
    pub vector_len: usize,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            mode: TrainingMode::Train,
            model: "cnn".into(),
            input_size: 28,
            local_steps: 20,
            batch_size: 32,
            learning_rate: 0.02,
            lr_schedule: "cosine".into(),
            optimizer: "sgd".into(),
            algorithm: "scaffold".into(),
            keep_optimizer_state: false,
            weight_decay: 5e-4,
            augment: true,
            class_weights: "balanced".into(),
            seed: 0,
            vector_len: 100_000,
        }
    }
}

/// `[privacy]`: differentially private local training (DP-SGD with a Renyi
/// accountant). Each hospital chooses its own budget; it is not part of the
/// settings members must share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Train with DP-SGD. Default false.
    pub enabled: bool,
    /// The budget: the member stops contributing updates (it still
    /// receives models) before its epsilon would exceed this. Default 8.
    pub target_epsilon: f64,
    /// The delta of the guarantee. Default 1e-5.
    pub delta: f64,
    /// L2 bound on each example's gradient. Default 1.0.
    pub clip_norm: f64,
    /// Noise standard deviation over the clipping norm. Absent: the
    /// smallest that keeps the whole run (`round.rounds` times
    /// `training.local_steps` steps) within the budget.
    pub noise_multiplier: Option<f64>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            target_epsilon: 8.0,
            delta: 1e-5,
            clip_norm: 1.0,
            noise_multiplier: None,
        }
    }
}

/// The config file as written, before paths are resolved and addresses parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    roster: PathBuf,
    key: PathBuf,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    storage_dir: PathBuf,
    #[serde(default = "default_keep_models")]
    keep_models: u32,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    round: RoundTiming,
    #[serde(default)]
    training: TrainingConfig,
    #[serde(default)]
    privacy: PrivacyConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    mdns: bool,
}

impl Default for RawNetwork {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            bootstrap: Vec::new(),
            mdns: false,
        }
    }
}

/// Models kept by default: a few rounds to look back on, at a bounded cost
/// in disk (20 ResNet-18 models are 0.9 GB).
pub const DEFAULT_KEEP_MODELS: u32 = 20;

fn default_keep_models() -> u32 {
    DEFAULT_KEEP_MODELS
}

fn default_listen() -> Vec<String> {
    NetworkConfig::default()
        .listen
        .iter()
        .map(ToString::to_string)
        .collect()
}

const EXAMPLE: &str = r#"# primiad configuration. Relative paths are relative to this file's directory.

# The consortium roster (see `primiad roster entry` and `primiad roster check`).
roster = "roster.toml"
# This member's identity key, written by `primiad keygen` (mode 0600).
key = "identity.key"
# The hospital's images (needed in training mode "train"): a folder with one
# subfolder of DICOM, PNG or JPEG files per class, or a MedMNIST .npz file.
data_dir = "images"
# The daemon's state: its database db/, the models' files models/ (back
# them up together) and its control socket control.sock.
storage_dir = "state"
# Models kept in storage_dir, newest first (always the current one); 0 keeps
# every round's model. The journal keeps every round's model hash regardless.
keep_models = 20

[network]
# Addresses to listen on (multiaddr).
listen = ["/ip4/0.0.0.0/tcp/7470"]
# Extra addresses to dial at start; the roster's member addresses are always dialled.
bootstrap = []
# Find members on the local network by mDNS.
mdns = false

[round]
# Leader's wait for answers in each step of an attempt.
collect_ms = 10000
# A member's wait for the leader before it moves to the next attempt (>= 2 x collect_ms).
leader_silence_ms = 30000
# Attempts per round before the round fails.
max_attempts = 8
# Rounds to run; 0 runs until the daemon is stopped.
rounds = 0
# Pause between rounds.
pause_ms = 5000

[training]
# "train" on the images in data_dir, or "test-vectors" (no training, for checking the aggregate).
mode = "train"
# Architecture: "cnn" or "resnet18"; every member must use the same.
model = "cnn"
# Side of the square input image in pixels.
input_size = 28
# Everything in this section except `mode` must be the same at every member
# (the daemons compare it when they connect and refuse to work together otherwise).
# Optimiser steps per round on local data.
local_steps = 20
# Images per step.
batch_size = 32
# Learning rate of local training.
learning_rate = 0.02
# "cosine": decays over round.rounds to 5 %; "constant".
lr_schedule = "cosine"
# Local optimiser: "sgd" (Nesterov momentum 0.9) or "adamw"; fresh from each global
# model unless keep_optimizer_state.
optimizer = "sgd"
# "scaffold": local gradients corrected by control variates aggregated with the
# update (twice the vector, robust to skewed data); "fedavg": plain averaging.
algorithm = "scaffold"
# Keep the optimiser's moments across rounds (true suits IID data under DP-SGD).
keep_optimizer_state = false
# Weight decay on convolution and linear weights.
weight_decay = 0.0005
# Random rotation, shift, zoom, brightness and contrast of training images.
augment = true
# Class weights in the loss: "balanced" (per member), "none", or agreed weights per class ("1.9,0.7").
class_weights = "balanced"
# Seed of the initial model (shared) and of local shuffling and augmentation.
seed = 0
# Length of the test vector in "test-vectors" mode.
vector_len = 100000

[privacy]
# Train with DP-SGD (per-example clipping, Gaussian noise, Renyi accountant).
enabled = false
# Budget: this member stops contributing updates before epsilon would exceed it.
target_epsilon = 8.0
# Delta of the (epsilon, delta) guarantee.
delta = 1e-5
# L2 bound on each example's gradient.
clip_norm = 1.0
# Noise over the clipping norm; leave out to derive it from the budget,
# round.rounds and training.local_steps.
# noise_multiplier = 1.1
"#;

impl Config {
    /// A commented config with every field at its default.
    pub fn example() -> &'static str {
        EXAMPLE
    }

    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let path = std::path::absolute(path).map_err(|source| ConfigError::Read {
            kind: "config",
            path: path.to_owned(),
            source,
        })?;
        let text = read_bounded("config", &path, MAX_CONFIG_BYTES)?;
        Self::parse(&text, &path)
    }

    /// Validates config text as if read from `path` (relative paths in it are
    /// resolved against `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_toml("config", path, text)?;
        let field = |field: &str, reason: String| ConfigError::Field {
            kind: "config",
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |name: &str, p: PathBuf| {
            if p.as_os_str().is_empty() {
                Err(field(name, "empty path".into()))
            } else {
                Ok(base.join(p))
            }
        };

        let listen = parse_addresses(&raw.network.listen, MAX_LISTEN_ADDRESSES)
            .map_err(|(f, r)| field(&format!("network.listen{f}"), r))?;
        if listen.is_empty() {
            return Err(field(
                "network.listen",
                "at least one address is needed".into(),
            ));
        }
        let bootstrap = parse_addresses(&raw.network.bootstrap, MAX_BOOTSTRAP_ADDRESSES)
            .map_err(|(f, r)| field(&format!("network.bootstrap{f}"), r))?;

        let r = raw.round;
        if r.collect_ms == 0 {
            return Err(field("round.collect_ms", "must be positive".into()));
        }
        if r.leader_silence_ms < r.collect_ms.saturating_mul(2) {
            return Err(field(
                "round.leader_silence_ms",
                format!(
                    "{} is less than twice round.collect_ms ({}): a member may wait through two collection steps between leader messages",
                    r.leader_silence_ms, r.collect_ms
                ),
            ));
        }
        if r.max_attempts == 0 {
            return Err(field("round.max_attempts", "must be at least 1".into()));
        }

        let t = &raw.training;
        if t.model.parse::<primia_model::Architecture>().is_err() {
            return Err(field(
                "training.model",
                format!(
                    "unknown architecture {:?} (expected \"cnn\" or \"resnet18\")",
                    t.model
                ),
            ));
        }
        if !(primia_model::spec::MIN_INPUT_SIZE..=primia_model::spec::MAX_INPUT_SIZE)
            .contains(&t.input_size)
        {
            return Err(field(
                "training.input_size",
                format!(
                    "{} outside {}..={}",
                    t.input_size,
                    primia_model::spec::MIN_INPUT_SIZE,
                    primia_model::spec::MAX_INPUT_SIZE
                ),
            ));
        }
        if t.local_steps == 0 {
            return Err(field("training.local_steps", "must be at least 1".into()));
        }
        if t.batch_size == 0 || t.batch_size > 4096 {
            return Err(field(
                "training.batch_size",
                format!("{} outside 1..=4096", t.batch_size),
            ));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 10.0) {
            return Err(field(
                "training.learning_rate",
                format!("{} is not a positive number up to 10", t.learning_rate),
            ));
        }
        if !matches!(t.optimizer.as_str(), "adamw" | "sgd") {
            return Err(field(
                "training.optimizer",
                format!(
                    "unknown optimizer {:?} (expected \"adamw\" or \"sgd\")",
                    t.optimizer
                ),
            ));
        }
        if !matches!(t.algorithm.as_str(), "scaffold" | "fedavg") {
            return Err(field(
                "training.algorithm",
                format!(
                    "unknown algorithm {:?} (expected \"scaffold\" or \"fedavg\")",
                    t.algorithm
                ),
            ));
        }
        if !matches!(t.lr_schedule.as_str(), "cosine" | "constant") {
            return Err(field(
                "training.lr_schedule",
                format!(
                    "unknown schedule {:?} (expected \"cosine\" or \"constant\")",
                    t.lr_schedule
                ),
            ));
        }
        if !(t.weight_decay.is_finite() && (0.0..1.0).contains(&t.weight_decay)) {
            return Err(field(
                "training.weight_decay",
                format!("{} is not in [0, 1)", t.weight_decay),
            ));
        }
        if let Err(reason) = crate::node::train::class_weighting(&t.class_weights) {
            return Err(field("training.class_weights", reason));
        }
        if t.vector_len == 0 || t.vector_len > MAX_TEST_VECTOR_LEN {
            return Err(field(
                "training.vector_len",
                format!("{} outside 1..={MAX_TEST_VECTOR_LEN}", t.vector_len),
            ));
        }
        let p = &raw.privacy;
        if p.enabled {
            use primia_model::privacy::accountant as acc;
            acc::check_epsilon(p.target_epsilon)
                .map_err(|e| field("privacy.target_epsilon", e.to_string()))?;
            acc::check_delta(p.delta).map_err(|e| field("privacy.delta", e.to_string()))?;
            if !(p.clip_norm.is_finite() && p.clip_norm > 0.0) {
                return Err(field(
                    "privacy.clip_norm",
                    format!("{} is not a positive number", p.clip_norm),
                ));
            }
            match p.noise_multiplier {
                Some(s) => acc::check_noise_multiplier(s)
                    .map_err(|e| field("privacy.noise_multiplier", e.to_string()))?,
                None if raw.round.rounds == 0 => {
                    return Err(field(
                        "privacy.noise_multiplier",
                        "missing, and it cannot be derived from the budget when round.rounds is 0 (no planned end): set one, or set round.rounds".into(),
                    ));
                }
                None => {}
            }
            if t.algorithm == "scaffold" {
                return Err(field(
                    "privacy.enabled",
                    "training.algorithm \"scaffold\" shares each member's un-noised mean gradient; with differential privacy set training.algorithm = \"fedavg\"".into(),
                ));
            }
            if t.mode != TrainingMode::Train {
                return Err(field(
                    "privacy.enabled",
                    "differential privacy needs training mode \"train\"".into(),
                ));
            }
        }
        let data_dir = raw.data_dir.map(|p| resolve("data_dir", p)).transpose()?;
        if t.mode == TrainingMode::Train && data_dir.is_none() {
            return Err(field(
                "data_dir",
                "missing: training mode \"train\" needs the images (a folder of class subfolders or a MedMNIST .npz file)".into(),
            ));
        }

        Ok(Self {
            path: path.to_owned(),
            roster: resolve("roster", raw.roster)?,
            key: resolve("key", raw.key)?,
            data_dir,
            storage_dir: resolve("storage_dir", raw.storage_dir)?,
            keep_models: NonZeroUsize::new(raw.keep_models as usize),
            network: NetworkConfig {
                listen,
                bootstrap,
                mdns: raw.network.mdns,
            },
            round: raw.round,
            training: raw.training,
            privacy: raw.privacy,
        })
    }

    /// The protocol's settings for round `round` with input vectors of
    /// `vector_len` entries (parameters plus the appended example count).
    pub fn round_config(&self, round: u64, vector_len: usize) -> primia_protocol::RoundConfig {
        let mut c = primia_protocol::RoundConfig::new(round, vector_len);
        c.collect_ms = self.round.collect_ms;
        c.leader_silence_ms = self.round.leader_silence_ms;
        c.max_attempts = self.round.max_attempts;
        c
    }

    /// The control socket's path: `control.sock` in the storage directory.
    pub fn control_socket(&self) -> PathBuf {
        self.storage_dir.join(crate::control::SOCKET_NAME)
    }
}

/// Parses multiaddrs; on failure returns the index suffix (`[i]`) and why.
fn parse_addresses(text: &[String], max: usize) -> Result<Vec<Multiaddr>, (String, String)> {
    if text.len() > max {
        return Err((
            String::new(),
            format!("{} addresses, at most {max} are allowed", text.len()),
        ));
    }
    text.iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<Multiaddr>()
                .map_err(|e| (format!("[{i}]"), format!("invalid multiaddr {a:?}: {e}")))
        })
        .collect()
}

/// Reads at most `max` bytes of a UTF-8 file.
fn read_bounded(kind: &'static str, path: &Path, max: u64) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        kind,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    if size > max {
        return Err(ConfigError::TooLarge {
            kind,
            path: path.to_owned(),
            size,
            max,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > max {
        return Err(ConfigError::TooLarge {
            kind,
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    String::from_utf8(bytes).map_err(|e| ConfigError::Syntax {
        kind,
        path: path.to_owned(),
        line: 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8 text".into(),
    })
}

/// Deserializes TOML, turning the parser's error into file and line.
fn parse_toml<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count())
            .unwrap_or(1);
        ConfigError::Syntax {
            kind,
            path: path.to_owned(),
            line,
            message: e.message().trim_end().to_owned(),
        }
    })
}

/// The roster file as written.
///
/// ```toml
/// consortium = "paediatric-xray"
/// threshold = "majority"          # or a number of members
///
/// [[member]]
/// name = "st-mary"
/// peer_id = "12D3KooW..."
/// addresses = ["/ip4/10.0.0.1/tcp/7470"]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterFile {
    /// The consortium id: 1 to 64 of `[A-Za-z0-9._-]`.
    pub consortium: String,
    /// `"majority"` or a number of members (more than half, at most all).
    pub threshold: toml::Value,
    /// What members trust the round's leader to do: `"malicious"` (the
    /// default: a leader may deviate from the protocol, so `2t > n + 1`,
    /// and 3 members need all 3) or `"honest-but-curious"` (leaders follow
    /// the protocol, so a strict majority will do: 2 of 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_trust: Option<String>,
    /// The members, in any order.
    #[serde(default, rename = "member")]
    pub members: Vec<RosterEntry>,
}

/// One `[[member]]` of a roster file; `primiad roster entry` prints one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// The hospital's name, shown in logs and status.
    pub name: String,
    /// The member's libp2p peer id, base58 (`12D3KooW...`).
    pub peer_id: String,
    /// Addresses where the member listens (multiaddr).
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl RosterEntry {
    /// This entry as a `[[member]]` TOML table.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct One<'a> {
            member: [&'a RosterEntry; 1],
        }
        toml::to_string(&One { member: [self] }).expect("a roster entry serializes")
    }
}

/// A validated roster with the peer id of every member.
#[derive(Clone, Debug)]
pub struct LoadedRoster {
    /// The protocol's roster (members sorted by identity).
    pub roster: Roster,
    /// Peer id of each member, indexed by [`primia_protocol::MemberId`].
    pub peer_ids: Vec<PeerId>,
    /// Member index by peer id, for mapping transport peers to members.
    pub by_peer: BTreeMap<PeerId, primia_protocol::MemberId>,
}

impl LoadedRoster {
    /// Reads and validates a roster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_bounded("roster", path, MAX_ROSTER_BYTES)?;
        Self::parse(&text, path)
    }

    /// Validates roster text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: RosterFile = parse_toml("roster", path, text)?;
        let field = |field: String, reason: String| ConfigError::Field {
            kind: "roster",
            path: path.to_owned(),
            field,
            reason,
        };
        let consortium = ConsortiumId::new(file.consortium.clone())
            .map_err(|e| field("consortium".into(), e.to_string()))?;
        let honest_leader = match file.leader_trust.as_deref() {
            None | Some("malicious") => false,
            Some("honest-but-curious") => true,
            Some(other) => {
                return Err(field(
                    "leader_trust".into(),
                    format!("expected \"malicious\" or \"honest-but-curious\", found {other:?}"),
                ));
            }
        };
        let threshold = match &file.threshold {
            toml::Value::String(s) if s == "majority" && honest_leader => Threshold::HonestLeader(
                (file.members.len() / 2 + 1).min(usize::from(u16::MAX)) as u16,
            ),
            toml::Value::String(s) if s == "majority" => Threshold::Majority,
            toml::Value::Integer(n) => u16::try_from(*n)
                .map(if honest_leader {
                    Threshold::HonestLeader
                } else {
                    Threshold::AtLeast
                })
                .map_err(|_| field("threshold".into(), format!("{n} is not a member count")))?,
            other => {
                return Err(field(
                    "threshold".into(),
                    format!("expected \"majority\" or a number of members, found {other}"),
                ));
            }
        };
        if file.members.len() > MAX_MEMBERS {
            return Err(field(
                "member".into(),
                format!(
                    "{} members, at most {MAX_MEMBERS} are allowed",
                    file.members.len()
                ),
            ));
        }
        let mut members = Vec::with_capacity(file.members.len());
        for (i, m) in file.members.iter().enumerate() {
            let at = |f: &str| format!("member[{i}].{f}");
            let (_, identity) = identity::parse_peer_id(&m.peer_id)
                .map_err(|e| field(at("peer_id"), e.to_string()))?;
            for (j, a) in m.addresses.iter().enumerate() {
                a.parse::<Multiaddr>().map_err(|e| {
                    field(
                        at(&format!("addresses[{j}]")),
                        format!("invalid multiaddr {a:?}: {e}"),
                    )
                })?;
            }
            members.push(MemberInfo {
                name: m.name.clone(),
                identity,
                addresses: m.addresses.clone(),
            });
        }
        let roster =
            Roster::new(consortium, members, threshold).map_err(|e| ConfigError::Roster {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let peer_ids: Vec<PeerId> = roster
            .members()
            .map(|(_, m)| identity::peer_id_of(&m.identity))
            .collect();
        let by_peer = roster
            .ids()
            .zip(peer_ids.iter())
            .map(|(id, p)| (*p, id))
            .collect();
        Ok(Self {
            roster,
            peer_ids,
            by_peer,
        })
    }

    /// The member's name, for display.
    pub fn name_of(&self, id: primia_protocol::MemberId) -> &str {
        self.roster.member(id).map_or("?", |m| m.name.as_str())
    }
}
