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
            Some(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| EvalError::InvalidOption {
                    option: "--fail-if-worse",
                    reason: format!("tolerance `{t}` in `{s}` is not a non-negative number"),
                })?,
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
                        reason: "needs an --adapter to compare with the base, or --baseline FILE"
                            .into(),
                    });
                }
                let base = &run.systems[0].name;
                let value = m.score_of(base).map(|s| s.value).unwrap_or(f64::NAN);
                (
                    run.systems[1..].iter().map(|s| s.name.as_str()).collect(),
                    value,
                    "base".into(),
                )
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
                let value =
                    bm.score_of(&sys)
                        .map(|s| s.value)
                        .ok_or_else(|| EvalError::InvalidOption {
                            option: "--baseline",
                            reason: format!(
                                "the baseline has no system `{sys}` (it has: {})",
                                b.systems
                                    .iter()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
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
                passed: !worse && value.is_finite(),
            });
        }
    }
    Ok(out)
}
