//! Labelled rows, the ROC of rules + classifier, and latency.
//!
//! A row is flagged when a rule fires or the probability reaches the threshold, so the detector's
//! ROC ranks rule hits above every probability (score 2) and sweeps the threshold over the rest.
//! "Recall at 1% FPR" is the recall at the lowest threshold whose false-positive rate on the
//! benign rows is at most 1% (it can exceed 1% only when the rules alone do; it says so then).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::InjectionDetector;
use crate::GuardError;

/// One labelled text: `{"text": …, "label": 0|1, "source"?: …, "family"?: …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledText {
    pub text: String,
    /// `true`: an injection or jailbreak attempt.
    pub label: bool,
    pub source: Option<String>,
    pub family: Option<String>,
}

impl LabelledText {
    pub fn new(text: impl Into<String>, label: bool) -> Self {
        Self { text: text.into(), label, source: None, family: None }
    }
}

/// Reads labelled JSONL; a bad row is an error naming the file, line and field.
pub fn read_labelled(path: &Path) -> Result<Vec<LabelledText>, GuardError> {
    let file = std::fs::File::open(path).map_err(|e| GuardError::io(path, e))?;
    let bad = |line: usize, field: &str, reason: String| GuardError::InvalidFile {
        path: path.to_path_buf(),
        location: if field.is_empty() {
            format!("line {line}")
        } else {
            format!("line {line}, field `{field}`")
        },
        reason,
    };
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, "", format!("unreadable: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(n, "", format!("not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| bad(n, "", "expected a JSON object".into()))?;
        let text = match obj.get("text") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(bad(n, "text", format!("expected a string, got {other}"))),
            None => return Err(bad(n, "text", "missing".into())),
        };
        let label = match obj.get("label") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(v) if v.as_u64() == Some(0) => false,
            Some(v) if v.as_u64() == Some(1) => true,
            Some(other) => {
                return Err(bad(n, "label", format!("expected 0 (benign) or 1 (injection), got {other}")));
            }
            None => return Err(bad(n, "label", "missing (0 benign, 1 injection)".into())),
        };
        let opt = |field: &str| -> Result<Option<String>, GuardError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(n, field, format!("expected a string, got {other}"))),
            }
        };
        rows.push(LabelledText { text, label, source: opt("source")?, family: opt("family")? });
    }
    if rows.is_empty() {
        return Err(GuardError::InvalidFile {
            path: path.to_path_buf(),
            location: "rows".into(),
            reason: "no labelled rows".into(),
        });
    }
    Ok(rows)
}

/// A threshold and what it does on the rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// The false-positive rate asked for (None: the model's own threshold).
    pub target_fpr: Option<f64>,
    pub threshold: f32,
    pub recall: f64,
    pub fpr: f64,
    pub precision: f64,
    pub true_positives: usize,
    pub false_positives: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupRecall {
    pub attacks: usize,
    /// Attacks flagged at the model's threshold.
    pub caught: usize,
    pub benign: usize,
    /// Benign rows flagged at the model's threshold.
    pub flagged_benign: usize,
}

impl GroupRecall {
    pub fn recall(&self) -> Option<f64> {
        (self.attacks > 0).then(|| self.caught as f64 / self.attacks as f64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleCounts {
    pub attacks: usize,
    pub benign: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub rows: usize,
    pub attacks: usize,
    pub benign: usize,
    /// Rules + classifier (rule hits ranked first).
    pub auroc: f64,
    /// The classifier's probability alone.
    pub auroc_classifier: f64,
    /// At 1% and 5% false positives.
    pub at_fpr: Vec<OperatingPoint>,
    /// At the given threshold (the model's), when one was given.
    pub at_threshold: Option<OperatingPoint>,
    /// Rows each rule fired on, by label.
    pub rules: BTreeMap<&'static str, RuleCounts>,
    pub per_source: BTreeMap<String, GroupRecall>,
    pub per_family: BTreeMap<String, GroupRecall>,
}

/// Scores every row with `det` and reports at its threshold.
pub fn evaluate(det: &InjectionDetector, rows: &[LabelledText]) -> EvalReport {
    let scored: Vec<(f32, Option<&'static str>)> =
        rows.iter().map(|r| (det.score(&r.text), det.rule(&r.text))).collect();
    evaluate_with(rows, &scored, Some(det.threshold()))
}

fn combined(s: &(f32, Option<&'static str>)) -> f32 {
    if s.1.is_some() { 2.0 } else { s.0 }
}

fn point_at(
    scored: &[(f32, Option<&'static str>)],
    rows: &[LabelledText],
    threshold: f32,
    target_fpr: Option<f64>,
) -> OperatingPoint {
    let (mut tp, mut fp, mut pos, mut neg) = (0, 0, 0, 0);
    for (s, r) in scored.iter().zip(rows) {
        let flagged = s.1.is_some() || s.0 >= threshold;
        if r.label {
            pos += 1;
            tp += usize::from(flagged);
        } else {
            neg += 1;
            fp += usize::from(flagged);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    OperatingPoint {
        target_fpr,
        threshold,
        recall: ratio(tp, pos),
        fpr: ratio(fp, neg),
        precision: ratio(tp, tp + fp),
        true_positives: tp,
        false_positives: fp,
    }
}

/// The lowest threshold at which at most `target_fpr` of the benign rows are flagged.
pub(crate) fn operating_point(
    scored: &[(f32, Option<&'static str>)],
    rows: &[LabelledText],
    target_fpr: f64,
) -> OperatingPoint {
    let mut neg: Vec<f32> =
        scored.iter().zip(rows).filter(|(_, r)| !r.label).map(|(s, _)| combined(s)).collect();
    neg.sort_by(|a, b| b.total_cmp(a));
    // Benign rows allowed above the threshold (the epsilon keeps 1% of 300 at 3, not 2).
    let allowed = (target_fpr * neg.len() as f64 + 1e-9).floor() as usize;
    let threshold = match neg.get(allowed) {
        // Just above the first benign score that must stay below it.
        Some(&s) => s.next_up().min(1.0),
        None => f32::MIN_POSITIVE,
    };
    point_at(scored, rows, threshold, Some(target_fpr))
}

/// Area under the ROC curve (Mann–Whitney U with tied ranks averaged); 0.5 when a class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg;
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The report from precomputed (probability, rule) pairs, one per row.
pub(crate) fn evaluate_with(
    rows: &[LabelledText],
    scored: &[(f32, Option<&'static str>)],
    threshold: Option<f32>,
) -> EvalReport {
    let labels: Vec<bool> = rows.iter().map(|r| r.label).collect();
    let comb: Vec<f32> = scored.iter().map(combined).collect();
    let probs: Vec<f32> = scored.iter().map(|s| s.0).collect();
    let mut rules: BTreeMap<&'static str, RuleCounts> = BTreeMap::new();
    let mut per_source: BTreeMap<String, GroupRecall> = BTreeMap::new();
    let mut per_family: BTreeMap<String, GroupRecall> = BTreeMap::new();
    for (s, r) in scored.iter().zip(rows) {
        if let Some(name) = s.1 {
            let c = rules.entry(name).or_default();
            if r.label { c.attacks += 1 } else { c.benign += 1 }
        }
        let Some(t) = threshold else { continue };
        let flagged = s.1.is_some() || s.0 >= t;
        for (map, key) in [(&mut per_source, &r.source), (&mut per_family, &r.family)] {
            let Some(key) = key else { continue };
            let g = map.entry(key.clone()).or_default();
            if r.label {
                g.attacks += 1;
                g.caught += usize::from(flagged);
            } else {
                g.benign += 1;
                g.flagged_benign += usize::from(flagged);
            }
        }
    }
    let attacks = labels.iter().filter(|&&l| l).count();
    EvalReport {
        rows: rows.len(),
        attacks,
        benign: rows.len() - attacks,
        auroc: auroc(&comb, &labels),
        auroc_classifier: auroc(&probs, &labels),
        at_fpr: [0.01, 0.05].iter().map(|&f| operating_point(scored, rows, f)).collect(),
        at_threshold: threshold.map(|t| point_at(scored, rows, t, None)),
        rules,
        per_source,
        per_family,
    }
}

/// Time per `check`, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    pub runs: usize,
    pub p50_us: f64,
    pub p95_us: f64,
    pub max_us: f64,
}

/// Times `check` on each text `repeats` times (after one untimed pass), one call at a time.
pub fn measure_latency(det: &InjectionDetector, texts: &[&str], repeats: usize) -> LatencyStats {
    for t in texts {
        std::hint::black_box(det.check(t));
    }
    let mut us: Vec<f64> = Vec::with_capacity(texts.len() * repeats);
    for _ in 0..repeats {
        for t in texts {
            let start = Instant::now();
            std::hint::black_box(det.check(std::hint::black_box(t)));
            us.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    us.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        if us.is_empty() { 0.0 } else { us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] }
    };
    LatencyStats {
        runs: us.len(),
        p50_us: pct(0.5),
        p95_us: pct(0.95),
        max_us: us.last().copied().unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(labels: &[bool]) -> Vec<LabelledText> {
        labels.iter().enumerate().map(|(i, &l)| LabelledText::new(format!("r{i}"), l)).collect()
    }

    #[test]
    fn auroc_matches_hand_counts() {
        assert_eq!(auroc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]), 1.0);
        assert_eq!(auroc(&[0.1, 0.2, 0.9, 0.8], &[true, true, false, false]), 0.0);
        // One tie between a positive and a negative counts a half: (1 + 0.5 + 1 + 1) / 4.
        assert!((auroc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]) - 0.875).abs() < 1e-12);
    }

    #[test]
    fn recall_at_fpr_uses_the_lowest_threshold_within_the_budget_and_ranks_rules_first() {
        // 100 benign at 0.00..0.99, attacks at 0.995, 0.985 and 0.5; one benign rule hit.
        let mut labels = vec![false; 100];
        labels.extend([true, true, true]);
        let r = rows(&labels);
        let mut scored: Vec<(f32, Option<&'static str>)> =
            (0..100).map(|i| (i as f32 / 100.0, None)).collect();
        scored[3].1 = Some("ignore_previous");
        scored.extend([(0.995, None), (0.985, None), (0.5, Some("dan_persona"))]);
        let p = operating_point(&scored, &r, 0.01);
        // One benign allowed above: the rule hit. The threshold sits just above 0.99.
        assert!(p.threshold > 0.99 && p.threshold < 0.9901, "{p:?}");
        assert_eq!((p.true_positives, p.false_positives), (2, 1));
        let p = operating_point(&scored, &r, 0.05);
        assert!(p.threshold > 0.95 && p.threshold < 0.951, "{p:?}");
        assert_eq!((p.true_positives, p.false_positives), (3, 5));
        assert!((p.fpr - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_bad_row_names_the_file_line_and_field() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rows.jsonl");
        for (body, want) in [
            ("{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 2}\n", "line 2, field `label`"),
            ("{\"text\": \"a\", \"label\": 0}\n\n{\"label\": 1}\n", "line 3, field `text`"),
            ("{\"text\": \"a\", \"label\": 0}\nnot json\n", "line 2: not JSON"),
            ("{\"text\": \"a\", \"label\": 0, \"source\": 3}\n", "line 1, field `source`"),
            ("\n", "no labelled rows"),
        ] {
            std::fs::write(&path, body)?;
            let e = read_labelled(&path).expect_err(want).to_string();
            assert!(e.contains("rows.jsonl") && e.contains(want), "{e}");
        }
        std::fs::write(&path, "{\"text\": \"a\", \"label\": true, \"source\": \"s\", \"family\": \"f\"}\n")?;
        let r = read_labelled(&path)?;
        assert_eq!(
            r[0],
            LabelledText {
                text: "a".into(),
                label: true,
                source: Some("s".into()),
                family: Some("f".into())
            }
        );
        Ok(())
    }
}
