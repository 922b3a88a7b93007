//! `POST /v1/completions`: text or token-id prompts (one or many), `echo`, and logprobs in the
//! legacy format `{"tokens","token_logprobs","top_logprobs","text_offset"}` — with `echo` they
//! cover the prompt too (the first prompt token has none), which is how lm-evaluation-harness'
//! `local-completions` scores log-likelihoods (`max_tokens: 1, echo: true, logprobs: 1`, the
//! last entry dropped as the generated token — EOS included, which the engine returns as a
//! token with empty text; `max_tokens: 0` scores the prompt alone). `logprobs` and `echo` need
//! a key allowed to see the distribution ([`crate::auth::Caller::check_logprobs`]); the prompts
//! go through the injection guard and the generated text (never the echoed prompt) through the
//! output guards ([`crate::guards`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferrotune_model::Tokenizer;
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::{FinishReason, TokenLogprob};
use crate::error::ApiError;
use crate::generation::{
    ChoiceOut, GenParams, Job, Tracker, check_logprobs, check_prompt_len, collect_all, new_id, now_unix,
    resolve_for_generation, submit, token_text,
};
use crate::guards::RequestGuards;
use crate::json::{self, JsonBody};
use crate::openai::{
    CompletionRequest, Endpoint, PromptInput, SamplingFields, parse_prompts, refuse_unsupported,
    response_format,
};
use crate::record::RequestRecord;
use crate::routes::{Cacheable, cache_lookup};
use crate::stream::{ChunkKind, StreamSpec, sse_response};

/// Prompts per request at most (times `n`, the sequences one request may start).
pub const MAX_PROMPTS: usize = 256;

/// The legacy logprobs object for a run of tokens; `offset` is the character offset of the
/// first one in the choice's text. The chosen token is always among `top_logprobs`, as OpenAI
/// returns it (so `top_logprobs` may hold k + 1 entries).
pub fn legacy_logprobs(
    tok: &Tokenizer,
    entries: &[(String, Option<TokenLogprob>)],
    mut offset: usize,
) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top_logprobs = Vec::with_capacity(entries.len());
    let mut text_offset = Vec::with_capacity(entries.len());
    for (text, lp) in entries {
        tokens.push(Value::from(text.clone()));
        text_offset.push(Value::from(offset));
        offset += text.chars().count();
        match lp {
            None => {
                token_logprobs.push(Value::Null);
                top_logprobs.push(Value::Null);
            }
            Some(lp) => {
                token_logprobs.push(json!(lp.logprob));
                let mut top = Map::new();
                for &(id, l) in &lp.top {
                    top.entry(token_text(tok, id)).or_insert(json!(l));
                }
                top.entry(text.clone()).or_insert(json!(lp.logprob));
                top_logprobs.push(Value::Object(top));
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
}

struct PromptJob {
    job: Job,
    /// The prompt as text (the original string, or the decoded ids), for `echo`.
    text: String,
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<RequestRecord>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req: CompletionRequest = json::parse(&body)?;
    let fields: SamplingFields = json::parse(&body)?;
    record.set_model(&req.model);
    record.set_stream(fields.stream.unwrap_or(false));
    // Only the field the list names, not a second parse of the whole body (token-id prompts).
    refuse_unsupported(&serde_json::json!({ "logit_bias": req.logit_bias }), Endpoint::Completion)?;
    let target = resolve_for_generation(&state, &caller, &record, &req.model).await?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field("suffix", "is not supported"));
    }
    let mut params = GenParams::from_fields(&fields, fields.max_tokens, state.cfg.max_n)?;
    params.constrain(&state, response_format(req.response_format.as_ref())?).await?;
    if req.best_of.is_some_and(|b| b as usize != params.n) {
        return Err(ApiError::field("best_of", "is not supported (leave it out or set it to n)"));
    }
    let echo = req.echo.unwrap_or(false);
    if req.logprobs.is_some() {
        caller.check_logprobs("logprobs")?;
    }
    if echo {
        caller.check_logprobs("echo")?;
    }
    let logprobs = req.logprobs.map(|k| check_logprobs("logprobs", k)).transpose()?;
    let mut guards = RequestGuards::new(&state, &target, &caller, &record);
    if logprobs.is_some() {
        guards.check_logprobs("logprobs")?;
    }
    let info = state.engine.info();
    let tok = &info.tokenizer;
    let prompts = parse_prompts(&req.prompt, info.vocab_size)?;
    if prompts.len() * params.n > MAX_PROMPTS {
        return Err(ApiError::field(
            "prompt",
            format!("at most {MAX_PROMPTS} prompts (times n) per request"),
        ));
    }
    let mut jobs = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let field = if prompts.len() == 1 { "prompt".to_string() } else { format!("prompt[{i}]") };
        let (ids, text) = match p {
            PromptInput::Text(s) => {
                let ids = tok
                    .encode(s, true)
                    .map_err(|e| ApiError::field(&field, format!("could not tokenize: {e}")))?;
                (ids, s.clone())
            }
            PromptInput::Tokens(ids) => (ids.clone(), tok.decode(ids, false).unwrap_or_default()),
        };
        guards.check_input(&field, &text)?;
        check_prompt_len(info, ids.len(), &field)?;
        let max_tokens = params.budget(ids.len(), info.context_len, state.cfg.default_max_tokens, &field)?;
        let prompt_logprobs = echo && logprobs.is_some() && !params.stream;
        jobs.push(PromptJob { job: Job { prompt: ids, max_tokens, logprobs, prompt_logprobs }, text });
    }
    record.set_prompt(|| jobs.iter().map(|j| j.text.as_str()).collect::<Vec<_>>().join("\n---\n"));
    let engine_jobs: Vec<Job> = jobs.iter().map(|j| j.job.clone()).collect();

    let cacheable =
        Cacheable::new(&state, "completions", &target, &params, &engine_jobs, echo, None, guards.cache_key());
    if let Some(mut hit) =
        cache_lookup(&state, &record, &target, cacheable.as_ref().map(|c| c.key.as_str()), "cmpl").await
    {
        guards.replay(&hit);
        guards.put_into(&mut hit);
        return Ok(Json(hit).into_response());
    }

    let id = new_id("cmpl");
    let created = now_unix();
    // Nothing to generate and nothing to score: answer without the engine.
    let outs = if engine_jobs.iter().all(|j| j.max_tokens == 0 && !j.prompt_logprobs) {
        engine_jobs
            .iter()
            .flat_map(|j| {
                std::iter::repeat_n(
                    ChoiceOut {
                        text: String::new(),
                        tokens: vec![],
                        prompt_logprobs: None,
                        finish: FinishReason::Length,
                        prompt_tokens: j.prompt.len(),
                        completion_tokens: 0,
                        filtered: false,
                    },
                    params.n,
                )
            })
            .collect()
    } else {
        let rxs = submit(&state, &caller, &record, &target, &params, &engine_jobs, received)?;
        if params.stream {
            let spec = StreamSpec {
                kind: ChunkKind::Completion,
                id,
                created,
                model: target.name.clone(),
                n: params.n,
                logprobs: logprobs.is_some(),
                include_usage: params.include_usage,
                echo: echo.then(|| jobs.iter().map(|j| j.text.clone()).collect()),
                grounding: None,
                guards,
            };
            let trackers = (0..rxs.len()).map(|_| Tracker::new(&state, &target, received, &record)).collect();
            return Ok(sse_response(spec, rxs, trackers, state.engine.clone(), record));
        }
        collect_all(&state, &target, rxs, received, &record).await?
    };

    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    let mut choices = Vec::with_capacity(outs.len());
    for (i, o) in outs.into_iter().enumerate() {
        let pj = &jobs[i / params.n];
        if i.is_multiple_of(params.n) {
            prompt_tokens += pj.job.prompt.len();
        }
        // A scoring request (max_tokens 0) returns no generated token even if one was made.
        let generated = if pj.job.max_tokens == 0 { &[][..] } else { &o.tokens[..] };
        completion_tokens += generated.len();
        let (gen_text, blocked) = guards.filter(i, generated.iter().map(|t| t.text.as_str()).collect());
        let finish = match (pj.job.max_tokens, blocked) {
            (0, _) => FinishReason::Length.as_str(),
            (_, true) => crate::generation::CONTENT_FILTER,
            _ => o.finish.as_str(),
        };
        record.set_choice(i, finish, Some(&gen_text));
        let text = if echo { format!("{}{gen_text}", pj.text) } else { gen_text };
        let lp = logprobs.map(|_| {
            let mut entries: Vec<(String, Option<TokenLogprob>)> = Vec::new();
            if echo {
                let scored = o.prompt_logprobs.clone().unwrap_or_default();
                for (k, &id) in pj.job.prompt.iter().enumerate() {
                    let lp = if k == 0 { None } else { scored.get(k - 1).cloned() };
                    entries.push((token_text(tok, id), lp));
                }
            }
            entries.extend(generated.iter().map(|t| (token_text(tok, t.id), t.logprob.clone())));
            legacy_logprobs(tok, &entries, 0)
        });
        choices.push(json!({"index": i, "text": text, "logprobs": lp, "finish_reason": finish}));
    }
    record.add_tokens(prompt_tokens, completion_tokens);
    let mut body = json!({
        "object": "text_completion",
        "model": target.name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    });
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
