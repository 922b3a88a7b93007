//! `rag eval`: retrieval quality of a knowledge base on labelled queries, for every mode.
//! Queries file: JSONL, one `{"query": "...", "relevant": ["doc id", ...]}` per line.
//! Chunk rankings are collapsed to documents (a document ranks where its best chunk does), then
//! scored with [`crate::metrics`]: recall@k, MRR@10, nDCG@10, averaged over queries.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{RagError, Result};
use crate::kb::{KnowledgeBase, Mode};
use crate::metrics::{dedup_docs, mrr_at, ndcg_at, recall_at};

/// Chunks retrieved per query before collapsing to documents.
const CHUNK_DEPTH: usize = 50;

#[derive(Debug, Clone)]
pub struct EvalQuery {
    pub line: usize,
    pub query: String,
    pub relevant: Vec<String>,
}

#[derive(Deserialize)]
struct QueryRecord {
    query: Option<String>,
    relevant: Option<Vec<String>>,
}

pub fn read_queries(path: &Path) -> Result<Vec<EvalQuery>> {
    let text = std::fs::read_to_string(path).map_err(|e| RagError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let r: QueryRecord = serde_json::from_str(line).map_err(|e| {
            RagError::record(path, n, format!("expected {{\"query\": string, \"relevant\": [doc ids]}}: {e}"))
        })?;
        let query = r
            .query
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| RagError::record(path, n, "missing or empty `query`"))?;
        let relevant = r
            .relevant
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RagError::record(path, n, "missing or empty `relevant`"))?;
        out.push(EvalQuery { line: n, query, relevant });
    }
    if out.is_empty() {
        return Err(RagError::record(path, 1, "no queries"));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeScores {
    pub mode: Mode,
    /// Mean recall@k over queries.
    pub recall_at_k: f64,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerQuery {
    pub line: usize,
    pub query: String,
    pub mode: Mode,
    pub top_docs: Vec<String>,
    pub recall_at_k: f64,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub k: usize,
    pub queries: usize,
    pub modes: Vec<ModeScores>,
    /// Relevant ids not in the knowledge base (likely label typos): (line, id).
    pub unknown_relevant: Vec<(usize, String)>,
    pub per_query: Vec<PerQuery>,
}

pub fn evaluate(kb: &KnowledgeBase, queries: &[EvalQuery], k: usize) -> Result<EvalReport> {
    crate::kb::check_k(k)?;
    let known: HashSet<String> = kb.documents().into_iter().map(|d| d.id).collect();
    let mut unknown_relevant = Vec::new();
    for q in queries {
        for r in &q.relevant {
            if !known.contains(r) {
                unknown_relevant.push((q.line, r.clone()));
            }
        }
    }
    let embedder = kb.embedder()?;
    let texts: Vec<&str> = queries.iter().map(|q| q.query.as_str()).collect();
    let vecs = embedder.embed(&texts)?;
    let mut per_query = Vec::new();
    let mut modes = Vec::new();
    for mode in Mode::ALL {
        let (mut r, mut m, mut n) = (0.0, 0.0, 0.0);
        for (q, v) in queries.iter().zip(&vecs) {
            let hits = kb.query_with_vector(&q.query, Some(v), CHUNK_DEPTH.max(k), mode)?;
            let docs = dedup_docs(hits.iter().map(|h| h.doc_id.as_str()));
            let rel: HashSet<String> = q.relevant.iter().cloned().collect();
            let pq = PerQuery {
                line: q.line,
                query: q.query.clone(),
                mode,
                top_docs: docs.iter().take(k.max(10)).cloned().collect(),
                recall_at_k: recall_at(&docs, &rel, k),
                mrr_at_10: mrr_at(&docs, &rel, 10),
                ndcg_at_10: ndcg_at(&docs, &rel, 10),
            };
            r += pq.recall_at_k;
            m += pq.mrr_at_10;
            n += pq.ndcg_at_10;
            per_query.push(pq);
        }
        let nq = queries.len() as f64;
        modes.push(ModeScores { mode, recall_at_k: r / nq, mrr_at_10: m / nq, ndcg_at_10: n / nq });
    }
    Ok(EvalReport { k, queries: queries.len(), modes, unknown_relevant, per_query })
}
