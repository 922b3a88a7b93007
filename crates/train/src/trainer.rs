//! The training loop, readable top to bottom: load model and data → check the config against
//! them → (resume) → loop { forward, loss, backward, clip, AdamW step, schedule, log, eval,
//! checkpoint } → write the adapter, the loss curve and the lineage record. Each example's loss
//! in its step is judged for a spike (`spikes`), which `metrics.jsonl` and the summary name by
//! the example's data file line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use ferrotune_data::{RenderOptions, Renderer};
use ferrotune_model::{Adapter, LoadedModel, WeightMode};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::batch::{Example, Source, eval_loss_sum, loss_sums, make_batch, make_batch_from};
use crate::checkpoint::{self, TrainerState};
use crate::config::{Method, TrainConfig};
use crate::error::{Result, TrainError};
use crate::lineage;
use crate::optim::{AdamW, AdamWParams, clip_global_norm, collect_grads};
use crate::schedule::lr_at;
use crate::spikes::Spike;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Metrics {
    pub step: usize,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    pub tokens_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Examples of this step whose loss spiked (`spikes`), each with its data file line. A
    /// step with any is always logged; the field is absent otherwise, so a line without it
    /// reads as before (the dashboard and scripts read these lines as they are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_spikes: Vec<Spike>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// `adapter/` (LoRA) or `model/` (full fine-tuning).
    pub output: PathBuf,
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub first_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub stopped_early: bool,
    pub train_tokens_per_sec: f64,
    /// Tokens (padding excluded) the optimizer saw over the whole run, resumes included.
    pub tokens: u64,
    /// Weights of the base model ([`ferrotune_model::ModelConfig::parameter_count`]).
    pub base_parameters: u64,
    /// Weights the run trained (LoRA A/B, or all of them).
    pub trainable_parameters: u64,
    /// Training examples whose loss spiked, counted over the whole run (resumes included).
    pub loss_spikes_flagged: u64,
    /// The most extreme of them (by z, at most `spikes::TOP`), each with its data file line.
    pub loss_spikes: Vec<Spike>,
}

/// What a run is about to train, handed to [`run_with`]'s observer once the run folder holds its
/// `config.json` and before the first step (the registry records the run here).
pub struct RunStart<'a> {
    pub config: &'a TrainConfig,
    pub run_dir: &'a Path,
    pub model_files: &'a [PathBuf],
    pub model_config: &'a ferrotune_model::ModelConfig,
    pub base_parameters: u64,
    pub trainable_parameters: u64,
    /// Training data, then evaluation data.
    pub data_files: Vec<PathBuf>,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub resumed: bool,
}

/// Options for how the run reports, not what it computes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    pub progress: bool,
    /// Stop (as if killed) after this many optimizer steps; for tests of `--resume`.
    pub stop_after: Option<usize>,
}

/// Read and render a data file: every invalid record is an error naming file and line. Returns
/// the examples, the line (Parquet: row) each came from, and how many were too long.
pub fn load_examples(
    path: &Path,
    renderer: &Renderer,
    opts: RenderOptions,
    max_len: usize,
) -> Result<(Vec<Example>, Vec<u64>, usize)> {
    let scanner = ferrotune_data::scan::Scanner::new(ferrotune_data::scan::ScanConfig::default());
    let mut records = Vec::new();
    let mut errors = Vec::new();
    scanner.scan_file(path, |row| {
        if row.has_error() {
            errors.extend(row.findings.iter().filter(|f| f.is_error()).map(|f| f.to_string()));
        } else if let Some(r) = row.record {
            records.push((r, row.line));
        }
        Ok(())
    })?;
    if !errors.is_empty() {
        let shown: Vec<String> = errors.iter().take(5).cloned().collect();
        return Err(TrainError::file(
            path,
            format!(
                "{} invalid record(s); run `ferrotune data validate` for the full report:\n  {}",
                errors.len(),
                shown.join("\n  ")
            ),
        ));
    }
    let mut examples = Vec::with_capacity(records.len());
    let mut lines = Vec::with_capacity(records.len());
    let mut too_long = 0;
    for (r, line) in &records {
        let rendered = ferrotune_data::render_for_training(r, renderer, &opts)?;
        if rendered.len() > max_len {
            too_long += 1;
            continue;
        }
        examples.push(Example { input_ids: rendered.input_ids, labels: rendered.labels });
        lines.push(*line);
    }
    Ok((examples, lines, too_long))
}

/// The trainable variables and, for LoRA, the adapter they belong to.
enum Trainable {
    Lora(Adapter),
    Full(Vec<(String, Var)>),
}

impl Trainable {
    fn vars(&self) -> Vec<(String, Var)> {
        match self {
            Self::Lora(a) => a.vars.clone(),
            Self::Full(v) => v.clone(),
        }
    }

    fn set_training(&self, training: bool, seed: u64, step: u64) {
        if let Self::Lora(a) = self {
            a.control.set(training, seed, step);
        }
    }

    /// Write the trained weights as a deliverable into `dir`.
    fn save(&self, m: &LoadedModel, base: &str, dir: &Path) -> Result<()> {
        match self {
            Self::Lora(a) => Ok(a.save(dir, base)?),
            Self::Full(_) => Ok(ferrotune_model::export::export_hf(m, dir)?),
        }
    }
}

fn mean_eval_loss(m: &LoadedModel, examples: &[Example], batch_size: usize, pad: u32) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = make_batch(&refs, pad, m.model.device())?;
        sum += summed_eval_loss(&m.model, &batch)?;
        n += batch.n_targets;
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// `eval_loss_sum` of `batch`; on the CPU its rows in one share per rayon thread, run at once
/// (as training's steps: matmuls inside a share are single-threaded in the `train` command).
fn summed_eval_loss(model: &ferrotune_model::Llama, batch: &crate::batch::Batch) -> Result<f64> {
    use rayon::prelude::*;
    let rows = batch.ids.dim(0)?;
    let k = rayon::current_num_threads().min(rows).max(1);
    if !model.device().is_cpu() || k == 1 {
        return Ok(eval_loss_sum(model, batch)?.to_scalar::<f32>()? as f64);
    }
    let shares = (0..k).map(|i| batch.rows(rows * i / k, rows * (i + 1) / k)).collect::<Result<Vec<_>>>()?;
    let sums: Vec<Result<f64>> =
        shares.par_iter().map(|s| Ok(eval_loss_sum(model, s)?.to_scalar::<f32>()? as f64)).collect();
    sums.into_iter().sum()
}

fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = Path::new(&cfg.model).file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    PathBuf::from("runs").join(format!("{name}-{secs}"))
}

pub fn run(cfg: TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    run_with(cfg, opts, &mut |_| Ok(()))
}

/// [`run`], calling `on_start` before the first step; an error from it stops the run before any
/// training (the run folder keeps its config.json and can be resumed).
pub fn run_with(
    cfg: TrainConfig,
    opts: &RunOptions,
    on_start: &mut dyn FnMut(&RunStart<'_>) -> std::result::Result<(), String>,
) -> Result<RunSummary> {
    // ---- resolve the run folder and config (a resumed run uses its saved config) ----
    let run_dir = cfg.out.clone().unwrap_or_else(|| default_run_dir(&cfg));
    // One trainer per run folder, locked before anything in it is read; a new folder is locked
    // when it is made, below.
    let lock = if run_dir.is_dir() { Some(open_run_dir(&run_dir)?) } else { None };
    let cfg = if opts.resume {
        let saved = run_dir.join("config.json");
        if !saved.exists() {
            return Err(TrainError::file(&saved, "nothing to resume: no config.json in the run folder"));
        }
        checkpoint::read_json::<TrainConfig>(&saved)?
    } else {
        cfg
    };
    cfg.validate()?;
    let started = lineage::now_rfc3339();

    // ---- model and data ----
    // `--devices 0,1`: the first GPU holds the trainer's model; replicas go on the others.
    let gpus = cfg
        .devices
        .as_deref()
        .map(|l| crate::parallel::open_devices(&crate::parallel::gpu_list(&cfg.device, l)?))
        .transpose()?;
    let device = match &gpus {
        Some(g) => g[0].clone(),
        None => crate::config::open_device(&cfg.device)?,
    };
    let mut m = ferrotune_model::load(&cfg.model, WeightMode::F32, &Device::Cpu)?;
    let dtype = cfg.resolved_dtype(&device);
    if !device.is_cpu() || dtype != candle_core::DType::F32 {
        m.model = m.model.cast(&device, dtype)?;
    }
    let ctx = m.config().max_position_embeddings;
    let max_len = cfg.max_seq_len.unwrap_or(ctx.min(2048));
    if max_len > ctx {
        return Err(TrainError::config(
            "max_seq_len",
            format!("{max_len} exceeds the model's context of {ctx} tokens"),
        ));
    }
    let renderer = Renderer::from_model(&m)?;
    let pad = renderer.eos_id();
    let render_opts = RenderOptions { train_on_inputs: cfg.train_on_inputs };
    let (train, lines, dropped) = load_examples(&cfg.data, &renderer, render_opts, max_len)?;
    if dropped > 0 {
        eprintln!("warning: skipped {dropped} training example(s) longer than max_seq_len={max_len} tokens");
    }
    if train.is_empty() {
        return Err(TrainError::file(&cfg.data, "no usable training examples"));
    }
    // Each training row with the data file line(s) of the example(s) in it.
    let (train, sources): (Vec<Example>, Vec<Vec<Source>>) = if cfg.packing {
        let n = train.len();
        let packed = crate::batch::pack_with_lines(train, &lines, max_len, cfg.seed);
        eprintln!("packing: {n} examples into {} sequences of at most {max_len} tokens", packed.len());
        packed.into_iter().unzip()
    } else {
        let sources = lines.iter().map(|&line| vec![Source { start: 0, line }]).collect();
        (train, sources)
    };
    let eval = match &cfg.eval_data {
        Some(p) => load_examples(p, &renderer, render_opts, max_len)?.0,
        None => Vec::new(),
    };

    // ---- trainable parameters ----
    m.model.set_differentiable(true);
    let mut replicas: Option<crate::parallel::Replicas> = None;
    let trainable = match cfg.method {
        Method::Lora => {
            let spec = cfg.lora_spec();
            if let Some(g) = gpus.as_ref().filter(|g| g.len() > 1) {
                replicas = Some(crate::parallel::Replicas::lora(&m.model, &g[1..], &spec, cfg.seed)?);
            }
            let adapter = Adapter::init(&mut m.model, &spec, cfg.seed).map_err(|e| match e {
                ferrotune_model::ModelError::InvalidSetting { field, reason } => {
                    TrainError::config(field, reason)
                }
                other => other.into(),
            })?;
            adapter.attach(&mut m.model);
            if let Some(r) = &replicas {
                r.broadcast(&adapter.vars)?;
            }
            Trainable::Lora(adapter)
        }
        Method::Full => Trainable::Full(m.model.make_trainable()?),
    };
    let vars = trainable.vars();
    let n_params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt =
        AdamW::new(vars.clone(), AdamWParams { weight_decay: cfg.weight_decay, ..Default::default() })?;

    // ---- schedule ----
    let batches_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total_steps = match cfg.max_steps {
        Some(s) => s,
        None => ((cfg.epochs * batches_per_epoch as f64) / cfg.grad_accum as f64).ceil().max(1.0) as usize,
    };
    let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum).max(1);
    let warmup = cfg.warmup_steps.unwrap_or((cfg.warmup_ratio * total_steps as f64).round() as usize);
    let eval_every = cfg.eval_steps.unwrap_or(steps_per_epoch);
    let save_every = cfg.save_steps.unwrap_or(eval_every);

    // ---- run folder, resume ----
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::file(&run_dir, e))?;
    let _lock = match lock {
        Some(l) => l,
        None => open_run_dir(&run_dir)?,
    };
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut state = TrainerState {
        step: 0,
        total_steps,
        micro_batches: 0,
        epoch: 0.0,
        best_eval_loss: None,
        best_step: None,
        evals_without_improvement: 0,
        tokens_seen: 0,
        seed: cfg.seed,
        loss_spikes: Default::default(),
    };
    let mut history: Vec<Metrics> = Vec::new();
    if opts.resume {
        let Some(&last) = checkpoint::list(&run_dir).last() else {
            return Err(TrainError::file(run_dir.join("checkpoints"), "no checkpoint to resume from"));
        };
        let dir = checkpoint::dir_for(&run_dir, last);
        state = checkpoint::read_json(&dir.join("trainer_state.json"))?;
        match &trainable {
            Trainable::Lora(_) => {
                checkpoint::load_vars(&vars, &dir.join("adapter/adapter_model.safetensors"), |n| {
                    format!("base_model.model.{n}")
                })?
            }
            Trainable::Full(_) => {
                checkpoint::load_vars(&vars, &dir.join("model.safetensors"), str::to_string)?
            }
        }
        opt.load(&dir.join("optimizer.safetensors"), state.step as u64)?;
        if let Some(r) = &replicas {
            r.broadcast(&vars)?;
        }
        // Lines logged after the checkpoint (a run killed mid-interval) are dropped: the resumed
        // run logs those steps again.
        if metrics_path.exists() {
            history = read_metrics(&metrics_path)?.into_iter().filter(|mt| mt.step <= state.step).collect();
        }
        eprintln!("resuming {} at step {}/{}", run_dir.display(), state.step, total_steps);
    } else {
        if run_dir.join("checkpoints").exists() || metrics_path.exists() {
            return Err(TrainError::file(
                &run_dir,
                "already holds a run; pass --resume to continue it, or choose another --out",
            ));
        }
        checkpoint::write_json(&run_dir.join("config.json"), &cfg)?;
    }
    let base_parameters = m.config().parameter_count();
    let mut data_files = vec![cfg.data.clone()];
    data_files.extend(cfg.eval_data.clone());
    on_start(&RunStart {
        config: &cfg,
        run_dir: &run_dir,
        model_files: &m.files,
        model_config: m.config(),
        base_parameters,
        trainable_parameters: n_params as u64,
        data_files: data_files.clone(),
        train_examples: train.len(),
        eval_examples: eval.len(),
        resumed: opts.resume,
    })
    .map_err(|e| TrainError::file(&run_dir, e))?;
    let metrics_line = |mt: &Metrics| {
        serde_json::to_string(mt).map(|l| l + "\n").map_err(|e| TrainError::file(&metrics_path, e))
    };
    let mut metrics_file = if opts.resume {
        // The kept lines replace the file whole (temp + fsync + rename): a crash here leaves
        // the old file, never a truncated one.
        let kept = history.iter().map(metrics_line).collect::<Result<String>>()?;
        crate::atomic::write_file(&metrics_path, "metrics-rewrite", kept.as_bytes())?;
        std::fs::OpenOptions::new().append(true).open(&metrics_path)
    } else {
        std::fs::File::create(&metrics_path)
    }
    .map_err(|e| TrainError::file(&metrics_path, e))?;
    let mut log = |mt: &Metrics, history: &mut Vec<Metrics>| -> Result<()> {
        // One write per line, so a kill leaves whole lines (or a torn last one, which resume
        // drops).
        metrics_file
            .write_all(metrics_line(mt)?.as_bytes())
            .map_err(|e| TrainError::file(&metrics_path, e))?;
        history.push(mt.clone());
        Ok(())
    };

    let target_desc = match &trainable {
        Trainable::Lora(a) => format!("LoRA r={} α={} on {} modules", a.spec.r, a.spec.alpha, a.layers.len()),
        Trainable::Full(_) => "full fine-tuning".into(),
    };
    eprintln!(
        "training {} ({target_desc}, {n_params} trainable parameters) on {} examples ({} eval), {} steps of {}×{} rows, lr {} {:?}",
        cfg.model,
        train.len(),
        eval.len(),
        total_steps,
        cfg.batch_size,
        cfg.grad_accum,
        cfg.lr,
        cfg.scheduler
    );

    // Eval before the first step: the base model's loss, the point the curve starts from.
    let evaluate = |m: &mut LoadedModel, trainable: &Trainable, step: usize| -> Result<f64> {
        trainable.set_training(false, cfg.seed, step as u64);
        m.model.set_differentiable(false);
        let l = mean_eval_loss(m, &eval, cfg.batch_size, pad);
        m.model.set_differentiable(true);
        l
    };
    if !eval.is_empty() && state.step == 0 && history.is_empty() {
        let l = evaluate(&mut m, &trainable, 0)?;
        log(
            &Metrics {
                step: 0,
                epoch: 0.0,
                loss: None,
                lr: 0.0,
                grad_norm: None,
                tokens_per_sec: 0.0,
                eval_loss: Some(l),
                loss_spikes: Vec::new(),
            },
            &mut history,
        )?;
        state.best_eval_loss = Some(l);
        state.best_step = Some(0);
    }

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total_steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_position(state.step as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // ---- the loop ----
    let order_for_epoch = |epoch: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..train.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64)));
        idx
    };
    let mut cached_order: Option<(usize, Vec<usize>)> = None;
    // A run resumed from the checkpoint written where early stopping ended it (killed while
    // writing its deliverables) is already done.
    let mut stopped_early = cfg.early_stopping_patience.is_some_and(|p| state.evals_without_improvement >= p);
    let run_start = Instant::now();
    let tokens_at_start = state.tokens_seen;
    let mut last_loss = history.iter().rev().find_map(|h| h.loss);
    while !stopped_early && state.step < total_steps {
        if opts.stop_after.is_some_and(|s| state.step >= s) {
            bar.abandon();
            return Err(TrainError::config(
                "stop_after",
                format!("stopped after step {} as asked", state.step),
            ));
        }
        let t0 = Instant::now();
        let lr = lr_at(cfg.scheduler, cfg.lr, state.step, warmup, total_steps);
        trainable.set_training(true, cfg.seed, state.step as u64);
        if let Some(r) = &replicas {
            r.set_training(true, cfg.seed, state.step as u64);
        }
        // Gather the step's micro-batches first: the loss is normalised by the step's target count.
        let mut micro = Vec::with_capacity(cfg.grad_accum);
        // Data parallel: each device's share of every micro-batch.
        let mut shared: Vec<Vec<crate::batch::Batch>> =
            (0..replicas.as_ref().map_or(0, |r| r.models.len() + 1)).map(|_| Vec::new()).collect();
        for _ in 0..cfg.grad_accum {
            let epoch = state.micro_batches / batches_per_epoch;
            let within = state.micro_batches % batches_per_epoch;
            if cached_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached_order = Some((epoch, order_for_epoch(epoch)));
            }
            let order = &cached_order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
            let picked = &order[within * cfg.batch_size..((within + 1) * cfg.batch_size).min(order.len())];
            let rows: Vec<&Example> = picked.iter().map(|&i| &train[i]).collect();
            let srcs: Vec<&[Source]> = picked.iter().map(|&i| sources[i].as_slice()).collect();
            match &replicas {
                Some(r) => {
                    let devs: Vec<&Device> =
                        std::iter::once(&device).chain(r.models.iter().map(|m| m.device())).collect();
                    let src_shares = crate::parallel::shares(&srcs, devs.len());
                    for (d, (share, src)) in
                        crate::parallel::shares(&rows, devs.len()).into_iter().zip(src_shares).enumerate()
                    {
                        if !share.is_empty() {
                            shared[d].push(make_batch_from(share, src, pad, devs[d])?);
                        }
                    }
                }
                None => micro.push(make_batch_from(&rows, &srcs, pad, &device)?),
            }
            state.micro_batches += 1;
        }
        let StepLosses { loss, grad_norm, examples } = match &replicas {
            Some(r) => {
                let models: Vec<&ferrotune_model::Llama> =
                    std::iter::once(&m.model).chain(&r.models).collect();
                let rvars: Vec<&[(String, candle_core::Var)]> = std::iter::once(vars.as_slice())
                    .chain(r.adapters.iter().map(|a| a.vars.as_slice()))
                    .collect();
                let out = crate::parallel::optimizer_step(
                    &models,
                    &rvars,
                    &shared,
                    &mut opt,
                    r,
                    lr,
                    cfg.max_grad_norm,
                )?;
                micro = shared.into_iter().flatten().collect();
                out
            }
            None => optimizer_step(&m.model, &mut opt, &micro, lr, cfg.max_grad_norm)?,
        };
        state.tokens_seen += micro.iter().map(|b| b.n_tokens).sum::<usize>();
        state.step += 1;
        state.epoch = state.micro_batches as f64 / batches_per_epoch as f64;
        last_loss = Some(loss);
        let step_tokens: usize = micro.iter().map(|b| b.n_tokens).sum();
        let tps = step_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));

        let spikes: Vec<Spike> = examples
            .iter()
            .filter_map(|e| state.loss_spikes.observe(e.line, e.loss, state.step, state.epoch))
            .collect();
        for sp in &spikes {
            let at = sp.row.map_or("a row of unknown line".into(), |l| {
                ferrotune_data::finding::locate(&cfg.data.display().to_string(), l)
            });
            bar.println(format!(
                "step {}: loss spike on {at}: {:.3} vs median {:.3} of recent examples (z {:.1})",
                sp.step, sp.loss, sp.median, sp.z
            ));
        }
        let mut mt = Metrics {
            step: state.step,
            epoch: state.epoch,
            loss: Some(loss),
            lr,
            grad_norm: Some(grad_norm),
            tokens_per_sec: tps,
            eval_loss: None,
            loss_spikes: spikes,
        };
        let last_step = state.step == total_steps;
        if !eval.is_empty() && (state.step.is_multiple_of(eval_every) || last_step) {
            let l = evaluate(&mut m, &trainable, state.step)?;
            mt.eval_loss = Some(l);
            bar.println(format!("step {}: eval loss {l:.4}", state.step));
            let improved = state.best_eval_loss.is_none_or(|b| l < b - cfg.early_stopping_threshold);
            if improved {
                state.best_eval_loss = Some(l);
                state.best_step = Some(state.step);
                state.evals_without_improvement = 0;
                crate::atomic::write_dir(&run_dir.join("best"), "best", |d| {
                    trainable.save(&m, &cfg.model, d)
                })?;
            } else {
                state.evals_without_improvement += 1;
            }
        }
        if state.step.is_multiple_of(cfg.logging_steps)
            || mt.eval_loss.is_some()
            || !mt.loss_spikes.is_empty()
            || last_step
        {
            log(&mt, &mut history)?;
        }
        let stop = cfg.early_stopping_patience.is_some_and(|p| state.evals_without_improvement >= p);
        if state.step.is_multiple_of(save_every) || last_step || stop {
            let dir = checkpoint::dir_for(&run_dir, state.step);
            crate::atomic::write_dir(&dir, "checkpoint", |d| {
                match &trainable {
                    Trainable::Lora(a) => a.save(&d.join("adapter"), &cfg.model)?,
                    Trainable::Full(v) => checkpoint::save_vars(v, &d.join("model.safetensors"))?,
                }
                opt.save(&d.join("optimizer.safetensors"))?;
                checkpoint::write_json(&d.join("trainer_state.json"), &state)
            })?;
            if let Some(limit) = cfg.save_total_limit {
                checkpoint::prune(&run_dir, limit, state.best_step)?;
            }
        }
        if stop {
            bar.println(format!(
                "early stopping: eval loss has not improved by more than {} for {} evaluations",
                cfg.early_stopping_threshold, state.evals_without_improvement
            ));
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = run_start.elapsed().as_secs_f64();

    // ---- deliverables: adapter (best by eval loss, else final), loss curve, lineage ----
    let output_name = match cfg.method {
        Method::Lora => "adapter",
        Method::Full => "model",
    };
    let output = run_dir.join(output_name);
    let best_dir = run_dir.join("best");
    if best_dir.exists() && state.best_step.is_some_and(|s| s > 0) {
        crate::atomic::write_dir(&output, output_name, |d| copy_dir(&best_dir, d))?;
    } else {
        crate::atomic::write_dir(&output, output_name, |d| trainable.save(&m, &cfg.model, d))?;
    }
    let train_pts: Vec<(f64, f64)> =
        history.iter().filter_map(|h| h.loss.map(|l| (h.step as f64, l))).collect();
    let eval_pts: Vec<(f64, f64)> =
        history.iter().filter_map(|h| h.eval_loss.map(|l| (h.step as f64, l))).collect();
    let title = format!("{} — {}", cfg.model, target_desc);
    crate::atomic::write_file_with(&run_dir.join("loss.svg"), "loss.svg", |tmp| {
        crate::plot::loss_curve(tmp, &title, &train_pts, &eval_pts)
    })?;
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        output: output.clone(),
        steps: state.step,
        final_loss: last_loss,
        first_eval_loss: eval_pts.first().map(|p| p.1),
        best_eval_loss: state.best_eval_loss,
        best_step: state.best_step,
        stopped_early,
        train_tokens_per_sec: (state.tokens_seen - tokens_at_start) as f64 / elapsed.max(1e-9),
        tokens: state.tokens_seen as u64,
        base_parameters,
        trainable_parameters: n_params as u64,
        loss_spikes_flagged: state.loss_spikes.flagged,
        loss_spikes: state.loss_spikes.ranked(),
    };
    report_spikes(&summary, &cfg.data);
    lineage::write(
        &run_dir.join("lineage.json"),
        &lineage::Inputs {
            config: &cfg,
            data_files: &data_files,
            model_files: &m.files,
            output: &output,
            started: &started,
            summary: &summary,
        },
    )?;
    Ok(summary)
}

/// One example's loss in a step: its mean cross-entropy per target token, and the data file
/// line it came from (when the batch had sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExampleLoss {
    pub line: Option<u64>,
    pub loss: f64,
    pub targets: usize,
}

/// What an optimizer step reports: the mean loss, the gradient norm before clipping, and each
/// example's own loss (micro-batches in order, their examples in row order).
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    pub loss: f64,
    pub grad_norm: f64,
    pub examples: Vec<ExampleLoss>,
}

/// Each segment's mean loss from its summed loss.
pub(crate) fn example_losses(segments: &[crate::batch::Segment], sums: &[f32]) -> Vec<ExampleLoss> {
    segments
        .iter()
        .zip(sums)
        .map(|(s, &l)| ExampleLoss {
            line: s.line,
            loss: f64::from(l) / s.targets.max(1) as f64,
            targets: s.targets,
        })
        .collect()
}

/// One optimizer step over `micro` (gradient accumulation): each micro-batch's loss summed over
/// its targets and divided by the step's target count, gradients summed, clipped, AdamW.
///
/// On the CPU the step's rows are cut into shares — each micro-batch into one per rayon thread
/// (or one per row when it has fewer rows) — and the shares run on the pool's threads at once,
/// each forward+backward on one thread (the `train` command runs candle's matmuls single-threaded
/// for this; see the CLI's `main`). One thread per share keeps every core busy through the
/// element-wise work and small products that one big forward runs on a single core, with no
/// synchronisation inside a share; at most one share per thread is in flight, so memory stays
/// that of `threads` shares. LoRA dropout draws every share the masks its tokens have in the
/// whole step ([`ferrotune_model::lora::with_token_offset`]), so the result is the unsplit step's
/// up to float summation order; successive micro-batches draw distinct masks. On a GPU the
/// micro-batches run one after another, whole, and repeat the first's masks (its dropout kernel
/// takes no offset). Returns the mean loss, the gradient norm before clipping and each example's
/// loss ([`StepLosses`]).
pub fn optimizer_step(
    model: &ferrotune_model::Llama,
    opt: &mut AdamW,
    micro: &[crate::batch::Batch],
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepLosses> {
    let step_targets: usize = micro.iter().map(|b| b.n_targets).sum();
    let norm = step_targets.max(1) as f64;
    let vars = opt.vars().to_vec();
    let parts: Vec<Result<ShareResult>> = if model.device().is_cpu() {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        let mut shares = Vec::new();
        let mut tokens_before = 0u64;
        for batch in micro {
            let (rows, t) = batch.ids.dims2()?;
            let k = threads.min(rows).max(1);
            for i in 0..k {
                let (r0, r1) = (rows * i / k, rows * (i + 1) / k);
                let share = if k == 1 { None } else { Some(batch.rows(r0, r1)?) };
                shares.push((batch, share, tokens_before + (r0 * t) as u64));
            }
            tokens_before += (rows * t) as u64;
        }
        shares
            .par_iter()
            .map(|(whole, share, offset)| {
                share_grads(model, &vars, share.as_ref().unwrap_or(whole), *offset, norm)
            })
            .collect()
    } else {
        micro.iter().map(|b| share_grads(model, &vars, b, 0, norm)).collect()
    };
    let mut grads: Option<Vec<Tensor>> = None;
    let mut loss_total = 0f64;
    let mut examples = Vec::new();
    for part in parts {
        let (loss, g, ex) = part?;
        loss_total += loss;
        examples.extend(ex);
        grads = Some(match grads {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let mut grads = grads.unwrap_or_default();
    let grad_norm = clip_global_norm(&mut grads, max_grad_norm)?;
    opt.step(&grads, lr)?;
    Ok(StepLosses { loss: loss_total / norm, grad_norm, examples })
}

/// A share's summed loss, gradients and examples' losses.
type ShareResult = (f64, Vec<Tensor>, Vec<ExampleLoss>);

/// The summed loss of `batch`, the gradients of `loss / norm` for `vars` and each example's
/// loss, LoRA dropout drawing the masks of the step's tokens from `tokens_before` on.
fn share_grads(
    model: &ferrotune_model::Llama,
    vars: &[(String, Var)],
    batch: &crate::batch::Batch,
    tokens_before: u64,
    norm: f64,
) -> Result<ShareResult> {
    ferrotune_model::lora::with_token_offset(tokens_before, || {
        let (l, sums) = loss_sums(model, batch)?;
        let loss = l.to_scalar::<f32>()? as f64;
        let g = collect_grads(vars, &(l / norm)?.backward()?)?;
        Ok((loss, g, example_losses(&batch.segments, &sums)))
    })
}

/// The run's loss spikes on stderr: how many, and the most extreme with their lines.
fn report_spikes(s: &RunSummary, data: &Path) {
    if s.loss_spikes_flagged == 0 {
        return;
    }
    let file = data.display().to_string();
    eprintln!(
        "loss spikes: {} training example(s) flagged (loss > {}x the median of the last {} examples and robust z > {}); look at these rows before trusting the run:",
        s.loss_spikes_flagged,
        crate::spikes::RATIO,
        crate::spikes::WINDOW,
        crate::spikes::Z
    );
    for sp in s.loss_spikes.iter().take(10) {
        let at = sp.row.map_or("a row of unknown line".into(), |l| ferrotune_data::finding::locate(&file, l));
        eprintln!(
            "  {at}: loss {:.3} vs median {:.3} (z {:.1}) at step {}, epoch {:.2}",
            sp.loss, sp.median, sp.z, sp.step, sp.epoch
        );
    }
}

/// Lock the run folder, then repair what a crashed writer left in it (`atomic::recover`).
fn open_run_dir(run_dir: &Path) -> Result<crate::runlock::RunLock> {
    let lock = crate::runlock::RunLock::acquire(run_dir)?;
    for dir in [run_dir.to_path_buf(), run_dir.join("checkpoints")] {
        for p in crate::atomic::recover(&dir)? {
            eprintln!("repaired {} (a run was killed while writing it)", p.display());
        }
    }
    Ok(lock)
}

/// The lines of `metrics.jsonl`. A last line cut short without its newline is what a kill
/// mid-write leaves; it is dropped (its step is logged again), any other bad line is an error.
fn read_metrics(path: &Path) -> Result<Vec<Metrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Metrics>(line) {
            Ok(mt) => out.push(mt),
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                eprintln!(
                    "{}: dropping the unfinished last line (the run was killed while writing it)",
                    path.display()
                );
            }
            Err(e) => return Err(TrainError::file(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(|e| TrainError::file(from, e))? {
        let e = e.map_err(|e| TrainError::file(from, e))?;
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dest).map_err(|err| TrainError::file(&dest, err))?;
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest).map_err(|err| TrainError::file(&dest, err))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotune_model::config::{Family, ModelConfig};
    use ferrotune_model::{Llama, LoraSpec};

    /// A tiny model with a LoRA adapter (B nudged off zero so A gets gradients), dropout on.
    fn tuned(seed: u64) -> Result<(Llama, Adapter)> {
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &Device::Cpu, 3)?;
        let mut model = Llama::load(&w, &cfg, WeightMode::F32, None)?;
        model.set_differentiable(true);
        let adapter = Adapter::init(&mut model, &LoraSpec { dropout: 0.3, ..LoraSpec::default() }, seed)?;
        adapter.attach(&mut model);
        for (_, v) in &adapter.vars {
            v.set(&(v.as_tensor() + 0.01)?)?;
        }
        adapter.control.set(true, 11, 4);
        Ok((model, adapter))
    }

    /// The CPU's row shares (one per thread, here 1 vs 3 threads over 4 rows of different
    /// lengths, two micro-batches) take the step a single thread takes, dropout included:
    /// same loss, gradient norm and weights after, to f32 summation order.
    #[test]
    fn row_shares_on_threads_take_the_single_thread_step() -> Result<()> {
        let rows = |tag: u32| -> Vec<Example> {
            (0..4u32)
                .map(|r| {
                    let ids: Vec<u32> = (0..5 + 2 * r).map(|i| (tag * 13 + r * 7 + i * 3) % 60).collect();
                    Example { labels: ids.iter().map(|&i| i64::from(i)).collect(), input_ids: ids }
                })
                .collect()
        };
        let (a, b) = (rows(1), rows(2));
        let micro = [
            make_batch(&a.iter().collect::<Vec<_>>(), 0, &Device::Cpu)?,
            make_batch(&b.iter().collect::<Vec<_>>(), 0, &Device::Cpu)?,
        ];
        let step = |threads: usize| -> Result<(f64, f64, Vec<Tensor>)> {
            let (model, adapter) = tuned(5)?;
            let mut opt = AdamW::new(adapter.vars.clone(), AdamWParams::default())?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| TrainError::config("threads", e.to_string()))?;
            let StepLosses { loss, grad_norm: norm, .. } =
                pool.install(|| optimizer_step(&model, &mut opt, &micro, 1e-2, 1.0))?;
            Ok((loss, norm, adapter.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect()))
        };
        let (l1, n1, w1) = step(1)?;
        let (l3, n3, w3) = step(3)?;
        assert!((l1 - l3).abs() < 1e-5 * l1.abs().max(1.0), "loss {l1} vs {l3}");
        assert!((n1 - n3).abs() < 1e-4 * n1.max(1.0), "grad norm {n1} vs {n3}");
        for (x, y) in w1.iter().zip(&w3) {
            let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "weights differ by {d} after the step");
        }
        // Dropout is on: a step with other masks (another seed) differs.
        let (model, adapter) = tuned(5)?;
        adapter.control.set(true, 12, 4);
        let mut opt = AdamW::new(adapter.vars.clone(), AdamWParams::default())?;
        let l_other = optimizer_step(&model, &mut opt, &micro, 1e-2, 1.0)?.loss;
        assert!((l_other - l1).abs() > 1e-6, "dropout masks had no effect ({l_other} vs {l1})");
        Ok(())
    }

    #[test]
    fn a_batchs_row_share_keeps_its_targets() -> Result<()> {
        let ex = |n: usize, tag: u32| Example {
            input_ids: vec![tag; n],
            labels: (0..n)
                .map(|i| if i < 2 { ferrotune_data::IGNORE_INDEX } else { i64::from(tag) })
                .collect(),
        };
        let (a, b, c) = (ex(5, 1), ex(3, 2), ex(6, 3));
        let whole = make_batch(&[&a, &b, &c], 0, &Device::Cpu)?;
        let share = whole.rows(1, 3)?;
        let direct = make_batch(&[&b, &c], 0, &Device::Cpu)?;
        assert_eq!(share.n_targets, direct.n_targets);
        // Same padded length (the whole batch's), so the positions agree with a batch of b, c
        // padded to 6.
        assert_eq!(share.ids.to_vec2::<u32>()?, direct.ids.to_vec2::<u32>()?);
        assert_eq!(share.positions.to_vec1::<u32>()?, direct.positions.to_vec1::<u32>()?);
        assert_eq!(share.targets.to_vec1::<u32>()?, direct.targets.to_vec1::<u32>()?);
        Ok(())
    }
}
