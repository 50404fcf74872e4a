//! Config and roster files: the example parses to the documented defaults,
//! every kind of mistake names its file and field, and a roster built from
//! real keys maps members to peer ids and back.

use std::path::{Path, PathBuf};

use primia_crypto::Secret32;
use primiad::config::{Config, ConfigError, LoadedRoster, RosterEntry, TrainingMode};
use primiad::identity::NodeIdentity;

fn node(b: u8) -> NodeIdentity {
    NodeIdentity::from_seed(&Secret32::from_bytes([b; 32]))
}

const MINIMAL: &str = r#"
roster = "roster.toml"
key = "keys/me.key"
data_dir = "/srv/images"
storage_dir = "state"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/primia/node.toml"))
}

/// Parses `text` and checks the error message contains every piece.
fn check_err(text: &str, pieces: &[&str]) {
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.starts_with("config /etc/primia/node.toml: "),
        "error does not name the file: {err}"
    );
    for p in pieces {
        assert!(err.contains(p), "error {err:?} lacks {p:?}");
    }
}

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.roster, PathBuf::from("/etc/primia/roster.toml"));
    assert_eq!(c.key, PathBuf::from("/etc/primia/keys/me.key"));
    assert_eq!(c.data_dir, Some(PathBuf::from("/srv/images")));
    assert_eq!(c.storage_dir, PathBuf::from("/etc/primia/state"));
    assert_eq!(c.network, Default::default());
    assert_eq!(c.network.listen[0].to_string(), "/ip4/0.0.0.0/tcp/7470");
    assert!(!c.network.mdns);
    assert_eq!(c.round, Default::default());
    assert_eq!(c.training, Default::default());
    assert_eq!(c.keep_models.map(|k| k.get()), Some(20));
    assert_eq!(
        c.control_socket(),
        PathBuf::from("/etc/primia/state/control.sock")
    );
    let rc = c.round_config(4, 11);
    assert_eq!((rc.round, rc.vector_len), (4, 11));
    assert_eq!(
        (rc.collect_ms, rc.leader_silence_ms, rc.max_attempts),
        (10_000, 30_000, 8)
    );
}

#[test]
fn example_parses_to_the_defaults() {
    let c = parse(Config::example()).unwrap();
    let m = parse(MINIMAL).unwrap();
    assert_eq!(c.network, m.network);
    assert_eq!(c.round, m.round);
    assert_eq!(c.training, m.training);
    assert_eq!(c.keep_models, m.keep_models);
    assert_eq!(c.data_dir, Some(PathBuf::from("/etc/primia/images")));
}

#[test]
fn full_config_is_read() {
    let text = r#"
roster = "r.toml"
key = "k"
storage_dir = "/var/lib/primia"
keep_models = 0
[network]
listen = ["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/9000"]
bootstrap = ["/ip4/10.0.0.2/tcp/7470/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"]
mdns = true
[round]
collect_ms = 200
leader_silence_ms = 400
max_attempts = 3
rounds = 5
pause_ms = 0
[training]
mode = "test-vectors"
vector_len = 1000
model = "resnet18"
input_size = 224
local_steps = 3
batch_size = 8
learning_rate = 0.5
seed = 42
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.storage_dir, PathBuf::from("/var/lib/primia"));
    assert_eq!(c.data_dir, None);
    assert_eq!(c.keep_models, None, "0 keeps every model");
    assert_eq!(c.network.listen.len(), 2);
    assert_eq!(c.network.bootstrap.len(), 1);
    assert!(c.network.mdns);
    assert_eq!(c.round.rounds, 5);
    assert_eq!(c.training.mode, TrainingMode::TestVectors);
    assert_eq!(c.training.vector_len, 1000);
    assert_eq!(c.training.model, "resnet18");
    assert_eq!(c.training.seed, 42);
}

#[test]
fn mistakes_name_the_field() {
    check_err(
        &format!("{MINIMAL}[network]\nlisten = [\"/ip4/1.2.3.4/tcp/1\", \"/nonsense\"]\n"),
        &[
            "field `network.listen[1]`",
            "invalid multiaddr \"/nonsense\"",
        ],
    );
    check_err(
        &format!("{MINIMAL}[network]\nbootstrap = [\"tcp://x\"]\n"),
        &["field `network.bootstrap[0]`"],
    );
    check_err(
        &format!("{MINIMAL}[network]\nlisten = []\n"),
        &["field `network.listen`", "at least one"],
    );
    check_err(
        &format!("{MINIMAL}[round]\ncollect_ms = 1000\nleader_silence_ms = 1500\n"),
        &["field `round.leader_silence_ms`", "twice"],
    );
    check_err(
        &format!("{MINIMAL}[round]\ncollect_ms = 0\n"),
        &["field `round.collect_ms`"],
    );
    check_err(
        &format!("{MINIMAL}[round]\nmax_attempts = 0\n"),
        &["field `round.max_attempts`"],
    );
    check_err(
        &format!("{MINIMAL}[training]\nmodel = \"vgg\"\n"),
        &["field `training.model`", "\"vgg\""],
    );
    check_err(
        &format!("{MINIMAL}[training]\nlearning_rate = -1.0\n"),
        &["field `training.learning_rate`"],
    );
    check_err(
        &format!("{MINIMAL}[training]\nvector_len = 0\n"),
        &["field `training.vector_len`"],
    );
    check_err(
        &format!("{MINIMAL}[training]\nbatch_size = 0\n"),
        &["field `training.batch_size`"],
    );
    check_err(
        &format!("{MINIMAL}[training]\ninput_size = 3\n"),
        &["field `training.input_size`"],
    );
    check_err(
        &format!("{MINIMAL}[privacy]\nenabled = true\n"),
        &["field `privacy.noise_multiplier`", "round.rounds"],
    );
    check_err(
        &format!("{MINIMAL}[round]\nrounds = 5\n[privacy]\nenabled = true\ndelta = 2.0\n"),
        &["field `privacy.delta`"],
    );
    check_err(
        &format!("{MINIMAL}[round]\nrounds = 5\n[privacy]\nenabled = true\nclip_norm = 0.0\n"),
        &["field `privacy.clip_norm`"],
    );
    check_err(
        &format!("{MINIMAL}[round]\nrounds = 5\n[privacy]\nenabled = true\n"),
        &["field `privacy.enabled`", "algorithm = \"fedavg\""],
    );
    check_err(
        &format!("{MINIMAL}[training]\nalgorithm = \"fedprox\"\n"),
        &["field `training.algorithm`", "fedprox"],
    );
    check_err(
        &format!("{MINIMAL}[training]\nclass_weights = \"1,x\"\n"),
        &["field `training.class_weights`"],
    );
    check_err(
        &format!("{MINIMAL}[training]\nlr_schedule = \"linear\"\n"),
        &["field `training.lr_schedule`"],
    );
    check_err(
        "roster = \"r\"\nkey = \"k\"\nstorage_dir = \"s\"\n",
        &["field `data_dir`", "train"],
    );
    check_err(
        "roster = \"\"\nkey = \"k\"\nstorage_dir = \"s\"\ndata_dir = \"d\"\n",
        &["field `roster`", "empty"],
    );
}

#[test]
fn toml_mistakes_name_the_line() {
    check_err(
        &format!("{MINIMAL}mdns = true\n"),
        &["line 6", "unknown field `mdns`"],
    );
    check_err(
        &format!("{MINIMAL}[round]\ncolect_ms = 5\n"),
        &["line 7", "unknown field `colect_ms`"],
    );
    check_err(
        "roster = \"r\"\nkey = \"k\"\n",
        &["missing field `storage_dir`"],
    );
    check_err(
        &format!("{MINIMAL}[round]\nrounds = \"many\"\n"),
        &["line 7"],
    );
    check_err("roster = \n", &["line 1"]);
    check_err(
        &format!("{MINIMAL}keep_models = -1\n"),
        &["line 6", "integer `-1`"],
    );
}

#[test]
fn load_reads_files_and_reports_missing_and_huge_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("node.toml") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.roster, dir.path().join("roster.toml"));
    std::fs::write(&path, vec![b'#'; 2 << 20]).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("at most"), "{err}");
    std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("not UTF-8"), "{err}");
}

fn roster_text(members: &[(&str, &NodeIdentity)], threshold: &str) -> String {
    let mut text = format!("consortium = \"paediatric-xray\"\nthreshold = {threshold}\n\n");
    for (i, (name, n)) in members.iter().enumerate() {
        text.push_str(
            &RosterEntry {
                name: (*name).to_owned(),
                peer_id: n.peer_id().to_base58(),
                addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 7000 + i)],
            }
            .to_toml(),
        );
        text.push('\n');
    }
    text
}

fn parse_roster(text: &str) -> Result<LoadedRoster, ConfigError> {
    LoadedRoster::parse(text, Path::new("/etc/primia/roster.toml"))
}

fn check_roster_err(text: &str, pieces: &[&str]) {
    let err = parse_roster(text).unwrap_err().to_string();
    assert!(err.starts_with("roster /etc/primia/roster.toml: "), "{err}");
    for p in pieces {
        assert!(err.contains(p), "error {err:?} lacks {p:?}");
    }
}

#[test]
fn roster_maps_members_to_peer_ids() {
    let (a, b, c) = (node(1), node(2), node(3));
    let text = roster_text(
        &[("alpha", &a), ("beta", &b), ("gamma", &c)],
        "\"majority\"",
    );
    let r = parse_roster(&text).unwrap();
    assert_eq!(r.roster.consortium().as_str(), "paediatric-xray");
    assert_eq!(r.roster.len(), 3);
    let majority = primia_protocol::Threshold::Majority.resolve(3).unwrap();
    assert_eq!(r.roster.threshold(), usize::from(majority));
    for n in [&a, &b, &c] {
        let id = r.by_peer[&n.peer_id()];
        assert_eq!(r.peer_ids[id.index()], n.peer_id());
        assert_eq!(r.roster.member(id).unwrap().identity, n.public());
        assert_eq!(r.roster.id_of(&n.public()), Some(id));
    }
    let id = r.by_peer[&b.peer_id()];
    assert_eq!(r.name_of(id), "beta");
    assert_eq!(
        r.roster.member(id).unwrap().addresses,
        vec!["/ip4/127.0.0.1/tcp/7001"]
    );
    let r3 = parse_roster(&roster_text(
        &[("alpha", &a), ("beta", &b), ("gamma", &c)],
        "3",
    ))
    .unwrap();
    assert_eq!(r3.roster.threshold(), 3);
}

#[test]
fn roster_mistakes_name_the_member_and_field() {
    let (a, b) = (node(1), node(2));
    let good = roster_text(&[("alpha", &a), ("beta", &b)], "2");
    let bad_peer = good.replace(&b.peer_id().to_base58(), "12D3KooWnotapeerid");
    check_roster_err(&bad_peer, &["field `member[1].peer_id`", "not a peer id"]);
    let bad_addr = good.replace("/ip4/127.0.0.1/tcp/7000", "127.0.0.1:7000");
    check_roster_err(
        &bad_addr,
        &["field `member[0].addresses[0]`", "invalid multiaddr"],
    );
    check_roster_err(
        &good.replace("paediatric-xray", "bad id!"),
        &["field `consortium`"],
    );
    check_roster_err(
        &good.replace("threshold = 2", "threshold = 1"),
        &["threshold 1 for 2 members"],
    );
    check_roster_err(
        &good.replace("threshold = 2", "threshold = \"most\""),
        &["field `threshold`", "\"majority\""],
    );
    check_roster_err(
        &good.replace("threshold = 2", "threshold = -4"),
        &["field `threshold`"],
    );
    let twice = roster_text(&[("alpha", &a), ("beta", &a)], "2");
    check_roster_err(&twice, &["listed twice"]);
    let same_name = roster_text(&[("alpha", &a), ("alpha", &b)], "2");
    check_roster_err(&same_name, &["name \"alpha\" is listed twice"]);
    let alone = roster_text(&[("alpha", &a)], "\"majority\"");
    check_roster_err(&alone, &["1 members"]);
    check_roster_err(
        &format!("{good}colour = \"red\"\n"),
        &["unknown field `colour`"],
    );
    check_roster_err(&good.replace("name = ", "nom = "), &["unknown field `nom`"]);
}

#[test]
fn roster_entry_toml_is_a_member_table() {
    let e = RosterEntry {
        name: "St. Mary's \"East\"".into(),
        peer_id: node(5).peer_id().to_base58(),
        addresses: vec!["/dns4/pacs.example/tcp/7470".into()],
    };
    let text = e.to_toml();
    assert!(text.starts_with("[[member]]\n"), "{text}");
    #[derive(serde::Deserialize)]
    struct Back {
        member: Vec<RosterEntry>,
    }
    let back: Back = toml::from_str(&text).unwrap();
    assert_eq!(back.member, vec![e]);
}
