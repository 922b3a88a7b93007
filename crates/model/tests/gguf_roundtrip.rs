//! A tiny GGUF written the way llama.cpp's converter writes one (Q/K rows permuted, vocabulary in
//! metadata) loads back into the same model as its HF-layout weights, on both weight paths; and
//! broken files fail with the file and tensor named.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ferrotune_model::testing::random_weights;
use ferrotune_model::{Family, Llama, Logits, ModelConfig, WeightMode, load_path};

/// `LlamaModel.permute` from `convert_hf_to_gguf.py`.
fn permute(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((n_heads, 2, rows / n_heads / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

fn gguf_name(hf: &str) -> String {
    let pairs =
        [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight")];
    for (a, b) in pairs {
        if hf == a {
            return b.into();
        }
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (layer, rest) = rest.split_once('.').expect("layer index");
    let rest = rest
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("input_layernorm", "attn_norm");
    format!("blk.{layer}.{rest}")
}

/// Write `cfg`'s random weights as a Q8_0 GGUF; returns the f32 model built from the
/// *quantized-then-dequantized* HF weights (the exact values the GGUF holds).
fn write_tiny_gguf(path: &Path, cfg: &ModelConfig) -> anyhow::Result<Llama> {
    let dev = Device::Cpu;
    let w = random_weights(cfg, &dev)?;
    let mut names: Vec<String> = w.names().cloned().collect();
    names.sort();
    let mut tensors = Vec::new();
    let mut reference = ferrotune_model::Weights::new("<ref>", dev.clone());
    for name in &names {
        let t = match name.as_str() {
            n if n.ends_with("layernorm.weight") || n == "model.norm.weight" => {
                w.dense(n, &[cfg.hidden_size])?
            }
            "model.embed_tokens.weight" => w.dense(name, &[cfg.vocab_size, cfg.hidden_size])?,
            n => {
                let (o, i) = if n.contains("q_proj") || n.contains("o_proj") {
                    (cfg.num_heads * cfg.head_dim, cfg.hidden_size)
                } else if n.contains("k_proj") || n.contains("v_proj") {
                    (cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size)
                } else if n.contains("down_proj") {
                    (cfg.hidden_size, cfg.intermediate_size)
                } else {
                    (cfg.intermediate_size, cfg.hidden_size)
                };
                w.dense(n, &[o, i])?
            }
        };
        let (q, stored) = if t.rank() == 1 {
            (QTensor::quantize(&t, GgmlDType::F32)?, t.clone())
        } else {
            let q = QTensor::quantize(&t, GgmlDType::Q8_0)?;
            let exact = q.dequantize(&dev)?;
            let on_disk = if name.contains("q_proj") {
                QTensor::quantize(&permute(&t, cfg.num_heads)?, GgmlDType::Q8_0)?
            } else if name.contains("k_proj") {
                QTensor::quantize(&permute(&t, cfg.num_kv_heads)?, GgmlDType::Q8_0)?
            } else {
                q
            };
            (on_disk, exact)
        };
        reference.insert(
            name.clone(),
            Path::new("<ref>"),
            ferrotune_model::weights::WeightTensor::Dense(stored),
        );
        tensors.push((gguf_name(name), q));
    }
    let tokens: Vec<Value> = (0..cfg.vocab_size)
        .map(|i| {
            Value::String(if i < 3 {
                ["<|endoftext|>", "<|im_start|>", "<|im_end|>"][i].to_string()
            } else {
                format!("t{i}")
            })
        })
        .collect();
    let types: Vec<Value> = (0..cfg.vocab_size).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(cfg.num_layers as u32)),
        ("llama.context_length", Value::U32(cfg.max_position_embeddings as u32)),
        ("llama.embedding_length", Value::U32(cfg.hidden_size as u32)),
        ("llama.feed_forward_length", Value::U32(cfg.intermediate_size as u32)),
        ("llama.attention.head_count", Value::U32(cfg.num_heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(cfg.num_kv_heads as u32)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                    .into(),
            ),
        ),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(Llama::load(&reference, cfg, WeightMode::F32, None)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn converter_permuted_gguf_loads_as_the_hf_layout_model() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    let cfg = ModelConfig::tiny(Family::Llama);
    let reference = write_tiny_gguf(&path, &cfg)?;
    let ids = Tensor::new(&[[3u32, 50, 7, 99, 12]], &Device::Cpu)?;
    let want = reference.forward(&ids, None, None, Logits::All)?;

    let f32_model = load_path(&path, WeightMode::F32, &Device::Cpu)?;
    assert_eq!(f32_model.config().num_kv_heads, 2);
    assert!(f32_model.config().tie_word_embeddings);
    let got = f32_model.model.forward(&ids, None, None, Logits::All)?;
    assert!(max_diff(&got, &want)? < 1e-4, "f32 path differs");

    // The quantized path computes with Q8-quantized activations: close, not equal.
    let q_model = load_path(&path, WeightMode::Quantized, &Device::Cpu)?;
    let got_q = q_model.model.forward(&ids, None, None, Logits::All)?;
    let d = max_diff(&got_q, &want)?;
    // Q8_0 activations cost a few percent of the logit range; a wrong Q/K un-permutation on the
    // quantized rows would cost far more.
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(d < 0.05 * scale, "quantized path differs by {d} (logit scale {scale})");

    let tok = &f32_model.tokenizer;
    assert_eq!(tok.encode("<|im_start|>", false)?, vec![1]);
    assert_eq!(f32_model.eos_ids, vec![2]);
    let chat = f32_model.render_chat(&[ferrotune_model::Message::new("user", "hi")], false)?;
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n");
    Ok(())
}

#[test]
fn truncated_gguf_names_the_file_and_tensor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &ModelConfig::tiny(Family::Llama))?;
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() - 1000])?;
    let err = load_path(&path, WeightMode::F32, &Device::Cpu).expect_err("truncated");
    let msg = err.to_string();
    assert!(msg.contains("tiny.gguf") && msg.contains("tensor `"), "{msg}");
    std::fs::write(&path, b"not a gguf at all")?;
    let msg = load_path(&path, WeightMode::F32, &Device::Cpu).expect_err("garbage").to_string();
    assert!(msg.contains("tiny.gguf") && msg.contains("GGUF header"), "{msg}");
    Ok(())
}

#[test]
fn export_writes_an_hf_directory_that_loads_back_identically() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &ModelConfig::tiny(Family::Llama))?;
    let m = load_path(&path, WeightMode::F32, &Device::Cpu)?;
    let out = dir.path().join("hf");
    ferrotune_model::export::export_hf(&m, &out)?;
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let back = load_path(&out, WeightMode::F32, &Device::Cpu)?;
    let ids = Tensor::new(&[[3u32, 50, 7]], &Device::Cpu)?;
    let a = m.model.forward(&ids, None, None, Logits::All)?;
    let b = back.model.forward(&ids, None, None, Logits::All)?;
    assert_eq!(max_diff(&a, &b)?, 0.0);
    assert_eq!(back.eos_ids, m.eos_ids);
    assert_eq!(
        back.chat_template.as_ref().map(|t| t.source().to_string()),
        m.chat_template.as_ref().map(|t| t.source().to_string())
    );
    // A second export into the same non-empty folder is refused, and leaves it intact.
    assert!(ferrotune_model::export::export_hf(&m, &out).is_err());
    assert!(out.join("model.safetensors").exists());
    Ok(())
}
