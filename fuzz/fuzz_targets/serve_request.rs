//! Request bodies of arbitrary bytes through the server's own parsing, by the first byte: chat
//! (unsupported fields, messages, `response_format`, whose schema is compiled as the engine
//! compiles it), completions (prompts, `response_format`), embeddings (input), tokenize
//! (prompt or messages) and detokenize.
#![no_main]
#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use ferrotune_model::constrain::Grammars;
use ferrotune_serve::json::parse;
use ferrotune_serve::openai::{
    ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, Endpoint, PromptInput,
    TokenizeRequest, parse_embedding_input, parse_prompts, refuse_unsupported, response_format, to_messages,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const VOCAB: usize = 259;

/// The tiny model's grammars (its byte-level vocabulary can spell any JSON).
fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let dir = common::scratch().join("tiny");
        ferrotune_model::testing::write_tiny_model(&dir).expect("tiny model");
        let text = ferrotune_model::loaded::load_text_path(&dir).expect("tiny tokenizer");
        Grammars::new(&text.tokenizer, VOCAB, &text.eos_ids).expect("grammars")
    })
}

fn format(v: Option<&Value>) {
    if let Ok(Some(f)) = response_format(v)
        && let Ok(mut c) = grammars().compile(&f)
    {
        let _ = c.prepare();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, body)) = common::mode(data) else { return };
    match mode % 5 {
        0 => {
            let Ok(v) = parse::<Value>(body) else { return };
            if refuse_unsupported(&v, Endpoint::Chat).is_err() {
                return;
            }
            let Ok(req) = parse::<ChatRequest>(body) else { return };
            if let Ok(msgs) = to_messages(&req.messages) {
                assert_eq!(msgs.len(), req.messages.len(), "to_messages dropped or added messages");
            }
            format(req.response_format.as_ref());
        }
        1 => {
            let Ok(v) = parse::<Value>(body) else { return };
            if refuse_unsupported(&v, Endpoint::Completion).is_err() {
                return;
            }
            let Ok(req) = parse::<CompletionRequest>(body) else { return };
            if let Ok(prompts) = parse_prompts(&req.prompt, VOCAB) {
                for p in prompts {
                    if let PromptInput::Tokens(ids) = p {
                        assert!(
                            ids.iter().all(|&id| (id as usize) < VOCAB),
                            "a prompt id past the vocabulary"
                        );
                    }
                }
            }
            format(req.response_format.as_ref());
        }
        2 => {
            let Ok(req) = parse::<EmbeddingRequest>(body) else { return };
            let _ = parse_embedding_input(&req.input);
        }
        3 => {
            let Ok(req) = parse::<TokenizeRequest>(body) else { return };
            if let Some(m) = &req.messages {
                let _ = to_messages(m);
            }
        }
        _ => {
            let _ = parse::<DetokenizeRequest>(body);
        }
    }
});
