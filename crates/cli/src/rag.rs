//! `ferrotune rag ingest | query | list | delete | eval`: knowledge bases (`ferrotune-rag`) on the
//! command line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use ferrotune_rag::eval::{evaluate, read_queries};
use ferrotune_rag::ingest::Event;
use ferrotune_rag::manifest::Manifest;
use ferrotune_rag::{IngestSpec, KnowledgeBase, MAX_K, Mode, Progress, Writer, kb_path};

#[derive(Args)]
#[command(after_help = "Knowledge bases live in $FERROTUNE_HOME/kb/NAME (default ~/.ferrotune/kb/NAME); \
--kb-dir DIR puts NAME under DIR instead.\n\
Retrieval: BM25 (tantivy, English stemming) and all-MiniLM-L6-v2 embeddings (exact cosine), fused \
with Reciprocal Rank Fusion (k = 60) in hybrid mode. Citations give the document id and a char \
span [start, end) into the document's text (Unicode characters, not bytes; for HTML, into the \
extracted text).")]
pub struct RagArgs {
    /// Folder holding the knowledge bases (each in DIR/NAME); default $FERROTUNE_HOME/kb.
    #[arg(long, global = true, value_name = "DIR", env = "FERROTUNE_KB_DIR")]
    kb_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: RagCommand,
}

#[derive(Subcommand)]
enum RagCommand {
    /// Add or update documents: .txt, .md/.markdown, .html/.htm files (folders recursed, hidden
    /// entries skipped) and .jsonl records {"id", "text", "metadata"?}. Unchanged documents are
    /// skipped (content hash); changed ones replace their old chunks. All input is read and checked
    /// first: on any error nothing is written.
    Ingest(IngestArgs),
    /// Retrieve the best chunks for a question, with document id, char span and score.
    Query(QueryArgs),
    /// List the documents of a knowledge base.
    List(ListArgs),
    /// Remove one document (by id, as `list` shows it) and its chunks.
    Delete(DeleteArgs),
    /// Score retrieval on labelled queries (JSONL {"query", "relevant": [doc ids]}) for bm25,
    /// vector and hybrid: recall@k, MRR@10, nDCG@10.
    Eval(EvalArgs),
}

#[derive(Args)]
struct IngestArgs {
    /// Knowledge base name (a folder in $FERROTUNE_HOME/kb, or in --kb-dir); created on first ingest.
    #[arg(long)]
    kb: String,
    /// Files or folders. Document ids are paths relative to the folder given (for a file given
    /// directly: its file name); JSONL records use their "id".
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Chunk size in embedder tokens (MiniLM word pieces, without [CLS]/[SEP]). Fixed when the
    /// knowledge base is created. Default 200: MiniLM reads at most 256 tokens and truncates the
    /// rest, so 200 fits with room to spare and is about one or two paragraphs.
    #[arg(long, value_name = "TOKENS")]
    chunk_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks (default 40, about two sentences), so a passage cut in
    /// two is still found whole; none after a paragraph break. Fixed at creation; at most half the
    /// chunk size.
    #[arg(long, value_name = "TOKENS")]
    overlap_tokens: Option<usize>,
    /// Embedder for a new knowledge base: an installed model name or a sentence-transformers folder.
    #[arg(long, value_name = "MODEL")]
    embedder: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum ModeArg {
    /// BM25 and embeddings fused by Reciprocal Rank Fusion (k = 60).
    Hybrid,
    /// Lexical only: BM25 over stemmed words.
    Bm25,
    /// Embeddings only: cosine similarity.
    Vector,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Hybrid => Mode::Hybrid,
            ModeArg::Bm25 => Mode::Bm25,
            ModeArg::Vector => Mode::Vector,
        }
    }
}

#[derive(Args)]
struct QueryArgs {
    /// Knowledge base name (a folder in $FERROTUNE_HOME/kb, or in --kb-dir).
    #[arg(long)]
    kb: String,
    /// The question (plain text; no query syntax).
    question: String,
    /// Number of chunks to return, 1 to 1000 (chunks, not documents: one document can give several).
    #[arg(long, default_value_t = 5, value_parser = k_arg)]
    k: usize,
    /// Retrieval mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Hybrid)]
    mode: ModeArg,
    /// One JSON object: {"query", "mode", "hits": [{rank, score, doc_id, chunk_index, start_char,
    /// end_char, text, ...}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ListArgs {
    /// Knowledge base name (a folder in $FERROTUNE_HOME/kb, or in --kb-dir).
    #[arg(long)]
    kb: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeleteArgs {
    /// Knowledge base name (a folder in $FERROTUNE_HOME/kb, or in --kb-dir).
    #[arg(long)]
    kb: String,
    /// Document id, as `ferrotune rag list` shows it.
    doc_id: String,
}

#[derive(Args)]
struct EvalArgs {
    /// Knowledge base name (a folder in $FERROTUNE_HOME/kb, or in --kb-dir).
    #[arg(long)]
    kb: String,
    /// JSONL file, one {"query": "...", "relevant": ["doc id", ...]} per line.
    #[arg(long)]
    queries: PathBuf,
    /// Cut-off for recall@k, 1 to 1000 (MRR and nDCG are always @10). A document ranks where its best chunk does.
    #[arg(long, default_value_t = 5, value_parser = k_arg)]
    k: usize,
    /// Print the report (with per-query results) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RagArgs) -> anyhow::Result<()> {
    let root = args.kb_dir.as_deref();
    match args.command {
        RagCommand::Ingest(a) => ingest(a, root),
        RagCommand::Query(a) => query(a, root),
        RagCommand::List(a) => list(a, root),
        RagCommand::Delete(a) => delete(a, root),
        RagCommand::Eval(a) => eval(a, root),
    }
}

fn open(name: &str, root: Option<&Path>) -> anyhow::Result<KnowledgeBase> {
    let dir = kb_path(name, root)?;
    Ok(KnowledgeBase::open(&dir)?)
}

fn ingest(a: IngestArgs, root: Option<&Path>) -> anyhow::Result<()> {
    let dir = kb_path(&a.kb, root)?;
    let started = Instant::now();
    let spec = IngestSpec {
        dir: dir.clone(),
        paths: a.paths.clone(),
        chunk_tokens: a.chunk_tokens,
        overlap_tokens: a.overlap_tokens,
        embedder: a.embedder.clone(),
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let report = ferrotune_rag::ingest(&spec, &mut |e| match e {
        Event::Skipped(f) => eprintln!("skipped {} (not .txt/.md/.markdown/.html/.htm/.jsonl)", f.display()),
        Event::Repaired(docs) => eprintln!(
            "warning: an earlier change to {} was interrupted; dropped {} document(s) to keep the indexes consistent \
             (they are ingested again if among the inputs): {}",
            dir.display(),
            docs.len(),
            docs.join(", ")
        ),
        Event::Progress(Progress::Chunked { docs, chunks }) => {
            let b = indicatif::ProgressBar::new(chunks as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "embedding {bar:30} {pos}/{len} chunks ({per_sec}) [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.println(format!("{docs} new or changed document(s) → {chunks} chunks"));
            bar = Some(b);
        }
        Event::Progress(Progress::Embedded(n)) => {
            if let Some(b) = &bar {
                b.set_position(n as u64);
            }
        }
        Event::Progress(Progress::Writing) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["kb"] = serde_json::json!(dir.display().to_string());
        v["seconds"] = serde_json::json!(secs);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} added, {} replaced, {} unchanged; {} chunks written, {} removed",
        dir.display(),
        report.added.len(),
        report.replaced.len(),
        report.unchanged.len(),
        report.chunks_written,
        report.chunks_removed
    );
    if report.chunks_written > 0 && report.embed_seconds > 0.0 {
        println!(
            "embedded {} chunks in {:.1}s ({:.1} chunks/s); total {:.1}s",
            report.chunks_written,
            report.embed_seconds,
            report.chunks_written as f64 / report.embed_seconds,
            secs
        );
    }
    Ok(())
}

/// `--k`, checked while parsing (a usage error, before any knowledge base is opened).
fn k_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(k) if (1..=MAX_K).contains(&k) => Ok(k),
        _ => Err(format!("`{s}` is not a number of chunks from 1 to {MAX_K}")),
    }
}

fn query(a: QueryArgs, root: Option<&Path>) -> anyhow::Result<()> {
    let kb = open(&a.kb, root)?;
    let mode: Mode = a.mode.into();
    let hits = kb.query(&a.question, a.k, mode)?;
    if a.json {
        let v = serde_json::json!({ "query": a.question, "mode": mode, "k": a.k, "hits": hits });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("no matching chunks ({} mode)", mode.name());
    }
    for h in &hits {
        let fused = match (h.bm25_rank, h.vector_rank) {
            (None, None) => String::new(),
            (b, v) => format!(
                "; bm25 #{}, vector #{}",
                b.map_or("-".into(), |r| r.to_string()),
                v.map_or("-".into(), |r| r.to_string())
            ),
        };
        println!(
            "{}. {}  chars {}..{}  (chunk {}, score {:.4}{fused})",
            h.rank, h.doc_id, h.start_char, h.end_char, h.chunk_index, h.score
        );
        for line in h.text.lines() {
            println!("   {line}");
        }
        println!();
    }
    Ok(())
}

fn list(a: ListArgs, root: Option<&Path>) -> anyhow::Result<()> {
    let kb = open(&a.kb, root)?;
    let docs = kb.documents();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    let s = kb.settings();
    println!(
        "{}: {} documents, {} chunks ({} tokens, overlap {}, embedder {})",
        kb.dir().display(),
        docs.len(),
        kb.num_chunks(),
        s.chunking.max_tokens,
        s.chunking.overlap_tokens,
        s.embedder
    );
    let w = docs.iter().map(|d| d.id.len()).max().unwrap_or(2).max(2);
    println!("{:<w$}  {:>8}  {:>6}  {:<8}  origin", "id", "chars", "chunks", "kind");
    for d in docs {
        let kind = serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{:<w$}  {:>8}  {:>6}  {:<8}  {}", d.id, d.chars, d.chunks, kind, d.origin);
    }
    Ok(())
}

fn delete(a: DeleteArgs, root: Option<&Path>) -> anyhow::Result<()> {
    let dir = kb_path(&a.kb, root)?;
    // Read first: refuse to create a knowledge base just to report that the document is not there.
    let m = Manifest::read(&dir)?;
    let mut w = Writer::open(&dir, None, m.dim)?;
    let n = w.delete(&a.doc_id)?;
    println!("deleted {} ({n} chunks) from {}", a.doc_id, dir.display());
    Ok(())
}

fn eval(a: EvalArgs, root: Option<&Path>) -> anyhow::Result<()> {
    let queries = read_queries(&a.queries)?;
    let kb = open(&a.kb, root)?;
    let report = evaluate(&kb, &queries, a.k)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for (line, id) in &report.unknown_relevant {
        eprintln!(
            "warning: {}:{line}: relevant document {id:?} is not in the knowledge base",
            a.queries.display()
        );
    }
    println!(
        "{} ({} documents, {} chunks): {} queries, documents ranked by their best chunk",
        kb.dir().display(),
        kb.documents().len(),
        kb.num_chunks(),
        report.queries
    );
    let rk = format!("recall@{}", a.k);
    println!("{:<8}  {:>9}  {:>7}  {:>7}", "mode", rk, "MRR@10", "nDCG@10");
    for m in &report.modes {
        println!("{:<8}  {:>9.3}  {:>7.3}  {:>7.3}", m.mode.name(), m.recall_at_k, m.mrr_at_10, m.ndcg_at_10);
    }
    Ok(())
}
