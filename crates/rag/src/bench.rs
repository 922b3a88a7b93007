//! The retrieval benchmark behind `ferrotune bench rag`, here so its test runs with the crate's.
//!
//! - **Ingest**: `ingest_chunks` generated passages (one chunk each) through the real
//!   [`Writer::ingest`] with the real embedder into a fresh knowledge base: chunks/s over the whole
//!   ingest (chunking, embedding, BM25 commit, `vectors.bin`, `kb.json`) and embeddings/s over the
//!   embedding step alone.
//! - **Query latency** per mode at each size, through [`KnowledgeBase::query`] (the query's
//!   embedding included). Embedding 100k chunks would take hours on a small CPU, so these indexes
//!   are built by [`Writer::ingest_with_vectors`]: BM25 over the real generated text, but
//!   **synthetic vectors** (random unit vectors, not the model's). Exact search does the same work
//!   whatever the vectors hold, so the latency is what a real index of that size would show; the
//!   rankings are meaningless and are not reported.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::embedder::Embedder;
use crate::error::{RagError, Result};
use crate::kb::{KnowledgeBase, Mode};
use crate::source::{DocKind, SourceDoc};
use crate::writer::Writer;

/// MiniLM's width: the synthetic indexes use it so that search costs what it would for real.
pub const MINILM_DIM: usize = 384;

/// Content words of customer-support text, most common first (drawn with a Zipf-like law).
const CONTENT: &[&str] = &[
    "order",
    "account",
    "device",
    "battery",
    "charge",
    "app",
    "update",
    "refund",
    "password",
    "login",
    "screen",
    "setting",
    "warranty",
    "delivery",
    "payment",
    "speaker",
    "earphones",
    "case",
    "cable",
    "firmware",
    "bluetooth",
    "connection",
    "reset",
    "store",
    "return",
    "replacement",
    "customer",
    "support",
    "email",
    "phone",
    "volume",
    "sound",
    "light",
    "button",
    "power",
    "hours",
    "days",
    "invoice",
    "subscription",
    "plan",
    "price",
    "discount",
    "code",
    "address",
    "shipping",
    "package",
    "tracking",
    "number",
    "serial",
    "model",
    "version",
    "error",
    "message",
    "problem",
    "issue",
    "fix",
    "step",
    "guide",
    "manual",
    "policy",
    "label",
    "box",
    "receipt",
    "card",
    "bank",
    "credit",
    "wifi",
    "network",
    "router",
    "signal",
    "pairing",
    "mode",
    "noise",
    "cancellation",
    "microphone",
    "call",
    "camera",
    "photo",
    "storage",
    "cloud",
    "backup",
    "sync",
    "data",
    "privacy",
    "security",
    "profile",
    "notification",
    "alarm",
    "timer",
    "schedule",
    "thermostat",
    "heating",
    "temperature",
    "sensor",
    "door",
    "lock",
    "hub",
    "bulb",
    "colour",
    "brightness",
    "motion",
    "alert",
    "kitchen",
    "scale",
    "kettle",
    "water",
    "filter",
    "cleaning",
    "dust",
    "vacuum",
    "brush",
    "mop",
    "map",
    "room",
    "floor",
    "dock",
    "station",
    "adapter",
    "plug",
    "socket",
    "voltage",
    "travel",
    "country",
    "region",
    "language",
    "display",
    "clock",
    "weather",
    "voice",
    "assistant",
    "command",
    "skill",
    "family",
    "member",
    "invite",
    "share",
    "permission",
    "owner",
    "transfer",
    "gift",
    "voucher",
    "balance",
    "loyalty",
    "points",
    "repair",
    "technician",
    "appointment",
    "visit",
    "pickup",
    "courier",
    "damage",
    "scratch",
    "crack",
    "leak",
    "overheating",
    "restart",
    "freeze",
    "crash",
    "slow",
    "delay",
    "cancel",
    "change",
    "upgrade",
    "downgrade",
    "trial",
    "renewal",
    "fee",
    "tax",
    "stock",
    "colourway",
    "size",
    "strap",
    "band",
    "fitness",
    "steps",
    "sleep",
    "heart",
    "rate",
    "workout",
    "goal",
    "progress",
    "report",
    "export",
    "import",
    "contact",
    "chat",
    "ticket",
];

/// Function words, drawn uniformly between content words so that text reads like English.
const GLUE: &[&str] = &[
    "the", "a", "your", "to", "of", "and", "in", "on", "for", "with", "is", "if", "it", "you", "can", "not",
    "after", "before", "when", "then", "from", "this", "that", "will", "be", "or", "by",
];

/// Seeded generator of support-like passages, questions and unit vectors (SplitMix64: no
/// dependency, same output on every platform).
pub struct TextGen {
    state: u64,
}

impl TextGen {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + (self.next_u64() % (hi_inclusive - lo + 1) as u64) as usize
    }

    /// A content word, rank r drawn with probability ≈ 1/r (log-uniform), as word frequencies go.
    fn content_word(&mut self) -> &'static str {
        let n = CONTENT.len() as f64;
        let r = ((n + 1.0).powf(self.unit()) - 1.0) as usize;
        CONTENT[r.min(CONTENT.len() - 1)]
    }

    fn word(&mut self) -> &'static str {
        if self.unit() < 0.35 { GLUE[self.range(0, GLUE.len() - 1)] } else { self.content_word() }
    }

    /// A passage of 30–90 words in sentences of 5–14 words (about 40–120 MiniLM tokens).
    pub fn passage(&mut self) -> String {
        let words = self.range(30, 90);
        let mut out = String::new();
        let mut left = words;
        while left > 0 {
            let n = self.range(5, 14).min(left);
            for i in 0..n {
                let w = self.word();
                if i == 0 {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        out.extend(f.to_uppercase());
                        out.push_str(c.as_str());
                    }
                } else {
                    out.push(' ');
                    out.push_str(w);
                }
            }
            out.push('.');
            left -= n;
        }
        out
    }

    /// A question of 3–7 content words.
    pub fn question(&mut self) -> String {
        let n = self.range(3, 7);
        let words: Vec<&str> = (0..n).map(|_| self.content_word()).collect();
        format!("how do I fix the {}?", words.join(" "))
    }

    /// A random direction in `dim` dimensions (Box–Muller normals, L2-normalised).
    pub fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                let (u1, u2) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// `n` generated passages as documents `gen/000000`, `gen/000001`, …
pub fn generated_docs(n: usize, seed: u64) -> Vec<SourceDoc> {
    let mut g = TextGen::new(seed);
    (0..n)
        .map(|i| {
            let id = format!("gen/{i:06}");
            SourceDoc::new(id.clone(), id, DocKind::Text, g.passage(), serde_json::Map::new())
        })
        .collect()
}

/// A folder under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("ferrotune-bench-rag-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| RagError::io(&p, e))?;
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

/// **Benchmarks only**: a knowledge base in `dir` of `n` generated passages (one chunk each) with
/// synthetic random unit vectors of `dim` dimensions (see the module docs).
pub fn build_synthetic_kb(dir: &Path, n: usize, dim: usize, seed: u64) -> Result<()> {
    let docs = generated_docs(n, seed);
    let mut vecs = TextGen::new(seed ^ 0x5EED_F00D_7EC7);
    let mut w = Writer::open(dir, None, dim)?;
    w.ingest_with_vectors(&docs, &mut |_| vecs.unit_vector(dim))?;
    Ok(())
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
    time_each(questions, |q| kb.query(q, k, mode).map(|h| h.len()))
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

/// Runs the whole benchmark. Without an embedder, the ingest and the vector / hybrid modes are
/// skipped (reported as `None`).
pub fn run(cfg: &BenchConfig, embedder: Option<Arc<Embedder>>) -> Result<BenchReport> {
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
        Some(e) => Some(time_each(&questions, |q| e.embed(&[q]))?),
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

    #[test]
    fn generated_text_is_seeded_and_vectors_are_unit_length() {
        let (a, b) = (TextGen::new(7).passage(), TextGen::new(7).passage());
        assert_eq!(a, b);
        assert!(a.split_whitespace().count() >= 30 && a.ends_with('.'));
        let v = TextGen::new(1).unit_vector(MINILM_DIM);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
