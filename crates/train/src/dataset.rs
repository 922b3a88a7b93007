//! The examples a run trains and evaluates on: data files read, checked and rendered with the
//! model's chat template, too-long examples skipped, packed into sequences when asked, each
//! training row with the data file line(s) it came from.

use std::path::Path;

use ferrotune_data::{RenderOptions, Renderer};
use ferrotune_model::LoadedModel;

use crate::batch::{Example, Source};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// Read and render a data file: every invalid record is an error naming file and line. Returns
/// the examples, the line (Parquet: row) each came from, and how many were too long.
pub fn load_examples(
    path: &Path,
    renderer: &Renderer,
    opts: RenderOptions,
    max_len: usize,
) -> Result<(Vec<Example>, Vec<u64>, usize)> {
    let scanner = ferrotune_data::scan::Scanner::new(ferrotune_data::scan::ScanConfig::default());
    let mut records = Vec::new();
    let mut errors = Vec::new();
    scanner.scan_file(path, |row| {
        if row.has_error() {
            errors.extend(row.findings.iter().filter(|f| f.is_error()).map(|f| f.to_string()));
        } else if let Some(r) = row.record {
            records.push((r, row.line));
        }
        Ok(())
    })?;
    if !errors.is_empty() {
        let shown: Vec<String> = errors.iter().take(5).cloned().collect();
        return Err(TrainError::file(
            path,
            format!(
                "{} invalid record(s); run `ferrotune data validate` for the full report:\n  {}",
                errors.len(),
                shown.join("\n  ")
            ),
        ));
    }
    let mut examples = Vec::with_capacity(records.len());
    let mut lines = Vec::with_capacity(records.len());
    let mut too_long = 0;
    for (r, line) in &records {
        let rendered = ferrotune_data::render_for_training(r, renderer, &opts)?;
        if rendered.len() > max_len {
            too_long += 1;
            continue;
        }
        examples.push(Example { input_ids: rendered.input_ids, labels: rendered.labels });
        lines.push(*line);
    }
    Ok((examples, lines, too_long))
}

/// The rendered data a run trains and evaluates on.
pub(crate) struct TrainData {
    /// Training rows (packed sequences with `packing`).
    pub(crate) train: Vec<Example>,
    /// Each training row's data file line(s): the example(s) in it.
    pub(crate) sources: Vec<Vec<Source>>,
    pub(crate) eval: Vec<Example>,
    /// The pad token (EOS).
    pub(crate) pad: u32,
}

/// The run's training data (packed when asked) and evaluation data, rendered with the model's
/// chat template; training examples longer than `max_len` tokens are skipped with a warning.
pub(crate) fn load_data(cfg: &TrainConfig, m: &LoadedModel, max_len: usize) -> Result<TrainData> {
    let renderer = Renderer::from_model(m)?;
    let pad = renderer.eos_id();
    let render_opts = RenderOptions { train_on_inputs: cfg.train_on_inputs };
    let (train, lines, dropped) = load_examples(&cfg.data, &renderer, render_opts, max_len)?;
    if dropped > 0 {
        eprintln!("warning: skipped {dropped} training example(s) longer than max_seq_len={max_len} tokens");
    }
    if train.is_empty() {
        return Err(TrainError::file(&cfg.data, "no usable training examples"));
    }
    let (train, sources): (Vec<Example>, Vec<Vec<Source>>) = if cfg.packing {
        let n = train.len();
        let packed = crate::batch::pack_with_lines(train, &lines, max_len, cfg.seed);
        eprintln!("packing: {n} examples into {} sequences of at most {max_len} tokens", packed.len());
        packed.into_iter().unzip()
    } else {
        let sources = lines.iter().map(|&line| vec![Source { start: 0, line }]).collect();
        (train, sources)
    };
    let eval = match &cfg.eval_data {
        Some(p) => load_examples(p, &renderer, render_opts, max_len)?.0,
        None => Vec::new(),
    };
    Ok(TrainData { train, sources, eval, pad })
}
