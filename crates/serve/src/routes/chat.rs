//! `POST /v1/chat/completions`: messages rendered with the model's own chat template, the
//! request's guards ([`crate::guards`]) on its user messages, retrieved chunks and answers.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use ferrotune_model::Tokenizer;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::TokenLogprob;
use crate::error::ApiError;
use crate::generation::{Job, check_logprobs, token_text};
use crate::json::{self, JsonBody};
use crate::openai::{ChatRequest, Endpoint, refuse_unsupported, to_messages};
use crate::record::RequestRecord;
use crate::response::{
    AssistantMessage, ChatChoice, ChatCompletionResponse, ChatLogprobs, ChatTokenLogprob, Object, TopLogprob,
    Usage,
};
use crate::routes::pipeline::{Generation, GenerationBody};
use crate::stream::ChunkKind;

impl GenerationBody for ChatRequest {
    const NAME: &'static str = "chat";
    const ID_PREFIX: &'static str = "chatcmpl";
    const CHUNKS: ChunkKind = ChunkKind::Chat;
    type Answer = ChatCompletionResponse;

    fn model(&self) -> &str {
        &self.model
    }

    fn refuse_unsupported(&self, body: &[u8]) -> Result<(), ApiError> {
        let raw: Value = json::parse(body)?;
        refuse_unsupported(&raw, Endpoint::Chat)
    }
}

/// A token in the chat logprobs format (`{"token","logprob","bytes","top_logprobs"}`).
pub fn chat_logprob(tok: &Tokenizer, lp: &TokenLogprob) -> ChatTokenLogprob {
    let top = |id: u32, logprob: f32| {
        let token = token_text(tok, id);
        TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob: logprob.into() }
    };
    let token = token_text(tok, lp.id);
    ChatTokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: lp.logprob.into(),
        top_logprobs: lp.top.iter().map(|&(id, l)| top(id, l)).collect(),
    }
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = crate::openapi::ChatCompletionBody,
    responses(
        (status = 200, description = "The answer; with `stream: true`, server-sent events of `ChatCompletionChunk` ending with `data: [DONE]`",
            content((crate::response::ChatCompletionResponse = "application/json"), (crate::response::ChatCompletionChunk = "text/event-stream"))),
        crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<RequestRecord>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (mut g, req, fields) = Generation::<ChatRequest>::start(&state, caller, record, &body).await?;
    if req.logprobs == Some(true) {
        g.caller.check_logprobs("logprobs")?;
    }
    if req.top_logprobs.is_some_and(|k| k > 0) {
        g.caller.check_logprobs("top_logprobs")?;
    }
    let mut msgs = to_messages(&req.messages)?;
    for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m.role == "user") {
        g.guards.check_input(&format!("messages[{i}].content"), &m.content)?;
    }
    g.guards.protect_system(&mut msgs);
    let info = state.engine.info();
    let grounded = match state.knowledge.pick(req.knowledge_base.as_ref(), &req.model, &g.caller)? {
        Some(kb) => {
            let mut gr = state.knowledge.ground(kb, &mut msgs, &info.tokenizer, g.guards.retrieval()).await?;
            state
                .metrics
                .retrieval
                .get_or_create(&crate::metrics::KbLabels { knowledge_base: gr.knowledge_base.clone() })
                .observe(gr.retrieval_secs);
            g.record.set_sources(&gr.knowledge_base, std::mem::take(&mut gr.used));
            for a in std::mem::take(&mut gr.guards) {
                g.guards.note(a, None);
            }
            Some(gr)
        }
        None => None,
    };
    let rendered = info.render_chat(&msgs, true).map_err(|e| {
        ApiError::field("messages", format!("the model's chat template refused these messages: {e}"))
    })?;
    g.record.set_prompt(|| rendered.clone());
    // The template writes any BOS itself (as transformers' apply_chat_template does).
    let prompt = info
        .tokenizer
        .encode(&rendered, false)
        .map_err(|e| ApiError::field("messages", format!("could not tokenize the rendered chat: {e}")))?;
    let params = g
        .params(&fields, req.max_completion_tokens.or(fields.max_tokens), req.response_format.as_ref())
        .await?;
    if params.max_tokens == Some(0) {
        return Err(ApiError::field("max_tokens", "must be at least 1"));
    }
    crate::generation::check_prompt_len(info, prompt.len(), "messages")?;
    let max_tokens =
        params.budget(prompt.len(), info.context_len, state.cfg.default_max_tokens, "messages")?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), k) => Some(check_logprobs("top_logprobs", k.unwrap_or(0))?),
        (_, Some(k)) if k > 0 => return Err(ApiError::field("top_logprobs", "needs `logprobs: true`")),
        _ => None,
    };
    if logprobs.is_some() {
        g.guards.check_logprobs("logprobs")?;
    }
    let jobs = [Job { prompt, max_tokens, logprobs, prompt_logprobs: false }];

    let sources = grounded.as_ref().map(|gr| gr.sources.as_slice());
    if let Some(hit) = g.cached(&params, &jobs, false, sources).await {
        return Ok(hit);
    }

    let rxs = g.submit(&params, &jobs)?;
    let grounding = grounded.map(|gr| (gr.knowledge_base, gr.sources));
    if params.stream {
        return Ok(g.stream(&params, logprobs.is_some(), rxs, None, grounding));
    }
    let (knowledge_base, sources) = grounding.unzip();
    let mut outs = g.collect(rxs).await?;
    let prompt_tokens = outs.first().map_or(0, |o| o.prompt_tokens);
    let completion_tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
    g.record.add_tokens(prompt_tokens, completion_tokens);
    for (i, o) in outs.iter_mut().enumerate() {
        let (text, blocked) = g.guards.filter(i, std::mem::take(&mut o.text));
        o.text = text;
        o.filtered = blocked;
        g.record.set_choice(i, o.finish_reason(), Some(&o.text));
    }
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(i, o)| ChatChoice {
            index: i,
            logprobs: logprobs.map(|_| ChatLogprobs {
                content: o
                    .tokens
                    .iter()
                    .filter_map(|t| t.logprob.as_ref().map(|lp| chat_logprob(&info.tokenizer, lp)))
                    .collect(),
            }),
            finish_reason: o.finish_reason().to_string(),
            message: AssistantMessage::new(o.text),
        })
        .collect();
    let body = ChatCompletionResponse {
        id: g.id.clone(),
        object: Object::ChatCompletion,
        created: g.created,
        model: g.target.name.clone(),
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
        knowledge_base,
        sources,
        guards: None,
    };
    Ok(g.respond(body))
}
