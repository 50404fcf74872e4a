//! The daemon's durable state: global models by blake3 hash, the current
//! model pointer, the round journal, the record of revealed shares, metrics
//! history and the privacy budget spent. Everything lives in sled except the
//! model blobs themselves, which are files named by their hash.
//!
//! # Durability
//!
//! Every method that changes state writes and then flushes (fsyncs) the
//! database before it returns `Ok`: what a caller was told is committed
//! survives SIGKILL or power loss. Changes that span several keys (a model's
//! metadata and the current pointer; all the reveals of one attempt) go
//! through one sled transaction, so a crash leaves all of them or none.
//!
//! # Model blobs
//!
//! A model's blob is written to a temporary file, fsynced, renamed to its
//! hash and the directory fsynced, all before the transaction that records
//! its metadata. A model whose metadata is committed therefore always has
//! its blob; a crash before that commit leaves at most a file nothing
//! refers to, which the next [`Store::open`] deletes. Blobs were sled values
//! in schema version 1, with three faults: sled 0.34 kept every blob it had
//! written in memory, whatever its cache size (measured: resident memory
//! grew by one model per commit, 4 MB a round for 10^6 parameters, without
//! bound); it wrote blob files without fsyncing them, so a power loss could
//! keep a model's record and lose its bytes; and each commit copied the
//! blob three times on its way to disk. [`Store::open`] moves a version-1
//! store's blobs into files.
//!
//! # Retention
//!
//! Every round adds a model (4 MB at 10^6 parameters, 45 MB for
//! ResNet-18), so the daemon keeps only the newest few
//! ([`Store::prune_models`], after each commit; the config's `keep_models`).
//! Members only ever fetch the latest model, and the journal keeps the hash
//! of every round's model after its bytes are gone.
//!
//! # The reveal rule
//!
//! [`Store::record_reveal`] is the only way to obtain a [`RevealReceipt`],
//! and it returns one only after the reveal is durable. The driver sends a
//! reveal only with a receipt in hand, so a crash between recording and
//! sending can at worst lose the send, never the record; on restart
//! [`Store::reveal_record`] hands the round what it already revealed, and
//! the store itself refuses to record the other kind of share for the same
//! member in the same attempt.
//!
//! # Layout (schema version 2)
//!
//! In `storage_dir/db` (sled):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | u32 big-endian |
//! | `meta` | `current_model` | 32-byte hash |
//! | `meta` | `privacy_spent` | JSON [`PrivacySpent`] |
//! | `meta` | `privacy_accountant` | JSON of the model crate's `PrivacyAccountant` (its history of DP steps) |
//! | `models` | (empty; version 1 held the blobs here) | |
//! | `model_meta` | hash | JSON [`ModelMeta`] |
//! | `journal` | round u64 BE, attempt u32 BE | JSON [`JournalEntry`] |
//! | `reveals` | round u64 BE, attempt u32 BE, member u16 BE | 1 byte: 0 self-mask, 1 mask key |
//! | `metrics` | round u64 BE | JSON [`MetricsEntry`] |
//!
//! In `storage_dir/models` (mode 0700): one file `<hash in hex>.blob`
//! (mode 0600) per stored model.
//!
//! Every value read back is checked (size, hash, decoding); a corrupt
//! record is an error naming the tree and key (or the blob's file), never a
//! panic.
//!
//! The records that the status document shows ([`JournalEntry`] with its
//! [`AttemptOutcome`] and [`PhaseTiming`]s, [`MetricsEntry`],
//! [`PrivacySpent`]) accept fields they do not know, as the status document
//! itself does: a field added to one of them later must not make an older
//! `primiad status` refuse a newer daemon's answer. What guards the store
//! against a layout it cannot read is the schema version, not the record
//! types: a change that an older build must not read past bumps it.
//! [`ModelMeta`], which never leaves the store, stays strict.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use primia_protocol::{MemberId, RevealEntry, RevealRecord, ShareKind};
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest layout this build still opens (and upgrades).
const OLDEST_SCHEMA: u32 = 1;

/// Largest model blob stored: ResNet-18 in f32 is about 45 MB, so this
/// leaves room for bigger networks while bounding what one read can cost.
pub const MAX_MODEL_BYTES: usize = 512 << 20;

/// Largest JSON record (journal, metrics, metadata). A journal entry of a
/// full roster (1000 names of up to 64 bytes, twice) stays far below it.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Most metric values in one [`MetricsEntry`].
pub const MAX_METRICS_PER_ROUND: usize = 256;

/// The database directory inside the storage directory.
pub const DB_DIR: &str = "db";

/// The directory of model blobs inside the storage directory.
pub const MODELS_DIR: &str = "models";

/// Extension of a model blob's file; `.tmp` while it is being written.
const BLOB_EXT: &str = "blob";
/// Spare capacity of a blob read back (see [`Store::model_blob`]).
const BLOB_SPARE_BYTES: usize = 16;
const TMP_EXT: &str = "tmp";

const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_CURRENT: &[u8] = b"current_model";
const KEY_PRIVACY: &[u8] = b"privacy_spent";
const KEY_ACCOUNTANT: &[u8] = b"privacy_accountant";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage directory could not be created or opened.
    #[error("store {}: {action}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process (a running daemon) holds the database.
    #[error("store {}: the database is in use by another process (is primiad already running?)", path.display())]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database engine failed.
    #[error("store: {action}: {source}")]
    Db {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: sled::Error,
    },
    /// The database was written by a newer primiad.
    #[error(
        "store {}: schema version {found} is newer than this primiad understands ({supported}); use a newer primiad",
        path.display()
    )]
    SchemaTooNew {
        /// The database directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The database has a schema version this build cannot read.
    #[error(
        "store {}: schema version {found} is not supported (this primiad reads versions {} to {supported})",
        path.display(),
        OLDEST_SCHEMA
    )]
    SchemaUnsupported {
        /// The database directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// A model blob's file is missing or does not match its metadata.
    #[error("store: corrupt model blob {}: {reason}", path.display())]
    CorruptBlob {
        /// The blob's file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored record does not decode or does not match its key.
    #[error("store: corrupt record in `{tree}` at key {key}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key, printable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A caller asked for something the store refuses (too large, not
    /// finite, a pointer to a model that is not stored).
    #[error("store: {0}")]
    Invalid(String),
    /// Recording this reveal would reveal both shares of one member in one
    /// attempt.
    #[error(
        "store: refusing to record a {requested:?} share of member {member} in round {round} attempt {attempt}: the other share of that member was already revealed"
    )]
    RevealConflict {
        /// The round.
        round: u64,
        /// The attempt.
        attempt: u32,
        /// The member whose shares are at stake.
        member: MemberId,
        /// The kind that was asked for.
        requested: ShareKind,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn db_err(action: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Db { action, source }
}

fn tx_err(action: &'static str) -> impl FnOnce(TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => StoreError::Db { action, source },
    }
}

/// A model's blake3 hash: its name everywhere (gossip, store, status).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelHash(pub [u8; 32]);

impl ModelHash {
    /// The hash of `blob`.
    pub fn of(blob: &[u8]) -> Self {
        Self(*blake3::hash(blob).as_bytes())
    }

    /// The hash of the blob that is `parts` one after the other.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        Self(*h.finalize().as_bytes())
    }

    /// All 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ModelHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModelHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelHash({})", &self.to_hex()[..16])
    }
}

impl FromStr for ModelHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("not a model hash (64 hex digits): {e}"))?;
        Ok(Self(out))
    }
}

impl Serialize for ModelHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ModelHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What is stored beside a model blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// The round that produced it (0 for an initial model).
    pub round: u64,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Number of model parameters.
    pub parameter_count: u64,
    /// Length of the blob in bytes (set by the store).
    pub size_bytes: u64,
}

/// What a store holds on disk, for the status (never stored itself; like
/// the status document, it may gain fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreUsage {
    /// Models stored (the newest `keep_models`, or all).
    pub models: usize,
    /// Their blobs' total size in bytes.
    pub model_bytes: u64,
    /// The database's size on disk in bytes: model metadata, the journal,
    /// the reveal record, metrics.
    pub database_bytes: u64,
}

/// How one attempt of a round ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum AttemptOutcome {
    /// The attempt produced the round's sum.
    Completed,
    /// The attempt failed and the round moved on to the next attempt or
    /// gave up.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

/// Time spent in one phase of an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// The phase, e.g. `advertise-keys`.
    pub phase: String,
    /// Milliseconds spent in it.
    pub ms: u64,
}

/// One entry of the round journal: one attempt of one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The round.
    pub round: u64,
    /// The attempt, from 0.
    pub attempt: u32,
    /// Name of the attempt's leader.
    pub leader: String,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Names of the members whose inputs are in the sum (U3), or who took
    /// part as far as the attempt went.
    pub participants: Vec<String>,
    /// Names of the members that dropped out during the attempt.
    pub dropouts: Vec<String>,
    /// When the attempt started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// Time per phase, in phase order.
    pub phases: Vec<PhaseTiming>,
    /// The model the round produced, when this attempt completed it.
    pub model: Option<ModelHash>,
}

/// Metrics of one round (loss, accuracy, AUC, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsEntry {
    /// The round.
    pub round: u64,
    /// When they were recorded, milliseconds since the Unix epoch.
    pub recorded_unix_ms: u64,
    /// Name to value; finite numbers only.
    pub values: BTreeMap<String, f64>,
}

/// The differential-privacy budget spent so far, as the accountant last
/// reported it (a total, not an increment: privacy loss does not simply
/// add up under the accountants in use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpent {
    /// Epsilon spent.
    pub epsilon: f64,
    /// The delta at which epsilon holds.
    pub delta: f64,
}

/// Proof that a reveal is durable. Only [`Store::record_reveal`] makes one,
/// after the write is flushed; the code that sends a reveal takes it, so a
/// share cannot go out before its record is on disk.
#[must_use = "a reveal may be sent only once it is recorded: pass the receipt to the send"]
#[derive(Debug, PartialEq, Eq)]
pub struct RevealReceipt {
    round: u64,
    attempt: u32,
    revealed: Vec<(MemberId, ShareKind)>,
}

impl RevealReceipt {
    /// The round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this receipt covers every share of `entry`.
    pub fn covers(&self, entry: &RevealEntry) -> bool {
        entry.round == self.round
            && entry.attempt == self.attempt
            && entry.revealed.iter().all(|r| self.revealed.contains(r))
    }
}

/// The daemon's database. Cheap to share behind an `Arc`; all methods take
/// `&self`.
pub struct Store {
    path: PathBuf,
    models_dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    models: sled::Tree,
    model_meta: sled::Tree,
    journal: sled::Tree,
    reveals: sled::Tree,
    metrics: sled::Tree,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (or creates) the database in `storage_dir/db`, creating
    /// `storage_dir` with mode 0700 if needed, and checks its schema version.
    pub fn open(storage_dir: &Path) -> Result<Self> {
        create_private_dir(storage_dir).map_err(|source| StoreError::Io {
            path: storage_dir.to_owned(),
            action: "cannot create the storage directory",
            source,
        })?;
        let path = storage_dir.join(DB_DIR);
        let db = sled::Config::new()
            .path(&path)
            // sled's default cache is 1 GiB; models are read rarely.
            .cache_capacity(64 << 20)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked { path: path.clone() }
                }
                source => StoreError::Db {
                    action: "cannot open the database",
                    source,
                },
            })?;
        let open = |name: &str| db.open_tree(name).map_err(db_err("cannot open a tree"));
        let store = Self {
            meta: open("meta")?,
            models: open("models")?,
            model_meta: open("model_meta")?,
            journal: open("journal")?,
            reveals: open("reveals")?,
            metrics: open("metrics")?,
            db,
            path,
            models_dir: storage_dir.join(MODELS_DIR),
        };
        // The database's lock is held from here: no other process writes
        // blobs.
        create_private_dir(&store.models_dir).map_err(|source| StoreError::Io {
            path: store.models_dir.clone(),
            action: "cannot create the model directory",
            source,
        })?;
        store.check_schema()?;
        store.remove_unreferenced_blobs()?;
        Ok(store)
    }

    /// Checks the schema version; a new database gets the current one and
    /// a version-1 database is upgraded.
    fn check_schema(&self) -> Result<()> {
        match self
            .meta
            .get(KEY_SCHEMA)
            .map_err(db_err("cannot read the schema version"))?
        {
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        tree: "meta",
                        key: "schema_version".into(),
                        reason: format!("{} bytes, expected 4", v.len()),
                    })?);
                match found {
                    // An upgrade cut short (see `upgrade_v1`) left blobs
                    // in the tree.
                    SCHEMA_VERSION if !self.models.is_empty() => self.upgrade_v1(),
                    SCHEMA_VERSION => Ok(()),
                    OLDEST_SCHEMA => self.upgrade_v1(),
                    f if f > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
                        path: self.path.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    }),
                    _ => Err(StoreError::SchemaUnsupported {
                        path: self.path.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    }),
                }
            }
            None => {
                let empty = [
                    &self.meta,
                    &self.models,
                    &self.model_meta,
                    &self.journal,
                    &self.reveals,
                    &self.metrics,
                ]
                .iter()
                .all(|t| t.is_empty());
                if !empty {
                    return Err(StoreError::Corrupt {
                        tree: "meta",
                        key: "schema_version".into(),
                        reason: "missing in a database that holds data".into(),
                    });
                }
                self.meta
                    .insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(db_err("cannot write the schema version"))?;
                self.flush()
            }
        }
    }

    /// Schema version 1 to 2: every blob in the `models` tree moves into
    /// its file. Each file is durable before the tree is cleared and the
    /// version raised, and sled recovers a prefix of its operations, so a
    /// crash at any point leaves either version 1 with every blob still
    /// reachable (and the upgrade runs again), or version 2 with every blob
    /// in its file.
    fn upgrade_v1(&self) -> Result<()> {
        for item in self.models.iter() {
            let (k, blob) = item.map_err(db_err("cannot read a model to upgrade the store"))?;
            let hash = hash_key("models", &k)?;
            if ModelHash::of(&blob) != hash {
                return Err(StoreError::Corrupt {
                    tree: "models",
                    key: hash.to_hex(),
                    reason: "content does not match its hash".into(),
                });
            }
            if self.blob_len(hash) != Some(blob.len() as u64) {
                self.write_blob(hash, &[&blob])?;
            }
        }
        self.models
            .clear()
            .map_err(db_err("cannot clear the upgraded model tree"))?;
        self.meta
            .insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
            .map_err(db_err("cannot write the schema version"))?;
        self.flush()
    }

    /// Deletes temporary blob files and blobs that no metadata names: what
    /// a crash in [`Store::put_model`] before its commit leaves behind.
    fn remove_unreferenced_blobs(&self) -> Result<()> {
        let io = |action: &'static str| {
            let path = self.models_dir.clone();
            move |source| StoreError::Io {
                path,
                action,
                source,
            }
        };
        let entries =
            std::fs::read_dir(&self.models_dir).map_err(io("cannot list the model directory"))?;
        for entry in entries {
            let path = entry.map_err(io("cannot list the model directory"))?.path();
            let referenced = match path.extension().and_then(|e| e.to_str()) {
                Some(BLOB_EXT) => match path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<ModelHash>().ok())
                {
                    Some(hash) => self
                        .model_meta
                        .contains_key(hash.0)
                        .map_err(db_err("cannot read model metadata"))?,
                    // Not a name this store writes: leave it alone.
                    None => true,
                },
                Some(TMP_EXT) => false,
                _ => true,
            };
            if !referenced {
                std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    action: "cannot remove an unreferenced model file",
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file of the blob with `hash`.
    fn blob_path(&self, hash: ModelHash) -> PathBuf {
        self.models_dir
            .join(format!("{}.{BLOB_EXT}", hash.to_hex()))
    }

    /// The length of the blob file of `hash`, if there is one.
    fn blob_len(&self, hash: ModelHash) -> Option<u64> {
        std::fs::metadata(self.blob_path(hash))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Writes the blob file of `hash` (`parts` one after the other)
    /// durably: a temporary file, fsynced, renamed into place, and the
    /// directory fsynced.
    fn write_blob(&self, hash: ModelHash, parts: &[&[u8]]) -> Result<()> {
        // A name of its own per write: two writers of the same model (a
        // commit and a fetch, say) must not rename each other's file away.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.blob_path(hash);
        let tmp = self
            .models_dir
            .join(format!("{}.{n}.{TMP_EXT}", hash.to_hex()));
        let io = |path: &Path, action: &'static str| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                path,
                action,
                source,
            }
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(&tmp)
            .map_err(io(&tmp, "cannot create a model file"))?;
        parts
            .iter()
            .try_for_each(|p| file.write_all(p))
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp, "cannot write a model file"))?;
        drop_cached(&file);
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path, "cannot move a model file into place"))?;
        std::fs::File::open(&self.models_dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.models_dir, "cannot sync the model directory"))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(db_err("cannot flush to disk"))?;
        Ok(())
    }

    // ----- models -----

    /// Stores a model blob with its metadata (idempotent) and makes it the
    /// current model, all in one transaction, flushed before returning.
    /// `meta.size_bytes` is set from the blob.
    pub fn commit_model(&self, blob: &[u8], meta: ModelMeta) -> Result<ModelHash> {
        self.put_model_inner(&[blob], meta, true)
    }

    /// [`Self::commit_model`] of the blob that is `parts` one after the
    /// other, so that a caller holding a model's header and its parameters
    /// apart need not copy them into one buffer first.
    pub fn commit_model_parts(&self, parts: &[&[u8]], meta: ModelMeta) -> Result<ModelHash> {
        self.put_model_inner(parts, meta, true)
    }

    /// Stores a model without changing the current pointer (a model fetched
    /// from a peer before it is adopted, or an older one), flushed.
    pub fn put_model(&self, blob: &[u8], meta: ModelMeta) -> Result<ModelHash> {
        self.put_model_inner(&[blob], meta, false)
    }

    fn put_model_inner(
        &self,
        parts: &[&[u8]],
        mut meta: ModelMeta,
        current: bool,
    ) -> Result<ModelHash> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_MODEL_BYTES {
            return Err(StoreError::Invalid(format!(
                "model of {len} bytes is larger than the {MAX_MODEL_BYTES}-byte limit"
            )));
        }
        meta.size_bytes = len as u64;
        let hash = ModelHash::of_parts(parts);
        let meta_bytes = encode_record(&meta)?;
        // A model already stored is not written again: blobs are large and
        // the hash says the bytes are the same.
        let known = self
            .model_meta
            .contains_key(hash.0)
            .map_err(db_err("cannot read model metadata"))?;
        // The blob is durable before anything refers to it (see the
        // module doc). One with the right length is not written again (a
        // damaged one is found by its hash when read).
        if !known || self.blob_len(hash) != Some(len as u64) {
            self.write_blob(hash, parts)?;
        }
        (&self.model_meta, &self.meta)
            .transaction(|(model_meta, m)| {
                if !known {
                    model_meta.insert(&hash.0, meta_bytes.as_slice())?;
                }
                if current {
                    m.insert(KEY_CURRENT, &hash.0)?;
                }
                Ok(())
            })
            .map_err(tx_err("cannot store the model"))?;
        self.flush()?;
        Ok(hash)
    }

    /// Makes a stored model the current one, flushed. Refuses a hash that
    /// is not stored.
    pub fn set_current_model(&self, hash: ModelHash) -> Result<()> {
        (&self.model_meta, &self.meta)
            .transaction(|(model_meta, m)| {
                if model_meta.get(hash.0)?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Invalid(
                        format!("model {hash} is not stored"),
                    )));
                }
                m.insert(KEY_CURRENT, &hash.0)?;
                Ok(())
            })
            .map_err(tx_err("cannot set the current model"))?;
        self.flush()
    }

    /// The current model's hash, if any.
    pub fn current_model(&self) -> Result<Option<ModelHash>> {
        let Some(v) = self
            .meta
            .get(KEY_CURRENT)
            .map_err(db_err("cannot read the current model"))?
        else {
            return Ok(None);
        };
        let bytes: [u8; 32] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            key: "current_model".into(),
            reason: format!("{} bytes, expected 32", v.len()),
        })?;
        Ok(Some(ModelHash(bytes)))
    }

    /// The current model's hash and metadata, if any. A pointer to a model
    /// that is not stored is reported as corruption.
    pub fn current_model_meta(&self) -> Result<Option<(ModelHash, ModelMeta)>> {
        let Some(hash) = self.current_model()? else {
            return Ok(None);
        };
        match self.model_meta(hash)? {
            Some(meta) => Ok(Some((hash, meta))),
            None => Err(StoreError::Corrupt {
                tree: "meta",
                key: "current_model".into(),
                reason: format!("points to model {hash}, which is not stored"),
            }),
        }
    }

    /// A stored model's metadata.
    pub fn model_meta(&self, hash: ModelHash) -> Result<Option<ModelMeta>> {
        let Some(v) = self
            .model_meta
            .get(hash.0)
            .map_err(db_err("cannot read model metadata"))?
        else {
            return Ok(None);
        };
        let meta: ModelMeta = decode_record("model_meta", &hash.to_hex(), &v)?;
        if meta.size_bytes > MAX_MODEL_BYTES as u64 {
            return Err(StoreError::Corrupt {
                tree: "model_meta",
                key: hash.to_hex(),
                reason: format!("size {} over the limit", meta.size_bytes),
            });
        }
        Ok(Some(meta))
    }

    /// A stored model's blob, checked against its metadata and its hash.
    pub fn model_blob(&self, hash: ModelHash) -> Result<Option<Vec<u8>>> {
        let Some(meta) = self.model_meta(hash)? else {
            return Ok(None);
        };
        let path = self.blob_path(hash);
        let corrupt = |reason: String| StoreError::CorruptBlob {
            path: path.clone(),
            reason,
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Pruned since its metadata was read: gone, not corrupt.
                if self.model_meta(hash)?.is_none() {
                    return Ok(None);
                }
                return Err(corrupt("metadata is stored but the blob is missing".into()));
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.clone(),
                    action: "cannot open a model file",
                    source,
                });
            }
        };
        // Read at most one byte more than the metadata promises, so that a
        // grown file is noticed without reading all of it. The spare
        // capacity takes that byte, and a network answer's trailer after
        // the blob, without moving megabytes.
        let mut blob = Vec::with_capacity(meta.size_bytes as usize + BLOB_SPARE_BYTES);
        (&mut file)
            .take(meta.size_bytes + 1)
            .read_to_end(&mut blob)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                action: "cannot read a model file",
                source,
            })?;
        if blob.len() as u64 != meta.size_bytes {
            return Err(corrupt(if blob.len() as u64 > meta.size_bytes {
                format!(
                    "longer than the {} bytes its metadata says",
                    meta.size_bytes
                )
            } else {
                format!("{} bytes, metadata says {}", blob.len(), meta.size_bytes)
            }));
        }
        if ModelHash::of(&blob) != hash {
            return Err(corrupt("content does not match its hash".into()));
        }
        Ok(Some(blob))
    }

    /// Deletes every model but the newest `keep` (by round, then time of
    /// making), never the current one, and returns how many it deleted.
    ///
    /// The metadata goes first, in one transaction, flushed; the blob files
    /// after. A crash in between leaves files nothing refers to, which the
    /// next [`Store::open`] deletes, so a pruned model is never half there:
    /// [`Store::model_blob`] answers `None` for it from the moment its
    /// metadata is gone, even to a reader that had started before.
    pub fn prune_models(&self, keep: std::num::NonZeroUsize) -> Result<usize> {
        let current = self.current_model()?;
        let mut others: Vec<ModelHash> = self
            .models()?
            .into_iter()
            .map(|(hash, _)| hash)
            .filter(|hash| Some(*hash) != current)
            .collect();
        // Newest first; the current model takes one of the `keep` places.
        others.reverse();
        let spare = keep.get() - usize::from(current.is_some());
        let doomed = others.get(spare..).unwrap_or_default();
        if doomed.is_empty() {
            return Ok(0);
        }
        (&self.model_meta, &self.meta)
            .transaction(|(model_meta, m)| {
                let current = m.get(KEY_CURRENT)?;
                for hash in doomed {
                    // The pointer may have moved since the list was made.
                    if current.as_deref() != Some(&hash.0[..]) {
                        model_meta.remove(&hash.0)?;
                    }
                }
                Ok(())
            })
            .map_err(tx_err("cannot prune old models"))?;
        self.flush()?;
        let mut deleted = 0;
        for hash in doomed {
            if self
                .model_meta
                .contains_key(hash.0)
                .map_err(db_err("cannot read model metadata"))?
            {
                continue;
            }
            let path = self.blob_path(*hash);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path,
                        action: "cannot remove a pruned model's file",
                        source,
                    });
                }
            }
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Every stored model's hash and metadata, oldest round first.
    pub fn models(&self) -> Result<Vec<(ModelHash, ModelMeta)>> {
        let mut out = Vec::new();
        for item in self.model_meta.iter() {
            let (k, v) = item.map_err(db_err("cannot list models"))?;
            let hash = hash_key("model_meta", &k)?;
            out.push((
                hash,
                decode_record::<ModelMeta>("model_meta", &hash.to_hex(), &v)?,
            ));
        }
        out.sort_by_key(|(h, m)| (m.round, m.created_unix_ms, *h));
        Ok(out)
    }

    /// How many models the store holds and how much disk it uses.
    pub fn usage(&self) -> Result<StoreUsage> {
        let models = self.models()?;
        Ok(StoreUsage {
            models: models.len(),
            model_bytes: models.iter().map(|(_, m)| m.size_bytes).sum(),
            database_bytes: self
                .db
                .size_on_disk()
                .map_err(db_err("cannot measure the database"))?,
        })
    }

    // ----- round journal -----

    /// Records (or replaces) the journal entry of one attempt, flushed.
    pub fn record_attempt(&self, entry: &JournalEntry) -> Result<()> {
        let bytes = encode_record(entry)?;
        self.journal
            .insert(journal_key(entry.round, entry.attempt), bytes)
            .map_err(db_err("cannot write the journal"))?;
        self.flush()
    }

    /// The journal entry of one attempt.
    pub fn journal_entry(&self, round: u64, attempt: u32) -> Result<Option<JournalEntry>> {
        let key = journal_key(round, attempt);
        self.journal
            .get(key)
            .map_err(db_err("cannot read the journal"))?
            .map(|v| self.decode_journal(&key, &v))
            .transpose()
    }

    /// The last `limit` journal entries, newest first.
    pub fn recent_attempts(&self, limit: usize) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::with_capacity(limit.min(64));
        for item in self.journal.iter().rev().take(limit) {
            let (k, v) = item.map_err(db_err("cannot read the journal"))?;
            out.push(self.decode_journal(&k, &v)?);
        }
        Ok(out)
    }

    /// The highest round with a journal entry.
    pub fn last_journaled_round(&self) -> Result<Option<u64>> {
        match self
            .journal
            .last()
            .map_err(db_err("cannot read the journal"))?
        {
            None => Ok(None),
            Some((k, v)) => Ok(Some(self.decode_journal(&k, &v)?.round)),
        }
    }

    fn decode_journal(&self, key: &[u8], value: &[u8]) -> Result<JournalEntry> {
        let key_text = hex::encode(key);
        let entry: JournalEntry = decode_record("journal", &key_text, value)?;
        if key != journal_key(entry.round, entry.attempt) {
            return Err(StoreError::Corrupt {
                tree: "journal",
                key: key_text,
                reason: format!(
                    "holds round {} attempt {}, which belongs under another key",
                    entry.round, entry.attempt
                ),
            });
        }
        Ok(entry)
    }

    // ----- revealed shares -----

    /// Records that this member reveals the shares in `entry`, durably, and
    /// only then returns the receipt that the send requires. Refuses, and
    /// records nothing, if any share conflicts with one recorded before
    /// (the other kind for the same member in the same attempt) or with
    /// another share of the entry. Recording the same reveal again is fine.
    pub fn record_reveal(&self, entry: &RevealEntry) -> Result<RevealReceipt> {
        // Conflicts inside the entry itself, found before touching the disk.
        let mut seen: BTreeMap<MemberId, ShareKind> = BTreeMap::new();
        for &(member, kind) in &entry.revealed {
            if seen.insert(member, kind).is_some_and(|k| k != kind) {
                return Err(StoreError::RevealConflict {
                    round: entry.round,
                    attempt: entry.attempt,
                    member,
                    requested: kind,
                });
            }
        }
        self.reveals
            .transaction(|t| {
                for (&member, &kind) in &seen {
                    let key = reveal_key(entry.round, entry.attempt, member);
                    if let Some(old) = t.get(key)? {
                        let old =
                            decode_kind(&key, &old).map_err(ConflictableTransactionError::Abort)?;
                        if old != kind {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::RevealConflict {
                                    round: entry.round,
                                    attempt: entry.attempt,
                                    member,
                                    requested: kind,
                                },
                            ));
                        }
                    }
                    t.insert(&key, &[encode_kind(kind)])?;
                }
                Ok(())
            })
            .map_err(tx_err("cannot record a reveal"))?;
        self.flush()?;
        Ok(RevealReceipt {
            round: entry.round,
            attempt: entry.attempt,
            revealed: seen.into_iter().collect(),
        })
    }

    /// Everything recorded as revealed in `round`, one entry per attempt.
    pub fn reveal_entries(&self, round: u64) -> Result<Vec<RevealEntry>> {
        let mut by_attempt: BTreeMap<u32, Vec<(MemberId, ShareKind)>> = BTreeMap::new();
        for item in self.reveals.scan_prefix(round.to_be_bytes()) {
            let (k, v) = item.map_err(db_err("cannot read reveals"))?;
            let key: [u8; 14] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                tree: "reveals",
                key: hex::encode(&k),
                reason: format!("key of {} bytes, expected 14", k.len()),
            })?;
            let attempt = u32::from_be_bytes(key[8..12].try_into().expect("4 bytes"));
            let member = MemberId(u16::from_be_bytes(key[12..14].try_into().expect("2 bytes")));
            by_attempt
                .entry(attempt)
                .or_default()
                .push((member, decode_kind(&key, &v)?));
        }
        Ok(by_attempt
            .into_iter()
            .map(|(attempt, revealed)| RevealEntry {
                round,
                attempt,
                revealed,
            })
            .collect())
    }

    /// The protocol's reveal record of `round`, rebuilt from the store, to
    /// hand to a restarted round.
    pub fn reveal_record(&self, round: u64) -> Result<RevealRecord> {
        let entries = self.reveal_entries(round)?;
        RevealRecord::from_entries(round, &entries).map_err(|c| StoreError::Corrupt {
            tree: "reveals",
            key: format!("round {round} attempt {} member {}", c.attempt, c.member),
            reason: "both kinds of share recorded".into(),
        })
    }

    // ----- metrics and privacy -----

    /// Records (or replaces) the metrics of a round, flushed.
    pub fn record_metrics(&self, entry: &MetricsEntry) -> Result<()> {
        if entry.values.len() > MAX_METRICS_PER_ROUND {
            return Err(StoreError::Invalid(format!(
                "{} metrics for one round, at most {MAX_METRICS_PER_ROUND}",
                entry.values.len()
            )));
        }
        if let Some((name, v)) = entry.values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(StoreError::Invalid(format!(
                "metric {name:?} is {v}, not a finite number"
            )));
        }
        let bytes = encode_record(entry)?;
        self.metrics
            .insert(entry.round.to_be_bytes(), bytes)
            .map_err(db_err("cannot write metrics"))?;
        self.flush()
    }

    /// The metrics of the last `limit` rounds, oldest first.
    pub fn metrics_history(&self, limit: usize) -> Result<Vec<MetricsEntry>> {
        let mut out = Vec::with_capacity(limit.min(64));
        for item in self.metrics.iter().rev().take(limit) {
            let (k, v) = item.map_err(db_err("cannot read metrics"))?;
            let key_text = hex::encode(&k);
            let entry: MetricsEntry = decode_record("metrics", &key_text, &v)?;
            if k.as_ref() != entry.round.to_be_bytes() {
                return Err(StoreError::Corrupt {
                    tree: "metrics",
                    key: key_text,
                    reason: format!(
                        "holds round {}, which belongs under another key",
                        entry.round
                    ),
                });
            }
            out.push(entry);
        }
        out.reverse();
        Ok(out)
    }

    /// Stores the privacy budget spent so far (the accountant's total),
    /// flushed.
    pub fn set_privacy_spent(&self, spent: PrivacySpent) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(spent.epsilon) || !ok(spent.delta) || spent.delta >= 1.0 {
            return Err(StoreError::Invalid(format!(
                "privacy budget epsilon {} delta {} is not a finite epsilon >= 0 with 0 <= delta < 1",
                spent.epsilon, spent.delta
            )));
        }
        self.meta
            .insert(KEY_PRIVACY, encode_record(&spent)?)
            .map_err(db_err("cannot write the privacy budget"))?;
        self.flush()
    }

    /// Stores the privacy accountant's state (`accountant`, its JSON) and
    /// the budget it reports spent, together and flushed: after a crash
    /// both are from the same moment.
    pub fn set_privacy_accounting(&self, spent: PrivacySpent, accountant: &[u8]) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(spent.epsilon) || !ok(spent.delta) || spent.delta >= 1.0 {
            return Err(StoreError::Invalid(format!(
                "privacy budget epsilon {} delta {} is not a finite epsilon >= 0 with 0 <= delta < 1",
                spent.epsilon, spent.delta
            )));
        }
        if accountant.len() > MAX_RECORD_BYTES {
            return Err(StoreError::Invalid(format!(
                "privacy accountant of {} bytes",
                accountant.len()
            )));
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_PRIVACY, encode_record(&spent)?);
        batch.insert(KEY_ACCOUNTANT, accountant);
        self.meta
            .apply_batch(batch)
            .map_err(db_err("cannot write the privacy accounting"))?;
        self.flush()
    }

    /// The privacy accountant's state as stored by
    /// [`Store::set_privacy_accounting`], if any.
    pub fn privacy_accountant(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(KEY_ACCOUNTANT)
            .map_err(db_err("cannot read the privacy accountant"))?
            .map(|v| v.to_vec()))
    }

    /// The privacy budget spent so far (zero before any is recorded).
    pub fn privacy_spent(&self) -> Result<PrivacySpent> {
        match self
            .meta
            .get(KEY_PRIVACY)
            .map_err(db_err("cannot read the privacy budget"))?
        {
            None => Ok(PrivacySpent::default()),
            Some(v) => decode_record("meta", "privacy_spent", &v),
        }
    }
}

/// A key of `tree` that must be a model hash.
fn hash_key(tree: &'static str, k: &[u8]) -> Result<ModelHash> {
    Ok(ModelHash(k.try_into().map_err(|_| {
        StoreError::Corrupt {
            tree,
            key: hex::encode(k),
            reason: "key is not a 32-byte hash".into(),
        }
    })?))
}

fn journal_key(round: u64, attempt: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&round.to_be_bytes());
    k[8..].copy_from_slice(&attempt.to_be_bytes());
    k
}

fn reveal_key(round: u64, attempt: u32, member: MemberId) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..12].copy_from_slice(&journal_key(round, attempt));
    k[12..].copy_from_slice(&member.0.to_be_bytes());
    k
}

fn encode_kind(kind: ShareKind) -> u8 {
    match kind {
        ShareKind::SelfMask => 0,
        ShareKind::MaskKey => 1,
    }
}

fn decode_kind(key: &[u8], v: &[u8]) -> Result<ShareKind> {
    match v {
        [0] => Ok(ShareKind::SelfMask),
        [1] => Ok(ShareKind::MaskKey),
        _ => Err(StoreError::Corrupt {
            tree: "reveals",
            key: hex::encode(key),
            reason: format!("value of {} bytes is not a share kind", v.len()),
        }),
    }
}

fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StoreError::Invalid(format!("record does not encode: {e}")))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::Invalid(format!(
            "record of {} bytes is larger than the {MAX_RECORD_BYTES}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn decode_record<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree,
        key: key.to_owned(),
        reason,
    };
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(corrupt(format!(
            "{} bytes, over the record limit",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("does not decode: {e}")))
}

/// Asks the kernel to drop the cached pages of a file that is on disk.
///
/// A blob is written once and read rarely (by a member that catches up, or
/// at start), so caching it only grows the page cache by a model per round.
/// Measured on this project's machines (virtual, two cores): writing and
/// syncing ten 4 MB files cost 140-180 ms of CPU while the page cache kept
/// growing, since each write took fresh memory; 13-25 ms when the pages of
/// the last file were dropped and reused. The hint is advisory: a failure
/// changes nothing but that.
fn drop_cached(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: the descriptor is open for the duration of the call;
        // posix_fadvise reads no memory of ours.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Creates `dir` (and parents) with mode 0700 if missing. An existing
/// directory is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_round_then_attempt_then_member() {
        assert!(journal_key(1, 9) < journal_key(2, 0));
        assert!(journal_key(2, 0) < journal_key(2, 1));
        assert!(reveal_key(1, 0, MemberId(300)) < reveal_key(1, 1, MemberId(0)));
        assert!(journal_key(255, 0) < journal_key(256, 0));
    }

    #[test]
    fn model_hash_text_roundtrip() {
        let h = ModelHash::of(b"abc");
        assert_eq!(h.to_hex(), blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(h.to_hex().parse::<ModelHash>().unwrap(), h);
        assert!("abc".parse::<ModelHash>().is_err());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<ModelHash>(&json).unwrap(), h);
    }

    #[test]
    fn kinds_decode_or_fail() {
        for k in [ShareKind::SelfMask, ShareKind::MaskKey] {
            assert_eq!(decode_kind(b"k", &[encode_kind(k)]).unwrap(), k);
        }
        assert!(decode_kind(b"k", &[2]).is_err());
        assert!(decode_kind(b"k", &[]).is_err());
    }
}
