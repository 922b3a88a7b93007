//! The method recommendation: the seed's decision matrix (LoRA for most projects, full
//! fine-tuning for maximum quality with data and hardware to match, a 4-bit base when memory is
//! short) as rules, each printed with the number that fired it, and the data warnings.

use serde::Serialize;

use crate::hyper::DataStats;

/// Rows below which a fine-tune is unlikely to generalise (the data stage's own threshold).
pub const FEW_ROWS: u64 = 100;
/// Rows from which full fine-tuning is worth its cost over LoRA.
pub const FULL_FT_ROWS: u64 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// `lora`, `full` or `qlora`.
    pub method: String,
    pub hardware: String,
    /// Each rule that fired, with its number.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
}

/// What the plan knows about one (method, hardware) option when choosing.
#[derive(Debug, Clone)]
pub struct Option_ {
    pub method: String,
    pub hardware: String,
    pub runnable: bool,
    pub fits: bool,
    pub peak_gib: f64,
    pub memory_gib: f64,
    pub hours: Option<f64>,
    pub cost: Option<f64>,
}

/// Chooses among `options` (every method × hardware the user asked about).
pub fn choose(data: &DataStats, options: &[Option_]) -> Recommendation {
    let mut reasons = Vec::new();
    let mut warnings = data_warnings(data);
    let fits = |m: &str| {
        options
            .iter()
            .filter(|o| o.method == m && o.fits && o.runnable)
            .min_by(|a, b| a.cost.unwrap_or(f64::INFINITY).total_cmp(&b.cost.unwrap_or(f64::INFINITY)))
    };
    let lora = fits("lora");
    let full = fits("full");
    let chosen = if data.rows >= FULL_FT_ROWS && full.is_some() {
        let f = full.unwrap_or_else(|| unreachable!());
        reasons.push(format!(
            "{} rows ≥ {FULL_FT_ROWS}: enough data for full fine-tuning to beat LoRA, and it fits {} ({:.1} of {:.0} GiB)",
            data.rows, f.hardware, f.peak_gib, f.memory_gib
        ));
        if let (Some(l), Some(fc), Some(lc)) = (lora, f.cost, lora.and_then(|l| l.cost)) {
            reasons.push(format!("LoRA would cost {lc:.2} instead of {fc:.2} on {} — choose it if the budget matters more than the last points of quality", l.hardware));
        }
        Some(f)
    } else if let Some(l) = lora {
        if data.rows < FULL_FT_ROWS {
            reasons.push(format!("{} rows < {FULL_FT_ROWS}: LoRA matches full fine-tuning on data this size and trains a fraction of the weights", data.rows));
        } else {
            reasons.push("full fine-tuning does not fit the hardware asked about; LoRA does".into());
        }
        reasons.push(format!("fits {} with {:.1} of {:.0} GiB", l.hardware, l.peak_gib, l.memory_gib));
        if let (Some(h), Some(c)) = (l.hours, l.cost) {
            reasons.push(format!(
                "cheapest fitting option: ≈ {} of training, ≈ {c:.2} at the price table's rate",
                crate::report::duration(h)
            ));
        }
        Some(l)
    } else {
        None
    };
    let (method, hardware) = match chosen {
        Some(o) => (o.method.clone(), o.hardware.clone()),
        None => {
            let q = options
                .iter()
                .filter(|o| o.method == "qlora" && o.fits)
                .min_by(|a, b| a.peak_gib.total_cmp(&b.peak_gib));
            match q {
                Some(q) => {
                    reasons.push(format!("neither LoRA nor full fine-tuning fits; a 4-bit base (QLoRA) would need {:.1} of {:.0} GiB on {}", q.peak_gib, q.memory_gib, q.hardware));
                    warnings.push("ferrotune cannot train QLoRA yet: use larger hardware, a shorter --max-seq-len, or a smaller batch with --grad-accum".into());
                    (q.method.clone(), q.hardware.clone())
                }
                None => {
                    reasons.push("nothing asked about fits: try larger hardware, a shorter --max-seq-len or a smaller batch".into());
                    ("none".into(), "-".into())
                }
            }
        }
    };
    for o in options.iter().filter(|o| o.method == "full" && !o.fits) {
        warnings.push(format!(
            "full fine-tuning does not fit {}: {:.1} GiB needed, {:.0} GiB there — LoRA or QLoRA",
            o.hardware, o.peak_gib, o.memory_gib
        ));
    }
    Recommendation { method, hardware, reasons, warnings }
}

/// Warnings about the data itself.
pub fn data_warnings(d: &DataStats) -> Vec<String> {
    let mut w = Vec::new();
    if d.rows < FEW_ROWS {
        w.push(format!(
            "only {} rows (< {FEW_ROWS}): collect more examples — a fine-tune on so few rarely generalises",
            d.rows
        ));
    }
    if d.errors > 0 {
        w.push(format!(
            "{} invalid rows will be skipped: run `ferrotune data validate` for the list",
            d.errors
        ));
    }
    if d.exact_duplicates + d.near_duplicates > 0 && d.rows > 0 {
        let share = (d.exact_duplicates + d.near_duplicates) as f64 / d.rows as f64;
        if share >= 0.05 {
            w.push(format!("{:.0}% of rows are duplicates or near duplicates ({} exact, {} near): `ferrotune data prepare` removes them", share * 100.0, d.exact_duplicates, d.near_duplicates));
        }
    }
    if d.conflicting_answers > 0 {
        w.push(format!("{} prompts have conflicting answers", d.conflicting_answers));
    }
    if d.rows_with_pii > 0 {
        w.push(format!("{} rows contain personal data (e-mail, phone, card, …): redact with `ferrotune data prepare --redact-pii`", d.rows_with_pii));
    }
    if d.eval_rows_leaked > 0 {
        w.push(format!(
            "{} of {} eval rows also appear in training: the evaluation would flatter the model",
            d.eval_rows_leaked, d.eval_rows
        ));
    }
    if d.tokens_max > 4 * d.tokens_p95.max(1) {
        w.push(format!(
            "a long tail of lengths (p95 {}, max {} tokens): pack rows or cap --max-seq-len",
            d.tokens_p95, d.tokens_max
        ));
    }
    w
}
