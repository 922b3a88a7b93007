//! OpenAI request bodies (as the official clients, vLLM and lm-evaluation-harness send them) and
//! their validation into what the engine needs. Fields that are not OpenAI's are ignored, as
//! OpenAI and vLLM do (clients send extras); OpenAI fields we cannot honour are refused with a
//! 400 naming them unless absent, null or at their no-op value ([`refuse_unsupported`]).

use ferrotune_model::constrain::JsonFormat;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi as schema;

/// One stop string or up to 16 of them, each 1 to 256 characters.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl utoipa::PartialSchema for Stop {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::stop().into()
    }
}

impl ToSchema for Stop {}

/// Parameters shared by chat and completions, read from the same body as the request itself.
///
/// The bounds in the schema are the ones [`crate::generation::GenParams::from_fields`] checks;
/// `max_tokens` is also held to the model's context (prompt + `max_tokens`), which a schema cannot
/// say.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// New tokens at most; default: the rest of the context (or the server's
    /// `default_max_tokens`). Prompt + `max_tokens` must fit the model's context.
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// vLLM extension; 0 or -1 = off.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// Choices per prompt: 1 to the server's `max_n` (16 by default).
    #[schema(minimum = 1)]
    pub n: Option<u32>,
    pub user: Option<String>,
    /// Answer as server-sent events (`text/event-stream`), one chunk per `data:` line.
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Refused (400) unless 0: use `repetition_penalty`.
    #[schema(minimum = 0, maximum = 0)]
    pub presence_penalty: Option<f64>,
    /// Refused (400) unless 0: use `repetition_penalty`.
    #[schema(minimum = 0, maximum = 0)]
    pub frequency_penalty: Option<f64>,
    /// vLLM extension (HF's CTRL-style penalty); 1 = off.
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f64>,
    /// vLLM extension.
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Chat's own fields; the body is these, [`SamplingFields`] and the refused OpenAI fields
/// ([`ChatCompletionBody`]).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The base, an adapter, or a registry reference (`support@canary`); see `GET /v1/models`.
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// The newer name of `max_tokens` (wins over it); at least 1.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    /// Needs a key allowed to see logprobs (403 otherwise).
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0 to 20; above 0 it needs `logprobs: true`.
    #[schema(maximum = 20)]
    pub top_logprobs: Option<u32>,
    /// Structured output ([`response_format`]).
    #[schema(schema_with = crate::openapi::response_format)]
    pub response_format: Option<Value>,
    /// Our extension: the knowledge base to ground the answer in
    /// ([`crate::grounding::Knowledge::pick`] checks it).
    #[schema(value_type = Option<String>, min_length = 1)]
    pub knowledge_base: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, … (any non-empty role the model's template takes).
    #[schema(min_length = 1)]
    pub role: String,
    /// A string, a list of `{"type":"text","text":…}` parts, or null (assistant tool turns).
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's tool calls: refused when non-empty (the chat template would drop them).
    #[serde(default)]
    #[schema(schema_with = crate::openapi::refused_list)]
    pub tool_calls: Option<Value>,
    /// The deprecated single-call form of `tool_calls`; refused likewise.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::refused_list)]
    pub function_call: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// Only text parts: any other `type` is refused (400).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::text_part_type)]
    pub kind: String,
    /// Required for a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// The legacy completion's own fields; the body is these, [`SamplingFields`] and `logit_bias`
/// ([`CompletionBody`]).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of token-id lists.
    #[schema(schema_with = crate::openapi::prompt)]
    pub prompt: Value,
    /// Needs a key allowed to see logprobs (403 otherwise).
    pub echo: Option<bool>,
    /// Top alternatives per token (legacy format), 0 to 20; 0 = only the chosen token's. Needs a
    /// key allowed to see logprobs (403 otherwise).
    #[schema(maximum = 20)]
    pub logprobs: Option<u32>,
    /// Refused (400) unless it equals `n`.
    pub best_of: Option<u32>,
    /// Refused (400) unless empty.
    #[schema(max_length = 0)]
    pub suffix: Option<String>,
    /// Refused (400) unless null or empty ([`refuse_unsupported`]).
    #[schema(schema_with = crate::openapi::refused_map)]
    pub logit_bias: Option<Value>,
    /// Structured output ([`response_format`]; vLLM takes it here too).
    #[schema(schema_with = crate::openapi::response_format)]
    pub response_format: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// The embedder's name, as `GET /v1/models` lists it.
    pub model: String,
    /// A string or 1 to 2048 non-empty strings (token ids are refused).
    #[schema(schema_with = crate::openapi::embedding_input)]
    pub input: Value,
    /// `float` (default) or `base64`.
    #[schema(schema_with = crate::openapi::encoding_format)]
    pub encoding_format: Option<String>,
    /// Refused (400) unless the embedder's own size.
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

/// vLLM's body (admin keys only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoadAdapterRequest {
    /// What clients then put in `model` ([`crate::routes::models::check_adapter_name`]).
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    pub lora_name: String,
    /// A PEFT adapter folder inside one of the server's `adapter_roots`.
    pub lora_path: String,
}

/// vLLM's body (admin keys only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct UnloadAdapterRequest {
    pub lora_name: String,
    /// vLLM accepts (and ignores) it here too.
    #[serde(default)]
    #[allow(dead_code)]
    pub lora_int_id: Option<i64>,
}

/// vLLM's `/tokenize` body: its `TokenizeCompletionRequest` (`prompt`) or `TokenizeChatRequest`
/// (`messages`), told apart by which of the two is given.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// Optional, as in vLLM; the base and its adapters share one tokenizer.
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    /// Default: true for `prompt` (BOS if the model wants one), false for `messages` (the
    /// chat template writes its own).
    pub add_special_tokens: Option<bool>,
    /// Default true (false when `continue_final_message`).
    pub add_generation_prompt: Option<bool>,
    /// Leave the last message open for the model to continue (not with `add_generation_prompt`).
    pub continue_final_message: Option<bool>,
    pub return_token_strs: Option<bool>,
    /// vLLM options we do not offer; refused (400) unless null / empty.
    #[schema(max_length = 0)]
    pub chat_template: Option<String>,
    #[schema(schema_with = crate::openapi::refused_map)]
    pub chat_template_kwargs: Option<Value>,
    #[schema(schema_with = crate::openapi::refused_list)]
    pub tools: Option<Value>,
}

/// vLLM's `/detokenize` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    /// Token ids below the vocabulary size (checked one by one, so a bad one is named as
    /// `tokens[i]`).
    #[schema(value_type = Vec<u32>)]
    pub tokens: Value,
}

/// Top alternatives per position at most (vLLM's default cap).
pub const MAX_LOGPROBS: u32 = 20;

/// An OpenAI request field this server cannot honour: accepted only when null or at a value
/// that changes nothing (`noop`), refused otherwise with `why`.
pub(crate) struct Unsupported {
    pub field: &'static str,
    noop: fn(&Value) -> bool,
    /// The values `noop` accepts, as a schema for the OpenAPI document (a unit test holds the
    /// two to each other), and in words.
    pub accepts: fn() -> utoipa::openapi::schema::Schema,
    pub accepted: &'static str,
    pub why: &'static str,
}

pub(crate) fn empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(serde_json::Map::is_empty)
}

pub(crate) fn empty_array(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

/// Chat Completions fields (OpenAI's `CreateChatCompletionRequest`) that would change the answer
/// or the service and that we cannot honour. Silently dropping them returns something the client
/// did not ask for (free text where `response_format` asked for JSON, no tool call where `tools`
/// offered one). Fields that only tag or route a request and leave the answer as it is
/// (`user`, `metadata`, `safety_identifier`, `prompt_cache_key`, `prediction` — a latency hint)
/// are accepted and ignored.
pub(crate) const CHAT_UNSUPPORTED: &[Unsupported] = &[
    LOGIT_BIAS,
    Unsupported {
        field: "tools",
        noop: empty_array,
        accepts: schema::empty_array,
        accepted: "[]",
        why: "tool calling is not supported",
    },
    Unsupported {
        field: "tool_choice",
        noop: |v| matches!(v.as_str(), Some("none" | "auto")),
        accepts: || schema::one_of_values(&["none".into(), "auto".into()]),
        accepted: "\"none\" or \"auto\"",
        why: "tool calling is not supported",
    },
    Unsupported {
        field: "functions",
        noop: empty_array,
        accepts: schema::empty_array,
        accepted: "[]",
        why: "function calling is not supported",
    },
    Unsupported {
        field: "function_call",
        noop: |v| matches!(v.as_str(), Some("none" | "auto")),
        accepts: || schema::one_of_values(&["none".into(), "auto".into()]),
        accepted: "\"none\" or \"auto\"",
        why: "function calling is not supported",
    },
    Unsupported {
        field: "parallel_tool_calls",
        noop: |v| v.as_bool() == Some(true),
        accepts: || schema::one_of_values(&[true.into()]),
        accepted: "true",
        why: "tool calling is not supported",
    },
    Unsupported {
        field: "audio",
        noop: |_| false,
        accepts: schema::nothing,
        accepted: "nothing else",
        why: "audio output is not supported",
    },
    Unsupported {
        field: "modalities",
        noop: |v| v.as_array().is_some_and(|a| a.iter().all(|m| m.as_str() == Some("text"))),
        accepts: schema::text_modalities,
        accepted: "a list of \"text\" only",
        why: "only the text modality is supported",
    },
    Unsupported {
        field: "reasoning_effort",
        noop: |v| v.as_str() == Some("none"),
        accepts: || schema::one_of_values(&["none".into()]),
        accepted: "\"none\"",
        why: "this model does not reason; leave reasoning_effort out",
    },
    Unsupported {
        field: "verbosity",
        noop: |v| v.as_str() == Some("medium"),
        accepts: || schema::one_of_values(&["medium".into()]),
        accepted: "\"medium\"",
        why: "verbosity is not supported",
    },
    Unsupported {
        field: "web_search_options",
        noop: |_| false,
        accepts: schema::nothing,
        accepted: "nothing else",
        why: "web search is not supported",
    },
    Unsupported {
        field: "store",
        noop: |v| v.as_bool() == Some(false),
        accepts: || schema::one_of_values(&[false.into()]),
        accepted: "false",
        why: "stored completions are not supported",
    },
    Unsupported {
        field: "service_tier",
        noop: |v| matches!(v.as_str(), Some("auto" | "default")),
        accepts: || schema::one_of_values(&["auto".into(), "default".into()]),
        accepted: "\"auto\" or \"default\"",
        why: "service tiers are not supported; use \"auto\" or \"default\"",
    },
];

const LOGIT_BIAS: Unsupported = Unsupported {
    field: "logit_bias",
    noop: empty_object,
    accepts: schema::empty_object,
    accepted: "{}",
    why: "logit_bias is not supported",
};

/// Legacy Completions fields we cannot honour (`suffix` and `best_of` are checked by the route,
/// which knows `n`).
pub(crate) const COMPLETION_UNSUPPORTED: &[Unsupported] = &[LOGIT_BIAS];

/// Which endpoint's field list to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// A 400 naming the first OpenAI field in `body` that we cannot honour (null and no-op values
/// pass); tool calls inside chat `messages` are checked by [`ChatMessage::check_no_tool_calls`].
pub fn refuse_unsupported(body: &Value, endpoint: Endpoint) -> Result<(), ApiError> {
    let list = match endpoint {
        Endpoint::Chat => CHAT_UNSUPPORTED,
        Endpoint::Completion => COMPLETION_UNSUPPORTED,
    };
    for u in list {
        match body.get(u.field) {
            None | Some(Value::Null) => {}
            Some(v) if (u.noop)(v) => {}
            Some(_) => return Err(ApiError::field(u.field, format!("`{}`: {}", u.field, u.why))),
        }
    }
    Ok(())
}

/// OpenAI's `response_format`: absent, null or `{"type": "text"}` = free text;
/// `{"type": "json_object"}` = any JSON object; `{"type": "json_schema", "json_schema": {"name",
/// "schema", "strict", "description"}}` = a value valid against `schema` (always enforced,
/// `strict` or not; no schema = any JSON value). Anything else is a 400 naming the field.
pub fn response_format(v: Option<&Value>) -> Result<Option<JsonFormat>, ApiError> {
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let Some(obj) = v.as_object() else {
        return Err(ApiError::field("response_format", "must be an object"));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonFormat::JsonObject)),
        Some("json_schema") => {
            let Some(js) = obj.get("json_schema").and_then(Value::as_object) else {
                return Err(ApiError::field(
                    "response_format.json_schema",
                    "is required for type json_schema (an object with `name` and `schema`)",
                ));
            };
            match js.get("name").and_then(Value::as_str) {
                Some(n)
                    if !n.is_empty()
                        && n.len() <= 64
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {}
                _ => {
                    return Err(ApiError::field(
                        "response_format.json_schema.name",
                        "is required: 1 to 64 of a-z, A-Z, 0-9, `_` and `-`",
                    ));
                }
            }
            if js.get("strict").is_some_and(|s| !s.is_null() && !s.is_boolean()) {
                return Err(ApiError::field("response_format.json_schema.strict", "must be a boolean"));
            }
            if js.get("description").is_some_and(|d| !d.is_null() && !d.is_string()) {
                return Err(ApiError::field("response_format.json_schema.description", "must be a string"));
            }
            let schema = match js.get("schema") {
                None | Some(Value::Null) => serde_json::json!({}),
                Some(s @ Value::Object(_)) => s.clone(),
                Some(_) => {
                    return Err(ApiError::field(
                        "response_format.json_schema.schema",
                        "must be a JSON Schema object",
                    ));
                }
            };
            Ok(Some(JsonFormat::JsonSchema { schema }))
        }
        _ => Err(ApiError::field(
            "response_format",
            "`type` must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// The chat as the template takes it; a 400 naming the first bad message.
pub fn to_messages(messages: &[ChatMessage]) -> Result<Vec<ferrotune_model::Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::field("messages", "at least one message is needed"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.role.is_empty() {
                return Err(ApiError::field(format!("messages[{i}].role"), "empty role"));
            }
            m.check_no_tool_calls(i)?;
            Ok(ferrotune_model::Message::new(m.role.clone(), m.text(i)?))
        })
        .collect()
}

impl ChatMessage {
    /// Refuse an assistant turn carrying tool calls: its text alone misstates the conversation.
    pub fn check_no_tool_calls(&self, i: usize) -> Result<(), ApiError> {
        let given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null() && !empty_array(v));
        for (name, v) in [("tool_calls", &self.tool_calls), ("function_call", &self.function_call)] {
            if given(v) {
                return Err(ApiError::field(
                    format!("messages[{i}].{name}"),
                    "tool calling is not supported",
                ));
            }
        }
        Ok(())
    }

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
                            return Err(ApiError::field(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs `text`",
                            ));
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
                _ => Err(ApiError::field(
                    format!("{param}[{i}]"),
                    format!("token ids must be integers in 0..{vocab}"),
                )),
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
                    _ => Err(ApiError::field(
                        format!("prompt[{i}]"),
                        "expected a string like the other prompts",
                    )),
                })
                .collect(),
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::Array(a) => Ok(PromptInput::Tokens(ids(a, &format!("prompt[{i}]"))?)),
                    _ => Err(ApiError::field(
                        format!("prompt[{i}]"),
                        "expected a list of token ids like the other prompts",
                    )),
                })
                .collect(),
            _ => bad("prompt[0]".into(), "expected a string, a token id or a list of token ids"),
        },
        _ => bad(
            "prompt".into(),
            "expected a string, a list of strings, a list of token ids or a list of such lists",
        ),
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
                    ApiError::field(
                        format!("input[{i}]"),
                        "expected a string (token-id input is not supported)",
                    )
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

    fn refused(body: Value, endpoint: Endpoint) -> Option<String> {
        match refuse_unsupported(&body, endpoint) {
            Ok(()) => None,
            Err(ApiError::InvalidField { param, .. }) => Some(param),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn openai_fields_we_cannot_honour_are_refused_by_name() {
        for (field, value) in [
            ("logit_bias", json!({"50256": -100})),
            ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
            ("tool_choice", json!("required")),
            ("tool_choice", json!({"type": "function", "function": {"name": "f"}})),
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!({"name": "f"})),
            ("parallel_tool_calls", json!(false)),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("reasoning_effort", json!("high")),
            ("verbosity", json!("low")),
            ("web_search_options", json!({})),
            ("store", json!(true)),
            ("service_tier", json!("priority")),
        ] {
            assert_eq!(
                refused(json!({ field: value }), Endpoint::Chat).as_deref(),
                Some(field),
                "{field}: {value}"
            );
        }
        assert_eq!(
            refused(json!({"logit_bias": {"1": 5}}), Endpoint::Completion).as_deref(),
            Some("logit_bias")
        );
    }

    /// The OpenAPI document says which values of a refused field pass ([`Unsupported::accepts`]);
    /// it must say what the check ([`Unsupported::noop`]) does.
    #[test]
    fn each_refused_fields_schema_accepts_exactly_its_no_op_values() {
        let samples = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!("none"),
            json!("auto"),
            json!("default"),
            json!("medium"),
            json!("high"),
            json!("text"),
            json!([]),
            json!(["text"]),
            json!(["text", "audio"]),
            json!([1]),
            json!({}),
            json!({"a": 1}),
        ];
        for u in CHAT_UNSUPPORTED.iter().chain(COMPLETION_UNSUPPORTED) {
            let schema = serde_json::to_value((u.accepts)()).expect("schema");
            let v = jsonschema::draft202012::new(&schema).expect("valid schema");
            for s in &samples {
                let passes = s.is_null() || (u.noop)(s);
                assert_eq!(v.is_valid(s) || s.is_null(), passes, "{}: {s} against {schema}", u.field);
            }
        }
    }

    #[test]
    fn nulls_and_no_op_defaults_are_accepted_as_sdks_send_them() {
        let defaults = json!({
            "logit_bias": {}, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
            "functions": [], "function_call": "auto", "parallel_tool_calls": true, "audio": null,
            "modalities": ["text"], "reasoning_effort": null, "verbosity": "medium", "web_search_options": null,
            "store": false, "service_tier": "auto", "metadata": {"team": "a"}, "user": "u", "prediction": null,
            "some_vendor_extension": {"x": 1},
        });
        assert_eq!(refused(defaults, Endpoint::Chat), None);
        assert_eq!(
            refused(json!({"logit_bias": null, "tools": [{"type": "function"}]}), Endpoint::Completion),
            None
        );
    }

    #[test]
    fn response_formats_are_read_and_bad_ones_named() {
        let read = |v: Value| response_format(Some(&v));
        assert_eq!(read(json!({"type": "text"})), Ok(None));
        assert_eq!(response_format(None), Ok(None));
        assert_eq!(read(json!({"type": "json_object"})), Ok(Some(JsonFormat::JsonObject)));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            read(
                json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}})
            ),
            Ok(Some(JsonFormat::JsonSchema { schema: schema.clone() }))
        );
        let param = |v: Value| match read(v) {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(json!({"type": "xml"})), "response_format");
        assert_eq!(param(json!("json_object")), "response_format");
        assert_eq!(param(json!({"type": "json_schema"})), "response_format.json_schema");
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"schema": schema}})),
            "response_format.json_schema.name"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": schema}})),
            "response_format.json_schema.name"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}})),
            "response_format.json_schema.schema"
        );
    }

    #[test]
    fn tool_calls_inside_messages_are_refused() {
        let m: ChatMessage = serde_json::from_value(
            json!({"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}),
        )
        .expect("parse");
        assert!(
            matches!(m.check_no_tool_calls(2), Err(ApiError::InvalidField { param, .. }) if param == "messages[2].tool_calls")
        );
        let plain: ChatMessage =
            serde_json::from_value(json!({"role":"assistant","content":"hi","tool_calls":[]}))
                .expect("parse");
        assert!(plain.check_no_tool_calls(0).is_ok());
    }

    #[test]
    fn chat_content_parts_are_joined() {
        let m: ChatMessage = serde_json::from_value(
            json!({"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}),
        )
        .expect("parse");
        assert_eq!(m.text(0).expect("text"), "ab");
        let img: ChatMessage =
            serde_json::from_value(json!({"role":"user","content":[{"type":"image_url"}]})).expect("parse");
        assert!(
            matches!(img.text(3), Err(ApiError::InvalidField { param, .. }) if param == "messages[3].content[0].type")
        );
    }
}
