//! A knowledge base end to end with the real MiniLM: ingest → query (three modes, spans point at
//! the source text) → unchanged re-ingest is skipped → a changed file replaces its chunks →
//! delete → reopen; plus the writer lock, concurrent readers during an ingest, and the repair of
//! an interrupted change.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use ferrotune_rag::html::html_to_text;
use ferrotune_rag::source::collect;
use ferrotune_rag::{ChunkConfig, KbSettings, KnowledgeBase, Mode, RagError, Writer};

const RETURNS: &str = "# Returns\n\nYou can return an item within 30 days of delivery for a full refund. \
Print the free label from Your Orders and drop the parcel at a ParcelPoint.\n\n\
The refund reaches your original payment method within 5 business days after we receive the parcel. \
Software keys cannot be refunded once activated. Brightwave Plus members get 60 days instead of 30.\n";

const SHIPPING: &str = "<html><body><h1>Shipping</h1><p>Standard delivery is free above EUR 49 and takes \
3-5 business days.</p><p>Express delivery costs EUR 9.90 and arrives the next business day when you \
order before 14:00.</p></body></html>";

const FAQ: &str = "{\"id\": \"faq-1\", \"text\": \"Gift cards are valid for three years and cannot be exchanged for cash.\", \"metadata\": {\"topic\": \"payment\"}}\n\
{\"id\": \"faq-2\", \"text\": \"Invoices can be downloaded as PDF from Your Orders once the order has shipped.\"}\n";

fn write_docs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(dir.join("policies/returns.md"), RETURNS)?;
    std::fs::write(dir.join("shipping.html"), SHIPPING)?;
    std::fs::write(dir.join("faq.jsonl"), FAQ)?;
    std::fs::write(dir.join("notes.bin"), [0u8, 1, 2])?; // skipped: unknown extension
    Ok(())
}

/// The indexed text of a document, to check citation spans against.
fn source_text(docs: &Path, id: &str) -> String {
    match id {
        "policies/returns.md" => std::fs::read_to_string(docs.join(id)).unwrap_or_default(),
        "shipping.html" => html_to_text(SHIPPING),
        "faq-1" => "Gift cards are valid for three years and cannot be exchanged for cash.".into(),
        "faq-2" => "Invoices can be downloaded as PDF from Your Orders once the order has shipped.".into(),
        "late.txt" => std::fs::read_to_string(docs.join(id)).unwrap_or_default(),
        _ => String::new(),
    }
}

fn check_spans(kb: &KnowledgeBase, docs: &Path, q: &str, mode: Mode) -> anyhow::Result<Vec<String>> {
    let hits = kb.query(q, 10, mode)?;
    for h in &hits {
        let src: Vec<char> = source_text(docs, &h.doc_id).chars().collect();
        let span: String = src[h.start_char as usize..h.end_char as usize].iter().collect();
        assert_eq!(span, h.text, "span of {} chunk {}", h.doc_id, h.chunk_index);
    }
    Ok(hits.into_iter().map(|h| h.doc_id).collect())
}

fn settings() -> KbSettings {
    // Small chunks so the returns document splits into several (with overlap).
    KbSettings { chunking: ChunkConfig { max_tokens: 24, overlap_tokens: 6 }, ..KbSettings::default() }
}

#[test]
fn ingest_query_replace_delete_reopen() -> anyhow::Result<()> {
    let Some(embedder) = common::embedder() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    let kb_dir = tmp.path().join("kb");
    write_docs(&docs)?;

    let collected = collect(std::slice::from_ref(&docs))?;
    assert_eq!(collected.skipped_files.len(), 1);
    let ids: Vec<&str> = collected.docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["faq-1", "faq-2", "policies/returns.md", "shipping.html"]);

    let mut w = Writer::open(&kb_dir, Some(&settings()), embedder.dim())?;
    // One writer at a time.
    assert!(matches!(Writer::open(&kb_dir, None, embedder.dim()), Err(RagError::Locked { .. })));
    let r = w.ingest(&collected.docs, &embedder, &mut |_| {})?;
    assert_eq!((r.added.len(), r.replaced.len(), r.unchanged.len()), (4, 0, 0));
    let returns_chunks = w.documents().iter().find(|d| d.id == "policies/returns.md").map_or(0, |d| d.chunks);
    assert!(returns_chunks >= 3, "returns.md should split into several chunks, got {returns_chunks}");

    let kb = KnowledgeBase::open(&kb_dir)?.with_embedder(embedder.clone());
    assert_eq!(check_spans(&kb, &docs, "express delivery cost", Mode::Bm25)?[0], "shipping.html");
    assert_eq!(
        check_spans(&kb, &docs, "how quickly will my parcel arrive", Mode::Vector)?[0],
        "shipping.html"
    );
    assert_eq!(check_spans(&kb, &docs, "voucher validity", Mode::Hybrid)?[0], "faq-1");
    let hits = kb.query("gift cards", 1, Mode::Hybrid)?;
    assert_eq!(hits[0].metadata.get("topic").and_then(|v| v.as_str()), Some("payment"));
    assert!(hits[0].bm25_rank.is_some() && hits[0].vector_rank.is_some());

    // Unchanged input: nothing embedded, nothing written.
    let r = w.ingest(&collected.docs, &embedder, &mut |_| {})?;
    assert_eq!((r.unchanged.len(), r.chunks_written), (4, 0));

    // A changed file replaces its chunks; a reader sees it after reload.
    let vectors_before = std::fs::read(kb_dir.join("vectors.bin"))?;
    let manifest_before = std::fs::read(kb_dir.join("kb.json"))?;
    std::fs::write(
        docs.join("policies/returns.md"),
        RETURNS.replace("30 days of delivery", "45 days of delivery"),
    )?;
    let collected = collect(std::slice::from_ref(&docs))?;
    let r = w.ingest(&collected.docs, &embedder, &mut |_| {})?;
    assert_eq!(r.replaced, ["policies/returns.md"]);
    assert_eq!(r.chunks_removed, returns_chunks);
    kb.reload()?;
    check_spans(&kb, &docs, "return within 45 days", Mode::Hybrid)?;
    for mode in Mode::ALL {
        for h in kb.query("return an item within days of delivery", 20, mode)? {
            assert!(!h.text.contains("30 days of delivery"), "stale chunk after replace ({mode:?})");
        }
    }

    // Delete one document.
    assert_eq!(w.delete("faq-1")?, 1);
    assert!(matches!(w.delete("faq-1"), Err(RagError::UnknownDocument { .. })));
    drop(w);
    kb.reload()?;
    for mode in Mode::ALL {
        assert!(!check_spans(&kb, &docs, "gift cards cash", mode)?.contains(&"faq-1".to_string()));
    }

    // Restart: a fresh open sees the same state, and the three parts agree.
    drop(kb);
    let kb = KnowledgeBase::open(&kb_dir)?.with_embedder(embedder.clone());
    let listed: Vec<String> = kb.documents().into_iter().map(|d| d.id).collect();
    assert_eq!(listed, ["faq-2", "policies/returns.md", "shipping.html"]);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(kb_dir.join("kb.json"))?)?;
    let vectors = ferrotune_rag::vectors::VectorIndex::read(&kb_dir.join("vectors.bin"))?;
    assert_eq!(vectors.len(), kb.num_chunks());
    assert_eq!(manifest["generation"].as_u64(), Some(vectors.generation));

    // An interrupted change (vectors and manifest from before the replace and the delete, BM25
    // after both) is repaired by the next writer: the documents whose chunks are not in both
    // indexes are dropped, and ingesting the same files again restores them.
    drop(kb);
    std::fs::write(kb_dir.join("vectors.bin"), vectors_before)?;
    std::fs::write(kb_dir.join("kb.json"), manifest_before)?;
    let mut w = Writer::open(&kb_dir, None, embedder.dim())?;
    assert_eq!(w.repaired(), ["faq-1", "policies/returns.md"]);
    let r = w.ingest(&collected.docs, &embedder, &mut |_| {})?;
    assert_eq!(r.added, ["faq-1", "policies/returns.md"]);
    assert_eq!(r.unchanged, ["faq-2", "shipping.html"]);
    drop(w);
    let kb = KnowledgeBase::open(&kb_dir)?.with_embedder(embedder);
    let vectors = ferrotune_rag::vectors::VectorIndex::read(&kb_dir.join("vectors.bin"))?;
    assert_eq!(vectors.len(), kb.num_chunks());
    let ids: HashSet<String> = kb.documents().into_iter().map(|d| d.id).collect();
    assert!(ids.contains("policies/returns.md") && ids.contains("faq-1"));
    check_spans(&kb, &docs, "refund 45 days", Mode::Hybrid)?;
    Ok(())
}

#[test]
fn readers_query_from_many_threads_while_a_writer_ingests() -> anyhow::Result<()> {
    let Some(embedder) = common::embedder() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let docs = tmp.path().join("docs");
    let kb_dir = tmp.path().join("kb");
    write_docs(&docs)?;
    let mut w = Writer::open(&kb_dir, None, embedder.dim())?;
    w.ingest(&collect(std::slice::from_ref(&docs))?.docs, &embedder, &mut |_| {})?;

    let kb = Arc::new(KnowledgeBase::open(&kb_dir)?.with_embedder(embedder.clone()));
    std::fs::write(docs.join("late.txt"), "Late addition: the Drift e-scooter is limited to 20 km/h.")?;
    let late = collect(std::slice::from_ref(&docs))?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let kb = kb.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    for _ in 0..5 {
                        let hits = kb.query("express delivery", 3, Mode::Hybrid)?;
                        anyhow::ensure!(hits.first().map(|h| h.doc_id.as_str()) == Some("shipping.html"));
                    }
                    Ok(())
                })
            })
            .collect();
        w.ingest(&late.docs, &embedder, &mut |_| {})?;
        for r in readers {
            r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(())
    })?;
    // The open reader keeps its snapshot until reload; then it sees the new document.
    assert!(!kb.documents().iter().any(|d| d.id == "late.txt"));
    kb.reload()?;
    assert_eq!(check_spans(&kb, &docs, "scooter speed limit", Mode::Hybrid)?[0], "late.txt");
    Ok(())
}
