//! Running the base model and each adapter over the same rows: batched greedy generation (rows
//! of similar prompt length share a batch and one KV cache) and teacher-forced loss on the
//! references.

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_data::{Record, RenderOptions, Renderer, Role, Turn, render_for_training};
use ferrotune_model::batch::{Example, loss_sum, make_batch};
use ferrotune_model::constrain::{Grammars, JsonFormat};
use ferrotune_model::{
    Adapter, FinishReason, GenerateParams, LoadedModel, Message, SamplingParams, generate_batch_constrained,
};

use crate::error::{EvalError, Result};
use crate::rows::EvalRow;

/// A model to evaluate: the base (no adapter) or the base with one LoRA adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSpec {
    pub name: String,
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    /// New tokens per answer at most.
    pub max_tokens: usize,
    /// Rows generated together in one batch.
    pub batch_size: usize,
    /// Also compute the teacher-forced loss of every reference.
    pub loss: bool,
    /// Decoding; the default (temperature 0) is greedy.
    pub sampling: SamplingParams,
    /// Structured output: every answer held to this JSON Schema / any JSON object
    /// (constrained decoding, as the server's `response_format`).
    pub output: Option<JsonFormat>,
}

/// What one system produced.
#[derive(Debug, Clone)]
pub struct SystemOutput {
    pub spec: SystemSpec,
    /// Per row, in row order.
    pub predictions: Vec<String>,
    pub finish: Vec<FinishReason>,
    pub generated_tokens: usize,
    /// Wall time of generation (prefill + decode) over all rows.
    pub generation_secs: f64,
    /// Per row: (sum of the reference tokens' negative log-likelihood in nats, token count).
    pub loss: Option<Vec<(f64, usize)>>,
}

impl SystemOutput {
    pub fn rows_per_sec(&self) -> f64 {
        self.predictions.len() as f64 / self.generation_secs.max(1e-9)
    }
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The model is loaded ([`crate::evaluate::run`]): `systems` will each run over `rows`.
    Loaded {
        model: &'a str,
        rows: usize,
        data: &'a std::path::Path,
        systems: usize,
    },
    Start {
        system: &'a str,
        phase: &'static str,
        total: usize,
    },
    Advance {
        done: usize,
    },
}

fn messages(turns: &[Turn]) -> Vec<Message> {
    turns.iter().map(|t| Message::new(t.role.as_str(), t.content.clone())).collect()
}

/// The prompt token ids of every row (chat template with the generation prompt).
pub fn prompt_ids(m: &LoadedModel, rows: &[EvalRow]) -> Result<Vec<Vec<u32>>> {
    rows.iter()
        .map(|r| {
            let text = m.render_chat(&messages(&r.prompt), true)?;
            Ok(m.tokenizer.encode(&text, false)?)
        })
        .collect()
}

/// Run every system over `rows`. The model's adapters are swapped in place: on return the model
/// carries no adapter.
pub fn run_systems(
    m: &mut LoadedModel,
    file: &str,
    rows: &[EvalRow],
    systems: &[SystemSpec],
    settings: &RunSettings,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<SystemOutput>> {
    if settings.batch_size == 0 {
        return Err(EvalError::InvalidOption { option: "--batch-size", reason: "must be at least 1".into() });
    }
    if settings.max_tokens == 0 {
        return Err(EvalError::InvalidOption { option: "--max-tokens", reason: "must be at least 1".into() });
    }
    let prompts = prompt_ids(m, rows)?;
    // Similar lengths batch together: less padding to compute.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let examples = if settings.loss { Some(loss_examples(m, file, rows)?) } else { None };
    let params = GenerateParams {
        max_tokens: settings.max_tokens,
        sampling: settings.sampling.clone(),
        stop: Vec::new(),
        eos_ids: m.eos_ids.clone(),
    };
    let constraint = match &settings.output {
        None => None,
        Some(format) => {
            let refused = |e: ferrotune_model::constrain::ConstrainError| EvalError::InvalidOption {
                option: "--json-schema",
                reason: e.to_string(),
            };
            let grammars = Grammars::new(&m.tokenizer, m.config().vocab_size, &m.eos_ids).map_err(refused)?;
            Some(grammars.compile(format).map_err(refused)?)
        }
    };
    let mut out = Vec::with_capacity(systems.len());
    for spec in systems {
        Adapter::detach(&mut m.model);
        if let Some(dir) = &spec.adapter {
            let adapter = Adapter::load(dir, &mut m.model).map_err(|e| EvalError::InvalidFile {
                path: dir.clone(),
                reason: format!("loading the adapter: {e}"),
            })?;
            adapter.attach(&mut m.model);
        }
        progress(Progress::Start { system: &spec.name, phase: "generate", total: rows.len() });
        let mut predictions = vec![String::new(); rows.len()];
        let mut finish = vec![FinishReason::Length; rows.len()];
        let mut generated_tokens = 0;
        let t0 = Instant::now();
        let mut done = 0;
        for chunk in order.chunks(settings.batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let gens =
                generate_batch_constrained(&m.model, &m.tokenizer, &batch, &params, constraint.as_ref())?;
            for (&i, g) in chunk.iter().zip(gens) {
                generated_tokens += g.tokens.len();
                predictions[i] = g.text;
                finish[i] = g.finish;
            }
            done += chunk.len();
            progress(Progress::Advance { done });
        }
        let generation_secs = t0.elapsed().as_secs_f64();
        let loss = match &examples {
            Some(ex) => {
                progress(Progress::Start { system: &spec.name, phase: "loss", total: rows.len() });
                let mut per_row = Vec::with_capacity(ex.len());
                for (i, e) in ex.iter().enumerate() {
                    let batch = make_batch(&[e], m.eos_ids.first().copied().unwrap_or(0), m.model.device())?;
                    let nll = loss_sum(&m.model, &batch)?;
                    per_row.push((nll.to_scalar::<f32>()? as f64, batch.n_targets));
                    progress(Progress::Advance { done: i + 1 });
                }
                Some(per_row)
            }
            None => None,
        };
        out.push(SystemOutput {
            spec: spec.clone(),
            predictions,
            finish,
            generated_tokens,
            generation_secs,
            loss,
        });
    }
    Adapter::detach(&mut m.model);
    Ok(out)
}

/// Each row as a training example whose only target is the reference answer (earlier assistant
/// turns are context, weight 0), so the loss is the reference's negative log-likelihood.
fn loss_examples(m: &LoadedModel, file: &str, rows: &[EvalRow]) -> Result<Vec<Example>> {
    let renderer = Renderer::from_model(m)?;
    let ctx = m.config().max_position_embeddings;
    rows.iter()
        .map(|r| {
            let mut turns: Vec<Turn> = r
                .prompt
                .iter()
                .map(|t| Turn { weight: (t.role == Role::Assistant).then_some(0), ..t.clone() })
                .collect();
            turns.push(Turn::new(Role::Assistant, r.reference.clone()));
            let rendered = render_for_training(
                &Record::chat(turns),
                &renderer,
                &RenderOptions { train_on_inputs: false },
            )?;
            if rendered.input_ids.len() > ctx {
                return Err(EvalError::InvalidRow {
                    file: file.to_string(),
                    line: r.line,
                    field: String::new(),
                    reason: format!(
                        "{} tokens with the reference exceed the model's {ctx}-token context",
                        rendered.input_ids.len()
                    ),
                });
            }
            Ok(Example { input_ids: rendered.input_ids, labels: rendered.labels })
        })
        .collect()
}
