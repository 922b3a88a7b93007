//! One sequence in flight: its own KV cache, sampler, incremental detokenizer and stop strings,
//! and the events it sends. Text handling is `ferrotune_model::generate`'s (same `TextStream`,
//! same `StopFilter`), so a request served here produces what `generate` produces alone.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ferrotune_model::constrain::Constraint;
use ferrotune_model::generate::{StopFilter, TextStream};
use ferrotune_model::{KvCache, LoadedModel, Logits, Sampler};
use tokio::sync::mpsc::UnboundedSender;

use super::{Event, FinishReason, ModelInfo, Queued, ServedAdapter, TokenLogprob};

/// Output tokens a new sequence's KV cache has room for before it first grows.
const INITIAL_OUTPUT_CAPACITY: usize = 256;

pub(crate) struct Sequence<'t> {
    events: UnboundedSender<Event>,
    pub(crate) adapter: Option<Arc<ServedAdapter>>,
    pub(crate) cache: KvCache,
    /// The token to feed at the next decode step.
    pub(crate) next: u32,
    /// KV tokens reserved (prompt + max_tokens), returned to the budget when the sequence ends.
    pub(crate) reserved: usize,
    pub(crate) finished: bool,
    /// Steps in a row this sequence waited for a prefill chunk while others got one.
    pub(crate) prefill_skips: u32,
    /// Structured output: masks the logits before sampling. The worker computes the next mask
    /// while the decode step runs ([`Constraint::prepare`]), so it does not lengthen the step.
    pub(crate) constraint: Option<Constraint>,
    sampler: Sampler,
    /// Prompt and generated tokens (the repetition penalty looks at both).
    context: Vec<u32>,
    prompt_tokens: usize,
    /// Prompt tokens in the cache so far; below `prompt_tokens` while prefilling.
    prefilled: usize,
    /// Log-probabilities of prompt tokens 1.. gathered chunk by chunk (`prompt_logprobs`).
    prompt_lps: Option<Vec<TokenLogprob>>,
    /// Seconds from arrival to admission.
    queue_secs: f64,
    max_tokens: usize,
    generated: usize,
    stream: TextStream<'t>,
    stop: StopFilter,
    eos_ids: &'t [u32],
    ignore_eos: bool,
    logprobs: Option<usize>,
    /// A token event held back while the stop filter holds its text: if the sequence then ends
    /// on EOS, the held text is released in this event (the API has no text-only event).
    held: Option<(u32, String, Option<TokenLogprob>)>,
}

impl<'t> Sequence<'t> {
    /// Admit a request: check it and set up its state; nothing is computed yet (the prompt is
    /// prefilled a chunk per step by [`Sequence::prefill_step`]). Errors are messages for
    /// `Event::Error`.
    pub(crate) fn new(model: &LoadedModel, info: &'t ModelInfo, q: Queued) -> Result<Self, String> {
        let Queued { req, adapter } = q;
        let reserved = req.prompt.len() + req.max_tokens;
        if req.prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if let Some(bad) = req.prompt.iter().find(|&&id| id as usize >= info.vocab_size) {
            return Err(format!("token id {bad} is outside the vocabulary of {} tokens", info.vocab_size));
        }
        let sampler = Sampler::new(req.sampling.clone()).map_err(|e| e.to_string())?;
        // Preallocate for the prompt and a first stretch of output, not the whole reservation:
        // clients often ask for far more tokens than they get (the cache grows when needed).
        let cache =
            KvCache::new(model.config(), req.prompt.len() + req.max_tokens.min(INITIAL_OUTPUT_CAPACITY));
        let prompt_tokens = req.prompt.len();
        Ok(Sequence {
            events: req.events,
            adapter,
            cache,
            next: 0,
            reserved,
            finished: false,
            prefill_skips: 0,
            constraint: req.constraint,
            sampler,
            context: req.prompt,
            prompt_tokens,
            prefilled: 0,
            prompt_lps: req.prompt_logprobs.then(|| Vec::with_capacity(prompt_tokens - 1)),
            queue_secs: req.received.elapsed().as_secs_f64(),
            max_tokens: req.max_tokens,
            generated: 0,
            stream: TextStream::new(&info.tokenizer),
            stop: StopFilter::new(&req.stop),
            eos_ids: &info.eos_ids,
            ignore_eos: req.ignore_eos,
            logprobs: req.logprobs,
            held: None,
        })
    }

    /// Whether prompt tokens remain to be prefilled.
    pub(crate) fn prefilling(&self) -> bool {
        self.prefilled < self.prompt_tokens
    }

    /// Prompt tokens not yet prefilled.
    pub(crate) fn prefill_left(&self) -> usize {
        self.prompt_tokens - self.prefilled
    }

    /// The prompt's length in tokens (it picks the chunk size).
    pub(crate) fn prompt_len(&self) -> usize {
        self.prompt_tokens
    }

    /// Prefill the next `chunk` prompt tokens (the adapter, if any, is already attached); the
    /// logits are `[chunk, vocab]` at most, and prompt logprobs are taken from them before the
    /// next chunk. After the last chunk: send `Started` (and the prompt logprobs) and pick the
    /// first token.
    pub(crate) fn prefill_step(&mut self, model: &LoadedModel, chunk: usize) -> Result<(), String> {
        let (start, end) = (self.prefilled, (self.prefilled + chunk.max(1)).min(self.prompt_tokens));
        let last_chunk = end == self.prompt_tokens;
        let ids = Tensor::new(&self.context[start..end], &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| e.to_string())?;
        let which = match (self.prompt_lps.is_some(), last_chunk) {
            (true, _) => Logits::All,
            (false, true) => Logits::Last,
            // Earlier chunks only fill the cache.
            (false, false) => Logits::Hidden,
        };
        let out = model.model.forward(&ids, None, Some(&mut self.cache), which).map_err(|e| e.to_string())?;
        self.prefilled = end;
        let mut last = Vec::new();
        if let Some(lps) = self.prompt_lps.as_mut() {
            let rows = out.squeeze(0).map_err(|e| e.to_string())?;
            let k = self.logprobs.unwrap_or(0);
            // One row at a time: the chunk's `[n, vocab]` block as one Vec would double the peak.
            for (i, pos) in (start..end).enumerate() {
                let row = row_vec(&rows, i)?;
                if pos + 1 < self.prompt_tokens {
                    lps.push(token_logprob(&row, self.context[pos + 1], k));
                } else {
                    last = row;
                }
            }
        } else if last_chunk {
            last = row_vec(&out, 0)?;
        }
        if !last_chunk {
            return Ok(());
        }
        self.send(Event::Started { queue_secs: self.queue_secs, prompt_tokens: self.prompt_tokens });
        if let Some(lps) = self.prompt_lps.take() {
            self.send(Event::PromptLogprobs(lps));
        }
        if self.max_tokens == 0 {
            self.finish(FinishReason::Length);
        } else {
            self.accept(&last);
        }
        Ok(())
    }

    /// The client is gone (its receiver was dropped).
    pub(crate) fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Take one row of next-token logits: sample, emit, and decide whether the sequence ends.
    pub(crate) fn accept(&mut self, logits: &[f32]) {
        let id = match self.constraint.as_mut() {
            None => self.sampler.sample(logits, &self.context),
            Some(c) => {
                let mut masked = logits.to_vec();
                if let Err(e) = c.apply(&mut masked) {
                    return self.fail(e.to_string());
                }
                if masked.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return self.fail("the output constraint allows no token here".into());
                }
                let id = self.sampler.sample(&masked, &self.context);
                // EOS ends the sequence below; any other token moves the parse on.
                if !self.eos_ids.contains(&id)
                    && let Err(e) = c.advance(id)
                {
                    return self.fail(e.to_string());
                }
                id
            }
        };
        // Log-probabilities are the model's (before the mask, as before sampling settings).
        let lp = self.logprobs.map(|k| token_logprob(logits, id, k));
        if (!self.ignore_eos || self.constraint.is_some()) && self.eos_ids.contains(&id) {
            // As vLLM does: EOS is the generated token (no text, but listed with its logprob
            // and counted in usage). lm-evaluation-harness' `local-completions` asks for
            // `max_tokens: 1, echo: true` and drops the last logprob as the generated token;
            // with nothing generated it would drop a prompt token's instead.
            self.generated += 1;
            let rest = self.stop.flush();
            if let Some((_, text, _)) = self.held.as_mut() {
                text.push_str(&rest);
            }
            self.emit(id, String::new(), lp, false);
            self.finish(FinishReason::Stop);
            return;
        }
        self.generated += 1;
        self.context.push(id);
        let (mut text, hit) = match self.stream.push(id) {
            Ok(Some(piece)) => self.stop.push(&piece),
            Ok(None) => (String::new(), false),
            Err(e) => return self.fail(format!("detokenizing: {e}")),
        };
        if hit {
            self.emit(id, text, lp, false);
            self.finish(FinishReason::Stop);
        } else if self.generated >= self.max_tokens {
            text.push_str(&self.stop.flush());
            self.emit(id, text, lp, false);
            self.finish(FinishReason::Length);
        } else {
            self.emit(id, text, lp, self.stop.holding());
            self.next = id;
        }
    }

    /// Send a token event (after any held one); keep it back instead when `hold`.
    fn emit(&mut self, id: u32, text: String, lp: Option<TokenLogprob>, hold: bool) {
        if let Some((id, text, logprob)) = self.held.take() {
            self.send(Event::Token { id, text, logprob });
        }
        if hold {
            self.held = Some((id, text, lp));
        } else {
            self.send(Event::Token { id, text, logprob: lp });
        }
    }

    fn finish(&mut self, finish: FinishReason) {
        let rest = self.stop.flush();
        if let Some((id, mut text, logprob)) = self.held.take() {
            text.push_str(&rest);
            self.send(Event::Token { id, text, logprob });
        }
        self.send(Event::Done {
            finish,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
        });
        self.finished = true;
    }

    /// Its adapter was disabled: stop here, with what was generated so far.
    pub(crate) fn end_disabled(&mut self) {
        self.finish(FinishReason::Disabled);
    }

    pub(crate) fn fail(&mut self, message: String) {
        self.send(Event::Error(message));
        self.finished = true;
    }

    fn send(&mut self, e: Event) {
        if self.events.send(e).is_err() {
            // Receiver gone: nobody to generate for.
            self.finished = true;
        }
    }
}

/// Row `i` of `[n, vocab]` logits as f32.
pub(crate) fn row_vec(logits: &Tensor, i: usize) -> Result<Vec<f32>, String> {
    logits.get(i).and_then(|r| r.to_dtype(DType::F32)).and_then(|r| r.to_vec1()).map_err(|e| e.to_string())
}

/// Log-probability of `id` under `softmax(logits)` (the model's distribution, before sampling
/// settings — as OpenAI and vLLM report it), with the `k` most likely tokens.
pub(crate) fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let lp = |i: usize| logits.get(i).map_or(f32::NEG_INFINITY, |&l| l - lse);
    let mut top = Vec::new();
    if k > 0 {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        let k = k.min(idx.len());
        let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_by(by_logit);
        top = idx.into_iter().map(|i| (i as u32, lp(i))).collect();
    }
    TokenLogprob { id, logprob: lp(id as usize), top }
}
