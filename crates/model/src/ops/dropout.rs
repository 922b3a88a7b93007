//! LoRA dropout as a counter-based hash of (seed, element index): nothing is stored between
//! forward and backward (backward re-derives the mask from the seed), and the mask of element
//! `i` does not depend on how a batch was cut — a row share that starts at element `offset` of the
//! whole batch draws exactly the mask the whole batch would give those elements.
//!
//! The hash is the GPU kernel's (`keep_elem` in `kernels/dropout.cu`): a CPU and a GPU run with the same
//! seed drop the same elements. On the CPU the loop is plain integer arithmetic that the compiler
//! vectorises (AVX2 is the build's baseline); per element it costs about what one pass over the
//! data does, where drawing the mask from a ChaCha stream (what this replaced) cost ~1.5 ns an
//! element and a stored mask 20 MB a layer at 1024 tokens of SmolLM2.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

/// LoRA's dropout on a layer's input: a counter-based hash of (`seed`, element index) applied
/// in one pass and never stored — backward applies the same seed to the gradient (see
/// [`crate::ops::dropout`]). `offset`: the index of the first element of `x` within the whole batch
/// (non-zero for a row share of it, on the CPU).
#[derive(Debug, Clone)]
pub struct DropoutMask {
    pub seed: u64,
    pub keep: f64,
    pub offset: u64,
}

impl DropoutMask {
    /// `x ⊙ mask` (`x` contiguous with the mask's element count).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            return crate::ops::dropout::apply(x, self.seed, self.keep, self.offset);
        }
        if self.offset != 0 {
            candle_core::bail!(
                "dropout: the GPU kernel draws whole batches only (element offset {})",
                self.offset
            );
        }
        crate::ops::dropout::dropout_apply_cuda(x, self.seed, self.keep)
    }
}

// The CPU body.

#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32-bit seed the per-element hash starts from.
#[inline(always)]
pub fn seed32(seed: u64) -> u32 {
    mix32(seed as u32 ^ mix32((seed >> 32) as u32))
}

/// Whether element `i` survives dropout for `s = seed32(seed)`: a 32-bit mix of (seed, index)
/// whose top 24 bits, as a fraction, fall below `keep`.
#[inline(always)]
pub fn keep_elem(s: u32, i: u64, keep: f32) -> bool {
    let h = mix32(i as u32 ^ mix32(s ^ (i >> 32) as u32));
    (h >> 8) as f32 * (1.0 / 16_777_216.0) < keep
}

/// The factor kept elements get: `1/keep` rounded to the dtype, as a stored mask would hold it.
fn kept_scale(dtype: DType, keep: f64) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f64(1.0 / keep).to_f32(),
        DType::F16 => f16::from_f64(1.0 / keep).to_f32(),
        _ => (1.0 / keep) as f32,
    }
}

/// `x ⊙ mask` on the CPU, where the mask of element `i` of `x` is that of element `offset + i`
/// for `seed`: `1/keep` where it survives, else 0. `x` is made contiguous first.
pub fn apply(x: &Tensor, seed: u64, keep: f64, offset: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&HashDropout { seed, keep, offset, apply: true })
}

/// The mask itself, shaped like `x` in its dtype (tests and profiling; training never stores it).
pub fn mask(x: &Tensor, seed: u64, keep: f64, offset: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&HashDropout { seed, keep, offset, apply: false })
}

struct HashDropout {
    seed: u64,
    keep: f64,
    offset: u64,
    apply: bool,
}

/// `h >> 8 < threshold` is `(h >> 8) · 2⁻²⁴ < keep` as an integer compare (both sides exact).
fn threshold(keep: f32) -> u32 {
    (keep as f64 * 16_777_216.0).ceil().min(u32::MAX as f64) as u32
}

/// The keep flags of elements `base..base + flags.len()` for `s = seed32(seed)`: those of
/// [`keep_elem`]. Within a chunk that does not cross a multiple of 2³² the index's high half is
/// the same: one mix for it, then a 32-bit loop the compiler vectorises.
#[inline(always)]
fn chunk_flags(s: u32, keep: f32, threshold: u32, base: u64, flags: &mut [bool]) {
    let lo = base as u32;
    if lo.checked_add(flags.len() as u32).is_some() {
        let hi = mix32(s ^ (base >> 32) as u32);
        for (k, f) in flags.iter_mut().enumerate() {
            *f = mix32(lo.wrapping_add(k as u32) ^ hi) >> 8 < threshold;
        }
    } else {
        for (k, f) in flags.iter_mut().enumerate() {
            *f = keep_elem(s, base + k as u64, keep);
        }
    }
}

/// Elements per chunk of flags.
const CHUNK: usize = 64;

/// `x ⊙ mask` in place for f32 (what [`apply`] computes), element `i` of `x` being element
/// `offset + i` of the whole batch.
pub fn apply_in_place(x: &mut [f32], seed: u64, keep: f64, offset: u64) {
    let (s, scale, keep) = (seed32(seed), kept_scale(DType::F32, keep), keep as f32);
    let threshold = threshold(keep);
    let mut flags = [false; CHUNK];
    for (c, chunk) in x.chunks_mut(CHUNK).enumerate() {
        let flags = &mut flags[..chunk.len()];
        chunk_flags(s, keep, threshold, offset + (c * CHUNK) as u64, flags);
        for (v, &on) in chunk.iter_mut().zip(flags.iter()) {
            *v = if on { *v * scale } else { 0.0 };
        }
    }
}

impl HashDropout {
    fn run<T: Copy>(&self, x: &[T], scale: f32, to: impl Fn(f32) -> T, from: impl Fn(T) -> f32) -> Vec<T> {
        let s = seed32(self.seed);
        let keep = self.keep as f32;
        let threshold = threshold(keep);
        let (zero, kept_value) = (to(0.0), to(scale));
        let mut out = vec![zero; x.len()];
        let mut flags = [false; CHUNK];
        for (c, (o, chunk)) in out.chunks_mut(CHUNK).zip(x.chunks(CHUNK)).enumerate() {
            let flags = &mut flags[..chunk.len()];
            chunk_flags(s, keep, threshold, self.offset + (c * CHUNK) as u64, flags);
            for ((o, &v), &on) in o.iter_mut().zip(chunk).zip(flags.iter()) {
                *o = match (on, self.apply) {
                    (false, _) => zero,
                    (true, true) => to(from(v) * scale),
                    (true, false) => kept_value,
                };
            }
        }
        out
    }
}

impl CustomOp1 for HashDropout {
    fn name(&self) -> &'static str {
        "hash-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("hash-dropout: input not contiguous".into()))?;
        let scale = kept_scale(s.dtype(), self.keep);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end], scale, |f| f, |v| v)),
            CpuStorage::BF16(v) => {
                CpuStorage::BF16(self.run(&v[start..end], scale, bf16::from_f32, |v| v.to_f32()))
            }
            CpuStorage::F16(v) => {
                CpuStorage::F16(self.run(&v[start..end], scale, f16::from_f32, |v| v.to_f32()))
            }
            other => candle_core::bail!("hash-dropout: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
}

// The CUDA kernel.

/// A dropout mask shaped like `x` in its dtype: `1/keep` (rounded to the dtype) where a
/// counter-based hash of (`seed`, element index) falls below `keep`, else 0 — one kernel,
/// deterministic for a seed.
pub fn dropout_mask_cuda(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Dropout { seed, keep, apply: false })
}

/// `x ⊙ dropout_mask(x, seed, keep)` in one kernel, the mask never stored (backward applies the
/// same seed to the gradient).
pub fn dropout_apply_cuda(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Dropout { seed, keep, apply: true })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Dropout {
    seed: u64,
    keep: f64,
    apply: bool,
}

gpu_only!(Dropout, 1, "ft-dropout", |self, s, l| launch::dropout(s, l, self.seed, self.keep, self.apply));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn dropout(
        s: &CudaStorage,
        l: &Layout,
        seed: u64,
        keep: f64,
        apply: bool,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let kind = if apply { "dropout_apply" } else { "dropout_mask" };
        let func = dev.get_or_load_custom_func(&format!("{kind}_{}", suffix(s.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let keep_f = keep as f32;
        // The kept elements' factor, rounded to the dtype as a stored mask would be.
        let scale =
            if s.dtype() == DType::BF16 { bf16::from_f64(1.0 / keep).to_f32() } else { (1.0 / keep) as f32 };
        let vec = i32::from(aligned8(l));
        macro_rules! go {
            ($ty:ty) => {{
                let x = if apply { Some(view!(s, l, $ty)) } else { None };
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = func.builder();
                if let Some(x) = &x {
                    b.arg(x);
                }
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&seed);
                b.arg(&keep_f);
                b.arg(&scale);
                if apply {
                    b.arg(&vec);
                }
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if s.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn keeps_the_expected_fraction_and_scales_kept_elements() -> Result<()> {
        let x = Tensor::ones((256, 1000), DType::F32, &Device::Cpu)?;
        let y: Vec<f32> = apply(&x, 7, 0.9, 0)?.flatten_all()?.to_vec1()?;
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept fraction {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Another seed drops other elements.
        let z: Vec<f32> = apply(&x, 8, 0.9, 0)?.flatten_all()?.to_vec1()?;
        assert!(y.iter().zip(&z).filter(|(a, b)| a != b).count() > 1000);
        Ok(())
    }

    #[test]
    fn the_chunked_loop_draws_keep_elem_across_the_32_bit_boundary() -> Result<()> {
        let x = Tensor::ones(300, DType::F32, &Device::Cpu)?;
        for offset in [0u64, 5, (1 << 32) - 100, (1 << 32) + 3] {
            let got: Vec<f32> = mask(&x, 3, 0.6, offset)?.to_vec1()?;
            let s = seed32(3);
            for (i, &g) in got.iter().enumerate() {
                assert_eq!(g != 0.0, keep_elem(s, offset + i as u64, 0.6), "element {i} at offset {offset}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_row_share_draws_the_whole_batchs_mask_for_its_rows() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (6, 5, 33), &Device::Cpu)?;
        let whole = apply(&x, 42, 0.7, 0)?;
        let share = apply(&x.narrow(0, 2, 3)?, 42, 0.7, 2 * 5 * 33)?;
        let diff = (whole.narrow(0, 2, 3)? - share)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // In place = out of place, also across the 32-bit index boundary.
        for offset in [2 * 5 * 33, (1u64 << 32) - 70] {
            let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            apply_in_place(&mut v, 42, 0.7, offset);
            let out: Vec<f32> = apply(&x, 42, 0.7, offset)?.flatten_all()?.to_vec1()?;
            assert_eq!(v, out);
        }
        // apply = x ⊙ mask
        let m = mask(&x, 42, 0.7, 0)?;
        let diff = ((&x * &m)? - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
