//! `scripts/local-consortium.sh` starts N real daemons from generated keys
//! and configs; when they stop after their rounds, every one has exited
//! cleanly with the same latest model.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

#[test]
fn the_script_runs_a_consortium_that_agrees() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/local-consortium.sh"
    );
    let mut child = Command::new("bash")
        .arg(script)
        .args(["3", "2"])
        .env("PRIMIA_BIN", BIN)
        .env("PRIMIA_PARAMS", "1000")
        .stdin(Stdio::null())
        // The status screens; nothing reads them here.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the script");
    // The daemons stop after two rounds; a consortium that does not form
    // would run until killed.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM: the script's trap stops its daemons.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!("the script did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}\n{err}");
    let models: Vec<&str> = err
        .lines()
        .filter_map(|l| l.trim().strip_prefix("m"))
        .filter_map(|l| l.split_once("  exit 0  latest model "))
        .map(|(_, model)| model)
        .collect();
    assert_eq!(models.len(), 3, "{err}");
    assert!(
        models.iter().all(|m| m.len() == 64 && *m == models[0]),
        "{err}"
    );
}
