//! Time the serving engine's batched decode step (`Llama::decode_step`) at a given batch: B
//! sequences with different prompt lengths, each with its own KV cache, advance together.
//!
//! `cargo run --release -p ferrotune-serve --example batch_decode -- [MODEL] [--batch 32]
//!  [--steps 64] [--prompt 60] [--weights f32|quantized]`
//!
//! Prints ms per step and aggregate tokens/s (B tokens per step), and the share of the step
//! spent in the layers' linear projections, measured by running them alone at the same shape.
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use ferrotune_model::{KvCache, Logits, WeightMode};

fn main() -> anyhow::Result<()> {
    let mut model = "smollm2-135m-instruct".to_string();
    let (mut batch, mut steps, mut prompt, mut mode) = (32usize, 64usize, 60usize, WeightMode::F32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--batch" => batch = val()?.parse()?,
            "--steps" => steps = val()?.parse()?,
            "--prompt" => prompt = val()?.parse()?,
            "--weights" => {
                mode = match val()?.as_str() {
                    "f32" => WeightMode::F32,
                    "quantized" => WeightMode::Quantized,
                    w => bail!("--weights f32|quantized, not {w}"),
                }
            }
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => model = s.to_string(),
        }
    }
    if batch == 0 || steps == 0 || prompt == 0 {
        bail!("--batch, --steps and --prompt must be positive");
    }
    let dev = Device::Cpu;
    let mut m = ferrotune_model::load(&model, mode, &dev)?;
    // As the engine runs it (FERROTUNE_NO_PACK=1: gemm on the dense weights, for comparison).
    if std::env::var_os("FERROTUNE_NO_PACK").is_none() {
        ferrotune_serve::engine::pack_for_decode(&mut m.model)?;
    }
    let cfg = m.config().clone();
    // Rows with different lengths (prompt .. prompt + batch), as a running server has.
    let mut caches = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    for r in 0..batch {
        let len = prompt + r;
        let ids: Vec<u32> = (0..len as u32).map(|i| 200 + (i * 37 + r as u32 * 11) % 5000).collect();
        let mut c = KvCache::new(&cfg, len + steps);
        let l = m.model.forward(
            &Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?,
            None,
            Some(&mut c),
            Logits::Last,
        )?;
        next.push(ferrotune_model::sampling::argmax(&l.squeeze(0)?.to_vec1::<f32>()?));
        caches.push(c);
    }
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    // One step untimed (first-touch allocations), then the timed ones.
    let logits = m.model.decode_step(&next, &mut refs)?;
    next = argmax_rows(&logits)?;
    let t = Instant::now();
    for _ in 0..steps {
        let logits = m.model.decode_step(&next, &mut refs)?;
        next = argmax_rows(&logits)?;
    }
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!(
        "batch {batch}, {mode:?} weights, cache {prompt}..{}: {step_ms:.2} ms/step, {:.1} tokens/s",
        prompt + batch + steps,
        batch as f64 * 1e3 / step_ms
    );

    // The linear projections alone at the step's shape [B, 1, .], all layers + head.
    let x = Tensor::randn(0f32, 1.0, (batch, 1, cfg.hidden_size), &dev)?;
    let xi = Tensor::randn(0f32, 1.0, (batch, 1, cfg.intermediate_size), &dev)?;
    let run = || -> anyhow::Result<()> {
        for l in &m.model.layers {
            let a = &l.self_attn;
            let mm = &l.mlp;
            for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &mm.gate_proj, &mm.up_proj] {
                lin.forward(&x)?;
            }
            a.o_proj.forward(&x)?;
            mm.down_proj.forward(&xi)?;
        }
        m.model.head(&x)?;
        Ok(())
    };
    run()?;
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        run()?;
    }
    let lin_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("  linear layers + head alone: {lin_ms:.2} ms ({:.0}% of the step)", 100.0 * lin_ms / step_ms);
    Ok(())
}

fn argmax_rows(logits: &Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(logits.to_vec2::<f32>()?.iter().map(|r| ferrotune_model::sampling::argmax(r)).collect())
}
