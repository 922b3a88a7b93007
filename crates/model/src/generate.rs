//! Text generation for one sequence: prefill, then decode with the KV cache, streaming text as
//! soon as it is valid UTF-8, stopping on EOS, stop strings or the token limit.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::constrain::Constraint;
use crate::error::{ModelError, Result};
use crate::llama::{KvCache, Llama, Logits};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Prompt tokens per forward pass in single-stream prefill ([`Llama::prefill`]): the attention
/// scores of a pass are `[heads, chunk, total]`, so memory stays bounded however long the prompt.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the stop string is not returned.
    pub stop: Vec<String>,
    /// Token ids that end generation (the model's EOS set).
    pub eos_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS token or stop string.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Turns a growing token list into text pieces without splitting multi-byte characters
/// (the prefix/read-offset scheme of HF text-generation-inference).
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    tokens: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, tokens: Vec::new(), prefix: 0, read: 0 }
    }

    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tokens.push(id);
        let before = self.tok.decode(&self.tokens[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.tokens[self.prefix..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let piece = now.get(before.len()..).map(str::to_string);
            self.prefix = self.read;
            self.read = self.tokens.len();
            Ok(piece)
        } else {
            Ok(None)
        }
    }
}

/// Holds back text that might be the start of a stop string.
pub struct StopFilter {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopFilter {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// The text so far, cut at a stop string once one was hit.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether some text is held back (a possible start of a stop string).
    pub fn holding(&self) -> bool {
        self.emitted < self.text.len()
    }

    /// Add text; returns (text safe to emit now, whether a stop string was hit).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        let search_from = floor_char_boundary(&self.text, search_from);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|i| search_from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            let out = self.text[self.emitted.min(at)..].to_string();
            self.emitted = at;
            return (out, true);
        }
        // Longest suffix of the text that is a proper prefix of a stop string stays held back.
        let mut hold = 0;
        for s in &self.stops {
            for n in (1..s.len()).rev() {
                if n > hold && s.is_char_boundary(n) && self.text.ends_with(&s[..n]) {
                    hold = n;
                    break;
                }
            }
        }
        let safe = floor_char_boundary(&self.text, self.text.len() - hold).max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    /// Release whatever is held back (the sequence ended without a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Generate from `prompt` token ids; `on_text` receives each piece of text as it is ready.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    generate_constrained(model, tok, prompt, params, None, on_text)
}

/// Pick the next token of a row: under a constraint, from the logits its mask leaves (EOS only
/// where the grammar accepts), and the constraint moves past it.
fn pick(
    sampler: &mut Sampler,
    row: &[f32],
    context: &[u32],
    constraint: Option<&mut Constraint>,
    eos_ids: &[u32],
) -> Result<u32> {
    let Some(c) = constraint else { return Ok(sampler.sample(row, context)) };
    let failed = |e: crate::constrain::ConstrainError| ModelError::InvalidSetting {
        field: "json_schema",
        reason: e.to_string(),
    };
    let mut masked = row.to_vec();
    c.apply(&mut masked).map_err(failed)?;
    let next = sampler.sample(&masked, context);
    if !eos_ids.contains(&next) {
        c.advance(next).map_err(failed)?;
    }
    Ok(next)
}

/// [`generate`] held to `constraint` (structured output), if any.
pub fn generate_constrained(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    mut constraint: Option<Constraint>,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidSetting { field: "prompt", reason: "is empty".into() });
    }
    let ctx = model.config().max_position_embeddings;
    if prompt.len() >= ctx {
        return Err(ModelError::InvalidSetting {
            field: "prompt",
            reason: format!("{} tokens leave no room in the model's {ctx}-token context", prompt.len()),
        });
    }
    let max_tokens = params.max_tokens.min(ctx - prompt.len());
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut cache = KvCache::new(model.config(), prompt.len() + max_tokens);
    let device = model.device().clone();
    let mut context = prompt.to_vec();
    let mut stream = TextStream::new(tok);
    let mut stop = StopFilter {
        stops: params.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
        text: String::new(),
        emitted: 0,
    };
    let mut generated = Vec::new();
    let mut finish = FinishReason::Length;

    let t0 = Instant::now();
    let mut logits = model.prefill(prompt, &mut cache, PREFILL_CHUNK)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..max_tokens {
        let row: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let next = pick(&mut sampler, &row, &context, constraint.as_mut(), &params.eos_ids)?;
        if params.eos_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        generated.push(next);
        context.push(next);
        if let Some(piece) = stream.push(next)? {
            let (out, hit) = stop.push(&piece);
            if !out.is_empty() {
                on_text(&out);
            }
            if hit {
                finish = FinishReason::Stop;
                break;
            }
        }
        if step + 1 == max_tokens {
            break;
        }
        let ids = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        logits = model.forward(&ids, None, Some(&mut cache), Logits::Last)?;
    }
    let rest = stop.flush();
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(Generation {
        text: stop.text,
        tokens: generated,
        finish,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

/// One row of a batched generation in progress.
struct Row<'a> {
    sampler: Sampler,
    context: Vec<u32>,
    stream: TextStream<'a>,
    stop: StopFilter,
    generated: Vec<u32>,
    finish: Option<FinishReason>,
    constraint: Option<Constraint>,
}

/// Generate for several prompts at once: the prompts are left-padded into one batch, prefilled in
/// chunks of [`PREFILL_CHUNK`] positions (attention scores and activations bounded per chunk, as
/// in [`generate`]), and decoded together with one KV cache (one `[b, 1]` step per token) until
/// every row has stopped. Each row gets its own sampler (same seed), stop strings and EOS check;
/// greedy output equals [`generate`] on the row alone (left padding is masked and RoPE positions
/// start after it). Time is shared: every row reports the batch's prefill and decode seconds.
pub fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
) -> Result<Vec<Generation>> {
    batch(model, tok, prompts, params, PREFILL_CHUNK, None)
}

/// [`generate_batch`] with every row held to its own copy of `constraint` (structured output).
pub fn generate_batch_constrained(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    constraint: Option<&Constraint>,
) -> Result<Vec<Generation>> {
    batch(model, tok, prompts, params, PREFILL_CHUNK, constraint)
}

/// [`generate_batch`] with the prefill chunk as a parameter (tests compare chunk sizes).
#[doc(hidden)]
pub fn generate_batch_chunked(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    chunk: usize,
) -> Result<Vec<Generation>> {
    batch(model, tok, prompts, params, chunk, None)
}

fn batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    chunk: usize,
    constraint: Option<&Constraint>,
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = model.config().max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::InvalidSetting {
            field: "prompt",
            reason: format!("prompt {i} of the batch is empty"),
        });
    }
    if longest >= ctx {
        return Err(ModelError::InvalidSetting {
            field: "prompt",
            reason: format!("a {longest}-token prompt leaves no room in the model's {ctx}-token context"),
        });
    }
    let max_tokens = params.max_tokens.min(ctx - longest);
    let pad_id = params.eos_ids.first().copied().unwrap_or(0);
    let b = prompts.len();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut flat = Vec::with_capacity(b * longest);
    for (p, &n) in prompts.iter().zip(&pads) {
        flat.extend(std::iter::repeat_n(pad_id, n));
        flat.extend_from_slice(p);
    }
    let stops: Vec<String> = params.stop.iter().filter(|s| !s.is_empty()).cloned().collect();
    let mut rows = prompts
        .iter()
        .map(|p| {
            Ok(Row {
                sampler: Sampler::new(params.sampling.clone())?,
                context: p.clone(),
                stream: TextStream::new(tok),
                stop: StopFilter { stops: stops.clone(), text: String::new(), emitted: 0 },
                generated: Vec::new(),
                finish: None,
                constraint: constraint.cloned(),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let device = model.device().clone();
    let mut cache = KvCache::new(model.config(), longest + max_tokens);
    let t0 = Instant::now();
    let ids = Tensor::from_vec(flat, (b, longest), &device)?;
    let mut logits = model.prefill_batch(&ids, Some(&pads), &mut cache, chunk.max(1))?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..max_tokens {
        let all: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let mut next_ids = vec![pad_id; b];
        for (r, (row, logits_row)) in rows.iter_mut().zip(&all).enumerate() {
            if row.finish.is_some() {
                continue;
            }
            let next =
                pick(&mut row.sampler, logits_row, &row.context, row.constraint.as_mut(), &params.eos_ids)?;
            if params.eos_ids.contains(&next) {
                row.finish = Some(FinishReason::Stop);
                continue;
            }
            row.generated.push(next);
            row.context.push(next);
            next_ids[r] = next;
            if let Some(piece) = row.stream.push(next)? {
                let (_, hit) = row.stop.push(&piece);
                if hit {
                    row.finish = Some(FinishReason::Stop);
                }
            }
        }
        if step + 1 == max_tokens || rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let ids = Tensor::from_vec(next_ids, (b, 1), &device)?;
        logits = model.forward(&ids, None, Some(&mut cache), Logits::Last)?;
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    Ok(rows
        .into_iter()
        .zip(prompts)
        .map(|(mut row, p)| {
            row.stop.flush();
            Generation {
                text: row.stop.text,
                tokens: row.generated,
                finish: row.finish.unwrap_or(FinishReason::Length),
                prompt_tokens: p.len(),
                prefill_secs,
                decode_secs,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut f = StopFilter {
            stops: stops.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            emitted: 0,
        };
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = f.push(p);
            out.push_str(&o);
            if hit {
                return (out, true, f.text);
            }
        }
        out.push_str(&f.flush());
        (out, false, f.text)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut_and_not_emitted() {
        let (out, hit, text) = run(&["\nUser:"], &["Hello", " there\nUs", "er: more"]);
        assert!(hit);
        assert_eq!(out, "Hello there");
        assert_eq!(text, "Hello there");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_is_not_a_stop() {
        let (out, hit, _) = run(&["STOP"], &["ab ST", "AR"]);
        assert!(!hit);
        assert_eq!(out, "ab STAR");
    }
}
