//! What chat and completions share, in the order they do it. [`Generation::start`] reads the
//! body, names the model in the request's record, refuses the OpenAI fields this server cannot
//! honour, resolves the model against the key's scope (loading a registry version on first use)
//! and sets up the request's guards. The handler then reads its own fields and builds its
//! prompts, with [`Generation::params`] for the sampling settings both take. Then
//! [`Generation::cached`] answers from the response cache; [`Generation::submit`] checks the
//! request's size and the key's limits and queues one sequence per (prompt, choice); the answer
//! is streamed ([`Generation::stream`]) or collected ([`Generation::collect`]), and
//! [`Generation::respond`] caches it and sends it with the guards' list.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::Event;
use crate::error::ApiError;
use crate::generation::{
    ChoiceOut, GenParams, Job, Target, Tracker, collect_all, new_id, now_unix, resolve_for_generation, submit,
};
use crate::guards::{Acted, RequestGuards};
use crate::json;
use crate::openai::{SamplingFields, response_format};
use crate::record::RequestRecord;
use crate::response::{ChatCompletionResponse, CompletionResponse, Source, Usage};
use crate::routes::Cacheable;
use crate::stream::{ChunkKind, StreamSpec, sse_response};

/// A request body that generates: chat's or completions'.
pub(crate) trait GenerationBody: DeserializeOwned {
    /// The endpoint's name in response-cache keys.
    const NAME: &'static str;
    /// The prefix of response ids (`chatcmpl-…`, `cmpl-…`).
    const ID_PREFIX: &'static str;
    const CHUNKS: ChunkKind;
    /// The whole (not streamed) answer.
    type Answer: Answer;

    fn model(&self) -> &str;

    /// A 400 naming the first field this server cannot honour ([`crate::openai::refuse_unsupported`]);
    /// `body`: the raw request.
    fn refuse_unsupported(&self, body: &[u8]) -> Result<(), ApiError>;
}

/// A whole answer, as the response cache keeps it and gives it back.
pub(crate) trait Answer: Serialize + DeserializeOwned {
    /// A cached answer sent again: this request's `id` and `created`.
    fn stamp(&mut self, id: &str, created: u64);
    fn usage(&self) -> Usage;
    /// Each choice's finish reason and text (chat's message; completions' text, with the prompt
    /// when the request echoed it), for the audit entry.
    fn choices(&self) -> Vec<(&str, &str)>;
    fn guards_mut(&mut self) -> &mut Option<Vec<Acted>>;
}

/// One chat or completions request on its way through the steps both share.
pub(crate) struct Generation<R> {
    pub state: AppState,
    pub caller: Caller,
    pub record: Arc<RequestRecord>,
    pub received: Instant,
    pub target: Target,
    pub guards: RequestGuards,
    /// The response's `id` and `created` (a cached answer gets them too).
    pub id: String,
    pub created: u64,
    /// Where the answer goes in the response cache, once [`Generation::cached`] found it
    /// cacheable.
    cacheable: Option<Cacheable>,
    body: PhantomData<fn() -> R>,
}

impl<R: GenerationBody> Generation<R> {
    /// The request and its sampling fields, read from `body`; the model resolved and allowed.
    pub async fn start(
        state: &AppState,
        caller: Caller,
        record: Arc<RequestRecord>,
        body: &[u8],
    ) -> Result<(Self, R, SamplingFields), ApiError> {
        let received = Instant::now();
        let req: R = json::parse(body)?;
        let fields: SamplingFields = json::parse(body)?;
        record.set_model(req.model());
        record.set_stream(fields.stream.unwrap_or(false));
        req.refuse_unsupported(body)?;
        let target = resolve_for_generation(state, &caller, &record, req.model()).await?;
        let guards = RequestGuards::new(state, &target, &caller, &record);
        let g = Self {
            state: state.clone(),
            caller,
            record,
            received,
            target,
            guards,
            id: new_id(R::ID_PREFIX),
            created: now_unix(),
            cacheable: None,
            body: PhantomData,
        };
        Ok((g, req, fields))
    }

    /// The sampling settings, with `response_format` compiled for this model.
    pub async fn params(
        &self,
        fields: &SamplingFields,
        max_tokens: Option<u32>,
        format: Option<&Value>,
    ) -> Result<GenParams, ApiError> {
        let mut params = GenParams::from_fields(fields, max_tokens, self.state.cfg.max_n)?;
        params.constrain(&self.state, response_format(format)?).await?;
        Ok(params)
    }

    /// The cached answer, when the request is cacheable and its answer is there (counted as a
    /// hit, with this request's `id`, `created` and `guards`). Otherwise the miss is counted
    /// and, if cacheable, the key kept for [`Generation::respond`]. `echo`: completions' flag;
    /// `sources`: grounded chat's.
    pub async fn cached(
        &mut self,
        params: &GenParams,
        jobs: &[Job],
        echo: bool,
        sources: Option<&[Source]>,
    ) -> Option<Response> {
        let key = self.guards.cache_key();
        self.cacheable = Cacheable::new(&self.state, R::NAME, &self.target, params, jobs, echo, sources, key);
        let key = self.cacheable.as_ref()?.key.as_str();
        let labels = self.state.metrics.labels(self.target.adapter.as_deref());
        let hit = self.state.cache.get(key).await.and_then(|v| {
            R::Answer::deserialize(v.as_ref())
                .inspect_err(|e| tracing::warn!("response cache: an entry of another shape ({e}); a miss"))
                .ok()
        });
        let Some(mut hit) = hit else {
            self.state.metrics.cache_misses.get_or_create(&labels).inc();
            return None;
        };
        self.state.metrics.cache_hits.get_or_create(&labels).inc();
        self.record.set_cached();
        hit.stamp(&self.id, self.created);
        let usage = hit.usage();
        self.record.add_tokens(usage.prompt_tokens, usage.completion_tokens);
        for (i, (finish, text)) in hit.choices().into_iter().enumerate() {
            self.record.set_choice(i, finish, Some(text));
        }
        // What the guards did to the cached answers happened again; the input's actions are
        // this request's own.
        let replayed = hit.guards_mut().take().unwrap_or_default();
        self.guards.replay(&replayed);
        *hit.guards_mut() = self.guards.all();
        Some(Json(hit).into_response())
    }

    /// Check the request's size and the key's limits, and queue its sequences (`n` per job).
    pub fn submit(
        &self,
        params: &GenParams,
        jobs: &[Job],
    ) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
        submit(&self.state, &self.caller, &self.record, &self.target, params, jobs, self.received)
    }

    /// The answer as server-sent events. `echo`: completions' prompt texts; `grounding`: chat's
    /// knowledge base and sources.
    pub fn stream(
        self,
        params: &GenParams,
        logprobs: bool,
        rxs: Vec<UnboundedReceiver<Event>>,
        echo: Option<Vec<String>>,
        grounding: Option<(String, Vec<Source>)>,
    ) -> Response {
        let trackers = (0..rxs.len())
            .map(|_| Tracker::new(&self.state, &self.target, self.received, &self.record))
            .collect();
        let spec = StreamSpec {
            kind: R::CHUNKS,
            id: self.id,
            created: self.created,
            model: self.target.name,
            n: params.n,
            logprobs,
            include_usage: params.include_usage,
            echo,
            grounding,
            guards: self.guards,
        };
        sse_response(spec, rxs, trackers, self.state.engine.clone(), self.record)
    }

    /// Every choice, read to the end (or a 504 at the request's deadline).
    pub async fn collect(&self, rxs: Vec<UnboundedReceiver<Event>>) -> Result<Vec<ChoiceOut>, ApiError> {
        collect_all(&self.state, &self.target, rxs, self.received, &self.record).await
    }

    /// Send the answer, with everything the guards did; cache it first (with only what they did
    /// to the answers) unless a guard ended one.
    pub fn respond(mut self, mut body: R::Answer) -> Response {
        if let Some(c) = self.cacheable.take().filter(|_| !self.guards.blocked_output()) {
            *body.guards_mut() = self.guards.answers();
            c.store(&self.state, &self.target, &body);
        }
        *body.guards_mut() = self.guards.all();
        Json(body).into_response()
    }
}

impl Answer for ChatCompletionResponse {
    fn stamp(&mut self, id: &str, created: u64) {
        self.id = id.to_string();
        self.created = created;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn choices(&self) -> Vec<(&str, &str)> {
        self.choices.iter().map(|c| (c.finish_reason.as_str(), c.message.content.as_str())).collect()
    }

    fn guards_mut(&mut self) -> &mut Option<Vec<Acted>> {
        &mut self.guards
    }
}

impl Answer for CompletionResponse {
    fn stamp(&mut self, id: &str, created: u64) {
        self.id = id.to_string();
        self.created = created;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn choices(&self) -> Vec<(&str, &str)> {
        self.choices.iter().map(|c| (c.finish_reason.as_str(), c.text.as_str())).collect()
    }

    fn guards_mut(&mut self) -> &mut Option<Vec<Acted>> {
        &mut self.guards
    }
}
