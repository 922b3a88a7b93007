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

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use ferrotune_model::Tokenizer;

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::{FinishReason, TokenLogprob};
use crate::error::ApiError;
use crate::generation::{ChoiceOut, Job, check_logprobs, check_prompt_len, token_text};
use crate::json::JsonBody;
use crate::openai::{CompletionRequest, Endpoint, PromptInput, parse_prompts, refuse_unsupported};
use crate::record::RequestRecord;
use crate::response::{CompletionChoice, CompletionResponse, LegacyLogprobs, Object, TopLogprobMap, Usage};
use crate::routes::pipeline::{Generation, GenerationBody};
use crate::stream::ChunkKind;

/// Prompts per request at most (times `n`, the sequences one request may start).
pub const MAX_PROMPTS: usize = 256;

impl GenerationBody for CompletionRequest {
    const NAME: &'static str = "completions";
    const ID_PREFIX: &'static str = "cmpl";
    const CHUNKS: ChunkKind = ChunkKind::Completion;
    type Answer = CompletionResponse;

    fn model(&self) -> &str {
        &self.model
    }

    /// Only the field the list names, not a second parse of the whole body (token-id prompts).
    fn refuse_unsupported(&self, _body: &[u8]) -> Result<(), ApiError> {
        refuse_unsupported(&serde_json::json!({ "logit_bias": self.logit_bias }), Endpoint::Completion)
    }
}

/// The legacy logprobs object for a run of tokens; `offset` is the character offset of the
/// first one in the choice's text. The chosen token is always among `top_logprobs`, as OpenAI
/// returns it (so `top_logprobs` may hold k + 1 entries).
pub fn legacy_logprobs(
    tok: &Tokenizer,
    entries: &[(String, Option<TokenLogprob>)],
    mut offset: usize,
) -> LegacyLogprobs {
    let mut out = LegacyLogprobs {
        tokens: Vec::with_capacity(entries.len()),
        token_logprobs: Vec::with_capacity(entries.len()),
        top_logprobs: Vec::with_capacity(entries.len()),
        text_offset: Vec::with_capacity(entries.len()),
    };
    for (text, lp) in entries {
        out.tokens.push(text.clone());
        out.text_offset.push(offset);
        offset += text.chars().count();
        match lp {
            None => {
                out.token_logprobs.push(None);
                out.top_logprobs.push(None);
            }
            Some(lp) => {
                out.token_logprobs.push(Some(lp.logprob.into()));
                let mut top = TopLogprobMap::default();
                for &(id, l) in &lp.top {
                    top.insert(token_text(tok, id), l.into());
                }
                top.insert(text.clone(), lp.logprob.into());
                out.top_logprobs.push(Some(top));
            }
        }
    }
    out
}

struct PromptJob {
    job: Job,
    /// The prompt as text (the original string, or the decoded ids), for `echo`.
    text: String,
}

#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = crate::openapi::CompletionBody,
    responses(
        (status = 200, description = "The answer; with `stream: true`, server-sent events of `CompletionChunk` ending with `data: [DONE]`",
            content((crate::response::CompletionResponse = "application/json"), (crate::response::CompletionChunk = "text/event-stream"))),
        crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<RequestRecord>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (mut g, req, fields) = Generation::<CompletionRequest>::start(&state, caller, record, &body).await?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field("suffix", "is not supported"));
    }
    let params = g.params(&fields, fields.max_tokens, req.response_format.as_ref()).await?;
    if req.best_of.is_some_and(|b| b as usize != params.n) {
        return Err(ApiError::field("best_of", "is not supported (leave it out or set it to n)"));
    }
    let echo = req.echo.unwrap_or(false);
    if req.logprobs.is_some() {
        g.caller.check_logprobs("logprobs")?;
    }
    if echo {
        g.caller.check_logprobs("echo")?;
    }
    let logprobs = req.logprobs.map(|k| check_logprobs("logprobs", k)).transpose()?;
    if logprobs.is_some() {
        g.guards.check_logprobs("logprobs")?;
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
        g.guards.check_input(&field, &text)?;
        check_prompt_len(info, ids.len(), &field)?;
        let max_tokens = params.budget(ids.len(), info.context_len, state.cfg.default_max_tokens, &field)?;
        let prompt_logprobs = echo && logprobs.is_some() && !params.stream;
        jobs.push(PromptJob { job: Job { prompt: ids, max_tokens, logprobs, prompt_logprobs }, text });
    }
    g.record.set_prompt(|| jobs.iter().map(|j| j.text.as_str()).collect::<Vec<_>>().join("\n---\n"));
    let engine_jobs: Vec<Job> = jobs.iter().map(|j| j.job.clone()).collect();

    if let Some(hit) = g.cached(&params, &engine_jobs, echo, None).await {
        return Ok(hit);
    }

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
        let rxs = g.submit(&params, &engine_jobs)?;
        if params.stream {
            let echo = echo.then(|| jobs.iter().map(|j| j.text.clone()).collect());
            return Ok(g.stream(&params, logprobs.is_some(), rxs, echo, None));
        }
        g.collect(rxs).await?
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
        let (gen_text, blocked) = g.guards.filter(i, generated.iter().map(|t| t.text.as_str()).collect());
        let finish = match (pj.job.max_tokens, blocked) {
            (0, _) => FinishReason::Length.as_str(),
            (_, true) => crate::generation::CONTENT_FILTER,
            _ => o.finish.as_str(),
        };
        g.record.set_choice(i, finish, Some(&gen_text));
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
        choices.push(CompletionChoice { index: i, text, logprobs: lp, finish_reason: finish.to_string() });
    }
    g.record.add_tokens(prompt_tokens, completion_tokens);
    let body = CompletionResponse {
        id: g.id.clone(),
        object: Object::TextCompletion,
        created: g.created,
        model: g.target.name.clone(),
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
        guards: None,
    };
    Ok(g.respond(body))
}
