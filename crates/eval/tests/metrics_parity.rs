//! Our metrics against the Python reference implementations, on the pairs recorded by
//! `scripts/parity/metrics_fixtures.py` in `fixtures/metrics/reference.json`:
//! sacrebleu `corpus_bleu` / `corpus_chrf` (defaults), rouge-score ROUGE-L (no stemmer) and the
//! official SQuAD v2.0 exact match / F1.
//!
//! Integer statistics and 13a tokenisations must be identical. Scores must agree within 2 ulp
//! (far below 1e-9): the implementations follow the reference's floating-point operation order
//! and are bit-identical to the Python values, but serde_json's default float parser (no
//! `float_roundtrip` feature) may read a recorded value 1 ulp off, and another platform's libm
//! `exp`/`ln` may differ by 1 ulp. The largest difference seen is printed.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use ferrotune_eval::metrics::{Metric, RowStats, aggregate, normalize_answer, row_stats, tokenize_13a};
use serde_json::Value;

const MAX_ULPS: u64 = 2;

struct Fixture {
    pairs: Vec<Value>,
    corpus: serde_json::Map<String, Value>,
}

fn load() -> Result<Fixture> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/metrics/reference.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Value = serde_json::from_str(&text)?;
    let pairs = v["pairs"].as_array().context("pairs")?.clone();
    let corpus = v["corpus"].take().as_object().context("corpus")?.clone();
    ensure!(pairs.len() >= 50, "fixture has only {} pairs", pairs.len());
    Ok(Fixture { pairs, corpus })
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key].as_str().with_context(|| format!("`{key}` is not a string"))
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("`{key}` is not a number"))
}

fn nums(v: &Value, key: &str) -> Result<Vec<f64>> {
    let items = v[key].as_array().with_context(|| format!("`{key}` is not an array"))?;
    items.iter().map(|x| x.as_f64().context("number")).collect()
}

/// Compares two non-negative scores and returns |got - want|, failing beyond `MAX_ULPS`.
fn close(what: &str, got: f64, want: f64) -> Result<f64> {
    let ulps = got.to_bits().abs_diff(want.to_bits());
    let ok = got >= 0.0 && want >= 0.0 && ulps <= MAX_ULPS;
    ensure!(ok, "{what}: got {got:.17}, reference {want:.17} ({ulps} ulp apart)");
    Ok((got - want).abs())
}

fn rows_of(f: &Fixture, metric: Metric) -> Result<Vec<RowStats>> {
    f.pairs.iter().map(|p| Ok(row_stats(metric, text(p, "prediction")?, text(p, "reference")?))).collect()
}

#[test]
fn tokenize_13a_matches_sacrebleu() -> Result<()> {
    let f = load()?;
    for (i, p) in f.pairs.iter().enumerate() {
        for side in ["prediction", "reference"] {
            let want = text(p, &format!("tok13a_{side}"))?;
            assert_eq!(tokenize_13a(text(p, side)?), want, "pair {i} {side}: {:?}", text(p, side)?);
        }
    }
    Ok(())
}

#[test]
fn segment_statistics_match_sacrebleu_exactly() -> Result<()> {
    let f = load()?;
    for (i, p) in f.pairs.iter().enumerate() {
        let (pred, reference) = (text(p, "prediction")?, text(p, "reference")?);
        assert_eq!(row_stats(Metric::Bleu, pred, reference).0, nums(p, "bleu_stats")?, "pair {i} BLEU stats");
        assert_eq!(row_stats(Metric::Chrf, pred, reference).0, nums(p, "chrf_stats")?, "pair {i} chrF stats");
    }
    Ok(())
}

#[test]
fn per_pair_scores_match_the_references() -> Result<()> {
    let f = load()?;
    let mut worst = 0.0f64;
    for (i, p) in f.pairs.iter().enumerate() {
        let (pred, reference) = (text(p, "prediction")?, text(p, "reference")?);
        for (metric, key) in [
            (Metric::Bleu, "bleu"),
            (Metric::Chrf, "chrf"),
            (Metric::RougeL, "rougeL"),
            (Metric::ExactMatch, "exact_match"),
            (Metric::F1, "f1"),
        ] {
            let got = aggregate(metric, &[&row_stats(metric, pred, reference)]);
            let what = format!("pair {i} {key} ({pred:?} vs {reference:?})");
            worst = worst.max(close(&what, got, num(p, key)?)?);
        }
    }
    eprintln!("per-pair scores: largest |ours - reference| = {worst:e}");
    Ok(())
}

#[test]
fn corpus_scores_match_the_references_on_every_subset() -> Result<()> {
    let f = load()?;
    ensure!(f.corpus.len() >= 4, "expected the whole set and three subsets");
    let mut worst = 0.0f64;
    for metric in [Metric::Bleu, Metric::Chrf, Metric::RougeL, Metric::ExactMatch, Metric::F1] {
        let rows = rows_of(&f, metric)?;
        for (name, subset) in &f.corpus {
            let idx = subset["indices"].as_array().context("indices")?;
            let picked: Vec<&RowStats> = idx
                .iter()
                .map(|i| i.as_u64().and_then(|i| rows.get(i as usize)).context("index"))
                .collect::<Result<_>>()?;
            let got = aggregate(metric, &picked);
            worst = worst.max(close(&format!("{name} {metric}"), got, num(subset, metric.name())?)?);
        }
    }
    eprintln!("corpus scores: largest |ours - reference| = {worst:e}");
    Ok(())
}

#[test]
fn squad_normalisation_keeps_what_python_keeps() {
    // Spot checks that pin the behaviours the fixture relies on (see the script's pairs).
    assert_eq!(normalize_answer("ΟΔΟΣ ΑΘΗΝΩΝ"), "οδος αθηνων");
    assert_eq!(normalize_answer("The cat sat on the mat."), "cat sat on mat");
    assert_eq!(normalize_answer("(a) The answer is B."), "answer is b");
}
