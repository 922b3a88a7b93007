//! `bench train --profile`: the pieces of a training layer timed one by one at the benchmark's
//! shapes, the device synchronised around each — where a GPU step's time goes.

use std::time::Instant;

use candle_core::{Device, Tensor};

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
    model: &ferrotune_model::Llama,
    cfg: &ferrotune_model::ModelConfig,
    device: &Device,
    dtype: candle_core::DType,
    n: usize,
    adapter: &ferrotune_model::Adapter,
) -> Result<()> {
    use ferrotune_model::attention::train::causal_attention;
    use ferrotune_model::ops::{loss, matmul, norm, rope};
    use ferrotune_model::linear::LinearAdapter;
    let time = |name: &str, f: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
        let ms = synced_ms(device, 10, &mut || f().map(drop))?;
        println!("  {name:<44} {ms:>9.3} ms");
        Ok(())
    };
    let (hid, ffn, h, kv, d) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let t = n / 8;
    let var = |shape: &[usize]| -> Result<candle_core::Var> {
        Ok(candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)?)
    };
    let x = var(&[n, hid])?;
    let xt = x.as_tensor();
    let wq = Tensor::randn(0f32, 0.02, (h * d, hid), device)?.to_dtype(dtype)?;
    let norm_w = Tensor::ones(hid, dtype, device)?;
    println!("profile ({n} tokens, {dtype:?}):");
    if ferrotune_model::ops::cuda::available(xt) {
        time("dropout mask [n, hidden] (hash kernel)", &mut || {
            Ok(ferrotune_model::ops::dropout::dropout_mask_cuda(xt, 7, 0.95)?)
        })?;
        time("dropout applied [n, hidden] (hash kernel)", &mut || {
            Ok(ferrotune_model::ops::dropout::dropout_apply_cuda(xt, 7, 0.95)?)
        })?;
    }
    time("copy [n, hidden]", &mut || Ok(xt.copy()?))?;
    time("mul [n, hidden]", &mut || Ok((xt * xt)?))?;
    time("matmul x·Wqᵀ (no graph)", &mut || Ok(xt.detach().matmul(&wq.t()?)?))?;
    time("frozen_matmul x·Wqᵀ", &mut || Ok(matmul::frozen_matmul(xt, &wq)?))?;
    let q_proj = &model.layers[0].self_attn.q_proj;
    time("q_proj Linear (base + LoRA, dropout on)", &mut || Ok(q_proj.forward(xt)?))?;
    if let Some(l) = adapter.layers.get("model.layers.0.self_attn.q_proj") {
        time("LoRA delta alone", &mut || Ok(l.delta(xt)?))?;
    }
    time("rms_norm (op)", &mut || Ok(norm::rms_norm(xt, &norm_w, 1e-5)?))?;
    let q = var(&[8, h, t, d])?;
    let k = var(&[8, kv, t, d])?;
    let v = var(&[8, kv, t, d])?;
    let ang = Tensor::randn(0f32, 1.0, (t, d / 2), device)?.to_dtype(dtype)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    time("rope q (op)", &mut || Ok(rope::rope(q.as_tensor(), &cos, &sin)?))?;
    let mut m = vec![0f32; t * t];
    (0..t).for_each(|s| (s + 1..t).for_each(|j| m[s * t + j] = f32::NEG_INFINITY));
    let mask = Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)?;
    let qf = q.as_tensor().reshape((8, kv, (h / kv) * t, d))?;
    time("causal_attention forward", &mut || {
        Ok(causal_attention(&qf, k.as_tensor(), v.as_tensor(), t, 0.125, Some(&mask))?)
    })?;
    time("causal_attention forward+backward", &mut || {
        let o = causal_attention(&qf, k.as_tensor(), v.as_tensor(), t, 0.125, Some(&mask))?;
        o.sum_all()?.backward()?;
        Ok(o)
    })?;
    let g = var(&[n, ffn])?;
    time("silu·up [n, ffn]", &mut || Ok((g.as_tensor().silu()? * g.as_tensor())?))?;
    // Forward + backward of the pieces of a layer, as training runs them (graph on, the backward
    // starting from a sum: subtract the baseline line for the gradient's broadcast).
    let fb = |name: &str, f: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
        let ms = synced_ms(device, 5, &mut || {
            f()?.sum_all()?.backward()?;
            Ok(())
        })?;
        println!("  fwd+bwd {name:<36} {ms:>9.3} ms");
        Ok(())
    };
    fb("baseline: sum of x [n, hidden]", &mut || Ok(xt.clone()))?;
    fb("baseline: sum of g [n, ffn]", &mut || Ok(g.as_tensor().clone()))?;
    let l0 = &model.layers[0];
    let xf = var(&[n, ffn])?;
    for (name, lin, input) in [
        ("q_proj (lora_linear)", &l0.self_attn.q_proj, xt),
        ("k_proj (lora_linear)", &l0.self_attn.k_proj, xt),
        ("gate_proj (lora_linear)", &l0.mlp.gate_proj, xt),
        ("down_proj (lora_linear)", &l0.mlp.down_proj, xf.as_tensor()),
    ] {
        fb(name, &mut || Ok(lin.forward(input)?))?;
    }
    fb("rms_norm", &mut || Ok(norm::rms_norm(xt, &norm_w, 1e-5)?))?;
    fb("silu(g)·g", &mut || Ok((g.as_tensor().silu()? * g.as_tensor())?))?;
    fb("x + x (residual)", &mut || Ok((xt + xt)?))?;
    fb("heads: reshape·transpose·contiguous", &mut || {
        Ok(xt.reshape((8, t, h, d))?.transpose(1, 2)?.contiguous()?)
    })?;
    fb("rope q", &mut || Ok(rope::rope(q.as_tensor(), &cos, &sin)?))?;
    // Attention's parts, no graph.
    let (qd, kd, vd) = (qf.detach(), k.as_tensor().detach(), v.as_tensor().detach());
    time("attn: scores q·kᵀ", &mut || Ok(qd.matmul(&kd.t()?)?))?;
    let scores = qd.matmul(&kd.t()?)?;
    if ferrotune_model::ops::cuda::available(&scores) {
        time("attn: causal softmax kernel", &mut || {
            Ok(ferrotune_model::attention::softmax::causal_softmax_cuda(&scores, t, 0.125)?)
        })?;
        let p = ferrotune_model::attention::softmax::causal_softmax_cuda(&scores, t, 0.125)?;
        time("attn: p·v", &mut || Ok(p.matmul(&vd)?))?;
        time("attn: pᵀ·dO", &mut || Ok(p.t()?.matmul(&qd)?))?;
        time("attn: dO·vᵀ", &mut || Ok(qd.matmul(&vd.t()?)?))?;
        time("attn: softmax backward kernel", &mut || {
            Ok(ferrotune_model::attention::softmax::causal_softmax_backward_cuda(&p, &scores, t, 0.125)?)
        })?;
        time("attn: dS·k", &mut || Ok(p.matmul(&kd)?))?;
        time("attn: dSᵀ·q", &mut || Ok(p.t()?.matmul(&qd)?))?;
    }
    let targets = Tensor::zeros(n, candle_core::DType::U32, device)?;
    if let Some(w) = model.frozen_head_weight() {
        time("head cross-entropy forward", &mut || {
            Ok(loss::frozen_head_cross_entropy_sum(xt, w, &targets)?)
        })?;
        time("head cross-entropy forward+backward", &mut || {
            let l = loss::frozen_head_cross_entropy_sum(xt, w, &targets)?;
            l.backward()?;
            Ok(l)
        })?;
    }
    Ok(())
}
