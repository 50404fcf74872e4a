//! Nodes run in this process (`primiad::node::run_with`) over real libp2p
//! on 127.0.0.1: an update source of the test's own plugs into the driver,
//! a round gate starts every member's round together, and the plain-sum
//! mode that the round benchmark compares against gives bit for bit the
//! models that secure aggregation gives.

use std::path::Path;
use std::time::{Duration, Instant};

use primia_protocol::{MemberId, RevealEntry, ShareKind};
use primiad::config::Config;
use primiad::identity::NodeIdentity;
use primiad::node::{GlobalModel, NodeOptions, RoundReport, Update, UpdateSource, run_with};
use primiad::store::ModelHash;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

const PARAMS: usize = 5;

/// Member i contributes `delta[j] = (i + 1) * round + j / 10` with weight
/// `i + 1`, and starts from `[1.0; PARAMS]`.
struct Linear {
    index: u32,
}

impl UpdateSource for Linear {
    fn parameter_count(&self) -> usize {
        PARAMS
    }

    fn initial_model(&mut self) -> anyhow::Result<Vec<f32>> {
        Ok(vec![1.0; PARAMS])
    }

    fn update(&mut self, round: u64, base: &GlobalModel) -> anyhow::Result<Update> {
        anyhow::ensure!(
            base.round + 1 == round,
            "base of round {} for round {round}",
            base.round
        );
        let delta = (0..PARAMS)
            .map(|j| ((self.index + 1) as f32 * round as f32 + j as f32 / 10.0) / 16.0)
            .collect();
        Ok(Update {
            n_examples: self.index + 1,
            delta: Zeroizing::new(delta),
        })
    }
}

/// The model after `rounds` rounds of `n` members, in f64.
fn expected(n: u32, rounds: u64) -> Vec<f64> {
    let mut model = vec![1.0f64; PARAMS];
    let total: f64 = (1..=n).map(f64::from).sum();
    for round in 1..=rounds {
        for (j, m) in model.iter_mut().enumerate() {
            let weighted: f64 = (0..n)
                .map(|i| {
                    f64::from(i + 1) * ((f64::from(i + 1) * round as f64 + j as f64 / 10.0) / 16.0)
                })
                .sum();
            *m += weighted / total;
        }
    }
    model
}

fn write_consortium(dir: &Path, n: usize) -> Vec<Config> {
    let mut roster = String::from("consortium = \"in-process\"\nthreshold = \"majority\"\n");
    let mut paths = Vec::new();
    for i in 0..n {
        let home = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let id = NodeIdentity::generate().unwrap();
        id.save(&home.join("identity.key"), false).unwrap();
        let port = primia_tests::free_port();
        roster.push_str(&format!(
            "\n[[member]]\nname = \"m{i}\"\npeer_id = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{port}\"]\n",
            id.peer_id()
        ));
        let config = format!(
            "roster = \"../roster.toml\"\nkey = \"identity.key\"\nstorage_dir = \"state\"\n\
             [network]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n\
             [round]\ncollect_ms = 5000\nleader_silence_ms = 15000\npause_ms = 0\n\
             [training]\nmode = \"test-vectors\"\nvector_len = {PARAMS}\n"
        );
        let path = home.join("primiad.toml");
        std::fs::write(&path, config).unwrap();
        paths.push(path);
    }
    std::fs::write(dir.join("roster.toml"), roster).unwrap();
    paths.iter().map(|p| Config::load(p).unwrap()).collect()
}

/// Runs `rounds` gated rounds of `n` in-process nodes; returns every
/// report of the last round, the nodes' final models as their stores hold
/// them, and what each store recorded as revealed, per round.
async fn run_rounds(
    n: usize,
    rounds: u64,
    plain: bool,
) -> (
    Vec<RoundReport>,
    Vec<GlobalModel>,
    Vec<Vec<Vec<RevealEntry>>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let configs = write_consortium(dir.path(), n);
    let storages: Vec<_> = configs.iter().map(|c| c.storage_dir.clone()).collect();
    let (gate_tx, gate_rx) = watch::channel(0u64);
    let (report_tx, mut report_rx) = mpsc::channel(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        let options = NodeOptions {
            source: Some(Box::new(Linear { index: i as u32 })),
            plain_sums: plain,
            reports: Some(report_tx.clone()),
            round_gate: Some(gate_rx.clone()),
        };
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(run_with(config, options, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !storages.iter().all(|s| {
        primiad::control::query_status(s, Duration::from_secs(1))
            .is_ok_and(|st| st.connected.len() == n - 1)
    }) {
        assert!(Instant::now() < deadline, "nodes did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing starts before the gate opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(report_rx.try_recv().is_err());
    for s in &storages {
        let st = primiad::control::query_status(s, Duration::from_secs(1)).unwrap();
        assert!(st.round.is_none(), "a round started before the gate opened");
        assert_eq!(st.latest_model.unwrap().round, 0);
    }
    let mut last = Vec::new();
    for round in 1..=rounds {
        gate_tx.send_replace(round);
        last.clear();
        while last.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(60), report_rx.recv())
                .await
                .expect("the round finishes")
                .unwrap();
            assert_eq!(r.round, round);
            last.push(r);
        }
    }
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut models = Vec::new();
    let mut reveals = Vec::new();
    for s in &storages {
        let store = primiad::store::Store::open(s).unwrap();
        let hash = store.current_model().unwrap().unwrap();
        models
            .push(GlobalModel::decode(&store.model_blob(hash).unwrap().unwrap(), PARAMS).unwrap());
        reveals.push(
            (1..=rounds)
                .map(|r| store.reveal_entries(r).unwrap())
                .collect(),
        );
    }
    (last, models, reveals)
}

fn hashes(reports: &[RoundReport]) -> Vec<ModelHash> {
    reports.iter().map(|r| r.model).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sums_and_secure_aggregation_make_the_same_models() {
    let (secure, secure_models, secure_reveals) = run_rounds(3, 2, false).await;
    let (plain, plain_models, plain_reveals) = run_rounds(3, 2, true).await;
    let h = hashes(&secure);
    assert!(h.iter().all(|x| *x == h[0]), "secure members disagree");
    assert!(
        hashes(&plain).iter().all(|x| *x == h[0]),
        "plain sums gave another model"
    );
    for r in &secure {
        assert_eq!(r.participants.len(), 3, "every member is in the secure sum");
    }
    // Every member recorded, in its store, the reveal of each round it
    // signed: the self-mask shares of all three (no dropouts; a failed
    // attempt on a slow machine may add an entry). Plain sums reveal
    // nothing.
    let all: Vec<_> = (0..3).map(|m| (MemberId(m), ShareKind::SelfMask)).collect();
    for (member, rounds) in secure_reveals.iter().enumerate() {
        for (round, entries) in rounds.iter().enumerate() {
            assert!(
                entries.iter().any(|e| e.revealed == all),
                "member {member}, round {}: {entries:?}",
                round + 1
            );
        }
    }
    assert!(plain_reveals.iter().flatten().all(Vec::is_empty));
    let want = expected(3, 2);
    for m in secure_models.iter().chain(&plain_models) {
        assert_eq!(m.round, 2);
        assert_eq!(ModelHash::of(&m.encode()), h[0]);
        for (got, want) in m.params.iter().zip(&want) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-5,
                "{got} against {want}"
            );
        }
    }
}
