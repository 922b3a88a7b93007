//! Export a loaded model as a standard HF directory that `transformers` loads:
//! `config.json`, `model.safetensors` (f32), `tokenizer.json`, `tokenizer_config.json` (with the
//! chat template) and `generation_config.json`. Written to a temp folder, then renamed.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;

use crate::error::{ModelError, Result};
use crate::linear::Linear;
use crate::loaded::LoadedModel;

/// Every weight of the model under its HF name, dense.
pub fn named_tensors(m: &LoadedModel) -> Result<HashMap<String, Tensor>> {
    let model = &m.model;
    let mut out = HashMap::new();
    let mut put = |name: String, t: Tensor| out.insert(name, t);
    let mut lin = |name: String, l: &Linear| -> Result<()> {
        put(format!("{name}.weight"), l.dense_weight()?.contiguous()?);
        if let Some(b) = l.bias() {
            put(format!("{name}.bias"), b.clone());
        }
        Ok(())
    };
    for (i, l) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        lin(format!("{p}.self_attn.q_proj"), &l.self_attn.q_proj)?;
        lin(format!("{p}.self_attn.k_proj"), &l.self_attn.k_proj)?;
        lin(format!("{p}.self_attn.v_proj"), &l.self_attn.v_proj)?;
        lin(format!("{p}.self_attn.o_proj"), &l.self_attn.o_proj)?;
        lin(format!("{p}.mlp.gate_proj"), &l.mlp.gate_proj)?;
        lin(format!("{p}.mlp.up_proj"), &l.mlp.up_proj)?;
        lin(format!("{p}.mlp.down_proj"), &l.mlp.down_proj)?;
    }
    if !model.config().tie_word_embeddings {
        lin("lm_head".into(), &model.lm_head)?;
    }
    for (i, l) in model.layers.iter().enumerate() {
        out.insert(format!("model.layers.{i}.input_layernorm.weight"), l.input_layernorm.weight().clone());
        out.insert(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            l.post_attention_layernorm.weight().clone(),
        );
    }
    out.insert("model.norm.weight".into(), model.norm.weight().clone());
    out.insert("model.embed_tokens.weight".into(), model.embed_tokens.clone());
    Ok(out)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Install(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

pub fn export_hf(m: &LoadedModel, out: &Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).map_err(|e| ModelError::io(out, e))?.next().is_some() {
        return Err(ModelError::InvalidFile {
            path: out.to_path_buf(),
            what: "output directory".into(),
            reason: "exists and is not empty; choose another --out or remove it".into(),
        });
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write_dir(m, &tmp).and_then(|_| {
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| ModelError::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_dir(m: &LoadedModel, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg = m.config();
    write_json(&dir.join("config.json"), &cfg.to_hf())?;
    let tensors = named_tensors(m)?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::BadTensor {
        path: st.clone(),
        name: "*".into(),
        reason: e.to_string(),
    })?;
    m.tokenizer.save(&dir.join("tokenizer.json"))?;
    let tok = &m.tokenizer;
    let mut added = serde_json::Map::new();
    // The decoder is a hash map: sorted by id, so the same model exports the same bytes (file
    // digests key the server's response cache and the registry's records).
    let mut decoder: Vec<_> = tok.inner().get_added_tokens_decoder().into_iter().collect();
    decoder.sort_by_key(|t| t.0);
    for t in decoder {
        added.insert(
            t.0.to_string(),
            json!({"content": t.1.content, "lstrip": t.1.lstrip, "normalized": t.1.normalized,
                   "rstrip": t.1.rstrip, "single_word": t.1.single_word, "special": t.1.special}),
        );
    }
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tok.bos_token(),
            "eos_token": tok.eos_token(),
            "pad_token": tok.eos_token(),
            "add_bos_token": tok.add_bos(),
            "clean_up_tokenization_spaces": false,
            "model_max_length": cfg.max_position_embeddings,
            "added_tokens_decoder": added,
            "chat_template": m.chat_template.as_ref().map(|t| t.source()),
        }),
    )?;
    let eos = match m.eos_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id}),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Regression: `added_tokens_decoder` followed a hash map's order, so exporting the same model
    /// twice gave different `tokenizer_config.json` bytes (and different file digests).
    #[test]
    fn the_same_model_exports_the_same_tokenizer_config_bytes() {
        let read = |d: &std::path::Path| std::fs::read(d.join("tokenizer_config.json")).expect("read");
        let first = tempfile::tempdir().expect("tmp");
        crate::testing::write_tiny_model(first.path()).expect("export");
        for _ in 0..4 {
            let again = tempfile::tempdir().expect("tmp");
            crate::testing::write_tiny_model(again.path()).expect("export");
            assert_eq!(read(first.path()), read(again.path()));
        }
    }
}
