//! vLLM's `POST /tokenize` and `POST /detokenize`, with vLLM's bodies and answers: a prompt or a
//! chat (rendered with the served model's template, as `/v1/chat/completions` renders it) →
//! `{"count","max_model_len","tokens"}` (+ `token_strs` on request); token ids → `{"prompt"}`.
//! Behind the same keys and model scopes as `/v1`: the tokenizer is part of the served model.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::generation::resolve_model;
use crate::json::ApiJson;
use crate::openai::{ChatMessage, DetokenizeRequest, TokenizeRequest};
use crate::response::{DetokenizeResponse, TokenizeResponse};

/// The model a tokenizer request names (the base when left out, as vLLM's only model), checked
/// against the key's scope like any other request.
fn check_model(state: &AppState, caller: &Caller, model: Option<&str>) -> Result<(), ApiError> {
    resolve_model(state, caller, model.unwrap_or(state.model_name())).map(|_| ())
}

#[utoipa::path(post, path = "/tokenize", tag = "vllm",
    request_body = TokenizeRequest,
    responses(
        (status = 200, body = TokenizeResponse, links(
            ("detokenize" = (operation_id = "detokenize",
                request_body = json!({"tokens": "$response.body#/tokens"}),
                description = "The ids back into text")))),
        crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn tokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    check_model(&state, &caller, req.model.as_deref())?;
    refuse_unsupported(&req)?;
    let info = state.engine.info();
    let tokens = match (&req.prompt, &req.messages) {
        (Some(prompt), None) => info
            .encode(prompt, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::field("prompt", format!("could not tokenize: {e}")))?,
        (None, Some(messages)) => {
            let text = render(&state, &req, messages)?;
            info.encode(&text, req.add_special_tokens.unwrap_or(false)).map_err(|e| {
                ApiError::field("messages", format!("could not tokenize the rendered chat: {e}"))
            })?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::field("messages", "give either `prompt` or `messages`, not both"));
        }
        (None, None) => {
            return Err(ApiError::field("prompt", "give `prompt` (text) or `messages` (a chat)"));
        }
    };
    let token_strs = (req.return_token_strs == Some(true))
        .then(|| tokens.iter().map(|&id| info.tokenizer.id_to_token(id).unwrap_or_default()).collect());
    Ok(Json(TokenizeResponse { count: tokens.len(), max_model_len: info.context_len, tokens, token_strs }))
}

/// The vLLM options we do not offer: refused whichever shape the body has (with `prompt` they
/// were once ignored, though the document says they are refused).
fn refuse_unsupported(req: &TokenizeRequest) -> Result<(), ApiError> {
    if req.chat_template.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::field(
            "chat_template",
            "custom chat templates are not supported; the model's own is used",
        ));
    }
    if req.chat_template_kwargs.as_ref().is_some_and(|v| !v.is_null() && !crate::openai::empty_object(v)) {
        return Err(ApiError::field("chat_template_kwargs", "chat template arguments are not supported"));
    }
    if req.tools.as_ref().is_some_and(|v| !v.is_null() && !crate::openai::empty_array(v)) {
        return Err(ApiError::field("tools", "tool calling is not supported"));
    }
    Ok(())
}

/// The chat as the model's template renders it (what `/v1/chat/completions` would prefill).
fn render(state: &AppState, req: &TokenizeRequest, messages: &[ChatMessage]) -> Result<String, ApiError> {
    let continue_final = req.continue_final_message.unwrap_or(false);
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(!continue_final);
    if continue_final && add_generation_prompt {
        return Err(ApiError::field(
            "continue_final_message",
            "cannot be used together with add_generation_prompt (set add_generation_prompt to false)",
        ));
    }
    let msgs = crate::openai::to_messages(messages)?;
    let rendered = state.engine.info().render_chat(&msgs, add_generation_prompt).map_err(|e| {
        ApiError::field("messages", format!("the model's chat template refused these messages: {e}"))
    })?;
    if !continue_final {
        return Ok(rendered);
    }
    // As transformers' `continue_final_message`: cut the rendering right after the last
    // message's text, dropping the end-of-turn the template wrote after it.
    let last = msgs.last().map(|m| m.content.trim_end()).unwrap_or_default();
    match rendered.rfind(last) {
        Some(at) if !last.is_empty() => Ok(rendered[..at + last.len()].to_string()),
        _ => Err(ApiError::field(
            "continue_final_message",
            "the final message's text does not appear in the rendered chat, so it cannot be continued",
        )),
    }
}

#[utoipa::path(post, path = "/detokenize", tag = "vllm",
    request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn detokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    check_model(&state, &caller, req.model.as_deref())?;
    let info = state.engine.info();
    let Value::Array(items) = &req.tokens else {
        return Err(ApiError::field("tokens", "expected a list of token ids"));
    };
    let vocab = info.vocab_size;
    let ids = items
        .iter()
        .enumerate()
        .map(|(i, x)| match x.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as u32),
            _ => Err(ApiError::field(
                format!("tokens[{i}]"),
                format!("token ids must be integers in 0..{vocab}"),
            )),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    // vLLM decodes with special tokens kept, so `/tokenize` → `/detokenize` gives the text back.
    let prompt = info
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::field("tokens", format!("could not decode: {e}")))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
