//! `bench train --profile`: the pieces of a training layer timed one by one at the benchmark's
//! shapes, the device synchronised around each — where a GPU step's time goes.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use ferrotune_model::attention::{softmax, train::causal_attention};
use ferrotune_model::linear::LinearAdapter;
use ferrotune_model::ops::{cuda, dropout, loss, matmul, norm, rope};
use ferrotune_model::{Adapter, Llama, ModelConfig};

use crate::error::Result;

/// Milliseconds per call of `f` over `reps` calls after one warm-up, the device synchronised
/// before and after (GPU work is asynchronous).
pub fn synced_ms(device: &Device, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// Milliseconds per call of each piece of a training layer, at the benchmark's shapes, with the
/// device synchronised around each (`bench train --profile`): where a GPU step's time goes.
pub fn profile_ops(
    model: &Llama,
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
    n: usize,
    adapter: &Adapter,
) -> Result<()> {
    let ins = Inputs::new(cfg, device, dtype, n)?;
    println!("profile ({n} tokens, {dtype:?}):");
    pieces(&ins, model, adapter)?;
    forward_backward(&ins, model)?;
    attention_parts(&ins)?;
    head(&ins, model)
}

/// Random activations and weights at a layer's shapes: `n` tokens as 8 sequences of `t`.
struct Inputs<'a> {
    device: &'a Device,
    /// Head count, KV head count, head width, tokens per sequence.
    h: usize,
    d: usize,
    t: usize,
    /// `[n, hidden]`, `[n, ffn]` (twice: the MLP's activation and the down projection's input).
    x: Var,
    g: Var,
    xf: Var,
    wq: Tensor,
    norm_w: Tensor,
    /// `[8, heads, t, d]` queries (and `qf`: grouped by KV head), `[8, kv, t, d]` keys and values.
    q: Var,
    qf: Tensor,
    k: Var,
    v: Var,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl<'a> Inputs<'a> {
    fn new(cfg: &ModelConfig, device: &'a Device, dtype: DType, n: usize) -> Result<Self> {
        let (hid, ffn, h, kv, d) =
            (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let t = n / 8;
        let var = |shape: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)?)
        };
        let x = var(&[n, hid])?;
        let wq = Tensor::randn(0f32, 0.02, (h * d, hid), device)?.to_dtype(dtype)?;
        let norm_w = Tensor::ones(hid, dtype, device)?;
        let q = var(&[8, h, t, d])?;
        let k = var(&[8, kv, t, d])?;
        let v = var(&[8, kv, t, d])?;
        let ang = Tensor::randn(0f32, 1.0, (t, d / 2), device)?.to_dtype(dtype)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let mut m = vec![0f32; t * t];
        (0..t).for_each(|s| (s + 1..t).for_each(|j| m[s * t + j] = f32::NEG_INFINITY));
        let mask = Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)?;
        let qf = q.as_tensor().reshape((8, kv, (h / kv) * t, d))?;
        let g = var(&[n, ffn])?;
        let xf = var(&[n, ffn])?;
        Ok(Self { device, h, d, t, x, g, xf, wq, norm_w, q, qf, k, v, cos, sin, mask })
    }
}

/// One line: `f`'s milliseconds per call, no backward.
fn time(device: &Device, name: &str, f: &mut dyn FnMut() -> Result<Tensor>) -> Result<()> {
    let ms = synced_ms(device, 10, &mut || f().map(drop))?;
    println!("  {name:<44} {ms:>9.3} ms");
    Ok(())
}

/// Each piece alone, forward only (attention also with its backward).
fn pieces(ins: &Inputs<'_>, model: &Llama, adapter: &Adapter) -> Result<()> {
    let (device, xt, t) = (ins.device, ins.x.as_tensor(), ins.t);
    if cuda::available(xt) {
        time(device, "dropout mask [n, hidden] (hash kernel)", &mut || {
            Ok(dropout::dropout_mask_cuda(xt, 7, 0.95)?)
        })?;
        time(device, "dropout applied [n, hidden] (hash kernel)", &mut || {
            Ok(dropout::dropout_apply_cuda(xt, 7, 0.95)?)
        })?;
    }
    time(device, "copy [n, hidden]", &mut || Ok(xt.copy()?))?;
    time(device, "mul [n, hidden]", &mut || Ok((xt * xt)?))?;
    time(device, "matmul x·Wqᵀ (no graph)", &mut || Ok(xt.detach().matmul(&ins.wq.t()?)?))?;
    time(device, "frozen_matmul x·Wqᵀ", &mut || Ok(matmul::frozen_matmul(xt, &ins.wq)?))?;
    let q_proj = &model.layers[0].self_attn.q_proj;
    time(device, "q_proj Linear (base + LoRA, dropout on)", &mut || Ok(q_proj.forward(xt)?))?;
    if let Some(l) = adapter.layers.get("model.layers.0.self_attn.q_proj") {
        time(device, "LoRA delta alone", &mut || Ok(l.delta(xt)?))?;
    }
    time(device, "rms_norm (op)", &mut || Ok(norm::rms_norm(xt, &ins.norm_w, 1e-5)?))?;
    time(device, "rope q (op)", &mut || Ok(rope::rope(ins.q.as_tensor(), &ins.cos, &ins.sin)?))?;
    let (k, v, mask) = (ins.k.as_tensor(), ins.v.as_tensor(), Some(&ins.mask));
    time(device, "causal_attention forward", &mut || Ok(causal_attention(&ins.qf, k, v, t, 0.125, mask)?))?;
    time(device, "causal_attention forward+backward", &mut || {
        let o = causal_attention(&ins.qf, k, v, t, 0.125, mask)?;
        o.sum_all()?.backward()?;
        Ok(o)
    })?;
    let g = ins.g.as_tensor();
    time(device, "silu·up [n, ffn]", &mut || Ok((g.silu()? * g)?))
}

/// Forward + backward of the pieces of a layer, as training runs them (graph on, the backward
/// starting from a sum: subtract the baseline line for the gradient's broadcast).
fn forward_backward(ins: &Inputs<'_>, model: &Llama) -> Result<()> {
    let fb = |name: &str, f: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
        let ms = synced_ms(ins.device, 5, &mut || {
            f()?.sum_all()?.backward()?;
            Ok(())
        })?;
        println!("  fwd+bwd {name:<36} {ms:>9.3} ms");
        Ok(())
    };
    let (xt, g) = (ins.x.as_tensor(), ins.g.as_tensor());
    fb("baseline: sum of x [n, hidden]", &mut || Ok(xt.clone()))?;
    fb("baseline: sum of g [n, ffn]", &mut || Ok(g.clone()))?;
    let l0 = &model.layers[0];
    for (name, lin, input) in [
        ("q_proj (lora_linear)", &l0.self_attn.q_proj, xt),
        ("k_proj (lora_linear)", &l0.self_attn.k_proj, xt),
        ("gate_proj (lora_linear)", &l0.mlp.gate_proj, xt),
        ("down_proj (lora_linear)", &l0.mlp.down_proj, ins.xf.as_tensor()),
    ] {
        fb(name, &mut || Ok(lin.forward(input)?))?;
    }
    fb("rms_norm", &mut || Ok(norm::rms_norm(xt, &ins.norm_w, 1e-5)?))?;
    fb("silu(g)·g", &mut || Ok((g.silu()? * g)?))?;
    fb("x + x (residual)", &mut || Ok((xt + xt)?))?;
    let (t, h, d) = (ins.t, ins.h, ins.d);
    fb("heads: reshape·transpose·contiguous", &mut || {
        Ok(xt.reshape((8, t, h, d))?.transpose(1, 2)?.contiguous()?)
    })?;
    fb("rope q", &mut || Ok(rope::rope(ins.q.as_tensor(), &ins.cos, &ins.sin)?))
}

/// Attention's parts, no graph (the softmax kernels only where they run: CUDA).
fn attention_parts(ins: &Inputs<'_>) -> Result<()> {
    let (device, t) = (ins.device, ins.t);
    let (qd, kd, vd) = (ins.qf.detach(), ins.k.as_tensor().detach(), ins.v.as_tensor().detach());
    time(device, "attn: scores q·kᵀ", &mut || Ok(qd.matmul(&kd.t()?)?))?;
    let scores = qd.matmul(&kd.t()?)?;
    if cuda::available(&scores) {
        time(device, "attn: causal softmax kernel", &mut || {
            Ok(softmax::causal_softmax_cuda(&scores, t, 0.125)?)
        })?;
        let p = softmax::causal_softmax_cuda(&scores, t, 0.125)?;
        time(device, "attn: p·v", &mut || Ok(p.matmul(&vd)?))?;
        time(device, "attn: pᵀ·dO", &mut || Ok(p.t()?.matmul(&qd)?))?;
        time(device, "attn: dO·vᵀ", &mut || Ok(qd.matmul(&vd.t()?)?))?;
        time(device, "attn: softmax backward kernel", &mut || {
            Ok(softmax::causal_softmax_backward_cuda(&p, &scores, t, 0.125)?)
        })?;
        time(device, "attn: dS·k", &mut || Ok(p.matmul(&kd)?))?;
        time(device, "attn: dSᵀ·q", &mut || Ok(p.t()?.matmul(&qd)?))?;
    }
    Ok(())
}

/// The frozen head's chunked cross-entropy (LoRA), forward and with its backward.
fn head(ins: &Inputs<'_>, model: &Llama) -> Result<()> {
    let xt = ins.x.as_tensor();
    let targets = Tensor::zeros(xt.dim(0)?, DType::U32, ins.device)?;
    if let Some(w) = model.frozen_head_weight() {
        time(ins.device, "head cross-entropy forward", &mut || {
            Ok(loss::frozen_head_cross_entropy_sum(xt, w, &targets)?)
        })?;
        time(ins.device, "head cross-entropy forward+backward", &mut || {
            let l = loss::frozen_head_cross_entropy_sum(xt, w, &targets)?;
            l.backward()?;
            Ok(l)
        })?;
    }
    Ok(())
}
