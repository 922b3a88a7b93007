//! The serving engine: one thread owns the model and runs the loop; the HTTP layer talks to it
//! through a cheap, cloneable [`EngineHandle`].
//!
//! - `api`: the interface (requests, events, errors, stats, config).
//! - `worker`: the loop — admission from the bounded queue under the batch and KV budgets,
//!   prefill, one batched decode step per adapter group, cancellation, adapter loading.
//! - `sequence`: one sequence in flight — its KV cache, sampler, detokenizer, stop strings,
//!   logprobs and the events it sends.
//!
//! Requests wait in a `Mutex<VecDeque>` + `Condvar` rather than a channel: the loop must look at
//! the head of the queue (does its KV reservation fit?) without taking it, and `/metrics` wants the
//! exact number waiting.

mod api;
mod layout;
mod sequence;
mod worker;

#[cfg(test)]
mod tests;

pub use api::*;
pub use layout::pack_for_decode;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ferrotune_model::constrain::{ConstrainError, Grammars};
use ferrotune_model::{Adapter, ChatTemplate, LoadedModel, Message, ModelError, Tokenizer};

/// What the API layer needs to know about the served model (no tensors).
pub struct ModelInfo {
    /// The base model's name as clients address it (`model` field).
    pub name: String,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// Token ids that end a generation (unless `ignore_eos`).
    pub eos_ids: Vec<u32>,
    /// Prompt + completion tokens of one sequence at most: the engine's `max_model_len` (the
    /// model's context unless configured smaller).
    pub context_len: usize,
    /// Prompt tokens of one request at most (`max_prompt_tokens`).
    pub max_prompt_tokens: usize,
    /// Token ids must be below this (token-id prompts are checked against it).
    pub vocab_size: usize,
    /// The limits the engine runs under.
    pub config: EngineConfig,
    /// The structured-output compiler for this vocabulary, built on first use.
    grammars: std::sync::OnceLock<Result<Arc<Grammars>, ConstrainError>>,
}

impl ModelInfo {
    /// Render a chat with the model's template, ready for generation; encode the result with
    /// [`ModelInfo::encode`]`(text, false)` (the template carries its own special tokens).
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let t = self.chat_template.as_ref().ok_or_else(|| {
            ModelError::Template(format!("{} has no chat template; use a plain prompt", self.name))
        })?;
        t.render(messages, add_generation_prompt)
    }

    /// Text → token ids; `add_bos` for plain prompts (BOS is added only if the model wants it).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, ModelError> {
        self.tokenizer.encode(text, add_bos)
    }

    /// Token ids → text (special tokens skipped), e.g. for `echo` of a token-id prompt.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true)
    }

    /// The text of one token as it appears in the output (for logprob listings).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The compiler of `response_format` schemas into token masks (built on the first request
    /// that asks for structured output: a fraction of a second on a 49k vocabulary).
    pub fn grammars(&self) -> Result<Arc<Grammars>, ConstrainError> {
        self.grammars
            .get_or_init(|| Grammars::new(&self.tokenizer, self.vocab_size, &self.eos_ids).map(Arc::new))
            .clone()
    }

    /// Whether a prompt of `len` tokens is within `max_prompt_tokens`.
    pub fn check_prompt(&self, len: usize) -> Result<(), SubmitError> {
        if len > self.max_prompt_tokens {
            return Err(SubmitError::PromptTooLong { prompt: len, limit: self.max_prompt_tokens });
        }
        Ok(())
    }
}

impl std::fmt::Debug for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelInfo")
            .field("name", &self.name)
            .field("context_len", &self.context_len)
            .field("vocab_size", &self.vocab_size)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("model", &self.info.name).field("stats", &self.stats()).finish()
    }
}

/// A PEFT adapter loaded for serving. Sequences hold an `Arc` to it, so unloading (which only
/// removes it from the name table) never pulls the weights from under a sequence in flight.
pub(crate) struct ServedAdapter {
    /// Unique for the engine's lifetime (a name may be unloaded and loaded again).
    pub(crate) id: u64,
    pub(crate) adapter: Adapter,
    /// Set by [`EngineHandle::disable_adapter`]: the loop ends every sequence holding this
    /// adapter at its next step, with [`FinishReason::Disabled`].
    pub(crate) disabled: AtomicBool,
}

/// A request accepted by `submit`, waiting for a slot.
pub(crate) struct Queued {
    pub(crate) req: GenRequest,
    pub(crate) adapter: Option<Arc<ServedAdapter>>,
}

impl Queued {
    /// KV tokens this sequence reserves while it runs.
    pub(crate) fn reservation(&self) -> usize {
        self.req.prompt.len() + self.req.max_tokens
    }
}

pub(crate) struct LoadCommand {
    pub(crate) name: String,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) waiting: VecDeque<Queued>,
    pub(crate) loads: Vec<LoadCommand>,
}

/// State shared by the handles and the engine thread.
pub(crate) struct Shared {
    pub(crate) cfg: EngineConfig,
    pub(crate) queue: Mutex<Queue>,
    /// Signalled on every submit and command (the loop sleeps on it when nothing runs).
    pub(crate) wake: Condvar,
    pub(crate) adapters: Mutex<BTreeMap<String, Arc<ServedAdapter>>>,
    pub(crate) running: AtomicUsize,
    pub(crate) kv_used: AtomicUsize,
    /// Loop iterations that did work (prefill chunks and/or a decode step), for tests and
    /// benchmarks that count steps rather than time.
    pub(crate) steps: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    /// False once the engine thread has exited.
    pub(crate) alive: AtomicBool,
    /// `true` when nothing runs or waits. `submit` sets it false under the queue lock; only the
    /// loop sets it true, after seeing both empty under that lock — so `drained` never resolves
    /// while an accepted request is still pending.
    pub(crate) idle: tokio::sync::watch::Sender<bool>,
    /// A fault a test asked for ([`Fault`]); 0 = none.
    #[cfg(feature = "fault-injection")]
    pub(crate) fault: std::sync::atomic::AtomicU8,
}

/// Faults tests inject into the engine thread (`fault-injection` feature: test builds only,
/// never the binary, and no request can reach it), to check what a dying engine does.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// The next adapter load panics (inside the loop's panic guard: the load fails, the engine
    /// lives on).
    PanicInAdapterLoad = 1,
    /// The loop panics outside any guard when it next takes work: the engine thread dies.
    KillEngineThread = 2,
}

#[cfg(feature = "fault-injection")]
impl Shared {
    /// Panics once if `fault` was injected.
    pub(crate) fn trip(&self, fault: Fault) {
        if self.fault.compare_exchange(fault as u8, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            panic!("injected fault: {fault:?}");
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a queue, a
/// name table) stays consistent, so serving goes on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Cheap to clone; all clones talk to the same engine thread. The thread exits when the last
/// handle is dropped (or after `begin_shutdown` once drained).
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    info: Arc<ModelInfo>,
}

/// Spawn the engine thread that owns `model`; `name` is the base model's name for clients.
/// Dense f32 weights are packed for few-row products first ([`pack_for_decode`]).
/// Settings that do not fit the model ([`EngineConfig::limits`]) are clamped to it with a
/// warning; the server checks them before starting (`startup::build_state`) and refuses them.
pub fn start(mut model: LoadedModel, name: String, cfg: EngineConfig) -> EngineHandle {
    let context = model.config().max_position_embeddings;
    let limits = cfg.limits(context).unwrap_or_else(|e| {
        tracing::warn!("[engine] {e}; using the model's context of {context} tokens");
        SequenceLimits { max_model_len: context, max_prompt_tokens: context }
    });
    match pack_for_decode(&mut model.model) {
        Ok(n) => tracing::debug!("packed {n} weights for batched decode"),
        // Unpacked weights still compute the same thing through gemm, only slower.
        Err(e) => tracing::warn!("could not pack the weights for batched decode ({e}); using gemm"),
    }
    let info = Arc::new(ModelInfo {
        name,
        tokenizer: model.tokenizer.clone(),
        chat_template: model.chat_template.clone(),
        eos_ids: model.eos_ids.clone(),
        context_len: limits.max_model_len,
        max_prompt_tokens: limits.max_prompt_tokens,
        vocab_size: model.config().vocab_size,
        config: cfg.clone(),
        grammars: std::sync::OnceLock::new(),
    });
    let (idle, _) = tokio::sync::watch::channel(true);
    let shared = Arc::new(Shared {
        cfg,
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        adapters: Mutex::new(BTreeMap::new()),
        running: AtomicUsize::new(0),
        kv_used: AtomicUsize::new(0),
        steps: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        alive: AtomicBool::new(true),
        idle,
        #[cfg(feature = "fault-injection")]
        fault: std::sync::atomic::AtomicU8::new(0),
    });
    let (s, i) = (shared.clone(), info.clone());
    let spawned =
        std::thread::Builder::new().name("ferrotune-engine".into()).spawn(move || worker::run(model, i, s));
    if let Err(e) = spawned {
        tracing::error!("could not start the engine thread: {e}");
        shared.alive.store(false, Ordering::SeqCst);
    }
    EngineHandle { shared, info }
}

impl EngineHandle {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Queue a request (never blocks). Events arrive on `req.events`.
    pub fn submit(&self, mut req: GenRequest) -> Result<(), SubmitError> {
        let s = &self.shared;
        if s.shutting_down.load(Ordering::SeqCst) || !s.alive.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let adapter = match req.adapter.as_deref() {
            None => None,
            Some(name) if name == self.info.name => {
                req.adapter = None;
                None
            }
            Some(name) => Some(
                lock(&s.adapters)
                    .get(name)
                    .cloned()
                    .ok_or_else(|| SubmitError::UnknownAdapter(name.to_string()))?,
            ),
        };
        self.info.check_prompt(req.prompt.len())?;
        // Both limits bound one sequence: the KV budget (shared) and max_model_len.
        let budget = s.cfg.kv_token_budget.min(self.info.context_len);
        if req.prompt.len() + req.max_tokens > budget {
            return Err(SubmitError::TooLarge {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                budget,
            });
        }
        let mut q = lock(&s.queue);
        if q.waiting.len() >= s.cfg.queue_capacity {
            return Err(SubmitError::QueueFull);
        }
        q.waiting.push_back(Queued { req, adapter });
        s.idle.send_replace(false);
        drop(q);
        s.wake.notify_one();
        Ok(())
    }

    /// Load or unload a LoRA adapter. Loading runs on the engine thread between steps (it needs
    /// the model's layer shapes). Unloading removes the name at once — new requests for it get
    /// `UnknownAdapter` — while sequences already running or queued with it finish normally
    /// (they hold the adapter); its memory is freed when the last one ends.
    pub async fn adapter(&self, cmd: AdapterCommand) -> Result<(), String> {
        match cmd {
            AdapterCommand::Unload { name } => match lock(&self.shared.adapters).remove(&name) {
                Some(_) => Ok(()),
                None => Err(format!("no adapter `{name}` is loaded")),
            },
            AdapterCommand::Load { name, dir } => {
                if name.is_empty() || name == self.info.name {
                    return Err(format!("`{name}` cannot name an adapter (empty, or the base model's name)"));
                }
                if lock(&self.shared.adapters).contains_key(&name) {
                    return Err(format!("an adapter named `{name}` is already loaded"));
                }
                if !self.shared.alive.load(Ordering::SeqCst) {
                    return Err("the engine has stopped".into());
                }
                let (reply, rx) = tokio::sync::oneshot::channel();
                lock(&self.shared.queue).loads.push(LoadCommand { name, dir, reply });
                self.shared.wake.notify_one();
                rx.await.unwrap_or_else(|_| Err("the engine stopped before loading the adapter".into()))
            }
        }
    }

    /// The kill switch: unload `name` (new requests for it get `UnknownAdapter`) and end the
    /// sequences already running or queued with it at the engine's next step, with
    /// [`FinishReason::Disabled`] and what they generated so far (unlike [`AdapterCommand::Unload`],
    /// which lets them finish). `false` when no adapter of that name is loaded.
    pub fn disable_adapter(&self, name: &str) -> bool {
        let Some(a) = lock(&self.shared.adapters).remove(name) else { return false };
        a.disabled.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        true
    }

    /// Names of the loaded adapters, sorted.
    pub fn adapters(&self) -> Vec<String> {
        lock(&self.shared.adapters).keys().cloned().collect()
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            running: s.running.load(Ordering::Relaxed),
            waiting: lock(&s.queue).waiting.len(),
            kv_used: s.kv_used.load(Ordering::Relaxed),
            kv_budget: s.cfg.kv_token_budget,
            adapters: self.adapters(),
        }
    }

    /// Refuse new requests (`ShuttingDown`); running and queued ones finish.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Resolves when nothing is running or waiting (at once if the engine is idle).
    pub async fn drained(&self) {
        let mut rx = self.shared.idle.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds `shared`.
        let _ = rx.wait_for(|idle| *idle).await;
    }

    /// Engine steps so far (iterations that prefilled a chunk or decoded).
    pub fn steps(&self) -> u64 {
        self.shared.steps.load(Ordering::SeqCst)
    }

    /// Whether the engine thread is running (for `/ready`).
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Resolves once the engine thread has exited (its exit guard clears `alive`, then wakes
    /// `idle`'s watchers), or at once if it never started.
    pub async fn stopped(&self) {
        let mut rx = self.shared.idle.subscribe();
        while self.is_alive() {
            if rx.changed().await.is_err() {
                // The sender lives in `shared`, which `self` holds: cannot happen.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Arrange for `fault` on the engine thread (tests only; see [`Fault`]).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, fault: Fault) {
        self.shared.fault.store(fault as u8, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}
