//! Model shapes the plan knows without their weights: the published `config.json` values of
//! common LLaMA-family bases, so a user can plan a run on a model they have not downloaded.

use ferrotune_model::{Family, ModelConfig};

use crate::error::{PlanError, Result};

/// (name, family, hidden, ffn, layers, heads, kv heads, head dim, vocab, tied, attention bias).
type Row = (&'static str, Family, usize, usize, usize, usize, usize, usize, usize, bool, bool);

const SHAPES: &[Row] = &[
    ("smollm2-135m", Family::Llama, 576, 1536, 30, 9, 3, 64, 49152, true, false),
    ("smollm2-360m", Family::Llama, 960, 2560, 32, 15, 5, 64, 49152, true, false),
    ("smollm2-1.7b", Family::Llama, 2048, 8192, 24, 32, 32, 64, 49152, true, false),
    ("qwen2.5-0.5b", Family::Qwen2, 896, 4864, 24, 14, 2, 64, 151_936, true, true),
    ("llama-3.2-1b", Family::Llama, 2048, 8192, 16, 32, 8, 64, 128_256, true, false),
    ("llama-3.2-3b", Family::Llama, 3072, 8192, 28, 24, 8, 128, 128_256, true, false),
    ("qwen2.5-7b", Family::Qwen2, 3584, 18944, 28, 28, 4, 128, 152_064, false, true),
    ("mistral-7b", Family::Mistral, 4096, 14336, 32, 32, 8, 128, 32_000, false, false),
    ("llama-3.1-8b", Family::Llama, 4096, 14336, 32, 32, 8, 128, 128_256, false, false),
];

/// Other spellings: the benchmark's shape names and the installed default model.
const ALIASES: &[(&str, &str)] =
    &[("llama-1b", "llama-3.2-1b"), ("llama-8b", "llama-3.1-8b"), ("smollm2-135m-instruct", "smollm2-135m")];

pub fn names() -> Vec<&'static str> {
    SHAPES.iter().map(|r| r.0).collect()
}

/// The canonical shape name of `name`, if it is one.
pub fn canonical(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    let n = ALIASES.iter().find(|a| a.0 == n).map_or(n.as_str(), |a| a.1).to_string();
    SHAPES.iter().find(|r| r.0 == n).map(|r| r.0)
}

/// The configuration of a known shape.
pub fn lookup(name: &str) -> Result<ModelConfig> {
    let Some(canon) = canonical(name) else {
        return Err(PlanError::Unknown { what: "model shape", name: name.into(), known: names().join(", ") });
    };
    let &(_, family, hidden, ffn, layers, heads, kv, head_dim, vocab, tied, bias) =
        SHAPES.iter().find(|r| r.0 == canon).ok_or_else(|| PlanError::Unknown {
            what: "model shape",
            name: name.into(),
            known: names().join(", "),
        })?;
    Ok(ModelConfig {
        family,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: tied,
        attention_bias: bias,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![0],
        pad_token_id: None,
    })
}

/// The shape nearest to `cfg` by parameter count among `candidates` (names).
pub fn nearest<'a>(cfg: &ModelConfig, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let n = cfg.parameter_count() as f64;
    candidates
        .into_iter()
        .filter_map(|c| Some((c, lookup(c).ok()?.parameter_count() as f64)))
        .min_by(|a, b| (a.1 / n).ln().abs().total_cmp(&(b.1 / n).ln().abs()))
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        // Published totals: SmolLM2-135M 134.5M, Llama-3.2-1B 1.24B, Llama-3.1-8B 8.03B, Qwen2.5-7B 7.62B, Mistral-7B 7.24B.
        for (name, published) in [
            ("smollm2-135m", 134.5e6),
            ("llama-3.2-1b", 1.236e9),
            ("llama-3.1-8b", 8.03e9),
            ("qwen2.5-7b", 7.62e9),
            ("mistral-7b", 7.24e9),
            ("smollm2-360m", 362e6),
            ("llama-3.2-3b", 3.21e9),
        ] {
            let n = lookup(name).expect("a known shape").parameter_count() as f64;
            assert!((n / published - 1.0).abs() < 0.01, "{name}: {n} vs {published}");
        }
    }

    #[test]
    fn aliases_and_case_resolve_and_unknown_names_list_the_known_ones() {
        assert_eq!(canonical("LLaMA-1B"), Some("llama-3.2-1b"));
        assert_eq!(canonical("smollm2-135m-instruct"), Some("smollm2-135m"));
        let e = lookup("gpt-5").expect_err("an unknown shape").to_string();
        assert!(e.contains("gpt-5") && e.contains("llama-3.1-8b"), "{e}");
    }
}
