//! LoRA adapters in Hugging Face PEFT's format (`adapter_config.json` +
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_{A,B}.weight`).
//!
//! A [`LoraLayer`] plugs into a [`Linear`](crate::Linear) through the `LinearAdapter` seam and adds
//! `scale · B(A(dropout(x)))`, as PEFT's `lora.Linear.forward` does, with `scale = alpha / r`
//! (`alpha / √r` with rsLoRA). Fresh adapters follow PEFT's init: A kaiming-uniform with
//! `a = √5` (uniform in ±1/√in), B zeros — so a new adapter changes no logit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::linear::{BaseWeight, LinearAdapter};
use crate::llama::Llama;
use crate::ops::dropout::DropoutMask;

/// The seven projections of a LLaMA block: PEFT's usual choice and our default.
pub const DEFAULT_TARGETS: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Which modules get an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Module names matched on their last component(s), as PEFT matches a list.
    Names(Vec<String>),
    /// PEFT's `all-linear`: every linear layer except the output head.
    AllLinear,
}

impl TargetModules {
    pub fn parse(list: &[String]) -> Self {
        if list.len() == 1 && list[0] == "all-linear" { Self::AllLinear } else { Self::Names(list.to_vec()) }
    }

    fn matches(&self, module: &str) -> bool {
        match self {
            Self::AllLinear => true,
            Self::Names(names) => names.iter().any(|n| module == n || module.ends_with(&format!(".{n}"))),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::AllLinear => serde_json::json!("all-linear"),
            Self::Names(n) => serde_json::json!(n),
        }
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: TargetModules,
    pub use_rslora: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TargetModules::Names(DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            use_rslora: false,
        }
    }
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(ModelError::InvalidSetting { field, reason: reason.into() })
        };
        if self.r == 0 {
            return bad("lora_r", "rank must be at least 1");
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad("lora_alpha", "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("lora_dropout", "must be in [0, 1)");
        }
        if matches!(&self.targets, TargetModules::Names(n) if n.is_empty()) {
            return bad("target_modules", "is empty");
        }
        Ok(())
    }
}

/// PEFT's `adapter_config.json` (the fields we read and write; unknown keys are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}

/// Shared switch for dropout: on only while training; masks are a pure function of
/// (seed, step, layer), so a resumed run draws the same masks as an uninterrupted one.
#[derive(Debug, Default)]
pub struct DropoutControl {
    training: AtomicBool,
    step: AtomicU64,
    seed: AtomicU64,
}

impl DropoutControl {
    pub fn set(&self, training: bool, seed: u64, step: u64) {
        self.training.store(training, Ordering::Relaxed);
        self.seed.store(seed, Ordering::Relaxed);
        self.step.store(step, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct LoraLayer {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    dropout: f64,
    index: u64,
    control: Arc<DropoutControl>,
}

impl LoraLayer {
    /// The dropout mask for `x` (a seeded hash, never stored: [`crate::ops::dropout`]), or `None`
    /// when dropout is off.
    fn dropout_mask(&self, x: &Tensor) -> candle_core::Result<Option<DropoutMask>> {
        Ok(self.dropout_mask_for(x.dims().last().copied().unwrap_or(1) as u64))
    }

    /// [`Self::dropout_mask`] for an input of `cols` columns.
    fn dropout_mask_for(&self, cols: u64) -> Option<DropoutMask> {
        if self.dropout == 0.0 || !self.control.training.load(Ordering::Relaxed) {
            return None;
        }
        let seed = self.control.seed.load(Ordering::Relaxed);
        let step = self.control.step.load(Ordering::Relaxed);
        let mix =
            seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let keep = 1.0 - self.dropout;
        // Element `i` of this call's input is element `offset + i` of the whole batch's.
        let offset = TOKEN_OFFSET.with(|o| o.get()) * cols;
        Some(DropoutMask { seed: mix, keep, offset })
    }
}

thread_local! {
    /// Tokens of the batch before the rows this thread is running (see [`with_token_offset`]).
    static TOKEN_OFFSET: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` (a forward over a share of a batch's rows) with LoRA dropout drawing the masks of the
/// whole batch's tokens from `tokens_before` on, so splitting a batch into row shares changes
/// nothing. Restores the previous offset afterwards (shares may nest on one thread under rayon).
pub fn with_token_offset<R>(tokens_before: u64, f: impl FnOnce() -> R) -> R {
    let previous = TOKEN_OFFSET.with(|o| o.replace(tokens_before));
    let r = f();
    TOKEN_OFFSET.with(|o| o.set(previous));
    r
}

impl LinearAdapter for LoraLayer {
    fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let inp = self.a.dim(1)?;
        let lead = x.elem_count() / inp;
        // Scale the small `[lead, r]` intermediate, not the `[lead, out]` result.
        // f32 variables, run in the activations' dtype (a no-op for f32; bf16 on a GPU, where
        // the cast's backward brings the gradients back to the f32 variables).
        let (a, b) = (self.a.to_dtype(x.dtype())?, self.b.to_dtype(x.dtype())?);
        let x2 = x.reshape((lead, inp))?;
        let h = match self.dropout_mask(x)? {
            // (Training goes through `fused_with_frozen`; this path runs dropout only when called
            // directly.)
            Some(m) => m.apply(&x2.contiguous()?)?.matmul(&a.t()?)?,
            None => x2.matmul(&a.t()?)?,
        };
        let h = (h * self.scale)?.matmul(&b.t()?)?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.b.dim(0)?;
        }
        h.reshape(dims)
    }
}

impl LoraLayer {
    /// Whether the adapter is being trained (its variables in the graph).
    pub fn is_training(&self) -> bool {
        self.a.track_op()
    }

    /// Training a frozen dense layer: `x·Wᵀ + delta(x)` as one op with its own backward
    /// (`x: [n, in]`, `w: [out, in]`). `None` outside training: use `x·Wᵀ` and `delta`.
    pub fn fused_with_frozen(&self, x: &Tensor, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
        // Only while training the adapter (its variables in the graph); inference keeps the plain path.
        if !self.is_training() {
            return None;
        }
        let run = || -> candle_core::Result<Tensor> {
            let (a, b) = (self.a.to_dtype(x.dtype())?, self.b.to_dtype(x.dtype())?);
            let mask = self.dropout_mask(x)?;
            crate::ops::lora::lora_linear(x, w, &a, &b, self.scale, mask.as_ref())
        };
        Some(run())
    }

    /// While training, the variables (in the activations' dtype), scale and dropout mask for an
    /// input with `in_features` columns, for the ops that fuse several layers
    /// (`ops::layer`). `None` outside training.
    pub fn training_parts(
        &self,
        in_features: usize,
        dtype: candle_core::DType,
    ) -> Option<candle_core::Result<crate::ops::lora::LoraVars>> {
        if !self.is_training() {
            return None;
        }
        let run = || -> candle_core::Result<crate::ops::lora::LoraVars> {
            Ok((
                self.a.to_dtype(dtype)?,
                self.b.to_dtype(dtype)?,
                self.scale,
                self.dropout_mask_for(in_features as u64),
            ))
        };
        Some(run())
    }
}

/// A set of LoRA layers keyed by HF module name (`model.layers.0.self_attn.q_proj`).
#[derive(Debug)]
pub struct Adapter {
    pub spec: LoraSpec,
    pub layers: BTreeMap<String, Arc<LoraLayer>>,
    /// The trainable variables (A then B of each layer, in module order) when created for training.
    pub vars: Vec<(String, Var)>,
    pub control: Arc<DropoutControl>,
}

/// Every linear module name of the model (for error messages and matching).
pub fn module_names(model: &mut Llama) -> Vec<String> {
    model.linears_mut().into_iter().map(|(n, _)| n).collect()
}

fn kind_names(names: &[String]) -> String {
    let mut kinds: Vec<&str> = names.iter().filter_map(|n| n.rsplit('.').next()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join(", ")
}

impl Adapter {
    /// A fresh adapter for `model` (A kaiming-uniform, B zeros), as trainable variables.
    pub fn init(model: &mut Llama, spec: &LoraSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let device = model.device().clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let control = Arc::new(DropoutControl::default());
        let mut layers = BTreeMap::new();
        let mut vars = Vec::new();
        let names = module_names(model);
        for (index, (name, lin)) in model.linears_mut().into_iter().enumerate() {
            if !spec.targets.matches(&name) {
                continue;
            }
            let (inp, out) = (lin.in_features(), lin.out_features());
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..spec.r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.r, inp), &device)?)?;
            let b = Var::zeros((out, spec.r), DType::F32, &device)?;
            layers.insert(
                name.clone(),
                Arc::new(LoraLayer {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: spec.scale(),
                    dropout: spec.dropout,
                    index: index as u64,
                    control: control.clone(),
                }),
            );
            vars.push((format!("{name}.lora_A.weight"), a));
            vars.push((format!("{name}.lora_B.weight"), b));
        }
        if layers.is_empty() {
            return Err(ModelError::InvalidSetting {
                field: "target_modules",
                reason: format!(
                    "{:?} matches no module; the model has: {}",
                    spec.targets,
                    kind_names(&names)
                ),
            });
        }
        Ok(Self { spec: spec.clone(), layers, vars, control })
    }

    /// Plug every layer into the model (replacing any adapter there).
    pub fn attach(&self, model: &mut Llama) {
        for (name, lin) in model.linears_mut() {
            if let Some(l) = self.layers.get(&name) {
                lin.set_adapter(Some(l.clone() as Arc<dyn LinearAdapter>));
            }
        }
        model.choose_layer_paths();
    }

    pub fn detach(model: &mut Llama) {
        for (_, lin) in model.linears_mut() {
            lin.set_adapter(None);
        }
        model.choose_layer_paths();
    }

    /// Fold the adapter into the base weights: `W ← W + scale·B·A` (dense weights only).
    pub fn merge_into(&self, model: &mut Llama) -> Result<()> {
        for (name, lin) in model.linears_mut() {
            let Some(l) = self.layers.get(&name) else { continue };
            let BaseWeight::Dense(w) = lin.weight() else {
                return Err(ModelError::InvalidSetting {
                    field: "weights",
                    reason: "merging needs f32 base weights (load the model with --weights f32)".into(),
                });
            };
            let merged = (w + (l.b.matmul(&l.a)? * l.scale)?)?;
            lin.set_weight(BaseWeight::Dense(merged));
            lin.set_adapter(None);
        }
        model.choose_layer_paths();
        Ok(())
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = std::collections::HashMap::new();
        for (name, l) in &self.layers {
            tensors.insert(format!("base_model.model.{name}.lora_A.weight"), l.a.copy()?);
            tensors.insert(format!("base_model.model.{name}.lora_B.weight"), l.b.copy()?);
        }
        let st = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::BadTensor {
            path: st.clone(),
            name: "*".into(),
            reason: e.to_string(),
        })?;
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.spec.r,
            "lora_alpha": self.spec.alpha,
            "lora_dropout": self.spec.dropout,
            "target_modules": self.spec.targets.to_json(),
            "use_rslora": self.spec.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "init_lora_weights": true,
            "modules_to_save": null,
            "inference_mode": true,
            "base_model_name_or_path": base_model,
        });
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::Install(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
    }

    /// Read a PEFT adapter directory for `model`, checking every tensor's shape.
    pub fn load(dir: &Path, model: &mut Llama) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
            path: cfg_path.clone(),
            what: "adapter_config.json".into(),
            reason: e.to_string(),
        })?;
        let unsupported = |field: &str, reason: &str| ModelError::InvalidConfig {
            path: cfg_path.clone(),
            field: field.into(),
            reason: reason.into(),
        };
        if cfg.peft_type != "LORA" {
            return Err(unsupported(
                "peft_type",
                &format!("`{}` is not supported (only LORA)", cfg.peft_type),
            ));
        }
        if cfg.use_dora {
            return Err(unsupported("use_dora", "DoRA adapters are not supported yet"));
        }
        if cfg.bias != "none" {
            return Err(unsupported("bias", "only `none` is supported"));
        }
        if cfg.fan_in_fan_out {
            return Err(unsupported("fan_in_fan_out", "only false is supported (LLaMA uses nn.Linear)"));
        }
        if !cfg.rank_pattern.is_empty() || !cfg.alpha_pattern.is_empty() {
            return Err(unsupported("rank_pattern", "per-module ranks/alphas are not supported"));
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(unsupported("modules_to_save", "fully trained extra modules are not supported"));
        }
        let targets = match &cfg.target_modules {
            serde_json::Value::String(s) => TargetModules::parse(std::slice::from_ref(s)),
            serde_json::Value::Array(a) => {
                TargetModules::Names(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            }
            _ => return Err(unsupported("target_modules", "expected a list of names or \"all-linear\"")),
        };
        let spec = LoraSpec {
            r: cfg.r,
            alpha: cfg.lora_alpha,
            dropout: cfg.lora_dropout,
            targets,
            use_rslora: cfg.use_rslora,
        };
        spec.validate()?;
        let st = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&st, model.device()).map_err(|e| {
            ModelError::InvalidFile { path: st.clone(), what: "safetensors".into(), reason: e.to_string() }
        })?;
        let control = Arc::new(DropoutControl::default());
        let mut layers = BTreeMap::new();
        for (index, (name, lin)) in model.linears_mut().into_iter().enumerate() {
            let key = |ab: &str| format!("base_model.model.{name}.lora_{ab}.weight");
            let (Some(a), Some(b)) = (tensors.get(&key("A")), tensors.get(&key("B"))) else { continue };
            let check = |t: &Tensor, ab: &str, want: [usize; 2]| -> Result<Tensor> {
                if t.dims() != want {
                    return Err(ModelError::ShapeMismatch {
                        path: st.clone(),
                        name: key(ab),
                        expected: want.to_vec(),
                        got: t.dims().to_vec(),
                    });
                }
                Ok(t.to_dtype(DType::F32)?)
            };
            let a = check(a, "A", [spec.r, lin.in_features()])?;
            let b = check(b, "B", [lin.out_features(), spec.r])?;
            layers.insert(
                name.clone(),
                Arc::new(LoraLayer {
                    a,
                    b,
                    scale: spec.scale(),
                    dropout: 0.0,
                    index: index as u64,
                    control: control.clone(),
                }),
            );
        }
        let known: std::collections::HashSet<String> = layers
            .keys()
            .flat_map(|n| ["A", "B"].map(|ab| format!("base_model.model.{n}.lora_{ab}.weight")))
            .collect();
        if let Some(stray) = tensors.keys().find(|k| !known.contains(*k)) {
            return Err(ModelError::BadTensor {
                path: st,
                name: stray.clone(),
                reason: "does not belong to any linear layer of this model (wrong base model?)".into(),
            });
        }
        if layers.is_empty() {
            return Err(ModelError::InvalidFile {
                path: st,
                what: "adapter".into(),
                reason: "holds no LoRA weights".into(),
            });
        }
        Ok(Self { spec, layers, vars: Vec::new(), control })
    }
}
