//! The engine's interface: what the HTTP layer submits and what comes back. The engine is one
//! loop on its own thread fed by a bounded queue; each request brings its own event channel.
//! (Interface fixed here; the loop lives in the sibling modules.)

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_model::{FinishReason, SamplingParams};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_batch: 32, kv_token_budget: 65_536, queue_capacity: 256 }
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
    /// Ignore EOS (generate until max_tokens or a stop string).
    pub ignore_eos: bool,
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
