//! Attention, one entry point per call shape with its backends behind it:
//!
//! - [`attend`]: `softmax(scale·q·kᵀ + mask)·v` for a forward over new tokens (training, prefill,
//!   a cached single-stream step). Training's causal op ([`train`]: probabilities recomputed or
//!   kept for backward), the CPU's fused single-token decode over the cache ([`decode`]), or the
//!   composed form (candle's ops, split by KV head when the scores would be large).
//! - [`attend_rows`]: a batched decode step, one new token per row against each row's own cache
//!   ([`rows`] on the CPU, per-row composed ops elsewhere).
//!
//! The backend is fixed when the model is set up ([`Backend::for_model`], kept by `Llama` and
//! renewed by `cast`); a call's [`Params`] only say what kind of call it is. [`softmax`] holds the
//! causal softmax kernels (CPU and CUDA) that training's op and the fused layer ops use.

pub mod decode;
pub mod rows;
pub mod softmax;
pub mod train;

use candle_core::{D, DType, Device, Result, Tensor};

/// Where a model's attention runs, chosen from its device and dtype when it is loaded or cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// f32 on the CPU: our kernels (fused decode over the cache, all rows of a batched step in one
    /// call, the causal softmax of training).
    CpuF32,
    /// A CUDA device in a CUDA build, f32 or bf16: the fused causal-softmax kernels in training.
    Cuda,
    /// Anything else: candle's composed ops.
    Candle,
}

impl Backend {
    pub fn for_model(device: &Device, dtype: DType) -> Self {
        match device {
            Device::Cpu if dtype == DType::F32 => Self::CpuF32,
            Device::Cuda(_) if cfg!(feature = "cuda") && matches!(dtype, DType::F32 | DType::BF16) => {
                Self::Cuda
            }
            _ => Self::Candle,
        }
    }
}

/// What kind of call [`attend`] serves.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// New query positions this call (`q` holds `rep·t` rows per KV head).
    pub t: usize,
    /// `1/√head_dim`.
    pub scale: f64,
    /// Additive mask `[b, 1, 1, t, total]` (`None`: every key visible).
    pub mask: Option<&'a Tensor>,
    /// Training (every op differentiable).
    pub differentiable: bool,
    /// Training's plain causal attention over exactly the new tokens (no cache, padding or window):
    /// [`train::causal_attention`].
    pub causal_op: bool,
    /// `[t, t]` additive causal mask for `causal_op` where the backend has no fused causal softmax.
    pub causal_mask: Option<&'a Tensor>,
}

/// Above this size (bytes of f32 scores for all heads of one layer call) inference attention
/// runs one KV head's query group at a time.
const SCORES_SPLIT_BYTES: usize = 32 << 20;

/// `softmax(scale·q·kᵀ + mask)·v` for `q: [b, kv, rep·t, d]` (the `rep` query heads sharing a KV
/// head folded into the rows) against `k`, `v: [b, kv, total, d]`; returns `[b, kv, rep·t, d]`.
pub fn attend(backend: Backend, q: &Tensor, k: &Tensor, v: &Tensor, p: &Params<'_>) -> Result<Tensor> {
    let (b, kvh, rows, _) = q.dims4()?;
    let total = k.dim(2)?;
    let (t, scale) = (p.t, p.scale);
    let rep = rows / t.max(1);
    if p.causal_op {
        // Training: attention as one op over q, k, v; the scores and probabilities are
        // recomputed in backward instead of kept (or kept when small).
        return train::causal_attention(q, k, v, t, scale, p.causal_mask);
    }
    if backend == Backend::CpuF32 && t == 1 && b == 1 && p.mask.is_none() && !p.differentiable {
        // Single-stream decode: one fused op reading the cache in place.
        return decode::attend(q, k, v, scale as f32);
    }
    if !p.differentiable && t > 1 && kvh > 1 && b * kvh * rep * t * total * 4 > SCORES_SPLIT_BYTES {
        // A long prefill chunk: the scores of all heads at once would be `[b, h, t, total]`
        // floats, several copies live at a time; one KV head's group at a time keeps the
        // peak a `kvh`-th of that (same products, same order within each head).
        let mut ys = Vec::with_capacity(kvh);
        for j in 0..kvh {
            let (qj, kj, vj) = (q.narrow(1, j, 1)?, k.narrow(1, j, 1)?, v.narrow(1, j, 1)?);
            ys.push(scores_softmax_v(&qj, &kj, &vj, p, (b, 1, rep, t, total))?);
        }
        return Tensor::cat(&ys, 1);
    }
    scores_softmax_v(q, k, v, p, (b, kvh, rep, t, total))
}

/// One new token for each of `b` independent sequences: `q: [b, heads, d]` (after RoPE), `kv[r]`
/// row `r`'s visible keys and values `[1, kv_heads, total_r, d]` (views of its cache). Returns
/// `[b, 1, heads·d]`.
pub fn attend_rows(
    backend: Backend,
    q: &Tensor,
    kv: &[(Tensor, Tensor)],
    kv_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, d) = q.dims3()?;
    if backend == Backend::CpuF32 {
        // All rows in one call reading the caches in place.
        return rows::attend_rows(q, kv, scale as f32)?.reshape((b, 1, h * d));
    }
    let rep = h / kv_heads;
    let mut ys = Vec::with_capacity(b);
    for (r, (kc, vc)) in kv.iter().enumerate() {
        let qr = q.narrow(0, r, 1)?.reshape((1, kv_heads, rep, d))?;
        let att = candle_nn::ops::softmax_last_dim(&(qr.matmul(&kc.t()?)? * scale)?)?;
        ys.push(att.matmul(vc)?.reshape((1, 1, h * d))?);
    }
    Tensor::cat(&ys, 0)
}

/// The composed form: `softmax(q·kᵀ·scale + mask)·v` for `q: [b, g, rep·t, d]` against
/// `k, v: [b, g, total, d]`; `shape` = (b, g, rep, t, total).
fn scores_softmax_v(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Params<'_>,
    shape: (usize, usize, usize, usize, usize),
) -> Result<Tensor> {
    let (b, g, rep, t, total) = shape;
    let att = (q.matmul(&k.t()?)? * p.scale)?;
    let att = match p.mask {
        Some(m) => att.reshape((b, g, rep, t, total))?.broadcast_add(m)?.reshape((b, g, rep * t, total))?,
        None => att,
    };
    let probs = if p.differentiable {
        candle_nn::ops::softmax(&att, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    probs.matmul(v)
}
