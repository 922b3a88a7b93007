//! Batches of rendered examples, and the loss over their target tokens.
//!
//! Rows are right-padded (pad = EOS is safe: padding never carries loss, and causal attention
//! keeps pads from influencing earlier positions). The loss follows HF's shift — position `p`
//! predicts `labels[p + 1]` — and the LM head runs only on positions whose next label is a
//! target, so logits of masked positions are never materialised.

use candle_core::{D, DType, Device, Tensor};
use ferrotune_data::IGNORE_INDEX;
use ferrotune_model::{Llama, Logits};

use crate::error::Result;

/// One rendered training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; `IGNORE_INDEX` where masked.
    pub labels: Vec<i64>,
}

impl Example {
    /// Tokens that carry loss after the shift (every label but the first).
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Pack `examples` (in a seeded shuffled order) greedily into sequences of at most `max_len`
/// tokens; an example never straddles two packs. The first label of every example in a pack is
/// masked so no token is trained to predict the start of an unrelated example.
pub fn pack(examples: Vec<Example>, max_len: usize, seed: u64) -> Vec<Example> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut examples = examples;
    examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x7061_636b));
    let mut packs: Vec<Example> = Vec::new();
    let mut current = Example { input_ids: Vec::new(), labels: Vec::new() };
    for mut e in examples {
        if !current.input_ids.is_empty() && current.input_ids.len() + e.input_ids.len() > max_len {
            packs.push(std::mem::replace(&mut current, Example { input_ids: Vec::new(), labels: Vec::new() }));
        }
        if let Some(first) = e.labels.first_mut() {
            *first = IGNORE_INDEX;
        }
        current.input_ids.extend_from_slice(&e.input_ids);
        current.labels.append(&mut e.labels);
    }
    if !current.input_ids.is_empty() {
        packs.push(current);
    }
    packs
}

pub struct Batch {
    /// `[b, t]` u32
    pub ids: Tensor,
    /// Flat `b·t` indices of positions whose next token is a target.
    pub positions: Tensor,
    /// The target token of each of those positions.
    pub targets: Tensor,
    pub n_targets: usize,
    /// Real (non-pad) tokens in the batch.
    pub n_tokens: usize,
}

impl Batch {
    /// Rows `r0..r1` as a batch of their own (target positions re-based), for running a batch's
    /// row shares on several threads. `n_tokens` of a share is its padded size (rows × length):
    /// the per-row counts are not kept.
    pub fn rows(&self, r0: usize, r1: usize) -> Result<Batch> {
        let (_, t) = self.ids.dims2()?;
        let (lo, hi) = ((r0 * t) as u32, (r1 * t) as u32);
        let positions: Vec<u32> = self.positions.to_vec1()?;
        let targets: Vec<u32> = self.targets.to_vec1()?;
        let (positions, targets): (Vec<u32>, Vec<u32>) =
            positions.iter().zip(&targets).filter(|(p, _)| (lo..hi).contains(*p)).map(|(p, tg)| (p - lo, *tg)).unzip();
        let n_targets = targets.len();
        let device = self.ids.device();
        Ok(Batch {
            ids: self.ids.narrow(0, r0, r1 - r0)?,
            positions: Tensor::from_vec(positions, n_targets, device)?,
            targets: Tensor::from_vec(targets, n_targets, device)?,
            n_targets,
            n_tokens: (r1 - r0) * t,
        })
    }
}

pub fn make_batch(examples: &[&Example], pad_id: u32, device: &Device) -> Result<Batch> {
    let b = examples.len();
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut n_tokens = 0;
    for (row, e) in examples.iter().enumerate() {
        ids[row * t..row * t + e.input_ids.len()].copy_from_slice(&e.input_ids);
        n_tokens += e.input_ids.len();
        for p in 0..e.labels.len().saturating_sub(1) {
            let l = e.labels[p + 1];
            if l != IGNORE_INDEX {
                positions.push((row * t + p) as u32);
                targets.push(l as u32);
            }
        }
    }
    let n_targets = targets.len();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        positions: Tensor::from_vec(positions, n_targets, device)?,
        targets: Tensor::from_vec(targets, n_targets, device)?,
        n_targets,
        n_tokens,
    })
}

/// Sum (not mean) of the cross-entropy over the batch's targets, as a scalar tensor; callers
/// divide by the target count of the whole optimizer step, so gradient accumulation weighs every
/// token equally (transformers' `num_items_in_batch` behaviour).
pub fn loss_sum(model: &Llama, batch: &Batch) -> Result<Tensor> {
    loss_sum_with(model, batch, true)
}

/// [`loss_sum`] for evaluation: the head's cross-entropy gets a detached input, so it does not
/// take `∂h` (one head matmul per chunk) for a backward that never runs.
pub fn eval_loss_sum(model: &Llama, batch: &Batch) -> Result<Tensor> {
    loss_sum_with(model, batch, false)
}

fn loss_sum_with(model: &Llama, batch: &Batch, for_backward: bool) -> Result<Tensor> {
    if batch.n_targets == 0 {
        return Ok(Tensor::zeros((), DType::F32, model.device())?);
    }
    let hidden = model.forward(&batch.ids, None, None, Logits::Hidden)?;
    let (b, t, h) = hidden.dims3()?;
    let picked = hidden.reshape((b * t, h))?.index_select(&batch.positions, 0)?;
    let picked = if for_backward { picked } else { picked.detach() };
    // A frozen dense head (LoRA): chunked cross-entropy, the `[targets, vocab]` logits never
    // exist at once. Log-softmax in f32 whatever the model's dtype either way.
    if let Some(w) = model.frozen_head_weight() {
        return Ok(ferrotune_model::handoff::frozen_head_cross_entropy_sum(&picked, w, &batch.targets)?);
    }
    let logits = model.head(&picked)?.to_dtype(DType::F32)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let target_logit = logits.gather(&batch.targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((lse - target_logit)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluation's loss equals training's, without a graph behind it (with a LoRA adapter the
    /// training loss tracks the adapter's variables).
    #[test]
    fn eval_loss_equals_the_training_loss_without_a_graph() -> Result<()> {
        use ferrotune_model::config::{Family, ModelConfig};
        let dev = candle_core::Device::Cpu;
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &dev, 1)?;
        let mut model = Llama::load(&w, &cfg, ferrotune_model::WeightMode::F32, None)?;
        model.set_differentiable(true);
        let adapter = ferrotune_model::Adapter::init(&mut model, &ferrotune_model::LoraSpec::default(), 0)?;
        adapter.attach(&mut model);
        let e = ex(9, 3);
        let batch = make_batch(&[&e], 0, &dev)?;
        let train = loss_sum(&model, &batch)?;
        let eval = eval_loss_sum(&model, &batch)?;
        assert!(train.track_op() && !eval.track_op());
        let (a, b) = (train.to_scalar::<f32>()?, eval.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        Ok(())
    }

    fn ex(n: usize, tag: u32) -> Example {
        Example { input_ids: vec![tag; n], labels: (0..n).map(|i| if i < n / 2 { IGNORE_INDEX } else { i64::from(tag) }).collect() }
    }

    #[test]
    fn packing_fills_sequences_without_splitting_or_losing_examples() {
        let examples: Vec<Example> = (1..=10).map(|t| ex(3 + t as usize, t)).collect();
        let targets: usize = examples.iter().map(|e| e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()).sum();
        let packs = pack(examples.clone(), 20, 0);
        assert!(packs.len() < examples.len());
        assert!(packs.iter().all(|p| p.input_ids.len() <= 20 && p.input_ids.len() == p.labels.len()));
        let tokens: usize = packs.iter().map(|p| p.input_ids.len()).sum();
        assert_eq!(tokens, examples.iter().map(|e| e.input_ids.len()).sum::<usize>());
        // Example starts are masked (here they were already prompt tokens): targets unchanged.
        let packed_targets: usize = packs.iter().map(|p| p.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()).sum();
        assert_eq!(packed_targets, targets);
        // Every example is whole inside one pack: each run of a tag has the example's length.
        for p in &packs {
            let mut i = 0;
            while i < p.input_ids.len() {
                let t = p.input_ids[i];
                let run = p.input_ids[i..].iter().take_while(|&&x| x == t).count();
                assert_eq!(run, 3 + t as usize);
                assert_eq!(p.labels[i], IGNORE_INDEX, "first token of an example carries no loss");
                i += run;
            }
        }
        // An example longer than max_len stays alone (the loader has already dropped over-long ones).
        assert_eq!(pack(vec![ex(30, 1), ex(2, 2)], 20, 0).len(), 2);
    }
}
