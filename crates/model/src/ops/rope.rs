//! Rotary position embeddings in HF's "rotate half" layout (`LlamaRotaryEmbedding`), with the
//! config's θ and scaling. Tables are computed once per model.

//!
//! Also the rotation as a differentiable op, and the heads' split (`[b, t, n·d]` → `[b, n, t, d]`,
//! rotated) and merge as one op each way: `swap12`, with a CPU body and a CUDA kernel
//! (`kernels/swap12.cu`).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::Slot;
use crate::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

/// Inverse frequencies after scaling, as transformers' `_compute_default_rope_parameters`,
/// `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters` define them.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    /// Tables cover `max_position_embeddings` positions (capped at 64Ki to bound memory; longer
    /// sequences are refused by `positions`).
    pub fn new(cfg: &ModelConfig, freq_factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let mut inv = inv_freq(cfg);
        // llama.cpp stores Llama-3.1-style scaling as per-frequency divisors (`rope_freqs.weight`).
        if let Some(ff) = freq_factors {
            for (f, d) in inv.iter_mut().zip(ff) {
                *f /= *d as f64;
            }
        }
        let max_positions = cfg.max_position_embeddings.clamp(1, 65_536);
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv {
                // Angles in f64 then rounded: HF computes them in f32, the difference is < 1 ulp of
                // the final f32 cos/sin for positions in range.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
            max_positions,
        })
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
            max_positions: self.max_positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos/sin for the given positions: `[t, d/2]` for a contiguous range shared by the whole
    /// batch, `[b, t, d/2]` when rows have their own positions (left padding).
    pub fn tables(&self, positions: &Positions) -> Result<(Tensor, Tensor)> {
        match positions {
            Positions::Range { start, len } => {
                if start + len > self.max_positions {
                    candle_core::bail!(
                        "position {} beyond the model's {} positions",
                        start + len,
                        self.max_positions
                    )
                }
                Ok((self.cos.narrow(0, *start, *len)?, self.sin.narrow(0, *start, *len)?))
            }
            Positions::PerRow { ids, b, t } => {
                let cos = self.cos.index_select(ids, 0)?;
                let sin = self.sin.index_select(ids, 0)?;
                let half = self.cos.dim(1)?;
                Ok((cos.reshape((*b, *t, half))?, sin.reshape((*b, *t, half))?))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Positions {
    Range {
        start: usize,
        len: usize,
    },
    /// `ids`: flattened `[b * t]` u32 positions.
    PerRow {
        ids: Tensor,
        b: usize,
        t: usize,
    },
}

/// Apply RoPE to `x: [b, heads, t, d]` with candle's fused kernel; `differentiable` attaches
/// its backward (the inverse rotation, `ops::rope::rope`).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        crate::ops::rope::rope(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope(x, cos, sin)
    }
}

pub fn positions_tensor(per_row: &[u32], b: usize, t: usize, device: &Device) -> Result<Positions> {
    let ids = Tensor::from_slice(per_row, b * t, device)?.to_dtype(DType::U32)?;
    Ok(Positions::PerRow { ids, b, t })
}

/// RoPE (rotate-half layout) with candle's fused kernel forward, differentiable: the rotation is
/// orthogonal, so its backward is the same kernel with `−sin`. `x: [b, heads, t, d]` contiguous;
/// `cos`/`sin`: `[t, d/2]` or `[b, t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    x.apply_op1(RopeGrad { y: Slot::new(y), cos: cos.clone(), sin: sin.clone() })
}

struct RopeGrad {
    y: Slot,
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for RopeGrad {
    handed_over!("rope", y, 1);

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope(&grad.contiguous()?, &self.cos, &self.sin.neg()?)?))
    }
}

/// `x: [b, t, n·d]` (a projection's output) → the heads `[b, n, t, d]`, RoPE'd when `rope` gives
/// the `[t, d/2]` tables, differentiable. On a GPU (and in f32 on the CPU) one kernel each way (transpose and rotation
/// together; backward the inverse rotation and transpose back) instead of a strided copy, the
/// rotation, and their backward's copies and gradient buffers.
pub fn split_heads(x: &Tensor, n: usize, d: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let shared_positions = rope.is_none_or(|(c, _)| c.rank() == 2);
    if !((crate::ops::cuda::available(x) || crate::ops::cpu::applies(x)) && shared_positions) {
        let y = x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
        return match rope {
            Some((c, s)) => self::rope(&y, c, s),
            None => Ok(y),
        };
    }
    let xd = x.detach().reshape((b, t, n, d))?;
    let y = crate::ops::rope::swap12(&xd, rope.map(|(c, s)| (c, s, 1, 1.0)))?;
    x.apply_op1(SplitHeads { y: Slot::new(y), rope: rope.map(|(c, s)| (c.clone(), s.clone())) })
}

struct SplitHeads {
    y: Slot,
    rope: Option<(Tensor, Tensor)>,
}

impl CustomOp1 for SplitHeads {
    handed_over!("split-heads", y, 1);

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // grad `[b, n, t, d]`: positions on axis 2, the inverse rotation.
        let dx = crate::ops::rope::swap12(grad, self.rope.as_ref().map(|(c, s)| (c, s, 2, -1.0)))?;
        Ok(Some(dx.reshape(x.shape())?))
    }
}

/// The heads `y: [b, n, t, d]` → `[b, t, n·d]` (attention's output into `o_proj`), differentiable;
/// one transpose kernel each way on a GPU.
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, n, t, d) = y.dims4()?;
    if !(crate::ops::cuda::available(y) || crate::ops::cpu::applies(y)) {
        return y.transpose(1, 2)?.reshape((b, t, n * d));
    }
    let out = crate::ops::rope::swap12(&y.detach(), None)?.reshape((b, t, n * d))?;
    y.apply_op1(MergeHeads { y: Slot::new(out) })
}

struct MergeHeads {
    y: Slot,
}

impl CustomOp1 for MergeHeads {
    handed_over!("merge-heads", y, 1);

    fn bwd(&self, y: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, t, d) = y.dims4()?;
        Ok(Some(crate::ops::rope::swap12(&grad.reshape((b, t, n, d))?, None)?))
    }
}

/// `x: [B, P, Q, d]` → `[B, Q, P, d]` (axes 1 and 2 swapped, contiguous), rotated by RoPE when
/// `rope` gives `(cos, sin, pos_axis, sign)`: tables `[positions, d/2]` indexed by axis
/// `pos_axis` (1 or 2) of `x`, `sign` −1 for the inverse rotation. One kernel.
pub fn swap12(x: &Tensor, rope: Option<(&Tensor, &Tensor, usize, f32)>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match rope {
        Some((c, s, pos_axis, sign)) => {
            x.apply_op3_no_bwd(&c.contiguous()?, &s.contiguous()?, &Swap12 { pos_axis, sign })
        }
        None => x.apply_op3_no_bwd(&x, &x, &Swap12 { pos_axis: 0, sign: 0.0 }),
    }
}

struct Swap12 {
    pos_axis: usize,
    sign: f32,
}

fn swap12_slice<'a>(st: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("swap12: input not contiguous".into()))?;
    Ok(&st.as_slice::<f32>()?[start..end])
}

// The CPU runs this op too (f32 training, `crate::ops::rope::swap12_cpu`).
impl CustomOp3 for Swap12 {
    fn name(&self) -> &'static str {
        "ft-swap12"
    }

    #[rustfmt::skip]
    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, c: &CpuStorage, cl: &Layout, s: &CpuStorage, sl: &Layout) -> Result<(CpuStorage, Shape)> {
        let rope = if self.sign == 0.0 { None } else { Some((swap12_slice(c, cl)?, swap12_slice(s, sl)?, self.pos_axis, self.sign)) };
        let out = crate::ops::rope::swap12_cpu(swap12_slice(x, xl)?, xl.shape().dims4()?, rope)?;
        let (b, p, q, d) = xl.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, q, p, d))))
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, xl: &Layout, c: &candle_core::CudaStorage, cl: &Layout, s: &candle_core::CudaStorage, sl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        launch::swap12(x, xl, c, cl, s, sl, self.pos_axis, self.sign)
    }
}

// The CPU body (f32).

/// `x: [B, P, Q, d]` (row-major) → `[B, Q, P, d]`, each `d`-row rotated by RoPE (rotate-half)
/// when `rope` gives `(cos, sin, pos_axis, sign)`: tables `[positions, d/2]` indexed by axis
/// `pos_axis` (1 or 2) of `x`, `sign` −1 for the inverse rotation. The CPU body of `swap12`:
/// splitting a projection into heads (and back) as one graph node instead of a reshape, a
/// transpose, a copy and the rotation, each with a gradient buffer in backward.
pub fn swap12_cpu(
    x: &[f32],
    (b, p, q, d): (usize, usize, usize, usize),
    rope: Option<(&[f32], &[f32], usize, f32)>,
) -> Result<Vec<f32>> {
    let half = d / 2;
    if x.len() != b * p * q * d {
        candle_core::bail!("swap12: {} elements for [{b}, {p}, {q}, {d}]", x.len());
    }
    if let Some((c, s, axis, _)) = rope {
        let positions = if axis == 1 { p } else { q };
        if d % 2 != 0 || !(axis == 1 || axis == 2) || c.len() < positions * half || s.len() < positions * half
        {
            candle_core::bail!(
                "swap12: rope tables of {} values for {positions} positions of {d}/2 (axis {axis})",
                c.len()
            );
        }
    }
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for qi in 0..q {
            for pi in 0..p {
                let src = &x[((bi * p + pi) * q + qi) * d..][..d];
                let Some((c, s, axis, sign)) = rope else {
                    out.extend_from_slice(src);
                    continue;
                };
                let pos = if axis == 1 { pi } else { qi };
                let (c, s) = (&c[pos * half..][..half], &s[pos * half..][..half]);
                let (x1, x2) = src.split_at(half);
                out.extend(
                    x1.iter().zip(x2).zip(c.iter().zip(s)).map(|((&a, &b), (&c, &s))| a * c - sign * b * s),
                );
                out.extend(
                    x1.iter().zip(x2).zip(c.iter().zip(s)).map(|((&a, &b), (&c, &s))| b * c + sign * a * s),
                );
            }
        }
    }
    Ok(out)
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn swap12(
        x: &CudaStorage,
        xl: &Layout,
        c: &CudaStorage,
        cl: &Layout,
        s: &CudaStorage,
        sl: &Layout,
        pos_axis: usize,
        sign: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, p, q, d) = xl.shape().dims4()?;
        if d % 2 != 0 {
            candle_core::bail!("swap12: odd head dim {d}")
        }
        if pos_axis > 0 {
            let positions = if pos_axis == 1 { p } else { q };
            let want = [positions, d / 2];
            if cl.dims().len() != 2
                || cl.dims()[0] < positions
                || cl.dims()[1] != d / 2
                || cl.shape() != sl.shape()
                || c.dtype() != x.dtype()
            {
                candle_core::bail!(
                    "swap12: rope tables {:?}/{:?} {:?} for {want:?}",
                    cl.shape(),
                    sl.shape(),
                    c.dtype()
                )
            }
        }
        let dev = x.device().clone();
        let n = b * p * q * d;
        let func = dev.get_or_load_custom_func(&format!("swap12_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let (p_i, q_i, d_i, pa, pairs) = (p as i32, q as i32, d as i32, pos_axis as i32, (n / 2) as i64);
        macro_rules! go {
            ($ty:ty) => {{
                let (xv, cv, sv) = (view!(x, xl, $ty), view!(c, cl, $ty), view!(s, sl, $ty));
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut bl = func.builder();
                bl.arg(&xv);
                bl.arg(&y);
                bl.arg(&cv);
                bl.arg(&sv);
                bl.arg(&p_i);
                bl.arg(&q_i);
                bl.arg(&d_i);
                bl.arg(&pa);
                bl.arg(&sign);
                bl.arg(&pairs);
                unsafe { bl.launch(flat(n / 2)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, Shape::from((b, q, p, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    #[test]
    fn fused_rope_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = ModelConfig::tiny(Family::Llama);
        let rope = Rope::new(&cfg, None, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 5, cfg.head_dim), &dev)?;
        let (c, s) = rope.tables(&Positions::Range { start: 3, len: 5 })?;
        let a = apply(&x, &c, &s, false)?;
        let b = candle_nn::rotary_emb::rope_slow(&x, &c, &s)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn llama3_scaling_leaves_high_frequencies_alone_and_divides_low_ones() {
        let mut cfg = ModelConfig::tiny(Family::Llama);
        cfg.head_dim = 128;
        cfg.rope_theta = 500_000.0;
        let plain = inv_freq(&cfg);
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = inv_freq(&cfg);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((plain[last] / 8.0 - scaled[last]).abs() < 1e-15);
    }
}
