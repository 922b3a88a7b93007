//! Crash consistency of the stores outside training (`train_crash.rs` covers the run folder; the
//! registry and audit log are killed mid-transaction in `crates/govern/tests/crash.rs` and
//! `audit_crash.rs`): the real `ferrotune` binary is stopped at a named point inside a write by
//! `FERROTUNE_TEST_CRASH_AT` (test-only fault injection, `ferrotune_model::crash`), killed there
//! with SIGKILL, and then:
//!
//! - `data prepare`: `--out` is as before (absent, or the empty folder it was) or complete, never
//!   partial; a rerun publishes the same files as an uninterrupted run and leaves no temp folder.
//! - `rag ingest`: every store opens; `rag query` (a reader, which repairs nothing) answers
//!   exactly as before the ingest or as after a completed one — the same chunks and scores in
//!   every mode — never a mix; a rerun of the ingest ends where an uninterrupted one does.
//!   Needs the MiniLM embedder (SKIPPED without it, a failure under FERROTUNE_REQUIRE_MODELS=1).
//! - `keys create` / `keys revoke`: the database opens, and the key list is before or after; a
//!   key is either still valid or refused, as the point says.
//!
//! Each case reports a row `| point | written | outcome |` that `scripts/reliability/crash_matrix.sh`
//! collects into its table (through `$FERROTUNE_CRASH_MATRIX_OUT`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, bail, ensure};
use ferrotune_model::crash::{ENV, REACHED};
use ferrotune_serve::keys::KeyStore;

fn ferrotune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrotune"));
    c.env_remove(ENV);
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_ok(args: &[&str]) -> anyhow::Result<Output> {
    let o = ferrotune().args(args).output()?;
    ensure!(o.status.success(), "`ferrotune {}` failed: {}", args.join(" "), text(&o));
    Ok(o)
}

/// Start `ferrotune ARGS` with the crash point set and return it once it waits there.
fn stop_at(args: &[&str], point: &str) -> anyhow::Result<Child> {
    let mut child =
        ferrotune().args(args).env(ENV, point).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains(REACHED) {
            return Ok(child);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait()?;
    bail!("crash point `{point}` was never reached (exit {status}); stderr:\n{seen}")
}

/// Run with `point` set and SIGKILL it there.
fn crash_at(args: &[&str], point: &str) -> anyhow::Result<()> {
    let mut child = stop_at(args, point)?;
    child.kill()?; // SIGKILL on Unix
    child.wait()?;
    Ok(())
}

/// A row of the script's table: printed, and appended to `$FERROTUNE_CRASH_MATRIX_OUT` when set
/// (the script reads that file; printed lines interleave with the test harness's).
fn report(point: &str, written: &str, outcome: &str) {
    let row = format!("| {point} | {written} | {outcome} |");
    println!("CRASH-MATRIX {row}");
    if let Some(out) = std::env::var_os("FERROTUNE_CRASH_MATRIX_OUT") {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .and_then(|mut f| writeln!(f, "{row}"));
        assert!(written.is_ok(), "writing the matrix row: {written:?}");
    }
}

fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    v.sort();
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// data prepare

/// 5,000 rows (more than one 4,096-row chunk, so `prepare-write` is mid-file), some duplicates.
fn prepare_input(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut rows = String::new();
    for i in 0..5000 {
        let q = format!("Question number {} about the order {}?", i % 4900, i % 4900);
        let a = format!("Answer {i}: the parcel ships within {} days.", i % 7 + 1);
        rows.push_str(
            &serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string(),
        );
        rows.push('\n');
    }
    let p = dir.join("rows.jsonl");
    std::fs::write(&p, rows)?;
    Ok(p)
}

/// The outputs of `prepare` (train, eval, report without its `out`).
fn prepared(out: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut m = BTreeMap::new();
    for n in names(out)? {
        let mut bytes = std::fs::read(out.join(&n))?;
        if n == "report.json" {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes)?;
            v["out"] = serde_json::Value::Null;
            bytes = serde_json::to_vec(&v)?;
        }
        m.insert(n, bytes);
    }
    Ok(m)
}

fn prepare_killed_at(point: &str, written: &str, out_exists: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let input = prepare_input(d)?;
    let input = input.to_str().context("utf8")?;
    let straight = d.join("straight");
    run_ok(&["data", "prepare", input, "--out", straight.to_str().context("utf8")?])?;
    let want = prepared(&straight)?;
    ensure!(want.len() == 3, "{:?}", want.keys());

    let work = d.join("work");
    std::fs::create_dir(&work)?;
    let out = work.join("prepared");
    if out_exists {
        std::fs::create_dir(&out)?;
    }
    let out_s = out.to_str().context("utf8")?;
    crash_at(&["data", "prepare", input, "--out", out_s], point)?;
    // Before: absent or the empty folder it was; nothing under --out half-written.
    ensure!(out.exists() == out_exists, "--out changed existence after a kill at {point}");
    if out_exists {
        ensure!(names(&out)?.is_empty(), "files under --out after a kill at {point}: {:?}", names(&out)?);
    }
    let left = names(&work)?;
    ensure!(left.iter().any(|n| n.starts_with(".prepared.tmp-")), "not killed inside the write: {left:?}");
    // A rerun to the same --out publishes what an uninterrupted run does and clears the dead temp.
    run_ok(&["data", "prepare", input, "--out", out_s])?;
    ensure!(prepared(&out)? == want, "the rerun's outputs differ from an uninterrupted run's");
    ensure!(names(&work)? == ["prepared"], "left beside --out: {:?}", names(&work)?);
    report(
        point,
        written,
        "opens: yes; --out as before (absent / empty), never partial; rerun byte-equal to an uninterrupted run, dead temp removed",
    );
    Ok(())
}

#[test]
fn prepare_killed_mid_rows_leaves_no_partial_output() -> anyhow::Result<()> {
    prepare_killed_at("prepare-write", "data prepare: train/eval.jsonl half written (temp folder)", false)
}

#[test]
fn prepare_killed_before_publishing_leaves_the_empty_out_folder() -> anyhow::Result<()> {
    prepare_killed_at(
        "prepare-fill",
        "data prepare: all files written + fsync'ed, not renamed to --out",
        true,
    )
}

// ---------------------------------------------------------------------------------------------
// rag ingest

fn embedder_installed() -> bool {
    ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER).is_some()
}

const QUESTIONS: [&str; 3] =
    ["How many days do I have to return an item?", "express shipping cost", "gift card balance"];

/// Version 1 of the documents, and version 2: one replaced, one added, one unchanged.
fn write_docs(dir: &Path, version: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let days = if version == 1 { 30 } else { 45 };
    std::fs::write(
        dir.join("returns.md"),
        format!(
            "# Returns\n\nYou may return an item within {days} days of delivery for a full refund. Refunds take five business days.\n"
        ),
    )?;
    std::fs::write(
        dir.join("shipping.txt"),
        "Standard shipping is free over 50 euros. Express shipping costs 9 euros and arrives next day.\n",
    )?;
    if version == 2 {
        std::fs::write(
            dir.join("giftcards.txt"),
            "Gift cards never expire. Check a gift card balance on the account page; they cannot be exchanged for cash.\n",
        )?;
    }
    Ok(())
}

/// Every question in every mode: (doc_id, chunk_id, score) of each hit.
type Answers = BTreeMap<String, Vec<(String, u64, String)>>;

fn answers(kb_dir: &Path) -> anyhow::Result<Answers> {
    let mut all = BTreeMap::new();
    for q in QUESTIONS {
        for mode in ["bm25", "vector", "hybrid"] {
            let o = run_ok(&[
                "rag",
                "--kb-dir",
                kb_dir.to_str().context("utf8")?,
                "query",
                "--kb",
                "kb",
                q,
                "--k",
                "5",
                "--mode",
                mode,
                "--json",
            ])?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
            let hits = v["hits"].as_array().context("hits")?;
            let got = hits
                .iter()
                .map(|h| {
                    (
                        h["doc_id"].as_str().unwrap_or("").to_string(),
                        h["chunk_id"].as_u64().unwrap_or(u64::MAX),
                        h["score"].to_string(),
                    )
                })
                .collect();
            all.insert(format!("{mode}: {q}"), got);
        }
    }
    Ok(all)
}

fn ingest(kb_dir: &Path, docs: &Path) -> Vec<String> {
    ["rag", "--kb-dir", &kb_dir.display().to_string(), "ingest", "--kb", "kb", &docs.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `ingest v1`, then `ingest v2` killed at `point`: the reader's answers must be `before` or
/// `after` (`expect_after` says which), then a rerun must reach `after`.
fn rag_killed_at(point: &str, written: &str, expect_after: bool) -> anyhow::Result<()> {
    if !embedder_installed() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (v1, v2) = (d.join("v1"), d.join("v2"));
    write_docs(&v1, 1)?;
    write_docs(&v2, 2)?;

    let straight = d.join("straight");
    run_ok(&as_strs(&ingest(&straight, &v1)))?;
    let before = answers(&straight)?;
    run_ok(&as_strs(&ingest(&straight, &v2)))?;
    let after = answers(&straight)?;
    ensure!(before != after, "the second ingest changed no answer; the test could not tell them apart");

    let killed = d.join("killed");
    run_ok(&as_strs(&ingest(&killed, &v1)))?;
    crash_at(&as_strs(&ingest(&killed, &v2)), point)?;
    // A reader first (it repairs nothing): the old or the new knowledge base, whole.
    let got = answers(&killed)?;
    let which = if got == before {
        "before"
    } else if got == after {
        "after"
    } else {
        bail!(
            "after a kill at {point} `rag query` answers neither as before nor as after:\n got {got:?}\n before {before:?}\n after {after:?}"
        )
    };
    ensure!((which == "after") == expect_after, "a kill at {point} reads as {which}");
    let list = run_ok(&["rag", "--kb-dir", killed.to_str().context("utf8")?, "list", "--kb", "kb"])?;
    ensure!(text(&list).contains("returns.md"), "{}", text(&list));
    // The rerun (a writer: it settles what the kill left) ends where an uninterrupted one does.
    run_ok(&as_strs(&ingest(&killed, &v2)))?;
    ensure!(
        answers(&killed)? == after,
        "the rerun after a kill at {point} differs from an uninterrupted ingest"
    );
    let kb_files = names(&killed.join("kb"))?;
    ensure!(kb_files == ["bm25", "kb.json", "vectors.bin"], "left in the knowledge base: {kb_files:?}");
    report(
        point,
        written,
        &format!("opens: yes; `rag query` = {which} (ids and scores, 3 modes); rerun = uninterrupted ingest"),
    );
    Ok(())
}

#[test]
fn rag_ingest_killed_with_the_new_files_staged_reads_as_before() -> anyhow::Result<()> {
    rag_killed_at(
        "rag-staged",
        "rag ingest: vectors.bin.next + kb.json.next written, BM25 not committed",
        false,
    )
}

#[test]
fn rag_ingest_killed_inside_the_bm25_commit_reads_as_before() -> anyhow::Result<()> {
    rag_killed_at("rag-bm25-prepared", "rag ingest: tantivy segments written, commit meta.json not", false)
}

#[test]
fn rag_ingest_killed_after_the_bm25_commit_reads_as_after() -> anyhow::Result<()> {
    // The regression: BM25 was committed first and vectors.bin / kb.json renamed in after, so a
    // kill here left BM25 at the new version and the rest at the old: a mix until a writer
    // repaired it, by dropping the replaced document altogether.
    rag_killed_at("rag-bm25", "rag ingest: BM25 committed, vectors.bin and kb.json not renamed in", true)
}

#[test]
fn rag_ingest_killed_between_the_renames_reads_as_after() -> anyhow::Result<()> {
    rag_killed_at("rag-vectors", "rag ingest: vectors.bin renamed in, kb.json not", true)
}

// ---------------------------------------------------------------------------------------------
// keys

fn keys(db: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec!["keys".to_string(), "--db".into(), db.display().to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn live_names(db: &Path) -> anyhow::Result<Vec<String>> {
    let store = KeyStore::open(db)?;
    Ok(store.list()?.into_iter().filter(|r| r.revoked_unix.is_none()).map(|r| r.key.name).collect())
}

/// A database with a live key `alice`; returns her secret.
fn keys_setup(db: &Path) -> anyhow::Result<String> {
    let o = run_ok(&as_strs(&keys(db, &["create", "--name", "alice"])))?;
    Ok(String::from_utf8(o.stdout)?.trim().to_string())
}

fn create_killed_at(point: &str, written: &str, committed: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keys.db");
    let alice = keys_setup(&db)?;
    crash_at(&as_strs(&keys(&db, &["create", "--name", "bob"])), point)?;
    let want: Vec<String> = if committed { vec!["alice".into(), "bob".into()] } else { vec!["alice".into()] };
    ensure!(live_names(&db)? == want, "keys after a kill at {point}: {:?}", live_names(&db)?);
    ensure!(KeyStore::open(&db)?.lookup(&alice)?.is_some(), "alice's key stopped working");
    let list = run_ok(&as_strs(&keys(&db, &["list"])))?;
    ensure!(text(&list).contains("alice"), "{}", text(&list));
    if committed {
        // Its secret was never shown: the operator revokes it and makes another.
        run_ok(&as_strs(&keys(&db, &["revoke", "bob"])))?;
    }
    run_ok(&as_strs(&keys(&db, &["create", "--name", "bob"])))?;
    report(
        point,
        written,
        &format!(
            "opens: yes; key list = {}; other keys valid; create again works",
            if committed { "after (bob live, secret never shown: revoke it)" } else { "before" }
        ),
    );
    Ok(())
}

fn revoke_killed_at(point: &str, written: &str, committed: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keys.db");
    let alice = keys_setup(&db)?;
    crash_at(&as_strs(&keys(&db, &["revoke", "alice"])), point)?;
    let valid = KeyStore::open(&db)?.lookup(&alice)?.is_some();
    ensure!(
        valid != committed,
        "after a kill at {point} alice's key is {}",
        if valid { "valid" } else { "refused" }
    );
    if !committed {
        run_ok(&as_strs(&keys(&db, &["revoke", "alice"])))?;
    }
    ensure!(KeyStore::open(&db)?.lookup(&alice)?.is_none(), "alice's key still valid after the revoke");
    report(
        point,
        written,
        &format!(
            "opens: yes; the key {}",
            if committed { "is refused (after)" } else { "is still valid (before); revoke again works" }
        ),
    );
    Ok(())
}

#[test]
fn keys_create_killed_before_its_commit_leaves_the_list_as_before() -> anyhow::Result<()> {
    create_killed_at("key-create", "keys create: row inserted, transaction not committed", false)
}

#[test]
fn keys_create_killed_after_its_commit_leaves_the_key_listed() -> anyhow::Result<()> {
    create_killed_at("key-created", "keys create: committed (in the WAL), secret not yet printed", true)
}

#[test]
fn keys_revoke_killed_before_its_commit_leaves_the_key_valid() -> anyhow::Result<()> {
    revoke_killed_at("key-revoke", "keys revoke: row updated, transaction not committed", false)
}

#[test]
fn keys_revoke_killed_after_its_commit_refuses_the_key() -> anyhow::Result<()> {
    revoke_killed_at("key-revoked", "keys revoke: committed (in the WAL), not yet reported", true)
}
