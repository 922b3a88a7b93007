//! One module per endpoint group; each handler validates its body, resolves the model, checks
//! the key's scope, and talks to the engine through [`crate::generation`].

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod models;

use serde::Serialize;

/// Everything that shapes a generated answer, hashed into the response-cache key.
#[derive(Serialize)]
pub(crate) struct CacheKey<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
    pub adapter: Option<&'a str>,
    /// Bumped on every adapter load / unload, so a reloaded adapter never serves stale answers.
    pub adapter_epoch: u64,
    pub prompts: Vec<&'a [u32]>,
    pub max_tokens: Vec<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub seed: Option<u64>,
    pub stop: &'a [String],
    pub n: usize,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    pub echo: bool,
}

impl<'a> CacheKey<'a> {
    pub fn new(
        endpoint: &'a str,
        target: &'a crate::generation::Target,
        epoch: u64,
        params: &'a crate::generation::GenParams,
        jobs: &'a [crate::generation::Job],
    ) -> Self {
        let s = &params.sampling;
        Self {
            endpoint,
            model: &target.name,
            adapter: target.adapter.as_deref(),
            adapter_epoch: epoch,
            prompts: jobs.iter().map(|j| j.prompt.as_slice()).collect(),
            max_tokens: jobs.iter().map(|j| j.max_tokens).collect(),
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            repetition_penalty: s.repetition_penalty,
            seed: params.seed_given.then_some(s.seed),
            stop: &params.stop,
            n: params.n,
            ignore_eos: params.ignore_eos,
            logprobs: jobs.first().and_then(|j| j.logprobs),
            echo: jobs.first().is_some_and(|j| j.prompt_logprobs),
        }
    }
}

/// Answer from the cache when the request is cacheable and its answer is there; counts the hit
/// or miss. The stored body gets a fresh `id` and `created`.
pub(crate) async fn cache_lookup(
    state: &crate::app::AppState,
    record: &crate::record::RequestRecord,
    target: &crate::generation::Target,
    key: Option<&str>,
    id_prefix: &str,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let key = key?;
    let labels = state.metrics.labels(target.adapter.as_deref());
    match state.cache.get(key).await {
        Some(v) => {
            state.metrics.cache_hits.get_or_create(&labels).inc();
            record.set_cached();
            let mut v = (*v).clone();
            v["id"] = crate::generation::new_id(id_prefix).into();
            v["created"] = crate::generation::now_unix().into();
            if let Some(u) = v.get("usage") {
                let tok = |k: &str| u.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
                record.add_tokens(tok("prompt_tokens"), tok("completion_tokens"));
            }
            Some(axum::Json(v).into_response())
        }
        None => {
            state.metrics.cache_misses.get_or_create(&labels).inc();
            None
        }
    }
}
