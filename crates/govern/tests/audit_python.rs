//! The independent Python verifier (scripts/audit/verify.py, written from RFC 9162 and the C2SP
//! signed-note / tlog-checkpoint texts, not from this crate) accepts what `AuditLog` exports,
//! proves and prints as consistency bundles, and rejects tampered copies.
//! Runs only with FERROTUNE_CHECK_AUDIT_PY=1: scripts/audit/verify.sh makes a virtualenv with
//! `cryptography` (.venv-audit, or $FERROTUNE_AUDIT_VENV) on first use.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use serde_json::json;

const ORIGIN: &str = "ferrotune.test/audit-python";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs verify.sh; returns (exit code, last stdout line, all output).
fn verify(args: &[&str], path: &Path, key_file: &Path) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/audit/verify.sh"))
        .arg(args[0])
        .arg(path)
        .args(&args[1..])
        .arg("--key-file")
        .arg(key_file)
        .output()
        .expect("run scripts/audit/verify.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or("").to_string();
    (out.status.code().unwrap_or(-1), last, all)
}

fn assert_ok(args: &[&str], path: &Path, key_file: &Path) {
    let (code, last, all) = verify(args, path, key_file);
    println!("{all}");
    assert_eq!((code, last.as_str()), (0, "OK"), "verify.py {} {} failed:\n{all}", args[0], path.display());
}

fn assert_fail(args: &[&str], path: &Path, key_file: &Path, needle: &str) {
    let (code, last, all) = verify(args, path, key_file);
    println!("{all}");
    assert_eq!(code, 1, "verify.py {} {} should fail:\n{all}", args[0], path.display());
    assert!(
        last.starts_with("FAIL: ") && last.contains(needle),
        "want a FAIL naming {needle:?}, got:\n{all}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Events whose canonical JSON exercises escaping, key order and number forms, so that a
/// difference between our canonical form and the verifier's (sorted keys, `,`/`:` separators,
/// UTF-8 unescaped, no floats) shows up as a FAIL.
fn tricky_events() -> Vec<Event> {
    vec![
        Event::new(
            "alice",
            "registry.alias-set",
            json!({"artifact": "sup\"port\\x@2", "run": 3, "sha256": "ab".repeat(32)}),
            "ok",
            json!({"z": 1, "a": [1, -2, 18446744073709551615u64], "é": "grüße ✓ 😀", "B": {"y": null, "x": true}}),
        ),
        Event::new(
            "bob",
            "inference",
            json!({"model": "support", "ctrl": "tab\there\nnl \u{1} \u{1f} \u{7f} \u{2028}"}),
            "refused",
            json!({"lr": 0.0002, "loss": 1.5, "n": 0, "neg": -7, "empty": {}, "list": []}),
        ),
    ]
}

#[test]
fn python_verifier_accepts_our_bundles_and_rejects_tampered_ones() {
    if std::env::var("FERROTUNE_CHECK_AUDIT_PY").as_deref() != Ok("1") {
        println!("SKIPPED (set FERROTUNE_CHECK_AUDIT_PY=1)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        origin: Some(ORIGIN.into()),
        checkpoint_every_entries: 4,
        checkpoint_every_secs: 3600,
        ..AuditConfig::default()
    };
    let log = AuditLog::open(&tmp.path().join("audit"), &cfg).unwrap();
    let mut checkpoints = Vec::new();
    for i in 0..11u64 {
        let ev = Event::new("alice", "train.start", json!({"run": i}), "ok", json!({"steps": 100 + i}));
        checkpoints.extend(log.append(&[ev]).unwrap().checkpoint);
    }
    checkpoints.extend(log.append(&tricky_events()).unwrap().checkpoint);
    log.checkpoint().unwrap();
    let size = log.size().unwrap();
    assert_eq!(size, 13);

    let key_file = tmp.path().join("verifier.key");
    std::fs::write(&key_file, log.verifier_key()).unwrap();

    // The export folder, as is.
    let export = tmp.path().join("export");
    let n = log.export(&Filter::default(), &export).unwrap();
    assert_eq!(n, 13);
    assert_ok(&["bundle"], &export, &key_file);

    // Inclusion bundles, for a plain entry and for the two tricky ones.
    for index in [0, 5, 11, 12] {
        let bundle = log.prove(index).unwrap();
        let path = tmp.path().join(format!("proof-{index}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&bundle).unwrap()).unwrap();
        assert_ok(&["proof"], &path, &key_file);
    }

    // Consistency bundles from each checkpoint signed on the way (and from size 1) to the latest.
    for old in checkpoints.iter().copied().chain([1]) {
        let bundle = log.consistency(old, None).unwrap();
        let path = tmp.path().join(format!("consistency-{old}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&bundle).unwrap()).unwrap();
        assert_ok(&["consistency"], &path, &key_file);
    }

    // Tampered copies fail.
    // (a valid key of someone else: the Go note package's test key)
    let other = tmp.path().join("other.key");
    std::fs::write(&other, "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n").unwrap();
    assert_fail(&["bundle"], &export, &other, "no signature by key PeterNeumann+c74f20a3");

    let flipped = tmp.path().join("flipped");
    copy_dir(&export, &flipped);
    let entries = std::fs::read_to_string(flipped.join("entries.log")).unwrap();
    let mut lines: Vec<&str> = entries.lines().collect();
    let changed = lines[3].replacen("alice", "alicf", 1);
    lines[3] = &changed;
    std::fs::write(flipped.join("entries.log"), lines.join("\n") + "\n").unwrap();
    assert_fail(&["bundle"], &flipped, &key_file, "entry 3");

    let dropped = tmp.path().join("dropped");
    copy_dir(&export, &dropped);
    let kept: Vec<&str> = entries.lines().enumerate().filter(|(i, _)| *i != 6).map(|(_, l)| l).collect();
    std::fs::write(dropped.join("entries.log"), kept.join("\n") + "\n").unwrap();
    assert_fail(&["bundle"], &dropped, &key_file, "entries.log has 12 entries");

    let mut bundle = log.prove(5).unwrap();
    bundle["index"] = json!(6);
    let path = tmp.path().join("proof-wrong-index.json");
    std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
    assert_fail(&["proof"], &path, &key_file, "inclusion proof: entry 6");
}
