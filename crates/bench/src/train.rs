//! `ferrotune bench train`: LoRA training tokens/s and peak memory on a real model's shape
//! (random weights), against HF PEFT on PyTorch with the same setup
//! (`scripts/bench/peft_train_speed.py`), one run after the other in this process.
//!
//! [`run`] reads top to bottom: open the devices, run the peer (first, while this process is
//! small), build the LoRA model and the batch, time the steps, break a step into its phases, check
//! a data-parallel split against one GPU, print the table, write the JSON.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use ferrotune_model::batch::{Batch, Example, loss_sum, make_batch};
use ferrotune_model::{Adapter, Family, Llama, LoraSpec, ModelConfig, WeightMode};
use ferrotune_train::config::{DeviceSpec, Precision};
use ferrotune_train::optim::AdamW;
use ferrotune_train::parallel::{self, Agreement, Replicas};

use crate::error::{BenchError, Result};
use crate::memory::{GpuMemSampler, peak_rss_gib};
use crate::profile::{profile_ops, synced_ms};

#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Model shape: `smollm2-135m` or `llama-1b` (see [`shape`]).
    pub shape: String,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row (every token carries loss).
    pub seq: usize,
    /// Timed optimizer steps (after one warm-up step).
    pub steps: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Weights' and activations' dtype; LoRA variables and AdamW state are f32.
    pub dtype: Precision,
    /// LoRA dropout, the same for both engines.
    pub lora_dropout: f64,
    /// Python with torch, transformers and peft; the peer is skipped when `None`.
    pub peft_python: Option<PathBuf>,
    /// Also time the phases of a step and the pieces of a layer one by one.
    pub profile: bool,
    /// Data parallel over these GPUs (`0,1`), as `ferrotune train --devices`.
    pub devices: Option<String>,
    /// Write the results as JSON here (with both loss trajectories).
    pub json: Option<PathBuf>,
}

/// One engine's result.
struct TrainSpeed {
    tokens_per_sec: f64,
    /// GiB: peak RSS on the CPU, peak device memory (nvidia-smi) on a GPU.
    peak_gib: f64,
    losses: Vec<f64>,
}

/// The benchmark's model shapes, initialised as transformers does: SmolLM2-135M (576 hidden, 30
/// layers, 9/3 heads, vocab 49152) and Llama-3.2-1B (2048 hidden, 16 layers, 32/8 heads, FFN
/// 8192, vocab 128256).
pub fn shape(name: &str) -> Result<ModelConfig> {
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
        other => {
            Err(BenchError::InvalidSetting(format!("unknown --shape `{other}` (smollm2-135m, llama-1b)")))
        }
    }
}

/// Where the run's models live: the first device, and the others of a data-parallel run.
struct Devices {
    /// The GPUs of `--devices`, in order.
    gpus: Option<Vec<usize>>,
    /// The GPU the first model is on; `None` on the CPU.
    gpu: Option<usize>,
    first: Device,
    others: Vec<Device>,
}

impl Devices {
    fn open(b: &TrainBench) -> Result<Self> {
        let gpus = b.devices.as_deref().map(|list| parallel::gpu_list(&b.device, list)).transpose()?;
        let mut devices = match &gpus {
            Some(list) => parallel::open_devices(list)?,
            None => vec![ferrotune_train::config::open_device(&b.device)?],
        };
        let others = devices.split_off(1);
        let first = devices.remove(0);
        let gpu = match &gpus {
            Some(list) => Some(list[0]),
            None => match ferrotune_train::config::parse_device(&b.device)? {
                DeviceSpec::Cuda(n) => Some(n),
                DeviceSpec::Cpu => None,
            },
        };
        Ok(Self { gpus, gpu, first, others })
    }

    /// One memory sampler per GPU.
    fn samplers(&self) -> Vec<(usize, Option<GpuMemSampler>)> {
        match (&self.gpus, self.gpu) {
            (Some(list), _) => list.iter().map(|&n| (n, GpuMemSampler::start(n))).collect(),
            (None, Some(n)) => vec![(n, GpuMemSampler::start(n))],
            (None, None) => Vec::new(),
        }
    }
}

pub fn run(b: &TrainBench) -> Result<()> {
    let cfg = shape(&b.shape)?;
    let tc = ferrotune_train::TrainConfig { dtype: b.dtype, ..Default::default() };
    let devs = Devices::open(b)?;
    let dtype = tc.resolved_dtype(&devs.first);
    let dtype_name = if dtype == DType::BF16 { "bf16" } else { "f32" };
    // The pool's threads (main sets RAYON_NUM_THREADS=1 for candle's matmuls when training).
    let threads = rayon::current_num_threads();
    let mem_name = if devs.gpu.is_some() { "peak GPU GiB" } else { "peak RSS GiB" };
    println!(
        "bench train: {} shape, random weights (std 0.02), {dtype_name} on {}, LoRA r=16 α=32 dropout {} on 7 projections, AdamW lr 2e-4, batch {}x{} tokens, {} timed steps{}",
        b.shape,
        b.devices.as_deref().map_or(b.device.clone(), |d| format!("GPUs {d} (data parallel)")),
        b.lora_dropout,
        b.batch,
        b.seq,
        b.steps,
        if devs.gpu.is_none() { format!(", {threads} threads") } else { String::new() }
    );
    // The peer runs first, while this process is small: a child's peak-RSS counter starts from
    // its parent's at fork.
    let peer = match &b.peft_python {
        Some(py) => Some(peft(py, b, devs.gpu, threads, dtype_name)?),
        None => None,
    };

    let samplers = devs.samplers();
    let rig = Rig::build(b, cfg, &devs, dtype)?;
    let steps = timed_steps(b, &rig)?;
    let step_time = steps.step_time;
    if (devs.gpu.is_some() || b.profile) && rig.replicas.is_none() {
        phases(b, &rig, step_time)?;
    }
    // Per-GPU peaks of the run itself (before the check below, which runs the whole batch on every GPU).
    let peaks: Vec<(usize, f64)> = samplers.into_iter().filter_map(|(n, s)| Some((n, s?.stop()))).collect();
    let agreement = match &rig.replicas {
        Some(r) => Some(check_split(&rig, r, &devs)?),
        None => None,
    };
    let ours = TrainSpeed {
        tokens_per_sec: (b.batch * b.seq) as f64 / step_time,
        peak_gib: if devs.gpu.is_some() {
            peaks.iter().map(|p| p.1).fold(f64::NAN, f64::max)
        } else {
            peak_rss_gib()
        },
        losses: steps.losses.clone(),
    };
    if peaks.len() > 1 {
        let each: Vec<String> = peaks.iter().map(|(n, g)| format!("GPU {n} {g:.2} GiB")).collect();
        println!("peak memory per GPU: {} (the table shows the largest)", each.join(", "));
    }
    print_table(&ours, peer.as_ref(), devs.gpu.is_some(), mem_name);
    if let Some(path) = &b.json {
        let results = Results { dtype_name, mem_name, ours: &ours, peer: peer.as_ref(), peaks: &peaks };
        write_json(path, b, &results, agreement.as_ref())?;
    }
    Ok(())
}

/// HF PEFT's run of the same benchmark (`scripts/bench/peft_train_speed.py`), its GPU's peak
/// sampled from outside as ours is.
fn peft(
    py: &std::path::Path,
    b: &TrainBench,
    gpu: Option<usize>,
    threads: usize,
    dtype_name: &str,
) -> Result<TrainSpeed> {
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
        .args(["--steps", &b.steps.to_string(), "--threads", &threads.to_string(), "--dtype", dtype_name])
        .args(["--dropout", &b.lora_dropout.to_string()])
        .args(["--device", &gpu.map_or("cpu".to_string(), |n| format!("cuda:{n}"))])
        .output()
        .map_err(|e| BenchError::io(format!("running {}", py.display()), e))?;
    let gpu_peak = sampler.map(GpuMemSampler::stop);
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "PEFT benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())?;
    let losses =
        v["losses"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
    if let Some(alloc) = v["torch_max_allocated_gib"].as_f64() {
        println!(
            "(PEFT: torch's own peak allocation {alloc:.2} GiB, reserved {:.2} GiB)",
            v["torch_max_reserved_gib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(TrainSpeed {
        tokens_per_sec: v["tokens_per_sec"].as_f64().unwrap_or(f64::NAN),
        peak_gib: gpu_peak.unwrap_or_else(|| v["peak_rss_gib"].as_f64().unwrap_or(f64::NAN)),
        losses,
    })
}

/// The LoRA model on the first device, its replicas on the others, and the batch.
struct Rig {
    cfg: ModelConfig,
    device: Device,
    dtype: DType,
    spec: LoraSpec,
    model: Llama,
    /// The f32 model `model` was cast from (see [`Rig::build`]).
    _f32_model: Option<Llama>,
    adapter: Adapter,
    replicas: Option<Replicas>,
    examples: Vec<Example>,
    batch: Batch,
}

impl Rig {
    fn build(b: &TrainBench, cfg: ModelConfig, devs: &Devices, dtype: DType) -> Result<Self> {
        let device = devs.first.clone();
        let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &device, 0)?;
        let loaded = Llama::load(&w, &cfg, WeightMode::F32, None)?;
        drop(w);
        // Cast on the device; the f32 model stays alive for the whole run, as it always has in
        // this benchmark: its recorded GPU peaks (and the plan crate's memory model fitted to
        // them) hold that second copy of the weights.
        let (mut model, f32_model) =
            if dtype == DType::F32 { (loaded, None) } else { (loaded.cast(&device, dtype)?, Some(loaded)) };
        model.set_differentiable(true);
        let spec = LoraSpec { dropout: b.lora_dropout, ..LoraSpec::default() };
        let replicas =
            if devs.others.is_empty() { None } else { Some(Replicas::lora(&model, &devs.others, &spec, 0)?) };
        let adapter = Adapter::init(&mut model, &spec, 0)?;
        adapter.attach(&mut model);
        if let Some(r) = &replicas {
            r.broadcast(&adapter.vars)?;
        }
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % cfg.vocab_size as u64) as u32
        };
        let examples: Vec<Example> = (0..b.batch)
            .map(|_| {
                let ids: Vec<u32> = (0..b.seq).map(|_| next()).collect();
                Example { labels: ids.iter().map(|&i| i as i64).collect(), input_ids: ids }
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = make_batch(&refs, 0, &device)?;
        Ok(Self {
            cfg,
            device,
            dtype,
            spec,
            model,
            _f32_model: f32_model,
            adapter,
            replicas,
            examples,
            batch,
        })
    }

    fn rows(&self) -> Vec<&Example> {
        self.examples.iter().collect()
    }

    /// Data parallel: the first GPU's model and the replicas'.
    fn models(&self) -> Vec<&Llama> {
        std::iter::once(&self.model).chain(self.replicas.iter().flat_map(|r| &r.models)).collect()
    }

    /// Each model's LoRA variables, in the order of [`Rig::models`].
    fn vars(&self) -> Vec<&[(String, Var)]> {
        std::iter::once(self.adapter.vars.as_slice())
            .chain(self.replicas.iter().flat_map(|r| r.adapters.iter().map(|a| a.vars.as_slice())))
            .collect()
    }
}

/// The timed steps' losses (the warm-up's first) and seconds per step, with what they leave
/// allocated (the optimizer state, each device's batch): kept to the end of the run, so the
/// memory samplers see the same use as before the benchmark was split into functions.
struct Steps {
    losses: Vec<f64>,
    step_time: f64,
    _opt: AdamW,
    _shared: Vec<Vec<Batch>>,
}

/// One warm-up step, then `b.steps` timed ones.
fn timed_steps(b: &TrainBench, rig: &Rig) -> Result<Steps> {
    let mut opt = AdamW::new(rig.adapter.vars.clone(), Default::default())?;
    let refs = rig.rows();
    let models = rig.models();
    let vars = rig.vars();
    // Each model with its share of the rows.
    let shared = parallel::shares(&refs, models.len())
        .iter()
        .zip(&models)
        .map(|(p, m)| Ok(if p.is_empty() { Vec::new() } else { vec![make_batch(p, 0, m.device())?] }))
        .collect::<Result<Vec<_>>>()?;
    let step = |opt: &mut AdamW, s: u64| -> Result<f64> {
        rig.adapter.control.set(true, 0, s);
        Ok(match &rig.replicas {
            Some(r) => {
                r.set_training(true, 0, s);
                parallel::optimizer_step(&models, &vars, &shared, opt, r, 2e-4, 1.0)?.loss
            }
            None => {
                ferrotune_train::optimizer_step(&rig.model, opt, std::slice::from_ref(&rig.batch), 2e-4, 1.0)?
                    .loss
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
    Ok(Steps { losses, step_time, _opt: opt, _shared: shared })
}

/// Where a step's time goes: each phase ends with the device synchronised (`--profile` adds the
/// pieces of a layer and the cost per decoder layer).
fn phases(b: &TrainBench, rig: &Rig, step_time: f64) -> Result<()> {
    let (device, dtype, cfg) = (&rig.device, rig.dtype, &rig.cfg);
    let time = |f: &mut dyn FnMut() -> Result<()>| synced_ms(device, 3, f);
    // The loss alone, or the loss and its backward, of `m` on the batch.
    let loss_ms = |m: &Llama, backward: bool| {
        time(&mut || {
            let l = loss_sum(m, &rig.batch)?;
            if backward {
                l.backward()?;
            } else {
                l.to_scalar::<f32>()?;
            }
            Ok(())
        })
    };
    let fwd = loss_ms(&rig.model, false)?;
    let fwd_bwd = loss_ms(&rig.model, true)?;
    rig.adapter.control.set(false, 0, 0);
    let fwd_bwd_nodrop = loss_ms(&rig.model, true)?;
    let (m, k, n) = (b.batch * b.seq, cfg.hidden_size, cfg.intermediate_size);
    let x = Tensor::ones((m, k), dtype, device)?;
    let w = Tensor::ones((n, k), dtype, device)?;
    let mm = time(&mut || {
        x.matmul(&w.t()?)?;
        Ok(())
    })?;
    if b.profile {
        profile_ops(&rig.model, cfg, device, dtype, b.batch * b.seq, &rig.adapter)?;
        // A step's cost per decoder layer: the same shape with 1 and 2 layers.
        for layers in [1usize, 2] {
            let c = ModelConfig { num_layers: layers, ..cfg.clone() };
            let w = ferrotune_model::testing::hf_init_random_weights(&c, device, 0)?;
            let m = Llama::load(&w, &c, WeightMode::F32, None)?;
            drop(w);
            let mut m = if dtype == DType::F32 { m } else { m.cast(device, dtype)? };
            m.set_differentiable(true);
            let a = Adapter::init(&mut m, &rig.spec, 0)?;
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
    Ok(())
}

/// The data-parallel split against the first GPU alone on the whole batch. Same weights
/// everywhere (the last step broadcast them), dropout off: the split must give the first GPU's
/// gradients to bf16 rounding, and each GPU alone the first's.
fn check_split(rig: &Rig, r: &Replicas, devs: &Devices) -> Result<Agreement> {
    rig.adapter.control.set(false, 0, 0);
    r.set_training(false, 0, 0);
    let a = parallel::agreement(&rig.models(), &rig.vars(), &rig.rows(), 0, r)?;
    let first = devs.gpu.unwrap_or(0);
    println!(
        "data parallel vs GPU {first} alone on the whole batch (same weights, no dropout): loss {:.6} vs {:.6}; gradients: relative L2 error {:.2e} (worst parameter {} {:.2e})",
        a.loss_split, a.loss_one, a.split_rel, a.worst.0, a.worst.1
    );
    println!(
        "  the split against its shares run one after the other on GPU {first} and added there: relative L2 error {:.2e}",
        a.exchange_rel
    );
    for (k, e) in a.alone_rel.iter().enumerate() {
        println!(
            "  GPU {} alone vs GPU {first} alone, same batch: gradients' relative L2 error {e:.2e}",
            devs.gpus.as_ref().map_or(k + 1, |l| l[k + 1]),
        );
    }
    Ok(a)
}

fn fmt_losses(l: &[f64]) -> String {
    format!("{:.3} -> {:.3}", l.first().copied().unwrap_or(f64::NAN), l.last().copied().unwrap_or(f64::NAN))
}

/// The comparison table, ratios against the peer when it ran, and whether both losses fall alike.
fn print_table(ours: &TrainSpeed, peer: Option<&TrainSpeed>, gpu: bool, mem_name: &str) {
    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>12}",
        "engine", "tokens/s", mem_name, "speed ratio", "memory ratio"
    );
    let peer_name = if gpu { "HF PEFT (torch CUDA)" } else { "HF PEFT (torch CPU)" };
    let Some(p) = peer else {
        println!(
            "{:<22} {:>12.1} {:>14.2} {:>12} {:>12}",
            "ferrotune", ours.tokens_per_sec, ours.peak_gib, "-", "-"
        );
        println!("loss: {}", fmt_losses(&ours.losses));
        println!("(PEFT not measured: pass --peft-python or set FERROTUNE_PEFT_PYTHON)");
        return;
    };
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
}

/// What the JSON file reports besides the settings.
struct Results<'a> {
    dtype_name: &'a str,
    mem_name: &'a str,
    ours: &'a TrainSpeed,
    peer: Option<&'a TrainSpeed>,
    peaks: &'a [(usize, f64)],
}

fn write_json(
    path: &std::path::Path,
    b: &TrainBench,
    r: &Results<'_>,
    agreement: Option<&Agreement>,
) -> Result<()> {
    let side = |s: &TrainSpeed| serde_json::json!({"tokens_per_sec": s.tokens_per_sec, "peak_gib": s.peak_gib, "losses": s.losses});
    let v = serde_json::json!({
        "shape": b.shape, "device": b.device, "devices": b.devices, "dtype": r.dtype_name, "batch": b.batch, "seq": b.seq, "steps": b.steps,
        "lora_dropout": b.lora_dropout, "memory": r.mem_name,
        "ferrotune": side(r.ours), "peft": r.peer.map(side),
        "peak_gib_per_gpu": r.peaks.iter().map(|(n, g)| serde_json::json!({"gpu": n, "peak_gib": g})).collect::<Vec<_>>(),
        "data_parallel_check": agreement.map(|a| serde_json::json!({
            "loss_one_gpu": a.loss_one, "loss_split": a.loss_split, "gradient_rel_l2": a.split_rel,
            "worst_parameter": a.worst.0, "worst_rel_l2": a.worst.1, "exchange_rel_l2": a.exchange_rel, "each_gpu_alone_vs_first_rel_l2": a.alone_rel,
        })),
    });
    std::fs::write(path, serde_json::to_string_pretty(&v)?)
        .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_the_named_models_and_others_are_refused() {
        let s = shape("smollm2-135m").expect("known shape");
        assert_eq!((s.hidden_size, s.num_layers, s.vocab_size), (576, 30, 49152));
        let l = shape("llama-1b").expect("known shape");
        assert_eq!((l.hidden_size, l.num_layers, l.vocab_size), (2048, 16, 128_256));
        let e = shape("gpt-9").expect_err("unknown shape");
        assert!(e.to_string().contains("unknown --shape `gpt-9`"), "{e}");
    }
}
