//! Hugging Face model directories: `config.json`, single or sharded `*.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json` (with `chat_template`), `generation_config.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{WeightTensor, Weights};

pub struct HfModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer_file: PathBuf,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: bool,
    /// Extra EOS ids from `generation_config.json`.
    pub generation_eos: Vec<u32>,
    pub files: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
        path: path.to_path_buf(),
        what: "JSON".into(),
        reason: e.to_string(),
    })
}

/// The weight files of a directory: the shards named by `model.safetensors.index.json`, else
/// every `*.safetensors` file.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| ModelError::InvalidFile {
            path: index.clone(),
            what: "safetensors index".into(),
            reason: "no `weight_map` object".into(),
        })?;
        let files: BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::InvalidFile {
            path: dir.to_path_buf(),
            what: "model directory".into(),
            reason: "no *.safetensors weights".into(),
        });
    }
    Ok(files)
}

/// A token given as a string or as `{"content": ...}` in `tokenizer_config.json`.
fn token_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` (the `default` one is used).
fn chat_template_field(v: &Value) -> Option<String> {
    match v.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

pub fn load(dir: &Path, device: &Device) -> Result<HfModel> {
    load_with(dir, device, true)
}

/// Everything but the weights (the weight map is empty): what tokenizing and templating need.
pub fn load_text(dir: &Path) -> Result<HfModel> {
    load_with(dir, &Device::Cpu, false)
}

fn load_with(dir: &Path, device: &Device, with_weights: bool) -> Result<HfModel> {
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let files = safetensors_files(dir)?;
    let mut weights = Weights::new(dir, device.clone());
    for file in files.iter().filter(|_| with_weights) {
        let tensors = candle_core::safetensors::load(file, device).map_err(|e| ModelError::InvalidFile {
            path: file.clone(),
            what: "safetensors".into(),
            reason: e.to_string(),
        })?;
        for (name, t) in tensors {
            weights.insert(name, file, WeightTensor::Dense(t));
        }
    }
    let tokenizer_file = dir.join("tokenizer.json");
    if !tokenizer_file.exists() {
        return Err(ModelError::InvalidFile {
            path: dir.to_path_buf(),
            what: "model directory".into(),
            reason: "no tokenizer.json".into(),
        });
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() { read_json(&tc_path)? } else { Value::Null };
    let gen_path = dir.join("generation_config.json");
    let generation_eos = if gen_path.exists() {
        match read_json(&gen_path)?.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let mut all_files = vec![dir.join("config.json"), tokenizer_file.clone()];
    all_files.extend(files.iter().cloned());
    if tc_path.exists() {
        all_files.push(tc_path);
    }
    Ok(HfModel {
        config,
        weights,
        tokenizer_file,
        chat_template: chat_template_field(&tc),
        bos_token: token_field(&tc, "bos_token"),
        eos_token: token_field(&tc, "eos_token"),
        add_bos: tc.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        generation_eos,
        files: all_files,
    })
}
