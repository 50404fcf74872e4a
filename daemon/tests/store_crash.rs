//! Crash safety for real: a child `primiad __store-torture` commits models,
//! journal entries, reveals and metrics in a loop and prints each after it
//! is committed; it is SIGKILLed at random moments, and after each kill the
//! store must hold everything printed, with the current pointer naming a
//! stored model whose blake3 matches.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use primiad::cli::store_torture;
use primiad::store::{ModelHash, Store};
use rand::Rng as _;

/// What the child said it committed, up to its last whole line.
#[derive(Default, Debug)]
struct Committed {
    models: Vec<(u64, String)>,
    journal: Vec<u64>,
    reveals: Vec<u64>,
    metrics: Vec<u64>,
}

fn parse(lines: &[String], into: &mut Committed) {
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        let round = || parts[1].parse::<u64>().unwrap();
        match parts[0] {
            "model" => into.models.push((round(), parts[2].to_owned())),
            "journal" => into.journal.push(round()),
            "reveal" => into.reveals.push(round()),
            "metrics" => into.metrics.push(round()),
            other => panic!("unexpected line {other:?}"),
        }
    }
}

/// Runs the child until `kill_after` past its first commit, SIGKILLs it,
/// and returns the whole lines it printed.
fn run_and_kill(dir: &std::path::Path, kill_after: Duration, keep: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_primiad"))
        .args(["__store-torture", "--storage-dir", dir.to_str().unwrap()])
        .args(["--keep-models", &keep.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with('\n') => {
                    line.pop();
                    if lines.is_empty() {
                        let _ = tx.send(());
                    }
                    lines.push(line);
                }
                // A line cut by the kill: the child never finished saying it.
                Ok(_) => break,
            }
        }
        lines
    });
    // Wait for the first commit (opening a store can take a moment), then
    // let it run for the random delay.
    let started = rx.recv_timeout(Duration::from_secs(60));
    if started.is_ok() {
        std::thread::sleep(kill_after);
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    if started.is_err() {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        panic!("the torture child committed nothing within 60 s (status {status}): {err}");
    }
    lines
}

/// Everything the child printed is in the store (but models older than the
/// newest `keep`, when it prunes), and the store is whole.
fn check(dir: &std::path::Path, committed: &Committed, keep: usize) {
    let s = Store::open(dir).expect("store reopens after SIGKILL");
    let last_printed = committed.models.last().map(|(r, _)| *r).unwrap();
    // With pruning, the newest `keep` printed models must be there; older
    // ones may be gone (but never half there).
    let may_be_pruned = |round: u64| keep > 0 && round + (keep as u64) <= last_printed;
    for (round, hash) in &committed.models {
        let h: ModelHash = hash.parse().unwrap();
        let blob = s.model_blob(h).unwrap();
        if blob.is_none() && may_be_pruned(*round) {
            assert_eq!(s.model_meta(h).unwrap(), None);
            continue;
        }
        let blob = blob.unwrap_or_else(|| panic!("model of round {round} lost"));
        assert_eq!(
            blob,
            store_torture::blob(*round),
            "model of round {round} differs"
        );
        assert_eq!(s.model_meta(h).unwrap().unwrap().round, *round);
    }
    // The pointer names a stored, intact model at least as new as the last
    // one printed (the child may have committed one more before the kill).
    let (current, meta) = s.current_model_meta().unwrap().expect("a current model");
    let blob = s.model_blob(current).unwrap().unwrap();
    assert_eq!(ModelHash::of(&blob), current);
    assert!(
        meta.round == last_printed || meta.round == last_printed + 1,
        "pointer at round {}, last printed {last_printed}",
        meta.round
    );
    for round in &committed.journal {
        let e = s
            .journal_entry(*round, 0)
            .unwrap()
            .unwrap_or_else(|| panic!("journal {round} lost"));
        let model = e.model.unwrap();
        assert_eq!(e, store_torture::journal_entry(*round, model));
        assert!(
            may_be_pruned(*round) || s.model_meta(model).unwrap().is_some(),
            "journal {round} names a missing model"
        );
    }
    for round in &committed.reveals {
        let want = store_torture::reveal_entry(*round);
        assert_eq!(
            s.reveal_entries(*round).unwrap(),
            vec![want],
            "reveal {round}"
        );
        // The other kind stays refused after the crash.
        let mut other = store_torture::reveal_entry(*round + 1);
        other.round = *round;
        assert!(
            s.record_reveal(&other).is_err(),
            "round {round} accepted the other share"
        );
    }
    if keep > 0 {
        // At most one model past the limit (committed, not yet pruned), and
        // the model files are exactly the stored models' blobs.
        let stored = s.models().unwrap();
        assert!(stored.len() <= keep + 1, "{} models kept", stored.len());
        let mut want: Vec<String> = stored
            .iter()
            .map(|(h, _)| format!("{}.blob", h.to_hex()))
            .collect();
        want.sort();
        let mut files: Vec<String> = std::fs::read_dir(dir.join(primiad::store::MODELS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, want);
    }
    let metrics = s.metrics_history(usize::MAX).unwrap();
    for round in &committed.metrics {
        assert!(
            metrics.iter().any(|m| m.round == *round),
            "metrics {round} lost"
        );
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_committed() {
    torture(0);
}

#[test]
fn sigkill_while_pruning_keeps_the_newest_models_whole() {
    torture(3);
}

/// Kills the torture child six times at random moments, checking the store
/// after each kill.
fn torture(keep: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut all = Committed::default();
    let kills = 6;
    let t0 = Instant::now();
    for i in 0..kills {
        let delay = Duration::from_millis(rng.random_range(20..400));
        let lines = run_and_kill(dir.path(), delay, keep);
        let mut this = Committed::default();
        parse(&lines, &mut this);
        assert!(!this.models.is_empty(), "run {i} committed no model");
        // Each run continues after the last journaled round, so rounds only
        // grow across runs.
        if let (Some(prev), Some(first)) = (all.journal.last(), this.models.first()) {
            assert!(
                first.0 > *prev,
                "run {i} restarted at round {} after {prev}",
                first.0
            );
        }
        all.models.extend(this.models);
        all.journal.extend(this.journal);
        all.reveals.extend(this.reveals);
        all.metrics.extend(this.metrics);
        check(dir.path(), &all, keep);
        eprintln!(
            "kill {i}: after {delay:?}, {} models committed so far",
            all.models.len()
        );
    }
    eprintln!("{kills} kills in {:?}", t0.elapsed());
}
