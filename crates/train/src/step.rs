//! One optimizer step — forward, loss, backward, clip, AdamW — over a step's micro-batches:
//! [`optimizer_step`] on one device, `parallel::optimizer_step` over data-parallel replicas, and
//! the [`StepRunner`] the training loop holds so it never asks which of the two it runs.

use candle_core::{Device, Tensor, Var};
use ferrotune_model::Llama;

use crate::batch::{Batch, Example, Segment, Source, loss_sums, make_batch_from};
use crate::error::Result;
use crate::optim::{AdamW, clip_global_norm, collect_grads};
use crate::parallel::{Replicas, shares};

/// One example's loss in a step: its mean cross-entropy per target token, and the data file
/// line it came from (when the batch had sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExampleLoss {
    pub line: Option<u64>,
    pub loss: f64,
    pub targets: usize,
}

/// What an optimizer step reports: the mean loss, the gradient norm before clipping, and each
/// example's own loss (micro-batches in order, their examples in row order).
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    pub loss: f64,
    pub grad_norm: f64,
    pub examples: Vec<ExampleLoss>,
}

/// Each segment's mean loss from its summed loss.
pub(crate) fn example_losses(segments: &[Segment], sums: &[f32]) -> Vec<ExampleLoss> {
    segments
        .iter()
        .zip(sums)
        .map(|(s, &l)| ExampleLoss {
            line: s.line,
            loss: f64::from(l) / s.targets.max(1) as f64,
            targets: s.targets,
        })
        .collect()
}

/// One optimizer step over `micro` (gradient accumulation): each micro-batch's loss summed over
/// its targets and divided by the step's target count, gradients summed, clipped, AdamW.
///
/// On the CPU the step's rows are cut into shares — each micro-batch into one per rayon thread
/// (or one per row when it has fewer rows) — and the shares run on the pool's threads at once,
/// each forward+backward on one thread (the `train` command runs candle's matmuls single-threaded
/// for this; see the CLI's `main`). One thread per share keeps every core busy through the
/// element-wise work and small products that one big forward runs on a single core, with no
/// synchronisation inside a share; at most one share per thread is in flight, so memory stays
/// that of `threads` shares. LoRA dropout draws every share the masks its tokens have in the
/// whole step ([`ferrotune_model::lora::with_token_offset`]), so the result is the unsplit step's
/// up to float summation order; successive micro-batches draw distinct masks. On a GPU the
/// micro-batches run one after another, whole, and repeat the first's masks (its dropout kernel
/// takes no offset). Returns the mean loss, the gradient norm before clipping and each example's
/// loss ([`StepLosses`]).
pub fn optimizer_step(
    model: &Llama,
    opt: &mut AdamW,
    micro: &[Batch],
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepLosses> {
    let step_targets: usize = micro.iter().map(|b| b.n_targets).sum();
    let norm = step_targets.max(1) as f64;
    let vars = opt.vars().to_vec();
    let parts: Vec<Result<ShareResult>> = if model.device().is_cpu() {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        let mut shares = Vec::new();
        let mut tokens_before = 0u64;
        for batch in micro {
            let (rows, t) = batch.ids.dims2()?;
            let k = threads.min(rows).max(1);
            for i in 0..k {
                let (r0, r1) = (rows * i / k, rows * (i + 1) / k);
                let share = if k == 1 { None } else { Some(batch.rows(r0, r1)?) };
                shares.push((batch, share, tokens_before + (r0 * t) as u64));
            }
            tokens_before += (rows * t) as u64;
        }
        shares
            .par_iter()
            .map(|(whole, share, offset)| {
                share_grads(model, &vars, share.as_ref().unwrap_or(whole), *offset, norm)
            })
            .collect()
    } else {
        micro.iter().map(|b| share_grads(model, &vars, b, 0, norm)).collect()
    };
    let mut grads: Option<Vec<Tensor>> = None;
    let mut loss_total = 0f64;
    let mut examples = Vec::new();
    for part in parts {
        let (loss, g, ex) = part?;
        loss_total += loss;
        examples.extend(ex);
        grads = Some(match grads {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let mut grads = grads.unwrap_or_default();
    let grad_norm = clip_global_norm(&mut grads, max_grad_norm)?;
    opt.step(&grads, lr)?;
    Ok(StepLosses { loss: loss_total / norm, grad_norm, examples })
}

/// A share's summed loss, gradients and examples' losses.
type ShareResult = (f64, Vec<Tensor>, Vec<ExampleLoss>);

/// The summed loss of `batch`, the gradients of `loss / norm` for `vars` and each example's
/// loss, LoRA dropout drawing the masks of the step's tokens from `tokens_before` on.
fn share_grads(
    model: &Llama,
    vars: &[(String, Var)],
    batch: &Batch,
    tokens_before: u64,
    norm: f64,
) -> Result<ShareResult> {
    ferrotune_model::lora::with_token_offset(tokens_before, || {
        let (l, sums) = loss_sums(model, batch)?;
        let loss = l.to_scalar::<f32>()? as f64;
        let g = collect_grads(vars, &(l / norm)?.backward()?)?;
        Ok((loss, g, example_losses(&batch.segments, &sums)))
    })
}

/// A step's micro-batches by device: the first device's (on a single device, all of them),
/// then each replica's share of every micro-batch.
pub(crate) struct StepBatches(Vec<Vec<Batch>>);

impl StepBatches {
    /// Tokens (padding excluded) the step trains on.
    pub(crate) fn tokens(&self) -> usize {
        self.0.iter().flatten().map(|b| b.n_tokens).sum()
    }
}

/// Runs the training loop's optimizer steps on the trainer's device alone, or data-parallel
/// with LoRA replicas on other GPUs (`--devices`, [`crate::parallel`]).
pub(crate) enum StepRunner {
    Single(Device),
    Parallel {
        device: Device,
        replicas: Replicas,
        /// The first device's adapter variables (the optimizer's), which the replicas copy.
        vars: Vec<(String, Var)>,
    },
}

impl StepRunner {
    /// On `device`, with `replicas` (made for the adapter whose variables are `vars`) if any.
    pub(crate) fn new(device: Device, replicas: Option<Replicas>, vars: &[(String, Var)]) -> Self {
        match replicas {
            Some(replicas) => Self::Parallel { device, replicas, vars: vars.to_vec() },
            None => Self::Single(device),
        }
    }

    /// The replicas take the first device's weights (after init and after a resume).
    pub(crate) fn sync(&self) -> Result<()> {
        match self {
            Self::Single(_) => Ok(()),
            Self::Parallel { replicas, vars, .. } => replicas.broadcast(vars),
        }
    }

    /// Training mode and this step's dropout seed for the replicas (the first device's adapter
    /// is the trainer's to set).
    pub(crate) fn set_training(&self, seed: u64, step: u64) {
        if let Self::Parallel { replicas, .. } = self {
            replicas.set_training(true, seed, step);
        }
    }

    /// An empty step: no micro-batch on any device yet.
    pub(crate) fn batches(&self) -> StepBatches {
        let devices = match self {
            Self::Single(_) => 1,
            Self::Parallel { replicas, .. } => replicas.models.len() + 1,
        };
        StepBatches((0..devices).map(|_| Vec::new()).collect())
    }

    /// Add a micro-batch of `rows` (from data file `srcs`, padded with `pad`) to `batches`: whole
    /// on one device, or its rows split across the devices (a device without rows sits it out).
    pub(crate) fn push(
        &self,
        batches: &mut StepBatches,
        rows: &[&Example],
        srcs: &[&[Source]],
        pad: u32,
    ) -> Result<()> {
        match self {
            Self::Single(device) => batches.0[0].push(make_batch_from(rows, srcs, pad, device)?),
            Self::Parallel { device, replicas, .. } => {
                let devs: Vec<&Device> =
                    std::iter::once(device).chain(replicas.models.iter().map(|m| m.device())).collect();
                let src_shares = shares(srcs, devs.len());
                for (d, (share, src)) in shares(rows, devs.len()).into_iter().zip(src_shares).enumerate() {
                    if !share.is_empty() {
                        batches.0[d].push(make_batch_from(share, src, pad, devs[d])?);
                    }
                }
            }
        }
        Ok(())
    }

    /// One optimizer step of `model` (the first device's) over the step's micro-batches.
    pub(crate) fn step(
        &self,
        model: &Llama,
        opt: &mut AdamW,
        batches: &StepBatches,
        lr: f64,
        max_grad_norm: f64,
    ) -> Result<StepLosses> {
        match self {
            Self::Single(_) => optimizer_step(model, opt, &batches.0[0], lr, max_grad_norm),
            Self::Parallel { replicas, vars, .. } => {
                let models: Vec<&Llama> = std::iter::once(model).chain(&replicas.models).collect();
                let rvars: Vec<&[(String, Var)]> = std::iter::once(vars.as_slice())
                    .chain(replicas.adapters.iter().map(|a| a.vars.as_slice()))
                    .collect();
                crate::parallel::optimizer_step(&models, &rvars, &batches.0, opt, replicas, lr, max_grad_norm)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::make_batch;
    use crate::error::TrainError;
    use crate::optim::AdamWParams;
    use ferrotune_model::config::{Family, ModelConfig};
    use ferrotune_model::{Adapter, LoraSpec, WeightMode};

    /// A tiny model with a LoRA adapter (B nudged off zero so A gets gradients), dropout on.
    fn tuned(seed: u64) -> Result<(Llama, Adapter)> {
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &Device::Cpu, 3)?;
        let mut model = Llama::load(&w, &cfg, WeightMode::F32, None)?;
        model.set_differentiable(true);
        let adapter = Adapter::init(&mut model, &LoraSpec { dropout: 0.3, ..LoraSpec::default() }, seed)?;
        adapter.attach(&mut model);
        for (_, v) in &adapter.vars {
            v.set(&(v.as_tensor() + 0.01)?)?;
        }
        adapter.control.set(true, 11, 4);
        Ok((model, adapter))
    }

    /// The CPU's row shares (one per thread, here 1 vs 3 threads over 4 rows of different
    /// lengths, two micro-batches) take the step a single thread takes, dropout included:
    /// same loss, gradient norm and weights after, to f32 summation order.
    #[test]
    fn row_shares_on_threads_take_the_single_thread_step() -> Result<()> {
        let rows = |tag: u32| -> Vec<Example> {
            (0..4u32)
                .map(|r| {
                    let ids: Vec<u32> = (0..5 + 2 * r).map(|i| (tag * 13 + r * 7 + i * 3) % 60).collect();
                    Example { labels: ids.iter().map(|&i| i64::from(i)).collect(), input_ids: ids }
                })
                .collect()
        };
        let (a, b) = (rows(1), rows(2));
        let micro = [
            make_batch(&a.iter().collect::<Vec<_>>(), 0, &Device::Cpu)?,
            make_batch(&b.iter().collect::<Vec<_>>(), 0, &Device::Cpu)?,
        ];
        let step = |threads: usize| -> Result<(f64, f64, Vec<Tensor>)> {
            let (model, adapter) = tuned(5)?;
            let mut opt = AdamW::new(adapter.vars.clone(), AdamWParams::default())?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| TrainError::config("threads", e.to_string()))?;
            let StepLosses { loss, grad_norm: norm, .. } =
                pool.install(|| optimizer_step(&model, &mut opt, &micro, 1e-2, 1.0))?;
            Ok((loss, norm, adapter.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect()))
        };
        let (l1, n1, w1) = step(1)?;
        let (l3, n3, w3) = step(3)?;
        assert!((l1 - l3).abs() < 1e-5 * l1.abs().max(1.0), "loss {l1} vs {l3}");
        assert!((n1 - n3).abs() < 1e-4 * n1.max(1.0), "grad norm {n1} vs {n3}");
        for (x, y) in w1.iter().zip(&w3) {
            let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "weights differ by {d} after the step");
        }
        // Dropout is on: a step with other masks (another seed) differs.
        let (model, adapter) = tuned(5)?;
        adapter.control.set(true, 12, 4);
        let mut opt = AdamW::new(adapter.vars.clone(), AdamWParams::default())?;
        let l_other = optimizer_step(&model, &mut opt, &micro, 1e-2, 1.0)?.loss;
        assert!((l_other - l1).abs() > 1e-6, "dropout masks had no effect ({l_other} vs {l1})");
        Ok(())
    }

    #[test]
    fn a_batchs_row_share_keeps_its_targets() -> Result<()> {
        let ex = |n: usize, tag: u32| Example {
            input_ids: vec![tag; n],
            labels: (0..n)
                .map(|i| if i < 2 { ferrotune_data::IGNORE_INDEX } else { i64::from(tag) })
                .collect(),
        };
        let (a, b, c) = (ex(5, 1), ex(3, 2), ex(6, 3));
        let whole = make_batch(&[&a, &b, &c], 0, &Device::Cpu)?;
        let share = whole.rows(1, 3)?;
        let direct = make_batch(&[&b, &c], 0, &Device::Cpu)?;
        assert_eq!(share.n_targets, direct.n_targets);
        // Same padded length (the whole batch's), so the positions agree with a batch of b, c
        // padded to 6.
        assert_eq!(share.ids.to_vec2::<u32>()?, direct.ids.to_vec2::<u32>()?);
        assert_eq!(share.positions.to_vec1::<u32>()?, direct.positions.to_vec1::<u32>()?);
        assert_eq!(share.targets.to_vec1::<u32>()?, direct.targets.to_vec1::<u32>()?);
        Ok(())
    }

    /// A step's losses, tokens, and the adapter weights after it (the replica's too, if any).
    type Ran = (StepLosses, usize, Vec<Tensor>, Option<Vec<Tensor>>);

    /// The runner's data-parallel path (here one replica, on the CPU) takes the step the
    /// single-device path takes on the same micro-batches, whose rows it splits across the
    /// devices: same loss, gradient norm, tokens and examples' losses, same weights after, the
    /// replica's included.
    #[test]
    fn data_parallel_runner_steps_like_one_device() -> Result<()> {
        let examples: Vec<Example> = (0..5u32)
            .map(|r| {
                let ids: Vec<u32> = (0..4 + 2 * r).map(|i| (r * 11 + i * 5) % 60).collect();
                Example { labels: ids.iter().map(|&i| i64::from(i)).collect(), input_ids: ids }
            })
            .collect();
        let sources: Vec<Vec<Source>> =
            (0..5u64).map(|line| vec![Source { start: 0, line: line + 1 }]).collect();
        let run = |parallel: bool| -> Result<Ran> {
            let cfg = ModelConfig::tiny(Family::Llama);
            let w = ferrotune_model::testing::hf_init_random_weights(&cfg, &Device::Cpu, 3)?;
            let mut model = Llama::load(&w, &cfg, WeightMode::F32, None)?;
            model.set_differentiable(true);
            // No dropout: each replica draws masks of its own.
            let spec = LoraSpec { dropout: 0.0, ..LoraSpec::default() };
            let replicas =
                if parallel { Some(Replicas::lora(&model, &[Device::Cpu], &spec, 5)?) } else { None };
            let adapter = Adapter::init(&mut model, &spec, 5)?;
            adapter.attach(&mut model);
            for (_, v) in &adapter.vars {
                v.set(&(v.as_tensor() + 0.01)?)?;
            }
            let runner = StepRunner::new(Device::Cpu, replicas, &adapter.vars);
            runner.sync()?;
            let mut opt = AdamW::new(adapter.vars.clone(), AdamWParams::default())?;
            // Two micro-batches, of 3 rows and 2.
            let mut batches = runner.batches();
            for (rows, srcs) in examples.chunks(3).zip(sources.chunks(3)) {
                let rows: Vec<&Example> = rows.iter().collect();
                let srcs: Vec<&[Source]> = srcs.iter().map(Vec::as_slice).collect();
                runner.push(&mut batches, &rows, &srcs, 0)?;
            }
            assert_eq!(batches.0.iter().filter(|d| !d.is_empty()).count(), if parallel { 2 } else { 1 });
            let out = runner.step(&model, &mut opt, &batches, 1e-2, 1.0)?;
            let weights = |vars: &[(String, Var)]| vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
            let replica = match &runner {
                StepRunner::Parallel { replicas, .. } => Some(weights(&replicas.adapters[0].vars)),
                StepRunner::Single(_) => None,
            };
            Ok((out, batches.tokens(), weights(&adapter.vars), replica))
        };
        let (one, tokens_one, w_one, _) = run(false)?;
        let (split, tokens_split, w_split, replica) = run(true)?;
        assert!((one.loss - split.loss).abs() < 1e-5, "loss {} vs {}", one.loss, split.loss);
        assert!((one.grad_norm - split.grad_norm).abs() < 1e-4 * one.grad_norm.max(1.0));
        assert_eq!(tokens_one, tokens_split);
        // Examples come device by device when split: compare them by line.
        let by_line = |s: &StepLosses| {
            let mut e: Vec<(Option<u64>, f64)> = s.examples.iter().map(|e| (e.line, e.loss)).collect();
            e.sort_by_key(|e| e.0);
            e
        };
        let (e1, e2) = (by_line(&one), by_line(&split));
        assert_eq!(e1.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=5).map(Some).collect::<Vec<_>>());
        for (a, b) in e1.iter().zip(&e2) {
            assert_eq!(a.0, b.0);
            assert!((a.1 - b.1).abs() < 1e-5, "line {:?}: loss {} vs {}", a.0, a.1, b.1);
        }
        for (i, (x, y)) in w_one.iter().zip(&w_split).enumerate() {
            let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "weights differ by {d} after the step");
            let r = replica.as_ref().map(|r| &r[i]).expect("the parallel runner has a replica");
            let d = (y - r)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "the replica did not get the update");
        }
        Ok(())
    }
}
