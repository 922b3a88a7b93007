//! 95% percentile bootstrap confidence intervals, by resampling rows with replacement (Efron &
//! Tibshirani 1993, ch. 13). Corpus metrics (BLEU, chrF) are re-aggregated from resampled row
//! statistics, as sacrebleu's `--confidence` does (Koehn 2004).
//!
//! The interval bounds are the order statistics sacrebleu uses (`Score.estimate_ci`): with `B`
//! sorted resampled scores, `low = s[B / 40]` and `high = s[B - B / 40 - 1]`. Draws come from
//! [`StdRng`] seeded with `seed`, so an interval is reproducible for a given seed and `rand`
//! version.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::EvalError;
use crate::metrics::{Metric, RowStats, aggregate};

/// The usual number of resamples.
pub const DEFAULT_RESAMPLES: usize = 1000;

/// The most resamples accepted: 100× the usual. Past it the interval's bounds no longer move
/// (the order statistics at 2.5% / 97.5% are already set to a fraction of a percent) while time
/// grows with `resamples × rows`, and a typo like `--resamples 10000000000000` must be an error
/// rather than an allocation of 80 TB of scores.
pub const MAX_RESAMPLES: usize = 100_000;

/// `resamples` within `0..=MAX_RESAMPLES`, or an error naming `--resamples`.
pub fn check_resamples(resamples: usize) -> Result<(), EvalError> {
    if resamples > MAX_RESAMPLES {
        return Err(EvalError::InvalidOption {
            option: "--resamples",
            reason: format!("{resamples} is more than the {MAX_RESAMPLES} resamples allowed"),
        });
    }
    Ok(())
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// 95% percentile interval of any statistic of `n` rows over `resamples` bootstrap samples.
///
/// `statistic(Some(indices))` scores one resample (`n` row indices drawn with replacement);
/// `statistic(None)` means all rows in order, and is only called when there are no rows or no
/// resamples, in which case the interval collapses to that point estimate.
pub fn percentile_interval(
    n: usize,
    resamples: usize,
    seed: u64,
    mut statistic: impl FnMut(Option<&[usize]>) -> f64,
) -> Interval {
    if n == 0 || resamples == 0 {
        let point = statistic(None);
        return Interval { low: point, high: point };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut indices = vec![0usize; n];
    let mut scores: Vec<f64> = (0..resamples)
        .map(|_| {
            indices.iter_mut().for_each(|i| *i = rng.random_range(0..n));
            statistic(Some(&indices))
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let cut = resamples / 40;
    Interval { low: scores[cut], high: scores[resamples - cut - 1] }
}

/// Resampled rows, or all rows in order when `indices` is `None`.
fn pick<'a>(rows: &'a [RowStats], indices: Option<&[usize]>, out: &mut Vec<&'a RowStats>) {
    out.clear();
    match indices {
        Some(idx) => out.extend(idx.iter().map(|&i| &rows[i])),
        None => out.extend(rows.iter()),
    }
}

/// 95% percentile bootstrap CI of `aggregate(metric, resampled rows)`.
pub fn confidence_interval(metric: Metric, rows: &[RowStats], resamples: usize, seed: u64) -> Interval {
    let mut sample = Vec::with_capacity(rows.len());
    percentile_interval(rows.len(), resamples, seed, |idx| {
        pick(rows, idx, &mut sample);
        aggregate(metric, &sample)
    })
}

/// 95% percentile bootstrap CI of the mean of per-row values (eval loss, latency, …).
/// An empty slice gives `[0, 0]`.
pub fn mean_interval(values: &[f64], resamples: usize, seed: u64) -> Interval {
    let n = values.len();
    percentile_interval(n, resamples, seed, |idx| {
        if n == 0 {
            return 0.0;
        }
        let sum: f64 = match idx {
            Some(idx) => idx.iter().map(|&i| values[i]).sum(),
            None => values.iter().sum(),
        };
        sum / n as f64
    })
}

/// Paired bootstrap CI of `aggregate(metric, b) - aggregate(metric, a)`: both systems are scored
/// on the same resampled rows each time (Koehn 2004's paired bootstrap), so row difficulty cancels
/// and the interval is much tighter than comparing two separate intervals. An interval above 0
/// means system `b` (e.g. the tuned model) beats `a` (the base) at the 95% level.
///
/// # Panics
/// If `a` and `b` differ in length (they must be the same rows, in the same order).
pub fn paired_difference_interval(
    metric: Metric,
    a: &[RowStats],
    b: &[RowStats],
    resamples: usize,
    seed: u64,
) -> Interval {
    assert_eq!(a.len(), b.len(), "paired bootstrap needs both systems scored on the same rows");
    let (mut sample_a, mut sample_b) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    percentile_interval(a.len(), resamples, seed, |idx| {
        pick(a, idx, &mut sample_a);
        pick(b, idx, &mut sample_b);
        aggregate(metric, &sample_b) - aggregate(metric, &sample_a)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::row_stats;

    /// `n` exact-match rows, about `rate` of them correct, from a fixed generator.
    fn em_rows(n: usize, rate: f64, seed: u64) -> Vec<RowStats> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| RowStats(vec![f64::from(u8::from(rng.random_bool(rate)))])).collect()
    }

    fn bleu_rows() -> Vec<RowStats> {
        let pairs = [
            ("the cat sat on the mat", "the cat sat on the mat"),
            ("a dog ran in the park", "the dog ran through the park"),
            ("hello there my friend", "hi there friend"),
            ("it is raining today", "today it rains"),
            ("please restart the router", "please restart your router"),
            ("your order has shipped", "the order was shipped yesterday"),
            ("we are open until six", "we close at six"),
            ("refund issued to your card", "the refund was issued to your card"),
        ];
        pairs.iter().map(|(p, r)| row_stats(Metric::Bleu, p, r)).collect()
    }

    fn point(metric: Metric, rows: &[RowStats]) -> f64 {
        aggregate(metric, &rows.iter().collect::<Vec<_>>())
    }

    #[test]
    fn interval_contains_the_point_estimate() {
        let rows = em_rows(200, 0.6, 1);
        let ci = confidence_interval(Metric::ExactMatch, &rows, DEFAULT_RESAMPLES, 7);
        let p = point(Metric::ExactMatch, &rows);
        assert!(ci.contains(p) && ci.width() > 0.0, "{ci:?} vs {p}");

        let rows = bleu_rows();
        let ci = confidence_interval(Metric::Bleu, &rows, DEFAULT_RESAMPLES, 7);
        let p = point(Metric::Bleu, &rows);
        assert!(ci.contains(p) && ci.width() > 0.0, "{ci:?} vs {p}");
    }

    #[test]
    fn interval_narrows_with_more_rows() {
        let small = confidence_interval(Metric::ExactMatch, &em_rows(50, 0.5, 2), DEFAULT_RESAMPLES, 3);
        let large = confidence_interval(Metric::ExactMatch, &em_rows(2000, 0.5, 2), DEFAULT_RESAMPLES, 3);
        // Width shrinks like 1/sqrt(n): 40x the rows should give about a sixth of the width.
        assert!(large.width() < small.width() / 3.0, "{small:?} vs {large:?}");
        // Binomial: 95% half-width at n = 2000, p = 0.5 is about 1.96 * sqrt(0.25 / 2000) = 0.022.
        assert!((large.width() / 2.0 - 0.0219).abs() < 0.005, "{large:?}");
    }

    #[test]
    fn same_seed_same_interval_and_other_seed_differs() {
        let rows = em_rows(100, 0.3, 4);
        let a = confidence_interval(Metric::ExactMatch, &rows, 500, 11);
        let b = confidence_interval(Metric::ExactMatch, &rows, 500, 11);
        assert_eq!(a, b);
        let values: Vec<f64> = (0..100).map(|i| f64::from(i % 7) * 0.37).collect();
        let c = mean_interval(&values, 500, 11);
        assert_eq!(c, mean_interval(&values, 500, 11));
        assert_ne!(c, mean_interval(&values, 500, 12));
    }

    #[test]
    fn paired_interval_of_identical_systems_is_zero() {
        for (metric, rows) in [(Metric::Bleu, bleu_rows()), (Metric::ExactMatch, em_rows(100, 0.5, 5))] {
            let ci = paired_difference_interval(metric, &rows, &rows, DEFAULT_RESAMPLES, 9);
            assert_eq!(ci, Interval { low: 0.0, high: 0.0 }, "{metric}");
        }
    }

    #[test]
    fn paired_interval_detects_a_consistently_better_system() {
        let base = em_rows(300, 0.4, 6);
        // The tuned system gets every row the base got, plus a fifth of the others.
        let mut rng = StdRng::seed_from_u64(8);
        let tuned: Vec<RowStats> = base
            .iter()
            .map(|r| RowStats(vec![if r.0[0] == 1.0 || rng.random_bool(0.2) { 1.0 } else { 0.0 }]))
            .collect();
        let ci = paired_difference_interval(Metric::ExactMatch, &base, &tuned, DEFAULT_RESAMPLES, 1);
        let diff = point(Metric::ExactMatch, &tuned) - point(Metric::ExactMatch, &base);
        assert!(ci.low > 0.0 && ci.contains(diff), "{ci:?} vs {diff}");
    }

    #[test]
    fn mean_interval_of_constant_values_is_that_value() {
        assert_eq!(mean_interval(&[2.5; 10], 100, 0), Interval { low: 2.5, high: 2.5 });
        assert_eq!(mean_interval(&[], 100, 0), Interval { low: 0.0, high: 0.0 });
    }

    #[test]
    fn no_resamples_gives_the_point_estimate() {
        let rows = bleu_rows();
        let ci = confidence_interval(Metric::Bleu, &rows, 0, 0);
        let p = point(Metric::Bleu, &rows);
        assert_eq!(ci, Interval { low: p, high: p });
    }
}
