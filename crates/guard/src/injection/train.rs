//! Training the classifier: logistic regression over the hashed features by SGD with L2,
//! one example at a time in a seeded order, classes weighted to count equally, the learning rate
//! decaying linearly to zero. The L2 decay is kept exact and cheap by storing the weights as
//! `scale · v` (Bottou, "Stochastic Gradient Descent Tricks", 2012, §5.1): shrinking every weight
//! is one multiplication of `scale`, and an example touches only its own buckets.
//!
//! The threshold is chosen on the validation split only: the lowest probability at which rules
//! plus classifier stay within `target_fpr` false positives there. The test split is never read.

use sha2::{Digest, Sha256};

use super::eval::{LabelledText, evaluate_with};
use super::features::{FEATURES_VERSION, Features, Hasher};
use super::model_file::{ModelInfo, TrainingRecord};
use super::{DEFAULT_MAX_BYTES, InjectionDetector, sigmoid};
use crate::GuardError;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// log2 of the hash buckets (18: 262,144 weights, a 1 MiB file).
    pub bits: u32,
    pub epochs: usize,
    /// Starting learning rate (features have unit norm), decayed linearly to 0.
    pub lr: f32,
    /// L2 strength per example.
    pub l2: f32,
    pub seed: u64,
    /// False-positive rate on validation at which the threshold is set.
    pub target_fpr: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { bits: 18, epochs: 20, lr: 1.0, l2: 1e-6, seed: 20, target_fpr: 0.01 }
    }
}

/// One epoch's numbers, for progress output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Mean class-weighted log loss over the epoch's updates.
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_auroc: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochLog>,
    pub threshold: f32,
    pub validation: super::EvalReport,
}

/// Learning rate at update `step` of `total`: linear decay from `lr` to 0.
pub fn lr_at(lr: f32, step: usize, total: usize) -> f32 {
    if total == 0 {
        return lr;
    }
    lr * (1.0 - step as f32 / total as f32).max(0.0)
}

/// splitmix64: a seeded order without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn digest(rows: &[LabelledText]) -> String {
    let mut h = Sha256::new();
    for r in rows {
        h.update([u8::from(r.label)]);
        h.update((r.text.len() as u64).to_le_bytes());
        h.update(r.text.as_bytes());
    }
    hex::encode(h.finalize())
}

fn log_loss(p: f32, y: bool) -> f64 {
    let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
    if y { -p.ln() } else { -(1.0 - p).ln() }
}

/// Trains on `train`, picks the threshold on `validation`, and reports each epoch to `progress`.
pub fn train(
    train: &[LabelledText],
    validation: &[LabelledText],
    cfg: &TrainConfig,
    mut progress: impl FnMut(&EpochLog),
) -> Result<(InjectionDetector, TrainReport), GuardError> {
    let setting = |field: &str, reason: String| GuardError::InvalidSetting { field: field.into(), reason };
    if !(1..=24).contains(&cfg.bits) {
        return Err(setting("buckets", format!("2^{} buckets: use 2^1 ..= 2^24", cfg.bits)));
    }
    // Written positively so NaN settings fail too.
    let usable = cfg.epochs > 0
        && cfg.lr > 0.0
        && cfg.lr.is_finite()
        && cfg.l2 >= 0.0
        && cfg.l2.is_finite()
        && cfg.target_fpr > 0.0
        && cfg.target_fpr < 1.0;
    if !usable {
        return Err(setting(
            "train",
            format!("epochs ≥ 1, lr > 0, l2 ≥ 0 and 0 < target FPR < 1 (got {cfg:?})"),
        ));
    }
    for (name, rows) in [("training", train), ("validation", validation)] {
        let pos = rows.iter().filter(|r| r.label).count();
        if pos == 0 || pos == rows.len() {
            return Err(setting(
                name,
                format!("{} rows with {pos} attacks: both labels are needed", rows.len()),
            ));
        }
    }

    let hasher = Hasher::new(cfg.bits);
    let feats: Vec<Features> = train.iter().map(|r| hasher.features(&r.text)).collect();
    let val_feats: Vec<Features> = validation.iter().map(|r| hasher.features(&r.text)).collect();
    let n = train.len() as f32;
    let n_pos = train.iter().filter(|r| r.label).count() as f32;
    // Balanced: each class contributes half of the loss.
    let class_weight = |y: bool| if y { n / (2.0 * n_pos) } else { n / (2.0 * (n - n_pos)) };

    let mut v = vec![0f32; 1 << cfg.bits];
    let mut scale = 1f32;
    let mut bias = 0f32;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = Rng(cfg.seed);
    let total = cfg.epochs * train.len();
    let mut step = 0;
    let mut logs = Vec::new();
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        let mut loss = 0f64;
        for &i in &order {
            let (x, y) = (&feats[i], train[i].label);
            let p = sigmoid(scale * x.dot(&v) + bias);
            let c = class_weight(y);
            loss += f64::from(c) * log_loss(p, y);
            let lr = lr_at(cfg.lr, step, total);
            step += 1;
            let g = c * (p - f32::from(u8::from(y)));
            scale *= 1.0 - lr * cfg.l2;
            let k = lr * g / scale;
            for (&j, &xv) in x.idx.iter().zip(&x.val) {
                v[j as usize] -= k * xv;
            }
            bias -= lr * g;
            if scale < 1e-6 {
                v.iter_mut().for_each(|w| *w *= scale);
                scale = 1.0;
            }
        }
        let w: Vec<f32> = v.iter().map(|x| x * scale).collect();
        let val_p: Vec<f32> = val_feats.iter().map(|f| sigmoid(f.dot(&w) + bias)).collect();
        let val_loss = validation.iter().zip(&val_p).map(|(r, &p)| log_loss(p, r.label)).sum::<f64>()
            / validation.len() as f64;
        let labels: Vec<bool> = validation.iter().map(|r| r.label).collect();
        let log = EpochLog {
            epoch,
            train_loss: loss / train.len() as f64,
            validation_loss: val_loss,
            validation_auroc: super::eval::auroc(&val_p, &labels),
        };
        progress(&log);
        logs.push(log);
    }
    let weights: Vec<f32> = v.iter().map(|x| x * scale).collect();
    if weights.iter().any(|w| !w.is_finite()) || !bias.is_finite() {
        return Err(setting("lr", format!("training diverged at lr {}: try a smaller one", cfg.lr)));
    }

    // Threshold on validation, rules included: scores of a rule hit count as certain.
    let info = ModelInfo {
        features: FEATURES_VERSION,
        bits: cfg.bits,
        threshold: 0.5,
        max_bytes: DEFAULT_MAX_BYTES,
        training: None,
    };
    let det = InjectionDetector::from_parts(info, weights, bias);
    let scored: Vec<(f32, Option<&'static str>)> =
        validation.iter().map(|r| (det.score(&r.text), det.rule(&r.text))).collect();
    // A probability of exactly 1 never happens; keep the threshold usable.
    let threshold = super::eval::operating_point(&scored, validation, cfg.target_fpr)
        .threshold
        .clamp(f32::MIN_POSITIVE, 1.0);
    let validation_report = evaluate_with(validation, &scored, Some(threshold));
    let at = &validation_report.at_threshold;
    let record = TrainingRecord {
        train_rows: train.len(),
        train_sha256: digest(train),
        validation_rows: validation.len(),
        validation_sha256: digest(validation),
        epochs: cfg.epochs,
        lr: cfg.lr,
        l2: cfg.l2,
        seed: cfg.seed,
        target_fpr: cfg.target_fpr,
        validation_recall: at.as_ref().map_or(0.0, |p| p.recall),
        validation_fpr: at.as_ref().map_or(0.0, |p| p.fpr),
        validation_auroc: validation_report.auroc,
    };
    let info = ModelInfo {
        features: FEATURES_VERSION,
        bits: cfg.bits,
        threshold,
        max_bytes: DEFAULT_MAX_BYTES,
        training: Some(record),
    };
    let det = InjectionDetector::from_parts(info, det.weights, det.bias);
    Ok((det, TrainReport { epochs: logs, threshold, validation: validation_report }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_decays_linearly_to_zero() {
        assert_eq!(lr_at(0.5, 0, 100), 0.5);
        assert!((lr_at(0.5, 50, 100) - 0.25).abs() < 1e-7);
        assert_eq!(lr_at(0.5, 100, 100), 0.0);
        assert_eq!(lr_at(0.5, 150, 100), 0.0);
    }

    #[test]
    fn a_single_label_or_bad_setting_is_refused() {
        let rows: Vec<LabelledText> = (0..4).map(|i| LabelledText::new(format!("row {i}"), false)).collect();
        let e = train(&rows, &rows, &TrainConfig::default(), |_| {}).expect_err("one label").to_string();
        assert!(e.contains("training") && e.contains("both labels"), "{e}");
        let mixed: Vec<LabelledText> =
            (0..4).map(|i| LabelledText::new(format!("row {i}"), i % 2 == 0)).collect();
        let cfg = TrainConfig { bits: 30, ..TrainConfig::default() };
        assert!(train(&mixed, &mixed, &cfg, |_| {}).is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_model_and_the_threshold_meets_the_target_on_validation() {
        let mut rows = Vec::new();
        for i in 0..200 {
            // Overlapping vocabularies: not separable, so the threshold matters.
            let attack = i % 3 == 0;
            let w = if attack {
                ["override", "secret", "now", "please"]
            } else {
                ["order", "secret", "please", "now"]
            };
            let noise = ["alpha", "beta", "gamma", "delta", "kettle", "override", "order"][i % 7];
            rows.push(LabelledText::new(
                format!("{} {} {} {noise} {}", w[i % 4], w[(i + 1) % 4], w[(i / 4) % 4], i % 11),
                attack,
            ));
        }
        let val = rows.split_off(120);
        let cfg = TrainConfig { bits: 10, epochs: 3, target_fpr: 0.05, ..TrainConfig::default() };
        let (a, ra) = train(&rows, &val, &cfg, |_| {}).expect("a");
        let (b, _) = train(&rows, &val, &cfg, |_| {}).expect("b");
        assert_eq!(a.to_bytes(), b.to_bytes());
        let at = ra.validation.at_threshold.expect("at threshold");
        assert!(at.fpr <= 0.05 + 1e-12, "{at:?}");
        assert_eq!(ra.epochs.len(), 3);
    }
}
