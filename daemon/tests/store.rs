//! The store's contract: what is committed is there after reopening,
//! models are checked against their hash, the reveal record refuses the
//! other share of a member, and a foreign schema or a corrupt record is an
//! error, never a panic.

use std::collections::BTreeMap;

use primia_protocol::{MemberId, RevealEntry, ShareKind};
use primiad::store::{
    AttemptOutcome, JournalEntry, MetricsEntry, ModelHash, ModelMeta, PhaseTiming, PrivacySpent,
    SCHEMA_VERSION, Store, StoreError,
};

fn meta(round: u64) -> ModelMeta {
    ModelMeta {
        round,
        created_unix_ms: 1_700_000_000_000 + round,
        parameter_count: 10,
        size_bytes: 0,
    }
}

fn entry(round: u64, attempt: u32, outcome: AttemptOutcome) -> JournalEntry {
    JournalEntry {
        round,
        attempt,
        leader: "alpha".into(),
        outcome,
        participants: vec!["alpha".into(), "beta".into()],
        dropouts: vec!["gamma".into()],
        started_unix_ms: 5,
        duration_ms: 1234,
        phases: vec![PhaseTiming {
            phase: "advertise-keys".into(),
            ms: 12,
        }],
        model: None,
    }
}

fn reveal(round: u64, attempt: u32, revealed: &[(u16, ShareKind)]) -> RevealEntry {
    RevealEntry {
        round,
        attempt,
        revealed: revealed.iter().map(|&(m, k)| (MemberId(m), k)).collect(),
    }
}

#[test]
fn models_and_pointer_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (h1, h2, h3);
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.current_model().unwrap(), None);
        assert!(s.current_model_meta().unwrap().is_none());
        h1 = s.commit_model(b"model one", meta(1)).unwrap();
        assert_eq!(h1, ModelHash::of(b"model one"));
        h2 = s.commit_model(b"model two!", meta(2)).unwrap();
        h3 = s.put_model(b"fetched, not adopted", meta(3)).unwrap();
        assert_eq!(s.current_model().unwrap(), Some(h2));
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.current_model().unwrap(), Some(h2));
    let (h, m) = s.current_model_meta().unwrap().unwrap();
    assert_eq!(h, h2);
    assert_eq!(m.size_bytes, 10);
    assert_eq!(m.round, 2);
    assert_eq!(s.model_blob(h1).unwrap().unwrap(), b"model one");
    assert_eq!(s.model_blob(h3).unwrap().unwrap(), b"fetched, not adopted");
    assert_eq!(s.model_blob(ModelHash::of(b"never stored")).unwrap(), None);
    let listed: Vec<u64> = s.models().unwrap().iter().map(|(_, m)| m.round).collect();
    assert_eq!(listed, vec![1, 2, 3]);

    // A blob given in parts is the same model as given whole.
    let parts: [&[u8]; 3] = [b"model ", b"", b"one"];
    assert_eq!(s.commit_model_parts(&parts, meta(1)).unwrap(), h1);
    assert_eq!(ModelHash::of_parts(&parts), h1);
    let h4 = s
        .commit_model_parts(&[b"model ", b"four"], meta(4))
        .unwrap();
    assert_eq!(h4, ModelHash::of(b"model four"));
    assert_eq!(s.model_blob(h4).unwrap().unwrap(), b"model four");
    assert_eq!(s.model_meta(h4).unwrap().unwrap().size_bytes, 10);

    s.set_current_model(h1).unwrap();
    assert_eq!(s.current_model().unwrap(), Some(h1));
    let err = s.set_current_model(ModelHash::of(b"nope")).unwrap_err();
    assert!(err.to_string().contains("is not stored"), "{err}");
    assert_eq!(s.current_model().unwrap(), Some(h1));
    // Committing a stored model again only moves the pointer.
    assert_eq!(s.commit_model(b"model two!", meta(2)).unwrap(), h2);
    assert_eq!(s.current_model().unwrap(), Some(h2));
    assert_eq!(s.models().unwrap().len(), 4);
}

#[test]
fn oversized_models_and_bad_metrics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let huge = vec![0u8; primiad::store::MAX_MODEL_BYTES + 1];
    assert!(matches!(
        s.commit_model(&huge, meta(1)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.current_model().unwrap(), None);
    let mut values = BTreeMap::new();
    values.insert("loss".to_owned(), f64::NAN);
    let err = s
        .record_metrics(&MetricsEntry {
            round: 1,
            recorded_unix_ms: 0,
            values,
        })
        .unwrap_err();
    assert!(err.to_string().contains("not a finite number"), "{err}");
    let err = s
        .set_privacy_spent(PrivacySpent {
            epsilon: -1.0,
            delta: 0.0,
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
}

#[test]
fn journal_metrics_and_privacy_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_journaled_round().unwrap(), None);
        s.record_attempt(&entry(1, 0, AttemptOutcome::Completed))
            .unwrap();
        s.record_attempt(&entry(
            2,
            0,
            AttemptOutcome::Failed {
                reason: "leader silent".into(),
            },
        ))
        .unwrap();
        let mut done = entry(2, 1, AttemptOutcome::Completed);
        done.model = Some(ModelHash::of(b"m"));
        s.record_attempt(&done).unwrap();
        // Round 256 sorts after 2 (big-endian keys).
        s.record_attempt(&entry(256, 0, AttemptOutcome::Completed))
            .unwrap();
        for round in [1u64, 2, 300] {
            let mut values = BTreeMap::new();
            values.insert("auc".to_owned(), 0.5 + round as f64 / 1000.0);
            s.record_metrics(&MetricsEntry {
                round,
                recorded_unix_ms: round,
                values,
            })
            .unwrap();
        }
        s.set_privacy_spent(PrivacySpent {
            epsilon: 1.25,
            delta: 1e-5,
        })
        .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.last_journaled_round().unwrap(), Some(256));
    let recent = s.recent_attempts(3).unwrap();
    let keys: Vec<(u64, u32)> = recent.iter().map(|e| (e.round, e.attempt)).collect();
    assert_eq!(keys, vec![(256, 0), (2, 1), (2, 0)]);
    assert_eq!(recent[1].model, Some(ModelHash::of(b"m")));
    assert_eq!(
        s.journal_entry(2, 0).unwrap().unwrap().outcome,
        AttemptOutcome::Failed {
            reason: "leader silent".into()
        }
    );
    assert_eq!(s.journal_entry(9, 9).unwrap(), None);
    let m = s.metrics_history(2).unwrap();
    assert_eq!(m.iter().map(|e| e.round).collect::<Vec<_>>(), vec![2, 300]);
    assert_eq!(m[1].values["auc"], 0.8);
    assert_eq!(
        s.privacy_spent().unwrap(),
        PrivacySpent {
            epsilon: 1.25,
            delta: 1e-5
        }
    );
}

#[test]
fn reveal_record_refuses_the_other_share_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        let e = reveal(7, 0, &[(0, ShareKind::SelfMask), (2, ShareKind::MaskKey)]);
        let receipt = s.record_reveal(&e).unwrap();
        assert!(receipt.covers(&e));
        assert_eq!((receipt.round(), receipt.attempt()), (7, 0));
        assert!(!receipt.covers(&reveal(7, 1, &[(0, ShareKind::SelfMask)])));
        assert!(!receipt.covers(&reveal(7, 0, &[(1, ShareKind::SelfMask)])));
        // The same reveal again, or a subset, is fine.
        let _ = s
            .record_reveal(&reveal(7, 0, &[(0, ShareKind::SelfMask)]))
            .unwrap();
        // In the next attempt anything goes: fresh keys.
        let _ = s
            .record_reveal(&reveal(7, 1, &[(0, ShareKind::MaskKey)]))
            .unwrap();
        // A conflict inside one entry is refused before anything is written.
        let err = s
            .record_reveal(&reveal(
                8,
                0,
                &[(1, ShareKind::SelfMask), (1, ShareKind::MaskKey)],
            ))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::RevealConflict { round: 8, .. }),
            "{err}"
        );
        assert!(s.reveal_entries(8).unwrap().is_empty());
    }
    let s = Store::open(dir.path()).unwrap();
    let err = s
        .record_reveal(&reveal(
            7,
            0,
            &[(3, ShareKind::SelfMask), (2, ShareKind::SelfMask)],
        ))
        .unwrap_err();
    match &err {
        StoreError::RevealConflict {
            round,
            attempt,
            member,
            requested,
        } => assert_eq!(
            (*round, *attempt, *member, *requested),
            (7, 0, MemberId(2), ShareKind::SelfMask)
        ),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("other share"), "{err}");
    // All or nothing: member 3's share of the refused entry was not recorded.
    let entries = s.reveal_entries(7).unwrap();
    assert_eq!(
        entries,
        vec![
            reveal(7, 0, &[(0, ShareKind::SelfMask), (2, ShareKind::MaskKey)]),
            reveal(7, 1, &[(0, ShareKind::MaskKey)]),
        ]
    );
    let record = s.reveal_record(7).unwrap();
    assert!(!record.allows(0, MemberId(0), ShareKind::MaskKey));
    assert!(record.allows(0, MemberId(0), ShareKind::SelfMask));
    assert!(!record.allows(0, MemberId(2), ShareKind::SelfMask));
    assert!(record.allows(0, MemberId(3), ShareKind::MaskKey));
    assert!(record.revealed_in(1));
    assert!(!record.revealed_in(2));
    assert!(s.reveal_record(6).unwrap().reveals(0).next().is_none());
}

/// Opens the database underneath the store, as a corrupting disk would.
fn raw(dir: &std::path::Path) -> sled::Db {
    sled::open(dir.join(primiad::store::DB_DIR)).unwrap()
}

/// The file that holds the blob of `hash`.
fn blob_file(dir: &std::path::Path, hash: ModelHash) -> std::path::PathBuf {
    dir.join(primiad::store::MODELS_DIR)
        .join(format!("{}.blob", hash.to_hex()))
}

/// Files in the model directory, sorted.
fn model_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(primiad::store::MODELS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn blobs_are_private_files_and_leftovers_of_a_crash_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let s = Store::open(dir.path()).unwrap();
        a = s.commit_model(b"model a", meta(1)).unwrap();
        // Storing the same model again keeps one file.
        assert_eq!(s.put_model(b"model a", meta(1)).unwrap(), a);
        b = s.put_model(b"model b", meta(2)).unwrap();
    }
    let mut want = vec![
        format!("{}.blob", a.to_hex()),
        format!("{}.blob", b.to_hex()),
    ];
    want.sort();
    assert_eq!(model_files(dir.path()), want);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&blob_file(dir.path(), a)), 0o600);
        assert_eq!(mode(&dir.path().join(primiad::store::MODELS_DIR)), 0o700);
    }
    // What a crash inside `put_model` leaves: a half-written temporary file
    // and a complete blob whose metadata was never committed. A file of
    // another name is not the store's to delete.
    let orphan = ModelHash::of(b"never committed");
    std::fs::write(blob_file(dir.path(), orphan), b"never committed").unwrap();
    let tmp = dir
        .path()
        .join(primiad::store::MODELS_DIR)
        .join(format!("{}.0.tmp", orphan.to_hex()));
    std::fs::write(&tmp, b"never comm").unwrap();
    let foreign = dir.path().join(primiad::store::MODELS_DIR).join("README");
    std::fs::write(&foreign, b"notes").unwrap();
    let s = Store::open(dir.path()).unwrap();
    want.push("README".into());
    want.sort();
    assert_eq!(model_files(dir.path()), want);
    assert_eq!(s.model_blob(a).unwrap().unwrap(), b"model a");
    assert_eq!(s.model_blob(b).unwrap().unwrap(), b"model b");
    assert_eq!(s.model_blob(orphan).unwrap(), None);
    // A blob file that lost its content is written again when the model is
    // stored again.
    std::fs::write(blob_file(dir.path(), b), b"").unwrap();
    assert!(s.model_blob(b).is_err());
    s.put_model(b"model b", meta(2)).unwrap();
    assert_eq!(s.model_blob(b).unwrap().unwrap(), b"model b");
    // A grown file is corrupt too.
    std::fs::write(blob_file(dir.path(), a), b"model a and more").unwrap();
    let err = s.model_blob(a).unwrap_err().to_string();
    assert!(err.contains("longer than the 7 bytes"), "{err}");
}

#[test]
fn pruning_keeps_the_newest_models_and_always_the_current_one() {
    use std::num::NonZeroUsize;
    let dir = tempfile::tempdir().unwrap();
    let keep = |n| NonZeroUsize::new(n).unwrap();
    let blob = |round: u64| format!("model of round {round}").into_bytes();
    let s = Store::open(dir.path()).unwrap();
    let mut hashes = Vec::new();
    for round in 0..12 {
        hashes.push(s.commit_model(&blob(round), meta(round)).unwrap());
        let deleted = s.prune_models(keep(4)).unwrap();
        assert_eq!(deleted, usize::from(round >= 4), "round {round}");
    }
    let rounds =
        |s: &Store| -> Vec<u64> { s.models().unwrap().iter().map(|(_, m)| m.round).collect() };
    assert_eq!(rounds(&s), vec![8, 9, 10, 11]);
    // The usage counts what is left.
    let usage = s.usage().unwrap();
    assert_eq!(usage.models, 4);
    let kept_bytes: usize = (8..12).map(|r| blob(r).len()).sum();
    assert_eq!(usage.model_bytes, kept_bytes as u64);
    assert!(usage.database_bytes > 0);
    let mut want: Vec<String> = hashes[8..]
        .iter()
        .map(|h| format!("{}.blob", h.to_hex()))
        .collect();
    want.sort();
    assert_eq!(model_files(dir.path()), want);
    // A pruned model is gone, not corrupt; the kept ones are whole.
    assert_eq!(s.model_blob(hashes[3]).unwrap(), None);
    assert_eq!(s.model_meta(hashes[3]).unwrap(), None);
    assert_eq!(s.model_blob(hashes[9]).unwrap().unwrap(), blob(9));
    // Nothing more to prune.
    assert_eq!(s.prune_models(keep(4)).unwrap(), 0);

    // The current model stays even when it is the oldest.
    s.set_current_model(hashes[8]).unwrap();
    assert_eq!(s.prune_models(keep(2)).unwrap(), 2);
    assert_eq!(rounds(&s), vec![8, 11]);
    assert_eq!(s.prune_models(keep(1)).unwrap(), 1);
    assert_eq!(rounds(&s), vec![8]);
    assert_eq!(s.current_model().unwrap(), Some(hashes[8]));
    assert_eq!(
        model_files(dir.path()),
        vec![format!("{}.blob", hashes[8].to_hex())]
    );

    // A crash between the metadata and the files leaves files nothing
    // refers to; the next open deletes them.
    let stale = ModelHash::of(b"pruned, file left behind");
    std::fs::write(blob_file(dir.path(), stale), b"pruned, file left behind").unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        model_files(dir.path()),
        vec![format!("{}.blob", hashes[8].to_hex())]
    );
    assert_eq!(s.model_blob(hashes[8]).unwrap().unwrap(), blob(8));
}

/// Writes a store of schema version 1 by hand: blobs were sled values.
fn write_v1(dir: &std::path::Path, blobs: &[&[u8]]) -> Vec<ModelHash> {
    let db = raw(dir);
    let meta_tree = db.open_tree("meta").unwrap();
    meta_tree
        .insert("schema_version", &1u32.to_be_bytes())
        .unwrap();
    let mut hashes = Vec::new();
    for (i, blob) in blobs.iter().enumerate() {
        let hash = ModelHash::of(blob);
        let mut m = meta(i as u64 + 1);
        m.size_bytes = blob.len() as u64;
        db.open_tree("models")
            .unwrap()
            .insert(hash.0, *blob)
            .unwrap();
        db.open_tree("model_meta")
            .unwrap()
            .insert(hash.0, serde_json::to_vec(&m).unwrap())
            .unwrap();
        meta_tree.insert("current_model", &hash.0).unwrap();
        hashes.push(hash);
    }
    db.flush().unwrap();
    hashes
}

#[test]
fn a_version_1_store_is_upgraded_without_losing_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: [&[u8]; 3] = [b"first model", b"second model", b"third model"];
    let hashes = write_v1(dir.path(), &blobs);
    // An upgrade cut short after one blob file was written: the file is
    // written again (here it is damaged) and nothing is lost.
    std::fs::create_dir_all(dir.path().join(primiad::store::MODELS_DIR)).unwrap();
    std::fs::write(blob_file(dir.path(), hashes[0]), b"first").unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        for (hash, blob) in hashes.iter().zip(blobs) {
            assert_eq!(s.model_blob(*hash).unwrap().unwrap(), blob);
        }
        assert_eq!(s.current_model().unwrap(), Some(hashes[2]));
        assert_eq!(s.models().unwrap().len(), 3);
    }
    {
        let db = raw(dir.path());
        assert!(db.open_tree("models").unwrap().is_empty());
        assert_eq!(
            db.open_tree("meta")
                .unwrap()
                .get("schema_version")
                .unwrap()
                .unwrap()
                .as_ref(),
            SCHEMA_VERSION.to_be_bytes()
        );
    }
    // Reopening the upgraded store changes nothing.
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.model_blob(hashes[1]).unwrap().unwrap(), blobs[1]);
}

#[test]
fn a_version_1_store_with_a_corrupt_blob_is_not_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let hashes = write_v1(dir.path(), &[b"only model"]);
    raw(dir.path())
        .open_tree("models")
        .unwrap()
        .insert(hashes[0].0, &b"evil model"[..])
        .unwrap();
    let err = Store::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("`models`") && err.contains("does not match its hash"),
        "{err}"
    );
    // Still version 1, with its blob where it was.
    let db = raw(dir.path());
    assert_eq!(db.open_tree("models").unwrap().len(), 1);
}

#[test]
fn newer_or_unknown_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = raw(dir.path());
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("schema_version").unwrap().unwrap().as_ref(),
            SCHEMA_VERSION.to_be_bytes()
        );
        meta.insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1));
    assert!(err.to_string().contains("newer than this primiad"), "{err}");
    {
        let db = raw(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &0u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Store::open(dir.path()).unwrap_err(),
        StoreError::SchemaUnsupported { found: 0, .. }
    ));
    {
        let db = raw(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", b"v1").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Store::open(dir.path()).unwrap_err(),
        StoreError::Corrupt { .. }
    ));
    {
        // Data without a version: written by something else.
        let db = raw(dir.path());
        db.open_tree("meta")
            .unwrap()
            .remove("schema_version")
            .unwrap();
        db.open_tree("journal").unwrap().insert("x", "y").unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("missing in a database that holds data"),
        "{err}"
    );
}

#[test]
fn a_second_opener_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
}

#[test]
fn corrupt_records_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = {
        let s = Store::open(dir.path()).unwrap();
        let good = s.commit_model(b"good model", meta(1)).unwrap();
        let other = s.put_model(b"other model", meta(2)).unwrap();
        s.record_attempt(&entry(1, 0, AttemptOutcome::Completed))
            .unwrap();
        (good, other)
    };
    // The blob of `good` is swapped for other bytes of the same length;
    // `other` loses its blob.
    std::fs::write(blob_file(dir.path(), good), b"evil model").unwrap();
    std::fs::remove_file(blob_file(dir.path(), other)).unwrap();
    {
        let db = raw(dir.path());
        // A journal record that is not JSON, one under the wrong key, and a
        // reveal value that is not a share kind.
        let journal = db.open_tree("journal").unwrap();
        let mut k = [0u8; 12];
        k[7] = 2;
        journal.insert(k, &b"\xff\x00garbage"[..]).unwrap();
        let mut k3 = [0u8; 12];
        k3[7] = 3;
        journal
            .insert(
                k3,
                serde_json::to_vec(&entry(4, 0, AttemptOutcome::Completed)).unwrap(),
            )
            .unwrap();
        let mut rk = [0u8; 14];
        rk[7] = 5;
        db.open_tree("reveals")
            .unwrap()
            .insert(rk, &[9u8][..])
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("current_model", &[1u8, 2, 3][..])
            .unwrap();
        db.flush().unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    let err = s.model_blob(good).unwrap_err().to_string();
    assert!(
        err.contains("does not match its hash") && err.contains(&good.to_hex()),
        "{err}"
    );
    let err = s.model_blob(other).unwrap_err().to_string();
    assert!(err.contains("blob is missing"), "{err}");
    let err = s.journal_entry(2, 0).unwrap_err().to_string();
    assert!(
        err.contains("corrupt record in `journal`") && err.contains("does not decode"),
        "{err}"
    );
    let err = s.journal_entry(3, 0).unwrap_err().to_string();
    assert!(err.contains("belongs under another key"), "{err}");
    assert!(s.recent_attempts(10).is_err());
    assert!(s.last_journaled_round().is_err());
    let err = s.reveal_entries(5).unwrap_err().to_string();
    assert!(err.contains("not a share kind"), "{err}");
    let err = s.current_model().unwrap_err().to_string();
    assert!(
        err.contains("current_model") && err.contains("expected 32"),
        "{err}"
    );
    // The journal entry that is intact still reads.
    assert!(s.journal_entry(1, 0).unwrap().is_some());
}
