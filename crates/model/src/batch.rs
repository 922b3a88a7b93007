//! Batches of rendered examples, and the loss over their target tokens.
//!
//! Rows are right-padded (pad = EOS is safe: padding never carries loss, and causal attention
//! keeps pads from influencing earlier positions). The loss follows HF's shift — position `p`
//! predicts `labels[p + 1]` — and the LM head runs only on positions whose next label is a
//! target, so logits of masked positions are never materialised.
//!
//! A batch also knows which example each target belongs to ([`Segment`]: its row and the data
//! file line it came from), so [`loss_sums`] can give each example's loss from the same forward
//! pass (the loss-spike signal, `ferrotune_train::spikes`).
//!
//! Training and evaluation (teacher-forced loss) both use it, so it lives here rather than in
//! the training crate.

use candle_core::{D, DType, Device, Tensor};

use crate::error::Result;
use crate::{Llama, Logits};

/// The label of a position that carries no loss: PyTorch's `CrossEntropyLoss` `ignore_index`,
/// the value HF collators write (and `ferrotune_data::IGNORE_INDEX`, which renders it: the data
/// crate sits above this one, so the constant is repeated; a test in the train crate checks
/// the two agree).
pub const IGNORE_INDEX: i64 = -100;

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

/// Where an example inside a training row starts (its first token) and the data file line (or
/// Parquet row) it was read from. A row holds one example, or several when packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub start: usize,
    pub line: u64,
}

/// Pack `examples` (in a seeded shuffled order) greedily into sequences of at most `max_len`
/// tokens; an example never straddles two packs. The first label of every example in a pack is
/// masked so no token is trained to predict the start of an unrelated example.
pub fn pack(examples: Vec<Example>, max_len: usize, seed: u64) -> Vec<Example> {
    let lines = vec![0; examples.len()];
    pack_with_lines(examples, &lines, max_len, seed).into_iter().map(|(e, _)| e).collect()
}

/// [`pack`], each pack with the [`Source`] of every example in it (`lines[i]`: where
/// `examples[i]` came from).
pub fn pack_with_lines(
    examples: Vec<Example>,
    lines: &[u64],
    max_len: usize,
    seed: u64,
) -> Vec<(Example, Vec<Source>)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut examples: Vec<(Example, u64)> =
        examples.into_iter().zip(lines.iter().copied().chain(std::iter::repeat(0))).collect();
    examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x7061_636b));
    let empty = || (Example { input_ids: Vec::new(), labels: Vec::new() }, Vec::new());
    let mut packs: Vec<(Example, Vec<Source>)> = Vec::new();
    let mut current = empty();
    for (mut e, line) in examples {
        if !current.0.input_ids.is_empty() && current.0.input_ids.len() + e.input_ids.len() > max_len {
            packs.push(std::mem::replace(&mut current, empty()));
        }
        if let Some(first) = e.labels.first_mut() {
            *first = IGNORE_INDEX;
        }
        current.1.push(Source { start: current.0.input_ids.len(), line });
        current.0.input_ids.extend_from_slice(&e.input_ids);
        current.0.labels.append(&mut e.labels);
    }
    if !current.0.input_ids.is_empty() {
        packs.push(current);
    }
    packs
}

/// One example's targets in a batch: its row, where it came from (`None` when the batch was made
/// without sources) and how many targets it has. A batch's segments follow the order of its
/// `positions`, so segment `i`'s targets are the `targets` after those of segments `..i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub row: usize,
    pub line: Option<u64>,
    pub targets: usize,
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
    /// The examples' targets, in order (one per row, or per packed example).
    pub segments: Vec<Segment>,
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
        let (positions, targets): (Vec<u32>, Vec<u32>) = positions
            .iter()
            .zip(&targets)
            .filter(|(p, _)| (lo..hi).contains(*p))
            .map(|(p, tg)| (p - lo, *tg))
            .unzip();
        let n_targets = targets.len();
        let device = self.ids.device();
        let segments = self
            .segments
            .iter()
            .filter(|s| (r0..r1).contains(&s.row))
            .map(|s| Segment { row: s.row - r0, ..*s })
            .collect();
        Ok(Batch {
            ids: self.ids.narrow(0, r0, r1 - r0)?,
            positions: Tensor::from_vec(positions, n_targets, device)?,
            targets: Tensor::from_vec(targets, n_targets, device)?,
            n_targets,
            n_tokens: (r1 - r0) * t,
            segments,
        })
    }
}

pub fn make_batch(examples: &[&Example], pad_id: u32, device: &Device) -> Result<Batch> {
    make_batch_from(examples, &[], pad_id, device)
}

/// [`make_batch`] whose segments carry each example's source: `sources[i]` lists the examples
/// packed into row `i` (a row without an entry is one example of unknown source).
pub fn make_batch_from(
    examples: &[&Example],
    sources: &[&[Source]],
    pad_id: u32,
    device: &Device,
) -> Result<Batch> {
    let b = examples.len();
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut n_tokens = 0;
    let mut segments: Vec<Segment> = Vec::new();
    for (row, e) in examples.iter().enumerate() {
        ids[row * t..row * t + e.input_ids.len()].copy_from_slice(&e.input_ids);
        n_tokens += e.input_ids.len();
        let src = sources.get(row).copied().unwrap_or_default();
        // The example a target belongs to is the one holding the label's token (`p + 1`).
        let mut k = 0;
        let mut seg = Segment { row, line: src.first().map(|s| s.line), targets: 0 };
        for p in 0..e.labels.len().saturating_sub(1) {
            while src.get(k + 1).is_some_and(|s| s.start <= p + 1) {
                k += 1;
                if seg.targets > 0 {
                    segments.push(seg);
                }
                seg = Segment { row, line: Some(src[k].line), targets: 0 };
            }
            let l = e.labels[p + 1];
            if l != IGNORE_INDEX {
                positions.push((row * t + p) as u32);
                targets.push(l as u32);
                seg.targets += 1;
            }
        }
        if seg.targets > 0 {
            segments.push(seg);
        }
    }
    let n_targets = targets.len();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        positions: Tensor::from_vec(positions, n_targets, device)?,
        targets: Tensor::from_vec(targets, n_targets, device)?,
        n_targets,
        n_tokens,
        segments,
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

/// [`loss_sum`] and each segment's share of it (the summed cross-entropy of its targets, in
/// the order of `batch.segments`), from the same forward pass.
///
/// The per-example sums cost no second pass: with a frozen head the chunked cross-entropy runs
/// once per segment on that segment's slice of the hidden states (the head's matmuls together
/// are the one over all targets, cut by row), and their sum is the loss backward runs on — its
/// gradient reaches each slice and the slices' gradients are added back into `[targets,
/// hidden]`, one zero-filled buffer and add per segment. With a trainable head the per-target
/// losses already exist and are summed per segment on the host. One read of the `[segments]`
/// sums per batch (the scalar loss was read anyway).
pub fn loss_sums(model: &Llama, batch: &Batch) -> Result<(Tensor, Vec<f32>)> {
    if batch.n_targets == 0 {
        return Ok((Tensor::zeros((), DType::F32, model.device())?, vec![0.0; batch.segments.len()]));
    }
    let picked = picked_hidden(model, batch)?;
    let segment_sums = |host: &[f32]| {
        let mut sums = Vec::with_capacity(batch.segments.len());
        let mut at = 0;
        for s in &batch.segments {
            sums.push(host[at..at + s.targets].iter().sum());
            at += s.targets;
        }
        sums
    };
    if let Some(w) = model.frozen_head_weight() {
        // One chunked head pass for the whole batch; its per-target losses come back with it.
        let (total, per_target) =
            crate::ops::loss::frozen_head_cross_entropy_rows(&picked, w, &batch.targets)?;
        return Ok((total, segment_sums(&per_target)));
    }
    let per_target = head_cross_entropy(model, &picked, batch)?;
    let host = per_target.detach().to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    Ok((per_target.sum_all()?, segment_sums(&host)))
}

/// The last hidden states at the batch's target positions, `[targets, hidden]`.
fn picked_hidden(model: &Llama, batch: &Batch) -> Result<Tensor> {
    let hidden = model.forward(&batch.ids, None, None, Logits::Hidden)?;
    let (b, t, h) = hidden.dims3()?;
    Ok(hidden.reshape((b * t, h))?.index_select(&batch.positions, 0)?)
}

/// Per-target cross-entropy through the model's (trainable) head, f32.
fn head_cross_entropy(model: &Llama, picked: &Tensor, batch: &Batch) -> Result<Tensor> {
    let logits = model.head(picked)?.to_dtype(DType::F32)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let target_logit = logits.gather(&batch.targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((lse - target_logit)?)
}

fn loss_sum_with(model: &Llama, batch: &Batch, for_backward: bool) -> Result<Tensor> {
    if batch.n_targets == 0 {
        return Ok(Tensor::zeros((), DType::F32, model.device())?);
    }
    let picked = picked_hidden(model, batch)?;
    let picked = if for_backward { picked } else { picked.detach() };
    // A frozen dense head (LoRA): chunked cross-entropy, the `[targets, vocab]` logits never
    // exist at once. Log-softmax in f32 whatever the model's dtype either way.
    if let Some(w) = model.frozen_head_weight() {
        return Ok(crate::ops::loss::frozen_head_cross_entropy_sum(&picked, w, &batch.targets)?);
    }
    Ok(head_cross_entropy(model, &picked, batch)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluation's loss equals training's, without a graph behind it (with a LoRA adapter the
    /// training loss tracks the adapter's variables).
    #[test]
    fn eval_loss_equals_the_training_loss_without_a_graph() -> Result<()> {
        use crate::config::{Family, ModelConfig};
        let dev = candle_core::Device::Cpu;
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = crate::testing::hf_init_random_weights(&cfg, &dev, 1)?;
        let mut model = Llama::load(&w, &cfg, crate::WeightMode::F32, None)?;
        model.set_differentiable(true);
        let adapter = crate::Adapter::init(&mut model, &crate::LoraSpec::default(), 0)?;
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

    fn tiny(method_full: bool) -> Result<(Llama, Vec<candle_core::Var>)> {
        use crate::config::{Family, ModelConfig};
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = crate::testing::hf_init_random_weights(&cfg, &Device::Cpu, 2)?;
        let mut model = Llama::load(&w, &cfg, crate::WeightMode::F32, None)?;
        model.set_differentiable(true);
        let vars = if method_full {
            model.make_trainable()?.into_iter().map(|(_, v)| v).collect()
        } else {
            let adapter = crate::Adapter::init(&mut model, &crate::LoraSpec::default(), 0)?;
            adapter.attach(&mut model);
            for (_, v) in &adapter.vars {
                v.set(&(v.as_tensor() + 0.01)?)?;
            }
            adapter.vars.iter().map(|(_, v)| v.clone()).collect()
        };
        Ok((model, vars))
    }

    fn varied(n: usize, tag: u32) -> Example {
        let ids: Vec<u32> = (0..n as u32).map(|i| (tag * 31 + i * 7) % 120 + 3).collect();
        Example {
            labels: ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < n / 3 { IGNORE_INDEX } else { i64::from(t) })
                .collect(),
            input_ids: ids,
        }
    }

    /// Each example's loss from `loss_sums` is its loss alone, they add up to `loss_sum`, and
    /// the gradient is `loss_sum`'s — with a frozen head (LoRA: the per-segment cross-entropy
    /// calls) and a trainable one (full fine-tuning: per-target losses summed on the host).
    #[test]
    fn per_example_losses_are_each_examples_loss_and_keep_the_gradient() -> Result<()> {
        for full in [false, true] {
            let (model, vars) = tiny(full)?;
            assert_eq!(model.frozen_head_weight().is_some(), !full);
            let rows = [varied(9, 1), varied(14, 2), varied(6, 3)];
            let refs: Vec<&Example> = rows.iter().collect();
            let src = [
                [Source { start: 0, line: 7 }],
                [Source { start: 0, line: 12 }],
                [Source { start: 0, line: 30 }],
            ];
            let srcs: Vec<&[Source]> = src.iter().map(|s| s.as_slice()).collect();
            let batch = make_batch_from(&refs, &srcs, 0, &Device::Cpu)?;
            assert_eq!(
                batch.segments.iter().map(|s| (s.row, s.line, s.targets)).collect::<Vec<_>>(),
                vec![(0, Some(7), 6), (1, Some(12), 10), (2, Some(30), 4)]
            );
            let (total, per) = loss_sums(&model, &batch)?;
            let whole = loss_sum(&model, &batch)?;
            let (t, w) = (total.to_scalar::<f32>()?, whole.to_scalar::<f32>()?);
            assert!((t - w).abs() < 1e-4 * w.abs(), "{t} vs {w}");
            assert!((per.iter().sum::<f32>() - w).abs() < 1e-4 * w.abs());
            for (e, p) in rows.iter().zip(&per) {
                let alone = loss_sum(&model, &make_batch(&[e], 0, &Device::Cpu)?)?.to_scalar::<f32>()?;
                assert!((alone - p).abs() < 1e-4 * alone.abs(), "full {full}: {p} vs alone {alone}");
            }
            let (g1, g2) = (total.backward()?, whole.backward()?);
            for v in &vars {
                let (a, b) = (g1.get(v.as_tensor()), g2.get(v.as_tensor()));
                let (Some(a), Some(b)) = (a, b) else { continue };
                let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let n = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(d <= 1e-5 * n.max(1e-3), "full {full}: gradient differs by {d} (max {n})");
            }
        }
        Ok(())
    }

    /// A packed row's targets are split between its examples at their starts, each with its
    /// line; a share of rows keeps its rows' segments.
    #[test]
    fn packed_rows_split_their_targets_by_example() -> Result<()> {
        let examples: Vec<Example> = (1..=6).map(|t| varied(5 + t as usize, t)).collect();
        let lines: Vec<u64> = (1..=6).map(|i| 100 + i).collect();
        let per_example: Vec<usize> = examples
            .iter()
            .map(|e| e.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .collect();
        let packs = pack_with_lines(examples, &lines, 24, 3);
        assert!(packs.iter().any(|(_, s)| s.len() > 1), "some pack holds several examples");
        let refs: Vec<&Example> = packs.iter().map(|(e, _)| e).collect();
        let srcs: Vec<&[Source]> = packs.iter().map(|(_, s)| s.as_slice()).collect();
        let batch = make_batch_from(&refs, &srcs, 0, &Device::Cpu)?;
        let mut seen: Vec<(u64, usize)> =
            batch.segments.iter().map(|s| (s.line.unwrap_or(0), s.targets)).collect();
        seen.sort_unstable();
        // Packing masks each example's first label, a prompt token here: no target is lost.
        let want: Vec<(u64, usize)> = lines.iter().copied().zip(per_example).collect();
        assert_eq!(seen, want);
        assert_eq!(batch.segments.iter().map(|s| s.targets).sum::<usize>(), batch.n_targets);
        let share = batch.rows(1, batch.segments.iter().map(|s| s.row).max().unwrap_or(0) + 1)?;
        assert!(share.segments.iter().all(|s| {
            batch.segments.iter().any(|b| b.line == s.line && b.row == s.row + 1 && b.targets == s.targets)
        }));
        assert_eq!(share.segments.iter().map(|s| s.targets).sum::<usize>(), share.n_targets);
        Ok(())
    }

    fn ex(n: usize, tag: u32) -> Example {
        Example {
            input_ids: vec![tag; n],
            labels: (0..n).map(|i| if i < n / 2 { IGNORE_INDEX } else { i64::from(tag) }).collect(),
        }
    }

    #[test]
    fn packing_fills_sequences_without_splitting_or_losing_examples() {
        let examples: Vec<Example> = (1..=10).map(|t| ex(3 + t as usize, t)).collect();
        let targets: usize =
            examples.iter().map(|e| e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()).sum();
        let packs = pack(examples.clone(), 20, 0);
        assert!(packs.len() < examples.len());
        assert!(packs.iter().all(|p| p.input_ids.len() <= 20 && p.input_ids.len() == p.labels.len()));
        let tokens: usize = packs.iter().map(|p| p.input_ids.len()).sum();
        assert_eq!(tokens, examples.iter().map(|e| e.input_ids.len()).sum::<usize>());
        // Example starts are masked (here they were already prompt tokens): targets unchanged.
        let packed_targets: usize =
            packs.iter().map(|p| p.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()).sum();
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
