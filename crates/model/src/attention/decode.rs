//! Attention for one new token against the KV cache on the CPU (single-stream decode), in one op.
//!
//! Composed from candle ops (`q·Kᵀ`, scale, softmax, `p·V`) this step cost ~200 µs a layer for
//! SmolLM2 at 600 cached tokens — a quarter of a decode step, more than all of the layer's
//! quantized matmuls — because candle's batched gemm on a `[3, 3, 64] × [3, 64, 600]` strided
//! view spends its time in dispatch and packing, not arithmetic. Here each KV head's keys and
//! values are read once, straight from the cache buffer, for all the query heads that share it
//! (GQA), in chunks of positions spread over the decode pool (`pool`); each chunk keeps a running
//! max and sum (the flash-decoding split) and the chunks are merged at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::{Layout, Result, Storage, Tensor};

/// Positions per work item: enough work to amortise a chunk's merge, small enough that a
/// 2–16-thread pool gets several items per KV head.
const CHUNK: usize = 128;

/// `softmax(scale · q·Kᵀ)·V` for `q: [1, kv_heads, rep, d]` (the `rep` query heads sharing each
/// KV head, one position each) against `k`, `v: [1, kv_heads, total, d]` (views of the cache; the
/// last dim must be contiguous). Returns `[1, kv_heads, rep, d]`. CPU f32 only, no gradient.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let q = q.contiguous()?;
    let [_, heads, rep, d] = view(q.layout(), "q")?.3;
    let kd = view(k.layout(), "k")?.3;
    let vd = view(v.layout(), "v")?.3;
    if kd != vd || kd[1] != heads || kd[3] != d {
        candle_core::bail!("decode attention: q {:?} k {kd:?} v {vd:?} do not fit", q.dims())
    }
    let total = kd[2];
    let mut out = vec![0f32; heads * rep * d];
    if total == 0 {
        return Tensor::from_vec(out, q.shape(), q.device());
    }
    let chunks = total.div_ceil(CHUNK);
    let items = heads * chunks;
    // Per item: max and sum per query head, then `rep · d` unnormalised outputs.
    let per = rep * (d + 2);
    let job = Arc::new(Partials {
        q: q.clone(),
        k: k.clone(),
        v: v.clone(),
        scale,
        chunks,
        total,
        partial: (0..items * per).map(|_| AtomicU32::new(0)).collect(),
    });
    crate::pool::global().run(job.clone(), items);
    let partial: Vec<f32> = job.partial.iter().map(|x| f32::from_bits(x.load(Ordering::Relaxed))).collect();
    // Merge the chunks of each (KV head, query head): rescale to the largest max.
    for g in 0..heads {
        for r in 0..rep {
            let item = |c: usize| &partial[(g * chunks + c) * per..][..per];
            let max = (0..chunks).map(|c| item(c)[2 * r]).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[(g * rep + r) * d..][..d];
            let mut sum = 0f32;
            for c in 0..chunks {
                let it = item(c);
                let w = exp(it[2 * r] - max);
                sum += w * it[2 * r + 1];
                axpy(w, &it[2 * rep + r * d..][..d], o);
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
    Tensor::from_vec(out, q.shape(), q.device())
}

/// Element offsets of a `[1, heads, n, d]` view: (start, head stride, row stride), rows contiguous.
fn view(layout: &Layout, what: &str) -> Result<(usize, usize, usize, [usize; 4])> {
    let dims: [usize; 4] = layout
        .dims()
        .try_into()
        .map_err(|_| candle_core::Error::Msg(format!("decode attention: {what} must be 4-d")))?;
    let st = layout.stride();
    if dims[0] != 1 || (st[3] != 1 && dims[3] > 1) {
        candle_core::bail!("decode attention: {what} {:?} strides {:?} unsupported", dims, st)
    }
    Ok((layout.start_offset(), st[1], st[2], dims))
}

/// One pool item per (KV head, chunk of positions): the chunk's softmax statistics and
/// unnormalised output for each query head of the group.
struct Partials {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: f32,
    chunks: usize,
    total: usize,
    /// `[items, rep·(d+2)]` f32 bits; each item writes its own row.
    partial: Vec<AtomicU32>,
}

fn f32_data(s: &Storage) -> Result<&[f32]> {
    match s {
        Storage::Cpu(c) => c.as_slice::<f32>(),
        _ => candle_core::bail!("decode attention runs on the CPU"),
    }
}

impl crate::pool::Job for Partials {
    fn run(&self, item: usize) {
        if let Err(e) = self.try_run(item) {
            // Layouts were checked before the job started; nothing here can fail.
            tracing::error!("decode attention item {item}: {e}");
        }
    }
}

impl Partials {
    fn try_run(&self, item: usize) -> Result<()> {
        let (qs, ql) = self.q.storage_and_layout();
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (q, k, v) = (f32_data(&qs)?, f32_data(&ks)?, f32_data(&vs)?);
        let (q0, qh, qr, [_, _, rep, d]) = view(ql, "q")?;
        let (k0, kh, kr, _) = view(kl, "k")?;
        let (v0, vh, vr, _) = view(vl, "v")?;
        let per = rep * (d + 2);
        let (g, c) = (item / self.chunks, item % self.chunks);
        let (p0, p1) = (c * CHUNK, ((c + 1) * CHUNK).min(self.total));
        let len = p1 - p0;
        let keys = Rows { data: k, start: k0 + g * kh + p0 * kr, stride: kr, n: len, d };
        let values = Rows { data: v, start: v0 + g * vh + p0 * vr, stride: vr, n: len, d };
        let mut res = vec![0f32; per];
        let (stats, acc) = res.split_at_mut(2 * rep);
        let mut scores = [0f32; CHUNK];
        // One query head at a time: its scores, softmax numerators, and their sum of value
        // rows (the chunk's keys and values stay in L1/L2 across the `rep` heads).
        for r in 0..rep {
            let qv = &q[q0 + g * qh + r * qr..][..d];
            let s = &mut scores[..len];
            kernels::scores(qv, &keys, self.scale, s);
            let max = kernels::max(s);
            let sum = kernels::exp_sub_sum(s, max);
            stats[2 * r] = max;
            stats[2 * r + 1] = sum;
            kernels::weighted_sum(s, &values, &mut acc[r * d..(r + 1) * d]);
        }
        for (o, x) in self.partial[item * per..(item + 1) * per].iter().zip(res) {
            o.store(x.to_bits(), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `n` rows of `d` values starting at `data[start]`, `stride` apart.
struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
    n: usize,
    d: usize,
}

impl Rows<'_> {
    #[inline]
    fn row(&self, j: usize) -> &[f32] {
        &self.data[self.start + j * self.stride..][..self.d]
    }
}

#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = a.mul_add(*v, *o);
    }
}

/// The per-chunk loops. Hand-written AVX2 (the build targets x86-64-v3): written as plain Rust,
/// each `q·k` ends in a horizontal sum, the reductions are serial chains the compiler may not
/// reorder and `exp` stayed scalar, which made this op slower than candle's composed form.
/// `scalar` is the reference and the fallback elsewhere.
mod kernels {
    use super::Rows;

    pub fn scores(q: &[f32], keys: &Rows, scale: f32, out: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if keys.d.is_multiple_of(8) {
            // SAFETY: AVX2/FMA are enabled for the whole build (the cfg above); the callee
            // reads only `keys.row(j)` for `j < keys.n` and `q[..d]`, bounds-checked slices.
            #[allow(unsafe_code)]
            return unsafe { super::simd::scores(q, keys, scale, out) };
        }
        scalar::scores(q, keys, scale, out)
    }

    pub fn max(s: &[f32]) -> f32 {
        let mut m = [f32::NEG_INFINITY; 8];
        let c = s.chunks_exact(8);
        let tail = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for x in c {
            for i in 0..8 {
                m[i] = m[i].max(x[i]);
            }
        }
        m.iter().fold(tail, |a, &b| a.max(b))
    }

    /// `s ← e^(s − max)`, returns `Σ s`.
    pub fn exp_sub_sum(s: &mut [f32], max: f32) -> f32 {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            // SAFETY: as in `scores`.
            #[allow(unsafe_code)]
            return unsafe { super::simd::exp_sub_sum(s, max) };
        }
        #[allow(unreachable_code)]
        scalar::exp_sub_sum(s, max)
    }

    /// `acc += Σ_j p[j] · values.row(j)`.
    pub fn weighted_sum(p: &[f32], values: &Rows, acc: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if values.d.is_multiple_of(8) {
            // SAFETY: as in `scores`.
            #[allow(unsafe_code)]
            return unsafe { super::simd::weighted_sum(p, values, acc) };
        }
        scalar::weighted_sum(p, values, acc)
    }

    pub mod scalar {
        use super::Rows;

        pub fn exp_sub_sum(s: &mut [f32], max: f32) -> f32 {
            let mut sum = 0f32;
            for x in s.iter_mut() {
                *x = super::super::exp(*x - max);
                sum += *x;
            }
            sum
        }

        pub fn scores(q: &[f32], keys: &Rows, scale: f32, out: &mut [f32]) {
            for (j, o) in out.iter_mut().enumerate().take(keys.n) {
                *o = q.iter().zip(keys.row(j)).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
        }

        pub fn weighted_sum(p: &[f32], values: &Rows, acc: &mut [f32]) {
            for (j, &w) in p.iter().enumerate().take(values.n) {
                super::super::axpy(w, values.row(j), acc);
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod simd {
    use std::arch::x86_64::*;

    use super::Rows;

    /// Sum of the eight lanes of each of `v[0..8]`, as the eight lanes of one vector.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn transpose_sum(v: [__m256; 8]) -> __m256 {
        let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        // a = [s0..s3 of low halves, s0..s3 of high halves]; likewise b for rows 4..7.
        _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load(s: &[f32]) -> __m256 {
        let a: &[f32; 8] = s[..8].try_into().expect("8 lanes");
        // SAFETY: `a` is 8 valid f32; unaligned load.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_ps(a.as_ptr())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store(s: &mut [f32], v: __m256) {
        let a: &mut [f32; 8] = (&mut s[..8]).try_into().expect("8 lanes");
        // SAFETY: `a` is 8 valid f32; unaligned store.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), v)
        }
    }

    /// Rows `0..n` lie inside `data` (checked once, so the loops below can load unchecked).
    fn check(rows: &Rows) {
        if rows.n > 0 {
            assert!(
                rows.start + (rows.n - 1) * rows.stride + rows.d <= rows.data.len(),
                "cache view out of bounds"
            );
        }
    }

    /// Eight keys at a time: one accumulator per key, reduced together at the end.
    #[target_feature(enable = "avx2,fma")]
    pub fn scores(q: &[f32], keys: &Rows, scale: f32, out: &mut [f32]) {
        let d = keys.d;
        let n = keys.n.min(out.len());
        check(keys);
        assert!(q.len() >= d && d.is_multiple_of(8));
        let sc = _mm256_set1_ps(scale);
        let base = keys.data[keys.start..].as_ptr();
        let mut j = 0;
        // SAFETY: rows j < n start at `base + j·stride` and hold `d` values (`check`); `q`
        // holds `d`; `out[j..j+8]` is inside `out` (j + 8 ≤ n ≤ out.len()).
        #[allow(unsafe_code)]
        unsafe {
            while j + 8 <= n {
                let rows: [*const f32; 8] = std::array::from_fn(|i| base.add((j + i) * keys.stride));
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    let qv = _mm256_loadu_ps(q.as_ptr().add(c));
                    for i in 0..8 {
                        acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[i].add(c)), acc[i]);
                    }
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_mul_ps(transpose_sum(acc), sc));
                j += 8;
            }
        }
        while j < n {
            let row = keys.row(j);
            let mut acc = _mm256_setzero_ps();
            for c in (0..d).step_by(8) {
                acc = _mm256_fmadd_ps(load(&q[c..]), load(&row[c..]), acc);
            }
            let lanes: [f32; 8] = bytemuck::cast(acc);
            out[j] = lanes.iter().sum::<f32>() * scale;
            j += 1;
        }
    }

    /// `e^x` on eight lanes: the same steps as the scalar [`super::exp`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(-2.121_944_4e-4),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x),
        );
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn exp_sub_sum(s: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut c = s.chunks_exact_mut(8);
        for x in &mut c {
            let e = exp8(_mm256_sub_ps(load(x), m));
            store(x, e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut tail = 0f32;
        for x in c.into_remainder() {
            *x = super::exp(*x - max);
            tail += *x;
        }
        let lanes: [f32; 8] = bytemuck::cast(acc);
        lanes.iter().sum::<f32>() + tail
    }

    /// 64 output dims at a time held in registers across all rows.
    // The register array is indexed in step with the row's columns: an index loop reads clearer
    // than zipped iterators here and compiles to the same unrolled code.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub fn weighted_sum(p: &[f32], values: &Rows, acc: &mut [f32]) {
        let d = values.d;
        let n = values.n.min(p.len());
        check(values);
        assert!(acc.len() >= d && d.is_multiple_of(8));
        let base = values.data[values.start..].as_ptr();
        let mut c0 = 0;
        while c0 < d {
            let w = (d - c0).min(64) / 8;
            let mut a = [_mm256_setzero_ps(); 8];
            for i in 0..w {
                a[i] = load(&acc[c0 + 8 * i..]);
            }
            // SAFETY: rows j < n hold `d` values from `base + j·stride` (`check`), and
            // c0 + 8·i + 8 ≤ d.
            #[allow(unsafe_code)]
            unsafe {
                for (j, &pj) in p.iter().enumerate().take(n) {
                    let row = base.add(j * values.stride + c0);
                    let pv = _mm256_set1_ps(pj);
                    for i in 0..w {
                        a[i] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * i)), a[i]);
                    }
                }
            }
            for i in 0..w {
                store(&mut acc[c0 + 8 * i..], a[i]);
            }
            c0 += 64;
        }
    }
}

/// `e^x` for `x ≤ 0` (and moderately positive x), branch-free so loops over it vectorise:
/// Cephes' `expf` (range reduction by ln 2, degree-5 polynomial), max error ~2 ulp; libm's
/// `expf` is a call per element. Inputs below −87 give ~0 (never NaN).
#[inline]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    #[test]
    fn exp_is_close_to_libm() {
        for i in -8700..=800 {
            let x = i as f32 * 0.01;
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b, "{x}: {a} vs {b}");
        }
        assert!(exp(-1e30) >= 0.0 && exp(-1e30) < 1e-37);
    }

    #[test]
    fn vector_and_scalar_softmax_numerators_agree() {
        let x: Vec<f32> = (0..203).map(|i| ((i * 7919) % 1000) as f32 * -0.05).collect();
        let (mut a, mut b) = (x.clone(), x);
        let (sa, sb) = (kernels::exp_sub_sum(&mut a, 0.0), kernels::scalar::exp_sub_sum(&mut b, 0.0));
        assert!((sa - sb).abs() <= 1e-5 * sb);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 4.0 * f32::EPSILON * q, "{p} vs {q}");
        }
    }

    /// Against the composed form, on a view of a larger cache buffer (as the KV cache hands
    /// out), for lengths below, at and above a chunk and several threads' worth of chunks.
    #[test]
    fn matches_the_composed_attention_on_cache_views() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, rep, d) = (3, 3, 64);
        let buf_k = Tensor::randn(0f32, 1.0, (1, heads, 1200, d), &dev)?;
        let buf_v = Tensor::randn(0f32, 1.0, (1, heads, 1200, d), &dev)?;
        for total in [1, 7, CHUNK, CHUNK + 1, 577, 1200] {
            let k = buf_k.narrow(2, 0, total)?;
            let v = buf_v.narrow(2, 0, total)?;
            let q = Tensor::randn(0f32, 1.0, (1, heads, rep, d), &dev)?;
            let want = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * 0.125)?, D::Minus1)?.matmul(&v)?;
            let got = attend(&q, &k, &v, 0.125)?;
            let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "total {total}: {diff}");
        }
        Ok(())
    }
}
