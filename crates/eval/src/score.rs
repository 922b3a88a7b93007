//! Scoring the systems of a run: every metric with a 95% bootstrap interval, each adapter's
//! paired difference from the base, and per-row scores for the report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bootstrap::{
    Interval, check_resamples, confidence_interval, paired_difference_interval, percentile_interval,
};
use crate::error::{EvalError, Result};
use crate::metrics::{Metric, RowStats, aggregate, row_stats};

/// A metric of a run: a text metric on the generated answers, or the teacher-forced `loss`
/// (mean negative log-likelihood of the reference tokens, nats/token) and its `perplexity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricSpec {
    Text(Metric),
    Loss,
    Perplexity,
}

impl MetricSpec {
    pub fn name(self) -> &'static str {
        match self {
            Self::Text(m) => m.name(),
            Self::Loss => "loss",
            Self::Perplexity => "perplexity",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// The best possible score for text metrics (1 or 100); `None` for loss and perplexity.
    pub fn scale(self) -> Option<f64> {
        match self {
            Self::Text(m) => Some(m.scale()),
            _ => None,
        }
    }

    pub fn needs_model(self) -> bool {
        !matches!(self, Self::Text(_))
    }

    /// A comma-separated list, e.g. `rougeL,bleu,loss`.
    pub fn parse_list(s: &str) -> Result<Vec<MetricSpec>> {
        let mut out: Vec<MetricSpec> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m: MetricSpec = part.parse()?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(EvalError::InvalidOption { option: "--metrics", reason: "no metric given".into() });
        }
        Ok(out)
    }
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MetricSpec {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "loss" => Ok(Self::Loss),
            "perplexity" | "ppl" => Ok(Self::Perplexity),
            _ => s.parse::<Metric>().map(Self::Text).map_err(|e| EvalError::InvalidOption {
                option: "--metrics",
                reason: format!("{e}, loss, perplexity"),
            }),
        }
    }
}

/// The metrics used when `--metrics` is not given: the generation metrics that suit free text,
/// plus `json_match` when every reference is JSON, plus loss and perplexity when a model runs.
pub fn default_metrics(all_structured: bool, with_model: bool) -> Vec<MetricSpec> {
    let mut v: Vec<MetricSpec> = [Metric::ExactMatch, Metric::F1, Metric::RougeL, Metric::Bleu, Metric::Chrf]
        .map(MetricSpec::Text)
        .to_vec();
    if all_structured {
        v.insert(0, MetricSpec::Text(Metric::JsonMatch));
    }
    if with_model {
        v.extend([MetricSpec::Loss, MetricSpec::Perplexity]);
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
    /// 95% percentile bootstrap interval over rows.
    #[serde(deserialize_with = "nans_if_null")]
    pub ci95: [f64; 2],
}

/// serde_json writes a NaN score as `null`; read it back as NaN, so that an `eval.json` holding
/// one still loads as a `--baseline` (and its NaN fails the gate) instead of being refused.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nans_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f64; 2], D::Error> {
    let [a, b] = <[Option<f64>; 2]>::deserialize(d)?;
    Ok([a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)])
}

impl Score {
    fn new(value: f64, i: Interval) -> Self {
        Self { value, ci95: [i.low, i.high] }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemScore {
    pub system: String,
    #[serde(flatten)]
    pub score: Score,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    pub name: String,
    pub higher_is_better: bool,
    /// Best possible score (1 or 100) for text metrics.
    pub scale: Option<f64>,
    pub scores: Vec<SystemScore>,
    /// Each adapter minus the base, paired bootstrap on the same resampled rows.
    pub vs_base: Vec<SystemScore>,
}

impl MetricResult {
    pub fn score_of(&self, system: &str) -> Option<Score> {
        self.scores.iter().find(|s| s.system == system).map(|s| s.score)
    }
}

/// What one system gave, as the scorer needs it.
pub struct Answers<'a> {
    pub system: &'a str,
    pub predictions: &'a [String],
    /// Per row (nll in nats, reference tokens); needed for loss and perplexity.
    pub loss: Option<&'a [(f64, usize)]>,
}

/// Per-row statistics of every metric for every system: `[system][metric] -> rows`.
pub struct RowTable {
    pub metrics: Vec<MetricSpec>,
    pub stats: Vec<Vec<Vec<RowStats>>>,
}

impl RowTable {
    /// A row's own score (for mean metrics the row's value; BLEU/chrF on that row alone; loss per
    /// token of that row).
    pub fn row_score(&self, system: usize, metric: usize, row: usize) -> f64 {
        let s = &self.stats[system][metric][row];
        match self.metrics[metric] {
            MetricSpec::Text(m) => aggregate(m, &[s]),
            MetricSpec::Loss => s.0[0] / s.0[1].max(1.0),
            MetricSpec::Perplexity => (s.0[0] / s.0[1].max(1.0)).exp(),
        }
    }
}

fn loss_of(rows: &[&RowStats]) -> f64 {
    let (nll, n) = rows.iter().fold((0.0, 0.0), |(a, b), r| (a + r.0[0], b + r.0[1]));
    if n == 0.0 { 0.0 } else { nll / n }
}

fn corpus(metric: MetricSpec, rows: &[&RowStats]) -> f64 {
    match metric {
        MetricSpec::Text(m) => aggregate(m, rows),
        MetricSpec::Loss => loss_of(rows),
        MetricSpec::Perplexity => loss_of(rows).exp(),
    }
}

/// Score every system on `metrics` against `references`. The first system is the base that
/// `vs_base` differences are taken against.
pub fn score_systems(
    references: &[String],
    systems: &[Answers<'_>],
    metrics: &[MetricSpec],
    resamples: usize,
    seed: u64,
) -> Result<(Vec<MetricResult>, RowTable)> {
    check_resamples(resamples)?;
    let mut stats: Vec<Vec<Vec<RowStats>>> = Vec::with_capacity(systems.len());
    for s in systems {
        if s.predictions.len() != references.len() {
            return Err(EvalError::InvalidOption {
                option: "predictions",
                reason: format!(
                    "{}: {} predictions for {} references",
                    s.system,
                    s.predictions.len(),
                    references.len()
                ),
            });
        }
        let mut per_metric: Vec<Vec<RowStats>> = Vec::with_capacity(metrics.len());
        for &m in metrics {
            per_metric.push(match m {
                MetricSpec::Text(t) => {
                    s.predictions.iter().zip(references).map(|(p, r)| row_stats(t, p, r)).collect()
                }
                MetricSpec::Loss | MetricSpec::Perplexity => {
                    let loss = s.loss.ok_or_else(|| EvalError::InvalidOption {
                        option: "--metrics",
                        reason: format!("`{m}` needs a model run (teacher-forced), not only predictions"),
                    })?;
                    loss.iter().map(|&(nll, n)| RowStats(vec![nll, n as f64])).collect()
                }
            });
        }
        stats.push(per_metric);
    }
    let mut results = Vec::with_capacity(metrics.len());
    for (mi, &m) in metrics.iter().enumerate() {
        let mut scores = Vec::new();
        let mut vs_base = Vec::new();
        for (si, s) in systems.iter().enumerate() {
            let rows = &stats[si][mi];
            let refs: Vec<&RowStats> = rows.iter().collect();
            let value = corpus(m, &refs);
            let ci = match m {
                MetricSpec::Text(t) => confidence_interval(t, rows, resamples, seed),
                _ => percentile_interval(rows.len(), resamples, seed, |idx| pick_corpus(m, rows, idx)),
            };
            scores.push(SystemScore { system: s.system.to_string(), score: Score::new(value, ci) });
            if si > 0 {
                let base = &stats[0][mi];
                let base_value = corpus(m, &base.iter().collect::<Vec<_>>());
                let ci = match m {
                    MetricSpec::Text(t) => paired_difference_interval(t, base, rows, resamples, seed),
                    _ => percentile_interval(rows.len(), resamples, seed, |idx| {
                        pick_corpus(m, rows, idx) - pick_corpus(m, base, idx)
                    }),
                };
                vs_base.push(SystemScore {
                    system: s.system.to_string(),
                    score: Score::new(value - base_value, ci),
                });
            }
        }
        results.push(MetricResult {
            name: m.name().into(),
            higher_is_better: m.higher_is_better(),
            scale: m.scale(),
            scores,
            vs_base,
        });
    }
    Ok((results, RowTable { metrics: metrics.to_vec(), stats }))
}

fn pick_corpus(m: MetricSpec, rows: &[RowStats], idx: Option<&[usize]>) -> f64 {
    let picked: Vec<&RowStats> = match idx {
        Some(idx) => idx.iter().map(|&i| &rows[i]).collect(),
        None => rows.iter().collect(),
    };
    corpus(m, &picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_resample_count_is_an_error_naming_the_option() {
        // Regression: 10^13 resamples went straight to a Vec of that many scores (capacity
        // overflow / abort) instead of an error.
        let refs = vec!["a".to_string()];
        let preds = vec!["a".to_string()];
        let answers = [Answers { system: "s", predictions: &preds, loss: None }];
        let metrics = [MetricSpec::Text(Metric::ExactMatch)];
        let err = score_systems(&refs, &answers, &metrics, 10_000_000_000_000, 0)
            .err()
            .expect("too many resamples")
            .to_string();
        assert!(err.contains("--resamples") && err.contains("100000"), "{err}");
        let max = crate::bootstrap::MAX_RESAMPLES;
        assert!(score_systems(&refs, &answers, &metrics, max, 0).is_ok());
    }

    #[test]
    fn a_nan_score_written_as_null_reads_back_as_nan() {
        let s = Score { value: f64::NAN, ci95: [f64::NAN, 1.0] };
        let text = serde_json::to_string(&s).expect("serialize");
        assert_eq!(text, r#"{"value":null,"ci95":[null,1.0]}"#);
        let back: Score = serde_json::from_str(&text).expect("a NaN score reads back");
        assert!(back.value.is_nan() && back.ci95[0].is_nan() && back.ci95[1] == 1.0);
    }

    #[test]
    fn metric_lists_parse_and_reject_unknown_names() {
        let v = MetricSpec::parse_list("rougeL, bleu,loss,ppl,bleu").expect("known metrics");
        assert_eq!(
            v,
            vec![
                MetricSpec::Text(Metric::RougeL),
                MetricSpec::Text(Metric::Bleu),
                MetricSpec::Loss,
                MetricSpec::Perplexity
            ]
        );
        let e = MetricSpec::parse_list("rougeL,blue").expect_err("an unknown metric").to_string();
        assert!(e.contains("blue") && e.contains("perplexity"), "{e}");
        assert!(MetricSpec::parse_list(" , ").is_err());
    }

    #[test]
    fn loss_is_token_weighted_and_perplexity_its_exp() {
        let refs = vec!["a".to_string(), "b".to_string()];
        let preds = refs.clone();
        let base_loss = [(4.0, 2), (2.0, 2)]; // 6 nats over 4 tokens
        let tuned_loss = [(2.0, 2), (1.0, 2)]; // 3 nats over 4 tokens
        let systems = [
            Answers { system: "base", predictions: &preds, loss: Some(&base_loss) },
            Answers { system: "tuned", predictions: &preds, loss: Some(&tuned_loss) },
        ];
        let (res, table) = score_systems(
            &refs,
            &systems,
            &[MetricSpec::Loss, MetricSpec::Perplexity, MetricSpec::Text(Metric::ExactMatch)],
            200,
            1,
        )
        .expect("scores");
        assert!((res[0].scores[0].score.value - 1.5).abs() < 1e-12);
        assert!((res[0].vs_base[0].score.value + 0.75).abs() < 1e-12);
        assert!((res[1].scores[1].score.value - 0.75f64.exp()).abs() < 1e-12);
        assert_eq!(res[2].scores[0].score.value, 1.0);
        assert_eq!(res[2].vs_base[0].score.ci95, [0.0, 0.0]);
        assert!((table.row_score(0, 0, 0) - 2.0).abs() < 1e-12);
        assert!(!res[0].higher_is_better && res[2].higher_is_better);
    }

    #[test]
    fn loss_needs_a_model_run() {
        let refs = vec!["a".to_string()];
        let systems = [Answers { system: "x", predictions: &refs, loss: None }];
        let e = score_systems(&refs, &systems, &[MetricSpec::Loss], 10, 1)
            .err()
            .expect("loss without per-row losses is refused")
            .to_string();
        assert!(e.contains("teacher-forced"), "{e}");
    }
}
