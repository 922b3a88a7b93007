//! Row kernels for training on the CPU whose cost was `expf`: a vectorisable `exp` and the LM
//! head's cross-entropy rows in one pass.
//!
//! libm's `expf` is a call per element that the compiler cannot vectorise (~3 ns each here);
//! a LoRA step of SmolLM2 at 1024 tokens takes ~50M exponentials in the head's softmax alone and
//! as many again in attention. [`exp`] is the classic range reduction `e^x = 2^n · e^r`,
//! `|r| ≤ ln2/2`, with a degree-6 polynomial for `e^r` (relative error < 3e-7 (2.5 ulp), checked against
//! `f32::exp` below), written branch-free so that loops over slices compile to AVX2.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
