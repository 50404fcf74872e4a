//! `primiad keygen` and `primiad roster` through the real binary, and the
//! key file's rules: mode 0600, no overwrite without --force, loose
//! permissions and malformed content refused with the file named.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use primiad::identity::{KEY_FILE_MAGIC, NodeIdentity};

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

fn keygen(path: &Path, force: bool) -> Output {
    let mut args = vec!["keygen", "--out", path.to_str().unwrap()];
    if force {
        args.push("--force");
    }
    primiad(&args)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn keygen_writes_a_private_key_and_prints_its_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("me.key");
    let out = keygen(&key, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let peer = stdout(&out).trim().to_owned();
    assert_eq!(mode(&key), 0o600);
    let loaded = NodeIdentity::load(&key).unwrap();
    assert_eq!(loaded.peer_id().to_base58(), peer);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["me.key"]);

    // Refuses to overwrite; the key is unchanged.
    let again = keygen(&key, false);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert!(stderr(&again).contains("me.key"));
    assert_eq!(
        NodeIdentity::load(&key).unwrap().peer_id(),
        loaded.peer_id()
    );

    // --force replaces it with a new identity.
    let forced = keygen(&key, true);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let new_peer = stdout(&forced).trim().to_owned();
    assert_ne!(new_peer, peer);
    assert_eq!(
        NodeIdentity::load(&key).unwrap().peer_id().to_base58(),
        new_peer
    );
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn keygen_into_a_missing_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("nope/me.key");
    let out = keygen(&key, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope/me.key"), "{}", stderr(&out));
}

#[test]
fn load_refuses_loose_permissions_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("me.key");
    let node = NodeIdentity::generate().unwrap();
    node.save(&key, false).unwrap();
    for loose in [0o644, 0o640, 0o604, 0o700, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = NodeIdentity::load(&key).unwrap_err().to_string();
        assert!(err.contains(key.to_str().unwrap()), "{err}");
        assert!(err.contains(&format!("mode {loose:04o}")), "{err}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(NodeIdentity::load(&key).unwrap().peer_id(), node.peer_id());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let good = std::fs::read_to_string(&key).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "0 bytes"),
        (good.as_bytes()[..good.len() - 1].to_vec(), "bytes"),
        (
            good.replace(KEY_FILE_MAGIC, "primia-identity-v0")
                .into_bytes(),
            "first line",
        ),
        (
            format!("{KEY_FILE_MAGIC}\n{}\n", "g".repeat(64)).into_bytes(),
            "not a hex digit",
        ),
        (vec![0u8; 1 << 20], "bytes"),
    ];
    for (content, why) in cases {
        std::fs::write(&key, &content).unwrap();
        let err = NodeIdentity::load(&key).unwrap_err().to_string();
        assert!(
            err.contains("malformed") && err.contains(why),
            "{err} lacks {why}"
        );
        assert!(err.contains(key.to_str().unwrap()), "{err}");
    }
    // A directory is not a key file.
    let err = NodeIdentity::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("not a regular file") || err.contains("mode"),
        "{err}"
    );
    let err = NodeIdentity::load(&dir.path().join("missing.key"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.key") && err.contains("cannot open"),
        "{err}"
    );
}

#[test]
fn key_file_never_holds_more_than_the_seed_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let node = NodeIdentity::generate().unwrap();
    node.save(&key, false).unwrap();
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        text,
        format!(
            "{KEY_FILE_MAGIC}\n{}\n",
            hex::encode(node.key().seed().expose())
        )
    );
    let back = NodeIdentity::load(&key).unwrap();
    assert_eq!(back.public(), node.public());
    assert_eq!(back.peer_id(), node.peer_id());
    assert!(matches!(
        node.save(&key, false),
        Err(primiad::identity::IdentityError::Exists { .. })
    ));
}

#[test]
fn roster_entry_and_check_form_a_consortium() {
    let dir = tempfile::tempdir().unwrap();
    let mut roster = String::from("consortium = \"test-consortium\"\nthreshold = \"majority\"\n\n");
    let mut peers = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let key = dir.path().join(format!("{name}.key"));
        let k = keygen(&key, false);
        assert!(k.status.success());
        peers.push(stdout(&k).trim().to_owned());
        let addr = format!("/ip4/127.0.0.1/tcp/{}", 7470 + i);
        let e = primiad(&[
            "roster",
            "entry",
            "--key",
            key.to_str().unwrap(),
            "--name",
            name,
            "--address",
            &addr,
        ]);
        assert!(e.status.success(), "{}", stderr(&e));
        let entry = stdout(&e);
        assert!(
            entry.contains(&peers[i]) && entry.contains(&addr),
            "{entry}"
        );
        roster.push_str(&entry);
        roster.push('\n');
    }
    let path = dir.path().join("roster.toml");
    std::fs::write(&path, &roster).unwrap();
    let c = primiad(&["roster", "check", path.to_str().unwrap()]);
    assert!(c.status.success(), "{}", stderr(&c));
    let report = stdout(&c);
    let t = primia_protocol::Threshold::Majority.resolve(3).unwrap();
    let expected = format!("consortium test-consortium, 3 members, threshold {t}");
    assert!(report.contains(&expected), "{report}");
    for p in &peers {
        assert!(report.contains(p.as_str()), "{report}");
    }

    // A broken roster: exit 1 and the field named.
    std::fs::write(&path, roster.replace(&peers[2], "12D3KooWbroken")).unwrap();
    let c = primiad(&["roster", "check", path.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(1));
    assert!(
        stderr(&c).contains("field `member[2].peer_id`"),
        "{}",
        stderr(&c)
    );

    // A bad address for an entry is refused.
    let key = dir.path().join("alpha.key");
    let e = primiad(&[
        "roster",
        "entry",
        "--key",
        key.to_str().unwrap(),
        "--name",
        "a",
        "--address",
        "localhost:1",
    ]);
    assert_eq!(e.status.code(), Some(1));
    assert!(stderr(&e).contains("not a multiaddr"), "{}", stderr(&e));
}
