//! `ferrotune rag` as a user runs it on the bundled knowledge base: ingest, query with
//! citations, re-ingest (skipped), delete, eval table for the three modes, and bad input.
//! Needs the MiniLM embedder installed (CI installs it); prints SKIPPED otherwise (fails under
//! FERROTUNE_REQUIRE_MODELS=1).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferrotune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
}

fn run(kb_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(ferrotune().arg("rag").arg("--kb-dir").arg(kb_dir).args(args).output()?)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn embedder_installed() -> bool {
    ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER).is_some()
}

#[test]
fn ingest_query_delete_and_eval_the_bundled_knowledge_base() -> anyhow::Result<()> {
    if !embedder_installed() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let kb = dir.path();
    let docs = repo().join("examples/kb/docs");
    let o = run(kb, &["ingest", "--kb", "bw", &docs.display().to_string()])?;
    assert!(o.status.success(), "{}", text(&o));

    let o = run(
        kb,
        &["query", "--kb", "bw", "How many days do I have to return an item?", "--k", "3", "--json"],
    )?;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let hits = v["hits"].as_array().expect("a list of hits");
    assert!(!hits.is_empty() && hits.len() <= 3);
    assert_eq!(hits[0]["doc_id"], "policies/returns.md", "{v}");
    let span = (hits[0]["start_char"].as_u64().unwrap_or(0), hits[0]["end_char"].as_u64().unwrap_or(0));
    assert!(span.0 < span.1, "{v}");

    // Unchanged documents are skipped on a second ingest.
    let o = run(kb, &["ingest", "--kb", "bw", &docs.display().to_string()])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 added, 0 replaced,"), "{}", text(&o));

    let o = run(
        kb,
        &["eval", "--kb", "bw", "--queries", &repo().join("examples/kb/queries.jsonl").display().to_string()],
    )?;
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for mode in ["bm25", "vector", "hybrid"] {
        assert!(t.contains(mode), "{t}");
    }

    let o = run(kb, &["list", "--kb", "bw"])?;
    assert!(o.status.success() && text(&o).contains("policies/returns.md"), "{}", text(&o));
    let o = run(kb, &["delete", "--kb", "bw", "policies/returns.md"])?;
    assert!(o.status.success(), "{}", text(&o));
    let o = run(kb, &["list", "--kb", "bw"])?;
    assert!(!text(&o).contains("policies/returns.md"), "{}", text(&o));

    // A bad JSONL record: exit 1, file and line named, the knowledge base untouched.
    let before = std::fs::read(kb.join("bw/kb.json"))?;
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\", \"text\": \"fine\"}\n{\"id\": \"b\"}\n")?;
    let o = run(kb, &["ingest", "--kb", "bw", &bad.display().to_string()])?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bad.jsonl:2"), "{}", text(&o));
    assert_eq!(std::fs::read(kb.join("bw/kb.json"))?, before);
    let o = run(kb, &["query", "--kb", "nope", "x"])?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    Ok(())
}

#[test]
fn a_k_beyond_the_limit_is_a_usage_error() -> anyhow::Result<()> {
    // Regression: `--k 18446744073709551615` wrapped `k + 10` to 9 and printed 9 hits, exit 0.
    // A BM25 query on synthetic vectors needs no embedder.
    let dir = tempfile::tempdir()?;
    let kb = dir.path();
    ferrotune_rag::synthetic::build_synthetic_kb(&kb.join("syn"), 30, 8, 1)?;
    let passage = &ferrotune_rag::synthetic::generated_docs(30, 1)[0].text;
    let q: String = passage.split_whitespace().take(12).collect::<Vec<_>>().join(" ");
    for k in ["18446744073709551615", "1001", "0"] {
        let o = run(kb, &["query", "--kb", "syn", &q, "--mode", "bm25", "--k", k])?;
        assert_eq!(o.status.code(), Some(2), "--k {k}: {}", text(&o));
        assert!(text(&o).contains("from 1 to 1000"), "{}", text(&o));
    }
    let o =
        run(kb, &["eval", "--kb", "syn", "--queries", "/nonexistent.jsonl", "--k", "18446744073709551615"])?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(kb, &["query", "--kb", "syn", &q, "--mode", "bm25", "--k", "1000", "--json"])?;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(v["hits"].as_array().is_some_and(|h| h.len() > 10), "{v}");
    Ok(())
}

/// Ingest's refusals, now raised by `ferrotune_rag::ingest` rather than the CLI: the same
/// messages, a failing exit, and no knowledge base left behind.
#[test]
fn ingest_refuses_no_documents_and_an_unknown_embedder_naming_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kb = dir.path();
    let docs = kb.join("docs");
    std::fs::create_dir(&docs)?;
    std::fs::write(docs.join("notes.bin"), [0u8, 1, 2])?;
    let o = run(kb, &["ingest", "--kb", "empty", docs.to_str().expect("utf-8 path")])?;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no documents found in") && text(&o).contains(".jsonl)"), "{}", text(&o));
    assert!(!kb.join("empty").exists(), "nothing written for a refused ingest");
    std::fs::write(docs.join("a.md"), "# Returns\nItems can be returned within 30 days.\n")?;
    let o = run(
        kb,
        &["ingest", "--kb", "kb", "--embedder", "no-such-embedder", docs.to_str().expect("utf-8 path")],
    )?;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o)
            .contains("loading the embedder \"no-such-embedder\" (install it with `ferrotune models pull`)"),
        "{}",
        text(&o)
    );
    assert!(!kb.join("kb").exists(), "nothing written when the embedder cannot load");
    Ok(())
}
