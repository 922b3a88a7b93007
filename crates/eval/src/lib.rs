//! Evaluation: does the tuned model beat the base on the company's own task?
//!
//! - [`rows`]: test rows (chat / alpaca / completion records, or any with `expected`).
//! - [`runner`]: base and adapters over the same rows — batched greedy generation and the
//!   teacher-forced loss of the references.
//! - [`metrics`]: exact_match, json_match, accuracy, f1, rougeL, bleu, chrf (BLEU / chrF /
//!   ROUGE-L equal sacrebleu and rouge-score on recorded fixtures), as per-row sufficient
//!   statistics plus an aggregate, so corpus metrics can be bootstrapped.
//! - [`bootstrap`]: 95% percentile confidence intervals by resampling rows.
//! - [`score`]: every metric per system with intervals and paired differences from the base.
//! - [`report`]: `eval.json`, `report.md`, `metrics.svg`.
//! - [`gate`]: `--fail-if-worse` against the base or a stored baseline.
//! - [`evaluate`]: all of it in one call, [`run`]`(&EvalSpec)` → [`Report`] (`ferrotune eval`).

pub mod bootstrap;
pub mod error;
pub mod evaluate;
pub mod gate;
pub mod metrics;
pub mod report;
pub mod rows;
pub mod runner;
pub mod score;

pub use error::{EvalError, Result};
pub use evaluate::{EvalSpec, Report, ScoreSpec, run, score_predictions};
