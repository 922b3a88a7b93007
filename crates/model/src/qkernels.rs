//! Quantized linear weights (Q4_1, Q8_0) with AVX2 dot-product kernels, for the quantized path.
//!
//! Why hand-written: SmolLM2's GGUF is Q4_1 (+ a Q8_0 embedding/head), and candle 0.11 has no SIMD
//! kernel for Q4_1 on x86 (its `vec_dot` runs the scalar loop: 68% of decode time when profiled);
//! its Q8_0 kernel runs on a spinning thread pool that fights rayon for the two cores. Here the
//! GGUF's blocks are kept value-exact (f16 scales, split into arrays: see `Blocks`) and each dot
//! product computes
//! what llama.cpp's `ggml_vec_dot_q4_1_q8_1` / `ggml_vec_dot_q8_0_q8_0` compute: activations
//! quantized to 8 bits per block of 32, then `Σ d_w·d_x·Σ(q_w·q_x) (+ m_w·s_x for Q4_1)`.
//! Small batches (decode) use the kernels, on the decode pool (`pool`); larger ones (prefill)
//! dequantize the weight and use the f32 matmul, which is faster there and exact.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

const QK: usize = 32;
/// Rows of activations at or above which the dequantize + f32 matmul path is used.
const DENSE_MIN_ROWS: usize = 8;

/// The GGUF's blocks, split into arrays (struct of arrays) so the kernels load eight blocks'
/// scales with one instruction and two blocks' quants with one 32-byte load. Values are exact:
/// scales stay f16 bits (decode reads every weight once per token, so bytes matter).
#[derive(Debug)]
enum Blocks {
    /// `qs`: 16 bytes per block (value j in the low nibble of byte j, value j+16 in the high
    /// one); `d`, `m`: f16 bits per block; `x ≈ d·q + m`.
    Q4_1 { qs: Vec<u8>, d: Vec<u16>, m: Vec<u16> },
    /// `qs`: 32 values per block; `d`: f16 bits; `x ≈ d·q`.
    Q8_0 { qs: Vec<i8>, d: Vec<u16> },
}

#[derive(Debug)]
pub struct QWeight {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

/// One Q4_1 weight row.
#[derive(Clone, Copy)]
struct Q4Row<'a> {
    qs: &'a [u8],
    d: &'a [u16],
    m: &'a [u16],
}

/// One Q8_0 weight row.
#[derive(Clone, Copy)]
struct Q8Row<'a> {
    qs: &'a [i8],
    d: &'a [u16],
}

/// One activation row quantized like llama.cpp's `quantize_row_q8_1`: per block of 32,
/// `x ≈ d·q` and `s = d·Σq` (both rounded through f16, as llama.cpp stores them).
struct XRow {
    /// 32 values per block, in order.
    qs: Vec<i8>,
    /// Per pair of blocks (A, B): `A[0..16] B[0..16]` then `A[16..32] B[16..32]` — the order
    /// in which one 32-byte load of two Q4_1 blocks' nibbles yields their values.
    pairs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

impl QWeight {
    /// Whether `from_qtensor` takes this block type.
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
    }

    /// From a Q4_1 or Q8_0 `[rows, cols]` tensor (GGUF layout: blocks of 32 along each row).
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        if cols % QK != 0 {
            candle_core::bail!("row length {cols} is not a multiple of {QK}")
        }
        let block_bytes = match q.dtype() {
            GgmlDType::Q4_1 => 20,
            GgmlDType::Q8_0 => 34,
            other => candle_core::bail!("no kernel for {other:?} (Q4_1 and Q8_0 only)"),
        };
        let data = q.data()?;
        if data.len() != rows * cols / QK * block_bytes {
            candle_core::bail!(
                "{:?} data has {} bytes, expected {}",
                q.dtype(),
                data.len(),
                rows * cols / QK * block_bytes
            )
        }
        let blocks = if block_bytes == 20 {
            let n = data.len() / 20;
            let (mut qs, mut d, mut m) =
                (Vec::with_capacity(n * 16), Vec::with_capacity(n), Vec::with_capacity(n));
            for b in data.chunks_exact(20) {
                d.push(f16_at(b, 0));
                m.push(f16_at(b, 2));
                qs.extend_from_slice(&b[4..20]);
            }
            Blocks::Q4_1 { qs, d, m }
        } else {
            let n = data.len() / 34;
            let (mut qs, mut d) = (Vec::with_capacity(n * 32), Vec::with_capacity(n));
            for b in data.chunks_exact(34) {
                d.push(f16_at(b, 0));
                qs.extend(b[2..34].iter().map(|&v| v as i8));
            }
            Blocks::Q8_0 { qs, d }
        };
        Ok(Self { rows, cols, blocks })
    }

    fn nb(&self) -> usize {
        self.cols / QK
    }

    fn q4_row(&self, r: usize) -> Option<Q4Row<'_>> {
        let nb = self.nb();
        match &self.blocks {
            Blocks::Q4_1 { qs, d, m } => Some(Q4Row {
                qs: &qs[r * nb * 16..(r + 1) * nb * 16],
                d: &d[r * nb..(r + 1) * nb],
                m: &m[r * nb..(r + 1) * nb],
            }),
            Blocks::Q8_0 { .. } => None,
        }
    }

    fn q8_row(&self, r: usize) -> Option<Q8Row<'_>> {
        let nb = self.nb();
        match &self.blocks {
            Blocks::Q8_0 { qs, d } => {
                Some(Q8Row { qs: &qs[r * nb * 32..(r + 1) * nb * 32], d: &d[r * nb..(r + 1) * nb] })
            }
            Blocks::Q4_1 { .. } => None,
        }
    }

    /// `[rows, cols]` f32, exactly the GGUF's values.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        match &self.blocks {
            Blocks::Q4_1 { qs, d, m } => {
                out.par_chunks_mut(QK).zip(qs.par_chunks(16)).zip(d.par_iter().zip(m.par_iter())).for_each(
                    |((o, q), (&d, &m))| {
                        let (d, m) = (h2f(d), h2f(m));
                        for j in 0..16 {
                            o[j] = (q[j] & 0x0F) as f32 * d + m;
                            o[j + 16] = (q[j] >> 4) as f32 * d + m;
                        }
                    },
                )
            }
            Blocks::Q8_0 { qs, d } => {
                out.par_chunks_mut(QK).zip(qs.par_chunks(32)).zip(d.par_iter()).for_each(|((o, q), &d)| {
                    let d = h2f(d);
                    for (v, &q) in o.iter_mut().zip(q) {
                        *v = q as f32 * d;
                    }
                })
            }
        }
        Tensor::from_vec(out, (self.rows, self.cols), device)
    }

    /// `x: [.., cols]` → `[.., rows]`.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        let lead = x.elem_count() / self.cols;
        let mut out_dims = x.dims().to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.rows;
        }
        if lead >= DENSE_MIN_ROWS {
            let w = self.dequantize(x.device())?;
            return x.reshape((lead, self.cols))?.matmul(&w.t()?)?.reshape(out_dims);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        let x_rows: Vec<XRow> = xs.chunks_exact(self.cols).map(quantize_row).collect();
        // Work items are (activation row, chunk of weight rows) on the decode pool: decode makes
        // ~200 such calls per token, each 5–800 µs (see `pool` for why not rayon / candle's pool).
        let pool = crate::pool::global();
        let chunk = (self.rows.div_ceil(pool.threads() * 16).div_ceil(4) * 4).max(32);
        let per_row = self.rows.div_ceil(chunk);
        let job = Arc::new(MatVec {
            w: self.clone(),
            x: x_rows,
            chunk,
            per_row,
            out: (0..lead * self.rows).map(|_| AtomicU32::new(0)).collect(),
        });
        pool.run(job.clone(), lead * per_row);
        let result: Vec<f32> = job.out.iter().map(|v| f32::from_bits(v.load(Ordering::Relaxed))).collect();
        Tensor::from_vec(result, out_dims, x.device())
    }

    /// `o[k] = row(start + k) · x` for `k < o.len()`.
    fn rows_into(&self, start: usize, x: &XRow, o: &mut [f32]) {
        let mut quads = o.chunks_exact_mut(4);
        let mut r = start;
        for q in &mut quads {
            q.copy_from_slice(&self.dot4(r, x));
            r += 4;
        }
        for v in quads.into_remainder() {
            *v = self.dot1(r, x);
            r += 1;
        }
    }

    fn dot4(&self, r: usize, x: &XRow) -> [f32; 4] {
        if let Some(w) = self.q4_row(r) {
            let w = [
                w,
                self.q4_row(r + 1).unwrap_or(w),
                self.q4_row(r + 2).unwrap_or(w),
                self.q4_row(r + 3).unwrap_or(w),
            ];
            return dot4_q4_1(w, x);
        }
        match self.q8_row(r) {
            Some(w) => dot4_q8_0(
                [
                    w,
                    self.q8_row(r + 1).unwrap_or(w),
                    self.q8_row(r + 2).unwrap_or(w),
                    self.q8_row(r + 3).unwrap_or(w),
                ],
                x,
            ),
            None => [0.0; 4],
        }
    }

    fn dot1(&self, r: usize, x: &XRow) -> f32 {
        // Remainder rows (fewer than four left): the four-row kernel on copies of the row.
        match (self.q4_row(r), self.q8_row(r)) {
            (Some(w), _) => dot4_q4_1([w; 4], x)[0],
            (_, Some(w)) => dot4_q8_0([w; 4], x)[0],
            _ => 0.0,
        }
    }
}

/// One matrix–vector product (per activation row) as pool items of `chunk` weight rows.
struct MatVec {
    w: Arc<QWeight>,
    x: Vec<XRow>,
    chunk: usize,
    per_row: usize,
    /// `[lead, rows]` f32 bits; each item writes its own range.
    out: Vec<AtomicU32>,
}

impl crate::pool::Job for MatVec {
    fn run(&self, item: usize) {
        let (i, c) = (item / self.per_row, item % self.per_row);
        let start = c * self.chunk;
        let end = (start + self.chunk).min(self.w.rows);
        let mut buf = vec![0f32; end - start];
        self.w.rows_into(start, &self.x[i], &mut buf);
        for (o, v) in self.out[i * self.w.rows + start..i * self.w.rows + end].iter().zip(buf) {
            o.store(v.to_bits(), Ordering::Relaxed);
        }
    }
}

fn quantize_row(x: &[f32]) -> XRow {
    let nb = x.len() / QK;
    let mut row = XRow {
        qs: vec![0i8; nb * QK],
        pairs: vec![0i8; (nb / 2) * 2 * QK],
        d: vec![0f32; nb],
        s: vec![0f32; nb],
    };
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let (amax, sum) = quantize_block(xb, &mut row.qs[b * QK..(b + 1) * QK]);
        let d = amax / 127.0;
        // llama.cpp stores d and s as f16; round through f16 to compute with the same numbers.
        row.d[b] = f16::from_f32(d).to_f32();
        row.s[b] = f16::from_f32(sum as f32 * d).to_f32();
    }
    for p in 0..nb / 2 {
        let (a, b) = (&row.qs[2 * p * QK..(2 * p + 1) * QK], &row.qs[(2 * p + 1) * QK..(2 * p + 2) * QK]);
        let out = &mut row.pairs[p * 2 * QK..(p + 1) * 2 * QK];
        out[..16].copy_from_slice(&a[..16]);
        out[16..32].copy_from_slice(&b[..16]);
        out[32..48].copy_from_slice(&a[16..]);
        out[48..].copy_from_slice(&b[16..]);
    }
    row
}

/// One block of 32 activations to 8 bits as llama.cpp's AVX2 `quantize_row_q8_1` does
/// (`q = round(x·127/amax)`, ties to even); returns `(amax, Σq)`.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: as in `dot4_q4_1`.
        #[allow(unsafe_code)]
        return unsafe { simd::quantize_block(x, q) };
    }
    #[allow(unreachable_code)]
    scalar::quantize_block(x, q)
}

fn dot4_q4_1(w: [Q4Row; 4], x: &XRow) -> [f32; 4] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: the callee only needs AVX2, FMA and F16C, which this build enables for the
        // whole program (the cfg above; set by .cargo/config.toml's target-cpu). It reads
        // through bounds-checked slices only.
        #[allow(unsafe_code)]
        return unsafe { simd::dot4_q4_1(w, x) };
    }
    #[allow(unreachable_code)]
    w.map(|w| scalar::dot_q4_1(w, x))
}

fn dot4_q8_0(w: [Q8Row; 4], x: &XRow) -> [f32; 4] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: as in `dot4_q4_1`.
        #[allow(unsafe_code)]
        return unsafe { simd::dot4_q8_0(w, x) };
    }
    #[allow(unreachable_code)]
    w.map(|w| scalar::dot_q8_0(w, x))
}

/// Reference implementations (and the fallback on CPUs without AVX2).
mod scalar {
    use super::{Q4Row, Q8Row, XRow, h2f};

    pub fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in q.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        (amax, sum)
    }

    pub fn dot_q4_1(w: Q4Row, x: &XRow) -> f32 {
        let mut sum = 0f32;
        for b in 0..w.d.len() {
            let (q, y) = (&w.qs[b * 16..(b + 1) * 16], &x.qs[b * 32..(b + 1) * 32]);
            let mut s = 0i32;
            for j in 0..16 {
                s += (q[j] & 0x0F) as i32 * y[j] as i32 + (q[j] >> 4) as i32 * y[j + 16] as i32;
            }
            sum += s as f32 * h2f(w.d[b]) * x.d[b] + h2f(w.m[b]) * x.s[b];
        }
        sum
    }

    pub fn dot_q8_0(w: Q8Row, x: &XRow) -> f32 {
        let mut sum = 0f32;
        for b in 0..w.d.len() {
            let s: i32 = w.qs[b * 32..(b + 1) * 32]
                .iter()
                .zip(&x.qs[b * 32..(b + 1) * 32])
                .map(|(&a, &c)| a as i32 * c as i32)
                .sum();
            sum += s as f32 * h2f(w.d[b]) * x.d[b];
        }
        sum
    }
}

/// Per block the old kernels converted two f16 scales and multiplied them in scalar code, more
/// instructions than the integer dot product itself. Here eight blocks' scales are converted and
/// multiplied by the activation scales in one vector op each, then moved to the lanes of their
/// block with one permute; two Q4_1 blocks share each 32-byte load (their nibbles against the
/// activation's `pairs` layout).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod simd {
    use std::arch::x86_64::*;

    use super::{Q4Row, Q8Row, XRow, h2f};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        let v: [__m256; 4] = std::array::from_fn(|i| f32x8(&x[8 * i..]));
        let sign = _mm256_set1_ps(-0.0);
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &v| _mm256_max_ps(m, _mm256_andnot_ps(sign, v)));
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let i: [__m256i; 4] = std::array::from_fn(|k| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v[k], id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let lanes: [i32; 8] = bytemuck::cast(s);
        // i32 → i16 → i8 packs interleave 128-bit halves; the permute restores element order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let out: [i8; 32] = bytemuck::cast(p);
        q[..32].copy_from_slice(&out);
        (amax, lanes.iter().sum())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bytes32<T: bytemuck::Pod>(s: &[T]) -> __m256i {
        let a: [u8; 32] = bytemuck::cast_slice::<T, u8>(s)[..32].try_into().expect("32 bytes");
        bytemuck::cast(a)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bytes16<T: bytemuck::Pod>(s: &[T]) -> __m128i {
        let a: [u8; 16] = bytemuck::cast_slice::<T, u8>(s)[..16].try_into().expect("16 bytes");
        bytemuck::cast(a)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f32x8(s: &[f32]) -> __m256 {
        let a: [f32; 8] = s[..8].try_into().expect("8 lanes");
        bytemuck::cast(a)
    }

    /// Two Q4_1 blocks (32 bytes of nibbles) times their activations in `pairs` order: eight i32
    /// lanes, the first four summing block A's products, the last four block B's.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pair_q4(q: __m256i, xlo: __m256i, xhi: __m256i) -> __m256 {
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(q, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
        // u8 × i8 pairs summed to i16: |2·15·127| doubled stays below 2^15.
        let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    // The lanes index several arrays in step (registers, spreads, rows): index loops read clearer
    // than zipped iterators here and compile to the same unrolled code.
    #[allow(clippy::needless_range_loop)]
    pub fn dot4_q4_1(w: [Q4Row; 4], x: &XRow) -> [f32; 4] {
        let nb = x.d.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        // Lane pattern that spreads scale 2j to lanes 0..4 and 2j+1 to lanes 4..8.
        let spread: [__m256i; 4] = std::array::from_fn(|j| {
            let (a, b) = (2 * j as i32, 2 * j as i32 + 1);
            _mm256_setr_epi32(a, a, a, a, b, b, b, b)
        });
        let groups = nb / 8;
        for r in 0..4 {
            assert!(
                w[r].qs.len() >= nb * 16 && w[r].d.len() >= nb && w[r].m.len() >= nb,
                "Q4_1 row shorter than the activation"
            );
        }
        assert!(x.s.len() >= nb && x.pairs.len() >= (nb / 2) * 64, "activation row malformed");
        // The bounds-checked loads of the tail below cost as much as the arithmetic in this loop
        // (two compares and branches per load): raw pointers within the lengths asserted above.
        let (qs, ds, ms) = (w.map(|w| w.qs.as_ptr()), w.map(|w| w.d.as_ptr()), w.map(|w| w.m.as_ptr()));
        let (xd, xs, xp) = (x.d.as_ptr(), x.s.as_ptr(), x.pairs.as_ptr());
        for g in 0..groups {
            let (b0, p0) = (8 * g, 4 * g);
            // SAFETY: blocks b0..b0+8 ≤ nb and pairs p0..p0+4 ≤ nb/2 are inside every slice
            // (asserted above); loads are unaligned.
            #[allow(unsafe_code)]
            unsafe {
                let dx = _mm256_loadu_ps(xd.add(b0));
                let sx = _mm256_loadu_ps(xs.add(b0));
                let mut sc = [_mm256_setzero_ps(); 4];
                for r in 0..4 {
                    sc[r] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(ds[r].add(b0).cast())), dx);
                    // The `m·s` terms of the eight blocks, added lane-wise (summed at the end).
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(ms[r].add(b0).cast())), sx, acc[r]);
                }
                for j in 0..4 {
                    let p = p0 + j;
                    let xlo = _mm256_loadu_si256(xp.add(64 * p).cast());
                    let xhi = _mm256_loadu_si256(xp.add(64 * p + 32).cast());
                    for r in 0..4 {
                        let f = pair_q4(_mm256_loadu_si256(qs[r].add(32 * p).cast()), xlo, xhi);
                        acc[r] = _mm256_fmadd_ps(f, _mm256_permutevar8x32_ps(sc[r], spread[j]), acc[r]);
                    }
                }
            }
        }
        // Tail: the remaining pairs with scales built in scalar code, then an odd last block.
        let mut mins = [0f32; 4];
        let mut b = 8 * groups;
        while b + 2 <= nb {
            let p = b / 2;
            let xlo = bytes32(&x.pairs[64 * p..]);
            let xhi = bytes32(&x.pairs[64 * p + 32..]);
            for r in 0..4 {
                let sa = _mm_set1_ps(h2f(w[r].d[b]) * x.d[b]);
                let sb = _mm_set1_ps(h2f(w[r].d[b + 1]) * x.d[b + 1]);
                let f = pair_q4(bytes32(&w[r].qs[32 * p..]), xlo, xhi);
                acc[r] = _mm256_fmadd_ps(f, _mm256_set_m128(sb, sa), acc[r]);
                mins[r] += h2f(w[r].m[b]) * x.s[b] + h2f(w[r].m[b + 1]) * x.s[b + 1];
            }
            b += 2;
        }
        if b < nb {
            let y = bytes32(&x.qs[32 * b..]);
            for r in 0..4 {
                let q = bytes16(&w[r].qs[16 * b..]);
                let low = _mm_set1_epi8(0x0F);
                let wq = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low));
                let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, y), _mm256_set1_epi16(1));
                acc[r] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(prod),
                    _mm256_set1_ps(h2f(w[r].d[b]) * x.d[b]),
                    acc[r],
                );
                mins[r] += h2f(w[r].m[b]) * x.s[b];
            }
        }
        [hsum(acc[0]) + mins[0], hsum(acc[1]) + mins[1], hsum(acc[2]) + mins[2], hsum(acc[3]) + mins[3]]
    }

    /// One Q8_0 block times one activation block: eight i32 lanes as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block_q8(wq: __m256i, yq: __m256i) -> __m256 {
        // maddubs needs an unsigned operand: |w| × (y with w's sign), as llama.cpp does.
        // GGUF Q8_0 values are in [-127, 127], so |w| fits in u8 without wrapping.
        let prod = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(yq, wq)),
            _mm256_set1_epi16(1),
        );
        _mm256_cvtepi32_ps(prod)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    // The lanes index several arrays in step (registers, spreads, rows): index loops read clearer
    // than zipped iterators here and compile to the same unrolled code.
    #[allow(clippy::needless_range_loop)]
    pub fn dot4_q8_0(w: [Q8Row; 4], x: &XRow) -> [f32; 4] {
        let nb = x.d.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let lane: [__m256i; 8] = std::array::from_fn(|j| _mm256_set1_epi32(j as i32));
        let groups = nb / 8;
        for r in 0..4 {
            assert!(w[r].qs.len() >= nb * 32 && w[r].d.len() >= nb, "Q8_0 row shorter than the activation");
        }
        assert!(x.qs.len() >= nb * 32, "activation row malformed");
        // Raw pointers within the asserted lengths, as in `dot4_q4_1`.
        let (qs, ds) = (w.map(|w| w.qs.as_ptr()), w.map(|w| w.d.as_ptr()));
        let (xd, xq) = (x.d.as_ptr(), x.qs.as_ptr());
        for g in 0..groups {
            let b0 = 8 * g;
            // SAFETY: blocks b0..b0+8 ≤ nb are inside every slice (asserted above).
            #[allow(unsafe_code)]
            unsafe {
                let dx = _mm256_loadu_ps(xd.add(b0));
                let sc: [__m256; 4] = std::array::from_fn(|r| {
                    _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(ds[r].add(b0).cast())), dx)
                });
                for j in 0..8 {
                    let b = b0 + j;
                    let y = _mm256_loadu_si256(xq.add(32 * b).cast());
                    for r in 0..4 {
                        let f = block_q8(_mm256_loadu_si256(qs[r].add(32 * b).cast()), y);
                        acc[r] = _mm256_fmadd_ps(f, _mm256_permutevar8x32_ps(sc[r], lane[j]), acc[r]);
                    }
                }
            }
        }
        for b in 8 * groups..nb {
            let y = bytes32(&x.qs[32 * b..]);
            for r in 0..4 {
                let f = block_q8(bytes32(&w[r].qs[32 * b..]), y);
                acc[r] = _mm256_fmadd_ps(f, _mm256_set1_ps(h2f(w[r].d[b]) * x.d[b]), acc[r]);
            }
        }
        acc.map(|a| hsum(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_dequantized_matmul_within_activation_quantization_error() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = Tensor::randn(0f32, 1.0, (96, 128), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let k = Arc::new(QWeight::from_qtensor(&q)?);
            let exact_w = q.dequantize(&dev)?;
            assert_eq!(k.dequantize(&dev)?.to_vec2::<f32>()?, exact_w.to_vec2::<f32>()?);
            for rows in [1usize, 3, 8] {
                let x = Tensor::randn(0f32, 1.0, (rows, 128), &dev)?;
                let want = x.matmul(&exact_w.t()?)?;
                let got = k.forward(&x)?;
                let err = (got - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 0.02 * scale, "{dtype:?} rows {rows}: err {err} scale {scale}");
            }
        }
        Ok(())
    }

    #[test]
    fn simd_and_scalar_quantization_agree() -> Result<()> {
        let x: Vec<f32> = Tensor::randn(0f32, 3.0, 32 * 40, &Device::Cpu)?.to_vec1()?;
        for (i, b) in x.chunks_exact(32).enumerate() {
            // Exact ties too: values on a grid of 127/amax halves.
            let tie: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.5).collect();
            let b = if i == 0 { &tie[..] } else { b };
            let (mut q1, mut q2) = ([0i8; 32], [0i8; 32]);
            assert_eq!(quantize_block(b, &mut q1), scalar::quantize_block(b, &mut q2));
            assert_eq!(q1, q2);
        }
        Ok(())
    }

    #[test]
    fn simd_and_scalar_dots_agree() -> Result<()> {
        let dev = Device::Cpu;
        // Block counts with whole groups of eight, leftover pairs and an odd last block.
        for cols in [256usize, 576, 608, 1536] {
            let w = Tensor::randn(0f32, 1.0, (5, cols), &dev)?;
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, cols, &dev)?.to_vec1()?;
            let xq = quantize_row(&x);
            let q4 = QWeight::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
            let q8 = QWeight::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
            let mut got4 = vec![0f32; 5];
            let mut got8 = vec![0f32; 5];
            q4.rows_into(0, &xq, &mut got4);
            q8.rows_into(0, &xq, &mut got8);
            for r in 0..5 {
                let (Some(w4), Some(w8)) = (q4.q4_row(r), q8.q8_row(r)) else {
                    candle_core::bail!("row types")
                };
                let (a, s) = (got4[r], scalar::dot_q4_1(w4, &xq));
                assert!((a - s).abs() <= 1e-4 * s.abs().max(1.0), "q4_1 cols {cols} row {r}: {a} vs {s}");
                let (a, s) = (got8[r], scalar::dot_q8_0(w8, &xq));
                assert!((a - s).abs() <= 1e-4 * s.abs().max(1.0), "q8_0 cols {cols} row {r}: {a} vs {s}");
            }
        }
        Ok(())
    }
}
