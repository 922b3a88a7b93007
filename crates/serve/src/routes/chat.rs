//! `POST /v1/chat/completions`: messages rendered with the model's own chat template, the
//! request's guards ([`crate::guards`]) on its user messages, retrieved chunks and answers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferrotune_model::Tokenizer;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::TokenLogprob;
use crate::error::ApiError;
use crate::generation::{
    GenParams, Job, Tracker, check_logprobs, collect_all, new_id, now_unix, resolve_for_generation, submit,
    token_text,
};
use crate::guards::RequestGuards;
use crate::json::{self, JsonBody};
use crate::openai::{
    ChatRequest, Endpoint, SamplingFields, refuse_unsupported, response_format, to_messages,
};
use crate::record::RequestRecord;
use crate::routes::{Cacheable, cache_lookup};
use crate::stream::{ChunkKind, StreamSpec, sse_response};

/// A token in the chat logprobs format (`{"token","logprob","bytes","top_logprobs"}`).
pub fn chat_logprob(tok: &Tokenizer, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let s = token_text(tok, id);
        json!({"token": s, "logprob": logprob, "bytes": s.as_bytes()})
    };
    let mut v = entry(lp.id, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    v
}

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<RequestRecord>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req: ChatRequest = json::parse(&body)?;
    let fields: SamplingFields = json::parse(&body)?;
    let raw: Value = json::parse(&body)?;
    record.set_model(&req.model);
    record.set_stream(fields.stream.unwrap_or(false));
    refuse_unsupported(&raw, Endpoint::Chat)?;
    let target = resolve_for_generation(&state, &caller, &record, &req.model).await?;
    if req.logprobs == Some(true) {
        caller.check_logprobs("logprobs")?;
    }
    if req.top_logprobs.is_some_and(|k| k > 0) {
        caller.check_logprobs("top_logprobs")?;
    }
    let mut msgs = to_messages(&req.messages)?;
    let mut guards = RequestGuards::new(&state, &target, &caller, &record);
    for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m.role == "user") {
        guards.check_input(&format!("messages[{i}].content"), &m.content)?;
    }
    guards.protect_system(&mut msgs);
    let info = state.engine.info();
    let grounded = match state.knowledge.pick(&raw, &req.model, &caller)? {
        Some(kb) => {
            let mut g = state.knowledge.ground(kb, &mut msgs, &info.tokenizer, guards.retrieval()).await?;
            state
                .metrics
                .retrieval
                .get_or_create(&crate::metrics::KbLabels { knowledge_base: g.knowledge_base.clone() })
                .observe(g.retrieval_secs);
            record.set_sources(&g.knowledge_base, std::mem::take(&mut g.used));
            for a in std::mem::take(&mut g.guards) {
                guards.note(a, None);
            }
            Some(g)
        }
        None => None,
    };
    let rendered = info.render_chat(&msgs, true).map_err(|e| {
        ApiError::field("messages", format!("the model's chat template refused these messages: {e}"))
    })?;
    record.set_prompt(|| rendered.clone());
    // The template writes any BOS itself (as transformers' apply_chat_template does).
    let prompt = info
        .tokenizer
        .encode(&rendered, false)
        .map_err(|e| ApiError::field("messages", format!("could not tokenize the rendered chat: {e}")))?;
    let mut params =
        GenParams::from_fields(&fields, req.max_completion_tokens.or(fields.max_tokens), state.cfg.max_n)?;
    params.constrain(&state, response_format(req.response_format.as_ref())?).await?;
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
        guards.check_logprobs("logprobs")?;
    }
    let jobs = [Job { prompt, max_tokens, logprobs, prompt_logprobs: false }];

    let sources = grounded.as_ref().map(|g| g.sources.as_slice());
    let cacheable =
        Cacheable::new(&state, "chat", &target, &params, &jobs, false, sources, guards.cache_key());
    if let Some(mut hit) =
        cache_lookup(&state, &record, &target, cacheable.as_ref().map(|c| c.key.as_str()), "chatcmpl").await
    {
        guards.replay(&hit);
        guards.put_into(&mut hit);
        return Ok(Json(hit).into_response());
    }

    let rxs = submit(&state, &caller, &record, &target, &params, &jobs, received)?;
    let id = new_id("chatcmpl");
    let created = now_unix();
    if params.stream {
        let spec = StreamSpec {
            kind: ChunkKind::Chat,
            id,
            created,
            model: target.name.clone(),
            n: params.n,
            logprobs: logprobs.is_some(),
            include_usage: params.include_usage,
            echo: None,
            grounding: grounded.as_ref().map(|g| (g.knowledge_base.clone(), Value::from(g.sources.clone()))),
            guards,
        };
        let trackers = (0..rxs.len()).map(|_| Tracker::new(&state, &target, received, &record)).collect();
        return Ok(sse_response(spec, rxs, trackers, state.engine.clone(), record));
    }
    let mut outs = collect_all(&state, &target, rxs, received, &record).await?;
    let prompt_tokens = outs.first().map_or(0, |o| o.prompt_tokens);
    let completion_tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
    record.add_tokens(prompt_tokens, completion_tokens);
    for (i, o) in outs.iter_mut().enumerate() {
        let (text, blocked) = guards.filter(i, std::mem::take(&mut o.text));
        o.text = text;
        o.filtered = blocked;
        record.set_choice(i, o.finish_reason(), Some(&o.text));
    }
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let lp = logprobs.map(|_| {
                json!({"content": o.tokens.iter().filter_map(|t| t.logprob.as_ref().map(|lp| chat_logprob(&info.tokenizer, lp))).collect::<Vec<_>>()})
            });
            json!({
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "logprobs": lp,
                "finish_reason": o.finish_reason(),
            })
        })
        .collect();
    let mut body = json!({
        "object": "chat.completion",
        "model": target.name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    });
    if let Some(g) = &grounded {
        body["knowledge_base"] = g.knowledge_base.clone().into();
        body["sources"] = g.sources.clone().into();
    }
    if let Some(c) = cacheable.filter(|_| !guards.blocked_output()) {
        let mut kept = body.clone();
        guards.put_output_into(&mut kept);
        c.store(&state, &target, kept);
    }
    guards.put_into(&mut body);
    body["id"] = id.into();
    body["created"] = created.into();
    Ok(Json(body).into_response())
}
