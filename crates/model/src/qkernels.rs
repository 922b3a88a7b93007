//! Quantized linear weights (Q4_1, Q8_0) with AVX2 dot-product kernels, for the quantized path.
//!
//! Why hand-written: SmolLM2's GGUF is Q4_1 (+ a Q8_0 embedding/head), and candle 0.11 has no SIMD
//! kernel for Q4_1 on x86 (its `vec_dot` runs the scalar loop: 68% of decode time when profiled);
//! its Q8_0 kernel runs on a spinning thread pool that fights rayon for the two cores. Here the
//! GGUF's blocks are kept value-exact (scales widened to f32 at load) and each dot product computes
//! what llama.cpp's `ggml_vec_dot_q4_1_q8_1` / `ggml_vec_dot_q8_0_q8_0` compute: activations
//! quantized to 8 bits per block of 32, then `Σ d_w·d_x·Σ(q_w·q_x) (+ m_w·s_x for Q4_1)`.
//! Small batches (decode) use the kernels; larger ones (prefill) dequantize the weight and use the
//! f32 matmul, which is faster there and exact.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;
/// Rows of activations at or above which the dequantize + f32 matmul path is used.
const DENSE_MIN_ROWS: usize = 8;

/// Same 20 bytes as the GGUF block: decode is memory-bound, so scales stay f16 (F16C converts).
#[derive(Debug, Clone, Copy)]
struct Block4 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

#[derive(Debug, Clone, Copy)]
struct Block8 {
    d: f16,
    qs: [i8; 32],
}

/// Activations quantized like llama.cpp's `quantize_row_q8_1`: `x ≈ d·q`, `s = d·Σq`.
#[derive(Debug, Clone, Copy)]
struct BlockQ8 {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

#[derive(Debug)]
enum Blocks {
    Q4_1(Vec<Block4>),
    Q8_0(Vec<Block8>),
}

#[derive(Debug)]
pub struct QWeight {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
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
            candle_core::bail!("{:?} data has {} bytes, expected {}", q.dtype(), data.len(), rows * cols / QK * block_bytes)
        }
        let blocks = if block_bytes == 20 {
            Blocks::Q4_1(
                data.chunks_exact(20)
                    .map(|b| Block4 { d: f16_at(b, 0), m: f16_at(b, 2), qs: std::array::from_fn(|j| b[4 + j]) })
                    .collect(),
            )
        } else {
            Blocks::Q8_0(
                data.chunks_exact(34)
                    .map(|b| Block8 { d: f16_at(b, 0), qs: std::array::from_fn(|j| b[2 + j] as i8) })
                    .collect(),
            )
        };
        Ok(Self { rows, cols, blocks })
    }

    /// `[rows, cols]` f32, exactly the GGUF's values.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        match &self.blocks {
            Blocks::Q4_1(blocks) => out.par_chunks_mut(QK).zip(blocks.par_iter()).for_each(|(o, b)| {
                let (d, m) = (b.d.to_f32(), b.m.to_f32());
                for j in 0..16 {
                    o[j] = (b.qs[j] & 0x0F) as f32 * d + m;
                    o[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
                }
            }),
            Blocks::Q8_0(blocks) => out.par_chunks_mut(QK).zip(blocks.par_iter()).for_each(|(o, b)| {
                let d = b.d.to_f32();
                for (v, q) in o.iter_mut().zip(b.qs) {
                    *v = q as f32 * d;
                }
            }),
        }
        Tensor::from_vec(out, (self.rows, self.cols), device)
    }

    /// `x: [.., cols]` → `[.., rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
        let nb = self.cols / QK;
        let xq: Vec<BlockQ8> = xs.chunks_exact(QK).map(quantize_q8_1).collect();
        // Work items are (activation row, chunk of weight rows), run on candle's spinning barrier
        // pool (the caller's thread takes part): decode makes ~200 such calls per token, too many
        // short ones for rayon's sleep/wake. Each item owns its slice of the output.
        let chunk = 32;
        let mut result = vec![0f32; lead * self.rows];
        let items: Vec<std::sync::Mutex<(usize, &mut [f32])>> = result
            .chunks_mut(self.rows)
            .enumerate()
            .flat_map(|(i, row)| row.chunks_mut(chunk).enumerate().map(move |(c, o)| (i, c * chunk, o)))
            .map(|(i, start, o)| std::sync::Mutex::new((i * self.rows + start, o)))
            .collect();
        candle_core::utils::barrier_pool().execute_chunked(items.len(), |range| {
            for item in &items[range] {
                let mut guard = item.lock().unwrap_or_else(|e| e.into_inner());
                let (flat, ref mut o) = *guard;
                let (i, start) = (flat / self.rows, flat % self.rows);
                let xrow = &xq[i * nb..(i + 1) * nb];
                let row = |r: usize| r * nb..(r + 1) * nb;
                match &self.blocks {
                    Blocks::Q4_1(b) => {
                        let mut quads = o.chunks_exact_mut(4);
                        let mut r = start;
                        for q in &mut quads {
                            q.copy_from_slice(&dot4_q4_1([&b[row(r)], &b[row(r + 1)], &b[row(r + 2)], &b[row(r + 3)]], xrow));
                            r += 4;
                        }
                        for v in quads.into_remainder() {
                            *v = dot_q4_1(&b[row(r)], xrow);
                            r += 1;
                        }
                    }
                    Blocks::Q8_0(b) => {
                        let mut quads = o.chunks_exact_mut(4);
                        let mut r = start;
                        for q in &mut quads {
                            q.copy_from_slice(&dot4_q8_0([&b[row(r)], &b[row(r + 1)], &b[row(r + 2)], &b[row(r + 3)]], xrow));
                            r += 4;
                        }
                        for v in quads.into_remainder() {
                            *v = dot_q8_0(&b[row(r)], xrow);
                            r += 1;
                        }
                    }
                }
            }
        });
        drop(items);
        Tensor::from_vec(result, out_dims, x.device())
    }
}

fn quantize_q8_1(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    // llama.cpp stores d and s as f16; round through f16 to compute with the same numbers.
    BlockQ8 { d: f16::from_f32(d).to_f32(), s: f16::from_f32(sum as f32 * d).to_f32(), qs }
}

fn dot_q4_1(w: &[Block4], x: &[BlockQ8]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the callee only needs AVX2 and FMA, which this build enables for the whole
        // program (the cfg above; set by .cargo/config.toml's target-cpu).
        #[allow(unsafe_code)]
        return unsafe { simd::dot_q4_1(w, x) };
    }
    #[allow(unreachable_code)]
    scalar::dot_q4_1(w, x)
}

fn dot4_q4_1(w: [&[Block4]; 4], x: &[BlockQ8]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: as in `dot_q4_1`.
        #[allow(unsafe_code)]
        return unsafe { simd::dot4_q4_1(w, x) };
    }
    #[allow(unreachable_code)]
    w.map(|w| scalar::dot_q4_1(w, x))
}

fn dot_q8_0(w: &[Block8], x: &[BlockQ8]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: as in `dot_q4_1`.
        #[allow(unsafe_code)]
        return unsafe { simd::dot_q8_0(w, x) };
    }
    #[allow(unreachable_code)]
    scalar::dot_q8_0(w, x)
}

fn dot4_q8_0(w: [&[Block8]; 4], x: &[BlockQ8]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: as in `dot_q4_1`.
        #[allow(unsafe_code)]
        return unsafe { simd::dot4_q8_0(w, x) };
    }
    #[allow(unreachable_code)]
    w.map(|w| scalar::dot_q8_0(w, x))
}

/// Reference implementations (and the fallback on CPUs without AVX2).
mod scalar {
    use super::{Block4, Block8, BlockQ8};

    pub fn dot_q4_1(w: &[Block4], x: &[BlockQ8]) -> f32 {
        let mut sum = 0f32;
        for (b, y) in w.iter().zip(x) {
            let mut s = 0i32;
            for j in 0..16 {
                s += (b.qs[j] & 0x0F) as i32 * y.qs[j] as i32 + (b.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
            }
            sum += s as f32 * b.d.to_f32() * y.d + b.m.to_f32() * y.s;
        }
        sum
    }

    pub fn dot_q8_0(w: &[Block8], x: &[BlockQ8]) -> f32 {
        let mut sum = 0f32;
        for (b, y) in w.iter().zip(x) {
            let s: i32 = b.qs.iter().zip(&y.qs).map(|(&a, &c)| a as i32 * c as i32).sum();
            sum += s as f32 * b.d.to_f32() * y.d;
        }
        sum
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod simd {
    use std::arch::x86_64::*;

    use super::{Block4, Block8, BlockQ8};

    fn hsum(v: __m256) -> f32 {
        let lanes: [f32; 8] = bytemuck::cast(v);
        lanes.iter().sum()
    }

    /// One Q4_1 block times one Q8_1 block: (Σ q_w·q_x as 8 lanes of i32 → f32) · d_w·d_x.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn block_q4_1(b: &Block4, y: &BlockQ8, acc: __m256) -> __m256 {
        let low = _mm_set1_epi8(0x0F);
        let q: __m128i = bytemuck::cast(b.qs);
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        // Value j of the block is the low nibble of byte j, value j+16 the high nibble.
        let wq = _mm256_set_m128i(hi, lo);
        let yq: __m256i = bytemuck::cast(y.qs);
        // u8 × i8 pairs summed to i16 (|2·15·127| < 2^15: no saturation), then to i32.
        let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, yq), _mm256_set1_epi16(1));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(b.d.to_f32() * y.d), acc)
    }

    /// Two blocks per step into two accumulators (locals, so they stay in registers) hide the
    /// FMA latency; the `m·s` terms get two scalar chains for the same reason.
    #[target_feature(enable = "avx2,fma")]
    pub fn dot_q4_1(w: &[Block4], x: &[BlockQ8]) -> f32 {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut m0, mut m1) = (0f32, 0f32);
        let mut pairs_w = w.chunks_exact(2);
        let mut pairs_x = x.chunks_exact(2);
        for (bw, bx) in (&mut pairs_w).zip(&mut pairs_x) {
            acc0 = block_q4_1(&bw[0], &bx[0], acc0);
            acc1 = block_q4_1(&bw[1], &bx[1], acc1);
            m0 += bw[0].m.to_f32() * bx[0].s;
            m1 += bw[1].m.to_f32() * bx[1].s;
        }
        for (b, y) in pairs_w.remainder().iter().zip(pairs_x.remainder()) {
            acc0 = block_q4_1(b, y, acc0);
            m0 += b.m.to_f32() * y.s;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + m0 + m1
    }

    /// Four weight rows against one activation row: four independent load streams keep more
    /// memory requests in flight (decode is bound by reading the weights) and each activation
    /// block is loaded once for four rows.
    #[target_feature(enable = "avx2,fma")]
    pub fn dot4_q4_1(w: [&[Block4]; 4], x: &[BlockQ8]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        for (i, y) in x.iter().enumerate() {
            acc[0] = block_q4_1(&w[0][i], y, acc[0]);
            acc[1] = block_q4_1(&w[1][i], y, acc[1]);
            acc[2] = block_q4_1(&w[2][i], y, acc[2]);
            acc[3] = block_q4_1(&w[3][i], y, acc[3]);
            for r in 0..4 {
                mins[r] += w[r][i].m.to_f32() * y.s;
            }
        }
        [hsum(acc[0]) + mins[0], hsum(acc[1]) + mins[1], hsum(acc[2]) + mins[2], hsum(acc[3]) + mins[3]]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn block_q8_0(b: &Block8, y: &BlockQ8, acc: __m256) -> __m256 {
        let wq: __m256i = bytemuck::cast(b.qs);
        let yq: __m256i = bytemuck::cast(y.qs);
        // maddubs needs an unsigned operand: |w| × (y with w's sign), as llama.cpp does.
        // GGUF Q8_0 values are in [-127, 127], so |w| fits in u8 without wrapping.
        let prod = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(yq, wq)),
            _mm256_set1_epi16(1),
        );
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(b.d.to_f32() * y.d), acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot4_q8_0(w: [&[Block8]; 4], x: &[BlockQ8]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, y) in x.iter().enumerate() {
            acc[0] = block_q8_0(&w[0][i], y, acc[0]);
            acc[1] = block_q8_0(&w[1][i], y, acc[1]);
            acc[2] = block_q8_0(&w[2][i], y, acc[2]);
            acc[3] = block_q8_0(&w[3][i], y, acc[3]);
        }
        acc.map(hsum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_q8_0(w: &[Block8], x: &[BlockQ8]) -> f32 {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut pairs_w = w.chunks_exact(2);
        let mut pairs_x = x.chunks_exact(2);
        for (bw, bx) in (&mut pairs_w).zip(&mut pairs_x) {
            acc0 = block_q8_0(&bw[0], &bx[0], acc0);
            acc1 = block_q8_0(&bw[1], &bx[1], acc1);
        }
        for (b, y) in pairs_w.remainder().iter().zip(pairs_x.remainder()) {
            acc0 = block_q8_0(b, y, acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
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
            let k = QWeight::from_qtensor(&q)?;
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
    fn simd_and_scalar_dots_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 256), &dev)?;
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, 256, &dev)?.to_vec1()?;
        let xq: Vec<BlockQ8> = x.chunks_exact(QK).map(quantize_q8_1).collect();
        let q4 = QWeight::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
        let q8 = QWeight::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
        let (Blocks::Q4_1(b4), Blocks::Q8_0(b8)) = (&q4.blocks, &q8.blocks) else {
            candle_core::bail!("unexpected block types")
        };
        let rows = |r: usize| r * 8..(r + 1) * 8;
        let four4 = dot4_q4_1([&b4[rows(0)], &b4[rows(1)], &b4[rows(2)], &b4[rows(3)]], &xq);
        let four8 = dot4_q8_0([&b8[rows(0)], &b8[rows(1)], &b8[rows(2)], &b8[rows(3)]], &xq);
        for r in 0..4 {
            assert!((four4[r] - dot_q4_1(&b4[rows(r)], &xq)).abs() <= 1e-4 * four4[r].abs().max(1.0));
            assert!((four8[r] - dot_q8_0(&b8[rows(r)], &xq)).abs() <= 1e-4 * four8[r].abs().max(1.0));
            let rows = r * 8..(r + 1) * 8;
            let (a, s) = (dot_q4_1(&b4[rows.clone()], &xq), scalar::dot_q4_1(&b4[rows.clone()], &xq));
            assert!((a - s).abs() <= 1e-3 * s.abs().max(1.0), "q4_1 {a} vs {s}");
            let (a, s) = (dot_q8_0(&b8[rows.clone()], &xq), scalar::dot_q8_0(&b8[rows], &xq));
            assert!((a - s).abs() <= 1e-3 * s.abs().max(1.0), "q8_0 {a} vs {s}");
        }
        Ok(())
    }
}
