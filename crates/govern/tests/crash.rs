//! `kill -9` in the middle of writing: the test binary re-runs itself as a child process that
//! writes in a tight loop (`child_writer`) or holds a run open (`child_runner`), and the parent
//! SIGKILLs it. Every transaction is all-or-nothing, so the file must stay consistent.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferrotune_govern::*;

const WRITER_ENV: &str = "GOVERN_CHILD_DB";
const RUNNER_ENV: &str = "GOVERN_CHILD_RUN_DB";

/// Child side: registers runs, artifacts and alias moves until killed. Does nothing in a
/// normal test run.
#[test]
fn child_writer() {
    let Some(db) = std::env::var_os(WRITER_ENV) else { return };
    let reg = Registry::open(Path::new(&db)).unwrap();
    let m = model(&reg);
    let t = dataset(&reg, "train.jsonl");
    let open = Policy::default();
    let pid = std::process::id();
    println!("READY");
    for i in 0.. {
        let name = format!("n{}", i % 3);
        let run = reg.begin_run(&new_run(m, vec![t], &name)).unwrap();
        let mut a = new_artifact(&name, &format!("{pid}-{i}"));
        a.run = Some(run);
        a.base_model = Some(m);
        let v = reg.register_artifact(&a).unwrap().version;
        reg.promote(&name, v, "latest", "newest", "writer", &open).unwrap();
        let end = RunEnd {
            status: RunStatus::Succeeded,
            error: None,
            tokens: Some(i),
            steps: Some(1),
            metrics: None,
            flops: None,
        };
        reg.finish_run(run, &end).unwrap();
    }
}

/// Child side: begins a run, says its id, and waits to be killed.
#[test]
fn child_runner() {
    let Some(db) = std::env::var_os(RUNNER_ENV) else { return };
    let reg = Registry::open(Path::new(&db)).unwrap();
    let run = reg.begin_run(&new_run(model(&reg), vec![], "support")).unwrap();
    println!("RUN {run}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn child(test: &str, env: &str, db: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture"]).env(env, db).stdout(Stdio::piped()).stderr(Stdio::null());
    cmd
}

/// Wait for the child to print a line starting with `prefix` (on a busy machine starting the
/// test binary can take longer than the kill delay); returns the rest of the line.
fn wait_for(c: &mut std::process::Child, prefix: &str) -> String {
    let stdout = c.stdout.take().unwrap();
    let started = Instant::now();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "child did not start");
    }
    panic!("the child exited without printing {prefix}")
}

#[test]
fn killing_a_writer_mid_transaction_leaves_a_consistent_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.db");
    for round in 0..5u64 {
        let mut c = child("child_writer", WRITER_ENV, &db).spawn().unwrap();
        wait_for(&mut c, "READY");
        std::thread::sleep(Duration::from_millis(250 + 25 * round));
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // An independent look at the file, as SQLite sees it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);

    let reg = Registry::open(&db).unwrap();
    let arts = reg.artifacts().unwrap();
    assert!(arts.len() >= 5, "the writers got something done before being killed ({} artifacts)", arts.len());
    eprintln!("{} artifacts from 5 killed writers", arts.len());
    let mut by_name: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for a in &arts {
        by_name.entry(a.name.clone()).or_default().push(a.version);
    }
    for (name, mut versions) in by_name {
        versions.sort_unstable();
        assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>(), "{name}: versions contiguous");
    }
    let runs: std::collections::HashMap<i64, RunRecord> =
        reg.runs().unwrap().into_iter().map(|r| (r.id, r)).collect();
    for a in &arts {
        let run = a.run.expect("the writer links every artifact to its run");
        assert!(runs.contains_key(&run), "{}: run {run} exists", a.reference());
    }
    for (name, alias, version) in reg.aliases().unwrap() {
        let a = reg.resolve(&format!("{name}@{alias}"), "x").unwrap();
        assert_eq!(a.version, version, "{name}@{alias}");
    }
    assert!(
        runs.values().all(|r| r.status != RunStatus::Running),
        "a killed writer's open run reads as abandoned"
    );
    assert_eq!(reg.check().unwrap(), Vec::<String>::new());
    // And the file still takes writes.
    assert!(artifact(&reg, "n0", "after the crash").version > 1);
}

#[test]
fn a_run_whose_process_was_killed_reads_as_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.db");
    let mut c = child("child_runner", RUNNER_ENV, &db).spawn().unwrap();
    let run: i64 = wait_for(&mut c, "RUN ").parse().unwrap();
    let reg = Registry::open(&db).unwrap();
    let r = reg.run(run).unwrap();
    assert_eq!((r.status, r.pid), (RunStatus::Running, c.id()), "alive: running");
    c.kill().unwrap();
    c.wait().unwrap();
    assert_eq!(reg.run(run).unwrap().status, RunStatus::Abandoned);
    assert_eq!(reg.runs().unwrap()[0].status, RunStatus::Abandoned);
}
