//! Every op against its composed form (values and gradients), on the CPU and, in a CUDA build
//! with a GPU, on the GPU.

use candle_core::{D, DType, Device, Result, Tensor, Var};

use crate::attention::train::causal_attention;
use crate::ops::dropout::DropoutMask;
use crate::ops::layer::{AttentionShape, lora_attention_residual, lora_mlp_residual};
use crate::ops::lora::{LoraParts, lora_linear};
use crate::ops::loss::{ce_chunk_rows, frozen_head_cross_entropy_rows, frozen_head_cross_entropy_sum};
use crate::ops::matmul::frozen_matmul;
use crate::ops::norm::rms_norm;
use crate::ops::rope::{merge_heads, rope, split_heads};
use crate::ops::swiglu::swiglu;

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
            let reference = (xt.broadcast_mul(&expand(&cos)?)? + rotated.broadcast_mul(&expand(&sin)?)?)?;
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
        let q = split_heads(&lin(&proj[0], &h)?.reshape((b, t, heads * d))?, heads, d, Some((&cos, &sin)))?;
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
            crate::ops::dropout::mask(&x.as_tensor().to_device(&Device::Cpu)?, 42, 0.7, offset)?
                .to_device(&dev)
        };
        let kept = drawn(0)?.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        assert!(kept > 10.0 && kept < 47.0, "{kept} of 48 kept at keep 0.7");
        let hashed = |offset: u64| Some(DropoutMask { seed: 42, keep: 0.7, offset });
        let mut cases = vec![(None, None), (hashed(0), Some(drawn(0)?))];
        if crate::ops::cuda::available(x.as_tensor()) {
            let gpu = crate::ops::dropout::dropout_mask_cuda(x.as_tensor(), 42, 0.7)?;
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
    close(&crate::ops::swiglu::swiglu_cuda(&bf(&g)?, &bf(&u)?)?, &(g.silu()? * &u)?, "swiglu")?;
    let both = crate::ops::swiglu::swiglu_backward_cuda(&bf(&g)?, &bf(&u)?, &bf(&dy)?)?;
    let both32 = crate::ops::swiglu::swiglu_backward_cuda(&g, &u, &dy)?;
    close(&both, &both32, "swiglu backward")?;
    let w = (Tensor::randn(0f32, 0.1, 300, &dev)? + 1.0)?;
    let dx = crate::ops::norm::rms_norm_backward(&bf(&g)?, &bf(&w)?, &bf(&dy)?, 1e-5)?;
    close(&dx, &crate::ops::norm::rms_norm_backward(&g, &w, &dy, 1e-5)?, "rms_norm backward")?;
    // 300 columns: the element-wise kernels; 304: the 8-wide ones.
    for t in [300, 304] {
        let scores = randn(&[2, 2 * t, t], &dev)?;
        let p = crate::attention::softmax::causal_softmax_cuda(&bf(&scores)?, t, 0.3)?;
        let p32 = crate::attention::softmax::causal_softmax_cuda(&scores, t, 0.3)?;
        close(&p, &p32, "causal softmax")?;
        let dp = randn(&[2, 2 * t, t], &dev)?;
        let ds = crate::attention::softmax::causal_softmax_backward_cuda(&bf(&p32)?, &bf(&dp)?, t, 0.3)?;
        close(
            &ds,
            &crate::attention::softmax::causal_softmax_backward_cuda(&p32, &dp, t, 0.3)?,
            "causal softmax backward",
        )?;
    }
    let x = randn(&[3, 1000], &dev)?;
    let kept = crate::ops::dropout::dropout_apply_cuda(&bf(&x)?, 9, 0.9)?;
    let mask = crate::ops::dropout::dropout_mask_cuda(&x, 9, 0.9)?;
    close(&kept, &(&x * &mask)?, "dropout (bf16 8-wide vs f32 mask)")?;
    Ok(())
}

/// The CPU bodies against candle's products.
mod cpu_bodies {
    use candle_core::{CpuStorage, Device, Result, Tensor};

    use crate::ops::lora::{lora_forward, lora_input_grad};
    use crate::ops::norm::{rms_norm_forward, rms_norm_input_grad};
    use crate::ops::swiglu::{swiglu_backward, swiglu_forward};

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| (((i ^ salt).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0) - 0.5)
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn lora_forward_and_input_grad_match_candles_products() -> Result<()> {
        let dev = Device::Cpu;
        let (n, inp, out, r) = (37, 50, 29, 4);
        let t = |rows, cols, salt| Tensor::from_vec(values(rows * cols, salt), (rows, cols), &dev);
        let (x, w, h, b) = (t(n, inp, 1)?, t(out, inp, 2)?, t(n, r, 3)?, t(out, r, 4)?);
        let ours = Tensor::from_vec(lora_forward(&x, &w, &h, &b)?, (n, out), &dev)?;
        let reference = (x.matmul(&w.t()?)? + h.matmul(&b.t()?)?)?;
        assert!(max_diff(&ours, &reference)? < 1e-5);
        // Input gradient, with and without the dropout mask, from a strided (transposed) gradient.
        let (grad, a) = (t(out, n, 5)?.t()?, t(r, inp, 6)?);
        let dh = t(n, r, 7)?;
        let plain = lora_input_grad(&grad, &w, &dh, &a, None)?;
        let reference = (grad.matmul(&w)? + dh.matmul(&a)?)?;
        assert!(max_diff(&plain, &reference)? < 1e-5);
        let masked = lora_input_grad(&grad, &w, &dh, &a, Some((9, 0.8, 123)))?;
        let reference = (grad.matmul(&w)? + crate::ops::dropout::apply(&dh.matmul(&a)?, 9, 0.8, 123)?)?;
        assert!(max_diff(&masked, &reference)? < 1e-5);
        assert!(max_diff(&masked, &plain)? > 1e-3, "the mask changed nothing");
        assert!(lora_forward(&x, &w.t()?, &h, &b).is_err(), "mismatched inner dimensions");
        Ok(())
    }

    #[test]
    fn rms_norm_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, hidden) = (5, 70);
        let x = (Tensor::from_vec(values(rows * hidden, 1), (1, rows, hidden), &dev)? * 3.0)?;
        let w = (Tensor::from_vec(values(hidden, 2), hidden, &dev)? + 1.0)?;
        let d = Tensor::from_vec(values(rows * hidden, 3), (1, rows, hidden), &dev)?;
        let eps = 1e-5;
        let (y, shape) = rms_norm_forward(&x, &w, eps)?;
        let CpuStorage::F32(y) = y else { panic!("f32 storage") };
        let y = Tensor::from_vec(y, shape, &dev)?;
        assert_eq!(max_diff(&y, &candle_nn::ops::rms_norm(&x, &w, eps)?)?, 0.0);
        // The gradient against the composed form differentiated by candle.
        let xv = candle_core::Var::from_tensor(&x)?;
        let r = (xv.sqr()?.mean_keepdim(candle_core::D::Minus1)? + f64::from(eps))?.sqrt()?.recip()?;
        let composed = xv.broadcast_mul(&r)?.broadcast_mul(&w)?;
        let grads = (composed * &d)?.sum_all()?.backward()?;
        let reference = grads.get(&xv).expect("x's gradient");
        assert!(max_diff(&rms_norm_input_grad(&x, &w, &d, eps)?, reference)? < 1e-5);
        Ok(())
    }

    #[test]
    fn swiglu_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let t = |salt| -> Result<Tensor> { Tensor::from_vec(values(3 * 41, salt), (3, 41), &dev)? * 8.0 };
        let (g, u, d) = (t(1)?, t(2)?, t(3)?);
        let (y, shape) = swiglu_forward(&g, &u)?;
        let CpuStorage::F32(y) = y else { panic!("f32 storage") };
        let y = Tensor::from_vec(y, shape, &dev)?;
        assert!(max_diff(&y, &(g.silu()? * &u)?)? < 1e-5);
        let (dg, du) = swiglu_backward(&g, &u, &d)?;
        let s = candle_nn::ops::sigmoid(&g)?;
        let dg_ref = ((&d * &u)? * &s)?.mul(&((&g * (1.0 - &s)?)? + 1.0)?)?;
        let du_ref = (&d * (&g * &s)?)?;
        assert!(max_diff(&dg, &dg_ref)? < 1e-5);
        assert!(max_diff(&du, &du_ref)? < 1e-5);
        Ok(())
    }
}
