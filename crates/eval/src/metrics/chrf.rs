//! Corpus chrF exactly as sacrebleu 2.x's `corpus_chrf(hyps, [refs])` computes it with its
//! defaults: character n-grams of orders 1..=6 over the text with whitespace removed, no word
//! n-grams, β = 2, mixed case, and (`eps_smoothing=False`) the "effective order" averaging of
//! sacreBLEU < 2.0: precision and recall are averaged over the orders where both the corpus
//! hypothesis and reference have n-grams, then combined into one F-β.
//!
//! Row statistics are sacrebleu's segment statistics `[hyp_n, ref_n, match_n]` for n = 1..=6;
//! the corpus score is computed from their sums (`CHRF._compute_f_score`).

use std::collections::HashMap;

use super::pystr;

const CHAR_ORDER: usize = 6;
const BETA: f64 = 2.0;

/// Number of statistics per row.
pub(crate) const STATS: usize = 3 * CHAR_ORDER;

fn char_ngrams(chars: &[char], n: usize) -> HashMap<&[char], u64> {
    let mut counts = HashMap::new();
    for gram in chars.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// One segment's statistics against a single reference (`_compute_segment_statistics` and
/// `_get_match_statistics`). Characters are Unicode code points, as in Python `str`.
pub(crate) fn row_stats(prediction: &str, reference: &str) -> Vec<f64> {
    // `''.join(line.split())`: every whitespace character removed.
    let hyp: Vec<char> = prediction.chars().filter(|&c| !pystr::is_space(c)).collect();
    let refs: Vec<char> = reference.chars().filter(|&c| !pystr::is_space(c)).collect();
    let mut stats = Vec::with_capacity(STATS);
    for n in 1..=CHAR_ORDER {
        let hyp_grams = char_ngrams(&hyp, n);
        let ref_grams = char_ngrams(&refs, n);
        let hyp_count: u64 = hyp_grams.values().sum();
        let ref_count: u64 = ref_grams.values().sum();
        let matches: u64 = hyp_grams.iter().filter_map(|(g, &c)| ref_grams.get(g).map(|&r| c.min(r))).sum();
        // "Don't count hits if no reference exists for that n-gram": with no reference n-grams
        // of this order, the hypothesis' n-grams are not counted either.
        stats.push(if ref_grams.is_empty() { 0.0 } else { hyp_count as f64 });
        stats.push(ref_count as f64);
        stats.push(matches as f64);
    }
    stats
}

/// `CHRF._compute_f_score` with `eps_smoothing=False`, in sacrebleu's operation order.
pub(crate) fn score_from_stats(stats: &[f64]) -> f64 {
    let factor = BETA * BETA;
    let (mut avg_prec, mut avg_rec) = (0.0f64, 0.0f64);
    let mut effective_order = 0u32;
    for order in stats.chunks_exact(3).take(CHAR_ORDER) {
        let (n_hyp, n_ref, n_match) = (order[0], order[1], order[2]);
        if n_hyp > 0.0 && n_ref > 0.0 {
            avg_prec += n_match / n_hyp;
            avg_rec += n_match / n_ref;
            effective_order += 1;
        }
    }
    if effective_order == 0 {
        return 0.0;
    }
    avg_prec /= f64::from(effective_order);
    avg_rec /= f64::from(effective_order);
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    let score = (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec);
    100.0 * score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_ignored() {
        let a = row_stats("a b  c", "abc");
        assert_eq!(a, row_stats("abc", "abc"));
        assert!((score_from_stats(&a) - 100.0).abs() < 1e-12);
    }

    #[test]
    fn short_reference_only_counts_orders_it_has() {
        // Reference "ab" has no 3..6-grams, so those hypothesis n-grams are not counted.
        let s = row_stats("abcdef", "ab");
        assert_eq!(&s[..6], &[6.0, 2.0, 2.0, 5.0, 1.0, 1.0]);
        assert_eq!(&s[6..], &[0.0; 12]);
        // P1 = 1/3, R1 = 1, P2 = 1/5, R2 = 1 -> averages 4/15 and 1.
        let (p, r) = (4.0 / 15.0, 1.0);
        assert!((score_from_stats(&s) - 100.0 * 5.0 * p * r / (4.0 * p + r)).abs() < 1e-9);
    }

    #[test]
    fn empty_sides_score_zero() {
        assert_eq!(score_from_stats(&row_stats("", "abc")), 0.0);
        assert_eq!(score_from_stats(&row_stats("abc", "")), 0.0);
        assert_eq!(score_from_stats(&row_stats("", "")), 0.0);
    }

    #[test]
    fn characters_are_code_points() {
        // "é" precomposed is one character; four 1-grams on each side, all matching.
        let s = row_stats("café", "café");
        assert_eq!(&s[..3], &[4.0, 4.0, 4.0]);
    }
}
