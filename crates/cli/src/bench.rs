//! `ferrotune bench generate`: prefill and decode speed of the f32 and quantized paths, next to
//! llama.cpp (through llama-cpp-python) on the same GGUF, prompt and thread count, in one run.
//! `ferrotune bench train`: LoRA training speed against HF PEFT. `ferrotune bench rag`: knowledge-base
//! ingest throughput and query latency (`ferrotune_rag::bench`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use ferrotune_model::store::DEFAULT_MODEL;
use ferrotune_model::{KvCache, LoadedModel, Logits, WeightMode};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

impl BenchArgs {
    /// Whether this is a training benchmark (which wants the training thread setup).
    pub fn is_train(&self) -> bool {
        matches!(self.command, BenchCommand::Train(_))
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill tokens/s (one forward over the prompt) and single-stream decode tokens/s.
    Generate(GenerateBench),
    /// LoRA training tokens/s and peak memory on SmolLM2-135M's shape (random weights), against
    /// HF PEFT on PyTorch CPU with the same setup.
    Train(TrainBench),
    /// Knowledge-base ingest throughput (real embedder) and query latency p50/p99 per mode at each
    /// index size. The latency indexes hold generated text with SYNTHETIC random vectors (exact
    /// search costs the same whatever the vectors hold; embedding 100k chunks would take hours).
    Rag(RagBench),
}

#[derive(Args)]
struct RagBench {
    /// Chunks in each latency index.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Generated chunks ingested through the real path (chunk, MiniLM embed, write); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    ingest_chunks: usize,
    /// Timed queries per mode and size.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Hits per query.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Seed for the generated text, questions and vectors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn bench_rag(b: &RagBench) -> anyhow::Result<()> {
    use ferrotune_rag::bench::{BenchConfig, run};
    let threads = candle_core::utils::get_num_threads();
    println!(
        "bench rag: sizes {:?} | ingest {} chunks | {} queries | k = {} | seed {} | {threads} threads",
        b.sizes, b.ingest_chunks, b.queries, b.k, b.seed
    );
    let embedder = match ferrotune_rag::Embedder::load_default() {
        Ok(e) => Some(std::sync::Arc::new(e)),
        Err(e) => {
            println!("SKIPPED: ingest and vector/hybrid latency need the embedder ({e}); run `ferrotune models pull all-minilm-l6-v2`");
            None
        }
    };
    let cfg = BenchConfig { sizes: b.sizes.clone(), ingest_chunks: b.ingest_chunks, queries: b.queries, k: b.k, seed: b.seed };
    let report = run(&cfg, embedder)?;
    print!("{report}");
    Ok(())
}

#[derive(Args)]
struct TrainBench {
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row (every token carries loss).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Python with torch, transformers and peft (several GB; not needed by CI); the peer is
    /// skipped when not given.
    #[arg(long, env = "FERROTUNE_PEFT_PYTHON")]
    peft_python: Option<PathBuf>,
}

fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN)
}

fn bench_train(b: &TrainBench) -> anyhow::Result<()> {
    use ferrotune_model::{Adapter, Family, Llama, LoraSpec, ModelConfig};
    let threads = candle_core::utils::get_num_threads();
    println!("bench train: SmolLM2-135M shape, random weights, f32, LoRA r=16 on 7 projections, AdamW, batch {}x{} tokens, {threads} threads", b.batch, b.seq);
    // The peer runs first, while this process is small: a child's peak-RSS counter starts from
    // its parent's at fork.
    let peer = match &b.peft_python {
        Some(py) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench/peft_train_speed.py");
            let out = Command::new(py)
                .arg(script)
                .args(["--batch", &b.batch.to_string(), "--seq", &b.seq.to_string(), "--steps", &b.steps.to_string()])
                .args(["--threads", &threads.to_string()])
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            if !out.status.success() {
                bail!("PEFT benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())?;
            Some((v["tokens_per_sec"].as_f64().unwrap_or(f64::NAN), v["peak_rss_gib"].as_f64().unwrap_or(f64::NAN)))
        }
        None => None,
    };
    let cfg = ModelConfig {
        family: Family::Llama,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    };
    let w = ferrotune_model::testing::random_weights(&cfg, &Device::Cpu)?;
    let mut model = Llama::load(&w, &cfg, WeightMode::F32, None)?;
    drop(w);
    model.set_differentiable(true);
    let adapter = Adapter::init(&mut model, &LoraSpec::default(), 0)?;
    adapter.attach(&mut model);
    adapter.control.set(true, 0, 0);
    let mut opt = ferrotune_train::optim::AdamW::new(adapter.vars.clone(), Default::default())?;
    let mut rng = 12345u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % cfg.vocab_size as u64) as u32
    };
    let examples: Vec<ferrotune_train::batch::Example> = (0..b.batch)
        .map(|_| {
            let ids: Vec<u32> = (0..b.seq).map(|_| next()).collect();
            ferrotune_train::batch::Example { labels: ids.iter().map(|&i| i as i64).collect(), input_ids: ids }
        })
        .collect();
    let refs: Vec<&ferrotune_train::batch::Example> = examples.iter().collect();
    let batch = ferrotune_train::batch::make_batch(&refs, 0, &Device::Cpu)?;
    ferrotune_train::optimizer_step(&model, &mut opt, std::slice::from_ref(&batch), 2e-4, 1.0)?;
    let t0 = Instant::now();
    for _ in 0..b.steps {
        ferrotune_train::optimizer_step(&model, &mut opt, std::slice::from_ref(&batch), 2e-4, 1.0)?;
    }
    let ours_tps = (b.batch * b.seq * b.steps) as f64 / t0.elapsed().as_secs_f64();
    let ours_rss = peak_rss_gib();
    println!("{:<22} {:>12} {:>14} {:>12} {:>12}", "engine", "tokens/s", "peak RSS GiB", "speed ratio", "memory ratio");
    if let Some((tps, rss)) = peer {
        println!("{:<22} {:>12.1} {:>14.2} {:>12} {:>12}", "HF PEFT (torch CPU)", tps, rss, "1.00x", "1.00x");
        println!("{:<22} {:>12.1} {:>14.2} {:>11.2}x {:>11.2}x", "ferrotune", ours_tps, ours_rss, ours_tps / tps, ours_rss / rss);
    } else {
        println!("{:<22} {:>12.1} {:>14.2} {:>12} {:>12}", "ferrotune", ours_tps, ours_rss, "-", "-");
        println!("(PEFT not measured: pass --peft-python or set FERROTUNE_PEFT_PYTHON)");
    }
    Ok(())
}

#[derive(Args)]
struct GenerateBench {
    /// Model name or GGUF path.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Prompt length in tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode (greedy, EOS ignored) for the decode measurement.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Python interpreter with llama-cpp-python installed (scripts/parity/install-llama-cpp.sh);
    /// the peer is skipped when not given.
    #[arg(long, env = "FERROTUNE_LLAMACPP_PYTHON")]
    llama_cpp_python: Option<PathBuf>,
    /// Which of our paths to run.
    #[arg(long, value_delimiter = ',', default_value = "f32,quantized")]
    paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct Speed {
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

/// A deterministic prompt of exactly `n` tokens: repeated varied English text.
fn prompt_ids(m: &LoadedModel, n: usize) -> anyhow::Result<Vec<u32>> {
    const TEXT: &str = "The committee reviewed the quarterly report on regional water usage, noting that \
        consumption rose 4.2% while rainfall fell. Engineers proposed three measures: repairing leaks in \
        the old network, metering commercial users, and publishing daily figures online. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(m.tokenizer.encode(TEXT, false)?);
    }
    ids.truncate(n);
    Ok(ids)
}

fn measure(m: &LoadedModel, prompt: &[u32], n_gen: usize) -> anyhow::Result<Speed> {
    let dev = Device::Cpu;
    // Warm-up: allocations, rayon pool, rope tables in cache.
    let mut cache = KvCache::new(m.config(), 8);
    m.model.forward(&Tensor::new(&prompt[..8.min(prompt.len())], &dev)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;

    let mut cache = KvCache::new(m.config(), prompt.len() + n_gen + 1);
    let t0 = Instant::now();
    let mut logits = m.model.forward(&Tensor::new(prompt, &dev)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..n_gen {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = ferrotune_model::sampling::argmax(&row);
        logits = m.model.forward(&Tensor::new(&[next], &dev)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(Speed { prefill_tok_s: prompt.len() as f64 / prefill, decode_tok_s: n_gen as f64 / decode })
}

fn llama_cpp(python: &PathBuf, gguf: &std::path::Path, prompt: &[u32], n_gen: usize, threads: usize) -> anyhow::Result<Speed> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench/llamacpp_speed.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(gguf)
        .arg("--tokens")
        .arg(serde_json::to_string(prompt)?)
        .arg("--gen")
        .arg(n_gen.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("llama.cpp benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("parsing llama.cpp benchmark output {last:?}"))
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let b = match a.command {
        BenchCommand::Generate(b) => b,
        BenchCommand::Train(t) => return bench_train(&t),
        BenchCommand::Rag(r) => return bench_rag(&r),
    };
    let threads = candle_core::utils::get_num_threads();
    let path = ferrotune_model::store::resolve(&b.model)?;
    println!("bench generate: {} | prompt {} tokens | decode {} tokens | {threads} threads", path.display(), b.prompt_tokens, b.gen_tokens);
    let mut ours = Vec::new();
    for p in &b.paths {
        let mode = match p.as_str() {
            "f32" => WeightMode::F32,
            "quantized" => WeightMode::Quantized,
            other => bail!("--paths: unknown path `{other}` (f32, quantized)"),
        };
        let m = ferrotune_model::load_path(&path, mode, &Device::Cpu)?;
        let prompt = prompt_ids(&m, b.prompt_tokens)?;
        let s = measure(&m, &prompt, b.gen_tokens)?;
        ours.push((p.clone(), s, prompt));
    }
    let peer = match (&b.llama_cpp_python, ours.first()) {
        (Some(py), Some((_, _, prompt))) => Some(llama_cpp(py, &path, prompt, b.gen_tokens, threads)?),
        _ => None,
    };
    println!("{:<22} {:>14} {:>14} {:>16} {:>16}", "engine", "prefill tok/s", "decode tok/s", "prefill vs llama", "decode vs llama");
    let ratio = |x: f64, y: Option<f64>| y.map(|y| format!("{:.2}x", x / y)).unwrap_or_else(|| "-".into());
    if let Some(p) = peer {
        println!("{:<22} {:>14.1} {:>14.1} {:>16} {:>16}", "llama.cpp", p.prefill_tok_s, p.decode_tok_s, "1.00x", "1.00x");
    } else {
        println!("(llama.cpp not measured: pass --llama-cpp-python or set FERROTUNE_LLAMACPP_PYTHON)");
    }
    for (name, s, _) in &ours {
        println!(
            "{:<22} {:>14.1} {:>14.1} {:>16} {:>16}",
            format!("ferrotune {name}"),
            s.prefill_tok_s,
            s.decode_tok_s,
            ratio(s.prefill_tok_s, peer.map(|p| p.prefill_tok_s)),
            ratio(s.decode_tok_s, peer.map(|p| p.decode_tok_s)),
        );
    }
    Ok(())
}
