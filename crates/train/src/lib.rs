//! `ferrotune-train`: LoRA and full fine-tuning of the model crate's LLaMA on candle.
//!
//! - [`config`]: `TrainConfig`, mirrored by the TOML file and the CLI flags, validated up front.
//! - [`trainer`]: `run(config)` — the loop, readable top to bottom (eval, checkpoints, resume,
//!   early stopping, best adapter, loss curve, lineage); [`step`]: one optimizer step, on one
//!   device or over data-parallel replicas; [`metrics`]: `metrics.jsonl`; [`dataset`]: the
//!   rendered (and packed) examples a run reads.
//! - [`batch`]: padding rendered examples into batches; the loss on target tokens only.
//! - [`optim`]: AdamW (decoupled decay) with saveable state, global-norm clipping.
//! - [`parallel`]: data-parallel LoRA over several GPUs (not wired into the CLI yet: see its docs).
//! - [`schedule`]: learning-rate schedules as pure functions.
//! - [`spikes`]: single examples whose loss spikes (logged with their data file line).
//! - [`checkpoint`]: checkpoint folders, pruning, trainer state.
//! - [`atomic`]: crash-safe folder swaps and file writes, and their repair after a crash;
//!   [`runlock`]: one trainer per run folder; [`crash`]: test-only fault injection.
//! - [`lineage`], [`plot`]: `lineage.json` and `loss.svg`.

pub mod atomic;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod crash;
pub mod dataset;
pub mod error;
pub mod lineage;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod runlock;
pub mod schedule;
pub mod spikes;
pub mod step;
pub mod trainer;

pub use config::{Method, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{RunOptions, RunStart, RunSummary, optimizer_step, run, run_with};
