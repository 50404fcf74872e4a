//! Shared helpers for tests across real daemons: a local consortium of
//! `primiad` processes with generated keys, roster and configs on
//! 127.0.0.1, started, killed and restarted at will, and their status read
//! over the control socket or through `primiad status --json`.
//!
//! The helpers take the path of the `primiad` binary (a test in the daemon
//! crate gets it from `env!("CARGO_BIN_EXE_primiad")`), so they build
//! nothing themselves. Every wait has a deadline and fails with the
//! members' logs attached.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Settings of a test consortium; every member gets the same.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of members.
    pub members: usize,
    /// Model parameters (the test vector length).
    pub parameters: usize,
    /// Rounds each daemon runs before it stops (0: until stopped).
    pub rounds: u64,
    /// The leader's collection window.
    pub collect_ms: u64,
    /// A member's patience with a silent leader.
    pub leader_silence_ms: u64,
    /// Attempts per round.
    pub max_attempts: u32,
    /// Pause between rounds.
    pub pause_ms: u64,
    /// Models each member keeps (0: all).
    pub keep_models: usize,
}

impl Settings {
    /// Fast settings for `members` members: tiny vectors, short deadlines.
    pub fn fast(members: usize) -> Self {
        Self {
            members,
            parameters: 16,
            rounds: 0,
            collect_ms: 400,
            leader_silence_ms: 1200,
            max_attempts: 8,
            pause_ms: 200,
            // Small, so that every multi-round test prunes.
            keep_models: 2,
        }
    }
}

/// One member of a [`Consortium`].
#[derive(Debug)]
pub struct Member {
    /// Its name in the roster (`m0`, `m1`, ...).
    pub name: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its storage directory (database and control socket).
    pub storage: PathBuf,
    /// Its listen port on 127.0.0.1.
    pub port: u16,
    /// Its log file (the daemon's stderr, every start appended).
    pub log: PathBuf,
    child: Option<Child>,
}

/// A local consortium of real `primiad` processes.
#[derive(Debug)]
pub struct Consortium {
    /// Keeps the files until the consortium is dropped.
    pub dir: tempfile::TempDir,
    /// The `primiad` binary.
    pub bin: PathBuf,
    /// The roster file.
    pub roster: PathBuf,
    /// The members, in roster-file order.
    pub members: Vec<Member>,
    /// The consortium id.
    pub consortium: String,
}

/// A free TCP port on 127.0.0.1 (bound and released, so it is free unless
/// another process grabs it in between).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Consortium {
    /// Generates keys with `primiad keygen`, picks free ports, and writes
    /// the roster and one config per member. Starts nothing.
    pub fn new(bin: impl Into<PathBuf>, settings: &Settings) -> Self {
        let bin = bin.into();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let consortium = "test-consortium".to_owned();
        let mut members = Vec::with_capacity(settings.members);
        for i in 0..settings.members {
            let name = format!("m{i}");
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).expect("member directory");
            let key = home.join("identity.key");
            let out = Command::new(&bin)
                .arg("keygen")
                .arg("--out")
                .arg(&key)
                .output()
                .expect("run primiad keygen");
            assert!(
                out.status.success(),
                "primiad keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let peer_id = String::from_utf8(out.stdout)
                .expect("peer id is text")
                .trim()
                .to_owned();
            let port = free_port();
            let config = home.join("primiad.toml");
            let storage = home.join("state");
            let text = format!(
                r#"roster = "../roster.toml"
key = "identity.key"
storage_dir = "state"
keep_models = {keep}

[network]
listen = ["/ip4/127.0.0.1/tcp/{port}"]

[round]
collect_ms = {collect}
leader_silence_ms = {silence}
max_attempts = {attempts}
rounds = {rounds}
pause_ms = {pause}

[training]
mode = "test-vectors"
vector_len = {params}
"#,
                collect = settings.collect_ms,
                silence = settings.leader_silence_ms,
                attempts = settings.max_attempts,
                rounds = settings.rounds,
                pause = settings.pause_ms,
                params = settings.parameters,
                keep = settings.keep_models,
            );
            std::fs::write(&config, text).expect("write config");
            members.push(Member {
                log: home.join("primiad.log"),
                name,
                peer_id,
                config,
                storage,
                port,
                child: None,
            });
        }
        let mut roster = format!("consortium = \"{consortium}\"\nthreshold = \"majority\"\n");
        for m in &members {
            let _ = write!(
                roster,
                "\n[[member]]\nname = \"{}\"\npeer_id = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{}\"]\n",
                m.name, m.peer_id, m.port
            );
        }
        let roster_path = dir.path().join("roster.toml");
        std::fs::write(&roster_path, roster).expect("write roster");
        Self {
            dir,
            bin,
            roster: roster_path,
            members,
            consortium,
        }
    }

    /// Starts member `i` (`primiad run --config ...`), its stderr appended
    /// to its log.
    pub fn start(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} is already running", m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open log");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&m.config)
            .env(
                "RUST_LOG",
                std::env::var("PRIMIA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // As a service would run it: no terminal, and no request for
            // plain output beyond that.
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn primiad run");
        m.child = Some(child);
    }

    /// Starts every member.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            self.start(i);
        }
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` with SIGTERM and waits for it to exit (SIGKILL
    /// after `timeout`). Returns whether it exited successfully by itself.
    pub fn stop(&mut self, i: usize, timeout: Duration) -> bool {
        let Some(mut child) = self.members[i].child.take() else {
            return false;
        };
        // SAFETY: `kill` has no memory effects; the pid is our own child,
        // not yet reaped, so it names that process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Waits until member `i` exits by itself; returns whether it exited
    /// successfully, or panics after `timeout`.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.members[i].child.as_mut().expect("member is running");
            if let Some(status) = child.try_wait().expect("wait for member") {
                self.members[i].child = None;
                return status.success();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether member `i` has a live process.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Member `i`'s status document from its control socket, or `None`
    /// when it does not answer (not running, not up yet).
    pub fn status(&self, i: usize) -> Option<Value> {
        query_socket(&self.members[i].storage.join("control.sock")).ok()
    }

    /// Member `i`'s status through `primiad status --json --config ...`.
    /// Panics if the command fails.
    pub fn status_cli(&self, i: usize) -> Value {
        let out = Command::new(&self.bin)
            .arg("status")
            .arg("--json")
            .arg("--config")
            .arg(&self.members[i].config)
            .output()
            .expect("run primiad status");
        assert!(
            out.status.success(),
            "primiad status --json failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// Runs `primiad status` for member `i` and returns its exit code.
    pub fn status_exit_code(&self, i: usize) -> Option<i32> {
        Command::new(&self.bin)
            .arg("status")
            .arg("--config")
            .arg(&self.members[i].config)
            .output()
            .expect("run primiad status")
            .status
            .code()
    }

    /// Polls every 10 ms until `cond` holds; panics with every member's log
    /// after `timeout`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The latest model's round in member `i`'s status.
    pub fn model_round(&self, i: usize) -> Option<u64> {
        self.status(i)?.pointer("/latest_model/round")?.as_u64()
    }

    /// The latest model's hash in member `i`'s status.
    pub fn model_hash(&self, i: usize) -> Option<String> {
        Some(
            self.status(i)?
                .pointer("/latest_model/hash")?
                .as_str()?
                .to_owned(),
        )
    }

    /// Every member's log, for failure messages (the last 60 lines each).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            let _ = writeln!(
                out,
                "---- {} ({}) ----\n{}",
                m.name,
                m.log.display(),
                tail.join("\n")
            );
        }
        out
    }
}

impl Drop for Consortium {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // For reading what the daemons did in a passing test too.
        if std::env::var("PRIMIA_TEST_SHOW_LOGS").is_ok_and(|v| v == "1") {
            eprintln!("{}", self.logs());
        }
    }
}

/// One status request over a control socket.
pub fn query_socket(path: &Path) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"{\"request\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)?;
    v.get("status")
        .cloned()
        .ok_or_else(|| std::io::Error::other(format!("no status in {line}")))
}

/// Whether `PRIMIA_SLOW_TESTS=1`; otherwise prints that `test` skips.
pub fn slow_tests_enabled(test: &str) -> bool {
    if std::env::var("PRIMIA_SLOW_TESTS").is_ok_and(|v| v == "1") {
        true
    } else {
        eprintln!("skipping {test}: slow test, set PRIMIA_SLOW_TESTS=1 to run it");
        false
    }
}

/// `name` in the shared data directory: `PRIMIA_DATA_DIR`, else
/// `../shared/data` beside the workspace. Missing: a panic under
/// `PRIMIA_REQUIRE_DATA=1` (CI must not skip), else `None` with a message.
pub fn shared_data_file(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let file = dir.join(name);
    if file.is_file() {
        return Some(file);
    }
    if std::env::var("PRIMIA_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("PRIMIA_REQUIRE_DATA=1 but {} has no {name}", dir.display());
    }
    eprintln!("skipping: {name} not found in {}", dir.display());
    None
}
