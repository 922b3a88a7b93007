//! Tiny random models for tests (no real weights needed).

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::ModelConfig;
use crate::weights::{WeightTensor, Weights};

/// One standard-normal sample (Box–Muller); `rand_distr` is not worth a dependency for tests.
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Random HF-named weights for `cfg` (normal, std 0.1 for matrices; norms around 1).
pub fn random_weights(cfg: &ModelConfig, device: &Device) -> candle_core::Result<Weights> {
    // Seeded, so a test sees the same weights on every machine and every run.
    let mut rng = StdRng::seed_from_u64(0x5eed);
    fill_weights(cfg, device, |shape| {
        let n: usize = shape.iter().product();
        let offset = if shape.len() == 1 { 1.0 } else { 0.0 };
        let values: Vec<f32> = (0..n).map(|_| offset + 0.1 * standard_normal(&mut rng)).collect();
        Tensor::from_vec(values, shape, device)
    })
}

/// Random weights initialised as transformers initialises a fresh `LlamaForCausalLM`
/// (matrices normal with std 0.02, norms one), generated on `device` (its own RNG, seeded; the
/// host RNG on the CPU): benchmarks against PEFT start from the same distribution, and a 1B
/// model is generated in a moment on a GPU.
pub fn hf_init_random_weights(cfg: &ModelConfig, device: &Device, seed: u64) -> candle_core::Result<Weights> {
    if device.is_cpu() {
        let mut rng = StdRng::seed_from_u64(seed);
        return fill_weights(cfg, device, |shape| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| 0.02 * standard_normal(&mut rng)).collect()
            };
            Tensor::from_vec(v, shape, device)
        });
    }
    device.set_seed(seed)?;
    fill_weights(cfg, device, |shape| {
        if shape.len() == 1 {
            Tensor::ones(shape, candle_core::DType::F32, device)
        } else {
            Tensor::randn(0f32, 0.02, shape, device)
        }
    })
}

/// Every tensor a LLaMA of shape `cfg` needs, each made by `make(shape)`.
fn fill_weights(
    cfg: &ModelConfig,
    device: &Device,
    mut make: impl FnMut(&[usize]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Weights> {
    let mut w = Weights::new("<random>", device.clone());
    let here = std::path::Path::new("<random>");
    let mut put = |name: String, shape: &[usize]| -> candle_core::Result<()> {
        w.insert(name, here, WeightTensor::Dense(make(shape)?));
        Ok(())
    };
    let (h, kv, d, hid, ffn) =
        (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
    put("model.embed_tokens.weight".into(), &[cfg.vocab_size, hid])?;
    put("model.norm.weight".into(), &[hid])?;
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), &[cfg.vocab_size, hid])?;
    }
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        for (n, o, inp) in
            [("q_proj", h * d, hid), ("k_proj", kv * d, hid), ("v_proj", kv * d, hid), ("o_proj", hid, h * d)]
        {
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

/// GPT-2's byte → printable-character map (`bytes_to_unicode`), so a byte-level BPE vocabulary
/// without merges can tokenize any text.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['?'; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    out
}

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A tiny random LLaMA with a byte-level tokenizer (3 specials + 256 bytes, ChatML template,
/// EOS `<|im_end|>`), written as an HF directory: a real model for end-to-end tests of
/// training and serving, in milliseconds.
pub fn write_tiny_model(dir: &std::path::Path) -> crate::Result<()> {
    let device = Device::Cpu;
    let mut cfg = ModelConfig::tiny(crate::Family::Llama);
    cfg.vocab_size = 259;
    cfg.max_position_embeddings = 512;
    cfg.bos_token_id = Some(1);
    cfg.eos_token_ids = vec![2];
    let w = random_weights(&cfg, &device)?;
    let model = crate::Llama::load(&w, &cfg, crate::WeightMode::F32, None)?;
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend(byte_chars().into_iter().map(String::from));
    let mut types = vec![3i64; 3];
    types.extend(std::iter::repeat_n(1, 256));
    let vocab = crate::tokenizer::GgufVocab {
        model: "gpt2",
        pre: "gpt2",
        tokens,
        token_types: types,
        merges: vec![],
    };
    let tokenizer = crate::Tokenizer::from_json(&crate::tokenizer::tokenizer_json_from_gguf(&vocab)?)?
        .with_special(Some("<|im_start|>".into()), Some("<|im_end|>".into()), false);
    let m = crate::LoadedModel {
        model,
        tokenizer,
        chat_template: Some(std::sync::Arc::new(crate::ChatTemplate::new(
            CHATML,
            "<|im_start|>",
            "<|im_end|>",
        )?)),
        eos_ids: vec![2],
        path: dir.to_path_buf(),
        format: crate::Format::HfDir,
        files: vec![],
    };
    crate::export::export_hf(&m, dir)
}

/// Bias the head so `token` wins at every position by a wide margin (+50 on its logit): tests of
/// what happens when the next token is EOS, on a random model that would rarely pick it.
pub fn make_token_dominant(model: &mut crate::Llama, token: u32) -> candle_core::Result<()> {
    let vocab = model.config().vocab_size;
    let mut bias = vec![0f32; vocab];
    if let Some(b) = bias.get_mut(token as usize) {
        *b = 50.0;
    }
    let bias = Tensor::from_vec(bias, vocab, model.device())?.to_dtype(model.dtype())?;
    model.lm_head.set_bias(Some(bias));
    Ok(())
}

/// Set to `1` (CI's `.ci/run` does) and a test whose real model is not installed fails instead of
/// printing `SKIPPED` and passing: CI's count of passed tests then means they ran.
pub const REQUIRE_MODELS: &str = "FERROTUNE_REQUIRE_MODELS";

/// As [`REQUIRE_MODELS`], for the `redis-server` binary the Redis cache test starts.
pub const REQUIRE_REDIS: &str = "FERROTUNE_REQUIRE_REDIS";

/// Whether the environment variable `var` asks for it (set, and neither empty nor `0`).
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A test cannot run because something it needs is `missing`: prints `SKIPPED: ...` so that the
/// caller can return — or, when the environment variable `var` is set, fails the test (panics).
pub fn skip_or_fail(var: &str, missing: &str) {
    skip_or_fail_when(required(var), var, missing);
}

fn skip_or_fail_when(required: bool, var: &str, missing: &str) {
    assert!(!required, "{missing}, and {var}=1 requires it: this test must run, not skip");
    eprintln!("SKIPPED: {missing} (with {var}=1 this is a failure)");
}

/// The entry path of the installed model `name` in `$FERROTUNE_HOME`, for tests that need real
/// weights. Only a model that is not installed at all (no `models/<name>` folder: installs are
/// renamed into place whole) may skip, and not under `FERROTUNE_REQUIRE_MODELS=1`; an installed
/// model that cannot be read — manifest missing or corrupt, entry absent — fails the test
/// everywhere. (Loading the weights themselves is the caller's, with `expect`.)
pub fn installed_model(name: &str) -> Option<std::path::PathBuf> {
    installed_model_in(&crate::store::home(), name, required(REQUIRE_MODELS))
}

/// [`installed_model`] under `home`, `require` standing for `FERROTUNE_REQUIRE_MODELS=1`.
pub fn installed_model_in(home: &std::path::Path, name: &str, require: bool) -> Option<std::path::PathBuf> {
    let store = crate::store::Store::open(home);
    let dir = store.root().join(name);
    if !dir.exists() {
        let missing = format!("{name} is not installed in {} (scripts/install-models.sh)", home.display());
        skip_or_fail_when(require, REQUIRE_MODELS, &missing);
        return None;
    }
    let why = match store.path_of(name) {
        Ok(Some(p)) if p.exists() => return Some(p),
        Ok(Some(p)) => format!("its entry {} is missing", p.display()),
        Ok(None) => "it has no manifest.json".into(),
        Err(e) => e.to_string(),
    };
    panic!("{name} is installed in {} but broken: {why} (remove the folder and reinstall it)", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
        let e = std::panic::catch_unwind(f).err()?;
        Some(
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        )
    }

    #[test]
    fn a_model_not_installed_skips_locally_and_fails_when_required() {
        let home = tempfile::tempdir().expect("tmp");
        assert_eq!(installed_model_in(home.path(), "m", false), None);
        let msg = panic_message(|| {
            installed_model_in(home.path(), "m", true);
        })
        .expect("required: a failure");
        assert!(msg.contains("m is not installed") && msg.contains(REQUIRE_MODELS), "{msg}");
    }

    #[test]
    fn an_installed_but_broken_model_fails_even_when_not_required() {
        // Regression: a corrupt manifest counted as "not installed" and the tests passed, skipped.
        let home = tempfile::tempdir().expect("tmp");
        let dir = home.path().join("models/m");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let no_manifest = panic_message(|| {
            installed_model_in(home.path(), "m", false);
        });
        assert!(no_manifest.is_some_and(|m| m.contains("no manifest.json")));
        std::fs::write(dir.join("manifest.json"), "{ not json").expect("write");
        let corrupt = panic_message(|| {
            installed_model_in(home.path(), "m", false);
        });
        assert!(corrupt.is_some_and(|m| m.contains("broken") && m.contains("manifest")));
        let manifest = serde_json::json!({"name": "m", "kind": "llm", "package": "p", "version": "1",
            "wheel_sha256": "", "entry": "model.gguf", "files": []});
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("write");
        let no_entry = panic_message(|| {
            installed_model_in(home.path(), "m", false);
        });
        assert!(no_entry.is_some_and(|m| m.contains("model.gguf") && m.contains("missing")));
        std::fs::write(dir.join("model.gguf"), b"GGUF").expect("write");
        assert_eq!(installed_model_in(home.path(), "m", true), Some(dir.join("model.gguf")));
    }

    #[test]
    fn skip_or_fail_fails_only_when_required() {
        skip_or_fail_when(false, REQUIRE_REDIS, "redis-server is not installed");
        let msg = panic_message(|| skip_or_fail_when(true, REQUIRE_REDIS, "redis-server is not installed"));
        assert!(msg.is_some_and(|m| m.contains("redis-server") && m.contains(REQUIRE_REDIS)));
    }
}
