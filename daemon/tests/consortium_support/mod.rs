//! What the consortium tests share: the expected models, computed in the
//! test from the members' test vectors, reading a stopped member's store,
//! and the stock libp2p swarm an outsider or a test client runs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use primia_crypto::{add_assign, fixed};
use primiad::node::{GlobalModel, test_examples, test_vector};
use primiad::store::{AttemptOutcome, ModelHash, Store};

/// The latest model's hash and round in a `primiad status --json` document.
pub fn latest_model(status: &serde_json::Value) -> (ModelHash, u64) {
    let hash = status["latest_model"]["hash"]
        .as_str()
        .expect("a latest model")
        .parse()
        .expect("a model hash");
    let round = status["latest_model"]["round"].as_u64().expect("its round");
    (hash, round)
}

/// A stock libp2p swarm (TCP, Noise, yamux; connections idle for up to a
/// minute) with `key` and the behaviour `make` builds from it.
pub fn stock_swarm<B: libp2p::swarm::NetworkBehaviour>(
    key: libp2p::identity::Keypair,
    make: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(make)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Longest wait for any one situation in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// What a stopped member's store says.
pub struct Stored {
    /// The current model.
    pub model: GlobalModel,
    /// Its hash.
    pub hash: ModelHash,
    /// Completed rounds: round -> (participants, model hash).
    pub completed: BTreeMap<u64, (Vec<String>, ModelHash)>,
    /// How many models the store holds.
    pub models_kept: usize,
}

/// Opens a stopped member's store and reads its model and journal.
pub fn read_store(storage: &Path, parameters: usize) -> Stored {
    let store = Store::open(storage).expect("open the member's store");
    let (hash, meta) = store
        .current_model_meta()
        .expect("read the current model")
        .expect("a current model");
    let blob = store
        .model_blob(hash)
        .unwrap()
        .expect("the current model's blob");
    let model = GlobalModel::decode(&blob, parameters).expect("the model decodes");
    assert_eq!(model.round, meta.round);
    let mut completed = BTreeMap::new();
    for e in store.recent_attempts(10_000).unwrap() {
        if e.outcome == AttemptOutcome::Completed {
            let prev =
                completed.insert(e.round, (e.participants.clone(), e.model.expect("a model")));
            assert!(prev.is_none(), "round {} completed twice", e.round);
        }
    }
    Stored {
        model,
        hash,
        completed,
        models_kept: store.models().unwrap().len(),
    }
}

/// The models of rounds 1..=n as the test computes them from the test
/// vectors of each round's participants: the fixed-point sum added to the
/// previous model, exactly as a member must do it.
pub fn expected_models(parameters: usize, participants: &[Vec<String>]) -> Vec<GlobalModel> {
    let mut model = GlobalModel {
        round: 0,
        params: vec![0.0; parameters],
    };
    let mut out = Vec::new();
    for (i, names) in participants.iter().enumerate() {
        let round = i as u64 + 1;
        let mut sum = vec![0u64; parameters + 1];
        for name in names {
            let mut x = Vec::new();
            fixed::encode_update(
                test_examples(name),
                &test_vector(name, round, parameters),
                &mut x,
            )
            .unwrap();
            add_assign(&mut sum, &x);
        }
        model = model.apply(round, &sum).expect("the plain sum decodes");
        out.push(model.clone());
    }
    out
}

/// Checks `model` against the weighted FedAvg means computed in f64,
/// independently of the fixed-point code: sum over rounds of
/// `sum_u n_u x_u / sum_u n_u`.
pub fn check_against_float_means(model: &GlobalModel, participants: &[Vec<String>]) {
    let n = model.params.len();
    let mut expected = vec![0f64; n];
    for (i, names) in participants.iter().enumerate() {
        let round = i as u64 + 1;
        let total: f64 = names.iter().map(|m| f64::from(test_examples(m))).sum();
        for name in names {
            let w = f64::from(test_examples(name)) / total;
            for (e, v) in expected.iter_mut().zip(test_vector(name, round, n)) {
                *e += w * f64::from(v);
            }
        }
    }
    for (i, (got, want)) in model.params.iter().zip(&expected).enumerate() {
        assert!(
            (f64::from(*got) - want).abs() < 1e-5,
            "parameter {i}: model has {got}, the weighted mean is {want}"
        );
    }
}

/// Names in a status document's list field.
pub fn names(status: &serde_json::Value, field: &str) -> Vec<String> {
    status[field]
        .as_array()
        .unwrap_or_else(|| panic!("status has no list {field}: {status}"))
        .iter()
        .map(|v| v.as_str().expect("a name").to_owned())
        .collect()
}

/// The participants of rounds 1..=last from the journals of all members
/// (a member that caught up by fetching a model has no entry for the
/// rounds it missed); members that journaled a round must agree on it.
pub fn participants_by_round(stored: &[Stored], last: u64) -> Vec<Vec<String>> {
    (1..=last)
        .map(|r| {
            let mut found: Option<&Vec<String>> = None;
            for s in stored {
                if let Some((p, _)) = s.completed.get(&r) {
                    if let Some(f) = found {
                        assert_eq!(f, p, "members disagree on who is in round {r}");
                    }
                    found = Some(p);
                }
            }
            found
                .unwrap_or_else(|| panic!("no member journaled round {r} as completed"))
                .clone()
        })
        .collect()
}

/// Checks every member's journaled models and final model against the
/// models the test computes.
pub fn check_models(names: &[String], stored: &[Stored], expected: &[GlobalModel]) {
    for (name, s) in names.iter().zip(stored) {
        for (r, (_, h)) in &s.completed {
            let want = ModelHash::of(&expected[*r as usize - 1].encode());
            assert_eq!(*h, want, "{name} has another model for round {r}");
        }
        assert!(
            s.model.round >= 1,
            "{name} never got past the initial model"
        );
        let want = &expected[s.model.round as usize - 1];
        assert_eq!(&s.model, want, "{name}'s final model");
        assert_eq!(s.hash, ModelHash::of(&want.encode()), "{name}'s final hash");
    }
}
