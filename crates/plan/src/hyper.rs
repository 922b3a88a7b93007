//! Recommended training settings from the data's token statistics and the model's size, each
//! with the rule that chose it and the number that triggered the rule. The rules come from the
//! evidence grid in docs/plan.md (tasks × settings → held-out score).

use serde::Serialize;

use crate::Method;

/// What the data stage measured (`ferrotune data validate` with the model's tokenizer).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataStats {
    /// Rows that parsed (invalid rows are not trained on).
    pub rows: u64,
    /// Tokens per example after the chat template: mean and percentiles.
    pub tokens_mean: f64,
    pub tokens_p5: u64,
    pub tokens_median: u64,
    pub tokens_p95: u64,
    pub tokens_max: u64,
    /// Tokens with loss (the answers) per example, mean.
    pub target_mean: f64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub conflicting_answers: u64,
    pub rows_with_pii: u64,
    pub eval_rows: u64,
    pub eval_rows_leaked: u64,
    pub errors: u64,
}

impl DataStats {
    /// The token length at quantile `q` in [0, 1], interpolated linearly between the recorded
    /// percentiles (0 → p5, 0.5 → median, 0.95 → p95, 1 → max).
    pub fn tokens_at(&self, q: f64) -> f64 {
        let pts = [
            (0.0, self.tokens_p5 as f64),
            (0.05, self.tokens_p5 as f64),
            (0.5, self.tokens_median as f64),
            (0.95, self.tokens_p95 as f64),
            (1.0, self.tokens_max as f64),
        ];
        let q = q.clamp(0.0, 1.0);
        for w in pts.windows(2) {
            let ((q0, v0), (q1, v1)) = (w[0], w[1]);
            if q <= q1 {
                return if q1 > q0 { v0 + (v1 - v0) * (q - q0) / (q1 - q0) } else { v1 };
            }
        }
        self.tokens_max as f64
    }

    /// Padded tokens per row when rows are batched `batch` at a time in random order and each
    /// batch is padded to its longest row: the expected maximum of `batch` draws is the length at
    /// quantile `batch / (batch + 1)`.
    pub fn padded_length(&self, batch: usize, max_seq_len: usize) -> f64 {
        if batch <= 1 {
            return self.tokens_mean.min(max_seq_len as f64);
        }
        self.tokens_at(batch as f64 / (batch as f64 + 1.0)).min(max_seq_len as f64)
    }
}

/// One recommended value with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Choice<T> {
    pub value: T,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hyper {
    pub lr: Choice<f64>,
    pub epochs: Choice<f64>,
    pub batch_size: Choice<usize>,
    pub max_seq_len: Choice<usize>,
    pub lora_r: Choice<usize>,
    pub packing: Choice<bool>,
    /// Optimizer steps these settings give.
    pub steps: u64,
}

/// Parameters at or below which the small-model learning rate applies (SmolLM2-135M/360M,
/// Qwen2.5-0.5B), and above which the large-model one does (7B-class).
pub const SMALL_MODEL: u64 = 600_000_000;
pub const LARGE_MODEL: u64 = 5_000_000_000;
/// LoRA learning rates by model size (docs/plan.md: 1e-3 was best or within the interval of the
/// best on every task at 135M; 2e-4 is the QLoRA paper's and PEFT/Unsloth's 7B default).
pub const LORA_LR_SMALL: f64 = 1e-3;
pub const LORA_LR_MEDIUM: f64 = 5e-4;
pub const LORA_LR_LARGE: f64 = 2e-4;
/// Full fine-tuning learning rate (a tenth to a hundredth of LoRA's, as in the literature).
pub const FULL_LR_SMALL: f64 = 5e-5;
pub const FULL_LR_LARGE: f64 = 1e-5;
/// Optimizer steps a run should reach at least (small data gets more epochs to reach it): in the
/// evidence grid (docs/plan.md) 90–100 steps of 4 rows reached the best held-out scores on every
/// task while 30 steps fell short (classify: 0.82 at 30 steps vs 1.00 at 90 with 120 rows; 0.78
/// at 30 vs 0.98 at 100 with 40 rows).
pub const MIN_STEPS: u64 = 90;
pub const MAX_EPOCHS: f64 = 10.0;
/// Rows a GPU step holds at most (the learning rates were measured at 4 to 16 rows a step).
pub const GPU_MAX_BATCH: usize = 16;
/// Rows at or above which one epoch is enough.
pub const ONE_EPOCH_ROWS: u64 = 20_000;

/// The learning rate for `method` on a model of `params` parameters, with the reason.
pub fn learning_rate(params: u64, method: &Method) -> Choice<f64> {
    let m = params as f64 / 1e6;
    match method {
        Method::Full => {
            let (lr, rule) =
                if params <= SMALL_MODEL { (FULL_LR_SMALL, "≤ 600M") } else { (FULL_LR_LARGE, "> 600M") };
            Choice {
                value: lr,
                reason: format!("full fine-tuning of a {m:.0}M-parameter model ({rule}): {lr:e}"),
            }
        }
        Method::Lora { .. } | Method::QLora { .. } => {
            let (lr, rule) = if params <= SMALL_MODEL {
                (
                    LORA_LR_SMALL,
                    "≤ 600M parameters: 1e-3 was best or tied on every task measured at 135M (docs/plan.md)",
                )
            } else if params < LARGE_MODEL {
                (
                    LORA_LR_MEDIUM,
                    "600M–5B parameters: between the measured small-model and the published 7B rate",
                )
            } else {
                (LORA_LR_LARGE, "≥ 5B parameters: the QLoRA paper's and PEFT's usual 2e-4")
            };
            Choice { value: lr, reason: format!("LoRA on {m:.0}M parameters, {rule}") }
        }
    }
}

/// Epochs for `rows` rows at `batch` rows a step: at least [`MIN_STEPS`] optimizer steps (at
/// most [`MAX_EPOCHS`]), 3 epochs for mid-sized data, 2 from 5,000 rows, 1 from 20,000.
pub fn epochs(rows: u64, batch: usize) -> Choice<f64> {
    let steps_per_epoch = rows.div_ceil(batch.max(1) as u64).max(1);
    if rows >= ONE_EPOCH_ROWS {
        return Choice {
            value: 1.0,
            reason: format!("{rows} rows ≥ {ONE_EPOCH_ROWS}: one pass is enough and repeats risk memorising"),
        };
    }
    let base = if rows >= 5000 { 2.0 } else { 3.0 };
    let needed = (MIN_STEPS as f64 / steps_per_epoch as f64).ceil();
    if needed > base {
        let e = needed.min(MAX_EPOCHS);
        return Choice {
            value: e,
            reason: format!(
                "{rows} rows are {steps_per_epoch} steps an epoch; {e} epochs reach {} steps (≥ {MIN_STEPS} wanted, at most {MAX_EPOCHS} epochs)",
                (e as u64) * steps_per_epoch
            ),
        };
    }
    Choice {
        value: base,
        reason: format!("{rows} rows: {base} epochs ({} steps)", base as u64 * steps_per_epoch),
    }
}

/// All settings for `method` on a `params`-parameter model with context `model_max`, on a CPU
/// (`gpu = false`) or a GPU.
pub fn recommend(params: u64, model_max: usize, method: &Method, data: &DataStats, gpu: bool) -> Hyper {
    // Sequence length: the longest row if the tail is short, else the 95th percentile (longer
    // rows are truncated), rounded up to 64 and within the model's context.
    let round64 = |n: f64| ((n / 64.0).ceil() as usize * 64).max(64);
    let max_seq_len = if data.tokens_max <= 2 * data.tokens_p95.max(1) {
        let v = round64(data.tokens_max as f64).min(model_max);
        Choice {
            value: v,
            reason: format!(
                "the longest row has {} tokens (≤ 2 × p95 {}): nothing truncated",
                data.tokens_max, data.tokens_p95
            ),
        }
    } else {
        let v = round64(data.tokens_p95 as f64 * 1.1).min(model_max);
        Choice {
            value: v,
            reason: format!(
                "p95 {} tokens but the longest is {}: rows over {v} (< 5%) are truncated",
                data.tokens_p95, data.tokens_max
            ),
        }
    };
    // Batch: 4 rows on a CPU (the measured sweet spot: larger batches pad more and are not faster
    // per token); on a GPU about 8k tokens a step.
    let batch_size = if gpu {
        let b = (8192.0 / data.tokens_p95.max(1) as f64).floor().clamp(1.0, GPU_MAX_BATCH as f64) as usize;
        Choice {
            value: b,
            reason: format!(
                "≈ 8192 tokens a step at p95 length {}, at most {GPU_MAX_BATCH} rows",
                data.tokens_p95
            ),
        }
    } else {
        Choice { value: 4, reason: "4 rows a step on a CPU".into() }
    };
    let waste = 1.0 - data.tokens_mean / data.padded_length(batch_size.value, max_seq_len.value).max(1.0);
    let packing = if waste > 0.4 {
        Choice {
            value: true,
            reason: format!(
                "padding would be {:.0}% of the tokens (mean {:.0} vs padded {:.0}): pack rows",
                waste * 100.0,
                data.tokens_mean,
                data.padded_length(batch_size.value, max_seq_len.value)
            ),
        }
    } else {
        Choice {
            value: false,
            reason: format!("padding is {:.0}% of the tokens: packing not needed", waste.max(0.0) * 100.0),
        }
    };
    let rows_per_step = if packing.value {
        // Packed sequences hold about max_seq_len / mean rows each.
        (batch_size.value as f64 * max_seq_len.value as f64 / data.tokens_mean.max(1.0)).max(1.0) as usize
    } else {
        batch_size.value
    };
    let epochs = epochs(data.rows, rows_per_step);
    let lr = learning_rate(params, method);
    let lora_r = Choice { value: 16, reason: "r=16 on all seven projections: PEFT's and Unsloth's common default; higher ranks did not pay on the tasks measured".into() };
    let steps = (data.rows.div_ceil(rows_per_step.max(1) as u64) as f64 * epochs.value).ceil() as u64;
    Hyper { lr, epochs, batch_size, max_seq_len, lora_r, packing, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rows: u64, p5: u64, med: u64, p95: u64, max: u64, mean: f64) -> DataStats {
        DataStats {
            rows,
            tokens_p5: p5,
            tokens_median: med,
            tokens_p95: p95,
            tokens_max: max,
            tokens_mean: mean,
            ..Default::default()
        }
    }

    #[test]
    fn small_data_gets_more_epochs_and_large_data_one() {
        assert_eq!(epochs(60, 4).value, 6.0); // 15 steps an epoch: 6 epochs reach 90
        assert_eq!(epochs(40, 4).value, 9.0);
        assert_eq!(epochs(12, 4).value, 10.0); // 3 steps an epoch: capped at 10
        assert_eq!(epochs(120, 4).value, 3.0);
        assert_eq!(epochs(300, 4).value, 3.0);
        assert_eq!(epochs(100_000, 4).value, 1.0);
        assert_eq!(epochs(8000, 4).value, 2.0);
    }

    #[test]
    fn the_learning_rate_falls_with_model_size_and_full_is_lower_than_lora() {
        let lora = Method::Lora { r: 16, targets: crate::default_targets() };
        let a = learning_rate(135_000_000, &lora).value;
        let b = learning_rate(1_200_000_000, &lora).value;
        let c = learning_rate(8_000_000_000, &lora).value;
        assert!(a > b && b > c);
        assert!(learning_rate(135_000_000, &Method::Full).value < a / 10.0);
    }

    #[test]
    fn a_long_tail_truncates_at_p95_and_asks_for_packing() {
        let lora = Method::Lora { r: 16, targets: crate::default_targets() };
        let h = recommend(135_000_000, 8192, &lora, &stats(1000, 40, 80, 300, 4000, 100.0), false);
        assert_eq!(h.max_seq_len.value, 384); // 300 × 1.1 = 330 → 384
        assert!(h.packing.value, "{}", h.packing.reason);
        let even = recommend(135_000_000, 8192, &lora, &stats(1000, 90, 100, 110, 120, 100.0), false);
        assert_eq!(even.max_seq_len.value, 128);
        assert!(!even.packing.value, "{}", even.packing.reason);
    }

    #[test]
    fn padded_length_interpolates_between_percentiles() {
        let s = stats(100, 10, 50, 90, 100, 50.0);
        assert_eq!(s.tokens_at(0.5), 50.0);
        assert!((s.tokens_at(0.8) - (50.0 + 40.0 * 0.3 / 0.45)).abs() < 1e-9);
        assert_eq!(s.padded_length(4, 64), 64.0);
    }
}
