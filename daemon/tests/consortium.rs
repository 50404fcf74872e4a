//! Real `primiad` processes on 127.0.0.1, each from its own key and config:
//! three and five daemons find each other, run rounds of secure aggregation
//! of test vectors, and all end with the same model, equal to the weighted
//! mean the test computes. `primiad status --json` shows the members
//! connected and the rounds as they go.

mod consortium_support;

use std::time::Duration;

use consortium_support::{
    WAIT, check_against_float_means, check_models, expected_models, names, participants_by_round,
    read_store,
};
use primia_tests::{Consortium, Settings, slow_tests_enabled};
use primiad::node::model::GlobalModel;

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

/// Runs rounds with every member and checks the result. With
/// `settings.rounds > 0` the daemons stop by themselves after that many
/// rounds; with 0 the test checks `primiad status --json` once every member
/// is past `until_round`, then stops them with SIGTERM.
fn consortium_agrees(settings: Settings, until_round: u64) {
    let n = settings.members;
    let mut c = Consortium::new(BIN, &settings);
    c.start_all();

    let self_stopping = settings.rounds > 0;
    let target = if self_stopping { 1 } else { until_round };
    let mut seen = None;
    c.wait_until(
        "every member connected to all others and past the first rounds",
        WAIT,
        |c| {
            let statuses: Vec<_> = (0..n).map(|i| c.status(i)).collect();
            let ok = statuses.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s["connected"].as_array().is_some_and(|a| a.len() == n - 1)
                        && s.pointer("/latest_model/round").and_then(|r| r.as_u64()) >= Some(target)
                })
            });
            if ok {
                seen = statuses.into_iter().next().flatten();
            }
            ok
        },
    );
    let s = if self_stopping {
        // Daemons that stop by themselves may be gone before a command
        // runs: check the status read over the socket above.
        seen.expect("a status")
    } else {
        c.status_cli(0)
    };
    let mut others: Vec<String> = c.members[1..].iter().map(|m| m.name.clone()).collect();
    others.sort();
    assert_eq!(names(&s, "connected"), others, "{s}");
    assert!(names(&s, "missing").is_empty(), "{s}");
    assert_eq!(s["name"], "m0");
    assert_eq!(s["consortium"], c.consortium.as_str());
    assert_eq!(s["members"], n as u64);
    assert_eq!(s["peer_id"], c.members[0].peer_id.as_str());
    assert_eq!(
        s["latest_model"]["parameter_count"],
        settings.parameters as u64
    );
    // Past round `keep_models - 1`, the store holds as many models as it
    // keeps, each a header and the parameters.
    if target + 1 >= settings.keep_models as u64 {
        assert_eq!(s["stored"]["models"], settings.keep_models as u64, "{s}");
        let blob = GlobalModel {
            round: 0,
            params: vec![0.0; settings.parameters],
        }
        .encode();
        assert_eq!(
            s["stored"]["model_bytes"],
            (settings.keep_models * blob.len()) as u64,
            "{s}"
        );
    }
    let recent = s["recent_attempts"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|a| a["outcome"]["status"] == "completed"
                && a["model"] == s["latest_model"]["hash"]),
        "{s}"
    );

    for i in 0..n {
        let ok = if self_stopping {
            c.wait_exit(i, WAIT)
        } else {
            c.stop(i, Duration::from_secs(20))
        };
        assert!(
            ok,
            "{} did not exit cleanly\n{}",
            c.members[i].name,
            c.logs()
        );
        assert_eq!(c.status_exit_code(i), Some(3), "status of a stopped daemon");
        // Its log is plain text: stderr is a file, not a terminal.
        let log = std::fs::read_to_string(&c.members[i].log).expect("a daemon log");
        assert!(log.contains("new global model"), "{log}");
        assert!(
            !log.contains('\u{1b}'),
            "terminal escape codes in a log file: {log}"
        );
    }

    let stored: Vec<_> = c
        .members
        .iter()
        .map(|m| read_store(&m.storage, settings.parameters))
        .collect();
    // Each made at least `keep_models` models (the initial one and one a
    // round) and kept only as many.
    for (m, s) in c.members.iter().zip(&stored) {
        assert_eq!(s.models_kept, settings.keep_models, "{} kept", m.name);
    }
    let first = stored.iter().map(|s| s.model.round).min().unwrap();
    let last = stored.iter().map(|s| s.model.round).max().unwrap();
    if self_stopping {
        assert_eq!((first, last), (settings.rounds, settings.rounds));
    } else {
        // Stopped one after the other, the last ones may have run on
        // without the first.
        assert!(first >= until_round, "{first}..{last}");
    }
    // The participants of each round, from the journals; every round has
    // at least the threshold, and everyone's models are the ones the test
    // computes from those participants' test vectors.
    let participants = participants_by_round(&stored, last);
    for (r, p) in (1..).zip(&participants) {
        assert!(2 * p.len() > n, "round {r} summed only {p:?}");
    }
    let expected = expected_models(settings.parameters, &participants);
    let member_names: Vec<String> = c.members.iter().map(|m| m.name.clone()).collect();
    check_models(&member_names, &stored, &expected);
    check_against_float_means(&expected[last as usize - 1], &participants);
}

#[test]
fn three_daemons_agree_on_the_weighted_mean_and_stop_after_their_rounds() {
    let mut s = Settings::fast(3);
    s.rounds = 3;
    consortium_agrees(s, 3);
}

#[test]
fn five_daemons_agree_on_the_weighted_mean() {
    consortium_agrees(Settings::fast(5), 3);
}

#[test]
fn five_daemons_with_larger_vectors_over_more_rounds() {
    if !slow_tests_enabled("five_daemons_with_larger_vectors_over_more_rounds") {
        return;
    }
    let mut s = Settings::fast(5);
    s.parameters = 200_000;
    s.collect_ms = 3000;
    s.leader_silence_ms = 8000;
    consortium_agrees(s, 6);
}

#[test]
fn status_without_a_daemon_exits_3() {
    let c = Consortium::new(BIN, &Settings::fast(2));
    assert_eq!(c.status_exit_code(0), Some(3));
}

#[test]
fn training_mode_without_its_images_is_refused_clearly() {
    let c = Consortium::new(BIN, &Settings::fast(3));
    let config = &c.members[0].config;
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("mode = \"test-vectors\"", "mode = \"train\"")
        .replace(
            "storage_dir = \"state\"",
            "storage_dir = \"state\"\ndata_dir = \"images\"",
        );
    std::fs::write(config, text).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("images: not found") && err.contains("a folder of class subfolders"),
        "{err}"
    );
}
