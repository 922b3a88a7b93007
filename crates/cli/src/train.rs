//! `ferrotune train` and `ferrotune merge`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ferrotune_train::schedule::Scheduler;
use ferrotune_train::{Method, RunOptions, TrainConfig};

/// Flags override the TOML file (`--config`), which overrides the defaults shown here.
#[derive(Args)]
pub struct TrainArgs {
    /// Base model: installed name or path (GGUF file / HF directory). [default: smollm2-135m-instruct]
    #[arg(long)]
    model: Option<String>,
    /// Training data (JSONL/CSV; chat, alpaca, completion or text records).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out data for eval loss, best-checkpoint selection and early stopping.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder. [default: runs/<model>-<unix time>]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (with its saved config).
    #[arg(long)]
    resume: bool,
    /// `lora` or `full`. [default: lora]
    #[arg(long)]
    method: Option<Method>,
    /// LoRA rank r. [default: 16]
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha/r (alpha/√r with --rslora). [default: 32]
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout probability on the LoRA input. [default: 0.05]
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Modules to adapt, comma-separated (q_proj,k_proj,...), or `all-linear`.
    /// [default: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    /// Rank-stabilised LoRA scaling (alpha/√r).
    #[arg(long)]
    rslora: bool,
    /// Passes over the training data (fractions allowed). [default: auto — enough for ≥ 90
    /// optimizer steps on small data (at most 10), 3 up to 5,000 rows, 2 up to 20,000, then 1;
    /// `ferrotune plan` explains]
    #[arg(long)]
    epochs: Option<f64>,
    /// Optimizer steps to run (overrides --epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per micro-batch. [default: 4]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step. [default: 1]
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate. [default: auto — LoRA 1e-3 up to 600M parameters, 5e-4 up to 5B,
    /// 2e-4 above; full fine-tuning 5e-5 up to 600M, 1e-5 above; evidence in docs/plan.md]
    #[arg(long)]
    lr: Option<f64>,
    /// Decoupled (AdamW) weight decay. [default: 0]
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Warmup length in optimizer steps (overrides --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Warmup as a fraction of all steps. [default: 0]
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Learning-rate schedule after warmup: constant, linear or cosine. [default: linear]
    #[arg(long)]
    scheduler: Option<Scheduler>,
    /// Clip the global gradient norm to this (0 = off). [default: 1.0]
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Longest example in tokens; longer ones are skipped with a warning. [default: min(model context, 2048)]
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Put loss on prompts too, not only on assistant answers.
    #[arg(long)]
    train_on_inputs: bool,
    /// Pack several examples into each sequence of up to --max-seq-len tokens (fewer pad
    /// tokens per step). Positions run on across a pack and an example can attend to the ones
    /// before it in its pack (no block-diagonal mask yet), as TRL's packing does without
    /// flash-attention; the first token of each example carries no loss.
    #[arg(long)]
    packing: bool,
    /// Evaluate every N optimizer steps. [default: once per epoch]
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Checkpoint every N optimizer steps. [default: as --eval-steps]
    #[arg(long)]
    save_steps: Option<usize>,
    /// Keep at most N checkpoints (the best and the newest are always kept). [default: all]
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Stop after N evaluations without improvement (needs --eval-data).
    #[arg(long)]
    early_stopping_patience: Option<usize>,
    /// Minimum eval-loss decrease that counts as an improvement. [default: 0]
    #[arg(long)]
    early_stopping_threshold: Option<f64>,
    /// Log train metrics every N steps. [default: 1]
    #[arg(long)]
    logging_steps: Option<usize>,
    /// Seed for adapter init, data order and dropout. [default: 42]
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train: cpu, cuda or cuda:N (CUDA needs the GPU build, scripts/gpu/build-cuda.sh).
    /// [default: cpu]
    #[arg(long)]
    device: Option<String>,
    /// Data-parallel LoRA over several GPUs of this host, e.g. `--device cuda --devices 0,1`:
    /// each batch's rows are split across them, gradients summed on the first (NCCL in the
    /// GPU build). CUDA build only.
    #[arg(long)]
    devices: Option<String>,
    /// Weights and activations: auto (f32 on the CPU, bf16 on a GPU), f32 or bf16. LoRA
    /// variables and optimizer state are f32 in every case. [default: auto]
    #[arg(long)]
    dtype: Option<ferrotune_train::config::Precision>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Register the trained output as the next version of this name in the registry
    /// (`ferrotune registry list`). [default: the run folder's name]
    #[arg(long, value_name = "NAME")]
    register_as: Option<String>,
    #[command(flatten)]
    registry: crate::record::RegistryFlags,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

pub fn config_from(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    overlay!(
        cfg,
        a,
        model,
        data,
        method,
        lora_r,
        lora_alpha,
        lora_dropout,
        target_modules,
        epochs,
        batch_size,
        grad_accum,
        lr,
        weight_decay,
        warmup_ratio,
        scheduler,
        max_grad_norm,
        early_stopping_threshold,
        logging_steps,
        seed,
        device,
        dtype
    );
    if a.eval_data.is_some() {
        cfg.eval_data = a.eval_data.clone();
    }
    if a.devices.is_some() {
        cfg.devices = a.devices.clone();
    }
    if a.out.is_some() {
        cfg.out = a.out.clone();
    }
    for (flag, field) in [
        (a.max_steps, &mut cfg.max_steps),
        (a.warmup_steps, &mut cfg.warmup_steps),
        (a.max_seq_len, &mut cfg.max_seq_len),
        (a.eval_steps, &mut cfg.eval_steps),
        (a.save_steps, &mut cfg.save_steps),
        (a.save_total_limit, &mut cfg.save_total_limit),
        (a.early_stopping_patience, &mut cfg.early_stopping_patience),
    ] {
        if flag.is_some() {
            *field = flag;
        }
    }
    cfg.rslora |= a.rslora;
    cfg.train_on_inputs |= a.train_on_inputs;
    cfg.packing |= a.packing;
    Ok(cfg)
}

/// Rows of a data file (every row, valid or not: the count the recommendation is for).
fn count_rows(path: &std::path::Path) -> Option<u64> {
    let mut r = ferrotune_data::reader::RowReader::open(path).ok()?;
    let mut n = 0u64;
    loop {
        let chunk = r.read_chunk(4096).ok()?;
        if chunk.rows.is_empty() {
            return Some(n);
        }
        n += chunk.rows.len() as u64;
        r.recycle(chunk.bytes);
    }
}

/// The settings the user left open (neither a flag nor a key of --config) take `ferrotune plan`'s
/// recommendations; returns what was chosen and why. A model or data file that cannot be read
/// leaves the built-in default (the trainer then reports the file).
pub fn auto_settings(a: &TrainArgs, cfg: &mut TrainConfig) -> anyhow::Result<Vec<String>> {
    if a.resume {
        return Ok(Vec::new());
    }
    let in_file: std::collections::BTreeSet<String> = match &a.config {
        Some(p) => std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default(),
        None => Default::default(),
    };
    let open = |flag: bool, key: &str| !flag && !in_file.contains(key);
    let mut notes = Vec::new();
    let method = match cfg.method {
        ferrotune_train::config::Method::Full => ferrotune_plan::Method::Full,
        ferrotune_train::config::Method::Lora => {
            ferrotune_plan::Method::Lora { r: cfg.lora_r, targets: cfg.target_modules.clone() }
        }
    };
    if open(a.lr.is_some(), "lr")
        && let Ok(model) = ferrotune_model::loaded::load_config(&cfg.model)
    {
        let c = ferrotune_plan::hyper::learning_rate(model.parameter_count(), &method);
        cfg.lr = c.value;
        notes.push(format!("lr {:e} (auto: {})", c.value, c.reason));
    }
    if open(a.epochs.is_some(), "epochs")
        && cfg.max_steps.is_none()
        && let Some(rows) = count_rows(&cfg.data).filter(|&n| n > 0)
    {
        let c = ferrotune_plan::hyper::epochs(rows, cfg.batch_size * cfg.grad_accum.max(1));
        cfg.epochs = c.value;
        notes.push(format!(
            "epochs {} (auto: {}{})",
            c.value,
            c.reason,
            if cfg.packing { "; rows per step counted before packing" } else { "" }
        ));
    }
    Ok(notes)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = config_from(&a)?;
    for note in auto_settings(&a, &mut cfg)? {
        eprintln!("{note}");
    }
    if a.resume && cfg.out.is_none() {
        anyhow::bail!("--resume needs --out RUN_DIR (the run to continue)");
    }
    let opts = RunOptions {
        resume: a.resume,
        progress: !a.quiet,
        stop_after: std::env::var("FERROTUNE_STOP_AFTER_STEP").ok().and_then(|s| s.parse().ok()),
    };
    let registry = a.registry.open()?;
    if let (Some(reg), Some(name)) = (&registry, &a.register_as) {
        // A bad name fails now, not after the training.
        name.parse::<ferrotune_govern::Reference>()
            .ok()
            .filter(|r| r.selector == ferrotune_govern::Selector::Default)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--register-as `{name}`: use 1-64 letters, digits, '.', '_' or '-' (no '@'); registry {}",
                    reg.path().display()
                )
            })?;
    }
    let mut record = registry.as_ref().map(|r| crate::record::TrainRecord::new(r, a.register_as.clone()));
    let actor = ferrotune_govern::actor(None);
    let mut started: Option<serde_json::Value> = None;
    let result = ferrotune_train::run_with(cfg, &opts, &mut |start| {
        let inputs = crate::record::RunInputs::of(start).map_err(|e| format!("{e:#}"))?;
        if let Some(r) = record.as_mut() {
            r.started(start, &inputs).map_err(|e| {
                format!("recording the run in the registry: {e:#} (pass --no-registry to train without it)")
            })?;
        }
        let subject = crate::record::train_subject(start, &inputs, record.as_ref().and_then(|r| r.run_id()))
            .map_err(|e| format!("{e:#}"))?;
        crate::audit::trail(
            &actor,
            "train.start",
            subject.clone(),
            "ok",
            serde_json::json!({"resumed": start.resumed}),
        )
        .map_err(|e| format!("{e:#}"))?;
        started = Some(serde_json::json!({"run_dir": subject["run_dir"], "run": subject["run"]}));
        Ok(())
    });
    let artifact = match &record {
        // Training is done: a registry that fails now must not lose it; say how to record it later.
        Some(r) => r.finished(&result).with_context(|| "recording the run's outcome in the registry; `ferrotune registry import RUN_DIR` records it later")?,
        None => None,
    };
    if let Some(subject) = started {
        let fields = match &result {
            Ok(s) => serde_json::json!({
                "steps": s.steps, "tokens": s.tokens, "final_loss": s.final_loss, "best_eval_loss": s.best_eval_loss,
                // The registered version's files were hashed when it was registered.
                "output": match &artifact { Some(a) => a.files.clone(), None => crate::record::hash_dir(&s.output)? },
                "artifact": artifact.as_ref().map(|a| a.reference()),
            }),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        crate::audit::trail(
            &actor,
            "train.end",
            subject,
            if result.is_ok() { "ok" } else { "failed" },
            fields,
        )?;
    }
    let s = result?;
    println!("run folder: {}", s.run_dir.display());
    println!("trained weights: {}", s.output.display());
    if let Some(l) = s.final_loss {
        println!("final train loss: {l:.4}");
    }
    if let (Some(first), Some(best), Some(step)) = (s.first_eval_loss, s.best_eval_loss, s.best_step) {
        println!("eval loss: {first:.4} before training -> {best:.4} best (step {step})");
    }
    println!(
        "{} steps, {:.0} train tokens/s{}",
        s.steps,
        s.train_tokens_per_sec,
        if s.stopped_early { ", stopped early" } else { "" }
    );
    if let Some(a) = artifact {
        println!(
            "registered: {} ({} files; `ferrotune registry show {}`)",
            a.reference(),
            a.files.len(),
            a.reference()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// Base model: installed name or path.
    #[arg(long, default_value = ferrotune_model::store::DEFAULT_MODEL)]
    model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output HF directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(a: MergeArgs) -> anyhow::Result<()> {
    let mut m = ferrotune_model::load(&a.model, ferrotune_model::WeightMode::F32, &candle_core::Device::Cpu)
        .with_context(|| format!("loading {}", a.model))?;
    let adapter = ferrotune_model::Adapter::load(&a.adapter, &mut m.model)?;
    adapter.merge_into(&mut m.model)?;
    ferrotune_model::export::export_hf(&m, &a.out)?;
    println!("merged {} into {} -> {}", a.adapter.display(), m.path.display(), a.out.display());
    Ok(())
}
