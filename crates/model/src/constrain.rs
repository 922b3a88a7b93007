//! Constrained decoding (structured output): a JSON Schema — or "any JSON object" — compiled by
//! llguidance into a grammar over bytes, and at every step the set of tokens that keep the
//! output inside it, applied to the logits before sampling (greedy or sampled alike).
//!
//! llguidance works on a [`TokTrie`]: every token id → the bytes it stands for. We build it from
//! our own tokenizer (the `toktrie_hf_tokenizers` adapter is pinned to another `tokenizers`
//! major): byte-level BPE token strings are mapped back through GPT-2's byte → character
//! alphabet, added tokens that are not special are their text, and special tokens get
//! llguidance's special-token marker so no grammar can produce them. EOS is allowed only where
//! the grammar accepts (llguidance puts the trie's EOS in the mask then; every EOS id of the
//! model follows it).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::Tokenizer;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    /// The schema uses something the grammar compiler does not support, or is not a schema;
    /// `reason` is the compiler's message (it names the keywords).
    #[error("the JSON schema cannot be enforced: {reason}")]
    Unsupported { reason: String },
    /// The tokenizer is not one whose tokens map to bytes (byte-level BPE).
    #[error("structured output needs a byte-level tokenizer: {0}")]
    Tokenizer(String),
    /// The matcher failed mid-generation (a token outside the mask was forced in, or a bug).
    #[error("the output constraint failed: {0}")]
    Failed(String),
}

/// What the output must be (OpenAI's `response_format` other than `text`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JsonFormat {
    /// Any JSON object.
    JsonObject,
    /// A value valid against this JSON Schema.
    JsonSchema { schema: Value },
}

impl JsonFormat {
    /// The schema llguidance compiles: JSON without free whitespace between tokens (compact, as
    /// `json.dumps(separators=(",", ":"))`), so a model cannot spend its budget on blanks; a
    /// schema's own `x-guidance` options win.
    fn grammar(&self) -> TopLevelGrammar {
        let mut schema = match self {
            Self::JsonObject => json!({"type": "object"}),
            Self::JsonSchema { schema } => schema.clone(),
        };
        if let Some(obj) = schema.as_object_mut() {
            obj.entry("x-guidance").or_insert_with(|| json!({"whitespace_flexible": false}));
        }
        TopLevelGrammar::from_json_schema(schema)
    }
}

/// GPT-2's `bytes_to_unicode` inverted: character of a byte-level BPE token string → byte.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    let mut map = std::collections::HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{0}');
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// The bytes of every token id below `vocab` (the model's rows; ids the tokenizer lacks are
/// special placeholders). Specials start with [`TokTrie::SPECIAL_TOKEN_MARKER`].
pub fn token_bytes(tokenizer: &Tokenizer, vocab: usize) -> Result<Vec<Vec<u8>>, ConstrainError> {
    let inner = tokenizer.inner();
    let byte_level = serde_json::to_value(inner.get_decoder())
        .ok()
        .is_some_and(|d| d.to_string().contains("\"ByteLevel\""));
    if !byte_level {
        return Err(ConstrainError::Tokenizer("the decoder is not ByteLevel".into()));
    }
    let added = inner.get_added_tokens_decoder();
    let alphabet = byte_level_alphabet();
    let special = |name: &str| {
        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        b.extend_from_slice(name.as_bytes());
        b
    };
    (0..vocab as u32)
        .map(|id| {
            if let Some(a) = added.get(&id) {
                return Ok(if a.special { special(&a.content) } else { a.content.clone().into_bytes() });
            }
            let Some(name) = inner.id_to_token(id) else { return Ok(special(&format!("<[{id}]>"))) };
            name.chars().map(|c| alphabet.get(&c).copied()).collect::<Option<Vec<u8>>>().ok_or_else(|| {
                ConstrainError::Tokenizer(format!("token {id} ({name:?}) is not in the byte-level alphabet"))
            })
        })
        .collect()
}

/// Our tokenizer as llguidance's tokenizer environment.
struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        // Specials written in the text are not specials here (the trait's contract for
        // `tokenize_bytes`); a tokenizer error cannot happen for plain text, but if it did the
        // greedy trie split is still a valid tokenization.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .inner()
                .encode_fast(text, false)
                .map_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()), |e| e.get_ids().to_vec())
        })
    }
}

/// The compiler for one model's vocabulary, built once (the trie and llguidance's token-class
/// slices take a fraction of a second on a 49k vocabulary) and shared by every request.
pub struct Grammars {
    factory: ParserFactory,
    eos_ids: Arc<[u32]>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Grammars {
    /// `vocab`: the model's logit rows (may exceed the tokenizer's); `eos_ids`: every id that
    /// ends generation (the first is the trie's EOS).
    pub fn new(tokenizer: &Tokenizer, vocab: usize, eos_ids: &[u32]) -> Result<Self, ConstrainError> {
        let vocab = vocab.max(tokenizer.vocab_size());
        let words = token_bytes(tokenizer, vocab)?;
        let &eos =
            eos_ids.first().ok_or_else(|| ConstrainError::Tokenizer("the model has no EOS token".into()))?;
        let info = TokRxInfo::new(vocab as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
        let env: TokEnv = Arc::new(Env { trie, tokenizer: tokenizer.clone() });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstrainError::Tokenizer(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, eos_ids: eos_ids.into() })
    }

    /// Compile `format` into a fresh constraint (one per sequence: it carries the parse state).
    /// Unsupported schema features are [`ConstrainError::Unsupported`] naming them.
    pub fn compile(&self, format: &JsonFormat) -> Result<Constraint, ConstrainError> {
        let parser = self
            .factory
            .create_parser(format.grammar())
            .map_err(|e| ConstrainError::Unsupported { reason: e.to_string() })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstrainError::Unsupported { reason: e });
        }
        Ok(Constraint { matcher, eos_ids: self.eos_ids.clone(), mask: None })
    }

    /// The bytes of token `id` as the trie holds them (specials start with the marker).
    pub fn token(&self, id: u32) -> &[u8] {
        self.factory.tok_env().tok_trie().token(id)
    }
}

/// One sequence's constraint state. Per step: [`Constraint::prepare`] (may run on another
/// thread while the model computes the logits), [`Constraint::apply`], sample,
/// [`Constraint::advance`]. A clone is independent of the original (llguidance's deep clone:
/// no lexer cache is shared, so clones may advance on different threads).
pub struct Constraint {
    matcher: Matcher,
    eos_ids: Arc<[u32]>,
    /// The mask for the current state, once computed.
    mask: Option<SimpleVob>,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone(), eos_ids: self.eos_ids.clone(), mask: self.mask.clone() }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// Compute the mask of the tokens allowed next (once per state).
    pub fn prepare(&mut self) -> Result<(), ConstrainError> {
        if self.mask.is_none() {
            let mut mask =
                self.matcher.compute_mask_or_eos().map_err(|e| ConstrainError::Failed(e.to_string()))?;
            // The trie knows one EOS as "the" EOS; every EOS id the model has is allowed with it.
            let eos_ok = self.eos_ids.iter().any(|&e| mask.is_allowed(e));
            for &e in self.eos_ids.iter() {
                if (e as usize) < mask.len() {
                    mask.set(e as usize, eos_ok);
                }
            }
            self.mask = Some(mask);
        }
        Ok(())
    }

    /// Set every disallowed token's logit to −∞ (rows past the vocabulary too).
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstrainError> {
        self.prepare()?;
        let Some(mask) = self.mask.as_ref() else { return Ok(()) };
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= mask.len() || !mask.get(i) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Whether `id` is allowed in the current state.
    pub fn allows(&mut self, id: u32) -> Result<bool, ConstrainError> {
        self.prepare()?;
        Ok(self.mask.as_ref().is_some_and(|m| (id as usize) < m.len() && m.get(id as usize)))
    }

    /// Move past the chosen token (not EOS: generation ends there).
    pub fn advance(&mut self, id: u32) -> Result<(), ConstrainError> {
        self.mask = None;
        self.matcher.consume_token(id).map_err(|e| ConstrainError::Failed(e.to_string()))
    }

    /// Whether the output so far is a complete value (EOS allowed).
    pub fn accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_tokenizer() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::testing::write_tiny_model(dir.path()).expect("tiny model");
        let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).expect("tokenizer");
        (dir, tok)
    }

    /// Every token's trie bytes, read as text, equal what the tokenizer decodes for it alone;
    /// specials carry the marker and their name.
    fn assert_bytes_match_decode(tok: &Tokenizer) {
        let vocab = tok.vocab_size();
        let words = token_bytes(tok, vocab).expect("token bytes");
        assert_eq!(words.len(), vocab);
        let added = tok.inner().get_added_tokens_decoder();
        for (id, bytes) in words.iter().enumerate() {
            let id = id as u32;
            if added.get(&id).is_some_and(|a| a.special) {
                assert_eq!(bytes[0], TokTrie::SPECIAL_TOKEN_MARKER, "special {id}");
                assert_eq!(&bytes[1..], added[&id].content.as_bytes(), "special {id}");
                continue;
            }
            let decoded = tok.decode(&[id], false).expect("decode");
            assert_eq!(String::from_utf8_lossy(bytes), decoded, "token {id}");
        }
    }

    #[test]
    fn trie_bytes_equal_the_tokenizers_decoding_for_every_token() {
        let (_dir, tok) = tiny_tokenizer();
        assert_bytes_match_decode(&tok);
        // The byte tokens cover all 256 bytes exactly once.
        let words = token_bytes(&tok, tok.vocab_size()).expect("bytes");
        let mut singles: Vec<u8> = words.iter().filter(|w| w.len() == 1).map(|w| w[0]).collect();
        singles.sort_unstable();
        assert_eq!(singles, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn trie_bytes_equal_the_real_models_decoding_for_every_token() {
        let Some(dir) = crate::testing::installed_model("smollm2-135m-instruct") else { return };
        let m = crate::loaded::load_text_path(&dir).expect("load the installed model's tokenizer");
        assert_bytes_match_decode(&m.tokenizer);
    }

    fn grammars(tok: &Tokenizer) -> Grammars {
        let eos = tok.token_to_id("<|im_end|>").expect("eos");
        Grammars::new(tok, tok.vocab_size(), &[eos]).expect("grammars")
    }

    fn id_of(g: &Grammars, tok: &Tokenizer, text: &[u8]) -> u32 {
        (0..tok.vocab_size() as u32).find(|&i| g.token(i) == text).expect("token")
    }

    #[test]
    fn a_tiny_schemas_mask_forbids_a_token_that_breaks_it() {
        let (_dir, tok) = tiny_tokenizer();
        let g = grammars(&tok);
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false});
        let mut c = g.compile(&JsonFormat::JsonSchema { schema }).expect("compiles");
        let eos = tok.token_to_id("<|im_end|>").expect("eos");
        // Nothing but `{` may start it; EOS may not (an empty output is not an object).
        assert!(c.allows(id_of(&g, &tok, b"{")).expect("mask"));
        assert!(!c.allows(id_of(&g, &tok, b"[")).expect("mask"));
        assert!(!c.allows(eos).expect("mask"));
        for b in b"{\"ok\":" {
            assert!(c.allows(id_of(&g, &tok, &[*b])).expect("mask"), "{}", *b as char);
            c.advance(id_of(&g, &tok, &[*b])).expect("advance");
        }
        // A boolean: `t`/`f` yes, a digit or a quote no.
        assert!(c.allows(id_of(&g, &tok, b"t")).expect("mask"));
        assert!(!c.allows(id_of(&g, &tok, b"1")).expect("mask"));
        assert!(!c.allows(id_of(&g, &tok, b"\"")).expect("mask"));
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.apply(&mut logits).expect("apply");
        assert_eq!(logits[id_of(&g, &tok, b"1") as usize], f32::NEG_INFINITY);
        assert_eq!(logits[id_of(&g, &tok, b"f") as usize], 0.0);
        for b in b"true}" {
            c.advance(id_of(&g, &tok, &[*b])).expect("advance");
        }
        assert!(c.accepting());
        assert!(c.allows(eos).expect("mask"), "EOS once the object is closed");
    }

    #[test]
    fn unsupported_schema_keywords_are_named() {
        let (_dir, tok) = tiny_tokenizer();
        let g = grammars(&tok);
        let schema = json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true});
        let e = g.compile(&JsonFormat::JsonSchema { schema }).expect_err("uniqueItems is not enforceable");
        assert!(e.to_string().contains("uniqueItems"), "{e}");
    }
}
