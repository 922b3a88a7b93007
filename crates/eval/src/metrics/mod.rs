//! Text metrics for comparing a model's answers with references.
//!
//! Every metric is split into per-row sufficient statistics ([`row_stats`]) and a corpus-level
//! [`aggregate`] of those rows. For the mean-of-rows metrics a row holds its own score; for BLEU
//! and chrF it holds the n-gram counts that sacrebleu sums over the corpus before scoring. The
//! split is what lets [`crate::bootstrap`] resample rows without re-tokenising anything.
//!
//! | metric        | row statistics                                 | equals                          |
//! |---------------|------------------------------------------------|---------------------------------|
//! | `exact_match` | 1/0 after SQuAD normalisation                  | SQuAD v2.0 `compute_exact`      |
//! | `f1`          | token F1 after SQuAD normalisation             | SQuAD v2.0 `compute_f1`         |
//! | `accuracy`    | 1/0 after label normalisation (below)          | —                               |
//! | `json_match`  | 1/0 JSON value equality                        | — (see [`json_match_report`])   |
//! | `rougeL`      | ROUGE-L F-measure                              | rouge-score, no stemmer         |
//! | `bleu`        | `[hyp_len, ref_len, correct_1..4, total_1..4]` | sacrebleu `corpus_bleu`, 0..100 |
//! | `chrf`        | `[hyp_n, ref_n, match_n]` for n = 1..=6        | sacrebleu `corpus_chrf`, 0..100 |
//!
//! `accuracy` is for label tasks: both sides are trimmed, lowercased, and stripped of trailing
//! sentence punctuation (`. , ! ? ; :`, their CJK forms, `…`) before comparing, so "Positive."
//! equals "positive" but "C++" does not equal "C".
//!
//! Equality with the Python references is checked on recorded fixtures by
//! `tests/metrics_parity.rs`.

mod bleu;
mod chrf;
mod json;
mod label;
mod pystr;
mod rouge;
mod squad;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use bleu::tokenize_13a;
pub use json::{FieldAgreement, JsonMatchReport, json_match_report};
pub use squad::normalize_answer;

/// A text metric. All are "higher is better".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    #[serde(rename = "exact_match")]
    ExactMatch,
    #[serde(rename = "json_match")]
    JsonMatch,
    #[serde(rename = "accuracy")]
    Accuracy,
    #[serde(rename = "f1")]
    F1,
    #[serde(rename = "rougeL", alias = "rouge_l", alias = "rougel")]
    RougeL,
    #[serde(rename = "bleu")]
    Bleu,
    #[serde(rename = "chrf", alias = "chrF")]
    Chrf,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::ExactMatch,
        Metric::JsonMatch,
        Metric::Accuracy,
        Metric::F1,
        Metric::RougeL,
        Metric::Bleu,
        Metric::Chrf,
    ];

    /// The canonical name, as written in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "exact_match",
            Metric::JsonMatch => "json_match",
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::RougeL => "rougeL",
            Metric::Bleu => "bleu",
            Metric::Chrf => "chrf",
        }
    }

    /// Whether a larger score is better (true for every metric here).
    pub fn higher_is_better(self) -> bool {
        true
    }

    /// The score of a perfect answer: 1.0 for 0..1 metrics, 100.0 for BLEU and chrF (sacrebleu's
    /// convention).
    pub fn scale(self) -> f64 {
        match self {
            Metric::Bleu | Metric::Chrf => 100.0,
            _ => 1.0,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric name that is not one of [`Metric::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {name:?}; valid metrics: exact_match, json_match, accuracy, f1, rougeL, bleu, chrf")]
pub struct UnknownMetric {
    pub name: String,
}

impl FromStr for Metric {
    type Err = UnknownMetric;

    /// Case-insensitive; also accepts `rouge_l` / `rouge-l` for ROUGE-L and `chrF` for chrF.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "rouge_l" | "rouge-l" => return Ok(Metric::RougeL),
            "exactmatch" | "em" => return Ok(Metric::ExactMatch),
            _ => {}
        }
        Metric::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(&lower))
            .ok_or_else(|| UnknownMetric { name: s.to_owned() })
    }
}

/// Per-row sufficient statistics: a metric's corpus score is [`aggregate`] of its rows.
///
/// For exact_match, json_match, accuracy, f1 and rougeL it is `[row score]`; for bleu the ten
/// counts `[hyp_len, ref_len, correct_1..4, total_1..4]`; for chrf the eighteen counts
/// `[hyp_n, ref_n, match_n]` for character n-gram orders 1..=6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowStats(pub Vec<f64>);

/// The statistics of one (prediction, reference) pair.
pub fn row_stats(metric: Metric, prediction: &str, reference: &str) -> RowStats {
    RowStats(match metric {
        Metric::ExactMatch => vec![squad::exact_match(prediction, reference)],
        Metric::F1 => vec![squad::token_f1(prediction, reference)],
        Metric::Accuracy => vec![label::accuracy(prediction, reference)],
        Metric::JsonMatch => vec![json::row_match(prediction, reference)],
        Metric::RougeL => vec![rouge::rouge_l(prediction, reference)],
        Metric::Bleu => bleu::row_stats(prediction, reference),
        Metric::Chrf => chrf::row_stats(prediction, reference),
    })
}

/// The corpus-level score of `rows`: the mean row score, or for BLEU and chrF the score of the
/// summed statistics. An empty set of rows scores 0.
///
/// # Panics
/// If a row does not have the length [`row_stats`] gives for `metric`.
pub fn aggregate(metric: Metric, rows: &[&RowStats]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    match metric {
        Metric::Bleu => bleu::score_from_stats(&sum_rows(rows, bleu::STATS)),
        Metric::Chrf => chrf::score_from_stats(&sum_rows(rows, chrf::STATS)),
        _ => rows.iter().map(|r| single(r)).sum::<f64>() / rows.len() as f64,
    }
}

fn single(row: &RowStats) -> f64 {
    assert_eq!(row.0.len(), 1, "mean metrics have one statistic per row");
    row.0[0]
}

fn sum_rows(rows: &[&RowStats], width: usize) -> Vec<f64> {
    let mut total = vec![0.0; width];
    for row in rows {
        assert_eq!(row.0.len(), width, "row statistics of the wrong metric");
        for (t, v) in total.iter_mut().zip(&row.0) {
            *t += v;
        }
    }
    total
}

/// Convenience: `aggregate` of the row statistics of aligned predictions and references.
///
/// # Panics
/// If `predictions` and `references` differ in length.
pub fn score(metric: Metric, predictions: &[&str], references: &[&str]) -> f64 {
    assert_eq!(predictions.len(), references.len(), "{metric}: one prediction per reference");
    let rows: Vec<RowStats> =
        predictions.iter().zip(references).map(|(p, r)| row_stats(metric, p, r)).collect();
    aggregate(metric, &rows.iter().collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(m.name().to_uppercase().parse::<Metric>(), Ok(m));
            let json = serde_json::to_string(&m).expect("serialize");
            assert_eq!(json, format!("\"{}\"", m.name()));
        }
        for alias in ["rouge_l", "rougel", "ROUGE-L", "RougeL"] {
            assert_eq!(alias.parse::<Metric>(), Ok(Metric::RougeL), "{alias}");
        }
        assert_eq!("chrF".parse::<Metric>(), Ok(Metric::Chrf));
    }

    #[test]
    fn unknown_metric_error_lists_the_valid_names() {
        let err = "meteor".parse::<Metric>().expect_err("meteor is not offered");
        let msg = err.to_string();
        assert!(msg.contains("meteor"));
        for m in Metric::ALL {
            assert!(msg.contains(m.name()), "{msg}");
        }
    }

    #[test]
    fn scale_is_100_only_for_sacrebleu_metrics() {
        for m in Metric::ALL {
            assert!(m.higher_is_better());
            let want = if matches!(m, Metric::Bleu | Metric::Chrf) { 100.0 } else { 1.0 };
            assert_eq!(m.scale(), want);
        }
    }

    #[test]
    fn identical_texts_score_the_top_of_the_scale() {
        let text = "Your refund of $20 was issued on 3 May.";
        for m in Metric::ALL.into_iter().filter(|&m| m != Metric::JsonMatch) {
            let s = score(m, &[text], &[text]);
            assert!((s - m.scale()).abs() < 1e-9, "{m}: {s}");
        }
        assert_eq!(score(Metric::JsonMatch, &["{\"a\": 1}"], &["{\"a\":1.0}"]), 1.0);
    }

    #[test]
    fn corpus_bleu_is_not_the_mean_of_sentence_bleu() {
        // Row 1 alone scores 0 (no 4-gram), row 2 is perfect; pooled counts give a positive score
        // that differs from the mean of the two sentence scores.
        let preds = ["the cat", "a dog runs in the park today"];
        let refs = ["the cat", "a dog runs in the park today"];
        let rows: Vec<RowStats> =
            preds.iter().zip(&refs).map(|(p, r)| row_stats(Metric::Bleu, p, r)).collect();
        assert_eq!(aggregate(Metric::Bleu, &[&rows[0]]), 0.0);
        let pooled = aggregate(Metric::Bleu, &[&rows[0], &rows[1]]);
        assert!((pooled - 100.0).abs() < 1e-9, "{pooled}");
    }

    #[test]
    fn empty_set_scores_zero() {
        for m in Metric::ALL {
            assert_eq!(aggregate(m, &[]), 0.0);
            assert_eq!(score(m, &[], &[]), 0.0);
        }
    }

    #[test]
    fn mean_metrics_average_rows() {
        let s = score(Metric::Accuracy, &["yes", "No.", "maybe", "yes"], &["yes", "no", "no", "no"]);
        assert_eq!(s, 0.5);
    }
}
