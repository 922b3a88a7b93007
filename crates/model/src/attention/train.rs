//! Causal attention for training as one op over `q`, `k`, `v` ([`causal_attention`]): the
//! probabilities kept for backward when small, recomputed there otherwise.

use candle_core::{D, Result, Tensor};

use crate::ops::Slot;

/// Causal attention `softmax(scale · q·kᵀ)·v` for training, with only `q`, `k`, `v` kept for
/// backward: the `[b, heads, t, t]` probabilities are recomputed there (one more `q·kᵀ` and
/// softmax per layer) instead of being held from forward to backward — at 8×1024 tokens and 32
/// heads they are 0.5 GB per layer in bf16. `q: [b, kv, rep·t, d]` (the `rep` query heads sharing a
/// KV head folded into the row axis; row `r` is query position `r % t`), `k`, `v: [b, kv, t, d]`,
/// output `[b, kv, rep·t, d]`. `mask`: the additive causal mask `[t, t]` in `q`'s dtype, used off
/// the CPU (the CPU kernel masks itself). Backward: `∂v = Pᵀ·∂o`, `∂P = ∂o·vᵀ`, then as the probabilities'.
///
/// Sequences of up to [`KEEP_PROBS_MAX_T`] tokens keep the probabilities for backward instead
/// (at most `b·heads·2 MB` per layer in bf16): recomputing them costs a `q·kᵀ` and a softmax per
/// layer, 0.7 ms of a 13 ms layer step on the H200 at 8×1024 tokens.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    t: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let p = probs_no_grad(&q.detach(), &k.detach(), t, scale, mask)?;
    let out = p.matmul(&v.detach())?;
    let keep = if q.device().is_cpu() {
        p.elem_count() * p.dtype().size_in_bytes() <= KEEP_PROBS_MAX_BYTES_CPU
    } else {
        t <= KEEP_PROBS_MAX_T
    };
    let kept = keep.then_some(p);
    q.apply_op3(k, v, CausalAttention { out: Slot::new(out), t, scale, mask: mask.cloned(), probs: kept })
}

/// The longest sequence whose attention probabilities training keeps from forward to backward
/// on a GPU (their memory grows with the square of the length; longer ones are recomputed).
pub const KEEP_PROBS_MAX_T: usize = 1024;

/// On the CPU: the largest attention probabilities (bytes per layer call) kept for backward.
/// A SmolLM2 row share of 2×256 tokens holds 4.7 MB a layer (140 MB over 30 layers) and saves
/// a `q·kᵀ` and a softmax per layer in backward; long sequences still recompute.
pub const KEEP_PROBS_MAX_BYTES_CPU: usize = 16 << 20;

pub(crate) fn probs_no_grad(
    q: &Tensor,
    k: &Tensor,
    t: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    if crate::ops::cuda::available(&scores) {
        return crate::attention::softmax::causal_softmax_cuda(&scores, t, scale);
    }
    match (q.device(), mask) {
        (candle_core::Device::Cpu, _) => crate::attention::softmax::causal_softmax_no_grad(&scores, t, scale),
        (_, Some(mask)) => {
            let (b, kv, rows, keys) = scores.dims4()?;
            let rep = rows / t;
            let masked = (scores * scale)?
                .reshape((b, kv, rep, t, keys))?
                .broadcast_add(mask)?
                .reshape((b, kv, rows, keys))?;
            candle_nn::ops::softmax_last_dim(&masked)
        }
        // One position: nothing to hide.
        (_, None) if t == 1 => candle_nn::ops::softmax_last_dim(&(scores * scale)?),
        (_, None) => candle_core::bail!("causal attention: a {t}×{t} mask is needed off the CPU"),
    }
}

struct CausalAttention {
    out: Slot,
    t: usize,
    scale: f64,
    mask: Option<Tensor>,
    probs: Option<Tensor>,
}

impl candle_core::CustomOp3 for CausalAttention {
    handed_over!("causal-attention", out, 3);

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let p = match &self.probs {
            Some(p) => p.clone(),
            None => probs_no_grad(&q, &k, self.t, self.scale, self.mask.as_ref())?,
        };
        let grad = grad.contiguous()?;
        let dv = p.t()?.matmul(&grad)?;
        let dp = grad.matmul(&v.t()?)?;
        // Masked entries have p = 0, so they get no gradient without special handling.
        let ds = if crate::ops::cuda::available(&p) {
            crate::attention::softmax::causal_softmax_backward_cuda(&p, &dp, self.t, self.scale)?
        } else if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
            crate::attention::softmax::causal_softmax_backward(&p, &dp, self.t, self.scale)?
        } else {
            let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            (p * dp.broadcast_sub(&dot)?)?.affine(self.scale, 0.0)?
        };
        let dq = ds.matmul(&k.contiguous()?)?;
        let dk = ds.t()?.matmul(&q.contiguous()?)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
