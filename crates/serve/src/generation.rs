//! What chat and completions share: validated sampling parameters, the model / adapter a request
//! names, submitting one engine request per (prompt, choice), and reading the events back while
//! recording the latency metrics. Receivers are owned by whoever reads them; dropping one (the
//! handler future or the SSE stream going away with the client) tells the engine to cancel.

use std::sync::Arc;
use std::time::Instant;

use ferrotune_model::SamplingParams;
use ferrotune_model::constrain::{ConstrainError, Constraint, JsonFormat};
use futures_util::future::join_all;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::{Event, FinishReason, GenRequest, TokenLogprob};
use crate::error::ApiError;
use crate::limits::{Ask, Lease};
use crate::metrics::{FinishLabels, Metrics, ModelLabels};
use crate::openai::{MAX_LOGPROBS, SamplingFields, Stop};
use crate::record::RequestRecord;
use crate::registry::VersionRef;

/// The model a request resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As the client named it (echoed in responses).
    pub name: String,
    /// `None` = the base model; a registry version is the adapter `support@3`.
    pub adapter: Option<String>,
    /// The registry version, when the name was a registry reference.
    pub version: Option<VersionRef>,
}

/// Resolve `model` — the one place that says what a name means, for every endpoint — then
/// check the key's scope: the base's name, then the adapters loaded by name (serve.toml
/// `[adapters]`, `/v1/load_lora_adapter`), then, with the registry on, a registry reference
/// (`support`, `support@canary`, `support@3`) looked up in the watcher's snapshot. Unknown:
/// 404 listing what the key may use; a disabled registry version: 403 `model_disabled`.
/// Nothing is loaded here ([`resolve_for_generation`] does that).
pub fn resolve_model(state: &AppState, caller: &Caller, model: &str) -> Result<Target, ApiError> {
    // Registry versions are loaded as `name@version`; names loaded by name never hold '@'
    // (`check_adapter_name`), so `support@3` always goes through the registry and its checks.
    let by_name = !model.contains('@') && state.engine.adapters().iter().any(|a| a == model);
    let target = if model == state.model_name() {
        Target { name: model.to_string(), adapter: None, version: None }
    } else if by_name {
        Target { name: model.to_string(), adapter: Some(model.to_string()), version: None }
    } else if let Some(a) = state.registry.as_ref().and_then(|r| r.resolve(model)) {
        caller.check_model(model)?;
        if a.disabled {
            let e = crate::registry::disabled_error(&a);
            crate::registry::note_refusal(state, caller.actor(), &VersionRef::of(&a), &e, "disabled");
            return Err(e);
        }
        let v = VersionRef::of(&a);
        return Ok(Target { name: model.to_string(), adapter: Some(v.reference()), version: Some(v) });
    } else {
        return Err(ApiError::ModelNotFound(
            model.to_string(),
            crate::routes::models::available(state, caller),
        ));
    };
    caller.check_model(model)?;
    Ok(target)
}

/// [`resolve_model`], then make a registry version ready (checked and loaded on first use,
/// [`crate::registry::ensure_loaded`]), count it, and name it in the request's record.
pub async fn resolve_for_generation(
    state: &AppState,
    caller: &Caller,
    record: &RequestRecord,
    model: &str,
) -> Result<Target, ApiError> {
    let target = resolve_model(state, caller, model)?;
    record.set_resolved(target.adapter.as_deref().unwrap_or(state.model_name()));
    if let (Some(v), Some(reg)) = (&target.version, &state.registry) {
        crate::registry::ensure_loaded(state, reg, v, caller.actor()).await?;
        state.metrics.count_registry_request(&v.name, v.version);
        record.set_artifact(&v.reference());
    }
    Ok(target)
}

/// Sampling settings after validation.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub seed_given: bool,
    pub stop: Vec<String>,
    pub n: usize,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Structured output (`response_format`), and its compiled grammar — cloned, parse state
    /// and all, into each sequence ([`GenParams::constrain`]).
    pub format: Option<JsonFormat>,
    pub constraint: Option<Constraint>,
}

impl GenParams {
    pub fn from_fields(f: &SamplingFields, max_tokens: Option<u32>, max_n: usize) -> Result<Self, ApiError> {
        let temperature = f.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::field("temperature", "must be between 0 and 2"));
        }
        let top_p = f.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::field("top_p", "must be in (0, 1]"));
        }
        let repetition_penalty = f.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite() && repetition_penalty <= 10.0) {
            return Err(ApiError::field("repetition_penalty", "must be in (0, 10]"));
        }
        for (name, v) in
            [("presence_penalty", f.presence_penalty), ("frequency_penalty", f.frequency_penalty)]
        {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::field(name, "is not supported (use repetition_penalty)"));
            }
        }
        let n = f.n.unwrap_or(1) as usize;
        if n == 0 || n > max_n {
            return Err(ApiError::field("n", format!("must be between 1 and {max_n}")));
        }
        let stop = match &f.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 16 {
            return Err(ApiError::field("stop", "at most 16 stop strings"));
        }
        // Characters, not bytes: the OpenAPI document's `maxLength` counts characters.
        let max = crate::openapi::STOP_MAX_CHARS;
        if stop.iter().any(|s| s.is_empty() || s.chars().count() > max) {
            return Err(ApiError::field("stop", format!("stop strings must be 1 to {max} characters")));
        }
        let seed_given = f.seed.is_some();
        let seed = f.seed.unwrap_or_else(rand::random);
        let stream = f.stream.unwrap_or(false);
        Ok(Self {
            max_tokens: max_tokens.map(|m| m as usize),
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: f.top_k.filter(|&k| k > 0).map_or(0, |k| k as usize),
                repetition_penalty,
                seed,
            },
            seed_given,
            stop,
            n,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            stream,
            include_usage: stream && f.stream_options.as_ref().is_some_and(|o| o.include_usage),
            format: None,
            constraint: None,
        })
    }

    /// Compile `response_format` for this model (on the blocking pool: the first request also
    /// builds the vocabulary's trie, and a large schema takes a while). A schema the grammar
    /// compiler cannot enforce is a 400 whose message names what it refused.
    pub async fn constrain(&mut self, state: &AppState, format: Option<JsonFormat>) -> Result<(), ApiError> {
        let Some(format) = format else { return Ok(()) };
        let engine = state.engine.clone();
        let f = format.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let grammars = engine.info().grammars().map_err(|e| {
                ApiError::field(
                    "response_format",
                    format!("structured output is not available for this model: {e}"),
                )
            })?;
            grammars.compile(&f).map_err(|e| match e {
                ConstrainError::Unsupported { .. } => ApiError::field(
                    if matches!(f, JsonFormat::JsonSchema { .. }) {
                        "response_format.json_schema.schema"
                    } else {
                        "response_format"
                    },
                    e.to_string(),
                ),
                other => ApiError::field("response_format", other.to_string()),
            })
        })
        .await
        .map_err(|e| {
            tracing::error!("compiling a response_format panicked: {e}");
            ApiError::Internal
        })??;
        self.format = Some(format);
        self.constraint = Some(compiled);
        Ok(())
    }

    /// Same request, same answer: greedy, or sampled from a fixed seed.
    pub fn deterministic(&self) -> bool {
        self.sampling.temperature == 0.0 || self.seed_given
    }

    /// New tokens for a prompt of `prompt_len`: the request's `max_tokens` if it fits the
    /// context, else the rest of the context (or the server's default, if smaller).
    pub fn budget(
        &self,
        prompt_len: usize,
        context: usize,
        default: Option<usize>,
        prompt_field: &str,
    ) -> Result<usize, ApiError> {
        if prompt_len == 0 {
            return Err(ApiError::field(prompt_field, "the prompt is empty"));
        }
        if prompt_len > context || (prompt_len == context && self.max_tokens != Some(0)) {
            return Err(ApiError::field(
                prompt_field,
                format!("the prompt is {prompt_len} tokens; the model's context holds {context}"),
            ));
        }
        let rest = context - prompt_len;
        match self.max_tokens {
            Some(m) if m > rest => Err(ApiError::field(
                "max_tokens",
                format!(
                    "max_tokens {m} + {prompt_len} prompt tokens exceeds the context of {context} tokens"
                ),
            )),
            Some(m) => Ok(m),
            None => Ok(default.map_or(rest, |d| d.min(rest))),
        }
    }
}

/// A prompt longer than the engine's `max_prompt_tokens`: 400 naming `field` and the limit
/// (checked before anything is queued; the engine checks again on submit).
pub fn check_prompt_len(info: &crate::engine::ModelInfo, len: usize, field: &str) -> Result<(), ApiError> {
    info.check_prompt(len).map_err(|e| ApiError::field(field, e.to_string()))
}

/// One engine request to make.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: bool,
}

/// Submit `n` choices for each job; choice `j` of a seeded request uses seed + j, so the choices
/// differ yet the whole answer is reproducible. On a refusal the receivers made so far are
/// dropped, which cancels their sequences.
///
/// First the request's size is checked (`limits.max_sequences_per_request`) and, for a key,
/// its sequences and tokens are reserved ([`crate::limits`]); the lease lives in the record.
pub fn submit(
    state: &AppState,
    caller: &Caller,
    record: &RequestRecord,
    target: &Target,
    params: &GenParams,
    jobs: &[Job],
    received: Instant,
) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let sequences = jobs.len() * params.n;
    let cap = state.cfg.limits.max_sequences_per_request;
    if sequences > cap {
        return Err(ApiError::field(
            if jobs.len() > 1 { "prompt" } else { "n" },
            format!(
                "this request starts {sequences} sequences (prompts × n); the server allows {cap} per request (limits.max_sequences_per_request)"
            ),
        ));
    }
    let prompt_tokens: usize = jobs.iter().map(|j| j.prompt.len()).sum();
    let lease = match &caller.0 {
        Some(key) => {
            let e = &state.engine.info().config;
            let ask = Ask {
                sequences,
                tokens: prompt_tokens + jobs.iter().map(|j| j.max_tokens * params.n).sum::<usize>(),
                default_max_concurrent: state.cfg.limits.max_concurrent,
                engine_slots: e.queue_capacity + e.max_batch,
            };
            let lease = state
                .limiter
                .reserve(key, ask, Instant::now())
                .inspect_err(|e| state.metrics.count_rate_limited(e))?;
            let lease = Arc::new(lease);
            record.set_lease(lease.clone());
            Some(lease)
        }
        None => None,
    };
    let mut out = Vec::with_capacity(jobs.len() * params.n);
    for job in jobs {
        for j in 0..params.n {
            let (tx, rx) = unbounded_channel();
            let mut sampling = params.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(j as u64);
            let req = GenRequest {
                adapter: target.adapter.clone(),
                prompt: job.prompt.clone(),
                max_tokens: job.max_tokens,
                sampling,
                stop: params.stop.clone(),
                logprobs: job.logprobs,
                prompt_logprobs: job.prompt_logprobs,
                ignore_eos: params.ignore_eos,
                constraint: params.constraint.clone(),
                received,
                events: tx,
            };
            state.engine.submit(req).map_err(|e| submit_error(state, caller, target, e))?;
            out.push(rx);
        }
    }
    // Only now: a refused request is refunded in full when its lease drops.
    if let Some(l) = lease {
        l.use_tokens(prompt_tokens);
    }
    Ok(out)
}

/// An engine refusal as the client sees it. A registry version unloaded between resolution
/// and submission was disabled (or is gone): say which.
fn submit_error(
    state: &AppState,
    caller: &Caller,
    target: &Target,
    e: crate::engine::SubmitError,
) -> ApiError {
    if let (crate::engine::SubmitError::UnknownAdapter(_), Some(v), Some(reg)) =
        (&e, &target.version, &state.registry)
        && let Some(a) = reg.snapshot().version(&v.name, v.version).filter(|a| a.disabled)
    {
        let e = crate::registry::disabled_error(a);
        crate::registry::note_refusal(state, caller.actor(), v, &e, "disabled");
        return e;
    }
    ApiError::from_submit(e, &target.name)
}

/// Records the latency metrics of one sequence as its events go by, and counts its generated
/// tokens on the request's lease as they arrive (so a client that leaves still pays for them).
pub struct Tracker {
    metrics: Arc<Metrics>,
    labels: ModelLabels,
    received: Instant,
    last_token: Option<Instant>,
    lease: Option<Arc<Lease>>,
}

impl Tracker {
    pub fn new(state: &AppState, target: &Target, received: Instant, record: &RequestRecord) -> Self {
        Self {
            metrics: state.metrics.clone(),
            labels: state.metrics.labels(target.adapter.as_deref()),
            received,
            last_token: None,
            lease: record.lease(),
        }
    }

    pub fn observe(&mut self, ev: &Event) {
        let m = &self.metrics;
        match ev {
            Event::Started { queue_secs, prompt_tokens } => {
                m.queue_time.get_or_create(&self.labels).observe(*queue_secs);
                m.prompt_tokens.get_or_create(&self.labels).inc_by(*prompt_tokens as u64);
            }
            Event::PromptLogprobs(_) => {}
            Event::Token { .. } => {
                if let Some(l) = &self.lease {
                    l.use_tokens(1);
                }
                let now = Instant::now();
                match self.last_token {
                    None => m.ttft.get_or_create(&self.labels).observe((now - self.received).as_secs_f64()),
                    Some(t) => m.inter_token.get_or_create(&self.labels).observe((now - t).as_secs_f64()),
                }
                self.last_token = Some(now);
                m.generation_tokens.get_or_create(&self.labels).inc();
            }
            Event::Done { finish, .. } => {
                m.e2e.get_or_create(&self.labels).observe(self.received.elapsed().as_secs_f64());
                let labels = FinishLabels {
                    model: self.labels.model.clone(),
                    adapter: self.labels.adapter.clone(),
                    finished_reason: finish.as_str().into(),
                };
                m.success.get_or_create(&labels).inc();
            }
            Event::Error(msg) => {
                tracing::error!("generation failed: {msg}");
            }
        }
    }

    /// An output guard ended the sequence before the engine did (it is cancelled): record it as
    /// finished with `content_filter`.
    pub fn filtered(&mut self) {
        let m = &self.metrics;
        m.e2e.get_or_create(&self.labels).observe(self.received.elapsed().as_secs_f64());
        let labels = FinishLabels {
            model: self.labels.model.clone(),
            adapter: self.labels.adapter.clone(),
            finished_reason: CONTENT_FILTER.into(),
        };
        m.success.get_or_create(&labels).inc();
    }
}

/// One generated token with its text piece.
#[derive(Debug, Clone)]
pub struct GenToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<TokenLogprob>,
}

/// A finished choice.
#[derive(Debug, Clone)]
pub struct ChoiceOut {
    pub text: String,
    pub tokens: Vec<GenToken>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// An output guard ended the answer ([`crate::guards`]).
    pub filtered: bool,
}

impl ChoiceOut {
    /// `content_filter` (OpenAI's value for filtered output) when a guard ended the answer.
    pub fn finish_reason(&self) -> &'static str {
        if self.filtered { CONTENT_FILTER } else { self.finish.as_str() }
    }
}

/// The finish reason of an answer an output guard ended.
pub const CONTENT_FILTER: &str = "content_filter";

pub async fn collect_one(
    mut rx: UnboundedReceiver<Event>,
    mut tracker: Tracker,
) -> Result<ChoiceOut, ApiError> {
    let mut out = ChoiceOut {
        text: String::new(),
        tokens: vec![],
        prompt_logprobs: None,
        finish: FinishReason::Stop,
        prompt_tokens: 0,
        completion_tokens: 0,
        filtered: false,
    };
    while let Some(ev) = rx.recv().await {
        tracker.observe(&ev);
        match ev {
            Event::Started { .. } => {}
            Event::PromptLogprobs(p) => out.prompt_logprobs = Some(p),
            Event::Token { id, text, logprob } => {
                out.text.push_str(&text);
                out.tokens.push(GenToken { id, text, logprob });
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                out.finish = finish;
                out.prompt_tokens = prompt_tokens;
                out.completion_tokens = completion_tokens;
                return Ok(out);
            }
            Event::Error(_) => return Err(ApiError::Internal),
        }
    }
    tracing::error!("the engine closed a sequence without a Done event");
    Err(ApiError::Internal)
}

/// Read every choice to the end, concurrently (so each one's timings are its own), until the
/// request's deadline: then 504, and dropping the receivers cancels the sequences.
pub async fn collect_all(
    state: &AppState,
    target: &Target,
    rxs: Vec<UnboundedReceiver<Event>>,
    received: Instant,
    record: &RequestRecord,
) -> Result<Vec<ChoiceOut>, ApiError> {
    let futs = rxs.into_iter().map(|rx| collect_one(rx, Tracker::new(state, target, received, record)));
    match tokio::time::timeout_at(record.deadline.into(), join_all(futs)).await {
        Ok(outs) => outs.into_iter().collect(),
        Err(_) => Err(ApiError::Timeout(state.cfg.limits.request_timeout_s)),
    }
}

/// The text of a single token, for logprob listings.
pub fn token_text(tok: &ferrotune_model::Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// `logprobs` / `top_logprobs` as asked, checked against [`MAX_LOGPROBS`].
pub fn check_logprobs(field: &str, k: u32) -> Result<usize, ApiError> {
    if k > MAX_LOGPROBS {
        return Err(ApiError::field(field, format!("at most {MAX_LOGPROBS}")));
    }
    Ok(k as usize)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> SamplingFields {
        serde_json::from_value(json).expect("fields")
    }

    #[test]
    fn budget_defaults_to_the_rest_of_the_context_and_refuses_overflow() {
        let p = GenParams::from_fields(&fields(serde_json::json!({})), None, 4).expect("params");
        assert_eq!(p.budget(10, 100, None, "prompt").ok(), Some(90));
        assert_eq!(p.budget(10, 100, Some(16), "prompt").ok(), Some(16));
        let p = GenParams::from_fields(&fields(serde_json::json!({})), Some(91), 4).expect("params");
        assert!(
            matches!(p.budget(10, 100, None, "prompt"), Err(ApiError::InvalidField { param, .. }) if param == "max_tokens")
        );
        assert!(
            matches!(p.budget(100, 100, None, "prompt"), Err(ApiError::InvalidField { param, .. }) if param == "prompt")
        );
        let zero = GenParams::from_fields(&fields(serde_json::json!({})), Some(0), 4).expect("params");
        assert_eq!(zero.budget(100, 100, None, "prompt").ok(), Some(0), "echo scoring of a full context");
    }

    #[test]
    fn bad_sampling_values_name_their_field() {
        for (body, field) in [
            (serde_json::json!({"temperature": 3.0}), "temperature"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"n": 99}), "n"),
            (serde_json::json!({"stop": [""]}), "stop"),
            (serde_json::json!({"presence_penalty": 0.5}), "presence_penalty"),
        ] {
            match GenParams::from_fields(&fields(body.clone()), None, 4) {
                Err(ApiError::InvalidField { param, .. }) => assert_eq!(param, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn determinism_means_greedy_or_seeded() {
        let greedy =
            GenParams::from_fields(&fields(serde_json::json!({"temperature": 0})), None, 1).expect("p");
        let seeded = GenParams::from_fields(&fields(serde_json::json!({"seed": 3})), None, 1).expect("p");
        let random = GenParams::from_fields(&fields(serde_json::json!({})), None, 1).expect("p");
        assert!(greedy.deterministic() && seeded.deterministic() && !random.deterministic());
    }
}
