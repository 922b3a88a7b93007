//! The engine's interface: what the HTTP layer submits and what comes back. The engine is one
//! loop on its own thread fed by a bounded queue; each request brings its own event channel.
//! (Interface fixed here; the loop lives in the sibling modules.)

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_model::SamplingParams;
use ferrotune_model::constrain::Constraint;

/// Engine limits.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sequences decoded together in one step at most.
    pub max_batch: usize,
    /// KV-cache budget in tokens over all running sequences (prompt + generated). A request
    /// whose prompt + max_tokens does not fit waits in the queue until running ones finish.
    pub kv_token_budget: usize,
    /// Requests waiting for a slot at most; beyond that `submit` answers `QueueFull` (503).
    pub queue_capacity: usize,
    /// Prompt + completion tokens of one sequence at most (vLLM's `max_model_len`). `None` =
    /// the model's context; larger than that is a start-up error.
    pub max_model_len: Option<usize>,
    /// Prompt tokens of one request at most; longer prompts get a 400 naming this limit.
    /// `None` = `max_model_len` (a prompt must still leave room for `max_tokens`, except an
    /// echo-scoring request with `max_tokens: 0`).
    pub max_prompt_tokens: Option<usize>,
    /// Prompt tokens prefilled per engine step over all new sequences, and per forward pass at
    /// most (chunked prefill): a prompt up to this long is prefilled in one step; no pass holds
    /// more than `[heads, chunk, context]` attention scores or `[chunk, vocab]` logits.
    pub prefill_chunk_tokens: usize,
    /// A prompt longer than `prefill_chunk_tokens` is prefilled this many tokens per step
    /// (at most `prefill_chunk_tokens`), after the shorter prompts and beside the running
    /// sequences' decode step: a step then costs about this many tokens of prefill, so a long
    /// prompt delays the others' next token (and a new request's first) by that much, not by
    /// its whole prefill. Smaller = lower latency for the others, slower long prefill.
    pub long_prefill_chunk_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            kv_token_budget: 65_536,
            queue_capacity: 256,
            max_model_len: None,
            max_prompt_tokens: None,
            prefill_chunk_tokens: 512,
            long_prefill_chunk_tokens: 16,
        }
    }
}

/// The per-sequence limits an [`EngineConfig`] gives a model with `context` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceLimits {
    pub max_model_len: usize,
    pub max_prompt_tokens: usize,
}

impl EngineConfig {
    /// Tokens per prefill pass for a prompt of `prompt` tokens.
    pub fn prefill_chunk(&self, prompt: usize) -> usize {
        let chunk = self.prefill_chunk_tokens.max(1);
        if prompt > chunk { self.long_prefill_chunk_tokens.clamp(1, chunk) } else { chunk }
    }

    /// Check the settings against the model's context (`Err` names the `[engine]` key).
    pub fn limits(&self, context: usize) -> Result<SequenceLimits, String> {
        if self.prefill_chunk_tokens == 0 || self.long_prefill_chunk_tokens == 0 {
            return Err("prefill_chunk_tokens and long_prefill_chunk_tokens must be positive".into());
        }
        let max_model_len = self.max_model_len.unwrap_or(context);
        if max_model_len == 0 || max_model_len > context {
            return Err(format!(
                "max_model_len {max_model_len} must be between 1 and the model's context of {context} tokens"
            ));
        }
        let max_prompt_tokens = self.max_prompt_tokens.unwrap_or(max_model_len);
        if max_prompt_tokens == 0 || max_prompt_tokens > max_model_len {
            return Err(format!(
                "max_prompt_tokens {max_prompt_tokens} must be between 1 and max_model_len ({max_model_len})"
            ));
        }
        Ok(SequenceLimits { max_model_len, max_prompt_tokens })
    }
}

/// One completion to generate (the API layer submits `n` of these for `n > 1`).
#[derive(Debug)]
pub struct GenRequest {
    /// Adapter name; `None` = the base model.
    pub adapter: Option<String>,
    pub prompt: Vec<u32>,
    /// New tokens at most (already bounded by the context by the caller).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these (not returned).
    pub stop: Vec<String>,
    /// Report the log-probability of each generated token and this many top alternatives
    /// (`Some(0)` = only the chosen token's).
    pub logprobs: Option<usize>,
    /// Also report the log-probability of every prompt token after the first (for `echo`).
    pub prompt_logprobs: bool,
    /// Ignore EOS (generate until max_tokens or a stop string). Not under a `constraint`: EOS
    /// then ends the output where the grammar allows it.
    pub ignore_eos: bool,
    /// Structured output: the mask of this grammar is applied to every step's logits before
    /// sampling (its own parse state per sequence).
    pub constraint: Option<Constraint>,
    /// When the request entered the server (queue time is measured from here).
    pub received: Instant,
    /// Where events go. A closed receiver (client gone) cancels the sequence.
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// Log-probability of a token, with the top alternatives at that position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a sequence ended: the model's reasons (`ferrotune_model::FinishReason`), or the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS token or stop string.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    /// Its adapter was disabled while it ran (the registry's kill switch): generation stopped
    /// at the next step, and what was generated so far is returned.
    Disabled,
}

impl FinishReason {
    /// As `finish_reason` in OpenAI responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Disabled => "disabled",
        }
    }
}

impl From<ferrotune_model::FinishReason> for FinishReason {
    fn from(f: ferrotune_model::FinishReason) -> Self {
        match f {
            ferrotune_model::FinishReason::Stop => Self::Stop,
            ferrotune_model::FinishReason::Length => Self::Length,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The sequence left the queue and its prompt was prefilled.
    Started { queue_secs: f64, prompt_tokens: usize },
    /// Prompt tokens 1.. (sent once, before tokens, when `prompt_logprobs`).
    PromptLogprobs(Vec<TokenLogprob>),
    /// One generated token and the text it completes (may be empty while a multi-byte
    /// character or a possible stop string is held back).
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// Last event of a sequence.
    Done { finish: FinishReason, prompt_tokens: usize, completion_tokens: usize },
    /// The sequence failed; last event.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full; retry later")]
    QueueFull,
    #[error("unknown model or adapter `{0}`")]
    UnknownAdapter(String),
    #[error("prompt of {prompt} tokens + max_tokens {max_tokens} exceeds the KV budget of {budget} tokens")]
    TooLarge { prompt: usize, max_tokens: usize, budget: usize },
    #[error("the prompt is {prompt} tokens; this server's max_prompt_tokens is {limit}")]
    PromptTooLong { prompt: usize, limit: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A snapshot for `/metrics` and `/ready`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    /// KV tokens reserved by running sequences, and the budget.
    pub kv_used: usize,
    pub kv_budget: usize,
    pub adapters: Vec<String>,
}

/// Runtime adapter management.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterCommand {
    Load { name: String, dir: PathBuf },
    Unload { name: String },
}
