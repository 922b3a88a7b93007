//! Retrieval metrics over document ids, with binary relevance. A ranking is a list of distinct
//! document ids, best first (chunk results are collapsed to their document's best rank first).
//!
//! - recall@k: the share of the relevant documents found in the top k.
//! - MRR@10: 1 / rank of the first relevant document in the top 10, 0 when none is.
//! - nDCG@10: DCG = Σ rel_i / log2(i + 1) over ranks i = 1..10, divided by the DCG of an ideal
//!   ranking (all relevant documents first) — the Järvelin & Kekäläinen form with binary gains,
//!   as `trec_eval`'s `ndcg_cut_10` computes it.

use std::collections::HashSet;

pub fn recall_at(ranking: &[String], relevant: &HashSet<String>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranking.iter().take(k).filter(|d| relevant.contains(*d)).count();
    found as f64 / relevant.len() as f64
}

pub fn mrr_at(ranking: &[String], relevant: &HashSet<String>, k: usize) -> f64 {
    ranking.iter().take(k).position(|d| relevant.contains(d)).map_or(0.0, |p| 1.0 / (p + 1) as f64)
}

pub fn ndcg_at(ranking: &[String], relevant: &HashSet<String>, k: usize) -> f64 {
    let gain = |rank0: usize| 1.0 / ((rank0 + 2) as f64).log2();
    let dcg: f64 =
        ranking.iter().take(k).enumerate().filter(|(_, d)| relevant.contains(*d)).map(|(i, _)| gain(i)).sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(gain).sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

/// Collapses a chunk ranking to documents: each document at the rank of its best chunk.
pub fn dedup_docs<'a>(doc_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    doc_ids.into_iter().filter(|d| seen.insert(*d)).map(str::to_string).collect()
}
