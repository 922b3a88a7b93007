//! The audit log's files, checkpoints, verification, proofs, export and retention. Tampering
//! is done by hand on the files, as someone holding the folder would.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use base64::Engine as _;
use ferrotune_govern::audit::merkle::{self, Hash};
use ferrotune_govern::audit::note::Verifier;
use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use serde_json::{Value, json};

const ORIGIN: &str = "ferrotune.test/audit";

fn cfg(every: u64) -> AuditConfig {
    AuditConfig {
        origin: Some(ORIGIN.into()),
        checkpoint_every_entries: every,
        checkpoint_every_secs: 3600,
        ..AuditConfig::default()
    }
}

fn ev(actor: &str, action: &str, i: u64) -> Event {
    Event::new(
        actor,
        action,
        json!({"run": i, "artifact": format!("support@{i}")}),
        "ok",
        json!({"lr": 0.001, "step": i}),
    )
}

fn batch(from: u64, n: u64) -> Vec<Event> {
    (from..from + n).map(|i| ev("alice", "train.start", i)).collect()
}

/// A log of `n` entries appended one by one, a checkpoint every `every`.
fn log_of(n: u64, every: u64) -> (tempfile::TempDir, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(every)).unwrap();
    for i in 0..n {
        log.append(&batch(i, 1)).unwrap();
    }
    (dir, log)
}

fn reopen(dir: &Path, every: u64) -> AuditLog {
    AuditLog::open(dir, &cfg(every)).unwrap()
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("entries.log")).unwrap().lines().map(String::from).collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("entries.log"), text).unwrap();
}

/// What an attacker who knows the format does after editing entries: leaves.bin to match.
fn rewrite_leaves(dir: &Path) {
    let leaves: Vec<u8> = lines(dir).iter().flat_map(|l| merkle::leaf_hash(l.as_bytes())).collect();
    std::fs::write(dir.join("leaves.bin"), leaves).unwrap();
}

fn first_problem(log: &AuditLog, trusted: Option<&str>) -> String {
    let r = log.verify(trusted).unwrap();
    assert!(!r.ok, "verify should fail: {r:?}");
    eprintln!("{:#?}", r.problems);
    r.problems[0].clone()
}

fn unb64(s: &Value) -> Hash {
    base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn unb64s(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(unb64).collect()
}

#[test]
fn appended_entries_survive_reopen_with_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(1000)).unwrap();
    assert_eq!(log.size().unwrap(), 0);
    let a = log.append(&batch(0, 3)).unwrap();
    assert_eq!((a.first, a.size), (0, 3));
    let b = log.append(&batch(3, 2)).unwrap();
    assert_eq!((b.first, b.size), (3, 5));
    drop(log);
    let log = reopen(dir.path(), 1000);
    assert_eq!(log.size().unwrap(), 5);
    assert_eq!(log.append(&batch(5, 1)).unwrap().first, 5);
    let all = log.entries(&Filter::default(), false).unwrap();
    assert_eq!(all.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    assert_eq!(all[4].1["subject"]["run"], 4);
    let time = all[0].1["time"].as_str().unwrap();
    assert!(time.len() == 20 && time.ends_with('Z'), "an empty time is filled with now: {time}");
    assert_eq!(lines(dir.path()).len(), 6);
    assert_eq!(std::fs::metadata(dir.path().join("leaves.bin")).unwrap().len(), 6 * 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(log.verify(None).unwrap().ok);
}

#[test]
fn canonical_json_sorts_nested_keys_and_writes_floats_as_strings() {
    let mut e = Event::new(
        "zoë",
        "registry.alias-set",
        json!({"z": 1, "a": {"y": [1.5, {"b": 2, "a": -1}], "x": "line\nbreak \"q\" ✓"}}),
        "ok",
        json!({"lr": 0.1, "big": 1e20, "one": 1.0, "n": 18446744073709551615u64, "t": true, "nil": null}),
    );
    e.time = "2026-12-07T14:00:00Z".into();
    let text = String::from_utf8(e.canonical()).unwrap();
    assert_eq!(
        text,
        r#"{"action":"registry.alias-set","actor":"zoë","fields":{"big":"100000000000000000000","lr":"0.1","n":18446744073709551615,"nil":null,"one":"1","t":true},"outcome":"ok","subject":{"a":{"x":"line\nbreak \"q\" ✓","y":["1.5",{"a":-1,"b":2}]},"z":1},"time":"2026-12-07T14:00:00Z"}"#
    );
    assert!(!text.contains('\n'), "one line");
    // The line parses back to the same event (floats come back as their strings).
    let back: Event = serde_json::from_str(&text).unwrap();
    assert_eq!(back.subject["a"]["x"], "line\nbreak \"q\" ✓");
    assert_eq!(back.canonical(), e.canonical(), "canonical of canonical is itself");
}

#[test]
fn checkpoints_are_signed_every_n_entries_and_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(10)).unwrap();
    let mut signed = Vec::new();
    for i in 0..25 {
        if let Some(s) = log.append(&batch(i, 1)).unwrap().checkpoint {
            signed.push(s);
        }
    }
    assert_eq!(signed, vec![10, 20]);
    let stored = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(stored(dir.path()), ["000000000010.note", "000000000020.note"]);
    let (cp, note) = log.checkpoint().unwrap();
    assert_eq!((cp.size, cp.origin.as_str()), (25, ORIGIN));
    let verified = Verifier::parse(&log.verifier_key()).unwrap().verify(&note).unwrap();
    assert_eq!(verified, cp);
    assert_eq!(log.checkpoint().unwrap(), (cp.clone(), note), "nothing appended since: the same note");
    assert_eq!(stored(dir.path()).len(), 3);
    // A batch crossing the threshold signs at its end.
    assert_eq!(log.append(&batch(25, 7)).unwrap().checkpoint, None);
    assert_eq!(log.append(&batch(32, 3)).unwrap().checkpoint, Some(35));
    // The time rule: with 0 seconds every append signs.
    let timed = AuditLog::open(dir.path(), &AuditConfig { checkpoint_every_secs: 0, ..cfg(1000) }).unwrap();
    assert_eq!(timed.append(&batch(35, 1)).unwrap().checkpoint, Some(36));
    assert!(log.verify(None).unwrap().ok);
}

#[test]
fn a_clean_log_verifies_and_reports_its_root() {
    let (dir, log) = log_of(37, 10);
    let r = log.verify(None).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.entries, r.checkpoints), (37, 3));
    let leaves: Vec<Hash> = lines(dir.path()).iter().map(|l| merkle::leaf_hash(l.as_bytes())).collect();
    assert_eq!(r.root, base64::engine::general_purpose::STANDARD.encode(merkle::root(&leaves)));
    let (_, note) = log.checkpoint().unwrap();
    assert!(log.verify(Some(&note)).unwrap().ok, "a trusted checkpoint of the current size");
}

#[test]
fn a_changed_byte_is_named_by_entry_and_by_checkpoint() {
    let (dir, log) = log_of(30, 10);
    drop(log);
    let mut ls = lines(dir.path());
    ls[15] = ls[15].replace("alice", "alicf");
    write_lines(dir.path(), &ls);
    let p = first_problem(&reopen(dir.path(), 10), None);
    assert!(p.starts_with("entry 15 (line 16 of entries.log) does not match the tree"), "{p}");
    assert!(p.contains("leaves.bin / checkpoint 20 commit to a different value"), "{p}");

    // leaves.bin rewritten to match: the signed checkpoints still disagree.
    rewrite_leaves(dir.path());
    let log = reopen(dir.path(), 10);
    let p = first_problem(&log, None);
    assert!(p.starts_with("checkpoint 20: root differs from the entries"), "{p}");
    assert!(p.contains("entries 10..19"), "the change is located between checkpoints: {p}");
    assert!(log.prove(15).is_err(), "no proof for a log that disagrees with its checkpoints");
}

#[test]
fn deleted_inserted_and_swapped_entries_are_detected() {
    type Edit = fn(&mut Vec<String>);
    let edits: [(&str, Edit); 3] = [
        ("delete", |ls| {
            ls.remove(5);
        }),
        ("insert", |ls| {
            let extra = ls[7].replace("\"step\":7", "\"step\":77");
            ls.insert(7, extra);
        }),
        ("swap", |ls| ls.swap(12, 13)),
    ];
    for (what, edit) in edits {
        let (dir, log) = log_of(30, 10);
        drop(log);
        let mut ls = lines(dir.path());
        edit(&mut ls);
        write_lines(dir.path(), &ls);
        rewrite_leaves(dir.path());
        let log = reopen(dir.path(), 10);
        let r = log.verify(None).unwrap();
        assert!(!r.ok, "{what}: {r:?}");
        let want = if what == "swap" { "checkpoint 20: root differs" } else { "checkpoint 10: root differs" };
        assert!(r.problems[0].starts_with(want), "{what}: {:?}", r.problems);
        if what == "delete" {
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.contains("checkpoint 30 is larger than the log (29): entries were removed")),
                "{r:?}"
            );
        }
    }
}

#[test]
fn a_fork_is_caught_by_a_kept_checkpoint_or_by_the_stored_ones() {
    // Truncate to 15 and regrow 5 other entries; the attacker also removes checkpoint 20.
    let (dir, log) = log_of(20, 10);
    let (_, trusted) = log.checkpoint().unwrap();
    drop(log);
    let cut = |dir: &Path| {
        let ls = lines(dir);
        write_lines(dir, &ls[..15]);
        rewrite_leaves(dir);
    };
    cut(dir.path());
    std::fs::remove_file(dir.path().join("checkpoints/000000000020.note")).unwrap();
    let log = reopen(dir.path(), 10);
    let p = first_problem(&log, Some(&trusted));
    assert_eq!(p, "the trusted checkpoint (size 20) is larger than the log (15): entries were removed");
    log.append(&(15..20).map(|i| ev("mallory", "train.start", i)).collect::<Vec<_>>()).unwrap();
    assert!(log.verify(None).unwrap().ok, "the stored checkpoints alone cannot see this fork");
    let p = first_problem(&log, Some(&trusted));
    assert!(p.starts_with("the trusted checkpoint (size 20) is not consistent with the log"), "{p}");

    // Without removing the stored checkpoint: it no longer matches, and is not overwritten.
    let (dir, log) = log_of(20, 10);
    drop(log);
    let before = std::fs::read(dir.path().join("checkpoints/000000000020.note")).unwrap();
    cut(dir.path());
    let log = reopen(dir.path(), 10);
    assert!(first_problem(&log, None).starts_with("checkpoint 20 is larger than the log (15)"));
    let a = log.append(&(15..20).map(|i| ev("mallory", "train.start", i)).collect::<Vec<_>>()).unwrap();
    assert_eq!((a.size, a.checkpoint), (20, None), "a different checkpoint 20 is not signed");
    assert_eq!(std::fs::read(dir.path().join("checkpoints/000000000020.note")).unwrap(), before);
    assert!(log.checkpoint().is_err());
    assert!(first_problem(&log, None).starts_with("checkpoint 20: root differs from the entries"));
    log.append(&batch(20, 10)).unwrap();
    let r = log.verify(None).unwrap();
    assert!(
        r.problems.iter().any(
            |p| p == "checkpoint 30 is not consistent with checkpoint 20 (a fork or a rewritten history)"
        ),
        "{r:?}"
    );
}

#[test]
fn a_replaced_key_is_refused() {
    let (dir, log) = log_of(12, 10);
    drop(log);
    let other = tempfile::tempdir().unwrap();
    drop(AuditLog::open(other.path(), &cfg(10)).unwrap());
    let ours = std::fs::read_to_string(dir.path().join("verifier.key")).unwrap();
    let theirs = std::fs::read_to_string(other.path().join("verifier.key")).unwrap();

    // verifier.key replaced: open puts signing.key's back, and verify says what it found.
    std::fs::write(dir.path().join("verifier.key"), &theirs).unwrap();
    let log = reopen(dir.path(), 10);
    assert_eq!(std::fs::read_to_string(dir.path().join("verifier.key")).unwrap(), ours);
    let p = first_problem(&log, None);
    assert!(p.contains("verifier.key: held a different key") && p.contains(theirs.trim()), "{p}");
    drop(log);
    assert!(reopen(dir.path(), 10).verify(None).unwrap().ok);

    // signing.key replaced: its checkpoints are not the log's, so nothing is written or signed.
    let saved = std::fs::read(dir.path().join("signing.key")).unwrap();
    std::fs::copy(other.path().join("signing.key"), dir.path().join("signing.key")).unwrap();
    let log = reopen(dir.path(), 10);
    let e = log.append(&batch(12, 1)).unwrap_err().to_string();
    assert!(e.contains("000000000010.note: not signed by this log's signing.key"), "{e}");
    assert!(log.checkpoint().is_err());
    assert_eq!(log.size().unwrap(), 12);
    let r = log.verify(None).unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.starts_with("checkpoint 10: bad signature")), "{r:?}");
    // The auditor's own copy of the key: the checkpoints verify, the folder's key is not it.
    let r = log.verify_with_key(None, Some(ours.trim())).unwrap();
    assert!(!r.problems.iter().any(|p| p.starts_with("checkpoint 10")), "{r:?}");
    assert!(r.problems.iter().any(|p| p.contains("not the key given to verify with")), "{r:?}");
    drop(log);
    std::fs::write(dir.path().join("signing.key"), saved).unwrap();
    let log = reopen(dir.path(), 10);
    assert!(log.append(&batch(12, 1)).is_ok(), "the right key restored");
    // (this handle saw the other key in verifier.key: verify keeps saying so; a fresh one is clean)
    assert!(reopen(dir.path(), 10).verify(None).unwrap().ok);
}

#[test]
fn a_torn_last_record_is_removed_on_open_with_a_warning() {
    let (dir, log) = log_of(10, 4);
    drop(log);
    let path = dir.path().join("entries.log");
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(br#"{"action":"train.st"#);
    std::fs::write(&path, &text).unwrap();
    let log = reopen(dir.path(), 4);
    assert_eq!(
        log.repair_note(),
        Some("audit log: removed a torn last record (19 bytes) left by an interrupted write")
    );
    assert_eq!(log.size().unwrap(), 10);
    assert!(log.verify(None).unwrap().ok);
    assert_eq!(log.append(&batch(10, 1)).unwrap().first, 10);
    drop(log);

    // leaves.bin longer (written before a crash lost the line) and shorter (crash before it).
    let leaves = dir.path().join("leaves.bin");
    let mut l = std::fs::read(&leaves).unwrap();
    l.extend_from_slice(&[7; 40]);
    std::fs::write(&leaves, &l).unwrap();
    let log = reopen(dir.path(), 4);
    assert!(
        log.repair_note().unwrap().contains("leaves.bin held 12 leaf hashes for 11 entries"),
        "{:?}",
        log.repair_note()
    );
    assert!(log.verify(None).unwrap().ok);
    drop(log);
    std::fs::write(&leaves, &l[..32 * 8]).unwrap();
    let log = reopen(dir.path(), 4);
    assert!(log.repair_note().is_some());
    assert_eq!(std::fs::metadata(&leaves).unwrap().len(), 32 * 11);
    assert!(log.verify(None).unwrap().ok);
    // And a clean open says nothing.
    assert_eq!(reopen(dir.path(), 4).repair_note(), None);
}

#[test]
fn handles_appending_concurrently_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    drop(AuditLog::open(dir.path(), &cfg(1000)).unwrap());
    std::thread::scope(|s| {
        for t in 0..2 {
            let dir = dir.path();
            s.spawn(move || {
                let log = AuditLog::open(dir, &cfg(1000)).unwrap();
                for b in 0..5 {
                    let events: Vec<Event> =
                        (0..1000).map(|i| ev(&format!("t{t}"), "inference", b * 1000 + i)).collect();
                    log.append(&events).unwrap();
                }
            });
        }
    });
    let log = reopen(dir.path(), 1000);
    assert_eq!(log.size().unwrap(), 10_000);
    let r = log.verify(None).unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.checkpoints >= 5);
    for t in ["t0", "t1"] {
        let f = Filter { actor: Some(t.into()), ..Filter::default() };
        assert_eq!(log.entries(&f, false).unwrap().len(), 5000);
    }
}

#[test]
fn one_handle_shared_by_threads_appends_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(100)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let log = &log;
            s.spawn(move || {
                for i in 0..50 {
                    log.append(&[ev(&format!("t{t}"), "inference", i)]).unwrap();
                }
            });
        }
    });
    assert_eq!(log.size().unwrap(), 200);
    assert!(log.verify(None).unwrap().ok);
}

#[test]
fn proofs_verify_with_merkle_and_the_note_verifier() {
    let (_dir, log) = log_of(45, 10);
    let verifier = Verifier::parse(&log.verifier_key()).unwrap();
    for index in [0, 7, 39, 44] {
        let b = log.prove(index).unwrap();
        assert_eq!(b["format"], "ferrotune-tlog-proof/v1");
        assert_eq!(b["origin"], ORIGIN);
        assert_eq!(b["index"], index);
        let cp = verifier.verify(b["checkpoint"].as_str().unwrap()).unwrap();
        assert_eq!(b["size"], cp.size);
        assert!(cp.size > index);
        let leaf = merkle::leaf_hash(b["entry"].as_str().unwrap().as_bytes());
        assert_eq!(leaf, unb64(&b["leaf_hash"]));
        assert!(
            merkle::verify_inclusion(&leaf, index, cp.size, &unb64s(&b["inclusion"]), &cp.root),
            "{index}"
        );
        assert_eq!(b["verifier_key"], log.verifier_key());
    }
    assert_eq!(
        log.prove(44).unwrap()["size"],
        45,
        "the latest checkpoint (40) does not cover 44: one is signed"
    );
    assert!(log.prove(45).is_err());

    let c = log.consistency(10, Some(40)).unwrap();
    assert_eq!(c["format"], "ferrotune-tlog-consistency/v1");
    let old = verifier.verify(c["old_checkpoint"].as_str().unwrap()).unwrap();
    let new = verifier.verify(c["new_checkpoint"].as_str().unwrap()).unwrap();
    assert_eq!((old.size, new.size), (10, 40));
    assert_eq!((unb64(&c["old_root"]), unb64(&c["new_root"])), (old.root, new.root));
    assert!(merkle::verify_consistency(10, 40, &old.root, &new.root, &unb64s(&c["proof"])));
    let c = log.consistency(13, None).unwrap();
    assert_eq!((c["old_checkpoint"].clone(), c["new_size"].clone()), (Value::Null, json!(45)));
    let proof = unb64s(&c["proof"]);
    assert!(merkle::verify_consistency(13, 45, &unb64(&c["old_root"]), &unb64(&c["new_root"]), &proof));
    assert!(!merkle::verify_consistency(13, 45, &new.root, &unb64(&c["new_root"]), &proof));
    assert!(log.consistency(0, None).is_err() && log.consistency(46, Some(46)).is_err());
}

#[test]
fn an_export_holds_a_contiguous_range_whose_proofs_verify() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(8)).unwrap();
    for i in 0..40 {
        let actor = if i == 11 || i == 17 || i == 23 { "bob" } else { "alice" };
        log.append(&[ev(actor, "registry.promote", i)]).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("bundle");
    let n = log.export(&Filter { actor: Some("bob".into()), ..Filter::default() }, &out).unwrap();
    assert_eq!(n, 13);
    for f in [
        "entries.log",
        "range.json",
        "checkpoint.note",
        "inclusion.jsonl",
        "consistency.jsonl",
        "verifier.key",
        "README.txt",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let range: Value = serde_json::from_slice(&std::fs::read(out.join("range.json")).unwrap()).unwrap();
    assert_eq!(range, json!({"first": 11, "last": 23, "count": 13, "origin": ORIGIN}));
    let readme = std::fs::read_to_string(out.join("README.txt")).unwrap();
    assert!(
        readme.contains("3 of these 13 entries matched") && readme.contains("scripts/audit/verify.py bundle"),
        "{readme}"
    );
    let vkey = std::fs::read_to_string(out.join("verifier.key")).unwrap();
    let cp = Verifier::parse(vkey.trim())
        .unwrap()
        .verify(&std::fs::read_to_string(out.join("checkpoint.note")).unwrap())
        .unwrap();
    assert!(cp.size > 23);
    let entries = std::fs::read_to_string(out.join("entries.log")).unwrap();
    let proofs = std::fs::read_to_string(out.join("inclusion.jsonl")).unwrap();
    assert_eq!((entries.lines().count(), proofs.lines().count()), (13, 13));
    for (line, row) in entries.lines().zip(proofs.lines()) {
        let row: Value = serde_json::from_str(row).unwrap();
        let leaf = merkle::leaf_hash(line.as_bytes());
        assert_eq!(leaf, unb64(&row["leaf_hash"]));
        let i = row["index"].as_u64().unwrap();
        assert!(
            merkle::verify_inclusion(&leaf, i, cp.size, &unb64s(&row["inclusion"]), &cp.root),
            "entry {i}"
        );
    }
    let stored = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert_eq!(stored, 5);
    let pairs = std::fs::read_to_string(out.join("consistency.jsonl")).unwrap();
    assert_eq!(pairs.lines().count(), 4);
    let verifier = Verifier::parse(vkey.trim()).unwrap();
    for row in pairs.lines() {
        let row: Value = serde_json::from_str(row).unwrap();
        let note = |k: &str| {
            let s = row[k].as_u64().unwrap();
            verifier
                .verify(&std::fs::read_to_string(out.join(format!("checkpoints/{s:012}.note"))).unwrap())
                .unwrap()
        };
        let (old, new) = (note("old_size"), note("new_size"));
        assert!(merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &unb64s(&row["proof"])));
    }
    assert!(log.export(&Filter::default(), &out).is_err(), "a non-empty folder is refused");
    let none = Filter { actor: Some("nobody".into()), ..Filter::default() };
    assert!(log.export(&none, &out.with_file_name("empty")).is_err());
}

#[test]
fn archived_entries_stay_verifiable_and_provable() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(10)).unwrap();
    let old: Vec<Event> = (0..25)
        .map(|i| Event { time: format!("2020-01-{:02}T00:00:00Z", i + 1), ..ev("alice", "train.start", i) })
        .collect();
    log.append(&old).unwrap();
    log.append(&batch(25, 15)).unwrap();
    assert_eq!(log.archive().unwrap(), 25);
    assert_eq!(log.archive().unwrap(), 0, "nothing more is old enough");
    assert_eq!(lines(dir.path()).len(), 15);
    assert!(dir.path().join("archive/000000000000-000000000024.log.gz").is_file());
    assert_eq!(log.size().unwrap(), 40);
    let r = log.verify(None).unwrap();
    assert!(r.ok, "{r:?}");
    let b = log.prove(3).unwrap();
    assert!(b["entry"].as_str().unwrap().contains("2020-01-04"));
    assert_eq!(log.entries(&Filter::default(), false).unwrap().len(), 40);
    let until = Filter { until: Some("2021".into()), ..Filter::default() };
    assert_eq!(log.entries(&until, false).unwrap().len(), 25);
    // A reopened handle (and another process) sees the same.
    let again = reopen(dir.path(), 10);
    assert_eq!((again.size().unwrap(), again.repair_note()), (40, None));
    assert_eq!(again.append(&batch(40, 1)).unwrap().first, 40);
    assert!(again.verify(None).unwrap().ok);
    assert!(log.verify(None).unwrap().ok);

    // A changed segment: its hash, and the checkpoints.
    let seg = dir.path().join("archive/000000000000-000000000024.log.gz");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let p = first_problem(&log, None);
    assert!(p.contains("000000000000-000000000024.log.gz: its SHA-256 differs"), "{p}");
}

#[test]
fn an_archive_cut_short_by_a_crash_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(10)).unwrap();
    let old: Vec<Event> =
        (0..5).map(|i| Event { time: "2020-01-01T00:00:00Z".into(), ..ev("alice", "x", i) }).collect();
    log.append(&old).unwrap();
    log.append(&batch(5, 5)).unwrap();
    let before = std::fs::read(dir.path().join("entries.log")).unwrap();
    assert_eq!(log.archive().unwrap(), 5);
    drop(log);
    // As if the crash came after the manifest was written, before entries.log was replaced.
    std::fs::write(dir.path().join("entries.log"), before).unwrap();
    let log = reopen(dir.path(), 10);
    assert!(
        log.repair_note().unwrap().contains("finished an interrupted archive"),
        "{:?}",
        log.repair_note()
    );
    assert_eq!(lines(dir.path()).len(), 5);
    assert!(log.verify(None).unwrap().ok);
}

#[test]
fn retention_below_six_months_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = AuditLog::open(dir.path(), &AuditConfig { retention_days: 182, ..cfg(10) })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Art. 19") && e.contains("26(6)") && e.contains("six months"), "{e}");
    assert!(AuditLog::open(dir.path(), &AuditConfig { retention_days: 183, ..cfg(10) }).is_ok());
    let e = AuditLog::open(dir.path(), &AuditConfig { origin: Some("other/origin".into()), ..cfg(10) })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("origin"), "the origin is fixed when the log is made: {e}");
}

#[test]
fn entries_filter_by_time_actor_action_subject_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(100)).unwrap();
    let mk =
        |t: &str, actor: &str, action: &str, run: u64| Event { time: t.into(), ..ev(actor, action, run) };
    log.append(&[
        mk("2026-01-01T00:00:00Z", "alice", "registry.promote", 1),
        mk("2026-02-01T00:00:00Z", "bob", "registry.alias-set", 2),
        mk("2026-03-01T00:00:00Z", "alice", "train.start", 3),
        mk("2026-04-01T00:00:00Z", "carol", "registry", 4),
        mk("2026-05-01T00:00:00Z", "alice", "inference", 35),
    ])
    .unwrap();
    let idx = |f: Filter, tail: bool| {
        log.entries(&f, tail).unwrap().into_iter().map(|(i, _)| i).collect::<Vec<_>>()
    };
    let d = Filter::default;
    assert_eq!(
        idx(
            Filter { since: Some("2026-02-01T00:00:00Z".into()), until: Some("2026-04-01".into()), ..d() },
            false
        ),
        [1, 2]
    );
    assert_eq!(idx(Filter { actor: Some("alice".into()), ..d() }, false), [0, 2, 4]);
    assert_eq!(idx(Filter { action: Some("registry.*".into()), ..d() }, false), [0, 1]);
    assert_eq!(idx(Filter { action: Some("registry.".into()), ..d() }, false), [0, 1]);
    assert_eq!(idx(Filter { action: Some("registry".into()), ..d() }, false), [3]);
    assert_eq!(idx(Filter { subject: Some("\"run\":3".into()), ..d() }, false), [2, 4]);
    assert_eq!(idx(Filter { subject: Some("support@35".into()), ..d() }, false), [4]);
    assert_eq!(idx(Filter { limit: Some(2), ..d() }, false), [0, 1]);
    assert_eq!(idx(Filter { limit: Some(2), ..d() }, true), [3, 4]);
    assert_eq!(idx(Filter { actor: Some("alice".into()), limit: Some(2), ..d() }, true), [2, 4]);
    assert_eq!(idx(Filter { limit: Some(0), ..d() }, true), Vec::<u64>::new());

    // A line whose time is not a string still goes through the full check.
    drop(log);
    let mut ls = lines(dir.path());
    ls.push(r#"{"action":"x","actor":"bob","fields":{},"outcome":"ok","subject":{},"time":5}"#.into());
    write_lines(dir.path(), &ls);
    rewrite_leaves(dir.path());
    let log = reopen(dir.path(), 100);
    let idx = |f: Filter| log.entries(&f, false).unwrap().into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(idx(Filter { actor: Some("alice".into()), ..d() }), [0, 2, 4]);
    assert_eq!(idx(Filter { actor: Some("bob".into()), ..d() }), [1, 5]);
}

#[test]
fn an_unparsable_line_and_a_forged_signature_are_named() {
    let (dir, log) = log_of(12, 10);
    drop(log);
    let mut ls = lines(dir.path());
    ls[3] = "not json at all".into();
    write_lines(dir.path(), &ls);
    rewrite_leaves(dir.path());
    let p = first_problem(&reopen(dir.path(), 10), None);
    assert!(p.starts_with("entry 3 (line 4 of entries.log) is not a valid entry"), "{p}");

    let (dir, log) = log_of(12, 10);
    drop(log);
    let path = dir.path().join("checkpoints/000000000010.note");
    let note = std::fs::read_to_string(&path).unwrap();
    // Same signature line, another root: the signature no longer covers the text.
    let mut parts: Vec<&str> = note.split('\n').collect();
    let forged_root = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    parts[2] = &forged_root;
    std::fs::write(&path, parts.join("\n")).unwrap();
    let p = first_problem(&reopen(dir.path(), 10), None);
    assert!(p.starts_with("checkpoint 10: bad signature"), "{p}");
}

#[test]
fn a_handle_notices_what_another_handle_appended() {
    let (dir, a) = log_of(3, 4);
    let b = reopen(dir.path(), 4);
    assert_eq!(
        b.append(&batch(3, 2)).unwrap(),
        ferrotune_govern::audit::Appended { first: 3, size: 5, checkpoint: Some(5) }
    );
    assert_eq!(a.size().unwrap(), 5);
    let next = a.append(&batch(5, 4)).unwrap();
    assert_eq!((next.first, next.size, next.checkpoint), (5, 9, Some(9)));
    assert_eq!(a.checkpoint().unwrap().0.size, 9);
    assert!(b.verify(None).unwrap().ok && a.verify(None).unwrap().ok);
}

#[test]
fn a_rewritten_archive_segment_is_named_even_with_its_manifest_updated() {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &cfg(10)).unwrap();
    let old: Vec<Event> =
        (0..20).map(|i| Event { time: "2020-01-01T00:00:00Z".into(), ..ev("alice", "x", i) }).collect();
    log.append(&old).unwrap();
    log.append(&batch(20, 5)).unwrap();
    assert_eq!(log.archive().unwrap(), 20);
    let seg = dir.path().join("archive/000000000000-000000000019.log.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&seg).unwrap()).read_to_string(&mut text).unwrap();
    let text = text.replacen("\"step\":3", "\"step\":4", 1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(&seg, &bytes).unwrap();
    let manifest = dir.path().join("archive/manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["segments"][0]["sha256"] = json!(hex::encode(sha2::Sha256::digest(&bytes)));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let p = first_problem(&reopen(dir.path(), 10), None);
    assert_eq!(
        p,
        "entry 3 (line 4 of archive/000000000000-000000000019.log.gz) does not match the tree: leaves.bin / checkpoint 20 commit to a different value"
    );
}
