//! Loss spikes of single examples (OWASP LLM04, data poisoning): a training example whose loss
//! stands far above the losses of the examples trained on just before it is one the model cannot
//! fit the way it fits the rest — a mislabelled answer, random tokens, text in another language,
//! or a poisoned row. Each is logged with the data file line it came from.
//!
//! The rule. `ℓ` is an example's mean loss per target token in the step it is trained in
//! (computed in that step's forward pass, `batch::loss_sums`); the reference is the window of
//! the last [`WINDOW`] examples' losses before it, `m` their median and `MAD` their median
//! absolute deviation. After [`WARMUP`] examples, `ℓ` is a spike when both
//!
//! - the robust z-score `z = (ℓ − m) / (1.4826 · MAD)` exceeds [`Z`] (1.4826·MAD estimates the
//!   standard deviation of normal data; z > 6 would be one in ~10⁹ for normal losses, and the
//!   median/MAD ignore the spikes themselves; the scale is floored at 1% of `m`), and
//! - `ℓ > RATIO · m` (with a nearly constant window — a model that has memorised most rows — the
//!   MAD is tiny and z large for harmless differences; a spike must also be large in itself).
//!
//! Every example joins the window after it is judged, spikes included (the median and MAD
//! are robust to a few). The window, the count and the spikes so far are part of the trainer
//! state, so a resumed run flags what the uninterrupted one does.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Examples whose losses make the reference.
pub const WINDOW: usize = 256;
/// Examples seen before any is judged.
pub const WARMUP: u64 = 64;
/// Robust z-score above which a loss is a spike.
pub const Z: f64 = 6.0;
/// A spike is also above this multiple of the median.
pub const RATIO: f64 = 1.5;
/// Spikes listed in the run summary (the most extreme, by z).
pub const TOP: usize = 20;

/// One example's loss spike, as `metrics.jsonl` logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    /// The data file line (Parquet: row) of the example; `None` if the batch had no sources.
    pub row: Option<u64>,
    pub step: usize,
    pub epoch: f64,
    /// Mean loss per target token of the example.
    pub loss: f64,
    /// The window's median and robust z-score the loss was judged by.
    pub median: f64,
    pub z: f64,
}

/// The detector's state (saved in `trainer_state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpikeDetector {
    window: VecDeque<f32>,
    /// Examples judged or counted towards the warm-up so far.
    pub seen: u64,
    /// Spikes flagged so far.
    pub flagged: u64,
    /// The [`TOP`] spikes with the highest z so far (any order).
    pub top: Vec<Spike>,
}

impl SpikeDetector {
    /// Judges one example's loss against the window before it; returns the spike, if it is one,
    /// after adding the loss to the window.
    pub fn observe(&mut self, row: Option<u64>, loss: f64, step: usize, epoch: f64) -> Option<Spike> {
        let spike = if self.seen >= WARMUP && loss.is_finite() { self.judge(loss) } else { None };
        let spike = spike.map(|(median, z)| Spike { row, step, epoch, loss, median, z });
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        if loss.is_finite() {
            self.window.push_back(loss as f32);
        }
        self.seen += 1;
        if let Some(s) = &spike {
            self.flagged += 1;
            self.keep(s.clone());
        }
        spike
    }

    /// `(median, z)` when `loss` is a spike against the window.
    fn judge(&self, loss: f64) -> Option<(f64, f64)> {
        let mut w: Vec<f64> = self.window.iter().map(|&x| f64::from(x)).collect();
        if w.is_empty() {
            return None;
        }
        let m = median(&mut w);
        let mut dev: Vec<f64> = w.iter().map(|x| (x - m).abs()).collect();
        let mad = median(&mut dev);
        // A window of (nearly) identical losses has no spread: the scale is floored at 1% of
        // the median, which keeps z finite (it is written to JSON) and leaves the ratio to speak.
        let z = (loss - m) / (1.4826 * mad).max(0.01 * m.abs()).max(1e-9);
        (z > Z && loss > RATIO * m).then_some((m, z))
    }

    fn keep(&mut self, s: Spike) {
        if self.top.len() < TOP {
            self.top.push(s);
            return;
        }
        if let Some((i, low)) = self.top.iter().enumerate().min_by(|a, b| a.1.z.total_cmp(&b.1.z))
            && s.z > low.z
        {
            self.top[i] = s;
        }
    }

    /// The kept spikes, highest z first.
    pub fn ranked(&self) -> Vec<Spike> {
        let mut v = self.top.clone();
        v.sort_by(|a, b| b.z.total_cmp(&a.z).then(a.step.cmp(&b.step)));
        v
    }
}

/// The median of `v` (reordered), the mean of the middle two for an even count.
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Losses around 2.0 with a little spread, as a model mid-training gives.
    fn normal_ish(i: u64) -> f64 {
        // A fixed pseudo-random spread in [−0.3, 0.3].
        let x = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f64 / (1u64 << 24) as f64;
        2.0 + 0.6 * (x - 0.5)
    }

    #[test]
    fn a_loss_far_above_the_window_is_a_spike_and_ordinary_ones_are_not() {
        let mut d = SpikeDetector::default();
        let mut flagged = Vec::new();
        for i in 0..1000u64 {
            let loss = if i == 500 { 9.0 } else { normal_ish(i) };
            if let Some(s) = d.observe(Some(i + 1), loss, i as usize / 4, 0.0) {
                flagged.push(s);
            }
        }
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        let s = &flagged[0];
        assert_eq!(s.row, Some(501));
        assert!((s.median - 2.0).abs() < 0.1 && s.z > 20.0, "{s:?}");
        assert_eq!(d.flagged, 1);
        assert_eq!(d.ranked(), flagged);
    }

    #[test]
    fn nothing_is_judged_during_the_warm_up() {
        let mut d = SpikeDetector::default();
        for i in 0..WARMUP {
            let loss = if i == WARMUP - 1 { 50.0 } else { normal_ish(i) };
            assert!(d.observe(Some(i), loss, 0, 0.0).is_none());
        }
        assert!(d.observe(Some(99), 50.0, 1, 0.0).is_some(), "judged once warm");
    }

    #[test]
    fn a_tight_window_needs_the_ratio_too() {
        // Memorised rows: losses 0.010–0.012; 0.014 has a huge z but is no spike, 0.5 is.
        let mut d = SpikeDetector::default();
        for i in 0..200u64 {
            d.observe(Some(i), 0.010 + 0.002 * (i % 3) as f64 / 2.0, 0, 0.0);
        }
        assert!(d.observe(Some(1000), 0.014, 1, 0.0).is_none());
        assert!(d.observe(Some(1001), 0.5, 1, 0.0).is_some());
    }

    #[test]
    fn the_summary_keeps_the_highest_z() {
        let mut d = SpikeDetector::default();
        for i in 0..(WARMUP + 2 * TOP as u64) {
            d.observe(None, 2.0 + 0.01 * (i % 7) as f64, 0, 0.0);
        }
        for k in 0..(2 * TOP) {
            assert!(d.observe(Some(k as u64), 10.0 + k as f64, k, 0.0).is_some());
            // Keep the window ordinary between spikes.
            for i in 0..8 {
                d.observe(None, 2.0 + 0.01 * (i % 7) as f64, k, 0.0);
            }
        }
        assert_eq!(d.flagged, 2 * TOP as u64);
        let r = d.ranked();
        assert_eq!(r.len(), TOP);
        assert_eq!(r[0].row, Some(2 * TOP as u64 - 1));
        assert!(r.windows(2).all(|w| w[0].z >= w[1].z));
        assert!(r.iter().all(|s| s.row >= Some(TOP as u64)), "the lower half was replaced");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
