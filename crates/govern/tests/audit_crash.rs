//! Processes: a writer `kill -9`ed in the middle of appending (the test binary re-runs itself as
//! the child, as `crash.rs` does), and two processes appending at once through the file lock.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use serde_json::json;

const WRITER_ENV: &str = "AUDIT_CHILD_WRITER_DIR";
const BATCHES_ENV: &str = "AUDIT_CHILD_BATCHES_DIR";

fn cfg() -> AuditConfig {
    AuditConfig {
        origin: Some("ferrotune.test/audit-crash".into()),
        checkpoint_every_entries: 500,
        ..AuditConfig::default()
    }
}

fn ev(actor: &str, i: u64) -> Event {
    let pad = "x".repeat((i % 7 * 40) as usize);
    Event::new(
        actor,
        "inference",
        json!({"request": format!("req-{i}")}),
        "ok",
        json!({"tokens": i, "pad": pad}),
    )
}

/// Child side: appends batches of varying size (up to ~1 MB, so a kill can land inside one
/// write) until killed. Does nothing in a normal test run.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else { return };
    let log = AuditLog::open(Path::new(&dir), &cfg()).unwrap();
    println!("READY");
    for round in 0u64.. {
        let n = [1, 700, 3000, 37][round as usize % 4];
        let events: Vec<Event> = (0..n).map(|i| ev("writer", round * 10_000 + i)).collect();
        log.append(&events).unwrap();
    }
}

/// Child side: appends 5 batches of 1000 under its own name, then exits.
#[test]
fn child_batches() {
    let Some(dir) = std::env::var_os(BATCHES_ENV) else { return };
    let name = std::env::var("AUDIT_CHILD_NAME").unwrap();
    let log = AuditLog::open(Path::new(&dir), &cfg()).unwrap();
    for b in 0..5 {
        let events: Vec<Event> = (0..1000).map(|i| ev(&name, b * 1000 + i)).collect();
        log.append(&events).unwrap();
    }
}

fn child(test: &str, env: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture"]).env(env, dir).stdout(Stdio::piped()).stderr(Stdio::null());
    cmd
}

fn wait_ready(c: &mut std::process::Child) {
    let stdout = c.stdout.take().unwrap();
    let started = Instant::now();
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().starts_with("READY") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "child did not start");
    }
    panic!("the child exited before READY")
}

#[test]
fn a_writer_killed_mid_append_leaves_a_log_that_opens_repaired_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut repaired = 0;
    let mut last_size = 0;
    for round in 0..12u64 {
        let mut c = child("child_writer", WRITER_ENV, dir.path()).spawn().unwrap();
        wait_ready(&mut c);
        std::thread::sleep(Duration::from_millis(120 + 23 * round));
        c.kill().unwrap();
        c.wait().unwrap();
        let log = AuditLog::open(dir.path(), &cfg()).unwrap();
        if let Some(note) = log.repair_note() {
            eprintln!("round {round}: {note}");
            repaired += 1;
        }
        let size = log.size().unwrap();
        assert!(size >= last_size, "complete entries are never lost ({size} < {last_size})");
        last_size = size;
        let r = log.verify(None).unwrap();
        assert!(r.ok, "round {round}: {r:?}");
        // And it still takes appends and checkpoints.
        log.append(&[ev("parent", round)]).unwrap();
        log.checkpoint().unwrap();
        last_size += 1;
    }
    eprintln!("{last_size} entries after 12 killed writers; {repaired} opens repaired an interrupted write");
    assert!(last_size > 100, "the writers got something done");
}

#[test]
fn two_processes_appending_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kids: Vec<_> = ["p0", "p1"]
        .iter()
        .map(|name| {
            child("child_batches", BATCHES_ENV, dir.path()).env("AUDIT_CHILD_NAME", name).spawn().unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let log = AuditLog::open(dir.path(), &cfg()).unwrap();
    assert_eq!(log.size().unwrap(), 10_000);
    let r = log.verify(None).unwrap();
    assert!(r.ok, "{r:?}");
    for name in ["p0", "p1"] {
        let f = Filter { actor: Some(name.into()), ..Filter::default() };
        let mine = log.entries(&f, false).unwrap();
        assert_eq!(mine.len(), 5000);
        // Each batch is contiguous: one write under the lock.
        for chunk in mine.chunks(1000) {
            assert_eq!(chunk[999].0 - chunk[0].0, 999, "{name}: a batch was interleaved");
        }
    }
}
