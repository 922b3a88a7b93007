//! Data-parallel LoRA over several GPUs of one host (`--devices 0,1`): one replica of the frozen
//! model with its own copy of the adapter per device; each micro-batch's rows are split across
//! the devices; each replica runs forward and backward on its rows, queued from a thread of its
//! own; the gradients (one flat f32 buffer per device) are summed on the first device, which
//! clips and takes the one optimizer step; the updated adapter weights go back out to the other
//! replicas. Between CUDA devices the sum and the copy back are NCCL's reduce and broadcast
//! (the `nccl` feature, which `scripts/gpu/build-cuda.sh` builds); elsewhere (the CPU tests, a
//! CUDA build without NCCL) they are copies with both devices idle around each.
//!
//! Streams: candle's `Device::new_cuda` queues on CUDA's *per-thread* default stream, so work
//! queued from a device's worker thread and from the main thread went to two different streams
//! that nothing ordered, and `Device::synchronize` (a stream synchronisation) from the main
//! thread did not wait for the worker's backward. The main thread then read gradients that were
//! still being written: on two H200s (2026-11-30) the sums were intermittently wrong (gradient
//! norms of 250–1000 against ~1 on one GPU). [`open_devices`] therefore gives each GPU one
//! stream of its own that every thread queues on.

use candle_core::{DType, Device, Tensor, Var};
use ferrotune_model::{Adapter, Llama, LoraSpec};

use crate::batch::{Batch, Example, loss_sums, make_batch};
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, clip_global_norm, collect_grads};
use crate::step::{ExampleLoss, StepLosses};

/// The replicas after the first device's (which the trainer keeps as its model), and how their
/// gradients meet.
pub struct Replicas {
    pub models: Vec<Llama>,
    pub adapters: Vec<Adapter>,
    reduce: Reduce,
}

/// How the devices' flat buffers are summed and broadcast.
enum Reduce {
    /// candle copies, both devices synchronised around each (candle copies between GPUs on the
    /// destination's stream, and cudarc's cross-stream events are off: `config::open_device`).
    Copy,
    /// One NCCL communicator per device (the first device's first), all in this process.
    #[cfg(feature = "nccl")]
    Nccl(Vec<nccl::Comm>),
}

/// `0,1` or `cuda:0,cuda:1` → the GPU indices, at least one, no repeats.
pub fn parse_devices(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n = part.strip_prefix("cuda:").unwrap_or(part);
        let n: usize = n
            .parse()
            .map_err(|_| TrainError::config("devices", format!("`{part}` is not a GPU index (e.g. 0,1)")))?;
        if out.contains(&n) {
            return Err(TrainError::config("devices", format!("GPU {n} is listed twice")));
        }
        out.push(n);
    }
    if out.is_empty() {
        return Err(TrainError::config("devices", "no GPU given (e.g. 0,1)"));
    }
    Ok(out)
}

/// The GPUs of `--devices list` given with `--device device`, which must say CUDA: `cuda` (or
/// `cuda:N` naming the list's first GPU).
pub fn gpu_list(device: &str, list: &str) -> Result<Vec<usize>> {
    use crate::config::{DeviceSpec, parse_device};
    let gpus = parse_devices(list)?;
    let d = parse_device(device)?;
    if d == DeviceSpec::Cpu || (device.trim() != "cuda" && d != DeviceSpec::Cuda(gpus[0])) {
        return Err(TrainError::config(
            "devices",
            format!("`{list}` are GPUs: pass --device cuda with them, not `{device}`"),
        ));
    }
    Ok(gpus)
}

/// Opens the GPUs `list` (from [`parse_devices`]) for data parallelism, each with a CUDA stream
/// of its own that every thread queues on (see the module note), cudarc's event tracking off
/// as for one GPU. An index past the host's GPUs, or a build without CUDA, is an error naming
/// `devices`.
pub fn open_devices(list: &[usize]) -> Result<Vec<Device>> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        let count = CudaContext::device_count()
            .map_err(|e| TrainError::config("devices", format!("CUDA: {e:?}")))?
            .max(0) as usize;
        if let Some(&n) = list.iter().find(|&&n| n >= count) {
            return Err(TrainError::config(
                "devices",
                format!("GPU {n}: this host has {count} GPU(s), numbered from 0"),
            ));
        }
        list.iter()
            .map(|&n| {
                let dev = Device::new_cuda_with_stream(n)
                    .map_err(|e| TrainError::config("devices", format!("GPU {n}: {e}")))?;
                crate::config::single_stream(&dev);
                Ok(dev)
            })
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = list;
        Err(TrainError::config(
            "devices",
            "this ferrotune was built without CUDA (build one with scripts/gpu/build-cuda.sh)",
        ))
    }
}

impl Replicas {
    /// Replicas of `base` (the frozen model on the first device, no adapter attached yet) on
    /// `devices` (the other devices), each with an adapter initialised as the first device's
    /// (same spec and seed: the same A, B = 0) and attached.
    pub fn lora(base: &Llama, devices: &[Device], spec: &LoraSpec, seed: u64) -> Result<Self> {
        let mut models = Vec::with_capacity(devices.len());
        let mut adapters = Vec::with_capacity(devices.len());
        // The base's last writes (its cast to the device) are done before another device's
        // stream reads it.
        base.device().synchronize()?;
        for dev in devices {
            let mut m = base.cast(dev, base.dtype())?;
            dev.synchronize()?;
            m.set_differentiable(true);
            let a = Adapter::init(&mut m, spec, seed)?;
            a.attach(&mut m);
            models.push(m);
            adapters.push(a);
        }
        let reduce = Reduce::for_devices(base.device(), devices)?;
        Ok(Self { models, adapters, reduce })
    }

    /// Training mode and dropout seed for every replica: each its own seed (mixed from `seed`),
    /// so two devices' rows do not draw the same masks.
    pub fn set_training(&self, training: bool, seed: u64, step: u64) {
        for (k, a) in self.adapters.iter().enumerate() {
            a.control.set(training, seed ^ (k as u64 + 1).wrapping_mul(0x94D0_49BB_1331_11EB), step);
        }
    }

    /// Copy the first device's adapter weights (`primary`, in the adapters' variable order) to
    /// every replica: one flat transfer per replica.
    pub fn broadcast(&self, primary: &[(String, Var)]) -> Result<()> {
        if self.adapters.iter().any(|a| a.vars.len() != primary.len()) {
            return Err(TrainError::config("devices", "replica adapters differ from the first device's"));
        }
        let values: Vec<Tensor> = primary.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let flat = flatten(&values)?;
        let devices: Vec<&Device> = self.adapters.iter().map(|a| a.vars[0].1.device()).collect();
        for (a, here) in self.adapters.iter().zip(self.reduce.broadcast(&flat, &devices)?) {
            for ((_, v), t) in a.vars.iter().zip(unflatten(&here, &values)?) {
                v.set(&t)?;
            }
        }
        Ok(())
    }
}

impl Reduce {
    fn for_devices(primary: &Device, others: &[Device]) -> Result<Self> {
        #[cfg(feature = "nccl")]
        {
            if primary.is_cuda() && others.iter().all(Device::is_cuda) && !others.is_empty() {
                let all: Vec<&Device> = std::iter::once(primary).chain(others).collect();
                return Ok(Self::Nccl(nccl::comms(&all)?));
            }
        }
        let _ = (primary, others);
        Ok(Self::Copy)
    }

    /// The sum of `flats` (one per device, the first device's first, same length), on the first
    /// device.
    fn sum(&self, flats: Vec<Tensor>) -> Result<Tensor> {
        match self {
            Self::Copy => {
                let primary = flats[0].device().clone();
                let mut sum: Option<Tensor> = None;
                for flat in flats {
                    let flat = transfer(&flat, &primary)?;
                    sum = Some(match sum {
                        None => flat,
                        Some(s) => (s + flat)?,
                    });
                }
                sum.ok_or_else(|| TrainError::config("devices", "no device"))
            }
            #[cfg(feature = "nccl")]
            Self::Nccl(comms) => nccl::reduce(comms, flats),
        }
    }

    /// `flat` (on the first device) on each of `devices`.
    fn broadcast(&self, flat: &Tensor, devices: &[&Device]) -> Result<Vec<Tensor>> {
        match self {
            Self::Copy => devices.iter().map(|d| transfer(flat, d)).collect(),
            #[cfg(feature = "nccl")]
            Self::Nccl(comms) => nccl::broadcast(comms, flat, devices),
        }
    }
}

/// `t` on `dst`, both devices idle around the copy: candle copies between GPUs on the
/// destination's stream, and with cudarc's cross-stream events off nothing else orders that
/// copy after the source's pending kernels, or the source's release after the copy.
fn transfer(t: &Tensor, dst: &Device) -> Result<Tensor> {
    t.device().synchronize()?;
    let out = t.to_device(dst)?;
    dst.synchronize()?;
    Ok(out)
}

/// All tensors as one 1-D tensor (same dtype and device).
fn flatten(ts: &[Tensor]) -> Result<Tensor> {
    let parts = ts.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// `flat` cut back into tensors shaped like `like`.
fn unflatten(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(like.len());
    for t in like {
        let n = t.elem_count();
        out.push(flat.narrow(0, at, n)?.reshape(t.shape())?);
        at += n;
    }
    Ok(out)
}

/// Split a micro-batch's rows into one contiguous share per device (the last ones may be
/// shorter; a device with no rows sits the micro-batch out).
pub fn shares<T>(rows: &[T], devices: usize) -> Vec<&[T]> {
    let per = rows.len().div_ceil(devices.max(1)).max(1);
    let mut out: Vec<&[T]> = rows.chunks(per).collect();
    out.resize(devices, &[]);
    out
}

/// A device's loss sums, flat gradients and examples' losses ([`local_gradients`]).
type Local = (Vec<Tensor>, Tensor, Vec<ExampleLoss>);

/// Each device's loss sums (one per batch), its gradients summed over `batches` as one flat
/// f32 buffer (zeros for a device without rows), each loss divided by `step_targets`, and each
/// example's loss.
fn local_gradients(
    model: &Llama,
    vars: &[(String, Var)],
    batches: &[Batch],
    step_targets: usize,
) -> Result<Local> {
    let mut losses = Vec::new();
    let mut examples = Vec::new();
    let mut acc: Option<Vec<Tensor>> = None;
    for batch in batches {
        let (l, sums) = loss_sums(model, batch)?;
        examples.extend(crate::step::example_losses(&batch.segments, &sums));
        let g = collect_grads(vars, &(&l / step_targets.max(1) as f64)?.backward()?)?;
        losses.push(l);
        acc = Some(match acc {
            None => g,
            Some(a) => a.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let flat = match acc {
        Some(g) => flatten(&g)?,
        None => Tensor::zeros(
            vars.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
            DType::F32,
            model.device(),
        )?,
    };
    Ok((losses, flat, examples))
}

/// The step's loss (mean over the targets of every share) and its gradients summed over
/// `models` (the first device's model first, then the replicas'), on the first device, shaped
/// as `vars[0]`.
/// Also each example's loss (devices in order, each device's micro-batches in order).
pub fn gradients(
    models: &[&Llama],
    vars: &[&[(String, Var)]],
    micro: &[Vec<Batch>],
    replicas: &Replicas,
) -> Result<(f64, Vec<Tensor>, Vec<ExampleLoss>)> {
    let step_targets: usize = micro.iter().flatten().map(|b| b.n_targets).sum();
    // One thread per device: queuing a step's few thousand kernels costs the CPU about as long
    // as the GPU takes to run them, so one thread feeding every device would serialise them.
    let per_device: Vec<Result<Local>> = std::thread::scope(|scope| {
        let handles: Vec<_> = models
            .iter()
            .zip(vars)
            .zip(micro)
            .map(|((model, vs), batches)| {
                scope.spawn(move || local_gradients(model, vs, batches, step_targets))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(TrainError::config("devices", "a device's thread panicked")))
            })
            .collect()
    });
    let mut losses = Vec::new();
    let mut flats = Vec::new();
    let mut examples = Vec::new();
    for r in per_device {
        let (l, g, ex) = r?;
        losses.extend(l);
        flats.push(g);
        examples.extend(ex);
    }
    let sum = replicas.reduce.sum(flats)?;
    let shapes: Vec<Tensor> = vars[0].iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let grads = unflatten(&sum, &shapes)?;
    let mut loss_total = 0f64;
    for l in losses {
        loss_total += l.to_scalar::<f32>()? as f64;
    }
    Ok((loss_total / step_targets.max(1) as f64, grads, examples))
}

/// One optimizer step over `models` (as [`gradients`]), each with its `vars` and its share of
/// the step's micro-batches: the loss is normalised by the targets of all shares, as one device
/// running every row would. Clips and steps on the first device, then broadcasts the weights.
/// Returns the mean loss, the gradient norm before clipping and each example's loss, as
/// `step::optimizer_step`.
pub fn optimizer_step(
    models: &[&Llama],
    vars: &[&[(String, Var)]],
    micro: &[Vec<Batch>],
    opt: &mut AdamW,
    replicas: &Replicas,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepLosses> {
    let (loss, mut grads, examples) = gradients(models, vars, micro, replicas)?;
    let grad_norm = clip_global_norm(&mut grads, max_grad_norm)?;
    opt.step(&grads, lr)?;
    replicas.broadcast(vars[0])?;
    Ok(StepLosses { loss, grad_norm, examples })
}

/// How the data-parallel gradients compare with one device's on the same rows and weights
/// (relative L2 errors, ‖g − g₀‖ / ‖g₀‖, over all LoRA parameters).
#[derive(Debug, Clone)]
pub struct Agreement {
    /// Mean loss of the whole batch on the first device alone, and through the split.
    pub loss_one: f64,
    pub loss_split: f64,
    /// The split's summed gradients against the first device alone on every row.
    pub split_rel: f64,
    /// The parameter whose split gradient is furthest off, and its relative error.
    pub worst: (String, f64),
    /// The split's summed gradients against the same shares run one after the other on the
    /// first device and added there: the exchange between devices alone (0 unless a transfer or
    /// the sum is wrong; `split_rel` above also holds the rounding of running fewer rows).
    pub exchange_rel: f64,
    /// For each replica: the whole batch on that device alone against the first device alone
    /// (the same computation on another GPU: 0 unless that GPU computes differently).
    pub alone_rel: Vec<f64>,
}

/// Runs `rows` (padded with `pad`) through every device alone and through the data-parallel
/// split, without taking a step, and compares the gradients (see [`Agreement`]). The adapters
/// must hold the same weights (as after [`Replicas::broadcast`]); turn dropout off first, or
/// the split draws other masks.
pub fn agreement(
    models: &[&Llama],
    vars: &[&[(String, Var)]],
    rows: &[&Example],
    pad: u32,
    replicas: &Replicas,
) -> Result<Agreement> {
    let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_device(&Device::Cpu)?.to_vec1::<f32>()?) };
    let mut alone = Vec::with_capacity(models.len());
    let mut loss_one = 0.0;
    for (model, vs) in models.iter().zip(vars) {
        let batch = make_batch(rows, pad, model.device())?;
        let (l, flat, _) = local_gradients(model, vs, std::slice::from_ref(&batch), batch.n_targets)?;
        if alone.is_empty() {
            loss_one = l[0].to_scalar::<f32>()? as f64 / batch.n_targets.max(1) as f64;
        }
        alone.push(host(&flat)?);
    }
    let parts = shares(rows, models.len());
    let micro = models
        .iter()
        .zip(&parts)
        .map(|(m, p)| if p.is_empty() { Ok(Vec::new()) } else { Ok(vec![make_batch(p, pad, m.device())?]) })
        .collect::<Result<Vec<_>>>()?;
    let (loss_split, grads, _) = gradients(models, vars, &micro, replicas)?;
    let split = host(&flatten(&grads)?)?;
    // The same shares on the first device, summed in f32 in the reduction's order.
    let step_targets: usize = micro.iter().flatten().map(|b| b.n_targets).sum();
    let mut serial: Option<Vec<f32>> = None;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        let batch = make_batch(p, pad, models[0].device())?;
        let g = host(&local_gradients(models[0], vars[0], std::slice::from_ref(&batch), step_targets)?.1)?;
        serial = Some(match serial {
            None => g,
            Some(s) => s.iter().zip(&g).map(|(a, b)| a + b).collect(),
        });
    }
    let serial = serial.unwrap_or_else(|| vec![0.0; split.len()]);
    let rel = |a: &[f32], b: &[f32]| -> f64 {
        let (mut d, mut n) = (0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            d += (x as f64 - y as f64).powi(2);
            n += (y as f64).powi(2);
        }
        if n > 0.0 { (d / n).sqrt() } else { d.sqrt() }
    };
    let mut worst = (String::new(), 0.0);
    let mut at = 0;
    for (name, v) in vars[0].iter() {
        let n = v.elem_count();
        let e = rel(&split[at..at + n], &alone[0][at..at + n]);
        if e >= worst.1 {
            worst = (name.clone(), e);
        }
        at += n;
    }
    Ok(Agreement {
        loss_one,
        loss_split,
        split_rel: rel(&split, &alone[0]),
        worst,
        exchange_rel: rel(&split, &serial),
        alone_rel: alone[1..].iter().map(|g| rel(g, &alone[0])).collect(),
    })
}

/// NCCL's reduce and broadcast on candle tensors: in-place ops on each device's flat buffer,
/// queued on that device's stream (the one every thread uses, [`open_devices`]) inside one NCCL
/// group, so one thread drives every device and no host synchronisation is needed.
#[cfg(feature = "nccl")]
mod nccl {
    use candle_core::cuda_backend::cudarc::nccl::safe::{self as nc, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};

    use crate::error::{Result, TrainError};

    pub use nc::Comm;

    fn err(e: impl std::fmt::Debug) -> TrainError {
        TrainError::config("devices", format!("NCCL: {e:?}"))
    }

    /// One communicator per device, on the device's stream.
    pub fn comms(devices: &[&Device]) -> Result<Vec<Comm>> {
        let streams =
            devices.iter().map(|d| Ok(d.as_cuda_device()?.cuda_stream())).collect::<Result<Vec<_>>>()?;
        nc::Comm::from_devices(streams).map_err(err)
    }

    #[derive(Clone, Copy)]
    enum Kind {
        /// Sum into rank 0's buffer.
        Reduce,
        /// Rank 0's buffer into every other's.
        Broadcast,
    }

    struct Collective<'a> {
        comm: &'a Comm,
        kind: Kind,
    }

    impl InplaceOp1 for Collective<'_> {
        fn name(&self) -> &'static str {
            "ft-nccl"
        }
        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
            candle_core::bail!("NCCL runs on CUDA devices only")
        }
        fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
            let slice = s.as_cuda_slice_mut::<f32>()?;
            if !l.is_contiguous() || l.start_offset() != 0 || l.shape().elem_count() != slice.len() {
                candle_core::bail!("NCCL: a flat buffer of its own expected, got {:?}", l)
            }
            let r = match self.kind {
                Kind::Reduce => self.comm.reduce_in_place(slice, &ReduceOp::Sum, 0),
                Kind::Broadcast => self.comm.broadcast_in_place(slice, 0),
            };
            r.map(|_| ()).map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))
        }
    }

    /// `ops` inside one NCCL group (one thread queuing on several devices), the group closed
    /// also when an op fails.
    fn grouped(comms: &[Comm], bufs: &[Tensor], kind: Kind) -> Result<()> {
        nc::group_start().map_err(err)?;
        let r = comms.iter().zip(bufs).try_for_each(|(comm, b)| b.inplace_op1(&Collective { comm, kind }));
        nc::group_end().map_err(err)?;
        Ok(r?)
    }

    pub fn reduce(comms: &[Comm], flats: Vec<Tensor>) -> Result<Tensor> {
        // Buffers of their own (a one-variable `cat` may share the gradient's): the op writes
        // rank 0's in place.
        let flats = flats.iter().map(Tensor::copy).collect::<candle_core::Result<Vec<_>>>()?;
        grouped(comms, &flats, Kind::Reduce)?;
        flats.into_iter().next().ok_or_else(|| TrainError::config("devices", "no device"))
    }

    pub fn broadcast(comms: &[Comm], flat: &Tensor, devices: &[&Device]) -> Result<Vec<Tensor>> {
        let mut bufs = vec![flat.copy()?];
        for d in devices {
            bufs.push(Tensor::zeros(flat.elem_count(), DType::F32, d)?);
        }
        grouped(comms, &bufs, Kind::Broadcast)?;
        Ok(bufs.split_off(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotune_model::config::{Family, ModelConfig};
    use ferrotune_model::testing::hf_init_random_weights;

    #[test]
    fn devices_parse_and_bad_lists_name_the_field() {
        assert_eq!(parse_devices("0,1").expect("list"), vec![0, 1]);
        assert_eq!(parse_devices("cuda:2, cuda:3").expect("list"), vec![2, 3]);
        for bad in ["", "0,0", "a,1", "-1"] {
            let e = parse_devices(bad).expect_err(bad).to_string();
            assert!(e.contains("devices"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_devices_saying_why() {
        let e = open_devices(&[0, 1]).expect_err("no CUDA").to_string();
        assert!(e.contains("devices") && e.contains("without CUDA"), "{e}");
    }

    #[test]
    fn shares_split_rows_without_losing_any() {
        let rows: Vec<u32> = (0..7).collect();
        let s = shares(&rows, 2);
        assert_eq!(s, vec![&rows[..4], &rows[4..]]);
        let s = shares(&rows[..1], 3);
        assert_eq!(s.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![1, 0, 0]);
    }

    struct Setup {
        examples: Vec<Example>,
        single: Llama,
        a1: Adapter,
        primary: Llama,
        a2: Adapter,
        replicas: Replicas,
    }

    /// One model, and a first-device model plus one replica (all on the CPU), with the same
    /// adapter weights (B non-zero so the A gradients are too).
    fn setup() -> Result<Setup> {
        let dev = Device::Cpu;
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = hf_init_random_weights(&cfg, &dev, 3)?;
        let base = Llama::load(&w, &cfg, ferrotune_model::WeightMode::F32, None)?;
        let spec = LoraSpec { dropout: 0.0, ..LoraSpec::default() };
        let examples: Vec<Example> = (0..4u32)
            .map(|r| {
                let ids: Vec<u32> = (0..6).map(|i| (r * 7 + i * 3) % cfg.vocab_size as u32).collect();
                Example { labels: ids.iter().map(|&i| i64::from(i)).collect(), input_ids: ids }
            })
            .collect();
        let nudge = |a: &Adapter| -> Result<()> {
            for (_, v) in &a.vars {
                v.set(&(v.as_tensor().ones_like()? * 0.01)?.add(v.as_tensor())?)?;
            }
            Ok(())
        };
        let mut single = base.clone();
        single.set_differentiable(true);
        let a1 = Adapter::init(&mut single, &spec, 5)?;
        a1.attach(&mut single);
        nudge(&a1)?;
        let mut primary = base.clone();
        primary.set_differentiable(true);
        let replicas = Replicas::lora(&base, std::slice::from_ref(&dev), &spec, 5)?;
        let a2 = Adapter::init(&mut primary, &spec, 5)?;
        a2.attach(&mut primary);
        nudge(&a2)?;
        replicas.broadcast(&a2.vars)?;
        Ok(Setup { examples, single, a1, primary, a2, replicas })
    }

    /// Two replicas (here both on the CPU) splitting a batch take the same step as one model on
    /// the whole batch: same loss, same gradient norm, same weights after, replica included.
    #[test]
    fn two_replicas_step_like_one_model_on_the_whole_batch() -> Result<()> {
        let dev = Device::Cpu;
        let s = setup()?;
        let refs: Vec<&Example> = s.examples.iter().collect();

        let mut opt1 = AdamW::new(s.a1.vars.clone(), Default::default())?;
        let batch = make_batch(&refs, 0, &dev)?;
        let one = crate::step::optimizer_step(&s.single, &mut opt1, std::slice::from_ref(&batch), 1e-2, 1.0)?;
        let (l1, n1) = (one.loss, one.grad_norm);

        let mut opt2 = AdamW::new(s.a2.vars.clone(), Default::default())?;
        let parts = shares(&refs, 2);
        let micro = vec![vec![make_batch(parts[0], 0, &dev)?], vec![make_batch(parts[1], 0, &dev)?]];
        let models = [&s.primary, &s.replicas.models[0]];
        let vars: [&[(String, Var)]; 2] = [&s.a2.vars, &s.replicas.adapters[0].vars];
        let split = optimizer_step(&models, &vars, &micro, &mut opt2, &s.replicas, 1e-2, 1.0)?;
        let (l2, n2) = (split.loss, split.grad_norm);

        assert!((l1 - l2).abs() < 1e-5, "loss {l1} vs {l2}");
        assert!((n1 - n2).abs() < 1e-4 * n1.max(1.0), "grad norm {n1} vs {n2}");
        for (((_, v1), (_, v2)), (_, v3)) in
            s.a1.vars.iter().zip(&s.a2.vars).zip(&s.replicas.adapters[0].vars)
        {
            let d12 = (v1.as_tensor() - v2.as_tensor())?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let d23 = (v2.as_tensor() - v3.as_tensor())?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d12 < 1e-5, "weights differ by {d12} after the step");
            assert_eq!(d23, 0.0, "the replica did not get the update");
        }
        Ok(())
    }

    /// The check `bench train --devices` prints: on the CPU the split's gradients equal one
    /// device's to f32 rounding, and a replica alone computes exactly what the first device does.
    #[test]
    fn agreement_of_split_and_one_device_is_rounding_only() -> Result<()> {
        let s = setup()?;
        let refs: Vec<&Example> = s.examples.iter().collect();
        let models = [&s.primary, &s.replicas.models[0]];
        let vars: [&[(String, Var)]; 2] = [&s.a2.vars, &s.replicas.adapters[0].vars];
        let a = agreement(&models, &vars, &refs, 0, &s.replicas)?;
        assert!((a.loss_one - a.loss_split).abs() < 1e-5, "{a:?}");
        assert!(a.split_rel < 1e-5 && a.worst.1 < 1e-4, "{a:?}");
        assert_eq!(a.exchange_rel, 0.0, "{a:?}");
        assert_eq!(a.alone_rel, vec![0.0], "{a:?}");
        assert!(!a.worst.0.is_empty());
        Ok(())
    }
}
