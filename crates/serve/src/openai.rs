//! OpenAI request bodies (as the official clients, vLLM and lm-evaluation-harness send them) and
//! their validation into what the engine needs. Unknown fields are ignored, as OpenAI and vLLM
//! do; fields we accept but cannot honour are refused when set to a non-default value.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Parameters shared by chat and completions, read from the same body as the request itself.
#[derive(Debug, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM extension; 0 or -1 = off.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// vLLM extension (HF's CTRL-style penalty); 1 = off.
    pub repetition_penalty: Option<f64>,
    /// vLLM extension.
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, a list of `{"type":"text","text":…}` parts, or null (assistant tool turns).
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of token-id lists.
    pub prompt: Value,
    pub echo: Option<bool>,
    /// Top alternatives per token (legacy format); 0 = only the chosen token's.
    pub logprobs: Option<u32>,
    pub best_of: Option<u32>,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoadAdapterRequest {
    pub lora_name: String,
    pub lora_path: String,
}

#[derive(Debug, Deserialize)]
pub struct UnloadAdapterRequest {
    pub lora_name: String,
    /// vLLM accepts (and ignores) it here too.
    #[serde(default)]
    #[allow(dead_code)]
    pub lora_int_id: Option<i64>,
}

/// Top alternatives per position at most (vLLM's default cap).
pub const MAX_LOGPROBS: u32 = 20;

impl ChatMessage {
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::field(format!("messages[{i}].content[{j}].text"), "a text part needs `text`"));
                        }
                        (other, _) => {
                            return Err(ApiError::field(
                                format!("messages[{i}].content[{j}].type"),
                                format!("content parts of type `{other}` are not supported (text only)"),
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Prompts of a completion request: text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Read `prompt` (string | [string] | [int] | [[int]]), naming the offending element on error.
pub fn parse_prompts(v: &Value, vocab: usize) -> Result<Vec<PromptInput>, ApiError> {
    let bad = |param: String, msg: &str| Err(ApiError::field(param, msg.to_string()));
    let ids = |arr: &[Value], param: &str| -> Result<Vec<u32>, ApiError> {
        if arr.is_empty() {
            return Err(ApiError::field(param, "empty token list"));
        }
        arr.iter()
            .enumerate()
            .map(|(i, x)| match x.as_u64() {
                Some(id) if (id as usize) < vocab => Ok(id as u32),
                _ => Err(ApiError::field(format!("{param}[{i}]"), format!("token ids must be integers in 0..{vocab}"))),
            })
            .collect()
    };
    match v {
        Value::String(s) => Ok(vec![PromptInput::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => bad("prompt".into(), "empty prompt list"),
        Value::Array(items) => match &items[0] {
            Value::Number(_) => Ok(vec![PromptInput::Tokens(ids(items, "prompt")?)]),
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(PromptInput::Text(s.clone())),
                    _ => Err(ApiError::field(format!("prompt[{i}]"), "expected a string like the other prompts")),
                })
                .collect(),
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::Array(a) => Ok(PromptInput::Tokens(ids(a, &format!("prompt[{i}]"))?)),
                    _ => Err(ApiError::field(format!("prompt[{i}]"), "expected a list of token ids like the other prompts")),
                })
                .collect(),
            _ => bad("prompt[0]".into(), "expected a string, a token id or a list of token ids"),
        },
        _ => bad("prompt".into(), "expected a string, a list of strings, a list of token ids or a list of such lists"),
    }
}

/// Embedding inputs: a string or a list of strings (token ids belong to another tokenizer).
pub fn parse_embedding_input(v: &Value) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::field(format!("input[{i}]"), "expected a string (token-id input is not supported)")
                })
            })
            .collect(),
        _ => Err(ApiError::field("input", "expected a string or a non-empty list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(r: Result<Vec<PromptInput>, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prompts_in_every_openai_shape() {
        assert_eq!(parse_prompts(&json!("hi"), 10).ok(), Some(vec![PromptInput::Text("hi".into())]));
        assert_eq!(parse_prompts(&json!(["a", "b"]), 10).map(|p| p.len()).ok(), Some(2));
        assert_eq!(parse_prompts(&json!([1, 2]), 10).ok(), Some(vec![PromptInput::Tokens(vec![1, 2])]));
        assert_eq!(parse_prompts(&json!([[1], [2, 3]]), 10).map(|p| p.len()).ok(), Some(2));
    }

    #[test]
    fn bad_prompts_name_the_element() {
        assert_eq!(param_of(parse_prompts(&json!([1, 99]), 10)), "prompt[1]");
        assert_eq!(param_of(parse_prompts(&json!([[1], [-1]]), 10)), "prompt[1][0]");
        assert_eq!(param_of(parse_prompts(&json!(["a", 1]), 10)), "prompt[1]");
        assert_eq!(param_of(parse_prompts(&json!(5), 10)), "prompt");
        assert_eq!(param_of(parse_prompts(&json!([]), 10)), "prompt");
        assert_eq!(param_of(parse_prompts(&json!([[]]), 10)), "prompt[0]");
    }

    #[test]
    fn chat_content_parts_are_joined() {
        let m: ChatMessage =
            serde_json::from_value(json!({"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}))
                .expect("parse");
        assert_eq!(m.text(0).expect("text"), "ab");
        let img: ChatMessage =
            serde_json::from_value(json!({"role":"user","content":[{"type":"image_url"}]})).expect("parse");
        assert!(matches!(img.text(3), Err(ApiError::InvalidField { param, .. }) if param == "messages[3].content[0].type"));
    }
}
