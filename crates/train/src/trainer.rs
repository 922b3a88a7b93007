//! The training loop. [`run_with`] reads top to bottom as the run's steps: resolve the run
//! folder and config → load the model and data → init what trains → plan the schedule → open
//! the run folder (or resume) → loop { forward, loss, backward, clip, AdamW step, schedule, log,
//! eval, checkpoint } → publish the adapter, the loss curve and the lineage record. The step
//! itself, on one device or over data-parallel replicas, is [`crate::step`]'s. Each example's
//! loss in its step is judged for a spike (`spikes`), which `metrics.jsonl` and the summary name
//! by the example's data file line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Var};
use ferrotune_model::{Adapter, LoadedModel, WeightMode};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::batch::{Example, Source, eval_loss_sum, make_batch};
use crate::checkpoint::{self, TrainerState};
use crate::config::{Method, TrainConfig};
pub use crate::dataset::load_examples;
use crate::dataset::{TrainData, load_data};
use crate::error::{Result, TrainError};
use crate::lineage;
pub use crate::metrics::Metrics;
use crate::metrics::MetricsLog;
use crate::optim::{AdamW, AdamWParams};
use crate::parallel::Replicas;
use crate::runlock::RunLock;
use crate::schedule::lr_at;
use crate::spikes::Spike;
pub use crate::step::{ExampleLoss, StepLosses, optimizer_step};
use crate::step::{StepBatches, StepRunner};

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

    /// What trains, for the log and the loss curve's title.
    fn describe(&self) -> String {
        match self {
            Self::Lora(a) => format!("LoRA r={} α={} on {} modules", a.spec.r, a.spec.alpha, a.layers.len()),
            Self::Full(_) => "full fine-tuning".into(),
        }
    }

    /// Write the trained weights as a deliverable into `dir`.
    fn save(&self, m: &LoadedModel, base: &str, dir: &Path) -> Result<()> {
        match self {
            Self::Lora(a) => Ok(a.save(dir, base)?),
            Self::Full(_) => Ok(ferrotune_model::export::export_hf(m, dir)?),
        }
    }

    /// Write the trained weights into checkpoint folder `dir`.
    fn save_checkpoint(&self, base: &str, dir: &Path) -> Result<()> {
        match self {
            Self::Lora(a) => a.save(&dir.join("adapter"), base)?,
            Self::Full(v) => checkpoint::save_vars(v, &dir.join("model.safetensors"))?,
        }
        Ok(())
    }

    /// Restore the trained weights from checkpoint folder `dir`.
    fn load_checkpoint(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Lora(a) => {
                checkpoint::load_vars(&a.vars, &dir.join("adapter/adapter_model.safetensors"), |n| {
                    format!("base_model.model.{n}")
                })
            }
            Self::Full(v) => checkpoint::load_vars(v, &dir.join("model.safetensors"), str::to_string),
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
    let shares = (0..k)
        .map(|i| batch.rows(rows * i / k, rows * (i + 1) / k))
        .collect::<ferrotune_model::Result<Vec<_>>>()?;
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
    // ---- resolve: the run folder and the config (a resumed run uses its saved config) ----
    let (run_dir, lock, cfg) = resolve(cfg, opts)?;
    let started = lineage::now_rfc3339();

    // ---- load: model and data ----
    let (device, replica_devices) = open_devices(&cfg)?;
    let (mut m, max_len) = load_model(&cfg, &device)?;
    let data = load_data(&cfg, &m, max_len)?;

    // ---- init: the trainable parameters, the step runner, the optimizer ----
    let (trainable, runner) = init_trainable(&cfg, &mut m, device, &replica_devices)?;
    let mut opt =
        AdamW::new(trainable.vars(), AdamWParams { weight_decay: cfg.weight_decay, ..Default::default() })?;
    let n_params: usize = opt.vars().iter().map(|(_, v)| v.elem_count()).sum();

    // ---- schedule ----
    let plan = Plan::new(&cfg, data.train.len());

    // ---- open the run folder, or resume the run in it ----
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::file(&run_dir, e))?;
    let _lock = match lock {
        Some(l) => l,
        None => open_run_dir(&run_dir)?,
    };
    let (state, history) = if opts.resume {
        resume(&run_dir, &trainable, &mut opt, &runner, plan.total_steps)?
    } else {
        start(&run_dir, &cfg, plan.total_steps)?
    };
    on_start(&RunStart {
        config: &cfg,
        run_dir: &run_dir,
        model_files: &m.files,
        model_config: m.config(),
        base_parameters: m.config().parameter_count(),
        trainable_parameters: n_params as u64,
        data_files: data_files(&cfg),
        train_examples: data.train.len(),
        eval_examples: data.eval.len(),
        resumed: opts.resume,
    })
    .map_err(|e| TrainError::file(&run_dir, e))?;
    let metrics = MetricsLog::open(run_dir.join("metrics.jsonl"), history, opts.resume)?;
    let mut t = Trainer { cfg, run_dir, m, trainable, n_params, runner, opt, data, plan, state, metrics };

    // ---- the loop ----
    t.announce();
    t.eval_base_model()?;
    let end = t.train(opts)?;

    // ---- publish: adapter (best by eval loss, else final), loss curve, lineage ----
    t.publish(&started, end)
}

/// The run folder, its lock, and the config to train with (a resumed run's saved one). One
/// trainer per run folder, locked before anything in it is read; a folder that does not exist
/// yet is locked when it is made (`run_with`).
fn resolve(cfg: TrainConfig, opts: &RunOptions) -> Result<(PathBuf, Option<RunLock>, TrainConfig)> {
    let run_dir = cfg.out.clone().unwrap_or_else(|| default_run_dir(&cfg));
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
    Ok((run_dir, lock, cfg))
}

/// The trainer's device, and the devices of its data-parallel replicas: with `--devices 0,1`
/// the first GPU holds the trainer's model and the replicas go on the others.
fn open_devices(cfg: &TrainConfig) -> Result<(Device, Vec<Device>)> {
    let Some(list) = cfg.devices.as_deref() else {
        return Ok((crate::config::open_device(&cfg.device)?, Vec::new()));
    };
    let gpus = crate::parallel::open_devices(&crate::parallel::gpu_list(&cfg.device, list)?)?;
    match gpus.split_first() {
        Some((first, rest)) => Ok((first.clone(), rest.to_vec())),
        None => Err(TrainError::config("devices", "no GPU given (e.g. 0,1)")),
    }
}

/// The model on `device` in the run's dtype, and the longest sequence the run trains on.
fn load_model(cfg: &TrainConfig, device: &Device) -> Result<(LoadedModel, usize)> {
    let mut m = ferrotune_model::load(&cfg.model, WeightMode::F32, &Device::Cpu)?;
    let dtype = cfg.resolved_dtype(device);
    if !device.is_cpu() || dtype != DType::F32 {
        m.model = m.model.cast(device, dtype)?;
    }
    let ctx = m.config().max_position_embeddings;
    let max_len = cfg.max_seq_len.unwrap_or(ctx.min(2048));
    if max_len > ctx {
        return Err(TrainError::config(
            "max_seq_len",
            format!("{max_len} exceeds the model's context of {ctx} tokens"),
        ));
    }
    Ok((m, max_len))
}

/// The model's trainable parameters (a fresh LoRA adapter attached, or every weight) and the
/// runner of its steps: with `replica_devices`, data-parallel LoRA replicas holding the same
/// adapter weights.
fn init_trainable(
    cfg: &TrainConfig,
    m: &mut LoadedModel,
    device: Device,
    replica_devices: &[Device],
) -> Result<(Trainable, StepRunner)> {
    m.model.set_differentiable(true);
    match cfg.method {
        Method::Lora => {
            let spec = cfg.lora_spec();
            // The replicas copy the base model, so they are made before the adapter is attached.
            let replicas = match replica_devices {
                [] => None,
                devices => Some(Replicas::lora(&m.model, devices, &spec, cfg.seed)?),
            };
            let adapter = Adapter::init(&mut m.model, &spec, cfg.seed).map_err(|e| match e {
                ferrotune_model::ModelError::InvalidSetting { field, reason } => {
                    TrainError::config(field, reason)
                }
                other => other.into(),
            })?;
            adapter.attach(&mut m.model);
            let runner = StepRunner::new(device, replicas, &adapter.vars);
            runner.sync()?;
            Ok((Trainable::Lora(adapter), runner))
        }
        Method::Full => Ok((Trainable::Full(m.model.make_trainable()?), StepRunner::new(device, None, &[]))),
    }
}

/// How long the run is, and how often it evaluates and saves.
struct Plan {
    batches_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    eval_every: usize,
    save_every: usize,
}

impl Plan {
    fn new(cfg: &TrainConfig, train_rows: usize) -> Self {
        let batches_per_epoch = train_rows.div_ceil(cfg.batch_size);
        let total_steps = match cfg.max_steps {
            Some(s) => s,
            None => {
                ((cfg.epochs * batches_per_epoch as f64) / cfg.grad_accum as f64).ceil().max(1.0) as usize
            }
        };
        let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum).max(1);
        let warmup = cfg.warmup_steps.unwrap_or((cfg.warmup_ratio * total_steps as f64).round() as usize);
        let eval_every = cfg.eval_steps.unwrap_or(steps_per_epoch);
        let save_every = cfg.save_steps.unwrap_or(eval_every);
        Self { batches_per_epoch, total_steps, warmup, eval_every, save_every }
    }

    /// The learning rate of step `step` (0-based).
    fn lr(&self, cfg: &TrainConfig, step: usize) -> f64 {
        lr_at(cfg.scheduler, cfg.lr, step, self.warmup, self.total_steps)
    }
}

/// A new run in `run_dir`, which must not hold one yet: its config written, its state at step 0.
fn start(run_dir: &Path, cfg: &TrainConfig, total_steps: usize) -> Result<(TrainerState, Vec<Metrics>)> {
    if run_dir.join("checkpoints").exists() || run_dir.join("metrics.jsonl").exists() {
        return Err(TrainError::file(
            run_dir,
            "already holds a run; pass --resume to continue it, or choose another --out",
        ));
    }
    checkpoint::write_json(&run_dir.join("config.json"), cfg)?;
    Ok((TrainerState::new(total_steps, cfg.seed), Vec::new()))
}

/// The run in `run_dir` from its last checkpoint: weights (sent to the replicas too), optimizer
/// and trainer state restored, and the metrics lines up to it. Lines logged after the checkpoint
/// (a run killed mid-interval) are dropped: the resumed run logs those steps again.
fn resume(
    run_dir: &Path,
    trainable: &Trainable,
    opt: &mut AdamW,
    runner: &StepRunner,
    total_steps: usize,
) -> Result<(TrainerState, Vec<Metrics>)> {
    let Some(&last) = checkpoint::list(run_dir).last() else {
        return Err(TrainError::file(run_dir.join("checkpoints"), "no checkpoint to resume from"));
    };
    let dir = checkpoint::dir_for(run_dir, last);
    let state: TrainerState = checkpoint::read_json(&dir.join("trainer_state.json"))?;
    trainable.load_checkpoint(&dir)?;
    opt.load(&dir.join("optimizer.safetensors"), state.step as u64)?;
    runner.sync()?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let history = if metrics_path.exists() {
        crate::metrics::read(&metrics_path)?.into_iter().filter(|mt| mt.step <= state.step).collect()
    } else {
        Vec::new()
    };
    eprintln!("resuming {} at step {}/{}", run_dir.display(), state.step, total_steps);
    Ok((state, history))
}

/// Training data, then evaluation data.
fn data_files(cfg: &TrainConfig) -> Vec<PathBuf> {
    let mut files = vec![cfg.data.clone()];
    files.extend(cfg.eval_data.clone());
    files
}

/// A run with its folder open: what the loop works on.
struct Trainer {
    cfg: TrainConfig,
    run_dir: PathBuf,
    m: LoadedModel,
    trainable: Trainable,
    n_params: usize,
    runner: StepRunner,
    opt: AdamW,
    data: TrainData,
    plan: Plan,
    state: TrainerState,
    metrics: MetricsLog,
}

/// How the loop ended.
struct LoopEnd {
    stopped_early: bool,
    last_loss: Option<f64>,
    /// Tokens per second over this process's steps.
    tokens_per_sec: f64,
}

impl Trainer {
    fn announce(&self) {
        let cfg = &self.cfg;
        eprintln!(
            "training {} ({}, {} trainable parameters) on {} examples ({} eval), {} steps of {}×{} rows, lr {} {:?}",
            cfg.model,
            self.trainable.describe(),
            self.n_params,
            self.data.train.len(),
            self.data.eval.len(),
            self.plan.total_steps,
            cfg.batch_size,
            cfg.grad_accum,
            cfg.lr,
            cfg.scheduler
        );
    }

    /// Eval before the first step: the base model's loss, the point the curve starts from.
    fn eval_base_model(&mut self) -> Result<()> {
        if self.data.eval.is_empty() || self.state.step != 0 || !self.metrics.history().is_empty() {
            return Ok(());
        }
        let l = self.evaluate(0)?;
        self.metrics.log(&Metrics {
            step: 0,
            epoch: 0.0,
            loss: None,
            lr: 0.0,
            grad_norm: None,
            tokens_per_sec: 0.0,
            eval_loss: Some(l),
            loss_spikes: Vec::new(),
        })?;
        self.state.best_eval_loss = Some(l);
        self.state.best_step = Some(0);
        Ok(())
    }

    /// The loop, from the state's step to the plan's last (or early stopping, or `stop_after`).
    fn train(&mut self, opts: &RunOptions) -> Result<LoopEnd> {
        let bar = progress_bar(opts.progress, self.plan.total_steps, self.state.step);
        let mut order = EpochOrder::new(self.data.train.len(), self.cfg.seed);
        // A run resumed from the checkpoint written where early stopping ended it (killed while
        // writing its deliverables) is already done.
        let mut stopped_early = self.patience_ran_out();
        let run_start = Instant::now();
        let tokens_at_start = self.state.tokens_seen;
        let mut last_loss = self.metrics.history().iter().rev().find_map(|h| h.loss);
        while !stopped_early && self.state.step < self.plan.total_steps {
            if opts.stop_after.is_some_and(|s| self.state.step >= s) {
                bar.abandon();
                return Err(TrainError::config(
                    "stop_after",
                    format!("stopped after step {} as asked", self.state.step),
                ));
            }
            let t0 = Instant::now();
            let lr = self.plan.lr(&self.cfg, self.state.step);
            let (StepLosses { loss, grad_norm, examples }, step_tokens) = self.step(&mut order, lr)?;
            self.state.tokens_seen += step_tokens;
            self.state.step += 1;
            self.state.epoch = self.state.micro_batches as f64 / self.plan.batches_per_epoch as f64;
            last_loss = Some(loss);
            let tps = step_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(self.state.step as u64);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));

            let spikes = self.judge_spikes(&examples, &bar);
            let mut mt = Metrics {
                step: self.state.step,
                epoch: self.state.epoch,
                loss: Some(loss),
                lr,
                grad_norm: Some(grad_norm),
                tokens_per_sec: tps,
                eval_loss: None,
                loss_spikes: spikes,
            };
            let step = self.state.step;
            let last_step = step == self.plan.total_steps;
            if !self.data.eval.is_empty() && (step.is_multiple_of(self.plan.eval_every) || last_step) {
                mt.eval_loss = Some(self.eval_and_keep_best(&bar)?);
            }
            if step.is_multiple_of(self.cfg.logging_steps)
                || mt.eval_loss.is_some()
                || !mt.loss_spikes.is_empty()
                || last_step
            {
                self.metrics.log(&mt)?;
            }
            let stop = self.patience_ran_out();
            if step.is_multiple_of(self.plan.save_every) || last_step || stop {
                self.save_checkpoint()?;
            }
            if stop {
                bar.println(format!(
                    "early stopping: eval loss has not improved by more than {} for {} evaluations",
                    self.cfg.early_stopping_threshold, self.state.evals_without_improvement
                ));
                stopped_early = true;
                break;
            }
        }
        bar.finish_and_clear();
        let elapsed = run_start.elapsed().as_secs_f64();
        let tokens_per_sec = (self.state.tokens_seen - tokens_at_start) as f64 / elapsed.max(1e-9);
        Ok(LoopEnd { stopped_early, last_loss, tokens_per_sec })
    }

    /// One optimizer step over the next `grad_accum` micro-batches, dropout drawing this step's
    /// masks; also the tokens it trained on.
    fn step(&mut self, order: &mut EpochOrder, lr: f64) -> Result<(StepLosses, usize)> {
        let (seed, step) = (self.cfg.seed, self.state.step as u64);
        self.trainable.set_training(true, seed, step);
        self.runner.set_training(seed, step);
        // Gather the step's micro-batches first: the loss is normalised by the step's target count.
        let batches = self.next_batches(order)?;
        let losses = self.runner.step(&self.m.model, &mut self.opt, &batches, lr, self.cfg.max_grad_norm)?;
        Ok((losses, batches.tokens()))
    }

    /// The next `grad_accum` micro-batches of `batch_size` rows in the epoch's order.
    fn next_batches(&mut self, order: &mut EpochOrder) -> Result<StepBatches> {
        let (size, per_epoch) = (self.cfg.batch_size, self.plan.batches_per_epoch);
        let mut batches = self.runner.batches();
        for _ in 0..self.cfg.grad_accum {
            let epoch = self.state.micro_batches / per_epoch;
            let within = self.state.micro_batches % per_epoch;
            let order = order.of_epoch(epoch);
            let picked = &order[within * size..((within + 1) * size).min(order.len())];
            let rows: Vec<&Example> = picked.iter().map(|&i| &self.data.train[i]).collect();
            let srcs: Vec<&[Source]> = picked.iter().map(|&i| self.data.sources[i].as_slice()).collect();
            self.runner.push(&mut batches, &rows, &srcs, self.data.pad)?;
            self.state.micro_batches += 1;
        }
        Ok(batches)
    }

    /// The step's examples' losses judged for spikes; each spike printed with its data file line.
    fn judge_spikes(&mut self, examples: &[ExampleLoss], bar: &ProgressBar) -> Vec<Spike> {
        let (step, epoch) = (self.state.step, self.state.epoch);
        let spikes: Vec<Spike> = examples
            .iter()
            .filter_map(|e| self.state.loss_spikes.observe(e.line, e.loss, step, epoch))
            .collect();
        for sp in &spikes {
            let at = sp.row.map_or("a row of unknown line".into(), |l| {
                ferrotune_data::finding::locate(&self.cfg.data.display().to_string(), l)
            });
            bar.println(format!(
                "step {}: loss spike on {at}: {:.3} vs median {:.3} of recent examples (z {:.1})",
                sp.step, sp.loss, sp.median, sp.z
            ));
        }
        spikes
    }

    /// The mean eval loss, dropout off for it.
    fn evaluate(&mut self, step: usize) -> Result<f64> {
        self.trainable.set_training(false, self.cfg.seed, step as u64);
        self.m.model.set_differentiable(false);
        let l = mean_eval_loss(&self.m, &self.data.eval, self.cfg.batch_size, self.data.pad);
        self.m.model.set_differentiable(true);
        l
    }

    /// Evaluate; a loss better than the best by more than the early-stopping threshold becomes
    /// the best, its weights written to `best/`.
    fn eval_and_keep_best(&mut self, bar: &ProgressBar) -> Result<f64> {
        let l = self.evaluate(self.state.step)?;
        bar.println(format!("step {}: eval loss {l:.4}", self.state.step));
        let improved = self.state.best_eval_loss.is_none_or(|b| l < b - self.cfg.early_stopping_threshold);
        if improved {
            self.state.best_eval_loss = Some(l);
            self.state.best_step = Some(self.state.step);
            self.state.evals_without_improvement = 0;
            crate::atomic::write_dir(&self.run_dir.join("best"), "best", |d| {
                self.trainable.save(&self.m, &self.cfg.model, d)
            })?;
        } else {
            self.state.evals_without_improvement += 1;
        }
        Ok(l)
    }

    fn patience_ran_out(&self) -> bool {
        self.cfg.early_stopping_patience.is_some_and(|p| self.state.evals_without_improvement >= p)
    }

    /// `checkpoints/step-N/`: weights, optimizer, trainer state; then the oldest pruned.
    fn save_checkpoint(&self) -> Result<()> {
        let dir = checkpoint::dir_for(&self.run_dir, self.state.step);
        crate::atomic::write_dir(&dir, "checkpoint", |d| {
            self.trainable.save_checkpoint(&self.cfg.model, d)?;
            self.opt.save(&d.join("optimizer.safetensors"))?;
            checkpoint::write_json(&d.join("trainer_state.json"), &self.state)
        })?;
        if let Some(limit) = self.cfg.save_total_limit {
            checkpoint::prune(&self.run_dir, limit, self.state.best_step)?;
        }
        Ok(())
    }

    /// The deliverables: the adapter or model (the best by eval loss, else the final weights),
    /// `loss.svg` and `lineage.json`; the spikes reported on stderr.
    fn publish(self, started: &str, end: LoopEnd) -> Result<RunSummary> {
        let (cfg, run_dir, state) = (&self.cfg, &self.run_dir, &self.state);
        let output_name = match cfg.method {
            Method::Lora => "adapter",
            Method::Full => "model",
        };
        let output = run_dir.join(output_name);
        let best_dir = run_dir.join("best");
        if best_dir.exists() && state.best_step.is_some_and(|s| s > 0) {
            crate::atomic::write_dir(&output, output_name, |d| copy_dir(&best_dir, d))?;
        } else {
            crate::atomic::write_dir(&output, output_name, |d| self.trainable.save(&self.m, &cfg.model, d))?;
        }
        let history = self.metrics.history();
        let train_pts: Vec<(f64, f64)> =
            history.iter().filter_map(|h| h.loss.map(|l| (h.step as f64, l))).collect();
        let eval_pts: Vec<(f64, f64)> =
            history.iter().filter_map(|h| h.eval_loss.map(|l| (h.step as f64, l))).collect();
        let title = format!("{} — {}", cfg.model, self.trainable.describe());
        crate::atomic::write_file_with(&run_dir.join("loss.svg"), "loss.svg", |tmp| {
            crate::plot::loss_curve(tmp, &title, &train_pts, &eval_pts)
        })?;
        let summary = RunSummary {
            run_dir: run_dir.clone(),
            output: output.clone(),
            steps: state.step,
            final_loss: end.last_loss,
            first_eval_loss: eval_pts.first().map(|p| p.1),
            best_eval_loss: state.best_eval_loss,
            best_step: state.best_step,
            stopped_early: end.stopped_early,
            train_tokens_per_sec: end.tokens_per_sec,
            tokens: state.tokens_seen as u64,
            base_parameters: self.m.config().parameter_count(),
            trainable_parameters: self.n_params as u64,
            loss_spikes_flagged: state.loss_spikes.flagged,
            loss_spikes: state.loss_spikes.ranked(),
        };
        report_spikes(&summary, &cfg.data);
        lineage::write(
            &run_dir.join("lineage.json"),
            &lineage::Inputs {
                config: cfg,
                data_files: &data_files(cfg),
                model_files: &self.m.files,
                output: &output,
                started,
                summary: &summary,
            },
        )?;
        Ok(summary)
    }
}

/// The training rows' order in each epoch: a shuffle seeded by the run's seed and the epoch (so
/// a resumed run draws the same), the current epoch's kept.
struct EpochOrder {
    rows: usize,
    seed: u64,
    cached: Option<(usize, Vec<usize>)>,
}

impl EpochOrder {
    fn new(rows: usize, seed: u64) -> Self {
        Self { rows, seed, cached: None }
    }

    fn of_epoch(&mut self, epoch: usize) -> &[usize] {
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut idx: Vec<usize> = (0..self.rows).collect();
            idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
            self.cached = Some((epoch, idx));
        }
        self.cached.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default()
    }
}

fn progress_bar(show: bool, total_steps: usize, at: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total_steps as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_position(at as u64);
    b
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
