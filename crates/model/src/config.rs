//! Model configuration: `HfConfig` mirrors Hugging Face `config.json` (llama / mistral / qwen2);
//! `ModelConfig` is the validated form the model code uses.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `eos_token_id` is an int or a list in HF configs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HfRopeScaling {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// Wire form of HF `config.json`. Unknown keys are ignored, as transformers does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<HfRopeScaling>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }
    fn hf_architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// RoPE frequency scaling, as transformers' `ROPE_INIT_FUNCTIONS` define them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Positions divided by `factor` (equivalently, inverse frequencies divided by it).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Validated configuration used by the model code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always on for qwen2).
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

fn invalid(path: &Path, field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig { path: path.to_path_buf(), field: field.to_string(), reason: reason.into() }
}

impl ModelConfig {
    /// Weights the model holds (a tied head counted once), as the loader reads them: embedding,
    /// per layer q/k/v/o and gate/up/down (with their biases where the config has them) and two
    /// RMSNorm scales, the final norm, an untied head.
    pub fn parameter_count(&self) -> u64 {
        let (hid, ffn, d) = (self.hidden_size as u64, self.intermediate_size as u64, self.head_dim as u64);
        let (q, kv) = (self.num_heads as u64 * d, self.num_kv_heads as u64 * d);
        let mut layer = hid * q + 2 * hid * kv + q * hid + 3 * hid * ffn + 2 * hid;
        if self.attention_bias {
            layer += q + 2 * kv;
            if self.family == Family::Llama {
                layer += hid;
            }
        }
        if self.mlp_bias {
            layer += 2 * ffn + hid;
        }
        let embed = self.vocab_size as u64 * hid;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_layers as u64 * layer + hid + head
    }

    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
            path: path.to_path_buf(),
            what: "config.json".into(),
            reason: e.to_string(),
        })?;
        Self::from_hf(&hf, path)
    }

    /// Validate a wire config; `path` is only used in error messages.
    pub fn from_hf(hf: &HfConfig, path: &Path) -> Result<Self> {
        let arch = hf.model_type.clone().unwrap_or_else(|| "llama".into());
        let family = Family::parse(&arch).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: arch.clone(),
        })?;
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(invalid(path, "hidden_act", format!("`{act}` is not supported (only silu)")));
        }
        let positive =
            |field: &str, v: usize| if v == 0 { Err(invalid(path, field, "must be > 0")) } else { Ok(v) };
        let num_heads = positive("num_attention_heads", hf.num_attention_heads)?;
        let num_kv_heads = positive("num_key_value_heads", hf.num_key_value_heads.unwrap_or(num_heads))?;
        if num_heads % num_kv_heads != 0 {
            return Err(invalid(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let hidden = positive("hidden_size", hf.hidden_size)?;
        let head_dim = hf.head_dim.unwrap_or(hidden / num_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(path, "head_dim", format!("{head_dim} must be even and > 0")));
        }
        if hf.head_dim.is_none() && hidden % num_heads != 0 {
            return Err(invalid(
                path,
                "hidden_size",
                format!("{hidden} is not a multiple of {num_heads} heads"),
            ));
        }
        let rope_scaling = match &hf.rope_scaling {
            None => None,
            Some(s) => {
                let kind = s.rope_type.as_deref().unwrap_or("default");
                let factor = || s.factor.ok_or_else(|| invalid(path, "rope_scaling.factor", "missing"));
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear { factor: factor()? }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: factor()?,
                        low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                        high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                        original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192),
                    }),
                    other => {
                        return Err(invalid(
                            path,
                            "rope_scaling.rope_type",
                            format!("`{other}` is not supported (supported: default, linear, llama3)"),
                        ));
                    }
                }
            }
        };
        let sliding_window = match family {
            Family::Mistral => hf.sliding_window,
            Family::Qwen2 if hf.use_sliding_window == Some(true) => hf.sliding_window,
            _ => None,
        };
        Ok(Self {
            family,
            hidden_size: hidden,
            intermediate_size: positive("intermediate_size", hf.intermediate_size)?,
            num_layers: positive("num_hidden_layers", hf.num_hidden_layers)?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: positive("vocab_size", hf.vocab_size)?,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            attention_bias: hf.attention_bias.unwrap_or(family == Family::Qwen2),
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: hf.bos_token_id,
            eos_token_ids: hf.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: hf.pad_token_id,
        })
    }

    /// The HF `config.json` transformers needs to load this model (written by `export`).
    pub fn to_hf(&self) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
        };
        let eos = match self.eos_token_ids.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        let mut v = serde_json::json!({
            "architectures": [self.family.hf_architecture()],
            "model_type": self.family.as_str(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        });
        if let Some(map) = v.as_object_mut() {
            match self.family {
                Family::Llama => {
                    map.insert("attention_bias".into(), self.attention_bias.into());
                    map.insert("mlp_bias".into(), self.mlp_bias.into());
                }
                Family::Mistral => {
                    map.insert("sliding_window".into(), serde_json::json!(self.sliding_window));
                }
                Family::Qwen2 => {
                    map.insert("use_sliding_window".into(), self.sliding_window.is_some().into());
                    map.insert("sliding_window".into(), serde_json::json!(self.sliding_window));
                }
            }
        }
        v
    }

    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// A small random-weights config for tests.
    pub fn tiny(family: Family) -> Self {
        Self {
            family,
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            vocab_size: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: family == Family::Qwen2,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_str(json).expect("valid json");
        ModelConfig::from_hf(&hf, Path::new("config.json"))
    }

    const SMOL: &str = r#"{"model_type":"llama","hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
        "rope_theta":100000,"tie_word_embeddings":true,"eos_token_id":2}"#;

    #[test]
    fn smollm2_config_parses_with_derived_head_dim() {
        let c = parse(SMOL).expect("parses");
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_groups(), 3);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn parameter_count_is_smollm2s_published_count() {
        assert_eq!(parse(SMOL).expect("parses").parameter_count(), 134_515_008);
    }

    #[test]
    fn parameter_count_matches_the_weights_a_loaded_model_trains_fully() {
        let mut untied = ModelConfig::tiny(Family::Llama);
        untied.tie_word_embeddings = false;
        for cfg in [ModelConfig::tiny(Family::Llama), untied, ModelConfig::tiny(Family::Qwen2)] {
            let w = crate::testing::random_weights(&cfg, &candle_core::Device::Cpu).expect("weights");
            let mut m = crate::Llama::load(&w, &cfg, crate::WeightMode::F32, None).expect("loads");
            let vars = m.make_trainable().expect("trainable");
            let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(cfg.parameter_count(), n as u64, "{cfg:?}");
        }
    }

    #[test]
    fn unknown_architecture_is_named() {
        let err = parse(&SMOL.replace("\"llama\"", "\"gpt2\"")).expect_err("must fail");
        assert!(err.to_string().contains("gpt2"), "{err}");
    }

    #[test]
    fn unsupported_rope_scaling_is_an_error_naming_the_field() {
        let json = SMOL.replace("\"eos_token_id\":2", "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}");
        let err = parse(&json).expect_err("must fail");
        assert!(err.to_string().contains("rope_scaling.rope_type"), "{err}");
    }

    #[test]
    fn hf_round_trip_keeps_the_config() {
        let c = parse(SMOL).expect("parses");
        let hf: HfConfig = serde_json::from_value(c.to_hf()).expect("wire form");
        assert_eq!(ModelConfig::from_hf(&hf, Path::new("x")).expect("valid"), c);
    }
}
