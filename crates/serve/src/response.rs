//! The bodies this server answers with, as plain serde types in one place (as mistral.rs'
//! `response.rs`): OpenAI's chat and legacy completions (whole and streamed), embeddings, the
//! model list and the error body, plus vLLM's `/tokenize` and `/detokenize` and the health
//! probes. Handlers fill these in; nothing assembles a response out of `json!` literals.
//!
//! The wire format is OpenAI's, field for field: an optional field OpenAI leaves out is
//! `skip_serializing_if = "Option::is_none"`, one it sends as `null` is a plain `Option`.
//! Numbers the engine holds as `f32` (logprobs, embeddings) are written as `f64`, the exact
//! value of the `f32`, as this server always wrote them. What a cached answer is read back into
//! derives `Deserialize` too.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use utoipa::ToSchema;

use crate::guards::Acted;

/// The `object` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Object {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
    /// Legacy completions, whole and streamed alike.
    #[serde(rename = "text_completion")]
    TextCompletion,
    #[serde(rename = "list")]
    List,
    #[serde(rename = "model")]
    Model,
    #[serde(rename = "embedding")]
    Embedding,
}

/// `object` fields' schema, spelled out: utoipa reads a field of a type named `Object` as "any
/// JSON object".
fn object_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    <Object as utoipa::PartialSchema>::schema()
}

/// Token counts; `prompt_tokens` counts each prompt once, whatever `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// One retrieved chunk of a grounded chat's `sources` (numbered as the prompt cites them). A
/// chunk the injection guard flagged says so; one it dropped has no number and says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Source {
    /// `[n]` in the prompt; `null` for a dropped chunk.
    pub index: Option<usize>,
    pub doc_id: String,
    pub start_char: u64,
    pub end_char: u64,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---- chat ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// Grounded chat: the knowledge base searched, and the chunks the answer was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Source>>,
    /// What the guards did ([`crate::guards`]); absent when none acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Vec<Acted>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// `null` unless the request asked for logprobs.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    pub content: String,
}

impl AssistantMessage {
    pub fn new(content: String) -> Self {
        Self { role: ASSISTANT.to_string(), content }
    }
}

const ASSISTANT: &str = "assistant";

/// Chat logprobs: one entry per generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// One `data:` event of a streamed chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub created: u64,
    pub model: String,
    /// Empty in the `guards` and `usage` chunks.
    pub choices: Vec<ChatChunkChoice>,
    /// Grounded chat: on each choice's opening chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Source>>,
    /// A chunk of its own after the last choice, when a guard acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Vec<Acted>>,
    /// The last chunk, with `stream_options.include_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// What a chunk adds to the message: the role first (with empty content), then content; the
/// last chunk's delta is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl Delta {
    /// The opening delta: the assistant's role, no text yet.
    pub fn opening() -> Self {
        Self { role: Some(ASSISTANT.to_string()), content: Some(String::new()) }
    }

    pub fn text(content: String) -> Self {
        Self { role: None, content: Some(content) }
    }
}

// ---- legacy completions ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Vec<Acted>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    /// With `echo`, the prompt and then the generated text.
    pub text: String,
    pub logprobs: Option<LegacyLogprobs>,
    pub finish_reason: String,
}

/// One `data:` event of a streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChunk {
    pub id: String,
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Vec<Acted>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChunkChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<LegacyLogprobs>,
    pub finish_reason: Option<String>,
}

/// The legacy logprobs of a run of tokens, one entry per token in each list. A token without a
/// logprob (an echoed prompt's first) has `null` in `token_logprobs` and `top_logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// `{token text: logprob}`, most likely first; a text two ids share is listed once, with the
/// first (likelier) logprob. Kept in order, where a `HashMap` would shuffle it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(Vec<(String, f64)>);

impl TopLogprobMap {
    /// Add `token` unless its text is already listed.
    pub fn insert(&mut self, token: String, logprob: f64) {
        if !self.0.iter().any(|(t, _)| *t == token) {
            self.0.push((token, logprob));
        }
    }

    pub fn entries(&self) -> &[(String, f64)] {
        &self.0
    }
}

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            m.serialize_entry(token, logprob)?;
        }
        m.end()
    }
}

/// What [`TopLogprobMap`]'s hand-written `Serialize` writes: an object of token text → logprob.
impl utoipa::PartialSchema for TopLogprobMap {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::RefOr(
                ObjectBuilder::new().schema_type(Type::Number).into(),
            )))
            .description(Some(
                "Token text → logprob, most likely first (a text two ids share is listed once).",
            ))
            .into()
    }
}

impl ToSchema for TopLogprobMap {}

impl<'de> Deserialize<'de> for TopLogprobMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = TopLogprobMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of token text to logprob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLogprobMap, A::Error> {
                let mut out = TopLogprobMap::default();
                while let Some((token, logprob)) = access.next_entry::<String, f64>()? {
                    out.insert(token, logprob);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Entries)
    }
}

// ---- embeddings ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponse {
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingData {
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// `encoding_format: "float"` (a list of numbers) or `"base64"` (little-endian f32 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f64>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

// ---- models ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub data: Vec<ModelCard>,
}

/// One entry of `/v1/models`, with vLLM's `root`, `parent` and `max_model_len`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    #[schema(schema_with = object_schema)]
    pub object: Object,
    pub created: u64,
    pub owned_by: String,
    /// What it serves: itself, or a registry reference's version (`support@3`).
    pub root: String,
    /// The base an adapter runs on; `null` for the base and the embedder.
    pub parent: Option<String>,
    /// The context length, for the models that generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

// ---- errors ----

/// Every failure's body ([`crate::error::ApiError::body`]); also sent as an SSE event when a
/// stream fails after it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `rate_limit_error`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    /// The request field at fault; `null` when none is.
    pub param: Option<String>,
}

// ---- vLLM's tokenizer endpoints ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    /// With `return_token_strs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

// ---- health ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: String,
}

/// `/ready`. The names are only for a caller allowed to see them (see [`crate::routes::health`]):
/// absent otherwise; `model` is `null` when the key may not use the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready`.
    pub status: String,
    pub running: usize,
    pub waiting: usize,
    pub adapter_count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_keep_their_order_and_the_first_of_a_repeated_text() {
        let mut m = TopLogprobMap::default();
        m.insert("b".into(), -0.5);
        m.insert("a".into(), -1.0);
        m.insert("b".into(), -2.0);
        let s = serde_json::to_string(&m).expect("serialize");
        assert_eq!(s, r#"{"b":-0.5,"a":-1.0}"#);
        assert_eq!(serde_json::from_str::<TopLogprobMap>(&s).expect("read back"), m);
    }

    /// What `json!` wrote for an `f32` (its exact value as an `f64`) is what these types write.
    #[test]
    fn f32_numbers_are_written_as_json_wrote_them() {
        let x = -0.1f32;
        let typed =
            serde_json::to_string(&TopLogprob { token: "t".into(), logprob: x.into(), bytes: vec![] })
                .expect("serialize");
        assert!(typed.contains(&serde_json::json!(x).to_string()), "{typed}");
    }

    #[test]
    fn optional_fields_are_absent_or_null_as_openai_sends_them() {
        let chunk = ChatCompletionChunk {
            id: "c".into(),
            object: Object::ChatCompletionChunk,
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: None,
            }],
            knowledge_base: None,
            sources: None,
            guards: None,
            usage: None,
        };
        let v = serde_json::to_value(&chunk).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": null}]})
        );
        let ready = ReadyResponse {
            status: "ready".into(),
            running: 0,
            waiting: 0,
            adapter_count: 0,
            model: Some(None),
            adapters: None,
        };
        let v = serde_json::to_value(&ready).expect("serialize");
        assert!(v["model"].is_null() && v.get("model").is_some() && v.get("adapters").is_none(), "{v}");
    }
}
