//! `--fail-if-worse METRIC[:TOLERANCE]`: a release gate. Each evaluated adapter is compared with
//! the base of the same run — or, with a baseline `eval.json`, each system of this run that has
//! an adapter (the base when there is none) with one system of the baseline. A system fails when
//! it is worse than its reference by more than the tolerance, in the metric's own units
//! (`rougeL:0.02` = two ROUGE-L points on the 0..1 scale; `bleu:1` = one BLEU point; for
//! `loss`, higher is worse).

use std::str::FromStr;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::report::EvalFile;
use crate::score::MetricSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub metric: MetricSpec,
    pub tolerance: f64,
}

impl FromStr for Gate {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, tol) = match s.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (s, None),
        };
        let metric: MetricSpec = name.parse()?;
        let tolerance = match tol {
            None => 0.0,
            Some(t) => {
                t.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                    EvalError::InvalidOption {
                        option: "--fail-if-worse",
                        reason: format!("tolerance `{t}` in `{s}` is not a non-negative number"),
                    }
                })?
            }
        };
        Ok(Gate { metric, tolerance })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateOutcome {
    pub metric: String,
    pub system: String,
    pub value: f64,
    /// What it was compared with: `base` or `baseline:<system>`.
    pub against: String,
    pub reference: f64,
    pub tolerance: f64,
    pub passed: bool,
}

impl GateOutcome {
    /// One line for the terminal, naming the metric and system, and why a check failed when a
    /// score is not a number.
    pub fn describe(&self) -> String {
        let verdict = if self.passed {
            "pass".to_string()
        } else {
            match (self.value.is_finite(), self.reference.is_finite()) {
                (true, true) => "FAIL".to_string(),
                (false, true) => format!("FAIL: {}'s {} is not a number", self.system, self.metric),
                (true, false) => {
                    format!("FAIL: the reference {} ({}) is not a number", self.metric, self.against)
                }
                (false, false) => format!(
                    "FAIL: {}'s {} and the reference ({}) are not numbers",
                    self.system, self.metric, self.against
                ),
            }
        };
        format!(
            "gate {}: {} {} = {:.4} vs {} {:.4} (tolerance {}) → {verdict}",
            self.metric, self.system, self.metric, self.value, self.against, self.reference, self.tolerance
        )
    }
}

/// Check every gate. `baseline`: a stored evaluation and the name of its system to compare
/// with (`None` = its last system, normally the released adapter).
pub fn check(
    run: &EvalFile,
    gates: &[Gate],
    baseline: Option<(&EvalFile, Option<&str>)>,
) -> Result<Vec<GateOutcome>> {
    let mut out = Vec::new();
    for g in gates {
        let name = g.metric.name();
        let m = run.metric(name).ok_or_else(|| EvalError::InvalidOption {
            option: "--fail-if-worse",
            reason: format!("metric `{name}` was not computed; add it to --metrics"),
        })?;
        let (candidates, reference, against): (Vec<&str>, f64, String) = match baseline {
            None => {
                if run.systems.len() < 2 {
                    return Err(EvalError::InvalidOption {
                        option: "--fail-if-worse",
                        reason: "needs an --adapter to compare with the base, or --baseline FILE".into(),
                    });
                }
                let base = &run.systems[0].name;
                let value = m.score_of(base).map(|s| s.value).unwrap_or(f64::NAN);
                (run.systems[1..].iter().map(|s| s.name.as_str()).collect(), value, "base".into())
            }
            Some((b, which)) => {
                let bm = b.metric(name).ok_or_else(|| EvalError::InvalidOption {
                    option: "--baseline",
                    reason: format!("the baseline has no `{name}` score"),
                })?;
                let sys = match which {
                    Some(w) => w.to_string(),
                    None => b.systems.last().map(|s| s.name.clone()).unwrap_or_default(),
                };
                let value = bm.score_of(&sys).map(|s| s.value).ok_or_else(|| EvalError::InvalidOption {
                    option: "--baseline",
                    reason: format!(
                        "the baseline has no system `{sys}` (it has: {})",
                        b.systems.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })?;
                let c: Vec<&str> = if run.systems.len() > 1 {
                    run.systems[1..].iter().map(|s| s.name.as_str()).collect()
                } else {
                    run.systems.iter().map(|s| s.name.as_str()).collect()
                };
                (c, value, format!("baseline:{sys}"))
            }
        };
        for sys in candidates {
            let value = m.score_of(sys).map(|s| s.value).unwrap_or(f64::NAN);
            let worse = if m.higher_is_better {
                value < reference - g.tolerance
            } else {
                value > reference + g.tolerance
            };
            out.push(GateOutcome {
                metric: name.into(),
                system: sys.into(),
                value,
                against: against.clone(),
                reference,
                tolerance: g.tolerance,
                // Every comparison with a NaN is false, so a NaN reference passed every system:
                // a score that is not a number on either side fails.
                passed: !worse && value.is_finite() && reference.is_finite(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DataInfo, Settings, SystemInfo};
    use crate::score::{MetricResult, Score, SystemScore};

    fn system(name: &str) -> SystemInfo {
        SystemInfo {
            name: name.into(),
            adapter: None,
            run_dir: None,
            rows_per_sec: None,
            generated_tokens: None,
            generation_secs: None,
        }
    }

    /// An evaluation of `systems` with these rougeL scores.
    fn run(scores: &[(&str, f64)]) -> EvalFile {
        EvalFile {
            ferrotune_version: "0".into(),
            created: "2026-01-01T00:00:00Z".into(),
            model: None,
            data: DataInfo { path: "t.jsonl".into(), sha256: String::new(), rows: 1 },
            settings: Settings {
                decoding: "greedy".into(),
                max_tokens: None,
                batch_size: None,
                bootstrap_resamples: 0,
                seed: 0,
            },
            systems: scores.iter().map(|(n, _)| system(n)).collect(),
            metrics: vec![MetricResult {
                name: "rougeL".into(),
                higher_is_better: true,
                scale: Some(1.0),
                scores: scores
                    .iter()
                    .map(|&(n, v)| SystemScore { system: n.into(), score: Score { value: v, ci95: [v, v] } })
                    .collect(),
                vs_base: Vec::new(),
            }],
            json_match: None,
            rows: Vec::new(),
        }
    }

    fn gate() -> Vec<Gate> {
        vec!["rougeL:0.01".parse().expect("gate")]
    }

    #[test]
    fn a_nan_base_score_fails_the_gate_naming_metric_and_system() {
        // Regression: `value < NaN - tol` is false, so a NaN reference passed every adapter.
        let out = check(&run(&[("base", f64::NAN), ("tuned", 0.5)]), &gate(), None).expect("check");
        assert_eq!(out.len(), 1);
        assert!(!out[0].passed);
        let line = out[0].describe();
        assert!(line.contains("rougeL") && line.contains("tuned") && line.contains("not a number"), "{line}");
    }

    #[test]
    fn a_nan_on_either_side_fails_and_finite_scores_still_compare() {
        let g = gate();
        let baseline = run(&[("released", f64::NAN)]);
        let out = check(&run(&[("base", 0.4)]), &g, Some((&baseline, None))).expect("check");
        assert!(!out[0].passed, "NaN baseline");
        assert!(out[0].describe().contains("baseline:released"), "{}", out[0].describe());
        let out = check(&run(&[("base", 0.4), ("tuned", f64::NAN)]), &g, None).expect("check");
        assert!(!out[0].passed, "NaN candidate");
        let out = check(&run(&[("base", 0.4), ("tuned", 0.395)]), &g, None).expect("check");
        assert!(out[0].passed, "within the tolerance");
        let out = check(&run(&[("base", 0.4), ("tuned", 0.38)]), &g, None).expect("check");
        assert!(!out[0].passed && out[0].describe().ends_with("→ FAIL"));
    }
}
