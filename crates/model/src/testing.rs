//! Tiny random models for tests (no real weights needed).

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::weights::{WeightTensor, Weights};

/// Random HF-named weights for `cfg` (normal, std 0.1 for matrices; norms around 1).
pub fn random_weights(cfg: &ModelConfig, device: &Device) -> candle_core::Result<Weights> {
    let mut w = Weights::new("<random>", device.clone());
    let here = std::path::Path::new("<random>");
    let mut put = |name: String, shape: &[usize]| -> candle_core::Result<()> {
        let t = if shape.len() == 1 {
            (Tensor::randn(0f32, 0.1, shape, device)? + 1.0)?
        } else {
            Tensor::randn(0f32, 0.1, shape, device)?
        };
        w.insert(name, here, WeightTensor::Dense(t));
        Ok(())
    };
    let (h, kv, d, hid, ffn) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
    put("model.embed_tokens.weight".into(), &[cfg.vocab_size, hid])?;
    put("model.norm.weight".into(), &[hid])?;
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), &[cfg.vocab_size, hid])?;
    }
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        for (n, o, inp) in [("q_proj", h * d, hid), ("k_proj", kv * d, hid), ("v_proj", kv * d, hid), ("o_proj", hid, h * d)] {
            put(format!("{p}.self_attn.{n}.weight"), &[o, inp])?;
            if cfg.attention_bias && n != "o_proj" {
                put(format!("{p}.self_attn.{n}.bias"), &[o])?;
            }
        }
        for (n, o, inp) in [("gate_proj", ffn, hid), ("up_proj", ffn, hid), ("down_proj", hid, ffn)] {
            put(format!("{p}.mlp.{n}.weight"), &[o, inp])?;
        }
        put(format!("{p}.input_layernorm.weight"), &[hid])?;
        put(format!("{p}.post_attention_layernorm.weight"), &[hid])?;
    }
    Ok(w)
}
