//! `primiad status` against a control server running in this process with
//! a made-up snapshot, through the real binary; and with no daemon at all.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};

use primiad::control::{
    ControlServer, MAX_REQUEST_BYTES, ModelStatus, RoundStatus, SNAPSHOT_VERSION, StatusSnapshot,
    query_status,
};
use primiad::store::{
    AttemptOutcome, JournalEntry, MetricsEntry, ModelHash, PhaseTiming, PrivacySpent, StoreUsage,
};
use tokio::sync::{oneshot, watch};

fn snapshot(storage: &Path) -> StatusSnapshot {
    StatusSnapshot {
        version: SNAPSHOT_VERSION,
        name: "st-mary".into(),
        peer_id: "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA".into(),
        consortium: "paediatric-xray".into(),
        members: 4,
        threshold: 3,
        connected: vec!["alpha".into(), "beta".into()],
        missing: vec!["gamma".into()],
        round: Some(RoundStatus {
            round: 12,
            attempt: 1,
            phase: "masked-input".into(),
            leader: "beta".into(),
            started_unix_ms: 1_700_000_000_000,
        }),
        latest_model: Some(ModelStatus {
            hash: ModelHash::of(b"round 11 model"),
            round: 11,
            created_unix_ms: 1_700_000_000_000,
            parameter_count: 1_000_000,
        }),
        recent_attempts: vec![
            JournalEntry {
                round: 12,
                attempt: 0,
                leader: "gamma".into(),
                outcome: AttemptOutcome::Failed {
                    reason: "leader silent in share-keys".into(),
                },
                participants: vec![],
                dropouts: vec!["gamma".into()],
                started_unix_ms: 1_699_999_990_000,
                duration_ms: 30_000,
                phases: vec![],
                model: None,
            },
            JournalEntry {
                round: 11,
                attempt: 0,
                leader: "alpha".into(),
                outcome: AttemptOutcome::Completed,
                participants: vec!["alpha".into(), "beta".into(), "st-mary".into()],
                dropouts: vec![],
                started_unix_ms: 1_699_999_900_000,
                duration_ms: 1_530,
                phases: vec![
                    PhaseTiming {
                        phase: "advertise-keys".into(),
                        ms: 40,
                    },
                    PhaseTiming {
                        phase: "unmask".into(),
                        ms: 310,
                    },
                ],
                model: Some(ModelHash::of(b"round 11 model")),
            },
        ],
        metrics: vec![MetricsEntry {
            round: 11,
            recorded_unix_ms: 1_700_000_000_000,
            values: [
                ("val_auc".to_string(), 0.9321),
                ("val_loss".to_string(), 0.25),
            ]
            .into_iter()
            .collect(),
        }],
        privacy_spent: PrivacySpent {
            epsilon: 2.5,
            delta: 1e-5,
        },
        storage_dir: storage.display().to_string(),
        stored: StoreUsage {
            models: 3,
            model_bytes: 12_000_000,
            database_bytes: 1_572_864,
        },
        started_unix_ms: 1_699_999_000_000,
        updated_unix_ms: 1_700_000_001_000,
    }
}

/// A control server on `dir`, stopped when the returned guard drops.
struct Server {
    rt: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    tx: watch::Sender<StatusSnapshot>,
}

impl Server {
    fn start(dir: &Path, snap: StatusSnapshot) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = watch::channel(snap);
        let server = ControlServer::bind(dir, rx).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = rt.spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            rt,
            stop: Some(stop),
            done: Some(done),
            tx,
        }
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = self.done.take().unwrap();
        self.rt.block_on(done).unwrap();
    }
}

fn status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_primiad"))
        .arg("status")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn status_prints_summary_and_json_of_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(dir.path());
    let server = Server::start(dir.path(), snap.clone());
    let sock = dir.path().join("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Nothing left of the private bind directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["control.sock"]);

    let d = dir.path().to_str().unwrap();
    let out = status(&["--storage-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    for piece in [
        "st-mary (12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA)",
        "paediatric-xray (4 members, threshold 3)",
        "connected   2 of 3: alpha, beta",
        "missing     gamma",
        "round       12 attempt 1, phase masked-input, leader beta",
        &ModelHash::of(b"round 11 model").to_hex(),
        "from round 11, 1000000 parameters, made 2023-11-14 22:13:20 UTC",
        "epsilon 2.5",
        "metrics     model of round 11 on local validation data: val_auc 0.9321, val_loss 0.2500",
        &format!("storage     {d} (3 models, 11.4 MiB; database 1.5 MiB)"),
        "round 12 attempt 0: failed: leader silent in share-keys, leader gamma, 0 participants, 1 dropouts, 30.0 s",
        "dropped: gamma",
        "round 11 attempt 0: completed, leader alpha, 3 participants, 0 dropouts, 1.5 s (advertise-keys 40 ms, unmask 310 ms)",
    ] {
        assert!(
            summary.contains(piece),
            "summary lacks {piece:?}:\n{summary}"
        );
    }

    // --json is the snapshot, field for field, under stable names.
    let out = status(&["--data-dir", d, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        serde_json::from_value::<StatusSnapshot>(json.clone()).unwrap(),
        snap
    );
    assert_eq!(json["version"], 1);
    assert_eq!(json["round"]["phase"], "masked-input");
    assert_eq!(
        json["latest_model"]["hash"],
        ModelHash::of(b"round 11 model").to_hex()
    );
    assert_eq!(json["recent_attempts"][0]["outcome"]["status"], "failed");
    assert_eq!(json["recent_attempts"][1]["outcome"]["status"], "completed");
    assert_eq!(json["missing"][0], "gamma");
    assert_eq!(json["metrics"][0]["round"], 11);
    assert_eq!(json["metrics"][0]["values"]["val_auc"], 0.9321);
    assert_eq!(json["stored"]["models"], 3);
    assert_eq!(json["stored"]["model_bytes"], 12_000_000);
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "connected",
            "consortium",
            "latest_model",
            "members",
            "metrics",
            "missing",
            "name",
            "peer_id",
            "privacy_spent",
            "recent_attempts",
            "round",
            "started_unix_ms",
            "storage_dir",
            "stored",
            "threshold",
            "updated_unix_ms",
            "version"
        ]
    );

    // The driver's updates show at the next query.
    let mut next = snap.clone();
    next.round = None;
    next.connected.push("gamma".into());
    next.missing.clear();
    server.tx.send(next.clone()).unwrap();
    let out = status(&["--storage-dir", d]);
    let summary = text(&out.stdout);
    assert!(
        summary.contains("round       none in progress"),
        "{summary}"
    );
    assert!(summary.contains("missing     none"), "{summary}");
    assert_eq!(
        query_status(dir.path(), std::time::Duration::from_secs(5)).unwrap(),
        next
    );

    // Through a config file naming the storage directory.
    std::fs::write(
        dir.path().join("node.toml"),
        "roster = \"r.toml\"\nkey = \"k\"\nstorage_dir = \".\"\n[training]\nmode = \"test-vectors\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("node.toml");
    let out = status(&["--config", cfg.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A second daemon on the same directory is refused.
    let (_tx, rx) = watch::channel(snap.clone());
    let err = ControlServer::bind(dir.path(), rx).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");

    server.stop();
    assert!(!sock.exists(), "socket left after shutdown");
    let out = status(&["--storage-dir", d]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn bad_requests_get_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), snapshot(dir.path()));
    let sock = dir.path().join("control.sock");
    let ask = |req: &[u8]| -> String {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(req).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        line
    };
    let r = ask(b"{\"request\":\"shutdown\"}\n");
    assert!(
        r.contains("\"ok\":false") && r.contains("unknown request"),
        "{r}"
    );
    let r = ask(b"not json\n");
    assert!(r.contains("malformed request"), "{r}");
    let mut huge = vec![b'x'; MAX_REQUEST_BYTES * 4];
    huge.push(b'\n');
    let r = ask(&huge);
    assert!(r.contains("longer than"), "{r}");
    // Two requests on one connection get two answers.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"request\":\"status\"}\n{\"request\":\"status\"}\n")
        .unwrap();
    let mut r = BufReader::new(&s);
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"ok\":true,\"status\":{"), "{line}");
    }
    server.stop();
}

#[test]
fn status_without_a_daemon_says_so_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = status(&["--storage-dir", d]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("no primiad is running") && err.contains(d),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // A socket file left by a daemon that was killed: still "not running".
    let stale = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = status(&["--storage-dir", d, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("stale"), "{}", text(&out.stderr));

    // ...and a new daemon replaces the stale socket.
    let server = Server::start(dir.path(), snapshot(dir.path()));
    assert!(status(&["--storage-dir", d]).status.success());
    server.stop();

    // A config that does not exist is an error (1), named.
    let out = status(&["--config", "/nonexistent/node.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/node.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_document_with_fields_added_later_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(dir.path());
    let mut json = serde_json::to_value(&snap).unwrap();
    json["uptime_reason"] = "added by a newer daemon".into();
    json["stored"]["blob_files"] = 3.into();
    json["latest_model"]["note"] = "also new".into();
    // The entries of the lists are the store's records; they too may grow.
    json["recent_attempts"][0]["retries"] = 2.into();
    json["recent_attempts"][0]["outcome"]["detail"] = "new".into();
    json["recent_attempts"][1]["phases"][0]["cpu_ms"] = 12.into();
    json["metrics"][0]["source"] = "validation".into();
    json["privacy_spent"]["accountant"] = "rdp".into();
    let read: StatusSnapshot = serde_json::from_value(json).expect("fields may be added");
    assert_eq!(read, snap);
}
