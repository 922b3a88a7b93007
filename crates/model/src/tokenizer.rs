//! Tokenizer: the HF `tokenizers` crate, loaded from `tokenizer.json` or built from a GGUF's own
//! vocabulary, merges and pre-tokenizer metadata (as llama.cpp's `llama-vocab.cpp` reads them).

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{ModelError, Result};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Prepend BOS to a plain prompt (`tokenizer.ggml.add_bos_token`, `add_bos_token`).
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos_token)
            .field("eos", &self.eos_token)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let invalid = |reason: String| ModelError::InvalidFile {
            path: path.to_path_buf(),
            what: "tokenizer.json".into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        // JSON first, the tokenizer from the tree: tokenizers' own reader of `decoder` panics on
        // malformed JSON inside it (`expect("Helper")`; found by fuzzing, fuzz/fuzz_targets/hf_dir.rs),
        // while from a parsed tree it can only fail with an error.
        let json: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { inner, bos_token: None, eos_token: None, add_bos: false })
    }

    pub fn from_json(json: &Value) -> Result<Self> {
        let inner: tokenizers::Tokenizer = serde_json::from_value(json.clone()).map_err(tok_err)?;
        Ok(Self { inner, bos_token: None, eos_token: None, add_bos: false })
    }

    pub fn with_special(mut self, bos: Option<String>, eos: Option<String>, add_bos: bool) -> Self {
        self.bos_token = bos;
        self.eos_token = eos;
        self.add_bos = add_bos;
        self
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encode text. Special tokens written in the text (`<|im_start|>`) become their ids.
    /// `add_bos` prepends BOS when the model asks for it (plain prompts; a rendered chat
    /// template already carries its own specials and is encoded with `false`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, add_bos).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_bos
            && self.add_bos
            && let Some(bos) = self.bos_token.as_deref().and_then(|b| self.token_to_id(b))
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// Write `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(tok_err)
    }
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` value, in `tokenizer.json` form.
/// Regexes are llama.cpp's (`llama-vocab.cpp`), which mirror the original HF tokenizers.
fn pre_tokenizer(pre: &str) -> Option<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        // GPT-2's regex after splitting every digit on its own (SmolLM, StarCoder).
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        _ => return None,
    })
}

/// What a GGUF says about its tokenizer (`tokenizer.ggml.*`).
pub struct GgufVocab<'a> {
    pub model: &'a str,
    pub pre: &'a str,
    pub tokens: Vec<String>,
    pub token_types: Vec<i64>,
    pub merges: Vec<String>,
}

/// Build a `tokenizer.json` equivalent to the model's original one from GGUF metadata.
pub fn tokenizer_json_from_gguf(v: &GgufVocab<'_>) -> Result<Value> {
    if v.model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model `{}` is not supported (only byte-level BPE, `gpt2`); load the HF directory instead",
            v.model
        )));
    }
    let pre = pre_tokenizer(v.pre).ok_or_else(|| {
        ModelError::Tokenizer(format!(
            "GGUF pre-tokenizer `{}` is not supported (supported: smollm, starcoder, gpt2, llama-bpe, qwen2)",
            v.pre
        ))
    })?;
    let mut vocab = serde_json::Map::with_capacity(v.tokens.len());
    let mut added = Vec::new();
    for (id, tok) in v.tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = v.token_types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": v.merges,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary over a few characters, as a GGUF would list it.
    fn tiny_vocab() -> GgufVocab<'static> {
        let mut tokens: Vec<String> =
            vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        tokens.extend(["a", "b", "c", "1", "2", "Ġ", "Ġa", "ab"].map(String::from));
        let mut token_types = vec![3, 3, 3];
        token_types.extend([1; 8]);
        GgufVocab {
            model: "gpt2",
            pre: "smollm",
            tokens,
            token_types,
            merges: vec!["Ġ a".into(), "a b".into()],
        }
    }

    #[test]
    fn gguf_vocab_builds_a_tokenizer_with_specials_and_split_digits() {
        let tok =
            Tokenizer::from_json(&tokenizer_json_from_gguf(&tiny_vocab()).expect("json")).expect("tokenizer");
        let ids = tok.encode("<|im_start|>ab a12<|im_end|>", false).expect("encode");
        // ab merges, " a" merges, digits split one by one, specials are single ids.
        assert_eq!(ids, vec![1, 10, 9, 6, 7, 2]);
        assert_eq!(tok.decode(&ids, false).expect("decode"), "<|im_start|>ab a12<|im_end|>");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "ab a12");
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused_by_name() {
        let mut v = tiny_vocab();
        v.pre = "mystery";
        let err = tokenizer_json_from_gguf(&v).expect_err("must fail");
        assert!(err.to_string().contains("mystery"));
    }
}
