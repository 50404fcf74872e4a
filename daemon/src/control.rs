//! The local control socket: `control.sock` in the storage directory, mode
//! 0600, speaking newline-delimited JSON, through which `primiad status`
//! asks a running daemon what it is doing.
//!
//! # Protocol
//!
//! One request per line, at most [`MAX_REQUEST_BYTES`] bytes; one response
//! line per request:
//!
//! ```text
//! -> {"request":"status"}
//! <- {"ok":true,"status":{...StatusSnapshot...}}
//! -> {"request":"frobnicate"}
//! <- {"ok":false,"error":"unknown request ..."}
//! ```
//!
//! The status document ([`StatusSnapshot`], version [`SNAPSHOT_VERSION`])
//! looks like this; times are milliseconds since the Unix epoch, `round` and
//! `latest_model` are `null` when there is none, and `recent_attempts` are
//! the round journal's entries ([`JournalEntry`]), newest first:
//!
//! ```text
//! {"version":1,"name":"st-mary","peer_id":"12D3KooW...","consortium":"paediatric-xray",
//!  "members":4,"threshold":3,"connected":["alpha","beta"],"missing":["gamma"],
//!  "round":{"round":12,"attempt":1,"phase":"masked-input","leader":"beta","started_unix_ms":...},
//!  "latest_model":{"hash":"<64 hex>","round":11,"created_unix_ms":...,"parameter_count":1000000},
//!  "recent_attempts":[{"round":11,"attempt":0,"leader":"alpha","outcome":{"status":"completed"},
//!    "participants":["alpha","beta","st-mary"],"dropouts":[],"started_unix_ms":...,
//!    "duration_ms":1530,"phases":[{"phase":"advertise-keys","ms":40}],"model":"<64 hex>"}],
//!  "privacy_spent":{"epsilon":2.5,"delta":1e-5},"storage_dir":"/var/lib/primia",
//!  "stored":{"models":20,"model_bytes":80000640,"database_bytes":1572864},
//!  "started_unix_ms":...,"updated_unix_ms":...}
//! ```
//!
//! A failed attempt's outcome is `{"status":"failed","reason":"..."}`.
//!
//! The daemon's driver owns a [`tokio::sync::watch::Sender`] of
//! [`StatusSnapshot`] and updates it as rounds progress; the server only
//! reads the latest value, so a slow status client never holds up a round.
//!
//! # Why the socket is safe to expose
//!
//! Only the daemon's user can connect: the socket is bound inside a fresh
//! 0700 directory, set to 0600 and only then moved into the storage
//! directory, so there is no moment in which another user could connect.
//! It answers read-only questions about state that an operator may see; it
//! never shows keys, shares or updates.

use std::fmt;
use std::future::Future;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, watch};

use crate::store::{JournalEntry, MetricsEntry, ModelHash, PrivacySpent, StoreUsage};

/// The socket's file name in the storage directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line, newline included.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// Longest response line a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Version of the [`StatusSnapshot`] document. Fields may be added without
/// a change; a field removed or changed in meaning bumps it.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Clients served at once; more wait for a slot.
const MAX_CLIENTS: usize = 16;

/// A client that sends nothing for this long is dropped.
const CLIENT_IDLE: Duration = Duration::from_secs(10);

/// What went wrong with the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens on the socket.
    #[error("no primiad is running with storage directory {} (no one listens on {}): {reason}", dir.display(), path.display())]
    NotRunning {
        /// The storage directory.
        dir: PathBuf,
        /// The socket.
        path: PathBuf,
        /// Why we think so.
        reason: String,
    },
    /// Another daemon already serves this storage directory.
    #[error("control socket {}: another primiad is already running on this storage directory", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The socket could not be set up or used.
    #[error("control socket {}: {action}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The daemon's answer was not what the protocol says.
    #[error("control socket {}: bad response: {reason}", path.display())]
    BadResponse {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("control socket {}: the daemon says: {message}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Its message.
        message: String,
    },
}

/// What `primiad status` shows: a stable JSON document (see the field docs;
/// times are milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// This member's name in the roster.
    pub name: String,
    /// This member's libp2p peer id (base58).
    pub peer_id: String,
    /// The consortium id.
    pub consortium: String,
    /// Members in the roster, this one included.
    pub members: usize,
    /// The threshold t.
    pub threshold: usize,
    /// Names of the other members with a live connection, sorted.
    pub connected: Vec<String>,
    /// Names of the other members without one, sorted.
    pub missing: Vec<String>,
    /// The round in progress; `null` between rounds.
    pub round: Option<RoundStatus>,
    /// The latest global model; `null` before the first.
    pub latest_model: Option<ModelStatus>,
    /// The last attempts, newest first (the store's journal entries).
    pub recent_attempts: Vec<JournalEntry>,
    /// This member's latest metrics, newest first: each model measured on
    /// the member's own validation data (`val_loss`, `val_acc`, `val_auc`,
    /// ...) under the round that made it. Empty with test vectors.
    pub metrics: Vec<MetricsEntry>,
    /// Privacy budget spent so far.
    pub privacy_spent: PrivacySpent,
    /// The storage directory.
    pub storage_dir: String,
    /// What the storage directory holds: models kept, their size, the
    /// database's size. Zero in a document from a daemon that predates it.
    #[serde(default)]
    pub stored: StoreUsage,
    /// When the daemon started.
    pub started_unix_ms: u64,
    /// When this snapshot was last updated.
    pub updated_unix_ms: u64,
}

/// The round in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStatus {
    /// The round number.
    pub round: u64,
    /// The attempt, from 0.
    pub attempt: u32,
    /// What this member is doing: `training`, or a protocol phase
    /// (`advertise-keys`, `share-keys`, `masked-input`, `consistency-check`,
    /// `unmask`, `outcome`, see [`phase_name`]).
    pub phase: String,
    /// Name of the attempt's leader.
    pub leader: String,
    /// When the round started.
    pub started_unix_ms: u64,
}

/// The latest global model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Its blake3 hash (64 hex digits).
    pub hash: ModelHash,
    /// The round that made it.
    pub round: u64,
    /// When it was made.
    pub created_unix_ms: u64,
    /// Number of parameters.
    pub parameter_count: u64,
}

/// The name a protocol phase has in [`RoundStatus::phase`].
pub fn phase_name(phase: primia_protocol::Phase) -> &'static str {
    use primia_protocol::Phase;
    match phase {
        Phase::AdvertiseKeys => "advertise-keys",
        Phase::ShareKeys => "share-keys",
        Phase::MaskedInput => "masked-input",
        Phase::ConsistencyCheck => "consistency-check",
        Phase::Unmask => "unmask",
        Phase::Outcome => "outcome",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    request: String,
}

#[derive(Serialize, Deserialize)]
struct Response<T> {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The control socket, bound and waiting to be served.
pub struct ControlServer {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    status: watch::Receiver<StatusSnapshot>,
}

impl fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The socket path of a storage directory.
pub fn socket_path(storage_dir: &Path) -> PathBuf {
    storage_dir.join(SOCKET_NAME)
}

impl ControlServer {
    /// Binds `control.sock` in `storage_dir` (which must exist) with mode
    /// 0600. A socket file left by a daemon that died is replaced; a socket
    /// that answers means another daemon runs there and is an error.
    pub fn bind(
        storage_dir: &Path,
        status: watch::Receiver<StatusSnapshot>,
    ) -> Result<Self, ControlError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let path = socket_path(storage_dir);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| ControlError::Io {
                path,
                action,
                source,
            }
        };
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => return Err(ControlError::InUse { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Refused (stale socket) or not a socket: replaced below by the
            // rename, which fails cleanly on a directory.
            Err(_) => {}
        }
        let mut nonce = [0u8; 8];
        {
            use rand::TryRngCore as _;
            rand::rngs::OsRng
                .try_fill_bytes(&mut nonce)
                .map_err(|e| ControlError::Io {
                    path: path.clone(),
                    action: "cannot draw a temporary name",
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        let private = storage_dir.join(format!(".control-{}", hex::encode(nonce)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io("cannot create a private directory for binding"))?;
        let tmp = private.join(SOCKET_NAME);
        let result = (|| {
            let listener =
                std::os::unix::net::UnixListener::bind(&tmp).map_err(io("cannot bind"))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(io("cannot set mode 0600"))?;
            std::fs::rename(&tmp, &path).map_err(io("cannot move the socket into place"))?;
            listener
                .set_nonblocking(true)
                .map_err(io("cannot make the socket non-blocking"))?;
            Ok(listener)
        })();
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir(&private);
        Ok(Self {
            path,
            listener: result?,
            status,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until `shutdown` completes, then removes the socket
    /// file. Must run inside a tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ControlError> {
        let listener = tokio::net::UnixListener::from_std(self.listener).map_err(|source| {
            ControlError::Io {
                path: self.path.clone(),
                action: "cannot register the socket with the runtime",
                source,
            }
        })?;
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break Ok(());
                        };
                        let status = self.status.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_client(stream, status).await {
                                tracing::debug!(error = %e, "control client dropped");
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin.
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        };
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

async fn serve_client(
    stream: tokio::net::UnixStream,
    status: watch::Receiver<StatusSnapshot>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bound the line: read at most MAX_REQUEST_BYTES + 1 bytes of it.
        let bounded = (&mut read).take(MAX_REQUEST_BYTES as u64 + 1);
        let n = match tokio::time::timeout(CLIENT_IDLE, read_line(bounded, &mut line)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let (reply, close) = if line.last() != Some(&b'\n') {
            if line.len() > MAX_REQUEST_BYTES {
                (
                    error_response(format!("request longer than {MAX_REQUEST_BYTES} bytes")),
                    true,
                )
            } else {
                // The client closed mid-line.
                return Ok(());
            }
        } else {
            (answer(&line, &status), false)
        };
        write.write_all(&reply).await?;
        write.flush().await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_line(
    mut r: impl tokio::io::AsyncBufRead + Unpin,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    r.read_until(b'\n', line).await
}

fn error_response(message: String) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Response::<()> {
        ok: false,
        status: None,
        error: Some(message),
    })
    .expect("a response serializes");
    out.push(b'\n');
    out
}

fn answer(line: &[u8], status: &watch::Receiver<StatusSnapshot>) -> Vec<u8> {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return error_response(format!("malformed request: {e}")),
    };
    match request.request.as_str() {
        "status" => {
            let snapshot = status.borrow().clone();
            let mut out = serde_json::to_vec(&Response {
                ok: true,
                status: Some(snapshot),
                error: None,
            })
            .expect("a snapshot serializes");
            out.push(b'\n');
            out
        }
        other => error_response(format!(
            "unknown request {:?} (known: \"status\")",
            other.chars().take(64).collect::<String>()
        )),
    }
}

/// Asks the daemon serving `storage_dir` for its status, as the raw JSON
/// document (so fields added by a newer daemon survive `--json`).
pub fn query_status_json(
    storage_dir: &Path,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    use std::os::unix::net::UnixStream;
    let path = socket_path(storage_dir);
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| ControlError::Io {
            path,
            action,
            source,
        }
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                dir: storage_dir.to_owned(),
                path,
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "the socket does not exist".into()
                } else {
                    "connection refused (a stale socket of a stopped daemon)".into()
                },
            });
        }
        Err(e) => return Err(io("cannot connect")(e)),
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("cannot set a timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("cannot set a timeout"))?;
    stream
        .write_all(b"{\"request\":\"status\"}\n")
        .map_err(io("cannot send the request"))?;
    let mut line = Vec::new();
    BufReader::new((&stream).take(MAX_RESPONSE_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(io("cannot read the response"))?;
    let bad = |reason: String| ControlError::BadResponse {
        path: path.clone(),
        reason,
    };
    if line.len() > MAX_RESPONSE_BYTES {
        return Err(bad(format!("longer than {MAX_RESPONSE_BYTES} bytes")));
    }
    if line.last() != Some(&b'\n') {
        return Err(bad(
            "the daemon closed the connection without an answer".into()
        ));
    }
    let response: Response<serde_json::Value> =
        serde_json::from_slice(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
    match (response.ok, response.status, response.error) {
        (true, Some(status), _) => Ok(status),
        (false, _, Some(message)) => Err(ControlError::Refused { path, message }),
        _ => Err(bad("neither a status nor an error".into())),
    }
}

/// Asks the daemon serving `storage_dir` for its status.
pub fn query_status(storage_dir: &Path, timeout: Duration) -> Result<StatusSnapshot, ControlError> {
    let value = query_status_json(storage_dir, timeout)?;
    serde_json::from_value(value).map_err(|e| ControlError::BadResponse {
        path: socket_path(storage_dir),
        reason: format!("not a status document: {e}"),
    })
}
