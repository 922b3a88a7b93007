//! Where a single-stream quantized decode step's time goes (no `perf` on the dev machine):
//!
//! 1. the real step (`Llama::forward`, one token, 512..640 cached tokens, greedy);
//! 2. the same step rebuilt from the model's public pieces with a clock between ops, summed per
//!    kind of op over all layers (weights as cold as in the real step);
//! 3. each projection with its weight cold (every layer's in turn) and hot (one layer's again);
//! 4. the decode pool's cost per dispatch.
//!
//! ```text
//! FERROTUNE_HOME=$PWD/.ferrotune RAYON_NUM_THREADS=2 cargo run --release -p ferrotune-model --example decode_profile [MODEL]
//! ```
//! On a shared machine, note `uptime`: a busy neighbour moves every number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrotune_model::llama::Block;
use ferrotune_model::ops::rope::{Positions, Rope};
use ferrotune_model::{KvCache, Linear, Logits, WeightMode};

const PROMPT: usize = 512;

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let name = std::env::args().nth(1).unwrap_or_else(|| ferrotune_model::store::DEFAULT_MODEL.into());
    let path = ferrotune_model::store::resolve(&name)?;
    let m = ferrotune_model::load_path(&path, WeightMode::Quantized, &dev)?;
    let cfg = m.config().clone();
    println!("{} | {} threads", path.display(), candle_core::utils::get_num_threads());

    // 1. The real step.
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + (i * 37) % 5000).collect();
    let n_gen = 128;
    let mut cache = KvCache::new(&cfg, PROMPT + n_gen + 1);
    let mut logits = m.model.forward(
        &Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?,
        None,
        Some(&mut cache),
        Logits::Last,
    )?;
    let t = Instant::now();
    for _ in 0..n_gen {
        let next = ferrotune_model::sampling::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        logits = m.model.forward(
            &Tensor::new(&[next], &dev)?.unsqueeze(0)?,
            None,
            Some(&mut cache),
            Logits::Last,
        )?;
    }
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / n_gen as f64;
    println!(
        "decode step: {step_ms:.3} ms ({:.1} tok/s) at {PROMPT}..{} cached tokens",
        1e3 / step_ms,
        PROMPT + n_gen
    );

    // 2. The step rebuilt op by op.
    let (h, kvh, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let rope = Rope::new(&cfg, None, &dev)?;
    let mut caches = Vec::new();
    for _ in 0..cfg.num_layers {
        let mut c = candle_nn::kv_cache::KvCache::new(2, PROMPT + n_gen + 1);
        let kv = Tensor::randn(0f32, 1.0, (1, kvh, PROMPT, d), &dev)?;
        c.append(&kv, &kv)?;
        caches.push(c);
    }
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    let t_all = Instant::now();
    for step in 0..n_gen {
        let mut lap = Instant::now();
        let mut tick = |name: &'static str| {
            let now = Instant::now();
            *spent.entry(name).or_default() += (now - lap).as_secs_f64();
            lap = now;
        };
        let ids = Tensor::new(&[(step as u32) * 13 + 200], &dev)?;
        let mut x = m.model.embed_tokens.index_select(&ids, 0)?.reshape((1, 1, cfg.hidden_size))?;
        let (cos, sin) = rope.tables(&Positions::Range { start: PROMPT + step, len: 1 })?;
        tick("embedding, rope tables");
        for (l, cache) in m.model.layers.iter().zip(caches.iter_mut()) {
            let a = &l.self_attn;
            let hn = candle_nn::ops::rms_norm(&x, l.input_layernorm.weight(), eps)?;
            tick("rms_norm x2");
            let q = a.q_proj.forward(&hn)?;
            tick("q_proj");
            let k = a.k_proj.forward(&hn)?;
            tick("k_proj");
            let v = a.v_proj.forward(&hn)?;
            tick("v_proj");
            let q = q.reshape((1, 1, h, d))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((1, 1, kvh, d))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((1, 1, kvh, d))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            tick("heads, rope");
            let (kc, vc) = cache.append(&k, &v)?;
            tick("kv append");
            let y = ferrotune_model::attention::decode::attend(
                &q.reshape((1, kvh, h / kvh, d))?,
                &kc,
                &vc,
                1.0 / (d as f32).sqrt(),
            )?;
            tick("attention");
            let o = a.o_proj.forward(&y.reshape((1, 1, h * d))?)?;
            tick("o_proj");
            x = (&x + o)?;
            let hn = candle_nn::ops::rms_norm(&x, l.post_attention_layernorm.weight(), eps)?;
            tick("rms_norm x2");
            let g = l.mlp.gate_proj.forward(&hn)?;
            tick("gate_proj");
            let u = l.mlp.up_proj.forward(&hn)?;
            tick("up_proj");
            let gu = (g.silu()? * u)?;
            tick("silu·up");
            let dn = l.mlp.down_proj.forward(&gu)?;
            tick("down_proj");
            x = (&x + dn)?;
            tick("residual adds");
        }
        let xn = candle_nn::ops::rms_norm(&x, m.model.norm.weight(), eps)?;
        let logits = m.model.lm_head.forward(&xn)?;
        tick("final norm, lm_head");
        std::hint::black_box(ferrotune_model::sampling::argmax(&logits.flatten_all()?.to_vec1::<f32>()?));
        tick("logits out, argmax");
    }
    let rebuilt = t_all.elapsed().as_secs_f64() * 1e3 / n_gen as f64;
    println!("rebuilt step: {rebuilt:.3} ms");
    let mut rows: Vec<_> = spent.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (k, s) in rows {
        let ms = s * 1e3 / n_gen as f64;
        println!("  {k:<24} {ms:>8.3} ms  {:>5.1}%", 100.0 * ms / rebuilt);
    }

    // 3. Projections, cold and hot.
    let x = Tensor::randn(0f32, 1.0, (1, 1, cfg.hidden_size), &dev)?;
    let xf = Tensor::randn(0f32, 1.0, (1, 1, cfg.intermediate_size), &dev)?;
    type Pick = fn(&Block) -> &Linear;
    let picks: [(&str, Pick, &Tensor); 7] = [
        ("q_proj", |l| &l.self_attn.q_proj, &x),
        ("k_proj", |l| &l.self_attn.k_proj, &x),
        ("v_proj", |l| &l.self_attn.v_proj, &x),
        ("o_proj", |l| &l.self_attn.o_proj, &x),
        ("gate_proj", |l| &l.mlp.gate_proj, &x),
        ("up_proj", |l| &l.mlp.up_proj, &x),
        ("down_proj", |l| &l.mlp.down_proj, &xf),
    ];
    println!("per call:");
    let reps = 20;
    for (name, pick, input) in picks {
        let n = m.model.layers.len();
        let t = Instant::now();
        for _ in 0..reps {
            for l in &m.model.layers {
                drop(pick(l).forward(input)?);
            }
        }
        let cold = t.elapsed().as_secs_f64() * 1e6 / (reps * n) as f64;
        let first = pick(&m.model.layers[0]);
        let t = Instant::now();
        for _ in 0..reps * n {
            drop(first.forward(input)?);
        }
        let hot = t.elapsed().as_secs_f64() * 1e6 / (reps * n) as f64;
        println!("  {name:<10} cold {cold:>8.2} us  hot {hot:>8.2} us");
    }
    let xn = Tensor::randn(0f32, 1.0, (1, 1, cfg.hidden_size), &dev)?;
    let t = Instant::now();
    for _ in 0..reps {
        drop(m.model.lm_head.forward(&xn)?);
    }
    println!("  {:<10} {:>8.2} us", "lm_head", t.elapsed().as_secs_f64() * 1e6 / reps as f64);

    // 4. Dispatch cost.
    struct Nop;
    impl ferrotune_model::pool::Job for Nop {
        fn run(&self, _: usize) {}
    }
    let pool = ferrotune_model::pool::global();
    let job: Arc<dyn ferrotune_model::pool::Job> = Arc::new(Nop);
    for n in [18usize, 64] {
        let reps = 20_000;
        let t = Instant::now();
        for _ in 0..reps {
            pool.run(job.clone(), n);
        }
        println!("  pool.run of {n} empty items: {:.2} us", t.elapsed().as_secs_f64() * 1e6 / reps as f64);
    }
    Ok(())
}
