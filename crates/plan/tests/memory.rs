//! The memory formulas against the peaks the project measured (`bench/`), and properties of the
//! formulas that would catch a wrong term.
//!
//! Every record is predicted from its shape, batch and sequence alone: no per-record factor.
//! The one adjustment is the benchmark harness's own: `ferrotune bench train` on a GPU builds
//! the model in f32 on the device and casts it to bf16 (`crates/bench/src/train.rs`,
//! `Rig::build` keeps the f32 model it cast from for the whole run), so its peaks
//! hold a second, f32 copy of the weights that `ferrotune train` (which casts from the CPU and
//! replaces its model) does not.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ferrotune_model::ModelConfig;
use ferrotune_plan::memory::{self, StepShape, TrainOptions, names, training_with};
use ferrotune_plan::{Backend, Method, default_targets, gib, shapes};

const TOLERANCE: f64 = 0.15;

fn bench_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench").join(name)
}

fn read_json(name: &str) -> Result<serde_json::Value> {
    let path = bench_path(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The benchmark's shapes as `ferrotune_bench::train::shape` (crates/bench/src/train.rs) builds them: both tied.
fn bench_shape(name: &str) -> Result<ModelConfig> {
    let cfg = shapes::lookup(name)?;
    let dims = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.tie_word_embeddings,
    );
    let want = match name {
        "smollm2-135m" => (576, 1536, 30, 9, 3, 64, 49152, true),
        "llama-1b" => (2048, 8192, 16, 32, 8, 64, 128_256, true),
        other => bail!("no benchmark shape {other}"),
    };
    assert_eq!(dims, want, "{name}: the plan's shape differs from the benchmark's");
    Ok(cfg)
}

fn lora() -> Method {
    Method::Lora { r: 16, targets: default_targets() }
}

fn step(batch: usize, seq: usize) -> StepShape {
    StepShape { batch, seq, checkpointing: false }
}

/// The f32 weights `bench train` keeps on the GPU beside the bf16 model (see the module note).
fn bench_f32_source(cfg: &ModelConfig) -> u64 {
    cfg.parameter_count() * 4
}

struct Row {
    what: String,
    predicted: f64,
    measured: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.predicted / self.measured
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("{:<58} {:>10} {:>10} {:>7}", "record", "predicted", "measured", "ratio");
    for r in rows {
        println!("{:<58} {:>8.2} G {:>8.2} G {:>7.3}", r.what, r.predicted, r.measured, r.ratio());
    }
}

fn assert_within(rows: &[Row]) {
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| (r.ratio() - 1.0).abs() > TOLERANCE)
        .map(|r| format!("{}: {:.3}", r.what, r.ratio()))
        .collect();
    assert!(bad.is_empty(), "outside ±{:.0}%: {}", TOLERANCE * 100.0, bad.join(", "));
}

/// Predicted GiB of a single-GPU `bench train` record.
fn gpu_bench_prediction(shape: &str, batch: usize, seq: usize, dropout: f64) -> Result<f64> {
    let cfg = bench_shape(shape)?;
    let e = training_with(
        &cfg,
        &lora(),
        Backend::Cuda,
        step(batch, seq),
        TrainOptions { lora_dropout: dropout, cpu_threads: 1 },
    );
    Ok(gib(e.total_bytes + bench_f32_source(&cfg)))
}

#[test]
fn single_gpu_training_peaks_are_predicted_within_15_percent() -> Result<()> {
    let mut rows = Vec::new();
    for file in ["gpu-train-smollm2-135m.json", "gpu-train-llama-1b.json"] {
        let v = read_json(file)?;
        let (shape, batch, seq) = (
            v["shape"].as_str().context("shape")?,
            v["batch"].as_u64().context("batch")?,
            v["seq"].as_u64().context("seq")?,
        );
        let dropout = v["lora_dropout"].as_f64().context("lora_dropout")?;
        let measured = v["ferrotune"]["peak_gib"].as_f64().context("peak_gib")?;
        let predicted = gpu_bench_prediction(shape, batch as usize, seq as usize, dropout)?;
        rows.push(Row { what: format!("{file} ({shape}, {batch}×{seq}, H200)"), predicted, measured });
    }
    // The single-GPU runs recorded beside the data-parallel ones (keys ending in `-one`).
    let dp = read_json("gpu-train-dp.json")?;
    let records = dp.as_object().context("gpu-train-dp.json: an object of records")?;
    for (key, v) in records.iter().filter(|(k, _)| k.ends_with("-one")) {
        let (shape, batch, seq) = (
            v["shape"].as_str().context("shape")?,
            v["batch"].as_u64().context("batch")?,
            v["seq"].as_u64().context("seq")?,
        );
        let dropout = v["lora_dropout"].as_f64().context("lora_dropout")?;
        let measured = v["ferrotune"]["peak_gib"].as_f64().context("peak_gib")?;
        let predicted = gpu_bench_prediction(shape, batch as usize, seq as usize, dropout)?;
        rows.push(Row { what: format!("dp {key} ({batch}×{seq})"), predicted, measured });
    }
    print_table("single-GPU LoRA training, bf16 (peak memory.used, GiB)", &rows);
    assert_eq!(rows.len(), 7, "two records and five single-GPU runs in gpu-train-dp.json");
    assert_within(&rows);
    Ok(())
}

/// bench/gpu-train.md's history: the 1B shape at 8×1024 peaked at 21.9 GiB while attention
/// recomputed its probabilities in backward, 29.4 GiB once it kept them (`31f93d6`). The term
/// for kept probabilities must account for the difference, and the estimate without them must
/// match the earlier peak.
#[test]
fn the_attention_probabilities_term_explains_the_recorded_jump() -> Result<()> {
    let cfg = bench_shape("llama-1b")?;
    let e = training_with(
        &cfg,
        &lora(),
        Backend::Cuda,
        step(8, 1024),
        TrainOptions { lora_dropout: 0.05, cpu_threads: 1 },
    );
    let probs = e.bytes_of(names::PROBS);
    let per_layer = probs / cfg.num_layers as u64;
    assert_eq!(per_layer, 8 * 32 * 1024 * 1024 * 2, "b × heads × t² × 2 B");
    // Without kept probabilities: none held, and backward holds the recomputed ones beside dP
    // and dS (3 instead of 2 of their size).
    let recomputed = e.total_bytes - probs + per_layer + bench_f32_source(&cfg);
    let rows = [
        Row {
            what: "1B 8×1024, probabilities recomputed (before 31f93d6)".into(),
            predicted: gib(recomputed),
            measured: 21.9,
        },
        Row {
            what: "1B 8×1024, probabilities kept (31f93d6)".into(),
            predicted: gib(e.total_bytes + bench_f32_source(&cfg)),
            measured: 29.4,
        },
    ];
    print_table("bench/gpu-train.md history", &rows);
    assert_within(&rows);
    let jump = gib(probs - per_layer);
    assert!(
        (jump / (29.4 - 21.9) - 1.0).abs() < TOLERANCE,
        "predicted jump {jump:.2} GiB against the measured 7.5"
    );
    Ok(())
}

/// Data parallel (`--devices 0,1`): rows split across two GPUs; GPU 0 also holds the f32
/// source model (bench harness), the reduce buffer and the optimizer. NCCL's own buffers and a
/// second context are not modelled, so these are printed, not asserted (see docs/plan.md).
#[test]
fn data_parallel_peaks_are_printed_beside_the_per_gpu_prediction() -> Result<()> {
    let dp = read_json("gpu-train-dp.json")?;
    let records = dp.as_object().context("gpu-train-dp.json: an object of records")?;
    let mut rows = Vec::new();
    for (key, v) in records.iter().filter(|(k, v)| !k.ends_with("-one") && v["dtype"] == "bf16") {
        let (shape, batch, seq) = (
            v["shape"].as_str().context("shape")?,
            v["batch"].as_u64().context("batch")? as usize,
            v["seq"].as_u64().context("seq")? as usize,
        );
        let cfg = bench_shape(shape)?;
        let dropout = v["lora_dropout"].as_f64().context("lora_dropout")?;
        let e = training_with(
            &cfg,
            &lora(),
            Backend::Cuda,
            step(batch / 2, seq),
            TrainOptions { lora_dropout: dropout, cpu_threads: 1 },
        );
        for g in v["peak_gib_per_gpu"].as_array().context("peak_gib_per_gpu")? {
            let gpu = g["gpu"].as_u64().context("gpu")?;
            let extra = if gpu == 0 { bench_f32_source(&cfg) } else { 0 };
            rows.push(Row {
                what: format!("{key} GPU {gpu}"),
                predicted: gib(e.total_bytes + extra),
                measured: g["peak_gib"].as_f64().context("peak_gib")?,
            });
        }
    }
    print_table("data parallel, per GPU (not asserted: NCCL buffers not modelled)", &rows);
    assert!(!rows.is_empty());
    Ok(())
}

#[test]
fn cpu_training_peaks_are_predicted_within_15_percent() -> Result<()> {
    let name = "cpu-train.json";
    if !bench_path(name).exists() {
        eprintln!("bench/{name} not recorded yet: nothing to compare");
        return Ok(());
    }
    let v = read_json(name)?;
    let mut rows = Vec::new();
    for r in v["records"].as_array().context("records")? {
        let (shape, batch, seq) = (
            r["shape"].as_str().context("shape")?,
            r["batch"].as_u64().context("batch")? as usize,
            r["seq"].as_u64().context("seq")? as usize,
        );
        let cfg = bench_shape(shape)?;
        // The record's machine: 2 cores (bench train runs one share per rayon thread).
        let threads = r["threads"].as_u64().map_or(2, |t| t as usize);
        let dropout = r["lora_dropout"].as_f64().unwrap_or(0.05);
        let e = training_with(
            &cfg,
            &lora(),
            Backend::Cpu,
            step(batch, seq),
            TrainOptions { lora_dropout: dropout, cpu_threads: threads },
        );
        let measured = r["ferrotune"]["peak_gib"].as_f64().context("peak_gib")?;
        rows.push(Row {
            what: format!("{shape} {batch}×{seq}, f32, {threads} threads (peak RSS)"),
            predicted: gib(e.total_bytes),
            measured,
        });
    }
    print_table("CPU LoRA training, f32 (peak RSS, GiB)", &rows);
    assert!(rows.len() >= 3);
    assert_within(&rows);
    Ok(())
}

#[test]
fn worked_example_items_are_printed_for_the_docs() -> Result<()> {
    let cfg = bench_shape("smollm2-135m")?;
    let e = training_with(
        &cfg,
        &lora(),
        Backend::Cuda,
        step(8, 1024),
        TrainOptions { lora_dropout: 0.05, cpu_threads: 1 },
    );
    println!("\nSmolLM2-135M LoRA r=16, 8×1024, CUDA bf16");
    for i in &e.items {
        println!("{:<32} {:>9.1} MiB  {}", i.name, i.bytes as f64 / (1u64 << 20) as f64, i.formula);
    }
    println!(
        "{:<32} {:>9.1} MiB",
        "bench harness: f32 source model",
        bench_f32_source(&cfg) as f64 / (1u64 << 20) as f64
    );
    println!(
        "{:<32} {:>9.1} MiB (measured 12.01 GiB = 12,303 MiB)",
        "total",
        (e.total_bytes + bench_f32_source(&cfg)) as f64 / (1u64 << 20) as f64
    );
    Ok(())
}

// ---- properties of the formulas ----

fn smollm2() -> ModelConfig {
    shapes::lookup("smollm2-135m").expect("known shape")
}

fn opts() -> TrainOptions {
    TrainOptions { lora_dropout: 0.05, cpu_threads: 2 }
}

#[test]
fn lora_activations_scale_linearly_in_batch_times_seq() {
    let cfg = smollm2();
    for backend in [Backend::Cuda, Backend::Cpu] {
        let act =
            |b, t| training_with(&cfg, &lora(), backend, step(b, t), opts()).bytes_of(names::ACTIVATIONS);
        let one = act(1, 256);
        assert!(one > 0);
        assert_eq!(act(4, 256), 4 * one, "{backend:?}: batch");
        assert_eq!(act(1, 1024), 4 * one, "{backend:?}: seq");
        assert_eq!(act(2, 512), act(4, 256), "{backend:?}: only the product matters");
    }
}

#[test]
fn checkpointing_keeps_layer_inputs_plus_one_layer() {
    let cfg = smollm2();
    let (b, t) = (8usize, 1024usize);
    let n = (b * t) as u64;
    let plain = training_with(&cfg, &lora(), Backend::Cuda, step(b, t), opts());
    let ckpt = training_with(
        &cfg,
        &lora(),
        Backend::Cuda,
        StepShape { batch: b, seq: t, checkpointing: true },
        opts(),
    );
    let per_layer = plain.bytes_of(names::ACTIVATIONS) / cfg.num_layers as u64;
    let inputs = cfg.num_layers as u64 * n * cfg.hidden_size as u64 * 2;
    assert_eq!(ckpt.bytes_of(names::ACTIVATIONS), inputs + per_layer);
    // One layer's probabilities instead of every layer's.
    assert_eq!(ckpt.bytes_of(names::PROBS) * cfg.num_layers as u64, plain.bytes_of(names::PROBS));
    assert!(ckpt.total_bytes < plain.total_bytes / 2, "{} vs {}", ckpt.total_bytes, plain.total_bytes);
}

#[test]
fn full_fine_tuning_needs_more_than_lora() {
    let cfg = smollm2();
    for backend in [Backend::Cuda, Backend::Cpu] {
        let s = step(4, 256);
        let full = training_with(&cfg, &Method::Full, backend, s, opts());
        let lora = training_with(&cfg, &lora(), backend, s, opts());
        assert!(full.total_bytes > lora.total_bytes, "{backend:?}");
        // Every weight gets a gradient and two moments.
        let p = cfg.parameter_count();
        let a = if backend == Backend::Cuda { 2 } else { 4 };
        assert_eq!(full.bytes_of(names::GRADIENTS), p * a);
        assert_eq!(full.bytes_of(names::OPTIMIZER), 2 * p * a);
        assert!(full.bytes_of(names::HEAD) > p * a, "the full logits are kept");
    }
}

#[test]
fn qlora_linear_weights_are_about_a_quarter_of_bf16() {
    let cfg = shapes::lookup("llama-3.1-8b").expect("known shape");
    let q = Method::QLora { r: 16, targets: default_targets() };
    let s = step(1, 512);
    let qw = training_with(&cfg, &q, Backend::Cuda, s, opts()).bytes_of(names::WEIGHTS) as f64;
    let bw = training_with(&cfg, &lora(), Backend::Cuda, s, opts()).bytes_of(names::WEIGHTS) as f64;
    // Embedding, head and norms stay bf16 in both: take them out, the projections remain.
    let (h, f, l) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.num_layers as f64);
    let (qd, kv) = ((cfg.num_heads * cfg.head_dim) as f64, (cfg.num_kv_heads * cfg.head_dim) as f64);
    let linear = l * (2.0 * h * qd + 2.0 * h * kv + 3.0 * h * f);
    let rest = 2.0 * (cfg.parameter_count() as f64 - linear);
    let ratio = (qw - rest) / (bw - rest);
    assert!((ratio - 4.127 / 16.0).abs() < 1e-3, "QLoRA/bf16 projection weights {ratio:.4}");
    // The whole model: 0.26x for the projections, the untied 128k-vocabulary embedding and head
    // (13% of Llama-3.1-8B's weights) at bf16.
    let whole = qw / bw;
    assert!((0.30..0.40).contains(&whole), "QLoRA/bf16 weights {whole:.3}");
}

#[test]
fn smollm2_kv_cache_is_46080_bytes_a_token_in_f32() {
    let cfg = smollm2();
    assert_eq!(memory::kv_bytes_per_token(&cfg, 4), 30 * 3 * 64 * 2 * 4);
    assert_eq!(memory::kv_bytes_per_token(&cfg, 4), 46_080);
    let e = memory::serving(&cfg, Backend::Cpu, memory::ServeWeights::Q4, 2048, 4);
    assert_eq!(e.bytes_of(names::KV), 46_080 * 2048 * 4);
}

#[test]
fn serving_weights_follow_the_storage() {
    let cfg = shapes::lookup("llama-3.1-8b").expect("known shape");
    let w = |s| memory::serving(&cfg, Backend::Cuda, s, 1, 1).bytes_of(names::WEIGHTS);
    let p = cfg.parameter_count();
    assert_eq!(w(memory::ServeWeights::Bf16), 2 * p);
    assert_eq!(w(memory::ServeWeights::F32), 4 * p);
    // Q4_1 projections at 5 bits; the f32 embedding and the Q8_0 head on top.
    let q4 = w(memory::ServeWeights::Q4) as f64 / (2 * p) as f64;
    assert!((0.35..0.5).contains(&q4), "Q4 / bf16 = {q4:.3}");
    // The CPU engine packs a tied head into its own copy.
    let small = smollm2();
    let embed = (small.vocab_size * small.hidden_size) as u64;
    let cpu = memory::serving(&small, Backend::Cpu, memory::ServeWeights::F32, 1, 1).bytes_of(names::WEIGHTS);
    assert_eq!(cpu, 4 * (small.parameter_count() + embed));
}

#[test]
fn long_sequences_recompute_attention_probabilities_on_a_gpu() {
    let cfg = smollm2();
    let kept = training_with(&cfg, &lora(), Backend::Cuda, step(1, 1024), opts());
    let recomputed = training_with(&cfg, &lora(), Backend::Cuda, step(4, 2048), opts());
    assert!(kept.bytes_of(names::PROBS) > 0);
    assert_eq!(recomputed.bytes_of(names::PROBS), 0);
    // Backward then holds p, dP and dS of one layer: 3 × 4 rows × 9 heads × 2048² × 2 B (above
    // the loss chunk's 0.26 GiB, so it is the transient at the peak).
    assert!(recomputed.bytes_of(names::BACKWARD) >= 3 * 4 * 9 * 2048 * 2048 * 2);
}
