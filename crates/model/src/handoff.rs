//! Ops whose forward result is computed off the autograd graph and handed over, so the graph
//! holds only what the hand-written backward needs — on every device.
//!
//! candle records each op's inputs in the graph until backward. Two places in training pay for
//! that: a frozen weight's matmul (candle's backward would compute the weight's gradient too) and
//! attention scores (`q·kᵀ`, `[b, heads, t, t]`, kept alive by the softmax that reads them). Here
//! the result is computed with ordinary (no-grad) tensor ops — candle's fused kernels on the CPU
//! or the GPU — and a custom op attaches it to the graph as a function of the inputs whose
//! gradients are wanted, with a backward of our own (some recompute what they need instead). The op's forward only hands the stored
//! result over (a copy on the device; the original is dropped at once).

use std::sync::Mutex;

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Storage, Tensor};

/// A result waiting to be handed to the graph by the op's forward (which runs once).
struct Slot(Mutex<Option<Handed>>);

enum Handed {
    /// A tensor: handed over as a copy of its storage.
    Tensor(Tensor),
    /// A CPU buffer of our own (see [`crate::cpu_train`]): moved, never copied.
    Cpu(CpuStorage, Shape),
}

impl Slot {
    fn new(y: Tensor) -> Self {
        Self(Mutex::new(Some(Handed::Tensor(y))))
    }

    fn cpu_buffer((storage, shape): (CpuStorage, Shape)) -> Self {
        Self(Mutex::new(Some(Handed::Cpu(storage, shape))))
    }

    fn take(&self, op: &str) -> Result<(Storage, Shape)> {
        let y = self.0.lock().ok().and_then(|mut g| g.take());
        let y = match y {
            None => candle_core::bail!("{op}: forward ran twice"),
            Some(Handed::Cpu(storage, shape)) => return Ok((Storage::Cpu(storage), shape)),
            Some(Handed::Tensor(y)) => y,
        };
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

/// `name`, `cpu_fwd` and `cuda_fwd` of an op whose result waits in `self.$slot` (arity 1–3).
macro_rules! handed_over {
    ($name:literal, $slot:ident, 1) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            self.$slot.cpu($name)
        }
        fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
            self.$slot.cuda($name)
        }
    };
    ($name:literal, $slot:ident, 2) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            self.$slot.cpu($name)
        }
        fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
            self.$slot.cuda($name)
        }
    };
    ($name:literal, $slot:ident, 3) => {
        fn name(&self) -> &'static str {
            $name
        }
        #[rustfmt::skip]
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            self.$slot.cpu($name)
        }
        #[rustfmt::skip]
        fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
            self.$slot.cuda($name)
        }
    };
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
    handed_over!("frozen-matmul", y, 1);

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

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

fn probs_no_grad(q: &Tensor, k: &Tensor, t: usize, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    if crate::cuda_kernels::available(&scores) {
        return crate::cuda_kernels::causal_softmax(&scores, t, scale);
    }
    match (q.device(), mask) {
        (candle_core::Device::Cpu, _) => crate::attn_softmax::causal_softmax_no_grad(&scores, t, scale),
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
        let ds = if crate::cuda_kernels::available(&p) {
            crate::cuda_kernels::causal_softmax_backward(&p, &dp, self.t, self.scale)?
        } else if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
            crate::attn_softmax::causal_softmax_backward(&p, &dp, self.t, self.scale)?
        } else {
            let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            (p * dp.broadcast_sub(&dot)?)?.affine(self.scale, 0.0)?
        };
        let dq = ds.matmul(&k.contiguous()?)?;
        let dk = ds.t()?.matmul(&q.contiguous()?)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// LoRA's dropout on a layer's input: a counter-based hash of (`seed`, element index) applied
/// in one pass and never stored — backward applies the same seed to the gradient (see
/// [`crate::dropout`]). `offset`: the index of the first element of `x` within the whole batch
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
            return crate::dropout::apply(x, self.seed, self.keep, self.offset);
        }
        if self.offset != 0 {
            candle_core::bail!(
                "dropout: the GPU kernel draws whole batches only (element offset {})",
                self.offset
            );
        }
        crate::cuda_kernels::dropout_apply(x, self.seed, self.keep)
    }
}

/// A frozen linear layer with its LoRA adapter as one op: `x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ` over
/// (`x: [n, in]`, `A: [r, in]`, `B: [out, r]`), `m` the dropout mask or none.
/// One graph node instead of about ten (candle's backward allocates and adds a gradient buffer
/// per node input), keeping only the small `h = s·(x ⊙ m)·Aᵀ` (and `x ⊙ m` on the CPU). Backward:
/// `∂B = ∂yᵀ·h`, `∂h = s·∂y·B`, `∂A = ∂hᵀ·(x ⊙ m)`, `∂x = ∂y·W + (∂h·A) ⊙ m`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&DropoutMask>,
) -> Result<Tensor> {
    let xd = x.detach();
    if crate::cpu_train::applies(&xd) && w.dtype() == candle_core::DType::F32 {
        // One buffer: the frozen product written, the adapter's accumulated onto it, moved to
        // the graph without a copy; `x ⊙ m` kept for `∂A` (see `LoraSaved`).
        let rows = xd.elem_count() / xd.dim(D::Minus1)?;
        let mut dims = xd.dims().to_vec();
        *dims.last_mut().expect("x has a last axis") = w.dim(0)?;
        let parts = LoraParts { w: w.clone(), a: a.clone(), b: b.clone(), scale, mask: mask.cloned() };
        let (saved, y) = LoraSaved::forward(&parts, &xd.contiguous()?.reshape((rows, ()))?)?;
        return x.apply_op3(
            a,
            b,
            LoraLinearCpu { y: Slot::cpu_buffer((CpuStorage::F32(y), Shape::from(dims))), saved },
        );
    }
    let xm = match mask {
        Some(m) => m.apply(&xd)?,
        None => xd.clone(),
    };
    let h = (xm.matmul(&a.detach().t()?)? * scale)?;
    let y = if crate::cuda_kernels::available(&xd) {
        // One output buffer: cuBLAS adds the adapter's product onto the base's.
        crate::cuda_kernels::matmul_sum(&[(&xd, w, true), (&h, &b.detach(), true)])?
    } else {
        (xd.matmul(&w.t()?)? + h.matmul(&b.detach().t()?)?)?
    };
    x.apply_op3(a, b, LoraLinear { y: Slot::new(y), w: w.clone(), h, mask: mask.cloned(), scale })
}

/// What a LoRA projection's CPU backward needs (f32): the frozen weight, the adapter's
/// variables, `h = s·(x ⊙ m)·Aᵀ` and `x ⊙ m` from forward.
struct LoraSaved {
    w: Tensor,
    a: Tensor,
    b: Tensor,
    h: Tensor,
    masked_input: Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
}

impl LoraSaved {
    /// The forward of a LoRA projection on the CPU (`x: [n, in]`): `x·Wᵀ + h·Bᵀ` as our own buffer.
    fn forward(p: &LoraParts, x: &Tensor) -> Result<(Self, Vec<f32>)> {
        let xm = match &p.mask {
            Some(m) => m.apply(x)?,
            None => x.clone(),
        };
        let (a, b) = (p.a.detach(), p.b.detach());
        let h = (xm.matmul(&a.t()?)? * p.scale)?;
        let y = crate::cpu_train::lora_forward(x, &p.w, &h, &b)?;
        Ok((Self { w: p.w.clone(), a, b, h, masked_input: xm, mask: p.mask.clone(), scale: p.scale }, y))
    }

    /// `(∂x, ∂A, ∂B)` for the gradient `grad: [n, out]` of the output (`∂x` when `want_dx`).
    fn backward(&self, grad: &Tensor, want_dx: bool) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let db = grad.t()?.matmul(&self.h)?;
        let dh = (grad.matmul(&self.b)? * self.scale)?;
        let da = dh.t()?.matmul(&self.masked_input)?;
        let dx = if want_dx {
            let mask = self.mask.as_ref().map(|m| (m.seed, m.keep, m.offset));
            Some(crate::cpu_train::lora_input_grad(grad, &self.w, &dh, &self.a, mask)?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}

/// A `cpu_train` result as a tensor (no copy).
fn cpu_tensor((storage, shape): (CpuStorage, Shape), device: &candle_core::Device) -> Result<Tensor> {
    let CpuStorage::F32(v) = storage else { candle_core::bail!("cpu_train: expected an f32 result") };
    Tensor::from_vec(v, shape, device)
}

/// A frozen dense layer's weight with its training LoRA adapter's parts, for fused ops.
#[derive(Debug, Clone)]
pub struct LoraParts {
    /// `[out, in]`, frozen.
    pub w: Tensor,
    /// `[r, in]` and `[out, r]`: the adapter's variables (in the graph).
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub mask: Option<DropoutMask>,
}

/// An adapter's `(A, B, scale, dropout mask)` (see `LinearAdapter::lora_parts`).
pub type LoraVars = (Tensor, Tensor, f64, Option<DropoutMask>);

/// `x + down(silu(gate(h)) ⊙ up(h))`, `h = RMSNorm(x)` — a decoder layer's MLP half with its
/// residual, all three projections frozen with training LoRA adapters — as one graph node on the
/// CPU (f32): the adapters' six variables enter packed into one vector, and backward is written
/// out here. Through separate ops every intermediate (`h` twice, gate, up, their product) gets a
/// zero-filled gradient buffer plus an add in candle's backward, ~4% of a SmolLM2 step.
/// `None` when it does not apply (another device or dtype): compose the separate ops.
pub fn lora_mlp_residual(
    x: &Tensor,
    norm_w: &Tensor,
    eps: f32,
    gate: &LoraParts,
    up: &LoraParts,
    down: &LoraParts,
) -> Result<Option<Tensor>> {
    let f32 = candle_core::DType::F32;
    if !crate::cpu_train::applies(x)
        || norm_w.dtype() != f32
        || [gate, up, down].iter().any(|p| p.w.dtype() != f32 || p.a.dtype() != f32)
    {
        return Ok(None);
    }
    let hidden = x.dim(D::Minus1)?;
    let rows = x.elem_count() / hidden;
    let xd = x.detach().contiguous()?.reshape((rows, hidden))?;
    let norm_w = norm_w.detach();
    let h = cpu_tensor(crate::cpu_train::rms_norm_forward(&xd, &norm_w, eps)?, x.device())?;
    let (gate_saved, g) = LoraSaved::forward(gate, &h)?;
    let (up_saved, u) = LoraSaved::forward(up, &h)?;
    let ffn = gate.w.dim(0)?;
    let (g, u) =
        (Tensor::from_vec(g, (rows, ffn), x.device())?, Tensor::from_vec(u, (rows, ffn), x.device())?);
    let s = cpu_tensor(crate::cpu_train::swiglu_forward(&g, &u)?, x.device())?;
    let (down_saved, mut y) = LoraSaved::forward(down, &s)?;
    drop(s);
    // The residual, added into the down projection's buffer.
    crate::cpu_train::add_into(&mut y, &xd)?;
    let pieces = [gate, up, down]
        .iter()
        .flat_map(|p| [p.a.flatten_all(), p.b.flatten_all()])
        .collect::<Result<Vec<_>>>()?;
    let packed = Tensor::cat(&pieces, 0)?;
    let y = Slot::cpu_buffer((CpuStorage::F32(y), x.shape().clone()));
    let op = LoraMlp { y, xd, norm_w, eps, g, u, saved: [gate_saved, up_saved, down_saved] };
    x.apply_op2(&packed, op).map(Some)
}

struct LoraMlp {
    y: Slot,
    xd: Tensor,
    norm_w: Tensor,
    eps: f32,
    g: Tensor,
    u: Tensor,
    /// gate, up, down.
    saved: [LoraSaved; 3],
}

impl CustomOp2 for LoraMlp {
    handed_over!("lora-mlp", y, 2);

    fn bwd(
        &self,
        x: &Tensor,
        _packed: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, hidden) = self.xd.dims2()?;
        let grad = grad.contiguous()?.reshape((rows, hidden))?;
        let [gate, up, down] = &self.saved;
        let (ds, da_d, db_d) = down.backward(&grad, true)?;
        let (dg, du) = crate::cpu_train::swiglu_backward(&self.g, &self.u, &ds.expect("asked for"))?;
        let (dh_g, da_g, db_g) = gate.backward(&dg, true)?;
        let (dh_u, da_u, db_u) = up.backward(&du, true)?;
        let dh = (dh_g.expect("asked for") + dh_u.expect("asked for"))?;
        let dx = (crate::cpu_train::rms_norm_input_grad(&self.xd, &self.norm_w, &dh, self.eps)? + &grad)?;
        let pieces = [da_g, db_g, da_u, db_u, da_d, db_d]
            .iter()
            .map(Tensor::flatten_all)
            .collect::<Result<Vec<_>>>()?;
        Ok((Some(dx.reshape(x.shape())?), Some(Tensor::cat(&pieces, 0)?)))
    }
}

/// The shape of attention for [`lora_attention_residual`]: `b` rows of `t` tokens, `heads`
/// query heads sharing `kv_heads` key/value heads of `head_dim`, RoPE tables `[t, head_dim/2]`.
pub struct AttentionShape<'a> {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

/// `x + o(attention(rope(q(h)), rope(k(h)), v(h)))`, `h = RMSNorm(x)` — a decoder layer's causal
/// self-attention half with its residual, the four projections frozen with training LoRA adapters
/// (q, k, v, o) — as one graph node on the CPU (f32), like [`lora_mlp_residual`]: the eight adapter
/// variables packed into one vector, backward written out (the heads' split and RoPE, attention's
/// softmax and products, the projections). `None` when it does not apply.
pub fn lora_attention_residual(
    x: &Tensor,
    norm_w: &Tensor,
    eps: f32,
    shape: &AttentionShape<'_>,
    proj: [&LoraParts; 4],
) -> Result<Option<Tensor>> {
    let f32 = candle_core::DType::F32;
    let &AttentionShape { b, t, heads, kv_heads, head_dim: d, cos, sin } = shape;
    if !crate::cpu_train::applies(x)
        || norm_w.dtype() != f32
        || proj.iter().any(|p| p.w.dtype() != f32 || p.a.dtype() != f32)
        || cos.rank() != 2
        || kv_heads == 0
        || heads % kv_heads != 0
    {
        return Ok(None);
    }
    let hidden = x.dim(D::Minus1)?;
    let rows = b * t;
    let dev = x.device();
    let xd = x.detach().contiguous()?.reshape((rows, hidden))?;
    let norm_w = norm_w.detach();
    let h = cpu_tensor(crate::cpu_train::rms_norm_forward(&xd, &norm_w, eps)?, dev)?;
    let [qp, kp, vp, op] = proj;
    let (q_saved, q) = LoraSaved::forward(qp, &h)?;
    let (k_saved, k) = LoraSaved::forward(kp, &h)?;
    let (v_saved, v) = LoraSaved::forward(vp, &h)?;
    drop(h);
    let rot = Some((cos, sin, 1, 1.0));
    let swap = crate::cuda_kernels::swap12;
    let rep = heads / kv_heads;
    // [b, t, n, d] → [b, n, t, d]; the rep query heads of a KV head folded into the rows.
    let q = swap(&Tensor::from_vec(q, (b, t, heads, d), dev)?, rot)?.reshape((b, kv_heads, rep * t, d))?;
    let k = swap(&Tensor::from_vec(k, (b, t, kv_heads, d), dev)?, rot)?;
    let v = swap(&Tensor::from_vec(v, (b, t, kv_heads, d), dev)?, None)?;
    let scale = 1.0 / (d as f64).sqrt();
    let p = probs_no_grad(&q, &k, t, scale, None)?;
    let att = p.matmul(&v)?.reshape((b, heads, t, d))?;
    let merged = swap(&att, None)?.reshape((rows, heads * d))?;
    drop(att);
    let (o_saved, mut y) = LoraSaved::forward(op, &merged)?;
    drop(merged);
    crate::cpu_train::add_into(&mut y, &xd)?;
    let probs = (p.elem_count() * 4 <= KEEP_PROBS_MAX_BYTES_CPU).then_some(p);
    let pieces =
        proj.iter().flat_map(|p| [p.a.flatten_all(), p.b.flatten_all()]).collect::<Result<Vec<_>>>()?;
    let packed = Tensor::cat(&pieces, 0)?;
    let op = LoraAttention {
        y: Slot::cpu_buffer((CpuStorage::F32(y), x.shape().clone())),
        xd,
        norm_w,
        eps,
        dims: (b, t, heads, kv_heads, d),
        cos: cos.clone(),
        sin: sin.clone(),
        q,
        k,
        v,
        probs,
        saved: [q_saved, k_saved, v_saved, o_saved],
    };
    x.apply_op2(&packed, op).map(Some)
}

struct LoraAttention {
    y: Slot,
    xd: Tensor,
    norm_w: Tensor,
    eps: f32,
    /// b, t, heads, kv heads, head dim.
    dims: (usize, usize, usize, usize, usize),
    cos: Tensor,
    sin: Tensor,
    /// The heads after RoPE: `q: [b, kv, rep·t, d]`, `k`, `v: [b, kv, t, d]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities when small enough to keep, else recomputed.
    probs: Option<Tensor>,
    /// q, k, v, o.
    saved: [LoraSaved; 4],
}

impl CustomOp2 for LoraAttention {
    handed_over!("lora-attention", y, 2);

    fn bwd(
        &self,
        x: &Tensor,
        _packed: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, heads, kv_heads, d) = self.dims;
        let (rows, hidden) = self.xd.dims2()?;
        let grad = grad.contiguous()?.reshape((rows, hidden))?;
        let [qs, ks, vs, os] = &self.saved;
        let swap = crate::cuda_kernels::swap12;
        let (dm, da_o, db_o) = os.backward(&grad, true)?;
        let rep = heads / kv_heads;
        let dout = swap(&dm.expect("asked for").reshape((b, t, heads, d))?, None)?.reshape((
            b,
            kv_heads,
            rep * t,
            d,
        ))?;
        let scale = 1.0 / (d as f64).sqrt();
        let p = match &self.probs {
            Some(p) => p.clone(),
            None => probs_no_grad(&self.q, &self.k, t, scale, None)?,
        };
        let dv = p.t()?.matmul(&dout)?;
        let dp = dout.matmul(&self.v.t()?)?;
        drop(dout);
        let ds = crate::attn_softmax::causal_softmax_backward(&p, &dp, t, scale)?;
        drop((p, dp));
        let dq = ds.matmul(&self.k)?.reshape((b, heads, t, d))?;
        let dk = ds.t()?.matmul(&self.q)?;
        drop(ds);
        // Back to [b, t, n, d] (= [rows, n·d]) with the inverse rotation (positions on axis 2).
        let inv = Some((&self.cos, &self.sin, 2, -1.0));
        let dq = swap(&dq, inv)?.reshape((rows, heads * d))?;
        let dk = swap(&dk, inv)?.reshape((rows, kv_heads * d))?;
        let dv = swap(&dv, None)?.reshape((rows, kv_heads * d))?;
        let (dh_q, da_q, db_q) = qs.backward(&dq, true)?;
        let (dh_k, da_k, db_k) = ks.backward(&dk, true)?;
        let (dh_v, da_v, db_v) = vs.backward(&dv, true)?;
        let dh = ((dh_q.expect("asked for") + dh_k.expect("asked for"))? + dh_v.expect("asked for"))?;
        let dx = (crate::cpu_train::rms_norm_input_grad(&self.xd, &self.norm_w, &dh, self.eps)? + &grad)?;
        let pieces = [da_q, db_q, da_k, db_k, da_v, db_v, da_o, db_o]
            .iter()
            .map(Tensor::flatten_all)
            .collect::<Result<Vec<_>>>()?;
        Ok((Some(dx.reshape(x.shape())?), Some(Tensor::cat(&pieces, 0)?)))
    }
}

struct LoraLinear {
    y: Slot,
    w: Tensor,
    h: Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
}

/// [`lora_linear`] on the CPU in f32.
struct LoraLinearCpu {
    y: Slot,
    saved: LoraSaved,
}

impl candle_core::CustomOp3 for LoraLinearCpu {
    handed_over!("lora-linear", y, 3);

    fn bwd(
        &self,
        x: &Tensor,
        _a: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = grad.elem_count() / grad.dim(D::Minus1)?;
        let (dx, da, db) = self.saved.backward(&grad.contiguous()?.reshape((rows, ()))?, x.track_op())?;
        Ok((dx.map(|dx| dx.reshape(x.shape())).transpose()?, Some(da), Some(db)))
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    handed_over!("lora-linear", y, 3);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.t()?.matmul(&self.h)?;
        let dh = (grad.matmul(&b.detach())? * self.scale)?;
        let xd = x.detach();
        let xm = match &self.mask {
            Some(m) => m.apply(&xd)?,
            None => xd,
        };
        let da = dh.t()?.matmul(&xm)?;
        let dx = if x.track_op() {
            let a = a.detach();
            match &self.mask {
                // Without dropout both products go into one buffer on a GPU.
                None if crate::cuda_kernels::available(&grad) => {
                    Some(crate::cuda_kernels::matmul_sum(&[(&grad, &self.w, false), (&dh, &a, false)])?)
                }
                None => Some((grad.matmul(&self.w)? + dh.matmul(&a)?)?),
                Some(m) => Some((grad.matmul(&self.w)? + m.apply(&dh.matmul(&a)?)?)?),
            }
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}

/// SwiGLU `silu(g) ⊙ u`, differentiable, with only `g` and `u` kept for backward (the composed
/// form keeps `silu(g)` and builds about ten `[n, ffn]` temporaries in backward). On a GPU one
/// kernel each way; `∂g = ∂y⊙u⊙σ(g)⊙(1 + g⊙(1 − σ(g)))`, `∂u = ∂y⊙silu(g)`.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (gd, ud) = (g.detach(), u.detach());
    if crate::cpu_train::applies(&gd) {
        return g
            .apply_op2(u, SwiGluGrad { y: Slot::cpu_buffer(crate::cpu_train::swiglu_forward(&gd, &ud)?) });
    }
    let y = if crate::cuda_kernels::available(&gd) {
        crate::cuda_kernels::swiglu(&gd, &ud)?
    } else {
        (gd.silu()? * &ud)?
    };
    g.apply_op2(u, SwiGluGrad { y: Slot::new(y) })
}

struct SwiGluGrad {
    y: Slot,
}

impl CustomOp2 for SwiGluGrad {
    handed_over!("swiglu", y, 2);

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u) = (g.detach(), u.detach());
        if crate::cuda_kernels::available(&g) {
            let both = crate::cuda_kernels::swiglu_backward(&g, &u, grad)?;
            return Ok((Some(both.get(0)?), Some(both.get(1)?)));
        }
        if crate::cpu_train::applies(&g) {
            let (dg, du) = crate::cpu_train::swiglu_backward(&g, &u, grad)?;
            return Ok((Some(dg), Some(du)));
        }
        let s = candle_nn::ops::sigmoid(&g)?;
        let dg = ((grad * &u)? * &s)?.mul(&((&g * (1.0 - &s)?)? + 1.0)?)?;
        let du = (grad * (&g * &s)?)?;
        Ok((Some(dg), Some(du)))
    }
}

/// RMSNorm `x · rsqrt(mean(x²) + ε) · w` with candle's fused kernel forward, differentiable:
/// only `x` (kept anyway: it is the residual stream) stays in the graph, instead of the five
/// f32 intermediates of the composed form. `∂x = r·(∂y⊙w) − x·r³·mean((∂y⊙w)⊙x)`,
/// `∂w = Σ_rows ∂y⊙x·r` (only when `w` is trained), computed in f32.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if crate::cpu_train::applies(x) && w.dtype() == candle_core::DType::F32 {
        let y = Slot::cpu_buffer(crate::cpu_train::rms_norm_forward(&x.detach(), &w.detach(), eps)?);
        return x.apply_op2(w, RmsNormGrad { y, eps: f64::from(eps) });
    }
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, &w.detach(), eps)?;
    x.apply_op2(w, RmsNormGrad { y: Slot::new(y), eps: f64::from(eps) })
}

struct RmsNormGrad {
    y: Slot,
    eps: f64,
}

impl CustomOp2 for RmsNormGrad {
    handed_over!("rms-norm", y, 2);

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !w.track_op() && crate::cuda_kernels::available(x) {
            let dx = crate::cuda_kernels::rms_norm_backward(&x.detach(), &w.detach(), grad, self.eps as f32)?;
            return Ok((Some(dx), None));
        }
        if !w.track_op() && crate::cpu_train::applies(x) && w.dtype() == candle_core::DType::F32 {
            return Ok((
                Some(crate::cpu_train::rms_norm_input_grad(&x.detach(), &w.detach(), grad, self.eps as f32)?),
                None,
            ));
        }
        let f32 = candle_core::DType::F32;
        let x32 = x.to_dtype(f32)?;
        let g32 = grad.to_dtype(f32)?;
        let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let gw = g32.broadcast_mul(&w.to_dtype(f32)?)?;
        let dot = (&gw * &x32)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?.to_dtype(x.dtype())?;
        let dw = if w.track_op() {
            let hidden = w.dim(0)?;
            let xr = x32.broadcast_mul(&r)?;
            Some((g32 * xr)?.reshape(((), hidden))?.sum(0)?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
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
    if !((crate::cuda_kernels::available(x) || crate::cpu_train::applies(x)) && shared_positions) {
        let y = x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
        return match rope {
            Some((c, s)) => self::rope(&y, c, s),
            None => Ok(y),
        };
    }
    let xd = x.detach().reshape((b, t, n, d))?;
    let y = crate::cuda_kernels::swap12(&xd, rope.map(|(c, s)| (c, s, 1, 1.0)))?;
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
        let dx = crate::cuda_kernels::swap12(grad, self.rope.as_ref().map(|(c, s)| (c, s, 2, -1.0)))?;
        Ok(Some(dx.reshape(x.shape())?))
    }
}

/// The heads `y: [b, n, t, d]` → `[b, t, n·d]` (attention's output into `o_proj`), differentiable;
/// one transpose kernel each way on a GPU.
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, n, t, d) = y.dims4()?;
    if !(crate::cuda_kernels::available(y) || crate::cpu_train::applies(y)) {
        return y.transpose(1, 2)?.reshape((b, t, n * d));
    }
    let out = crate::cuda_kernels::swap12(&y.detach(), None)?.reshape((b, t, n * d))?;
    y.apply_op1(MergeHeads { y: Slot::new(out) })
}

struct MergeHeads {
    y: Slot,
}

impl CustomOp1 for MergeHeads {
    handed_over!("merge-heads", y, 1);

    fn bwd(&self, y: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, t, d) = y.dims4()?;
        Ok(Some(crate::cuda_kernels::swap12(&grad.reshape((b, t, n, d))?, None)?))
    }
}

/// Rows of logits per chunk: about 64M f32 values (256 MB) at a time.
fn ce_chunk_rows(vocab: usize) -> usize {
    ((64usize << 20) / vocab.max(1)).max(1)
}

/// `Σ_i logsumexp(h_i·Wᵀ) − (h_i·Wᵀ)[target_i]` — the summed cross-entropy of a frozen LM head
/// `W: [vocab, hidden]` over `h: [n, hidden]` — computed in row chunks with f32 logits that are
/// never kept: the full `[n, vocab]` logits (and their f32 copy, exponentials and gradient) never
/// exist at once. When `h` needs a gradient, each chunk's `∂h = (softmax − onehot)·W` is computed
/// right there, while its logits exist (the loss is a sum, so backward only scales it by the
/// incoming gradient): no second head matmul in backward. Returns an f32 scalar.
pub fn frozen_head_cross_entropy_sum(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(frozen_head_cross_entropy(h, w, targets, false)?.0)
}

/// [`frozen_head_cross_entropy_sum`] and each row's loss on the host, from the same pass (the
/// per-example loss of training's loss-spike signal costs no second head product).
pub fn frozen_head_cross_entropy_rows(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Vec<f32>)> {
    let (total, rows) = frozen_head_cross_entropy(h, w, targets, true)?;
    Ok((total, rows.unwrap_or_default()))
}

fn frozen_head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    per_row: bool,
) -> Result<(Tensor, Option<Vec<f32>>)> {
    let (n, _) = h.dims2()?;
    let chunk = ce_chunk_rows(w.dim(0)?);
    let hd = h.detach();
    let fused = crate::cuda_kernels::available(h);
    let want_grad = h.track_op();
    let mut total = Tensor::zeros((), candle_core::DType::F32, h.device())?;
    let mut rows: Vec<f32> = Vec::with_capacity(if per_row { n } else { 0 });
    let mut dh = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let tg = targets.narrow(0, start, len)?;
        if crate::cpu_train::applies(&hd) && w.dtype() == candle_core::DType::F32 {
            // Logits into a buffer of our own, turned into their gradient in place.
            let vocab = w.dim(0)?;
            let mut logits = crate::cpu_train::product(&hd.narrow(0, start, len)?, &w.t()?, 1.0)?;
            let losses = crate::fastmath::cross_entropy_rows_in_place(
                &mut logits,
                vocab,
                &tg.to_vec1::<u32>()?,
                want_grad,
            )?;
            total = (total + crate::fastmath::total(&losses))?;
            if per_row {
                rows.extend_from_slice(&losses);
            }
            if want_grad {
                dh.push(Tensor::from_vec(logits, (len, vocab), h.device())?.matmul(w)?);
            }
            start += len;
            continue;
        }
        let logits = hd.narrow(0, start, len)?.matmul(&w.t()?)?;
        if fused {
            // One pass per row over the logits as they are (bf16 on a GPU), f32 inside.
            let st = crate::cuda_kernels::cross_entropy_rows(&logits, &tg)?;
            let row_loss = st.narrow(1, 0, 1)?;
            total = (total + row_loss.sum_all()?)?;
            if per_row {
                rows.extend(row_loss.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?);
            }
            if want_grad {
                dh.push(crate::cuda_kernels::cross_entropy_backward(&logits, &tg, &st, 1.0)?.matmul(w)?);
            }
        } else if hd.device().is_cpu() {
            // Two passes per row (fastmath): loss and softmax − onehot, exponentials vectorised.
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let (losses, d) = crate::fastmath::cross_entropy_rows(&logits, &tg.to_vec1::<u32>()?, want_grad)?;
            total = (total + crate::fastmath::total(&losses))?;
            if per_row {
                rows.extend_from_slice(&losses);
            }
            if let Some(d) = d {
                dh.push(d.to_dtype(h.dtype())?.matmul(w)?);
            }
        } else {
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let lse = logits.log_sum_exp(D::Minus1)?;
            let tgt = logits.gather(&tg.unsqueeze(1)?, 1)?.squeeze(1)?;
            let row_loss = (&lse - &tgt)?;
            total = (total + row_loss.sum_all()?)?;
            if per_row {
                rows.extend(row_loss.to_vec1::<f32>()?);
            }
            if want_grad {
                let p = logits.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
                let minus_one = Tensor::full(-1f32, (len, 1), h.device())?;
                dh.push(p.scatter_add(&tg.unsqueeze(1)?, &minus_one, 1)?.to_dtype(h.dtype())?.matmul(w)?);
            }
        }
        start += len;
    }
    let rows = per_row.then_some(rows);
    if !want_grad {
        return Ok((total, rows));
    }
    Ok((h.apply_op1(HeadCrossEntropy { y: Slot::new(total), dh: Tensor::cat(&dh, 0)? })?, rows))
}

struct HeadCrossEntropy {
    y: Slot,
    /// `∂(loss)/∂h`, computed in forward.
    dh: Tensor,
}

impl CustomOp1 for HeadCrossEntropy {
    handed_over!("head-cross-entropy", y, 1);

    fn bwd(&self, _h: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Scaled on the device: no read-back of the incoming gradient.
        Ok(Some(self.dh.broadcast_mul(&grad.to_dtype(self.dh.dtype())?)?))
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
        let s = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, kv, rep, t, t))?
            .broadcast_add(&mask)?
            .reshape((b, kv, rows, t))?;
        candle_nn::ops::softmax(&s, D::Minus1)
    }

    /// The CPU, and in a CUDA build with a GPU present, GPU 0 (where the fused kernels run).
    fn devices() -> Vec<Device> {
        let mut d = vec![Device::Cpu];
        if cfg!(feature = "cuda") {
            match Device::new_cuda(0) {
                Ok(g) => d.push(g),
                Err(e) => eprintln!("no CUDA device ({e}): the kernel paths are not tested"),
            }
        }
        d
    }

    fn randn(shape: &[usize], dev: &Device) -> Result<Tensor> {
        Tensor::randn(0f32, 1.0, shape, dev)
    }

    fn var(shape: &[usize], dev: &Device) -> Result<Var> {
        Var::from_tensor(&randn(shape, dev)?)
    }

    #[test]
    fn frozen_matmul_gives_the_input_gradient_only() -> Result<()> {
        for dev in devices() {
            let x = var(&[3, 4], &dev)?;
            let w = randn(&[5, 4], &dev)?;
            let y = frozen_matmul(x.as_tensor(), &w)?;
            let r = x.as_tensor().matmul(&w.t()?)?;
            assert!((&y - &r)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? < 1e-5);
            let g = y.sum_all()?.backward()?;
            let gr = r.sum_all()?.backward()?;
            let diff = (g.get(&x).expect("grad") - gr.get(&x).expect("grad"))?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5);
        }
        Ok(())
    }

    /// [`grads_agree`] relative to the largest reference value (and at least 1): for long
    /// chains of products on random inputs, where gradients reach ~100 and f32 rounding with it.
    fn grads_agree_rel(ours: &Tensor, reference: &Tensor, vars: &[&Var], tol: f32) -> Result<()> {
        let max_abs = |t: &Tensor| -> Result<f32> { t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
        let fwd = max_abs(&(ours - reference)?)?;
        assert!(fwd <= tol * max_abs(reference)?.max(1.0), "forward differs by {fwd}");
        let w = Tensor::randn(0f32, 1.0, ours.shape(), ours.device())?;
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (reference * &w)?.sum_all()?.backward()?;
        for v in vars {
            let (a, r) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
            let (diff, scale) = (max_abs(&(a - r)?)?, max_abs(r)?.max(1.0));
            assert!(diff <= tol * scale, "gradient differs by {diff} (largest {scale})");
        }
        Ok(())
    }

    fn grads_agree(ours: &Tensor, reference: &Tensor, vars: &[&Var], tol: f32) -> Result<()> {
        let fwd = (ours - reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(fwd < tol, "forward differs by {fwd} on {:?}", ours.device());
        let w = Tensor::randn(0f32, 1.0, ours.shape(), ours.device())?;
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (reference * &w)?.sum_all()?.backward()?;
        for v in vars {
            let (a, r) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
            let diff = (a - r)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < tol, "gradient differs by {diff} on {:?}", ours.device());
        }
        Ok(())
    }

    #[test]
    fn rms_norm_matches_the_composed_form_for_input_and_weight() -> Result<()> {
        for dev in devices() {
            for cols in [8, 300] {
                let x = var(&[2, 3, cols], &dev)?;
                let w = Var::from_tensor(&(Tensor::randn(0f32, 0.1, cols, &dev)? + 1.0)?)?;
                let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)?;
                let reference = candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5)?;
                grads_agree(&ours, &reference, &[&x, &w], 1e-4)?;
                // A frozen weight: the input gradient alone (a kernel on a GPU).
                let frozen = w.as_tensor().detach();
                let ours = rms_norm(x.as_tensor(), &frozen, 1e-5)?;
                let reference = candle_nn::ops::rms_norm_slow(x.as_tensor(), &frozen, 1e-5)?;
                grads_agree(&ours, &reference, &[&x], 1e-4)?;
            }
        }
        Ok(())
    }

    #[test]
    fn swiglu_matches_the_composed_form() -> Result<()> {
        for dev in devices() {
            // 165 elements: 8-wide chunks and a tail; 256: chunks only.
            for shape in [[5, 33], [4, 64]] {
                let g = var(&shape, &dev)?;
                let u = var(&shape, &dev)?;
                let ours = swiglu(g.as_tensor(), u.as_tensor())?;
                let reference = (g.as_tensor().silu()? * u.as_tensor())?;
                grads_agree(&ours, &reference, &[&g, &u], 1e-5)?;
            }
        }
        Ok(())
    }

    #[test]
    fn rope_matches_the_composed_form_with_shared_and_per_row_positions() -> Result<()> {
        for dev in devices() {
            let x = var(&[2, 3, 5, 8], &dev)?;
            for per_row in [false, true] {
                let shape: &[usize] = if per_row { &[2, 5, 4] } else { &[5, 4] };
                let angles = Tensor::randn(0f32, 2.0, shape, &dev)?;
                let (cos, sin) = (angles.cos()?, angles.sin()?);
                let ours = rope(x.as_tensor(), &cos, &sin)?;
                // The composed rotate-half form.
                let expand = |c: &Tensor| -> Result<Tensor> {
                    let c = Tensor::cat(&[c, c], D::Minus1)?;
                    if per_row { c.unsqueeze(1) } else { c.unsqueeze(0)?.unsqueeze(0) }
                };
                let xt = x.as_tensor();
                let (x1, x2) = (xt.narrow(D::Minus1, 0, 4)?, xt.narrow(D::Minus1, 4, 4)?);
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                let reference =
                    (xt.broadcast_mul(&expand(&cos)?)? + rotated.broadcast_mul(&expand(&sin)?)?)?;
                grads_agree(&ours, &reference, &[&x], 1e-5)?;
            }
        }
        Ok(())
    }

    #[test]
    fn split_and_merge_heads_match_the_composed_form() -> Result<()> {
        for dev in devices() {
            let (b, t, n, d) = (2, 5, 3, 8);
            let x = var(&[b, t, n * d], &dev)?;
            let angles = Tensor::randn(0f32, 2.0, (t, d / 2), &dev)?;
            let (cos, sin) = (angles.cos()?, angles.sin()?);
            let heads = x.as_tensor().reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
            let ours = split_heads(x.as_tensor(), n, d, Some((&cos, &sin)))?;
            let reference = candle_nn::rotary_emb::rope_slow(&heads, &cos, &sin)?;
            grads_agree(&ours, &reference, &[&x], 1e-5)?;
            let ours = split_heads(x.as_tensor(), n, d, None)?;
            grads_agree(&ours, &heads, &[&x], 1e-6)?;
            let y = var(&[b, n, t, d], &dev)?;
            let ours = merge_heads(y.as_tensor())?;
            let reference = y.as_tensor().transpose(1, 2)?.reshape((b, t, n * d))?;
            grads_agree(&ours, &reference, &[&y], 1e-6)?;
        }
        Ok(())
    }

    #[test]
    fn chunked_head_cross_entropy_matches_full_logits() -> Result<()> {
        // vocab 11: the element-wise kernels; 64: the 8-wide ones.
        for (dev, vocab) in devices().into_iter().flat_map(|d| [(d.clone(), 11), (d, 64)]) {
            let (n, hidden) = (7, 6);
            let h = var(&[n, hidden], &dev)?;
            let w = randn(&[vocab, hidden], &dev)?;
            let targets = Tensor::new(&[0u32, 3, 10, 3, 5, 1, 9], &dev)?;
            let ours = frozen_head_cross_entropy_sum(h.as_tensor(), &w, &targets)?;
            let logits = h.as_tensor().matmul(&w.t()?)?;
            let reference = (logits.log_sum_exp(D::Minus1)?
                - logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?)?
            .sum_all()?;
            let diff = (&ours - &reference)?.abs()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "loss differs by {diff}");
            let g1 = (&ours * 3.0)?.backward()?;
            let g2 = (&reference * 3.0)?.backward()?;
            let diff = (g1.get(&h).expect("grad") - g2.get(&h).expect("grad"))?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "gradient differs by {diff} on {dev:?}");
            // Without a gradient wanted: the same loss, no graph.
            let plain = frozen_head_cross_entropy_sum(&h.as_tensor().detach(), &w, &targets)?;
            assert!(!plain.track_op());
            assert!((plain - &reference)?.abs()?.to_scalar::<f32>()? < 1e-4);
            // Per row, from the same pass: each row's loss, and the same sum and gradient.
            let (summed, rows) = frozen_head_cross_entropy_rows(h.as_tensor(), &w, &targets)?;
            let per_row: Vec<f32> = (logits.log_sum_exp(D::Minus1)?
                - logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?)?
            .to_vec1()?;
            assert_eq!(rows.len(), n);
            for (a, b) in rows.iter().zip(&per_row) {
                assert!((a - b).abs() < 1e-4, "row loss {a} vs {b}");
            }
            assert_eq!(summed.to_scalar::<f32>()?, ours.to_scalar::<f32>()?);
            let g3 = (&summed * 3.0)?.backward()?;
            let diff = (g3.get(&h).expect("grad") - g1.get(&h).expect("grad"))?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0);
        }
        // Several chunks: the same sum.
        let big_vocab = (64usize << 20) / 3 + 1;
        assert_eq!(ce_chunk_rows(big_vocab), 2);
        Ok(())
    }

    #[test]
    fn causal_attention_matches_the_composed_form() -> Result<()> {
        for dev in devices() {
            for (b, kv, rep, t, d) in [(2, 2, 3, 5, 4), (1, 2, 2, 37, 8), (1, 1, 2, 64, 8)] {
                let q = var(&[b, kv, rep * t, d], &dev)?;
                let k = var(&[b, kv, t, d], &dev)?;
                let v = var(&[b, kv, t, d], &dev)?;
                let ours = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), t, 0.5, None)?;
                let reference = reference(q.as_tensor(), k.as_tensor(), t, 0.5)?.matmul(v.as_tensor())?;
                grads_agree(&ours, &reference, &[&q, &k, &v], 1e-4)?;
            }
        }
        Ok(())
    }

    #[test]
    fn fused_lora_mlp_matches_the_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, hidden, ffn, r) = (7, 12, 20, 4);
        for mask in [false, true] {
            let x = var(&[1, rows, hidden], &dev)?;
            let norm_w = (randn(&[hidden], &dev)? + 1.0)?;
            let parts = |out: usize, inp: usize, index: u64| -> Result<(LoraParts, Var, Var)> {
                let (a, b) = (var(&[r, inp], &dev)?, var(&[out, r], &dev)?);
                let mask = mask.then(|| DropoutMask { seed: 11 + index, keep: 0.8, offset: 5 * inp as u64 });
                let p = LoraParts {
                    w: randn(&[out, inp], &dev)?,
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: 1.7,
                    mask,
                };
                Ok((p, a, b))
            };
            let (gate, ga, gb) = parts(ffn, hidden, 0)?;
            let (up, ua, ub) = parts(ffn, hidden, 1)?;
            let (down, da, db) = parts(hidden, ffn, 2)?;
            let fused = lora_mlp_residual(x.as_tensor(), &norm_w, 1e-5, &gate, &up, &down)?
                .expect("applies on the CPU in f32");
            let lin = |p: &LoraParts, t: &Tensor| lora_linear(t, &p.w, &p.a, &p.b, p.scale, p.mask.as_ref());
            let h = rms_norm(&x.as_tensor().reshape((rows, hidden))?, &norm_w, 1e-5)?;
            let s = swiglu(&lin(&gate, &h)?, &lin(&up, &h)?)?;
            let separate = (x.as_tensor() + lin(&down, &s)?.reshape((1, rows, hidden))?)?;
            grads_agree_rel(&fused, &separate, &[&x, &ga, &gb, &ua, &ub, &da, &db], 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn fused_lora_attention_matches_the_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, heads, kv, d, r) = (2, 5, 4, 2, 6, 3);
        let hidden = 10;
        let angles = Tensor::randn(0f32, 2.0, (t, d / 2), &dev)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        for mask in [false, true] {
            let x = var(&[b, t, hidden], &dev)?;
            let norm_w = (randn(&[hidden], &dev)? + 1.0)?;
            let mut vars = vec![];
            let mut parts = |out: usize, inp: usize, index: u64| -> Result<LoraParts> {
                let (a, bv) = (var(&[r, inp], &dev)?, var(&[out, r], &dev)?);
                let mask = mask.then(|| DropoutMask { seed: 3 + index, keep: 0.7, offset: 9 * inp as u64 });
                let p = LoraParts {
                    w: randn(&[out, inp], &dev)?,
                    a: a.as_tensor().clone(),
                    b: bv.as_tensor().clone(),
                    scale: 0.9,
                    mask,
                };
                vars.extend([a, bv]);
                Ok(p)
            };
            let proj = [
                parts(heads * d, hidden, 0)?,
                parts(kv * d, hidden, 1)?,
                parts(kv * d, hidden, 2)?,
                parts(hidden, heads * d, 3)?,
            ];
            let shape = AttentionShape { b, t, heads, kv_heads: kv, head_dim: d, cos: &cos, sin: &sin };
            let fused = lora_attention_residual(
                x.as_tensor(),
                &norm_w,
                1e-5,
                &shape,
                [&proj[0], &proj[1], &proj[2], &proj[3]],
            )?
            .expect("applies on the CPU in f32");
            // The separate ops, as `Attention::forward` composes them.
            let lin = |p: &LoraParts, t: &Tensor| lora_linear(t, &p.w, &p.a, &p.b, p.scale, p.mask.as_ref());
            let h = rms_norm(&x.as_tensor().reshape((b * t, hidden))?, &norm_w, 1e-5)?;
            let q =
                split_heads(&lin(&proj[0], &h)?.reshape((b, t, heads * d))?, heads, d, Some((&cos, &sin)))?;
            let k = split_heads(&lin(&proj[1], &h)?.reshape((b, t, kv * d))?, kv, d, Some((&cos, &sin)))?;
            let v = split_heads(&lin(&proj[2], &h)?.reshape((b, t, kv * d))?, kv, d, None)?;
            let q = q.reshape((b, kv, heads / kv * t, d))?;
            let y = causal_attention(&q, &k, &v, t, 1.0 / (d as f64).sqrt(), None)?;
            let y = merge_heads(&y.reshape((b, heads, t, d))?)?.reshape((b * t, heads * d))?;
            let separate = (x.as_tensor() + lin(&proj[3], &y)?.reshape((b, t, hidden))?)?;
            let mut all: Vec<&Var> = vec![&x];
            all.extend(vars.iter());
            grads_agree_rel(&fused, &separate, &all, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn lora_linear_matches_the_composed_form_with_and_without_dropout() -> Result<()> {
        for dev in devices() {
            let x = var(&[6, 8], &dev)?;
            let w = randn(&[5, 8], &dev)?;
            let a = var(&[3, 8], &dev)?;
            let b = var(&[5, 3], &dev)?;
            // The mask the CPU hash draws; a GPU kernel must draw the same one for the seed.
            let drawn = |offset: u64| {
                crate::dropout::mask(&x.as_tensor().to_device(&Device::Cpu)?, 42, 0.7, offset)?
                    .to_device(&dev)
            };
            let kept = drawn(0)?.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            assert!(kept > 10.0 && kept < 47.0, "{kept} of 48 kept at keep 0.7");
            let hashed = |offset: u64| Some(DropoutMask { seed: 42, keep: 0.7, offset });
            let mut cases = vec![(None, None), (hashed(0), Some(drawn(0)?))];
            if crate::cuda_kernels::available(x.as_tensor()) {
                let gpu = crate::cuda_kernels::dropout_mask(x.as_tensor(), 42, 0.7)?;
                let diff = (gpu - drawn(0)?)?.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "the GPU kernel and the CPU hash drop different elements");
            } else {
                cases.push((hashed(16), Some(drawn(16)?)));
            }
            for (mask, m) in cases {
                let ours = lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), 2.0, mask.as_ref())?;
                let xm = match &m {
                    Some(m) => (x.as_tensor() * m)?,
                    None => x.as_tensor().clone(),
                };
                let reference = (x.as_tensor().matmul(&w.t()?)?
                    + ((xm.matmul(&a.as_tensor().t()?)? * 2.0)?.matmul(&b.as_tensor().t()?))?)?;
                grads_agree(&ours, &reference, &[&x, &a, &b], 1e-4)?;
            }
        }
        Ok(())
    }

    /// bf16 on a GPU (what training runs): the kernels against the composed f32 form, to bf16's
    /// precision. Only in a CUDA build, where it needs GPU 0: a CPU build used to run it over zero
    /// devices and count it as passed.
    #[cfg(feature = "cuda")]
    #[test]
    fn bf16_kernels_match_f32_on_a_gpu() -> Result<()> {
        let dev = Device::new_cuda(0)?;
        let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
            let diff = (a.to_dtype(DType::F32)? - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            assert!(diff / scale < 2e-2, "{what}: bf16 differs by {diff} (scale {scale})");
            Ok(())
        };
        let bf = |t: &Tensor| t.to_dtype(DType::BF16);
        let (g, u, dy) = (randn(&[64, 300], &dev)?, randn(&[64, 300], &dev)?, randn(&[64, 300], &dev)?);
        close(&crate::cuda_kernels::swiglu(&bf(&g)?, &bf(&u)?)?, &(g.silu()? * &u)?, "swiglu")?;
        let both = crate::cuda_kernels::swiglu_backward(&bf(&g)?, &bf(&u)?, &bf(&dy)?)?;
        let both32 = crate::cuda_kernels::swiglu_backward(&g, &u, &dy)?;
        close(&both, &both32, "swiglu backward")?;
        let w = (Tensor::randn(0f32, 0.1, 300, &dev)? + 1.0)?;
        let dx = crate::cuda_kernels::rms_norm_backward(&bf(&g)?, &bf(&w)?, &bf(&dy)?, 1e-5)?;
        close(&dx, &crate::cuda_kernels::rms_norm_backward(&g, &w, &dy, 1e-5)?, "rms_norm backward")?;
        // 300 columns: the element-wise kernels; 304: the 8-wide ones.
        for t in [300, 304] {
            let scores = randn(&[2, 2 * t, t], &dev)?;
            let p = crate::cuda_kernels::causal_softmax(&bf(&scores)?, t, 0.3)?;
            let p32 = crate::cuda_kernels::causal_softmax(&scores, t, 0.3)?;
            close(&p, &p32, "causal softmax")?;
            let dp = randn(&[2, 2 * t, t], &dev)?;
            let ds = crate::cuda_kernels::causal_softmax_backward(&bf(&p32)?, &bf(&dp)?, t, 0.3)?;
            close(
                &ds,
                &crate::cuda_kernels::causal_softmax_backward(&p32, &dp, t, 0.3)?,
                "causal softmax backward",
            )?;
        }
        let x = randn(&[3, 1000], &dev)?;
        let kept = crate::cuda_kernels::dropout_apply(&bf(&x)?, 9, 0.9)?;
        let mask = crate::cuda_kernels::dropout_mask(&x, 9, 0.9)?;
        close(&kept, &(&x * &mask)?, "dropout (bf16 8-wide vs f32 mask)")?;
        Ok(())
    }
}
