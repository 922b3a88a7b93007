//! A decoder layer's two halves (attention and MLP, each with its RMSNorm and residual) as one
//! op each, for LoRA training on the CPU with adapters on every projection: the fast body of
//! `Block::forward` chosen when the layer's path is set (see `llama::LayerPath`), tested against
//! the separate ops.

use candle_core::{CpuStorage, CustomOp2, D, Result, Tensor};

use super::lora::{LoraParts, LoraSaved};
use super::{Slot, cpu_tensor};
use crate::attention::train::{KEEP_PROBS_MAX_BYTES_CPU, probs_no_grad};

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
    if !crate::ops::cpu::applies(x)
        || norm_w.dtype() != f32
        || [gate, up, down].iter().any(|p| p.w.dtype() != f32 || p.a.dtype() != f32)
    {
        return Ok(None);
    }
    let hidden = x.dim(D::Minus1)?;
    let rows = x.elem_count() / hidden;
    let xd = x.detach().contiguous()?.reshape((rows, hidden))?;
    let norm_w = norm_w.detach();
    let h = cpu_tensor(crate::ops::norm::rms_norm_forward(&xd, &norm_w, eps)?, x.device())?;
    let (gate_saved, g) = LoraSaved::forward(gate, &h)?;
    let (up_saved, u) = LoraSaved::forward(up, &h)?;
    let ffn = gate.w.dim(0)?;
    let (g, u) =
        (Tensor::from_vec(g, (rows, ffn), x.device())?, Tensor::from_vec(u, (rows, ffn), x.device())?);
    let s = cpu_tensor(crate::ops::swiglu::swiglu_forward(&g, &u)?, x.device())?;
    let (down_saved, mut y) = LoraSaved::forward(down, &s)?;
    drop(s);
    // The residual, added into the down projection's buffer.
    crate::ops::cpu::add_into(&mut y, &xd)?;
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
        let (dg, du) = crate::ops::swiglu::swiglu_backward(&self.g, &self.u, &ds.expect("asked for"))?;
        let (dh_g, da_g, db_g) = gate.backward(&dg, true)?;
        let (dh_u, da_u, db_u) = up.backward(&du, true)?;
        let dh = (dh_g.expect("asked for") + dh_u.expect("asked for"))?;
        let dx = (crate::ops::norm::rms_norm_input_grad(&self.xd, &self.norm_w, &dh, self.eps)? + &grad)?;
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
    if !crate::ops::cpu::applies(x)
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
    let h = cpu_tensor(crate::ops::norm::rms_norm_forward(&xd, &norm_w, eps)?, dev)?;
    let [qp, kp, vp, op] = proj;
    let (q_saved, q) = LoraSaved::forward(qp, &h)?;
    let (k_saved, k) = LoraSaved::forward(kp, &h)?;
    let (v_saved, v) = LoraSaved::forward(vp, &h)?;
    drop(h);
    let rot = Some((cos, sin, 1, 1.0));
    let swap = crate::ops::rope::swap12;
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
    crate::ops::cpu::add_into(&mut y, &xd)?;
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
        let swap = crate::ops::rope::swap12;
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
        let ds = crate::attention::softmax::causal_softmax_backward(&p, &dp, t, scale)?;
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
        let dx = (crate::ops::norm::rms_norm_input_grad(&self.xd, &self.norm_w, &dh, self.eps)? + &grad)?;
        let pieces = [da_q, db_q, da_k, db_k, da_v, db_v, da_o, db_o]
            .iter()
            .map(Tensor::flatten_all)
            .collect::<Result<Vec<_>>>()?;
        Ok((Some(dx.reshape(x.shape())?), Some(Tensor::cat(&pieces, 0)?)))
    }
}
