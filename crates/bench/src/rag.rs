//! `ferrotune bench rag`: knowledge-base ingest throughput (real embedder) and query latency p50/p99
//! per mode at each index size.
//!
//! - **Ingest**: `ingest_chunks` generated passages (one chunk each) through the real
//!   `Writer::ingest` with the real embedder into a fresh knowledge base: chunks/s over the whole
//!   ingest (chunking, embedding, BM25 commit, `vectors.bin`, `kb.json`) and embeddings/s over the
//!   embedding step alone.
//! - **Query latency** per mode at each size, through [`KnowledgeBase::query`] (the query's
//!   embedding included). Embedding 100k chunks would take hours on a small CPU, so these indexes
//!   are built by `ferrotune_rag::synthetic::build_synthetic_kb`: BM25 over the real generated text, but
//!   **synthetic vectors** (random unit vectors, not the model's). Exact search does the same work
//!   whatever the vectors hold, so the latency is what a real index of that size would show; the
//!   rankings are meaningless and are not reported.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferrotune_rag::synthetic::{MINILM_DIM, TextGen, build_synthetic_kb, generated_docs};
use ferrotune_rag::{Embedder, KnowledgeBase, Mode, RagError, Writer};

use crate::error::{BenchError, Result};

/// A folder under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("ferrotune-bench-rag-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| BenchError::io(p.display().to_string(), e))?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Chunks in each latency index.
    pub sizes: Vec<usize>,
    /// Chunks ingested through the real path (0: skip).
    pub ingest_chunks: usize,
    /// Timed queries per mode and size.
    pub queries: usize,
    /// Hits per query.
    pub k: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct IngestSpeed {
    pub chunks: usize,
    /// Mean MiniLM tokens per chunk (without `[CLS]`/`[SEP]`).
    pub mean_tokens: f64,
    pub seconds: f64,
    pub embed_seconds: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone)]
pub struct SizeReport {
    pub chunks: usize,
    pub build_seconds: f64,
    /// Per mode; `None` = skipped (needs the embedder, which is not installed).
    pub modes: Vec<(Mode, Option<Latency>)>,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub config: BenchConfig,
    /// `None` when the embedder is not installed or `ingest_chunks` is 0.
    pub ingest: Option<IngestSpeed>,
    /// `KnowledgeBase::embed_query` alone (the part of vector / hybrid latency that does not grow
    /// with the index); `None` without the embedder.
    pub query_embedding: Option<Latency>,
    pub sizes: Vec<SizeReport>,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ingests `n` generated passages through [`Writer::ingest`] into a fresh knowledge base.
pub fn measure_ingest(dir: &Path, n: usize, embedder: &Embedder, seed: u64) -> Result<IngestSpeed> {
    let docs = generated_docs(n, seed);
    let tok = embedder.chunking_tokenizer();
    let tokens: usize = docs
        .iter()
        .map(|d| tok.encode(d.text.as_str(), false).map(|e| e.get_ids().len()))
        .sum::<std::result::Result<usize, _>>()
        .map_err(|e| RagError::Embedder {
            path: embedder.dir().to_path_buf(),
            reason: format!("tokenizing: {e}"),
        })?;
    let t0 = Instant::now();
    let mut w = Writer::open(dir, None, embedder.dim())?;
    let report = w.ingest(&docs, embedder, &mut |_| {})?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(IngestSpeed {
        chunks: report.chunks_written,
        mean_tokens: tokens as f64 / n.max(1) as f64,
        seconds,
        embed_seconds: report.embed_seconds,
    })
}

/// Times `kb.query` over `questions` (after two untimed warm-up queries).
pub fn measure_latency(kb: &KnowledgeBase, questions: &[String], k: usize, mode: Mode) -> Result<Latency> {
    time_each(questions, |q| Ok(kb.query(q, k, mode)?.len()))
}

fn time_each<T>(questions: &[String], mut f: impl FnMut(&str) -> Result<T>) -> Result<Latency> {
    for q in questions.iter().take(2) {
        f(q)?;
    }
    let mut ms = Vec::with_capacity(questions.len());
    for q in questions {
        let t = Instant::now();
        std::hint::black_box(f(q)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let mean_ms = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    Ok(Latency { p50_ms: percentile(&ms, 50.0), p99_ms: percentile(&ms, 99.0), mean_ms })
}

/// `ferrotune bench rag`: the setup line, the default embedder (SKIPPED without it), then the
/// report.
pub fn run(cfg: &BenchConfig) -> Result<()> {
    let threads = candle_core::utils::get_num_threads();
    println!(
        "bench rag: sizes {:?} | ingest {} chunks | {} queries | k = {} | seed {} | {threads} threads",
        cfg.sizes, cfg.ingest_chunks, cfg.queries, cfg.k, cfg.seed
    );
    let embedder = match Embedder::load_default() {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            println!(
                "SKIPPED: ingest and vector/hybrid latency need the embedder ({e}); run `ferrotune models pull all-minilm-l6-v2`"
            );
            None
        }
    };
    let report = measure(cfg, embedder)?;
    print!("{report}");
    Ok(())
}

/// Runs the whole benchmark. Without an embedder, the ingest and the vector / hybrid modes are
/// skipped (reported as `None`).
pub fn measure(cfg: &BenchConfig, embedder: Option<Arc<Embedder>>) -> Result<BenchReport> {
    let ingest = match &embedder {
        Some(e) if cfg.ingest_chunks > 0 => {
            let dir = ScratchDir::new("ingest")?;
            Some(measure_ingest(dir.path(), cfg.ingest_chunks, e, cfg.seed)?)
        }
        _ => None,
    };
    let mut g = TextGen::new(cfg.seed ^ 0xA5A5_0000_0000_0001);
    let questions: Vec<String> = (0..cfg.queries).map(|_| g.question()).collect();
    let dim = embedder.as_ref().map_or(MINILM_DIM, |e| e.dim());
    let query_embedding = match &embedder {
        Some(e) => Some(time_each(&questions, |q| Ok(e.embed(&[q])?))?),
        None => None,
    };
    let mut sizes = Vec::new();
    for &n in &cfg.sizes {
        let dir = ScratchDir::new(&format!("n{n}"))?;
        let t0 = Instant::now();
        build_synthetic_kb(dir.path(), n, dim, cfg.seed)?;
        let build_seconds = t0.elapsed().as_secs_f64();
        let mut kb = KnowledgeBase::open(dir.path())?;
        if let Some(e) = &embedder {
            kb = kb.with_embedder(e.clone());
        }
        let mut modes = Vec::new();
        for mode in Mode::ALL {
            let lat = match (mode, &embedder) {
                (Mode::Bm25, _) | (_, Some(_)) => Some(measure_latency(&kb, &questions, cfg.k, mode)?),
                _ => None,
            };
            modes.push((mode, lat));
        }
        sizes.push(SizeReport { chunks: n, build_seconds, modes });
    }
    Ok(BenchReport { config: cfg.clone(), ingest, query_embedding, sizes })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        match &self.ingest {
            Some(i) => {
                writeln!(
                    f,
                    "ingest (real path: Writer::ingest, MiniLM embedder): {} chunks, mean {:.0} tokens each, {:.1} s",
                    i.chunks, i.mean_tokens, i.seconds
                )?;
                writeln!(f, "{:>14} {:>14}", "chunks/s", "embeddings/s")?;
                writeln!(
                    f,
                    "{:>14.1} {:>14.1}",
                    i.chunks as f64 / i.seconds,
                    i.chunks as f64 / i.embed_seconds.max(f64::MIN_POSITIVE)
                )?;
            }
            None if c.ingest_chunks == 0 => writeln!(f, "ingest: not run (--ingest-chunks 0)")?,
            None => writeln!(f, "ingest: SKIPPED (embedder not installed)")?,
        }
        writeln!(f)?;
        writeln!(
            f,
            "query latency, KnowledgeBase::query (query embedding included), k = {}, {} queries per cell",
            c.k, c.queries
        )?;
        writeln!(f, "(`embed`: the question's MiniLM embedding alone, included in vector and hybrid)")?;
        writeln!(
            f,
            "indexes: BM25 over real generated text; vectors SYNTHETIC (random unit vectors, {MINILM_DIM}-d, not from the model)"
        )?;
        writeln!(f, "{:>9} {:>8} {:>9} {:>9} {:>9}", "chunks", "mode", "p50 ms", "p99 ms", "mean ms")?;
        if let Some(l) = &self.query_embedding {
            writeln!(f, "{:>9} {:>8} {:>9.2} {:>9.2} {:>9.2}", "-", "embed", l.p50_ms, l.p99_ms, l.mean_ms)?;
        }
        for s in &self.sizes {
            for (mode, lat) in &s.modes {
                match lat {
                    Some(l) => writeln!(
                        f,
                        "{:>9} {:>8} {:>9.2} {:>9.2} {:>9.2}",
                        s.chunks,
                        mode.name(),
                        l.p50_ms,
                        l.p99_ms,
                        l.mean_ms
                    )?,
                    None => writeln!(
                        f,
                        "{:>9} {:>8} {:>9}",
                        s.chunks,
                        mode.name(),
                        "SKIPPED (embedder not installed)"
                    )?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0), percentile(&v, 100.0)), (50.0, 99.0, 100.0));
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
