//! 8-bit codes of the index's rows, for the first pass of vector search (see [`crate::vectors`]).
//!
//! Each row `r` is stored as `scale · c` with `c ∈ [-127, 127]^dim` (`i8`) and
//! `scale = max|rᵢ| / 127` (symmetric, one scale per row), a quarter of the f32 bytes. The dot
//! product of two codes is an exact integer sum, so the approximate score
//! `scale_q · scale_r · (c_q · c_r)` is the exact dot product of the two *dequantized* vectors.
//! The sum runs in AVX2 (the x86-64-v3 baseline of `.cargo/config.toml`): row bytes widened to
//! `i16` (`vpmovsxbw`), multiplied with the query's codes (widened once per query) and summed in
//! pairs into `i32` lanes (`vpmaddwd`). The same loop written for the auto-vectoriser came out
//! 6× slower (LLVM widened both operands and shuffled lanes; 9 ms against 1.5 ms per 100k × 384
//! rows, measured), so this one is written with intrinsics, as `ferrotune-model`'s
//! `qkernels.rs` is; other targets use the portable loop.
//!
//! With `e_r = ‖r − scale_r·c_r‖` (each row's quantization error, measured once when the row is
//! coded) and `e_q` the query's, the approximate score differs from the exact one by at most
//! `‖q‖·e_r + e_q·‖r‖ + e_q·e_r` (Cauchy–Schwarz on `q·r − q̃·r̃ = q·δr + δq·r − δq·δr`).
//! [`Int8Rows::error_bound`] is that bound with the largest `e_r` and `‖r‖` of the index, plus a
//! margin for f32 rounding; the search uses it to prove its candidate set complete.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

/// Rows per block when coding rows in parallel.
const BLOCK_ROWS: usize = 2048;

/// Rows per parallel block of a scan: a few blocks per thread (work stealing evens them out), and
/// never so few rows that a block's top list (up to a few hundred entries, each entering through
/// a heap) costs much next to its dot products.
fn scan_block(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(8192)
}

/// Above this width an `i32` sum of `i8·i8` products could overflow (`dim · 127² < 2³¹`); the
/// search then skips the 8-bit pass. Embedding models are far below it (MiniLM: 384).
pub const MAX_DIM: usize = 100_000;

/// A score and the row it belongs to, ordered best first: higher score, then the earlier row
/// (deterministic results on ties). `total_cmp` gives NaN a place in the order instead of a panic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored(pub f32, pub usize);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

/// Keeps the `n` best items pushed into it.
pub struct TopN {
    n: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopN {
    pub fn new(n: usize) -> Self {
        // `n` can come from a user's `k`: reserve for a typical list, grow beyond it on demand.
        Self { n, heap: BinaryHeap::with_capacity(n.min(1024) + 1) }
    }

    /// The score an item must beat to enter (−∞ while not full), for a cheap test before `push`.
    pub fn floor(&self) -> f32 {
        match self.heap.peek() {
            Some(Reverse(min)) if self.heap.len() == self.n => min.0,
            _ => f32::NEG_INFINITY,
        }
    }

    pub fn push(&mut self, item: Scored) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() < self.n {
            self.heap.push(Reverse(item));
        } else if self.heap.peek().is_some_and(|Reverse(min)| item > *min) {
            self.heap.pop();
            self.heap.push(Reverse(item));
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|Reverse(s)| s).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// One vector's code: `(scale, ‖v − scale·codes‖, ‖v‖)`, with `codes` written into `out`.
/// A vector with a non-finite element gets an infinite error, which turns every search over it
/// into the exact scan.
pub fn quantize(v: &[f32], out: &mut [i8]) -> (f32, f32, f32) {
    let max_abs = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let finite = v.iter().all(|x| x.is_finite());
    let scale = if finite && max_abs > 0.0 { max_abs / 127.0 } else { 0.0 };
    let (mut err2, mut norm2) = (0f64, 0f64);
    for (c, &x) in out.iter_mut().zip(v) {
        let q = if scale > 0.0 { (x / scale).round().clamp(-127.0, 127.0) as i8 } else { 0 };
        *c = q;
        let d = f64::from(x) - f64::from(scale) * f64::from(q);
        err2 += d * d;
        norm2 += f64::from(x) * f64::from(x);
    }
    if !finite {
        return (0.0, f32::INFINITY, f32::INFINITY);
    }
    // Rounded up so that the f32 values still bound the f64 ones.
    let up = |x: f64| (x.sqrt() * (1.0 + 1e-6)) as f32;
    (scale, up(err2), up(norm2))
}

/// `Σ rowᵢ·qᵢ`, exact (an `i32` sum; `dim ≤ MAX_DIM` keeps it from overflowing).
pub fn dot_i8(row: &[i8], q: &[i16]) -> i32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        // SAFETY: the callee needs AVX2 only, which this build enables for the whole program
        // (the cfg above; set by .cargo/config.toml's target-cpu).
        #[allow(unsafe_code)]
        return unsafe { simd::dot_i8(row, q) };
    }
    #[allow(unreachable_code)]
    portable_dot_i8(row, q)
}

/// The reference (and the path on targets without AVX2).
fn portable_dot_i8(row: &[i8], q: &[i16]) -> i32 {
    row.iter().zip(q).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod simd {
    use std::arch::x86_64::*;

    /// 32 values per step into two accumulators; the tail (`len % 32`) by the portable loop.
    #[target_feature(enable = "avx2")]
    pub fn dot_i8(row: &[i8], q: &[i16]) -> i32 {
        let n = row.len().min(q.len());
        let steps = n / 32;
        let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for s in 0..steps {
            let i = s * 32;
            // SAFETY: `i + 32 ≤ n ≤ row.len(), q.len()`: every load reads inside the slices
            // (unaligned loads, so any address is fine).
            #[allow(unsafe_code)]
            let (r0, r1, q0, q1) = unsafe {
                (
                    _mm_loadu_si128(row.as_ptr().add(i).cast()),
                    _mm_loadu_si128(row.as_ptr().add(i + 16).cast()),
                    _mm256_loadu_si256(q.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(q.as_ptr().add(i + 16).cast()),
                )
            };
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(r0), q0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(r1), q1));
        }
        let lanes: [i32; 8] = bytemuck::cast(_mm256_add_epi32(acc0, acc1));
        lanes.iter().sum::<i32>() + super::portable_dot_i8(&row[steps * 32..n], &q[steps * 32..n])
    }
}

/// A query's code, from [`Int8Rows::code_query`].
pub struct QueryCode {
    /// The query's `i8` codes widened to `i16` once, for the kernel.
    codes: Vec<i16>,
    scale: f32,
    err: f32,
    norm: f32,
}

/// The 8-bit copy of an index's rows, kept in step with its f32 rows.
#[derive(Debug, Clone, Default)]
pub struct Int8Rows {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Largest row error and norm; they only ever grow (a `retain` keeps them), which leaves the
    /// bound valid, only looser until the next load.
    max_err: f32,
    max_norm: f32,
}

impl Int8Rows {
    pub fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    /// Codes every row of `data` (`n × dim`), in parallel.
    pub fn from_rows(dim: usize, data: &[f32]) -> Self {
        if dim == 0 {
            return Self::new(0);
        }
        let mut codes = vec![0i8; data.len()];
        let stats: Vec<(f32, f32, f32)> = codes
            .par_chunks_mut(dim * BLOCK_ROWS)
            .zip(data.par_chunks(dim * BLOCK_ROWS))
            .flat_map_iter(|(c, d)| {
                c.chunks_exact_mut(dim)
                    .zip(d.chunks_exact(dim))
                    .map(|(c, d)| quantize(d, c))
                    .collect::<Vec<_>>()
            })
            .collect();
        let max_err = stats.iter().fold(0f32, |m, s| m.max(s.1));
        let max_norm = stats.iter().fold(0f32, |m, s| m.max(s.2));
        Self { dim, codes, scales: stats.into_iter().map(|s| s.0).collect(), max_err, max_norm }
    }

    pub fn push(&mut self, v: &[f32]) {
        let start = self.codes.len();
        self.codes.resize(start + self.dim, 0);
        let (scale, err, norm) = quantize(v, &mut self.codes[start..]);
        self.scales.push(scale);
        self.max_err = self.max_err.max(err);
        self.max_norm = self.max_norm.max(norm);
    }

    /// Moves row `from` to row `to` (`to ≤ from`), for a compaction in step with the f32 rows.
    pub fn move_row(&mut self, from: usize, to: usize) {
        let d = self.dim;
        self.codes.copy_within(from * d..(from + 1) * d, to * d);
        self.scales[to] = self.scales[from];
    }

    pub fn truncate(&mut self, rows: usize) {
        self.codes.truncate(rows * self.dim);
        self.scales.truncate(rows);
    }

    pub fn code_query(&self, q: &[f32]) -> QueryCode {
        let mut codes = vec![0i8; q.len()];
        let (scale, err, norm) = quantize(q, &mut codes);
        QueryCode { codes: codes.into_iter().map(i16::from).collect(), scale, err, norm }
    }

    /// Largest possible `|approximate − exact|` score of `q` against any row: the bound of the
    /// module docs, plus `(dim + 16)·ε·‖q‖·max‖r‖` for the f32 rounding of both scores (the exact
    /// score's 8-lane sum has at most `dim/8 + 3` roundings in a row, the approximate one three).
    /// Infinite when a vector holds a non-finite value.
    pub fn error_bound(&self, q: &QueryCode) -> f32 {
        let rounding = (self.dim as f32 + 16.0) * f32::EPSILON * q.norm * self.max_norm;
        q.norm * self.max_err + q.err * self.max_norm + q.err * self.max_err + rounding
    }

    /// The approximate score of row `r`.
    pub fn score(&self, q: &QueryCode, r: usize) -> f32 {
        let row = &self.codes[r * self.dim..(r + 1) * self.dim];
        q.scale * self.scales[r] * dot_i8(row, &q.codes) as f32
    }

    /// The `width` best rows by approximate score, best first; blocks of rows in parallel.
    pub fn top(&self, q: &QueryCode, width: usize) -> Vec<Scored> {
        let rows = self.scales.len();
        let block = scan_block(rows);
        let blocks: Vec<Vec<Scored>> = (0..rows.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let mut top = TopN::new(width);
                let mut floor = f32::NEG_INFINITY;
                for r in b * block..((b + 1) * block).min(rows) {
                    let s = self.score(q, r);
                    // `>=` so that a tie with the floor still goes through `push`'s row order.
                    if s >= floor {
                        top.push(Scored(s, r));
                        floor = top.floor();
                    }
                }
                top.into_sorted()
            })
            .collect();
        let mut top = TopN::new(width);
        for s in blocks.into_iter().flatten() {
            top.push(s);
        }
        top.into_sorted()
    }

    /// Every row whose approximate score is at least `min`, in row order (blocks in parallel).
    pub fn rows_at_least(&self, q: &QueryCode, min: f32) -> Vec<usize> {
        let rows = self.scales.len();
        let block = scan_block(rows);
        (0..rows.div_ceil(block))
            .into_par_iter()
            .flat_map_iter(|b| {
                (b * block..((b + 1) * block).min(rows)).filter(move |&r| self.score(q, r) >= min)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_dot_matches_a_plain_sum_including_the_tail() {
        for len in [0, 5, 32, 77, 384, 1000] {
            let a: Vec<i8> = (0..len).map(|i| ((i * 37) % 255 - 127) as i8).collect();
            let b: Vec<i16> = (0..len).map(|i| ((i * 91 + 5) % 255 - 127) as i16).collect();
            let want: i64 = a.iter().zip(&b).map(|(&x, &y)| i64::from(x) * i64::from(y)).sum();
            assert_eq!(i64::from(dot_i8(&a, &b)), want, "len {len}");
        }
        // The extremes of both ranges (i16 pairs of −128·−128 sum to 2^15, past i16 but not i32).
        let extreme = vec![-128i8; 64];
        assert_eq!(dot_i8(&extreme, &[-128i16; 64]), 64 * 128 * 128);
        assert_eq!(dot_i8(&[127i8; 96], &[-127i16; 96]), -96 * 127 * 127);
    }

    #[test]
    fn quantization_error_is_measured_and_bounded_by_half_a_step() {
        let v: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut c = vec![0i8; v.len()];
        let (scale, err, norm) = quantize(&v, &mut c);
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((scale - max / 127.0).abs() < 1e-9);
        let real: f64 =
            v.iter().zip(&c).map(|(&x, &q)| (f64::from(x) - f64::from(scale) * f64::from(q)).powi(2)).sum();
        assert!(f64::from(err) >= real.sqrt() && f64::from(err) < real.sqrt() * 1.001);
        assert!(f64::from(err) <= f64::from(scale) / 2.0 * (v.len() as f64).sqrt() * 1.001);
        assert!((norm - v.iter().map(|x| x * x).sum::<f32>().sqrt()).abs() < 1e-4);
        let (s, e, _) = quantize(&[0.0, f32::NAN], &mut [0, 0]);
        assert_eq!((s, e), (0.0, f32::INFINITY));
        let (s, e, n) = quantize(&[0.0, 0.0], &mut [1, 1]);
        assert_eq!((s, e, n), (0.0, 0.0, 0.0));
    }

    #[test]
    fn approximate_scores_stay_within_the_error_bound() {
        let mut g = crate::synthetic::TextGen::new(3);
        let rows: Vec<f32> = (0..500).flat_map(|_| g.unit_vector(64)).collect();
        let idx = Int8Rows::from_rows(64, &rows);
        for _ in 0..20 {
            let q = g.unit_vector(64);
            let code = idx.code_query(&q);
            let bound = idx.error_bound(&code);
            assert!(bound > 0.0 && bound < 0.1, "bound {bound}");
            for (r, row) in rows.chunks_exact(64).enumerate() {
                let exact: f64 = row.iter().zip(&q).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let diff = (f64::from(idx.score(&code, r)) - exact).abs();
                assert!(diff <= f64::from(bound), "row {r}: |Δ| {diff} > bound {bound}");
            }
        }
    }
}
