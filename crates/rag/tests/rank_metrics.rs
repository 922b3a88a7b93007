//! Hand-computed checks of RRF and the retrieval metrics (no model needed).

use std::collections::HashSet;

use ferrotune_rag::fusion::{RRF_K, reciprocal_rank_fusion};
use ferrotune_rag::metrics::{dedup_docs, mrr_at, ndcg_at, recall_at};

fn ids(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn set(xs: &[&str]) -> HashSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn rrf_sums_reciprocal_ranks_with_k_60() {
    let bm25 = ids(&["a", "b", "c"]);
    let vec = ids(&["c", "a", "d"]);
    let fused = reciprocal_rank_fusion(&[bm25, vec], RRF_K);
    let get = |id: &str| fused.iter().find(|(t, _)| t == id).map(|(_, s)| *s).unwrap_or(f64::NAN);
    // a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; d: 1/63.
    assert!(close(get("a"), 1.0 / 61.0 + 1.0 / 62.0));
    assert!(close(get("c"), 1.0 / 63.0 + 1.0 / 61.0));
    assert!(close(get("b"), 1.0 / 62.0));
    assert!(close(get("d"), 1.0 / 63.0));
    let order: Vec<&str> = fused.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, ["a", "c", "b", "d"]);
}

#[test]
fn rrf_ties_keep_first_seen_order() {
    let fused = reciprocal_rank_fusion(&[ids(&["x"]), ids(&["y"])], RRF_K);
    let order: Vec<&str> = fused.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, ["x", "y"]);
}

#[test]
fn recall_counts_relevant_in_top_k() {
    let r = ids(&["d1", "d2", "d3", "d4"]);
    assert!(close(recall_at(&r, &set(&["d2", "d4", "d9"]), 2), 1.0 / 3.0));
    assert!(close(recall_at(&r, &set(&["d2", "d4", "d9"]), 5), 2.0 / 3.0));
    assert!(close(recall_at(&r, &set(&[]), 5), 0.0));
}

#[test]
fn mrr_is_reciprocal_rank_of_first_hit_within_cutoff() {
    let r = ids(&["d1", "d2", "d3"]);
    assert!(close(mrr_at(&r, &set(&["d3", "d2"]), 10), 0.5));
    assert!(close(mrr_at(&r, &set(&["d3"]), 2), 0.0));
    assert!(close(mrr_at(&r, &set(&["d1"]), 10), 1.0));
}

#[test]
fn ndcg_matches_hand_computation() {
    // Relevant {d2, d4, d9}; ranking d1 d2 d3 d4: DCG = 1/log2(3) + 1/log2(5);
    // ideal (3 relevant) = 1 + 1/log2(3) + 1/2.
    let r = ids(&["d1", "d2", "d3", "d4"]);
    let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
    let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
    assert!(close(ndcg_at(&r, &set(&["d2", "d4", "d9"]), 10), dcg / idcg));
    // Perfect ranking scores 1; relevant only below the cut-off scores 0.
    assert!(close(ndcg_at(&ids(&["a", "b", "x"]), &set(&["a", "b"]), 10), 1.0));
    assert!(close(ndcg_at(&ids(&["x", "a"]), &set(&["a"]), 1), 0.0));
    // Numerically: DCG = 1.0616063116, IDCG = 2.1309297536, nDCG = 0.4981892575.
    assert!((ndcg_at(&r, &set(&["d2", "d4", "d9"]), 10) - 0.4981892575).abs() < 1e-9);
}

#[test]
fn chunk_rankings_collapse_to_best_rank_per_document() {
    assert_eq!(dedup_docs(["a", "b", "a", "c", "b"]), ids(&["a", "b", "c"]));
}
