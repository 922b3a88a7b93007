//! The training configuration: one struct that mirrors the TOML file (`--config run.toml`) and
//! the command-line flags (which override the file), validated before any step runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::schedule::Scheduler;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Lora,
    Full,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lora" => Ok(Self::Lora),
            "full" => Ok(Self::Full),
            "qlora" | "dora" => Err(format!("method `{s}` is not implemented yet (lora, full)")),
            other => Err(format!("unknown method `{other}` (lora, full)")),
        }
    }
}

/// The dtype weights and activations run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 on the CPU, bf16 on a GPU.
    #[default]
    Auto,
    F32,
    /// bf16 base weights and activations; LoRA variables and optimizer state stay f32.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}` (auto, f32, bf16)")),
        }
    }
}

/// Every training setting, with the defaults `ferrotune train --help` states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: String,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub method: Method,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub rslora: bool,
    pub epochs: f64,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: Option<usize>,
    pub warmup_ratio: f64,
    pub scheduler: Scheduler,
    pub max_grad_norm: f64,
    pub max_seq_len: Option<usize>,
    pub train_on_inputs: bool,
    /// Concatenate examples into sequences of up to `max_seq_len` tokens (fewer pad tokens).
    pub packing: bool,
    pub eval_steps: Option<usize>,
    pub save_steps: Option<usize>,
    pub save_total_limit: Option<usize>,
    pub early_stopping_patience: Option<usize>,
    pub early_stopping_threshold: f64,
    pub logging_steps: usize,
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (a CUDA build: scripts/gpu/build-cuda.sh).
    pub device: String,
    /// Data-parallel LoRA over these GPUs of the host (`"0,1"`, with `device = "cuda"`): each
    /// batch's rows split across them (`parallel`).
    pub devices: Option<String>,
    pub dtype: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ferrotune_model::store::DEFAULT_MODEL.into(),
            data: PathBuf::new(),
            eval_data: None,
            out: None,
            method: Method::Lora,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: ferrotune_model::lora::DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            rslora: false,
            epochs: 3.0,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_steps: None,
            warmup_ratio: 0.0,
            scheduler: Scheduler::Linear,
            max_grad_norm: 1.0,
            max_seq_len: None,
            train_on_inputs: false,
            packing: false,
            eval_steps: None,
            save_steps: None,
            save_total_limit: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            logging_steps: 1,
            seed: 42,
            device: "cpu".into(),
            devices: None,
            dtype: Precision::Auto,
        }
    }
}

impl TrainConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
        toml::from_str(&text).map_err(|e| TrainError::file(path, e))
    }

    /// Checks that need no model or data; the trainer checks the rest before step 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(TrainError::config(field, reason));
        if self.data.as_os_str().is_empty() {
            return bad("data", "no training file given (--data FILE)");
        }
        if !self.data.exists() {
            return Err(TrainError::file(&self.data, "training file not found"));
        }
        if let Some(e) = &self.eval_data
            && !e.exists()
        {
            return Err(TrainError::file(e, "eval file not found"));
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a finite number > 0");
        }
        if self.max_steps == Some(0)
            || (self.max_steps.is_none() && !(self.epochs > 0.0 && self.epochs.is_finite()))
        {
            return bad("epochs", "train for at least one step (--epochs > 0 or --max-steps >= 1)");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1)");
        }
        if self.weight_decay < 0.0 {
            return bad("weight_decay", "must be >= 0");
        }
        if self.max_grad_norm < 0.0 {
            return bad("max_grad_norm", "must be >= 0 (0 disables clipping)");
        }
        if self.eval_steps == Some(0) || self.save_steps == Some(0) || self.logging_steps == 0 {
            return bad("eval_steps/save_steps/logging_steps", "must be at least 1");
        }
        if self.save_total_limit == Some(0) {
            return bad("save_total_limit", "must be at least 1 (omit it to keep every checkpoint)");
        }
        if self.early_stopping_patience.is_some() && self.eval_data.is_none() {
            return bad("early_stopping_patience", "needs --eval-data to measure eval loss");
        }
        if self.method == Method::Lora {
            self.lora_spec().validate()?;
        }
        parse_device(&self.device)?;
        if let Some(list) = &self.devices {
            crate::parallel::gpu_list(&self.device, list)?;
            if self.method != Method::Lora {
                return bad("devices", "data parallel over several GPUs trains LoRA adapters only");
            }
        }
        if self.method == Method::Full && self.dtype == Precision::Bf16 {
            return bad(
                "dtype",
                "full fine-tuning keeps f32 weights (bf16 master weights lose small updates); use --dtype f32 or --method lora",
            );
        }
        Ok(())
    }

    /// The dtype to run in on `device` (`auto`: bf16 on a GPU for LoRA, else f32).
    pub fn resolved_dtype(&self, device: &candle_core::Device) -> candle_core::DType {
        match self.dtype {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::Auto if !device.is_cpu() && self.method == Method::Lora => candle_core::DType::BF16,
            Precision::Auto => candle_core::DType::F32,
        }
    }

    pub fn lora_spec(&self) -> ferrotune_model::LoraSpec {
        ferrotune_model::LoraSpec {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: ferrotune_model::TargetModules::parse(&self.target_modules),
            use_rslora: self.rslora,
        }
    }
}

/// Where a device name points: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`; checked before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Result<DeviceSpec> {
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(TrainError::config("device", format!("`{other}` is not a device (cpu, cuda, cuda:N)"))),
        },
    }
}

/// Opens the device; a CUDA device in a CPU-only build is an error saying how to get one.
pub fn open_device(s: &str) -> Result<candle_core::Device> {
    match parse_device(s)? {
        DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(TrainError::config(
                    "device",
                    format!(
                        "`{s}`: this ferrotune was built without CUDA (build one with scripts/gpu/build-cuda.sh)"
                    ),
                ));
            }
            let dev = candle_core::Device::new_cuda(n)
                .map_err(|e| TrainError::config("device", format!("`{s}`: {e}")))?;
            single_stream(&dev);
            Ok(dev)
        }
    }
}

/// Everything ferrotune runs on a CUDA device goes through one stream (candle's per-thread
/// default stream of the one thread that drives a single GPU; with `--devices`, a stream of the
/// device's own shared by its threads, `parallel::open_devices`), so cudarc's cross-stream event
/// tracking (an event recorded and waited on for every buffer of every kernel launch) only
/// costs driver calls: turn it off.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
pub(crate) fn single_stream(dev: &candle_core::Device) {
    if let candle_core::Device::Cuda(d) = dev {
        // SAFETY: cudarc requires that no other stream touch these buffers concurrently; candle
        // and ferrotune queue a device's work on one stream only (see above); copies between
        // devices synchronise both (`parallel`).
        unsafe { d.disable_event_tracking() }
    }
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn single_stream(_: &candle_core::Device) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_mirror_the_flags_and_unknown_keys_are_refused() {
        let c: TrainConfig =
            toml::from_str("lora_r = 8\nlr = 1e-3\nscheduler = \"cosine\"\nmethod = \"full\"")
                .expect("parses");
        assert_eq!((c.lora_r, c.lr, c.scheduler, c.method), (8, 1e-3, Scheduler::Cosine, Method::Full));
        assert_eq!(c.batch_size, 4);
        let err = toml::from_str::<TrainConfig>("lora_rank = 8").expect_err("unknown key");
        assert!(err.to_string().contains("lora_rank"), "{err}");
    }

    #[test]
    fn devices_parse_and_a_cpu_build_says_how_to_get_cuda() {
        assert_eq!(parse_device("cpu").expect("cpu"), DeviceSpec::Cpu);
        assert_eq!(parse_device("cuda").expect("cuda"), DeviceSpec::Cuda(0));
        assert_eq!(parse_device("cuda:3").expect("cuda:3"), DeviceSpec::Cuda(3));
        for bad in ["tpu", "cuda:x", "cuda:"] {
            let err = parse_device(bad).expect_err(bad).to_string();
            assert!(err.contains("device") && err.contains(bad), "{err}");
        }
        if !candle_core::utils::cuda_is_available() {
            let err = open_device("cuda").expect_err("no CUDA in this build").to_string();
            assert!(err.contains("scripts/gpu/build-cuda.sh"), "{err}");
        }
        assert!(open_device("cpu").expect("cpu").is_cpu());
    }

    #[test]
    fn dtype_defaults_to_f32_on_the_cpu_and_full_bf16_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("d.jsonl");
        std::fs::write(&data, "{}\n").expect("write");
        let c = TrainConfig { data: data.clone(), ..Default::default() };
        assert_eq!(c.resolved_dtype(&candle_core::Device::Cpu), candle_core::DType::F32);
        let c = TrainConfig { data, method: Method::Full, dtype: Precision::Bf16, ..Default::default() };
        let err = c.validate().expect_err("full bf16").to_string();
        assert!(err.contains("dtype"), "{err}");
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn rank_zero_is_refused_before_training() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("d.jsonl");
        std::fs::write(&data, "{}\n").expect("write");
        let c = TrainConfig { data, lora_r: 0, ..Default::default() };
        let err = c.validate().expect_err("rank 0");
        assert!(err.to_string().contains("lora_r"), "{err}");
    }

    #[test]
    fn devices_need_cuda_lora_and_distinct_gpus() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("d.jsonl");
        std::fs::write(&data, "{}\n").expect("write");
        let gpus = |device: &str, list: &str, method: Method| TrainConfig {
            data: data.clone(),
            device: device.into(),
            devices: Some(list.into()),
            method,
            ..Default::default()
        };
        assert!(gpus("cuda", "0,1", Method::Lora).validate().is_ok());
        assert!(gpus("cuda:1", "1,0", Method::Lora).validate().is_ok());
        for (device, list, method) in [
            ("cpu", "0,1", Method::Lora),
            ("cuda:1", "0,1", Method::Lora),
            ("cuda", "0,0", Method::Lora),
            ("cuda", "0,1", Method::Full),
        ] {
            let err = gpus(device, list, method).validate().expect_err(list).to_string();
            assert!(err.contains("devices"), "{device} {list}: {err}");
        }
    }
}
