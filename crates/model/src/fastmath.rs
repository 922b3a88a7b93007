//! Row kernels for training on the CPU whose cost was `expf`: a vectorisable `exp` and the LM
//! head's cross-entropy rows in one pass.
//!
//! libm's `expf` is a call per element that the compiler cannot vectorise (~3 ns each here);
//! a LoRA step of SmolLM2 at 1024 tokens takes ~50M exponentials in the head's softmax alone and
//! as many again in attention. [`exp`] is the classic range reduction `e^x = 2^n · e^r`,
//! `|r| ≤ ln2/2`, with a degree-6 polynomial for `e^r` (relative error < 3e-7 (2.5 ulp), checked against
//! `f32::exp` below), written branch-free so that loops over slices compile to AVX2.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `e^x` for f32, relative error below 3e-7 on [-87, 88]; 0 below, +inf above.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 split in two so that n·ln2 is exact in the first part.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // Ties-to-even: one vector instruction (plain `round` is a libm call that stops the loop
    // from vectorising).
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients of e^r to r^6 (|r| ≤ 0.347: the r^7 term is < 1e-7 relative).
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Lanes of the reductions below: separate partial results per lane let the compiler vectorise
/// a float reduction (it keeps a single sum's order otherwise, one element at a time).
const LANES: usize = 16;

/// The largest element (−inf for an empty slice).
pub fn max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    tail.iter().fold(m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b))
}

/// `Σ e^(x − shift)`.
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut s = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (s, &v) in s.iter_mut().zip(c) {
            *s += exp(v - shift);
        }
    }
    s.iter().sum::<f32>() + tail.iter().map(|&v| exp(v - shift)).sum::<f32>()
}

/// `Σ x`.
pub fn sum(x: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (s, &v) in s.iter_mut().zip(c) {
            *s += v;
        }
    }
    s.iter().sum::<f32>() + tail
}

/// `Σ a·b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in s.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    s.iter().sum::<f32>() + tail
}

/// `(logsumexp(row) − row[target] per row, ∂)` over f32 `logits: [n, vocab]`, where `∂` (when
/// `grad`) is `softmax(row) − onehot(target)` per row, `[n, vocab]` f32 — the cross-entropy of
/// the rows and its gradient in two passes over each row (max and sum of exponentials online,
/// then the probabilities), instead of the composed form's eight. [`total`] sums the rows.
pub fn cross_entropy_rows(
    logits: &Tensor,
    targets: &[u32],
    grad: bool,
) -> Result<(Vec<f32>, Option<Tensor>)> {
    let op = CeRows { targets: targets.to_vec(), grad, loss: std::sync::Mutex::new(Vec::new()) };
    let out = logits.contiguous()?.apply_op1_no_bwd(&op)?;
    let loss = std::mem::take(
        &mut *op.loss.lock().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned".into()))?,
    );
    Ok((loss, grad.then_some(out)))
}

/// The sum of per-row losses, accumulated in f64.
pub fn total(rows: &[f32]) -> f64 {
    rows.iter().map(|&l| f64::from(l)).sum()
}

/// `logsumexp(row)`: the max, then the sum of exponentials shifted by it.
fn logsumexp(row: &[f32]) -> f32 {
    let m = max(row);
    m + sum_exp(row, m).ln()
}

/// [`cross_entropy_rows`] over a buffer of our own, `logits: [n, vocab]` row-major: returns each
/// row's loss and, when `grad`, overwrites each row with `softmax(row) − onehot(target)` (no
/// second buffer).
pub fn cross_entropy_rows_in_place(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    grad: bool,
) -> Result<Vec<f32>> {
    if vocab == 0 || logits.len() != targets.len() * vocab {
        candle_core::bail!(
            "cross-entropy: {} logits for {} targets over a vocabulary of {vocab}",
            logits.len(),
            targets.len()
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {vocab}");
    }
    let mut losses = Vec::with_capacity(targets.len());
    for (row, &tg) in logits.chunks_exact_mut(vocab).zip(targets) {
        let lse = logsumexp(row);
        losses.push(lse - row[tg as usize]);
        if grad {
            for a in row.iter_mut() {
                *a = exp(*a - lse);
            }
            row[tg as usize] -= 1.0;
        }
    }
    Ok(losses)
}

struct CeRows {
    targets: Vec<u32>,
    grad: bool,
    loss: std::sync::Mutex<Vec<f32>>,
}

impl CustomOp1 for CeRows {
    fn name(&self) -> &'static str {
        "cross-entropy-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("cross-entropy: logits not contiguous".into()))?;
        let x = &s.as_slice::<f32>()?[start..end];
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", self.targets.len());
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {v}");
        }
        let mut out = vec![0f32; if self.grad { n * v } else { 0 }];
        let mut losses = Vec::with_capacity(n);
        for (i, row) in x.chunks_exact(v).enumerate() {
            let lse = logsumexp(row);
            let tg = self.targets[i] as usize;
            losses.push(lse - row[tg]);
            if self.grad {
                let d = &mut out[i * v..(i + 1) * v];
                for (o, &a) in d.iter_mut().zip(row) {
                    *o = exp(a - lse);
                }
                d[tg] -= 1.0;
            }
        }
        *self.loss.lock().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned".into()))? = losses;
        let shape = if self.grad { l.shape().clone() } else { Shape::from(0) };
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    #[test]
    fn exp_is_within_3e7_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-200.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn lane_reductions_match_plain_ones() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0).collect();
            assert!(
                (sum(&a) - a.iter().sum::<f32>()).abs()
                    <= 1e-4 * a.iter().map(|v| v.abs()).sum::<f32>().max(1.0)
            );
            assert_eq!(max(&a), a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() <= 1e-4 * plain.abs().max(1.0));
            let plain: f32 = a.iter().map(|&v| (v - 3.0).exp()).sum();
            assert!((sum_exp(&a, 3.0) - plain).abs() <= 1e-5 * plain.max(1.0));
        }
    }

    #[test]
    fn cross_entropy_rows_match_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        // Fixed pseudo-random logits around 5 ± 9 (a test must not change from run to run).
        let values: Vec<f32> = (0..7 * 301u32)
            .map(|i| 5.0 + 9.0 * (((i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0) - 0.5))
            .collect();
        let logits = Tensor::from_vec(values, (7, 301), &dev)?;
        let targets = [0u32, 300, 17, 17, 150, 1, 299];
        let (loss, d) = cross_entropy_rows(&logits, &targets, true)?;
        let tg = Tensor::new(&targets, &dev)?;
        let lse = logits.log_sum_exp(D::Minus1)?;
        let picked = logits.gather(&tg.unsqueeze(1)?, 1)?.squeeze(1)?;
        let per_row: Vec<f32> = (&lse - picked)?.to_vec1()?;
        assert_eq!(loss.len(), 7);
        for (ours, r) in loss.iter().zip(&per_row) {
            assert!((ours - r).abs() < 1e-4 * r.abs().max(1.0), "{ours} vs {r}");
        }
        let reference: f64 = per_row.iter().map(|&l| f64::from(l)).sum();
        assert!(
            (total(&loss) - reference).abs() < 1e-4 * reference.abs().max(1.0),
            "{} vs {reference}",
            total(&loss)
        );
        let p = logits.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
        let onehot = Tensor::zeros((7, 301), candle_core::DType::F32, &dev)?.scatter_add(
            &tg.unsqueeze(1)?,
            &Tensor::ones((7, 1), candle_core::DType::F32, &dev)?,
            1,
        )?;
        let d = d.expect("gradient asked for");
        let diff = (&d - (p - onehot)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Both sides round `logit - lse` in f32 (|lse| ≈ 12 here), so probabilities agree to a few ulps of
        // that difference (~1e-6), not to 1e-6 of themselves: 1e-5 still catches any wrong term.
        assert!(diff < 1e-5, "gradient differs by {diff}");
        let mut buffer: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let in_place = cross_entropy_rows_in_place(&mut buffer, 301, &targets, true)?;
        assert_eq!(in_place, loss);
        assert_eq!(buffer, d.flatten_all()?.to_vec1::<f32>()?);
        assert!(cross_entropy_rows_in_place(&mut buffer, 301, &targets[..6], true).is_err());
        let (no_grad_loss, none) = cross_entropy_rows(&logits, &targets, false)?;
        assert!(none.is_none() && no_grad_loss == loss);
        assert!(cross_entropy_rows(&logits, &[0, 1], false).is_err());
        assert!(cross_entropy_rows(&logits, &[0, 0, 0, 0, 0, 0, 301], false).is_err());
        Ok(())
    }
}
