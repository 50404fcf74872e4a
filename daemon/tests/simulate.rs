//! `primiad simulate` end to end: real daemons on loopback, secure
//! aggregation, training on a split of the synthetic phantom, and the
//! report. The failure-injection run is slow and opt-in.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn simulate(report: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_primiad"))
        .args(["simulate", "--json", "--report"])
        .arg(report)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run primiad simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}); stderr:\n{stderr}"))
}

#[test]
fn a_short_simulation_trains_through_real_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let r = simulate(
        &report,
        &[
            "--hospitals",
            "3",
            "--rounds",
            "3",
            "--synthetic",
            "400",
            "--local-steps",
            "4",
            "--batch-size",
            "16",
            "--alpha",
            "1.0",
        ],
    );
    assert_eq!(r["rounds"], 3);
    assert_eq!(r["hospitals"], 3);
    assert_eq!(r["secure_aggregation"], true);
    assert_eq!(r["algorithm"], "scaffold");
    assert_eq!(r["members_agree"], true);
    let rounds = r["per_round"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (i, row) in rounds.iter().enumerate() {
        assert_eq!(row["round"], i as u64 + 1);
        assert_eq!(row["participants"], 3, "{row}");
        assert!(
            row["test_auc"]
                .as_f64()
                .is_some_and(|a| (0.0..=1.0).contains(&a))
        );
    }
    // Every round makes a new model.
    assert_ne!(rounds[0]["model"], rounds[2]["model"]);
    assert_eq!(rounds[2]["model"], r["model_hash"]);
    for key in ["test_auc", "test_acc", "central_test_auc", "wall_s"] {
        assert!(r[key].as_f64().is_some(), "{key} missing: {r}");
    }
    let counts: usize = r["hospital_counts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h.as_array().unwrap())
        .map(|c| c.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        counts, 400,
        "every training image is at exactly one hospital"
    );
    for file in [
        "report.json",
        "rounds.csv",
        "learning_curves.png",
        "roc.png",
    ] {
        let meta = std::fs::metadata(report.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let csv = std::fs::read_to_string(report.join("rounds.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
}

#[test]
fn bad_simulate_options_are_refused_clearly() {
    for (args, needle) in [
        (&["--kill", "5@2"][..], "there are hospitals 1 to 3"),
        (&["--kill", "2"][..], "expected HOSPITAL@ROUND"),
        (&["--restart", "2@4"][..], "is not killed before round 4"),
        (&["--alpha=-1"][..], "--alpha"),
        (&["--data", "/nonexistent/x.npz"][..], "not found"),
        (
            &["--algorithm", "fedprox"][..],
            "expected scaffold or fedavg",
        ),
        (
            &["--dp-epsilon", "8", "--algorithm", "scaffold"][..],
            "with --dp-epsilon use fedavg",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_primiad"))
            .arg("simulate")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_hospital_killed_and_restarted_catches_up() {
    if !primia_tests::slow_tests_enabled("a_hospital_killed_and_restarted_catches_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        &dir.path().join("report"),
        &[
            "--hospitals",
            "3",
            "--rounds",
            "6",
            "--synthetic",
            "400",
            "--local-steps",
            "4",
            "--batch-size",
            "16",
            "--kill",
            "2@3",
            "--restart",
            "2@5",
            "--no-baselines",
            "--collect-ms",
            "4000",
        ],
    );
    assert_eq!(r["members_agree"], true, "{r}");
    assert_eq!(r["leader_trust"], "honest-but-curious");
    assert_eq!(r["threshold"], 2);
    let rounds = r["per_round"].as_array().unwrap();
    assert_eq!(rounds.len(), 6);
    // Down during rounds 3 and 4: those sums are of the two others.
    for row in &rounds[2..4] {
        assert_eq!(row["participants"], 2, "{row}");
        assert_eq!(row["dropped"][0], "hospital-2", "{row}");
    }
    // Back for the last round at the latest.
    assert_eq!(rounds[5]["participants"], 3, "{}", rounds[5]);
    assert_eq!(r["failures"].as_array().unwrap().len(), 2);
}

#[test]
fn differentially_private_simulation_stays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        &dir.path().join("report"),
        &[
            "--hospitals",
            "3",
            "--rounds",
            "3",
            "--synthetic",
            "400",
            "--local-steps",
            "4",
            "--batch-size",
            "16",
            "--no-baselines",
            "--dp-epsilon",
            "4",
        ],
    );
    assert_eq!(r["dp_target_epsilon"], 4.0);
    let spent: Vec<f64> = r["privacy_epsilon"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    assert_eq!(spent.len(), 3);
    for e in spent {
        // The noise is derived for the planned steps, so the whole run
        // spends close to (never more than) the budget.
        assert!(e > 1.0 && e <= 4.0, "spent epsilon {e}");
    }
    assert_eq!(r["members_agree"], true);
}
