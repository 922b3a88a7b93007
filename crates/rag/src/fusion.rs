//! Reciprocal Rank Fusion (Cormack, Clarke & Büttcher, SIGIR 2009): each list contributes
//! `1 / (k + rank)` (rank from 1) for every item it ranks; items are ordered by the sum. `k = 60`
//! is the paper's constant; it damps the head of each list so one strong list cannot dominate.

use std::collections::HashMap;
use std::hash::Hash;

/// The constant of the RRF paper.
pub const RRF_K: f64 = 60.0;

/// Fuses ranked lists (best first) into one, best first. Ties keep first-seen order (the order
/// of the lists, then of ranks), so the result is deterministic.
pub fn reciprocal_rank_fusion<T: Clone + Eq + Hash>(lists: &[Vec<T>], k: f64) -> Vec<(T, f64)> {
    let mut score: HashMap<T, (f64, usize)> = HashMap::new();
    let mut seen = 0usize;
    for list in lists {
        for (rank0, item) in list.iter().enumerate() {
            let e = score.entry(item.clone()).or_insert_with(|| {
                seen += 1;
                (0.0, seen)
            });
            e.0 += 1.0 / (k + (rank0 + 1) as f64);
        }
    }
    let mut out: Vec<(T, f64, usize)> = score.into_iter().map(|(t, (s, order))| (t, s, order)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    out.into_iter().map(|(t, s, _)| (t, s)).collect()
}
