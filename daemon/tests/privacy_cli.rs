//! `primiad privacy epsilon|noise` through the real binary: figures, JSON, and bad values refused.

use std::process::{Command, Output};

use serde_json::Value;

fn primiad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_primiad"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run primiad")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Runs with bad values: exit 1 (not a panic's 101), the complaint names `what`.
fn check_refused(args: &[&str], what: &str) {
    let out = primiad(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(what), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn epsilon_of_abadi_et_al_setting() {
    // q = 0.01, sigma = 4, 10000 steps, delta = 1e-5; Opacus' RDP accountant
    // on the same orders gives 1.035490 (model/tests/data/accountant_reference.json).
    let args = [
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.01",
        "--noise-multiplier",
        "4",
        "--steps",
        "10000",
        "--delta",
        "1e-5",
    ];
    let doc = json(&primiad(&[&args[..], &["--json"]].concat()));
    let eps = doc["epsilon"].as_f64().unwrap();
    assert!((eps - 1.035490).abs() < 1e-5, "{doc}");
    assert_eq!(doc["order"].as_f64(), Some(17.0));
    assert_eq!(doc["steps"].as_u64(), Some(10_000));

    let text = primiad(&args);
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).starts_with("epsilon 1.0354"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn noise_for_a_budget_spends_at_most_the_budget() {
    let doc = json(&primiad(&[
        "privacy",
        "noise",
        "--sample-rate",
        "0.0136",
        "--steps",
        "3000",
        "--delta",
        "1e-5",
        "--epsilon",
        "8",
        "--json",
    ]));
    let sigma = doc["noise_multiplier"].as_f64().unwrap();
    let spent = doc["epsilon"].as_f64().unwrap();
    assert!(spent <= 8.0 && spent > 7.9, "{doc}");
    assert!((0.7..0.9).contains(&sigma), "{doc}");

    // Feeding the answer back gives the same epsilon.
    let sigma_s = format!("{sigma}");
    let back = json(&primiad(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.0136",
        "--noise-multiplier",
        &sigma_s,
        "--steps",
        "3000",
        "--delta",
        "1e-5",
        "--json",
    ]));
    assert!((back["epsilon"].as_f64().unwrap() - spent).abs() < 1e-9);
}

#[test]
fn bad_values_are_refused_with_the_value_named() {
    let eps = |q: &str, sigma: &str, delta: &str| {
        vec![
            "privacy".to_string(),
            "epsilon".into(),
            "--sample-rate".into(),
            q.into(),
            "--noise-multiplier".into(),
            sigma.into(),
            "--steps".into(),
            "100".into(),
            "--delta".into(),
            delta.into(),
        ]
    };
    let run = |v: Vec<String>, what: &str| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        check_refused(&refs, what);
    };
    run(eps("0", "1", "1e-5"), "sample rate 0 is not in (0, 1]");
    run(eps("1.5", "1", "1e-5"), "sample rate");
    run(eps("NaN", "1", "1e-5"), "sample rate");
    run(
        eps("0.1", "0", "1e-5"),
        "noise multiplier 0 is not positive",
    );
    run(eps("0.1", "-2", "1e-5"), "noise multiplier");
    run(eps("0.1", "inf", "1e-5"), "noise multiplier");
    run(eps("0.1", "1", "0"), "delta 0 is not in (0, 1)");
    run(eps("0.1", "1", "1"), "delta");
    check_refused(
        &[
            "privacy",
            "noise",
            "--sample-rate",
            "0.1",
            "--steps",
            "100",
            "--delta",
            "1e-5",
            "--epsilon",
            "0",
        ],
        "epsilon 0 is not positive",
    );
    check_refused(
        &[
            "privacy",
            "noise",
            "--sample-rate",
            "0.5",
            "--steps",
            "1000",
            "--delta",
            "1e-5",
            "--epsilon",
            "0.0001",
        ],
        "out of reach",
    );
    // Not a number at all: clap's usage error, exit 2.
    let out = primiad(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "x",
        "--noise-multiplier",
        "1",
        "--steps",
        "1",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = primiad(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.1",
        "--noise-multiplier",
        "1",
        "--steps",
        "-3",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
