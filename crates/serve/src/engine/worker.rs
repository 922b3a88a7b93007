//! The engine loop. Each iteration (a step): load requested adapters; drop queued requests whose
//! client left; admit from the head of the queue while the batch has room and the KV budget
//! covers the request's prompt + max_tokens; prefill about one chunk of prompt tokens (chunked
//! prefill, see [`plan_prefill`]); then one decode step for every sequence past its prefill;
//! retire finished ones. Sequences join and leave between decode steps (continuous batching),
//! and a long prompt is prefilled across many steps, so the others keep decoding meanwhile
//! (vLLM's chunked prefill).
//!
//! Multi-LoRA: our `LinearAdapter` is attached per layer, not per row, so one forward pass runs
//! under one adapter. The running sequences are therefore grouped by adapter and each group gets
//! its own batched step (attach → step → detach): a base request and an adapter request still
//! advance in the same iteration, at the price of one pass over the base weights per group.
//! (Per-row LoRA — S-LoRA/Punica-style gathered B·A per row — would fold the groups into one
//! step; with few adapters in use at once the grouping costs little.)

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrotune_model::constrain::Constraint;
use ferrotune_model::{Adapter, KvCache, LoadedModel};

use super::sequence::{Sequence, row_vec};
use super::{LoadCommand, ModelInfo, Queued, ServedAdapter, Shared, lock};

/// Steps in a row a prefilling sequence may be passed over (shorter prompts went first and
/// filled the step) before it goes first.
const MAX_PREFILL_SKIPS: u32 = 4;

/// How often an idle loop looks whether every handle is gone.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Marks the engine stopped however the thread ends, failing whatever still waits, so callers
/// never hang on a dead engine.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.alive.store(false, Ordering::SeqCst);
        let mut q = lock(&s.queue);
        for w in q.waiting.drain(..) {
            let _ = w.req.events.send(super::Event::Error("the engine stopped".into()));
        }
        for l in q.loads.drain(..) {
            let _ = l.reply.send(Err("the engine stopped".into()));
        }
        s.running.store(0, Ordering::SeqCst);
        s.kv_used.store(0, Ordering::SeqCst);
        s.idle.send_replace(true);
    }
}

/// Which adapter is plugged into the model now (`None` = the base), so consecutive steps of one
/// group do not re-attach.
struct Attached(Option<u64>);

impl Attached {
    fn set(&mut self, model: &mut LoadedModel, want: Option<&Arc<ServedAdapter>>) {
        let id = want.map(|a| a.id);
        if self.0 == id {
            return;
        }
        // Detach first: `attach` only replaces the layers the new adapter targets.
        Adapter::detach(&mut model.model);
        if let Some(a) = want {
            a.adapter.attach(&mut model.model);
        }
        self.0 = id;
    }
}

pub(crate) fn run(mut model: LoadedModel, info: Arc<ModelInfo>, shared: Arc<Shared>) {
    let guard = ExitGuard(shared);
    let s = &guard.0;
    let info: &ModelInfo = &info;
    let mut running: Vec<Sequence<'_>> = Vec::new();
    let mut attached = Attached(None);
    let mut next_adapter_id = 0u64;
    loop {
        let Some((loads, admitted)) = take_work(s, running.len(), running_kv(&running)) else { return };
        #[cfg(feature = "fault-injection")]
        s.trip(super::Fault::KillEngineThread);
        for cmd in loads {
            attached.set(&mut model, None);
            next_adapter_id += 1;
            // Under the same guard as the steps: a panic while reading an adapter fails that
            // load, not the engine (a dead engine thread would leave the server up and useless).
            let result =
                catch_unwind(AssertUnwindSafe(|| load_adapter(&mut model, s, next_adapter_id, &cmd)))
                    .unwrap_or_else(|_| {
                        tracing::error!(adapter = %cmd.name, "loading the adapter panicked");
                        Err("internal error while loading the adapter (see the server log)".into())
                    });
            let _ = cmd.reply.send(result);
        }
        let iteration = catch_unwind(AssertUnwindSafe(|| {
            for q in admitted {
                let events = q.req.events.clone();
                match Sequence::new(&model, info, q) {
                    Ok(seq) => running.push(seq),
                    Err(e) => {
                        let _ = events.send(super::Event::Error(e));
                    }
                }
            }
            end_disabled(&mut running);
            publish(s, &running);
            let prefilled = prefill(&mut model, &mut attached, &mut running, &s.cfg);
            let decoded = decode(&mut model, &mut attached, &mut running);
            if prefilled || decoded {
                s.steps.fetch_add(1, Ordering::SeqCst);
            }
        }));
        if iteration.is_err() {
            // A bug, not a request's fault — but the loop must go on: fail what was in flight
            // (their caches may be half-updated) and start clean.
            tracing::error!("engine iteration panicked; failing {} running sequences", running.len());
            for seq in running.iter_mut() {
                seq.fail("internal error in the engine".into());
            }
            running.clear();
            attached = Attached(Some(u64::MAX));
            attached.set(&mut model, None);
        }
        running.retain(|seq| !seq.finished);
        publish(s, &running);
    }
}

/// End the sequences whose adapter was disabled ([`super::EngineHandle::disable_adapter`]).
fn end_disabled(running: &mut [Sequence<'_>]) {
    for seq in running.iter_mut() {
        if !seq.finished && seq.adapter.as_ref().is_some_and(|a| a.disabled.load(Ordering::SeqCst)) {
            seq.end_disabled();
        }
    }
}

fn running_kv(running: &[Sequence<'_>]) -> usize {
    running.iter().map(|s| s.reserved).sum()
}

/// Wait for work when idle; then take adapter loads and the requests that fit. `None` = exit
/// (every handle dropped, or shutting down with nothing left).
fn take_work(s: &Arc<Shared>, running: usize, mut kv_used: usize) -> Option<(Vec<LoadCommand>, Vec<Queued>)> {
    let mut q = lock(&s.queue);
    // Clients that left while queued: drop them before they cost a prefill.
    q.waiting.retain(|w| !w.req.events.is_closed());
    if running == 0 {
        while q.waiting.is_empty() && q.loads.is_empty() {
            s.running.store(0, Ordering::Relaxed);
            s.kv_used.store(0, Ordering::Relaxed);
            s.idle.send_replace(true);
            // The loop's own Arc is the last one: no handle can submit anything again.
            if Arc::strong_count(s) == 1 || s.shutting_down.load(Ordering::SeqCst) {
                return None;
            }
            q = s.wake.wait_timeout(q, IDLE_POLL).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            q.waiting.retain(|w| !w.req.events.is_closed());
        }
    }
    // Queued with an adapter disabled since: ended before they cost anything.
    q.waiting.retain(|w| {
        let disabled = w.adapter.as_ref().is_some_and(|a| a.disabled.load(Ordering::SeqCst));
        if disabled {
            let _ = w.req.events.send(super::Event::Done {
                finish: super::FinishReason::Disabled,
                prompt_tokens: w.req.prompt.len(),
                completion_tokens: 0,
            });
        }
        !disabled
    });
    let loads = std::mem::take(&mut q.loads);
    let mut admitted = Vec::new();
    // Admission costs nothing yet (prefill is scheduled per step), so all that fit go in.
    while let Some(head) = q.waiting.front() {
        let need = head.reservation();
        let room = running + admitted.len() < s.cfg.max_batch;
        let fits = kv_used + need <= s.cfg.kv_token_budget;
        if !room || !fits {
            break;
        }
        let Some(w) = q.waiting.pop_front() else { break };
        kv_used += need;
        admitted.push(w);
    }
    Some((loads, admitted))
}

/// One prefilling sequence as the step planner sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefillState {
    /// Prompt tokens not yet prefilled.
    pub(crate) left: usize,
    /// Its chunk size ([`super::EngineConfig::prefill_chunk`]).
    pub(crate) chunk: usize,
    /// Steps passed over in a row.
    pub(crate) skips: u32,
}

/// Which prefilling sequences (arrival order) get their next chunk this step, in order.
/// Shortest remainder first, so a short request's first token does not queue behind a long
/// prompt's chunks; each gets its whole next chunk (chunks start at multiples of the prompt's
/// chunk size, so its numerics never depend on the load); sequences are added until the step
/// holds `budget` tokens (one always goes). One passed over [`MAX_PREFILL_SKIPS`] times goes
/// first, so a stream of short prompts cannot starve a long one.
pub(crate) fn plan_prefill(waiting: &[PrefillState], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&i| (waiting[i].skips < MAX_PREFILL_SKIPS, waiting[i].left, i));
    let mut plan = Vec::new();
    let mut tokens = 0;
    for i in order {
        if tokens >= budget.max(1) {
            break;
        }
        plan.push(i);
        tokens += waiting[i].left.min(waiting[i].chunk.max(1));
    }
    plan
}

/// Prefill this step's chunks ([`plan_prefill`]); `true` if any ran.
fn prefill(
    model: &mut LoadedModel,
    attached: &mut Attached,
    running: &mut [Sequence<'_>],
    cfg: &super::EngineConfig,
) -> bool {
    for seq in running.iter_mut() {
        if !seq.finished && seq.prefilling() && seq.cancelled() {
            seq.finished = true;
        }
    }
    let idx: Vec<usize> =
        (0..running.len()).filter(|&i| !running[i].finished && running[i].prefilling()).collect();
    let waiting: Vec<PrefillState> = idx
        .iter()
        .map(|&i| {
            let s = &running[i];
            PrefillState {
                left: s.prefill_left(),
                chunk: cfg.prefill_chunk(s.prompt_len()),
                skips: s.prefill_skips,
            }
        })
        .collect();
    let plan = plan_prefill(&waiting, cfg.prefill_chunk_tokens);
    for (k, &i) in idx.iter().enumerate() {
        let seq = &mut running[i];
        seq.prefill_skips = if plan.contains(&k) { 0 } else { seq.prefill_skips.saturating_add(1) };
    }
    for &k in &plan {
        let seq = &mut running[idx[k]];
        attached.set(model, seq.adapter.as_ref());
        if let Err(e) = seq.prefill_step(model, waiting[k].chunk) {
            tracing::warn!("prefill failed: {e}");
            seq.fail(format!("prefill failed: {e}"));
        }
    }
    !plan.is_empty()
}

fn load_adapter(model: &mut LoadedModel, s: &Shared, id: u64, cmd: &LoadCommand) -> Result<(), String> {
    if lock(&s.adapters).contains_key(&cmd.name) {
        return Err(format!("an adapter named `{}` is already loaded", cmd.name));
    }
    #[cfg(feature = "fault-injection")]
    s.trip(super::Fault::PanicInAdapterLoad);
    let adapter = Adapter::load(&cmd.dir, &mut model.model).map_err(|e| e.to_string())?;
    let served = Arc::new(ServedAdapter { id, adapter, disabled: AtomicBool::new(false) });
    lock(&s.adapters).insert(cmd.name.clone(), served);
    tracing::info!(adapter = %cmd.name, dir = %cmd.dir.display(), "adapter loaded");
    Ok(())
}

/// One decode step for every sequence past its prefill, one batched step per adapter group;
/// `true` if any ran.
fn decode(model: &mut LoadedModel, attached: &mut Attached, running: &mut [Sequence<'_>]) -> bool {
    for seq in running.iter_mut() {
        if !seq.finished && seq.cancelled() {
            seq.finished = true;
        }
    }
    // Group by adapter id (base = 0, adapters count from 1), in a stable order.
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, seq) in running.iter().enumerate() {
        if !seq.finished && !seq.prefilling() {
            groups.entry(seq.adapter.as_ref().map_or(0, |a| a.id)).or_default().push(i);
        }
    }
    let any = !groups.is_empty();
    for rows in groups.values() {
        let Some(&first) = rows.first() else { continue };
        let adapter = running[first].adapter.clone();
        attached.set(model, adapter.as_ref());
        let ids: Vec<u32> = rows.iter().map(|&i| running[i].next).collect();
        let result = {
            let mut caches: Vec<&mut KvCache> = Vec::with_capacity(rows.len());
            let mut constraints: Vec<&mut Constraint> = Vec::new();
            // `rows` is increasing, so walking `running` once hands out disjoint borrows.
            let mut want = rows.iter().peekable();
            for (i, seq) in running.iter_mut().enumerate() {
                if want.peek() == Some(&&i) {
                    want.next();
                    caches.push(&mut seq.cache);
                    constraints.extend(seq.constraint.as_mut());
                }
            }
            if constraints.is_empty() {
                model.model.decode_step(&ids, &mut caches)
            } else {
                // Structured output: the masks for this step's logits depend only on the tokens
                // already taken, so they are computed on a thread of their own while the model
                // runs the step — the batch never waits for a grammar. An error is kept in the
                // constraint and reported by `accept`.
                std::thread::scope(|scope| {
                    scope.spawn(move || {
                        for c in constraints {
                            let _ = c.prepare();
                        }
                    });
                    model.model.decode_step(&ids, &mut caches)
                })
            }
        };
        match result {
            Ok(logits) => {
                for (r, &i) in rows.iter().enumerate() {
                    match row_vec(&logits, r) {
                        Ok(row) => running[i].accept(&row),
                        Err(e) => running[i].fail(e),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("decode step failed for {} sequences: {e}", rows.len());
                for &i in rows {
                    running[i].fail(format!("decode step failed: {e}"));
                }
            }
        }
    }
    any
}

/// Update the counters `/metrics` reads.
fn publish(s: &Shared, running: &[Sequence<'_>]) {
    let live: Vec<&Sequence<'_>> = running.iter().filter(|q| !q.finished).collect();
    s.running.store(live.len(), Ordering::Relaxed);
    s.kv_used.store(live.iter().map(|q| q.reserved).sum(), Ordering::Relaxed);
}
