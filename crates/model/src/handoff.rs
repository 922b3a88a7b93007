//! Ops whose forward result is computed off the autograd graph and handed over, so the graph
//! holds only what the hand-written backward needs — on every device.
//!
//! candle records each op's inputs in the graph until backward. Two places in training pay for
//! that: a frozen weight's matmul (candle's backward would compute the weight's gradient too) and
//! attention scores (`q·kᵀ`, `[b, heads, t, t]`, kept alive by the softmax that reads them). Here
//! the result is computed with ordinary (no-grad) tensor ops — candle's fused kernels on the CPU
//! or the GPU — and a custom op attaches it to the graph as a function of the inputs whose
//! gradients are wanted, with a backward of our own. The op's forward only hands the stored
//! result over (a copy on the device; the original is dropped at once).

use std::sync::Mutex;

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Storage, Tensor};

/// A result waiting to be handed to the graph by the op's forward (which runs once).
struct Slot(Mutex<Option<Tensor>>);

impl Slot {
    fn new(y: Tensor) -> Self {
        Self(Mutex::new(Some(y)))
    }

    fn take(&self, op: &str) -> Result<(Storage, Shape)> {
        let y = self.0.lock().ok().and_then(|mut g| g.take());
        let Some(y) = y else { candle_core::bail!("{op}: forward ran twice") };
        let y = y.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        if layout.start_offset() != 0 {
            candle_core::bail!("{op}: result is a view");
        }
        Ok((storage.try_clone(layout)?, y.shape().clone()))
    }

    fn cpu(&self, op: &str) -> Result<(CpuStorage, Shape)> {
        match self.take(op)? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{op}: result not on the CPU"),
        }
    }

    fn cuda(&self, op: &str) -> Result<(CudaStorage, Shape)> {
        match self.take(op)? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{op}: result not on the CUDA device"),
        }
    }
}

/// `x·Wᵀ` for a frozen `W` whose input needs a gradient (LoRA training). candle's matmul
/// backward computes the gradient of both operands, so a frozen weight would cost a second
/// full-size matmul and a weight-shaped buffer per layer per step (the LM head alone: 28M
/// floats for SmolLM2). The backward here returns only `∂L/∂x = ∂L/∂y · W`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.detach().matmul(&w.t()?)?;
    x.apply_op1(FrozenMatmul { y: Slot::new(y), w: w.clone() })
}

struct FrozenMatmul {
    y: Slot,
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.y.cpu(self.name())
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.y.cuda(self.name())
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Causal attention probabilities `softmax(scale · q·kᵀ)` for training, as a function of `q`
/// and `k` only: the `t × t` scores never enter the graph (only the probabilities, which the
/// following `·v` needs anyway). `q: [b, kv, rep·t, d]` (the `rep` query heads sharing a KV head
/// folded into the row axis; row `r` is query position `r % t`), `k: [b, kv, t, d]`.
///
/// `mask` is the additive causal mask `[t, t]` (0 / −∞) in `q`'s dtype, used off the CPU; the
/// CPU computes scale, mask and softmax in one pass of its own kernel instead.
/// Backward: `∂S = scale · P ⊙ (∂P − Σ ∂P ⊙ P)`, `∂q = ∂S·k`, `∂k = ∂Sᵀ·q`.
pub fn causal_attention_probs(q: &Tensor, k: &Tensor, t: usize, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = q.detach().matmul(&k.detach().t()?)?;
    let p = match (q.device(), mask) {
        (candle_core::Device::Cpu, _) => crate::attn_softmax::causal_softmax_no_grad(&scores, t, scale)?,
        (_, Some(mask)) => {
            let (b, kv, rows, keys) = scores.dims4()?;
            let rep = rows / t;
            let masked = (scores * scale)?.reshape((b, kv, rep, t, keys))?.broadcast_add(mask)?.reshape((b, kv, rows, keys))?;
            candle_nn::ops::softmax_last_dim(&masked)?
        }
        // One position: nothing to hide.
        (_, None) if t == 1 => candle_nn::ops::softmax_last_dim(&(scores * scale)?)?,
        (_, None) => candle_core::bail!("causal-attention-probs: a {t}×{t} mask is needed off the CPU"),
    };
    q.apply_op2(k, CausalProbs { p: Slot::new(p), scale })
}

struct CausalProbs {
    p: Slot,
    scale: f64,
}

impl CustomOp2 for CausalProbs {
    fn name(&self) -> &'static str {
        "causal-attention-probs"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.p.cpu(self.name())
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.p.cuda(self.name())
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, p: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Masked entries have p = 0, so they get no gradient without special handling.
        let dot = (grad * p)?.sum_keepdim(D::Minus1)?;
        let ds = (p * grad.broadcast_sub(&dot)?)?.affine(self.scale, 0.0)?;
        let dq = ds.matmul(&k.contiguous()?)?;
        let dk = ds.t()?.matmul(&q.contiguous()?)?;
        Ok((Some(dq), Some(dk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The composed reference: every op differentiable, the scores in the graph.
    fn reference(q: &Tensor, k: &Tensor, t: usize, scale: f64) -> Result<Tensor> {
        let (b, kv, rows, _) = q.dims4()?;
        let rep = rows / t;
        let mut m = vec![0f32; t * t];
        for s in 0..t {
            for j in s + 1..t {
                m[s * t + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (t, t), q.device())?;
        let s = (q.matmul(&k.t()?)? * scale)?.reshape((b, kv, rep, t, t))?.broadcast_add(&mask)?.reshape((b, kv, rows, t))?;
        candle_nn::ops::softmax(&s, D::Minus1)
    }

    #[test]
    fn causal_probs_match_the_composed_ops_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let (b, kv, rep, t, d) = (2, 2, 3, 5, 4);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, kv, rep * t, d), &dev)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, kv, t, d), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (b, kv, rep * t, t), &dev)?;
        let scale = 0.5;
        let ours = causal_attention_probs(q.as_tensor(), k.as_tensor(), t, scale, None)?;
        let refp = reference(q.as_tensor(), k.as_tensor(), t, scale)?;
        let diff = (&ours - &refp)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (refp * &w)?.sum_all()?.backward()?;
        for v in [&q, &k] {
            let (a, r) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
            let diff = (a - r)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "gradient differs by {diff}");
        }
        // With an explicit mask (the non-CPU path's formula, run here on the CPU tensors).
        let mut m = vec![0f32; t * t];
        (0..t).for_each(|s| (s + 1..t).for_each(|j| m[s * t + j] = f32::NEG_INFINITY));
        let mask = Tensor::from_vec(m, (t, t), &dev)?.to_dtype(DType::F32)?;
        let scores = q.as_tensor().matmul(&k.as_tensor().t()?)?;
        let masked = (scores * scale)?.reshape((b, kv, rep, t, t))?.broadcast_add(&mask)?.reshape((b, kv, rep * t, t))?;
        let p2 = candle_nn::ops::softmax_last_dim(&masked)?;
        let diff = (p2 - reference(q.as_tensor(), k.as_tensor(), t, scale)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "masked softmax differs by {diff}");
        Ok(())
    }

    #[test]
    fn frozen_matmul_gives_the_input_gradient_only() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let y = frozen_matmul(x.as_tensor(), &w)?;
        let r = x.as_tensor().matmul(&w.t()?)?;
        assert!((&y - &r)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        let g = y.sum_all()?.backward()?;
        let gr = r.sum_all()?.backward()?;
        let diff = (g.get(&x).expect("grad") - gr.get(&x).expect("grad"))?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        Ok(())
    }
}
