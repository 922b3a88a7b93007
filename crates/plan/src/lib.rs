//! `ferrotune-plan`: what a fine-tune and its serving will need, predicted before either runs.
//!
//! Every number the plan prints comes from a formula in this crate and a measurement the project
//! recorded; the formula's text travels with the number so the user can check it.
//!
//! - [`shapes`]: model shapes the plan knows without their weights (SmolLM2, Llama 3.x, …).
//! - [`hardware`]: devices (memory, peak bf16 TFLOP/s, memory bandwidth) and which backend runs them.
//! - [`memory`]: training memory per method (weights, adapter, gradients, optimizer state,
//!   activations with and without gradient checkpointing, runtime overhead) and serving memory
//!   (weights + KV cache), derived from what ferrotune's training code keeps; validated against
//!   the measured peaks in `bench/`.
//! - [`throughput`]: training tokens/s from the project's benchmark records, scaled by FLOPs per
//!   token and by device peak; `--calibrate` records this machine.
//! - [`cost`]: device-hour and API price tables (`prices.toml`), training cost, serving TCO and
//!   the break-even against an API.
//! - [`hyper`]: recommended hyperparameters from the data's token statistics, with the rule and
//!   the number that chose each (evidence in `docs/plan.md`).
//! - [`recommend`]: the method recommendation and warnings.
//! - [`report`]: the [`Plan`] a command prints as a table or JSON.

pub mod cost;
pub mod error;
pub mod hardware;
pub mod hyper;
pub mod memory;
pub mod recommend;
pub mod report;
pub mod shapes;
pub mod throughput;

pub use error::{PlanError, Result};
pub use hardware::{Backend, Hardware};
pub use report::{Plan, PlanInputs, plan};

/// A fine-tuning method.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// LoRA adapters of rank `r` on `targets` (HF projection names, e.g. `q_proj`); base frozen.
    Lora { r: usize, targets: Vec<String> },
    /// Every weight trained (AdamW on all parameters).
    Full,
    /// LoRA over a 4-bit (NF4, block 64, double-quantized scales) frozen base, as QLoRA.
    /// `ferrotune train` cannot run it yet: the plan estimates it for comparison.
    QLora { r: usize, targets: Vec<String> },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lora { .. } => "lora",
            Method::Full => "full",
            Method::QLora { .. } => "qlora",
        }
    }

    /// Whether `ferrotune train` can run this method today.
    pub fn runnable(&self) -> bool {
        !matches!(self, Method::QLora { .. })
    }

    /// Trainable parameters of this method on `cfg`.
    pub fn trainable_parameters(&self, cfg: &ferrotune_model::ModelConfig) -> u64 {
        match self {
            Method::Full => cfg.parameter_count(),
            Method::Lora { r, targets } | Method::QLora { r, targets } => lora_parameters(cfg, *r, targets),
        }
    }
}

/// `r·(in + out)` summed over the targeted projections of every layer.
pub fn lora_parameters(cfg: &ferrotune_model::ModelConfig, r: usize, targets: &[String]) -> u64 {
    let (h, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (q, kv) = ((cfg.num_heads * cfg.head_dim) as u64, (cfg.num_kv_heads * cfg.head_dim) as u64);
    let per_layer: u64 = targets
        .iter()
        .map(|t| match t.as_str() {
            "q_proj" => h + q,
            "k_proj" | "v_proj" => h + kv,
            "o_proj" => q + h,
            "gate_proj" | "up_proj" => h + f,
            "down_proj" => f + h,
            _ => 0,
        })
        .sum();
    per_layer * r as u64 * cfg.num_layers as u64
}

/// The seven projections LoRA targets by default (as `ferrotune train`).
pub fn default_targets() -> Vec<String> {
    ferrotune_model::lora::DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Bytes as GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}
