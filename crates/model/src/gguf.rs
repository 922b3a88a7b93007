//! GGUF files: metadata → `ModelConfig`, tensors → HF-named `Weights`, vocabulary → tokenizer.
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of
//! `q_proj`/`k_proj` for its interleaved RoPE; we undo that, byte-exactly on the quantized rows,
//! so one rotate-half RoPE and HF-layout weights serve every path (and PEFT adapters line up).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QTensor, ggml_file::qtensor_from_ggml};

use crate::config::{Family, ModelConfig};
use crate::error::{ModelError, Result};
use crate::tokenizer::{GgufVocab, tokenizer_json_from_gguf};
use crate::weights::{WeightTensor, Weights};

pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer_json: serde_json::Value,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: bool,
    /// llama.cpp's `rope_freqs.weight` (per-frequency divisors), when present.
    pub rope_freq_factors: Option<Vec<f32>>,
}

struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn err(&self, key: &str, reason: &str) -> ModelError {
        ModelError::InvalidConfig {
            path: self.path.to_path_buf(),
            field: key.to_string(),
            reason: reason.into(),
        }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }
    fn uint(&self, key: &str) -> Result<Option<u64>> {
        Ok(match self.get(key) {
            None => None,
            Some(v) => Some(match v {
                Value::U8(x) => *x as u64,
                Value::U16(x) => *x as u64,
                Value::U32(x) => *x as u64,
                Value::U64(x) => *x,
                Value::I8(x) if *x >= 0 => *x as u64,
                Value::I16(x) if *x >= 0 => *x as u64,
                Value::I32(x) if *x >= 0 => *x as u64,
                Value::I64(x) if *x >= 0 => *x as u64,
                _ => return Err(self.err(key, "expected a non-negative integer")),
            }),
        })
    }
    fn req_usize(&self, key: &str) -> Result<usize> {
        self.uint(key)?.map(|v| v as usize).ok_or_else(|| self.err(key, "missing"))
    }
    fn float(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::F32(x)) => Some(*x as f64),
            Some(Value::F64(x)) => Some(*x),
            Some(_) => return Err(self.err(key, "expected a float")),
        })
    }
    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }
    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.err(key, "expected an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.err(key, "expected an array")),
        }
    }
    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::U32(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    Value::U8(x) => Ok(*x as i64),
                    Value::I8(x) => Ok(*x as i64),
                    _ => Err(self.err(key, "expected an array of integers")),
                })
                .collect(),
            Some(_) => Err(self.err(key, "expected an array")),
        }
    }
}

/// GGUF tensor name → HF name (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.split_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undo `LlamaModel.permute`: GGUF row `h·d + 2i + j` holds HF row `h·d + j·d/2 + i`.
/// Rows are whole quantization blocks, so this moves bytes and never requantizes.
fn unpermute_rows(q: &QTensor, n_heads: usize, device: &Device) -> candle_core::Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let rows = dims[0];
    let d = rows / n_heads;
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                let dst = h * d + j * (d / 2) + i;
                let src = h * d + 2 * i + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    qtensor_from_ggml(q.dtype(), &out, dims, device)
}

/// The file, positioned after its header, and the parsed header.
fn open(path: &Path) -> Result<(BufReader<File>, Content)> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| ModelError::InvalidFile {
        path: path.to_path_buf(),
        what: "GGUF header".into(),
        reason: e.to_string(),
    })?;
    Ok((reader, content))
}

/// The model configuration a GGUF's metadata describes (and its token list).
fn config_of(path: &Path, content: &Content) -> Result<(ModelConfig, Vec<String>)> {
    let meta = Meta { path, map: &content.metadata };
    let arch = meta.string("general.architecture")?.unwrap_or("").to_string();
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: other.to_string(),
            });
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta.req_usize(&key("embedding_length"))?;
    let num_heads = meta.req_usize(&key("attention.head_count"))?;
    let num_kv_heads = meta.uint(&key("attention.head_count_kv"))?.map(|v| v as usize).unwrap_or(num_heads);
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let vocab_size = meta.uint(&key("vocab_size"))?.map(|v| v as usize).unwrap_or(tokens.len());
    let head_dim =
        meta.uint(&key("attention.key_length"))?.map(|v| v as usize).unwrap_or(hidden / num_heads.max(1));
    let bos_id = meta.uint("tokenizer.ggml.bos_token_id")?;
    let eos_id = meta.uint("tokenizer.ggml.eos_token_id")?;
    let rope_scaling =
        match (meta.string(&key("rope.scaling.type"))?, meta.float(&key("rope.scaling.factor"))?) {
            (Some("linear"), Some(f)) => Some(crate::config::RopeScaling::Linear { factor: f }),
            (None | Some("none"), _) => None,
            (Some(other), _) => {
                return Err(meta.err(
                    &key("rope.scaling.type"),
                    &format!("`{other}` is not supported (supported: linear)"),
                ));
            }
        };
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let config = ModelConfig {
        family,
        hidden_size: hidden,
        intermediate_size: meta.req_usize(&key("feed_forward_length"))?,
        num_layers: meta.req_usize(&key("block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: meta.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: meta.float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: meta.uint(&key("context_length"))?.map(|v| v as usize).unwrap_or(2048),
        tie_word_embeddings: !has("output.weight"),
        attention_bias: has("blk.0.attn_q.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        sliding_window: None,
        bos_token_id: bos_id.map(|v| v as u32),
        eos_token_ids: eos_id.map(|v| vec![v as u32]).unwrap_or_default(),
        pad_token_id: meta.uint("tokenizer.ggml.padding_token_id")?.map(|v| v as u32),
    };
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(
            meta.err(&key("attention.head_count_kv"), "head counts must be positive and divide each other")
        );
    }
    Ok((config, tokens))
}

/// The configuration of a GGUF, reading only its header.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let (_, content) = open(path)?;
    Ok(config_of(path, &content)?.0)
}

pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let (mut reader, content) = open(path)?;
    let (config, tokens) = config_of(path, &content)?;
    let meta = Meta { path, map: &content.metadata };
    let (family, num_heads, num_kv_heads) = (config.family, config.num_heads, config.num_kv_heads);
    let mut weights = Weights::new(path, device.clone());
    let mut rope_freq_factors = None;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let bad = |e: candle_core::Error| ModelError::BadTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            reason: e.to_string(),
        };
        // candle multiplies the dimensions unchecked (an overflow panic in a checked build, a
        // wrong size otherwise), and views an empty tensor's buffer (dangling, 1-aligned) as
        // f32 / blocks, an unaligned slice; no model has either (found by fuzzing,
        // fuzz/fuzz_targets/gguf.rs).
        let dims = content.tensor_infos[name].shape.dims();
        let dtype = content.tensor_infos[name].ggml_dtype;
        let bytes = dims.iter().try_fold(dtype.type_size(), |n, &d| n.checked_mul(d));
        let problem = match bytes {
            None => Some("its size overflows"),
            Some(0) => Some("it is empty"),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: format!("dimensions {dims:?}: {problem}"),
            });
        }
        let q = content.tensor(&mut reader, name, device).map_err(bad)?;
        if name == "rope_freqs.weight" {
            let v = q.dequantize(device).and_then(|t| t.to_vec1::<f32>()).map_err(bad)?;
            rope_freq_factors = Some(v);
            continue;
        }
        let Some(hf) = hf_name(name) else {
            tracing::warn!(tensor = %name, "ignoring unknown GGUF tensor");
            continue;
        };
        // Only the llama converter permutes; qwen2 GGUFs keep HF's layout (NeoX RoPE).
        let q = if family == Family::Llama
            && (hf.contains("self_attn.q_proj") || hf.contains("self_attn.k_proj"))
        {
            let heads = if hf.contains("q_proj") { num_heads } else { num_kv_heads };
            unpermute_rows(&q, heads, device).map_err(bad)?
        } else {
            q
        };
        weights.insert(hf, path, WeightTensor::Quantized(Arc::new(q)));
    }

    let text = text_parts(&meta, tokens)?;
    Ok(GgufModel {
        config,
        weights,
        tokenizer_json: text.tokenizer_json,
        chat_template: text.chat_template,
        bos_token: text.bos_token,
        eos_token: text.eos_token,
        add_bos: text.add_bos,
        rope_freq_factors,
    })
}

/// What a GGUF says about text: tokenizer, chat template, special tokens (no weights).
pub struct GgufText {
    pub tokenizer_json: serde_json::Value,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: bool,
    pub eos_ids: Vec<u32>,
}

fn text_parts(meta: &Meta<'_>, tokens: Vec<String>) -> Result<GgufText> {
    let bos_id = meta.uint("tokenizer.ggml.bos_token_id")?;
    let eos_id = meta.uint("tokenizer.ggml.eos_token_id")?;
    let token_str = |id: Option<u64>| id.and_then(|i| tokens.get(i as usize).cloned());
    let (bos_token, eos_token) = (token_str(bos_id), token_str(eos_id));
    let vocab = GgufVocab {
        model: meta.string("tokenizer.ggml.model")?.unwrap_or("gpt2"),
        pre: meta.string("tokenizer.ggml.pre")?.unwrap_or("default"),
        tokens,
        token_types: meta.ints("tokenizer.ggml.token_type")?,
        merges: meta.strings("tokenizer.ggml.merges")?,
    };
    let tokenizer_json = tokenizer_json_from_gguf(&vocab).map_err(|e| ModelError::InvalidFile {
        path: meta.path.to_path_buf(),
        what: "tokenizer metadata".into(),
        reason: e.to_string(),
    })?;
    Ok(GgufText {
        tokenizer_json,
        chat_template: meta.string("tokenizer.chat_template")?.map(str::to_string),
        bos_token,
        eos_token,
        add_bos: meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
        eos_ids: eos_id.map(|v| vec![v as u32]).unwrap_or_default(),
    })
}

/// The tokenizer, chat template and special tokens of a GGUF, reading only its header (the
/// data stage needs no weights; loading them cost ~0.7 s and ~300 MB for SmolLM2-135M).
pub fn load_text(path: &Path) -> Result<GgufText> {
    let (_, content) = open(path)?;
    let meta = Meta { path, map: &content.metadata };
    text_parts(&meta, meta.strings("tokenizer.ggml.tokens")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    /// The converter's permutation, written as in `convert_hf_to_gguf.py`.
    fn permute(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        w.reshape((n_heads, 2, rows / n_heads / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation_on_quantized_rows() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (3 * 16, 64), &dev)?;
        let permuted = permute(&w, 3)?;
        let q = QTensor::quantize(&permuted, candle_core::quantized::GgmlDType::Q8_0)?;
        let back = unpermute_rows(&q, 3, &dev)?.dequantize(&dev)?;
        let direct = QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0)?.dequantize(&dev)?;
        assert_eq!(back.to_vec2::<f32>()?, direct.to_vec2::<f32>()?);
        Ok(())
    }
}
