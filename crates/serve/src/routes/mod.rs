//! One module per endpoint group; each handler validates its body, resolves the model, checks
//! the key's scope, and talks to the engine through [`crate::generation`]. Chat and completions
//! go through the same steps ([`pipeline`]); their answers' cache key is built here.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod models;
pub(crate) mod pipeline;
pub mod tokenize;

use ferrotune_model::SamplingParams;
use serde::Serialize;

use crate::generation::{GenParams, Job, Target};
use crate::response::Source;

/// Everything that shapes a generated answer, hashed into the response-cache key.
#[derive(Serialize)]
pub(crate) struct CacheKey<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
    pub adapter: Option<&'a str>,
    /// The weights, not just their names ([`crate::cache::WeightsIdentity`]): a retrained
    /// adapter loaded under an old name, or another replica's other weights, never share entries.
    pub base_sha256: &'a str,
    pub adapter_sha256: Option<&'a str>,
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
    /// Structured output: the grammar the answer was held to.
    pub response_format: Option<&'a ferrotune_model::constrain::JsonFormat>,
    /// Grounded chat: the sources the answer carries (their scores change with the knowledge
    /// base even when the chunks in the prompt do not).
    pub sources: Option<&'a [Source]>,
    /// The output guards' modes for this model and key: they change the answer's text and its
    /// `guards` list. (The input guards change the prompt — the canary, dropped chunks — or
    /// refuse the request, so the prompt and `sources` already cover them.)
    pub output_guards: Option<crate::guards::OutputGuardKey>,
}

impl<'a> CacheKey<'a> {
    /// `weights`: [`crate::cache::WeightsIdentity::of`] for the target.
    pub fn new(
        endpoint: &'a str,
        target: &'a Target,
        weights: &'a (String, Option<String>),
        params: &'a GenParams,
        jobs: &'a [Job],
    ) -> Self {
        // Taken apart field by field so that a new parameter does not compile until it is either
        // in the key or said here to leave the answer as it is.
        let GenParams {
            max_tokens: _, // as resolved per prompt, in `jobs`
            sampling,
            seed_given,
            stop,
            n,
            ignore_eos,
            stream: _,        // streamed answers are never cached
            include_usage: _, // streams only
            format,
            constraint: _, // compiled from `format`
        } = params;
        let SamplingParams { temperature, top_p, top_k, repetition_penalty, seed } = sampling;
        Self {
            endpoint,
            model: &target.name,
            adapter: target.adapter.as_deref(),
            base_sha256: &weights.0,
            adapter_sha256: weights.1.as_deref(),
            prompts: jobs.iter().map(|j| j.prompt.as_slice()).collect(),
            max_tokens: jobs.iter().map(|j| j.max_tokens).collect(),
            temperature: *temperature,
            top_p: *top_p,
            top_k: *top_k,
            repetition_penalty: *repetition_penalty,
            // Without a given seed only greedy requests are cached, and greedy ignores the seed.
            seed: seed_given.then_some(*seed),
            stop,
            n: *n,
            ignore_eos: *ignore_eos,
            logprobs: jobs.first().and_then(|j| j.logprobs),
            echo: jobs.first().is_some_and(|j| j.prompt_logprobs),
            response_format: format.as_ref(),
            sources: None,
            output_guards: None,
        }
    }
}

/// A cacheable request's key, with the weights it was computed for.
pub(crate) struct Cacheable {
    pub key: String,
    weights: (String, Option<String>),
}

impl Cacheable {
    /// `None` = not cacheable: streamed, sampled without a seed, cache off, or the adapter's
    /// digest not known right now (loading or unloading). `echo`: completions' flag (it shapes
    /// the text too); `sources`: grounded chat's; `output_guards`: the request's output guard
    /// modes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: &crate::app::AppState,
        endpoint: &str,
        target: &Target,
        params: &GenParams,
        jobs: &[Job],
        echo: bool,
        sources: Option<&[Source]>,
        output_guards: crate::guards::OutputGuardKey,
    ) -> Option<Self> {
        if params.stream || !params.deterministic() || !state.cache.enabled() {
            return None;
        }
        let weights = state.weights.of(target.adapter.as_deref())?;
        let mut k = CacheKey::new(endpoint, target, &weights, params, jobs);
        k.echo |= echo;
        k.sources = sources;
        k.output_guards = Some(output_guards);
        let key = crate::cache::key_of(&k);
        Some(Self { key, weights })
    }

    /// Store the answer — unless the adapter was swapped while it was generated (the answer may
    /// then come from other weights than the key names).
    pub fn store(self, state: &crate::app::AppState, target: &Target, body: &impl Serialize) {
        if state.weights.of(target.adapter.as_deref()).as_ref() != Some(&self.weights) {
            return;
        }
        match serde_json::to_value(body) {
            Ok(v) => state.cache.put(self.key, v),
            Err(e) => tracing::error!("response cache: could not serialize an answer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn params(body: Value) -> GenParams {
        let f: crate::openai::SamplingFields = serde_json::from_value(body).expect("fields");
        GenParams::from_fields(&f, None, 8).expect("params")
    }

    fn job(prompt: &[u32], max_tokens: usize, logprobs: Option<usize>, prompt_logprobs: bool) -> Job {
        Job { prompt: prompt.to_vec(), max_tokens, logprobs, prompt_logprobs }
    }

    #[test]
    fn every_field_that_shapes_the_answer_changes_the_cache_key() {
        let target = Target { name: "m".into(), adapter: None, version: None };
        let adapter = Target { name: "a".into(), adapter: Some("a".into()), version: None };
        let weights = ("base".to_string(), None);
        let base = json!({"temperature": 0.5, "seed": 1});
        let key = |t: &Target,
                   w: &(String, Option<String>),
                   body: Value,
                   jobs: &[Job],
                   endpoint: &str,
                   sources: Option<&[Source]>| {
            let p = params(body);
            let mut k = CacheKey::new(endpoint, t, w, &p, jobs);
            k.sources = sources;
            crate::cache::key_of(&k)
        };
        let std_jobs = [job(&[1, 2, 3], 8, None, false)];
        let guarded = |pii: ferrotune_guard::GuardMode, leak_min_words: usize| {
            let p = params(base.clone());
            let mut k = CacheKey::new("chat", &target, &weights, &p, &std_jobs);
            k.output_guards = Some(crate::guards::OutputGuardKey {
                output_pii: pii,
                system_prompt_leak: ferrotune_guard::GuardMode::Log,
                leak_min_words,
            });
            crate::cache::key_of(&k)
        };
        let plain = |body: Value, jobs: &[Job]| key(&target, &weights, body, jobs, "chat", None);
        let reference = plain(base.clone(), &std_jobs);
        assert_eq!(reference, plain(base.clone(), &std_jobs), "a key is a function of its inputs");
        let with = |extra: Value| {
            let mut b = base.clone();
            for (k, v) in extra.as_object().cloned().unwrap_or_default() {
                b[k] = v;
            }
            b
        };
        let sources = [Source {
            index: None,
            doc_id: "x".into(),
            start_char: 0,
            end_char: 1,
            score: 1.0,
            flagged: None,
            dropped: None,
            reason: None,
        }];
        let formatted = |format: ferrotune_model::constrain::JsonFormat| {
            let mut p = params(base.clone());
            p.format = Some(format);
            crate::cache::key_of(&CacheKey::new("chat", &target, &weights, &p, &std_jobs))
        };
        let variants = [
            ("response_format json_object", formatted(ferrotune_model::constrain::JsonFormat::JsonObject)),
            (
                "response_format json_schema",
                formatted(ferrotune_model::constrain::JsonFormat::JsonSchema {
                    schema: json!({"type": "array"}),
                }),
            ),
            ("temperature", plain(with(json!({"temperature": 0.7})), &std_jobs)),
            ("top_p", plain(with(json!({"top_p": 0.9})), &std_jobs)),
            ("top_k", plain(with(json!({"top_k": 5})), &std_jobs)),
            ("repetition_penalty", plain(with(json!({"repetition_penalty": 1.2})), &std_jobs)),
            ("seed", plain(with(json!({"seed": 2})), &std_jobs)),
            ("stop", plain(with(json!({"stop": ["x"]})), &std_jobs)),
            ("n", plain(with(json!({"n": 2})), &std_jobs)),
            ("ignore_eos", plain(with(json!({"ignore_eos": true})), &std_jobs)),
            ("prompt", plain(base.clone(), &[job(&[1, 2, 4], 8, None, false)])),
            ("max_tokens", plain(base.clone(), &[job(&[1, 2, 3], 9, None, false)])),
            ("logprobs", plain(base.clone(), &[job(&[1, 2, 3], 8, Some(0), false)])),
            ("top_logprobs", plain(base.clone(), &[job(&[1, 2, 3], 8, Some(2), false)])),
            ("echo", plain(base.clone(), &[job(&[1, 2, 3], 8, None, true)])),
            ("endpoint", key(&target, &weights, base.clone(), &std_jobs, "completions", None)),
            ("sources", key(&target, &weights, base.clone(), &std_jobs, "chat", Some(&sources))),
            ("base weights", key(&target, &("other".into(), None), base.clone(), &std_jobs, "chat", None)),
            (
                "adapter",
                key(&adapter, &("base".into(), Some("d1".into())), base.clone(), &std_jobs, "chat", None),
            ),
            (
                "adapter weights",
                key(&adapter, &("base".into(), Some("d2".into())), base.clone(), &std_jobs, "chat", None),
            ),
            ("output guards", guarded(ferrotune_guard::GuardMode::Redact, 12)),
            ("output_pii mode", guarded(ferrotune_guard::GuardMode::Block, 12)),
            ("leak_min_words", guarded(ferrotune_guard::GuardMode::Block, 8)),
        ];
        let mut seen = std::collections::HashSet::from([reference]);
        for (what, k) in &variants {
            assert!(seen.insert(k.clone()), "{what} did not change the key");
        }
    }
}
