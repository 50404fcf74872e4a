//! Wall time of one whole round between real nodes on loopback, secure
//! against plain sums over the same transport.
//!
//! `cargo bench -p primiad --bench round`
//!
//! # What runs
//!
//! N complete nodes (`primiad::node::run_with`: libp2p over TCP on
//! 127.0.0.1 with Noise and yamux, round messages on kept message streams,
//! gossip for model announcements, a sled store each, the control socket) in
//! this process, each with its own key, config and storage, contributing
//! test vectors of P parameters. A watch channel gates the start of each
//! round, so every member starts it at the same moment; a round's time runs
//! from opening the gate until the last member holds the round's sum.
//!
//! The same consortium runs the same rounds again without masking
//! (`NodeOptions::plain_sums`): every member sends its fixed-point x_u to
//! the leader as a message, the leader sums and sends the sum back to each
//! member, the same way and in the same signed envelopes (checked on
//! arrival) as a secure round moves its masked inputs and its outcome. The
//! difference is the cost of secure aggregation: key agreement, Shamir
//! shares, mask expansion, the consistency check, the reveal and the
//! unmasking.
//!
//! Both consortia run side by side, a secure round and a plain round in
//! turn, so that both see the same load on a shared machine. Round 1 warms
//! up (connections, allocations) and is not counted; the figures are
//! medians over the next `ROUND_BENCH_ROUNDS` rounds (default 9: single
//! rounds of one configuration vary by 10-20 % on a shared two-core
//! machine).
//! `ROUND_BENCH_ONLY=members:params[,members:params...]` picks
//! configurations. `ROUND_BENCH_MODE=secure` (or `plain`) runs one mode
//! alone, for profiling one mode's CPU; no ratio is printed then. With
//! `RUST_LOG` set (e.g. `primiad=trace`), the nodes
//! log to stderr, every round message in and out included.
//!
//! # Phases
//!
//! From the leader's own member role, which enters each phase as the
//! leader's announcement of it comes back to itself: `keys` (advertise keys
//! until the leader announced U1), `shares`, `masked` (members mask and
//! send their inputs; the leader sums them), `check` (consistency
//! signatures), `unmask` (reveals, reconstruction and unmasking, until the
//! leader holds the sum) and `outcome` (until every member holds it). A
//! plain round has only `masked` (until the leader holds the sum) and
//! `outcome`. After the total, and not part of it: `commit`, the median
//! member's time from holding the sum to having the new model stored
//! durably (blob written and fsynced, pointer and journal committed). A
//! member that finishes early commits while others still receive the
//! outcome, so on shared cores its commit shows in their `outcome`.
//!
//! `cpu_ms` is the CPU time of the whole process (every member, user and
//! system) from opening the gate until the last member's report, so it
//! includes the commits. On c cores a round cannot take much less than
//! `cpu_ms / c` of wall time; where `total_ms` is close to that, the round
//! is bound by computation, not by waiting on messages.
//!
//! All nodes share this machine's cores, so a member's masking and the
//! leader's work queue behind each other as they would not on separate
//! machines; on two cores that is most of the difference between the
//! figures and a deployment.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use primia_protocol::Phase;
use primiad::config::Config;
use primiad::identity::NodeIdentity;
use primiad::node::{NodeOptions, RoundReport, run_with};
use tokio::sync::{mpsc, watch};

mod support;
use support::process_cpu;

/// Phases of a secure round, then the commit after it, as columns.
const COLUMNS: [&str; 7] = [
    "keys", "shares", "masked", "check", "unmask", "outcome", "commit",
];

struct Measured {
    total_ms: f64,
    /// CPU time of the whole process (every member) from the gate until
    /// the last member's report, commits included.
    cpu_ms: f64,
    phases: BTreeMap<&'static str, f64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes keys, roster and configs for `n` members with `params`
/// parameters under `dir`.
fn consortium(dir: &Path, n: usize, params: usize) -> Vec<Config> {
    let mut roster = String::from("consortium = \"bench\"\nthreshold = \"majority\"\n");
    let mut texts = Vec::new();
    for i in 0..n {
        let home = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let id = NodeIdentity::generate().unwrap();
        id.save(&home.join("identity.key"), false).unwrap();
        let port = free_port();
        roster.push_str(&format!(
            "\n[[member]]\nname = \"m{i}\"\npeer_id = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{port}\"]\n",
            id.peer_id()
        ));
        // Generous deadlines: a slow, shared machine must not drop members.
        let text = format!(
            "roster = \"../roster.toml\"\nkey = \"identity.key\"\nstorage_dir = \"state\"\n\
             [network]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n\
             [round]\ncollect_ms = 30000\nleader_silence_ms = 90000\npause_ms = 0\n\
             [training]\nmode = \"test-vectors\"\nvector_len = {params}\n"
        );
        texts.push((home.join("primiad.toml"), text));
    }
    std::fs::write(dir.join("roster.toml"), roster).unwrap();
    texts
        .into_iter()
        .map(|(path, text)| {
            std::fs::write(&path, &text).unwrap();
            Config::load(&path).unwrap()
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Splits one round into phases (see the module doc).
fn phases(plain: bool, gate: Instant, cpu_ms: f64, reports: &[RoundReport]) -> Measured {
    let end = reports.iter().map(|r| r.finished).max().unwrap();
    let leader = reports[0].leader;
    let lead = reports
        .iter()
        .find(|r| r.me == leader)
        .expect("the leader's report");
    let mut out = BTreeMap::new();
    if plain {
        out.insert("masked", ms(lead.finished - gate));
    } else {
        let at = |p: Phase| {
            lead.phases
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, t)| *t)
                .unwrap_or(lead.finished)
        };
        let marks = [
            ("keys", gate, at(Phase::ShareKeys)),
            ("shares", at(Phase::ShareKeys), at(Phase::MaskedInput)),
            (
                "masked",
                at(Phase::MaskedInput),
                at(Phase::ConsistencyCheck),
            ),
            ("check", at(Phase::ConsistencyCheck), at(Phase::Unmask)),
            ("unmask", at(Phase::Unmask), lead.finished),
        ];
        for (name, a, b) in marks {
            out.insert(name, ms(b.saturating_duration_since(a)));
        }
    }
    out.insert("outcome", ms(end.saturating_duration_since(lead.finished)));
    out.insert(
        "commit",
        median(
            reports
                .iter()
                .map(|r| ms(r.committed.saturating_duration_since(r.finished)))
                .collect(),
        ),
    );
    Measured {
        total_ms: ms(end - gate),
        cpu_ms,
        phases: out,
    }
}

/// One consortium of in-process nodes, its rounds started by a gate.
struct Consortium {
    plain: bool,
    n: usize,
    gate: watch::Sender<u64>,
    reports: mpsc::Receiver<RoundReport>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Consortium {
    /// Starts `n` nodes and waits until each is connected to all others.
    async fn start(n: usize, params: usize, plain: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let configs = consortium(dir.path(), n, params);
        let (gate, gate_rx) = watch::channel(0u64);
        let (report_tx, reports) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let storages: Vec<_> = configs.iter().map(|c| c.storage_dir.clone()).collect();
        let mut tasks = Vec::new();
        for config in configs {
            let options = NodeOptions {
                plain_sums: plain,
                reports: Some(report_tx.clone()),
                round_gate: Some(gate_rx.clone()),
                ..NodeOptions::default()
            };
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(run_with(config, options, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = storages.iter().all(|s| {
                primiad::control::query_status(s, Duration::from_secs(1))
                    .is_ok_and(|st| st.connected.len() == n - 1)
            });
            if all {
                break;
            }
            assert!(Instant::now() < deadline, "nodes did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            plain,
            n,
            gate,
            reports,
            stop,
            tasks,
            _dir: dir,
        }
    }

    /// Opens the gate of `round` and waits for every member's report.
    async fn round(&mut self, round: u64) -> Measured {
        let gate = Instant::now();
        let cpu = process_cpu();
        self.gate.send_replace(round);
        let mut got = Vec::new();
        while got.len() < self.n {
            let r: RoundReport =
                tokio::time::timeout(Duration::from_secs(300), self.reports.recv())
                    .await
                    .expect("round finished in time")
                    .expect("reports");
            assert_eq!(r.round, round, "a report of another round");
            got.push(r);
        }
        let cpu_ms = ms(process_cpu() - cpu);
        let models: Vec<_> = got.iter().map(|r| r.model).collect();
        assert!(models.windows(2).all(|w| w[0] == w[1]), "members disagree");
        phases(self.plain, gate, cpu_ms, &got)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

/// Runs `rounds + 1` rounds of a secure and a plain consortium of `n`
/// nodes (those of `modes`), alternating round by round so both see the
/// same load; returns the measured rounds of each mode run.
fn run(n: usize, params: usize, rounds: u64, modes: Modes) -> (Vec<Measured>, Vec<Measured>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut secure = match modes.secure {
            true => Some(Consortium::start(n, params, false).await),
            false => None,
        };
        let mut plain = match modes.plain {
            true => Some(Consortium::start(n, params, true).await),
            false => None,
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mut s, mut p) = (Vec::new(), Vec::new());
        for round in 1..=rounds + 1 {
            // Between rounds the stores settle and the next update is
            // prepared (as training would be during the pause).
            for (c, out) in [(&mut secure, &mut s), (&mut plain, &mut p)] {
                if let Some(c) = c {
                    let m = c.round(round).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if round > 1 {
                        out.push(m);
                    }
                }
            }
        }
        for c in [secure, plain].into_iter().flatten() {
            c.stop().await;
        }
        (s, p)
    })
}

/// Which consortia a run starts (`ROUND_BENCH_MODE`).
#[derive(Clone, Copy)]
struct Modes {
    secure: bool,
    plain: bool,
}

fn main() {
    // The allocator settings `primiad` applies to itself (see
    // `primia_model::runtime`): without them every round page-faults its
    // megabyte vectors in again.
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { primia_model::runtime::configure_process() };
    // With RUST_LOG set, the nodes' logs go to stderr with timestamps: the
    // timeline of a round (at `primiad=trace`, every round message in and
    // out) for finding where its time goes. Logging costs time itself.
    if std::env::var_os("RUST_LOG").is_some() {
        primiad::cli::init_tracing(0);
    }
    let rounds: u64 = std::env::var("ROUND_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let configs: Vec<(usize, usize)> = match std::env::var("ROUND_BENCH_ONLY") {
        Ok(v) => v
            .split(',')
            .filter_map(|c| {
                let (a, b) = c.split_once(':')?;
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            })
            .collect(),
        Err(_) => vec![(3, 100_000), (3, 1_000_000), (10, 100_000), (10, 1_000_000)],
    };
    let modes = match std::env::var("ROUND_BENCH_MODE").as_deref() {
        Ok("secure") => Modes {
            secure: true,
            plain: false,
        },
        Ok("plain") => Modes {
            secure: false,
            plain: true,
        },
        Ok("both") | Err(_) => Modes {
            secure: true,
            plain: true,
        },
        Ok(other) => panic!("ROUND_BENCH_MODE={other}: expected secure, plain or both"),
    };
    // `cargo bench` passes `--bench`; nothing else is understood.
    println!(
        "one round on loopback, gated start to every member holding the sum; median of {rounds} rounds after one warm-up"
    );
    for (n, params) in configs {
        let (secure, plain) = run(n, params, rounds, modes);
        println!();
        println!("members={n} params={params}");
        println!(
            "  {:<7} {:>9} {:>9} {}",
            "mode",
            "total_ms",
            "cpu_ms",
            COLUMNS
                .iter()
                .map(|p| format!("{p:>9}"))
                .collect::<String>()
        );
        let mut totals = Vec::new();
        for (mode, m) in [("secure", &secure), ("plain", &plain)] {
            if m.is_empty() {
                continue;
            }
            let total = median(m.iter().map(|x| x.total_ms).collect());
            totals.push(total);
            let cols: String = COLUMNS
                .iter()
                .map(|p| {
                    let v: Vec<f64> = m.iter().filter_map(|x| x.phases.get(p).copied()).collect();
                    if v.is_empty() {
                        format!("{:>9}", "-")
                    } else {
                        format!("{:>9.1}", median(v))
                    }
                })
                .collect();
            let cpu = median(m.iter().map(|x| x.cpu_ms).collect());
            println!("  {mode:<7} {total:>9.1} {cpu:>9.1} {cols}");
        }
        if totals.len() < 2 {
            continue;
        }
        println!(
            "round members={n} params={params} secure_ms={:.1} plain_ms={:.1} ratio={:.2}",
            totals[0],
            totals[1],
            totals[0] / totals[1]
        );
    }
}
