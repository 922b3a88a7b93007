//! `ferrotune bench generate`: prefill and decode speed of the f32 and quantized paths, next to
//! llama.cpp (through llama-cpp-python) on the same GGUF, prompt and thread count, in one run.
//! `ferrotune bench train`: LoRA training speed against HF PEFT. `ferrotune bench rag`: knowledge-base
//! ingest throughput and query latency (`ferrotune_rag::bench`). `ferrotune bench structured`:
//! constrained decoding's cost in the server's engine (`bench_structured.rs`).

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
    /// Audit log: appends/s in batches (the server's way) and the time to verify the whole log
    /// (every leaf rehashed, every checkpoint's signature and root checked), against the
    /// targets (>= 50,000 appends/s; 1M entries verified in < 10 s).
    Audit(AuditBench),
    /// Structured output's cost in the server's batched engine: decode tokens/s with a JSON
    /// Schema enforced vs free text, same prompts, greedy, at 1 and 8 concurrent sequences.
    Structured(crate::bench_structured::StructuredBench),
}

#[derive(Args)]
struct AuditBench {
    /// Entries appended (then verified).
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per append (one lock, one write, one fsync each).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// `bench audit`: a fresh log in a temporary folder, filled with inference-shaped events.
fn bench_audit(b: &AuditBench) -> anyhow::Result<()> {
    use ferrotune_govern::audit::{AuditConfig, AuditLog, Event};
    if b.entries == 0 || b.batch == 0 {
        bail!("--entries and --batch must be positive");
    }
    let dir = tempfile::tempdir()?;
    let cfg = AuditConfig { origin: Some("bench.ferrotune/audit".into()), ..AuditConfig::default() };
    let log = AuditLog::open(dir.path(), &cfg)?;
    let event = |i: u64| {
        Event::new(
            "bench-key",
            "inference",
            serde_json::json!({"request": format!("req-{i:012}"), "model": "support@3"}),
            "ok",
            serde_json::json!({"status": 200, "prompt_tokens": 100 + i % 400, "completion_tokens": 64, "latency_ms": 800 + i % 300,
                "cache_hit": i.is_multiple_of(5), "stream": true, "finish_reason": "stop"}),
        )
    };
    println!("bench audit: {} entries in batches of {} ({})", b.entries, b.batch, dir.path().display());
    let t0 = Instant::now();
    let mut done = 0;
    while done < b.entries {
        let n = b.batch.min(b.entries - done);
        let batch: Vec<Event> = (done..done + n).map(event).collect();
        log.append(&batch)?;
        done += n;
    }
    let append_s = t0.elapsed().as_secs_f64();
    let per_sec = b.entries as f64 / append_s;
    let t1 = Instant::now();
    let report = log.verify(None)?;
    let verify_s = t1.elapsed().as_secs_f64();
    if !report.ok {
        bail!("the benchmark's log does not verify: {:?}", report.problems);
    }
    let t2 = Instant::now();
    log.prove(b.entries / 2)?;
    let prove_ms = t2.elapsed().as_secs_f64() * 1e3;
    let bytes: u64 = std::fs::read_dir(dir.path())?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "append: {per_sec:.0} entries/s ({append_s:.1} s) | target >= 50000: {:.2}x",
        per_sec / 50_000.0
    );
    println!(
        "verify: {verify_s:.2} s for {} entries and {} checkpoints ({:.2} s per million) | target < 10 s per million: {:.2}x headroom",
        report.entries,
        report.checkpoints,
        verify_s * 1e6 / b.entries as f64,
        10.0 / (verify_s * 1e6 / b.entries as f64)
    );
    println!("prove entry {}: {prove_ms:.1} ms | log files {:.1} MB", b.entries / 2, bytes as f64 / 1e6);
    if let Some(out) = &b.out {
        let v = serde_json::json!({
            "entries": b.entries, "batch": b.batch, "append_per_sec": per_sec, "append_secs": append_s,
            "verify_secs": verify_s, "checkpoints": report.checkpoints, "prove_ms": prove_ms, "bytes": bytes,
            "targets": {"append_per_sec": 50000, "verify_secs_per_million": 10},
        });
        std::fs::write(out, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| out.display().to_string())?;
    }
    Ok(())
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
            println!(
                "SKIPPED: ingest and vector/hybrid latency need the embedder ({e}); run `ferrotune models pull all-minilm-l6-v2`"
            );
            None
        }
    };
    let cfg = BenchConfig {
        sizes: b.sizes.clone(),
        ingest_chunks: b.ingest_chunks,
        queries: b.queries,
        k: b.k,
        seed: b.seed,
    };
    let report = run(&cfg, embedder)?;
    print!("{report}");
    Ok(())
}

#[derive(Args)]
struct TrainBench {
    /// Model shape (random weights, initialised as transformers does): smollm2-135m
    /// (576 hidden, 30 layers, 9/3 heads, vocab 49152) or llama-1b (Llama-3.2-1B: 2048 hidden,
    /// 16 layers, 32/8 heads, FFN 8192, vocab 128256).
    #[arg(long, default_value = "smollm2-135m")]
    shape: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row (every token carries loss).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// cpu, cuda or cuda:N (CUDA needs the GPU build, scripts/gpu/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// auto (f32 on the CPU, bf16 on a GPU), f32 or bf16; LoRA variables and AdamW state are f32.
    #[arg(long, default_value = "auto")]
    dtype: ferrotune_train::config::Precision,
    /// LoRA dropout, the same for both engines.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Python with torch, transformers and peft (several GB; not needed by CI); the peer is
    /// skipped when not given.
    #[arg(long, env = "FERROTUNE_PEFT_PYTHON")]
    peft_python: Option<PathBuf>,
    /// Also time the phases of a step and the pieces of a layer one by one (on a GPU, the device synchronised around each); a GPU run prints the phases anyway.
    #[arg(long)]
    profile: bool,
    /// Data parallel over these GPUs (e.g. `--device cuda --devices 0,1`), as `ferrotune train
    /// --devices`: the batch's rows split across them. Also checks the split's gradients against
    /// the first GPU alone on the whole batch, and each GPU alone against the first.
    #[arg(long)]
    devices: Option<String>,
    /// Write the results as JSON here (with both loss trajectories).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN)
}

/// The largest `memory.used` nvidia-smi reports for one GPU while it runs (sampled every 20 ms):
/// the whole device's use, CUDA context included — the same measure for both engines.
struct GpuMemSampler {
    child: std::process::Child,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GpuMemSampler {
    fn start(gpu: usize) -> Option<Self> {
        use std::io::BufRead;
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                &gpu.to_string(),
                "-lms",
                "20",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let out = child.stdout.take()?;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mib) = line.trim().parse::<u64>() {
                    p.fetch_max(mib, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        Some(Self { child, peak, reader: Some(reader) })
    }

    fn stop(mut self) -> f64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

fn bench_shape(name: &str) -> anyhow::Result<ferrotune_model::ModelConfig> {
    use ferrotune_model::{Family, ModelConfig};
    let base = ModelConfig {
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
    match name {
        "smollm2-135m" => Ok(base),
        "llama-1b" => Ok(ModelConfig {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            vocab_size: 128_256,
            rope_theta: 500_000.0,
            max_position_embeddings: 131_072,
            ..base
        }),
        other => bail!("unknown --shape `{other}` (smollm2-135m, llama-1b)"),
    }
}

/// Milliseconds per call of `f` over `reps` calls after one warm-up, the device synchronised
/// before and after (GPU work is asynchronous).
fn synced_ms(device: &Device, reps: usize, f: &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
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
fn profile_ops(
    model: &ferrotune_model::Llama,
    cfg: &ferrotune_model::ModelConfig,
    device: &Device,
    dtype: candle_core::DType,
    n: usize,
    adapter: &ferrotune_model::Adapter,
) -> anyhow::Result<()> {
    use ferrotune_model::handoff;
    use ferrotune_model::linear::LinearAdapter;
    let time = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<Tensor>| -> anyhow::Result<()> {
        let ms = synced_ms(device, 10, &mut || f().map(drop))?;
        println!("  {name:<44} {ms:>9.3} ms");
        Ok(())
    };
    let (hid, ffn, h, kv, d) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let t = n / 8;
    let var = |shape: &[usize]| -> anyhow::Result<candle_core::Var> {
        Ok(candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)?)
    };
    let x = var(&[n, hid])?;
    let xt = x.as_tensor();
    let wq = Tensor::randn(0f32, 0.02, (h * d, hid), device)?.to_dtype(dtype)?;
    let norm_w = Tensor::ones(hid, dtype, device)?;
    println!("profile ({n} tokens, {dtype:?}):");
    if ferrotune_model::cuda_kernels::available(xt) {
        time("dropout mask [n, hidden] (hash kernel)", &mut || {
            Ok(ferrotune_model::cuda_kernels::dropout_mask(xt, 7, 0.95)?)
        })?;
        time("dropout applied [n, hidden] (hash kernel)", &mut || {
            Ok(ferrotune_model::cuda_kernels::dropout_apply(xt, 7, 0.95)?)
        })?;
    }
    time("copy [n, hidden]", &mut || Ok(xt.copy()?))?;
    time("mul [n, hidden]", &mut || Ok((xt * xt)?))?;
    time("matmul x·Wqᵀ (no graph)", &mut || Ok(xt.detach().matmul(&wq.t()?)?))?;
    time("frozen_matmul x·Wqᵀ", &mut || Ok(handoff::frozen_matmul(xt, &wq)?))?;
    let q_proj = &model.layers[0].self_attn.q_proj;
    time("q_proj Linear (base + LoRA, dropout on)", &mut || Ok(q_proj.forward(xt)?))?;
    if let Some(l) = adapter.layers.get("model.layers.0.self_attn.q_proj") {
        time("LoRA delta alone", &mut || Ok(l.delta(xt)?))?;
    }
    time("rms_norm (handoff)", &mut || Ok(handoff::rms_norm(xt, &norm_w, 1e-5)?))?;
    let q = var(&[8, h, t, d])?;
    let k = var(&[8, kv, t, d])?;
    let v = var(&[8, kv, t, d])?;
    let ang = Tensor::randn(0f32, 1.0, (t, d / 2), device)?.to_dtype(dtype)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    time("rope q (handoff)", &mut || Ok(handoff::rope(q.as_tensor(), &cos, &sin)?))?;
    let mut m = vec![0f32; t * t];
    (0..t).for_each(|s| (s + 1..t).for_each(|j| m[s * t + j] = f32::NEG_INFINITY));
    let mask = Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)?;
    let qf = q.as_tensor().reshape((8, kv, (h / kv) * t, d))?;
    time("causal_attention forward", &mut || {
        Ok(handoff::causal_attention(&qf, k.as_tensor(), v.as_tensor(), t, 0.125, Some(&mask))?)
    })?;
    time("causal_attention forward+backward", &mut || {
        let o = handoff::causal_attention(&qf, k.as_tensor(), v.as_tensor(), t, 0.125, Some(&mask))?;
        o.sum_all()?.backward()?;
        Ok(o)
    })?;
    let g = var(&[n, ffn])?;
    time("silu·up [n, ffn]", &mut || Ok((g.as_tensor().silu()? * g.as_tensor())?))?;
    // Forward + backward of the pieces of a layer, as training runs them (graph on, the backward
    // starting from a sum: subtract the baseline line for the gradient's broadcast).
    let fb = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<Tensor>| -> anyhow::Result<()> {
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
    fb("rms_norm", &mut || Ok(handoff::rms_norm(xt, &norm_w, 1e-5)?))?;
    fb("silu(g)·g", &mut || Ok((g.as_tensor().silu()? * g.as_tensor())?))?;
    fb("x + x (residual)", &mut || Ok((xt + xt)?))?;
    fb("heads: reshape·transpose·contiguous", &mut || {
        Ok(xt.reshape((8, t, h, d))?.transpose(1, 2)?.contiguous()?)
    })?;
    fb("rope q", &mut || Ok(handoff::rope(q.as_tensor(), &cos, &sin)?))?;
    // Attention's parts, no graph.
    let (qd, kd, vd) = (qf.detach(), k.as_tensor().detach(), v.as_tensor().detach());
    time("attn: scores q·kᵀ", &mut || Ok(qd.matmul(&kd.t()?)?))?;
    let scores = qd.matmul(&kd.t()?)?;
    if ferrotune_model::cuda_kernels::available(&scores) {
        time("attn: causal softmax kernel", &mut || {
            Ok(ferrotune_model::cuda_kernels::causal_softmax(&scores, t, 0.125)?)
        })?;
        let p = ferrotune_model::cuda_kernels::causal_softmax(&scores, t, 0.125)?;
        time("attn: p·v", &mut || Ok(p.matmul(&vd)?))?;
        time("attn: pᵀ·dO", &mut || Ok(p.t()?.matmul(&qd)?))?;
        time("attn: dO·vᵀ", &mut || Ok(qd.matmul(&vd.t()?)?))?;
        time("attn: softmax backward kernel", &mut || {
            Ok(ferrotune_model::cuda_kernels::causal_softmax_backward(&p, &scores, t, 0.125)?)
        })?;
        time("attn: dS·k", &mut || Ok(p.matmul(&kd)?))?;
        time("attn: dSᵀ·q", &mut || Ok(p.t()?.matmul(&qd)?))?;
    }
    let targets = Tensor::zeros(n, candle_core::DType::U32, device)?;
    if let Some(w) = model.frozen_head_weight() {
        time("head cross-entropy forward", &mut || {
            Ok(handoff::frozen_head_cross_entropy_sum(xt, w, &targets)?)
        })?;
        time("head cross-entropy forward+backward", &mut || {
            let l = handoff::frozen_head_cross_entropy_sum(xt, w, &targets)?;
            l.backward()?;
            Ok(l)
        })?;
    }
    Ok(())
}

struct TrainSpeed {
    tokens_per_sec: f64,
    /// GiB: peak RSS on the CPU, peak device memory (nvidia-smi) on a GPU.
    peak_gib: f64,
    losses: Vec<f64>,
}

fn bench_train(b: &TrainBench) -> anyhow::Result<()> {
    use ferrotune_model::{Adapter, Llama, LoraSpec};
    use ferrotune_train::parallel;
    let cfg = bench_shape(&b.shape)?;
    let tc = ferrotune_train::TrainConfig { dtype: b.dtype, ..Default::default() };
    let gpus = b.devices.as_deref().map(|list| parallel::gpu_list(&b.device, list)).transpose()?;
    let mut devices = match &gpus {
        Some(list) => parallel::open_devices(list)?,
        None => vec![ferrotune_train::config::open_device(&b.device)?],
    };
    let others = devices.split_off(1);
    let device = devices.remove(0);
    let gpu = match &gpus {
        Some(list) => Some(list[0]),
        None => match ferrotune_train::config::parse_device(&b.device)? {
            ferrotune_train::config::DeviceSpec::Cuda(n) => Some(n),
            ferrotune_train::config::DeviceSpec::Cpu => None,
        },
    };
    let dtype = tc.resolved_dtype(&device);
    let dtype_name = if dtype == candle_core::DType::BF16 { "bf16" } else { "f32" };
    // The pool's threads (main sets RAYON_NUM_THREADS=1 for candle's matmuls when training).
    let threads = rayon::current_num_threads();
    let mem_name = if gpu.is_some() { "peak GPU GiB" } else { "peak RSS GiB" };
    println!(
        "bench train: {} shape, random weights (std 0.02), {dtype_name} on {}, LoRA r=16 α=32 dropout {} on 7 projections, AdamW lr 2e-4, batch {}x{} tokens, {} timed steps{}",
        b.shape,
        b.devices.as_deref().map_or(b.device.clone(), |d| format!("GPUs {d} (data parallel)")),
        b.lora_dropout,
        b.batch,
        b.seq,
        b.steps,
        if gpu.is_none() { format!(", {threads} threads") } else { String::new() }
    );
    // The peer runs first, while this process is small: a child's peak-RSS counter starts from
    // its parent's at fork.
    let peer = match &b.peft_python {
        Some(py) => {
            // The repo's script: from the working directory (a binary carried to another machine),
            // else where this binary was built.
            let rel = "scripts/bench/peft_train_speed.py";
            let script = if std::path::Path::new(rel).exists() {
                rel.to_string()
            } else {
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench/peft_train_speed.py").to_string()
            };
            let sampler = gpu.and_then(GpuMemSampler::start);
            let out = Command::new(py)
                .arg(&script)
                .args(["--shape", &b.shape, "--batch", &b.batch.to_string(), "--seq", &b.seq.to_string()])
                .args([
                    "--steps",
                    &b.steps.to_string(),
                    "--threads",
                    &threads.to_string(),
                    "--dtype",
                    dtype_name,
                ])
                .args(["--dropout", &b.lora_dropout.to_string()])
                .args(["--device", &gpu.map_or("cpu".to_string(), |n| format!("cuda:{n}"))])
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            let gpu_peak = sampler.map(GpuMemSampler::stop);
            if !out.status.success() {
                bail!("PEFT benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())?;
            let losses = v["losses"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default();
            if let Some(alloc) = v["torch_max_allocated_gib"].as_f64() {
                println!(
                    "(PEFT: torch's own peak allocation {alloc:.2} GiB, reserved {:.2} GiB)",
                    v["torch_max_reserved_gib"].as_f64().unwrap_or(f64::NAN)
                );
            }
            Some(TrainSpeed {
                tokens_per_sec: v["tokens_per_sec"].as_f64().unwrap_or(f64::NAN),
                peak_gib: gpu_peak.unwrap_or_else(|| v["peak_rss_gib"].as_f64().unwrap_or(f64::NAN)),
                losses,
            })
        }
        None => None,
    };

    // One memory sampler per GPU.
    let samplers: Vec<(usize, Option<GpuMemSampler>)> = match (&gpus, gpu) {
        (Some(list), _) => list.iter().map(|&n| (n, GpuMemSampler::start(n))).collect(),
        (None, Some(n)) => vec![(n, GpuMemSampler::start(n))],
        (None, None) => Vec::new(),
    };
    let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &device, 0)?;
    let model = Llama::load(&w, &cfg, WeightMode::F32, None)?;
    drop(w);
    let mut model = if dtype == candle_core::DType::F32 { model } else { model.cast(&device, dtype)? };
    model.set_differentiable(true);
    let spec = LoraSpec { dropout: b.lora_dropout, ..LoraSpec::default() };
    let replicas =
        if others.is_empty() { None } else { Some(parallel::Replicas::lora(&model, &others, &spec, 0)?) };
    let adapter = Adapter::init(&mut model, &spec, 0)?;
    adapter.attach(&mut model);
    if let Some(r) = &replicas {
        r.broadcast(&adapter.vars)?;
    }
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
            ferrotune_train::batch::Example {
                labels: ids.iter().map(|&i| i as i64).collect(),
                input_ids: ids,
            }
        })
        .collect();
    let refs: Vec<&ferrotune_train::batch::Example> = examples.iter().collect();
    let batch = ferrotune_train::batch::make_batch(&refs, 0, &device)?;
    // Data parallel: the first GPU's model and the replicas', each with its share of the rows.
    let models: Vec<&Llama> =
        std::iter::once(&model).chain(replicas.iter().flat_map(|r| &r.models)).collect();
    let vars: Vec<&[(String, candle_core::Var)]> = std::iter::once(adapter.vars.as_slice())
        .chain(replicas.iter().flat_map(|r| r.adapters.iter().map(|a| a.vars.as_slice())))
        .collect();
    let shared = parallel::shares(&refs, models.len())
        .iter()
        .zip(&models)
        .map(|(p, m)| {
            Ok(if p.is_empty() {
                Vec::new()
            } else {
                vec![ferrotune_train::batch::make_batch(p, 0, m.device())?]
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let step = |opt: &mut ferrotune_train::optim::AdamW, s: u64| -> anyhow::Result<f64> {
        adapter.control.set(true, 0, s);
        Ok(match &replicas {
            Some(r) => {
                r.set_training(true, 0, s);
                parallel::optimizer_step(&models, &vars, &shared, opt, r, 2e-4, 1.0)?.loss
            }
            None => {
                ferrotune_train::optimizer_step(&model, opt, std::slice::from_ref(&batch), 2e-4, 1.0)?.loss
            }
        })
    };
    let mut losses = vec![step(&mut opt, 0)?];
    let t0 = Instant::now();
    for s in 0..b.steps {
        // The loss read back each step synchronises the device(s), so the clock sees finished work.
        losses.push(step(&mut opt, s as u64 + 1)?);
    }
    let step_time = t0.elapsed().as_secs_f64() / b.steps.max(1) as f64;
    if (gpu.is_some() || b.profile) && replicas.is_none() {
        // Where a step's time goes: each phase ends with the device synchronised.
        let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| synced_ms(&device, 3, f);
        // The loss alone, or the loss and its backward, of `m` on the batch.
        let loss_ms = |m: &Llama, backward: bool| {
            time(&mut || {
                let l = ferrotune_train::batch::loss_sum(m, &batch)?;
                if backward {
                    l.backward()?;
                } else {
                    l.to_scalar::<f32>()?;
                }
                Ok(())
            })
        };
        let fwd = loss_ms(&model, false)?;
        let fwd_bwd = loss_ms(&model, true)?;
        adapter.control.set(false, 0, 0);
        let fwd_bwd_nodrop = loss_ms(&model, true)?;
        let (m, k, n) = (b.batch * b.seq, cfg.hidden_size, cfg.intermediate_size);
        let x = Tensor::ones((m, k), dtype, &device)?;
        let w = Tensor::ones((n, k), dtype, &device)?;
        let mm = time(&mut || {
            x.matmul(&w.t()?)?;
            Ok(())
        })?;
        if b.profile {
            profile_ops(&model, &cfg, &device, dtype, b.batch * b.seq, &adapter)?;
            // A step's cost per decoder layer: the same shape with 1 and 2 layers.
            for layers in [1usize, 2] {
                let c = ferrotune_model::ModelConfig { num_layers: layers, ..cfg.clone() };
                let w = ferrotune_model::testing::hf_init_random_weights(&c, &device, 0)?;
                let m = Llama::load(&w, &c, WeightMode::F32, None)?;
                drop(w);
                let mut m = if dtype == candle_core::DType::F32 { m } else { m.cast(&device, dtype)? };
                m.set_differentiable(true);
                let a = Adapter::init(&mut m, &spec, 0)?;
                a.attach(&mut m);
                a.control.set(true, 0, 1);
                let (f, fb) = (loss_ms(&m, false)?, loss_ms(&m, true)?);
                println!("  {layers} layer(s): forward {f:.2} ms, forward+backward {fb:.2} ms");
            }
        }
        println!(
            "ferrotune phases (ms): step {:.1} | forward {fwd:.1} | forward+backward {fwd_bwd:.1} (without dropout {fwd_bwd_nodrop:.1}) | optimizer ≈ {:.1} | one {m}x{k}x{n} matmul {mm:.2} ms = {:.0} TFLOP/s",
            step_time * 1e3,
            step_time * 1e3 - fwd_bwd,
            2.0 * (m * k * n) as f64 / (mm * 1e-3) / 1e12
        );
    }
    // Per-GPU peaks of the run itself (before the check below, which runs the whole batch on every GPU).
    let peaks: Vec<(usize, f64)> = samplers.into_iter().filter_map(|(n, s)| Some((n, s?.stop()))).collect();
    let agreement = match &replicas {
        Some(r) => {
            // Same weights everywhere (the last step broadcast them), dropout off: the split must
            // give the first GPU's gradients to bf16 rounding, and each GPU alone the first's.
            adapter.control.set(false, 0, 0);
            r.set_training(false, 0, 0);
            let a = parallel::agreement(&models, &vars, &refs, 0, r)?;
            println!(
                "data parallel vs GPU {} alone on the whole batch (same weights, no dropout): loss {:.6} vs {:.6}; gradients: relative L2 error {:.2e} (worst parameter {} {:.2e})",
                gpu.unwrap_or(0),
                a.loss_split,
                a.loss_one,
                a.split_rel,
                a.worst.0,
                a.worst.1
            );
            println!(
                "  the split against its shares run one after the other on GPU {} and added there: relative L2 error {:.2e}",
                gpu.unwrap_or(0),
                a.exchange_rel
            );
            for (k, e) in a.alone_rel.iter().enumerate() {
                println!(
                    "  GPU {} alone vs GPU {} alone, same batch: gradients' relative L2 error {e:.2e}",
                    gpus.as_ref().map_or(k + 1, |l| l[k + 1]),
                    gpu.unwrap_or(0)
                );
            }
            Some(a)
        }
        None => None,
    };
    let ours = TrainSpeed {
        tokens_per_sec: (b.batch * b.seq) as f64 / step_time,
        peak_gib: if gpu.is_some() {
            peaks.iter().map(|p| p.1).fold(f64::NAN, f64::max)
        } else {
            peak_rss_gib()
        },
        losses,
    };
    if peaks.len() > 1 {
        let each: Vec<String> = peaks.iter().map(|(n, g)| format!("GPU {n} {g:.2} GiB")).collect();
        println!("peak memory per GPU: {} (the table shows the largest)", each.join(", "));
    }

    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>12}",
        "engine", "tokens/s", mem_name, "speed ratio", "memory ratio"
    );
    let fmt_losses = |l: &[f64]| {
        format!(
            "{:.3} -> {:.3}",
            l.first().copied().unwrap_or(f64::NAN),
            l.last().copied().unwrap_or(f64::NAN)
        )
    };
    let peer_name = if gpu.is_some() { "HF PEFT (torch CUDA)" } else { "HF PEFT (torch CPU)" };
    if let Some(p) = &peer {
        println!(
            "{:<22} {:>12.1} {:>14.2} {:>12} {:>12}",
            peer_name, p.tokens_per_sec, p.peak_gib, "1.00x", "1.00x"
        );
        println!(
            "{:<22} {:>12.1} {:>14.2} {:>11.2}x {:>11.2}x",
            "ferrotune",
            ours.tokens_per_sec,
            ours.peak_gib,
            ours.tokens_per_sec / p.tokens_per_sec,
            ours.peak_gib / p.peak_gib
        );
        println!(
            "loss over the {} steps (same batch each step): PEFT {}, ferrotune {}",
            p.losses.len(),
            fmt_losses(&p.losses),
            fmt_losses(&ours.losses)
        );
        let drop = |l: &[f64]| l.first().zip(l.last()).map(|(a, z)| a - z).unwrap_or(f64::NAN);
        let (dp, du) = (drop(&p.losses), drop(&ours.losses));
        let alike = dp > 0.0 && du > 0.0 && (du / dp) > 0.5 && (du / dp) < 2.0;
        println!(
            "losses fall alike: {} (decrease PEFT {dp:.3}, ferrotune {du:.3})",
            if alike { "yes" } else { "NO" }
        );
    } else {
        println!(
            "{:<22} {:>12.1} {:>14.2} {:>12} {:>12}",
            "ferrotune", ours.tokens_per_sec, ours.peak_gib, "-", "-"
        );
        println!("loss: {}", fmt_losses(&ours.losses));
        println!("(PEFT not measured: pass --peft-python or set FERROTUNE_PEFT_PYTHON)");
    }
    if let Some(path) = &b.json {
        let side = |s: &TrainSpeed| serde_json::json!({"tokens_per_sec": s.tokens_per_sec, "peak_gib": s.peak_gib, "losses": s.losses});
        let v = serde_json::json!({
            "shape": b.shape, "device": b.device, "devices": b.devices, "dtype": dtype_name, "batch": b.batch, "seq": b.seq, "steps": b.steps,
            "lora_dropout": b.lora_dropout, "memory": mem_name,
            "ferrotune": side(&ours), "peft": peer.as_ref().map(side),
            "peak_gib_per_gpu": peaks.iter().map(|(n, g)| serde_json::json!({"gpu": n, "peak_gib": g})).collect::<Vec<_>>(),
            "data_parallel_check": agreement.as_ref().map(|a| serde_json::json!({
                "loss_one_gpu": a.loss_one, "loss_split": a.loss_split, "gradient_rel_l2": a.split_rel,
                "worst_parameter": a.worst.0, "worst_rel_l2": a.worst.1, "exchange_rel_l2": a.exchange_rel, "each_gpu_alone_vs_first_rel_l2": a.alone_rel,
            })),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
    m.model.forward(
        &Tensor::new(&prompt[..8.min(prompt.len())], &dev)?.unsqueeze(0)?,
        None,
        Some(&mut cache),
        Logits::Last,
    )?;

    let mut cache = KvCache::new(m.config(), prompt.len() + n_gen + 1);
    let t0 = Instant::now();
    let mut logits =
        m.model.forward(&Tensor::new(prompt, &dev)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..n_gen {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = ferrotune_model::sampling::argmax(&row);
        logits = m.model.forward(
            &Tensor::new(&[next], &dev)?.unsqueeze(0)?,
            None,
            Some(&mut cache),
            Logits::Last,
        )?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(Speed { prefill_tok_s: prompt.len() as f64 / prefill, decode_tok_s: n_gen as f64 / decode })
}

fn llama_cpp(
    python: &PathBuf,
    gguf: &std::path::Path,
    prompt: &[u32],
    n_gen: usize,
    threads: usize,
) -> anyhow::Result<Speed> {
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
        BenchCommand::Audit(x) => return bench_audit(&x),
        BenchCommand::Structured(x) => return crate::bench_structured::bench_structured(&x),
    };
    let threads = candle_core::utils::get_num_threads();
    let path = ferrotune_model::store::resolve(&b.model)?;
    println!(
        "bench generate: {} | prompt {} tokens | decode {} tokens | {threads} threads",
        path.display(),
        b.prompt_tokens,
        b.gen_tokens
    );
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
    println!(
        "{:<22} {:>14} {:>14} {:>16} {:>16}",
        "engine", "prefill tok/s", "decode tok/s", "prefill vs llama", "decode vs llama"
    );
    let ratio = |x: f64, y: Option<f64>| y.map(|y| format!("{:.2}x", x / y)).unwrap_or_else(|| "-".into());
    if let Some(p) = peer {
        println!(
            "{:<22} {:>14.1} {:>14.1} {:>16} {:>16}",
            "llama.cpp", p.prefill_tok_s, p.decode_tok_s, "1.00x", "1.00x"
        );
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
