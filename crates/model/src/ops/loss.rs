//! The LM head's cross-entropy for training: row chunks whose logits are never kept, with the
//! input gradient computed while each chunk's logits exist; the CPU body (two passes per row,
//! or one over a buffer of our own) and the CUDA kernels (`kernels/cross_entropy.cu`).

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};

use super::Slot;
use crate::fastmath::{exp, max, sum_exp};

/// Rows of logits per chunk: about 64M f32 values (256 MB) at a time.
pub(crate) fn ce_chunk_rows(vocab: usize) -> usize {
    ((64usize << 20) / vocab.max(1)).max(1)
}

/// `Σ_i logsumexp(h_i·Wᵀ) − (h_i·Wᵀ)[target_i]` — the summed cross-entropy of a frozen LM head
/// `W: [vocab, hidden]` over `h: [n, hidden]` — computed in row chunks with f32 logits that are
/// never kept: the full `[n, vocab]` logits (and their f32 copy, exponentials and gradient) never
/// exist at once. When `h` needs a gradient, each chunk's `∂h = (softmax − onehot)·W` is computed
/// right there, while its logits exist (the loss is a sum, so backward only scales it by the
/// incoming gradient): no second head matmul in backward. Returns an f32 scalar.
pub fn frozen_head_cross_entropy_sum(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(frozen_head_cross_entropy(h, w, targets, false)?.0)
}

/// [`frozen_head_cross_entropy_sum`] and each row's loss on the host, from the same pass (the
/// per-example loss of training's loss-spike signal costs no second head product).
pub fn frozen_head_cross_entropy_rows(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Vec<f32>)> {
    let (total, rows) = frozen_head_cross_entropy(h, w, targets, true)?;
    Ok((total, rows.unwrap_or_default()))
}

fn frozen_head_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    per_row: bool,
) -> Result<(Tensor, Option<Vec<f32>>)> {
    let (n, _) = h.dims2()?;
    let chunk = ce_chunk_rows(w.dim(0)?);
    let hd = h.detach();
    let fused = crate::ops::cuda::available(h);
    let want_grad = h.track_op();
    let mut total = Tensor::zeros((), candle_core::DType::F32, h.device())?;
    let mut rows: Vec<f32> = Vec::with_capacity(if per_row { n } else { 0 });
    let mut dh = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let tg = targets.narrow(0, start, len)?;
        if crate::ops::cpu::applies(&hd) && w.dtype() == candle_core::DType::F32 {
            // Logits into a buffer of our own, turned into their gradient in place.
            let vocab = w.dim(0)?;
            let mut logits = crate::ops::cpu::product(&hd.narrow(0, start, len)?, &w.t()?, 1.0)?;
            let losses = crate::ops::loss::cross_entropy_rows_in_place(
                &mut logits,
                vocab,
                &tg.to_vec1::<u32>()?,
                want_grad,
            )?;
            total = (total + crate::ops::loss::total(&losses))?;
            if per_row {
                rows.extend_from_slice(&losses);
            }
            if want_grad {
                dh.push(Tensor::from_vec(logits, (len, vocab), h.device())?.matmul(w)?);
            }
            start += len;
            continue;
        }
        let logits = hd.narrow(0, start, len)?.matmul(&w.t()?)?;
        if fused {
            // One pass per row over the logits as they are (bf16 on a GPU), f32 inside.
            let st = crate::ops::loss::cross_entropy_rows(&logits, &tg)?;
            let row_loss = st.narrow(1, 0, 1)?;
            total = (total + row_loss.sum_all()?)?;
            if per_row {
                rows.extend(row_loss.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?);
            }
            if want_grad {
                dh.push(crate::ops::loss::cross_entropy_backward(&logits, &tg, &st, 1.0)?.matmul(w)?);
            }
        } else if hd.device().is_cpu() {
            // Two passes per row (fastmath): loss and softmax − onehot, exponentials vectorised.
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let (losses, d) =
                crate::ops::loss::cross_entropy_rows_cpu(&logits, &tg.to_vec1::<u32>()?, want_grad)?;
            total = (total + crate::ops::loss::total(&losses))?;
            if per_row {
                rows.extend_from_slice(&losses);
            }
            if let Some(d) = d {
                dh.push(d.to_dtype(h.dtype())?.matmul(w)?);
            }
        } else {
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let lse = logits.log_sum_exp(D::Minus1)?;
            let tgt = logits.gather(&tg.unsqueeze(1)?, 1)?.squeeze(1)?;
            let row_loss = (&lse - &tgt)?;
            total = (total + row_loss.sum_all()?)?;
            if per_row {
                rows.extend(row_loss.to_vec1::<f32>()?);
            }
            if want_grad {
                let p = logits.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
                let minus_one = Tensor::full(-1f32, (len, 1), h.device())?;
                dh.push(p.scatter_add(&tg.unsqueeze(1)?, &minus_one, 1)?.to_dtype(h.dtype())?.matmul(w)?);
            }
        }
        start += len;
    }
    let rows = per_row.then_some(rows);
    if !want_grad {
        return Ok((total, rows));
    }
    Ok((h.apply_op1(HeadCrossEntropy { y: Slot::new(total), dh: Tensor::cat(&dh, 0)? })?, rows))
}

struct HeadCrossEntropy {
    y: Slot,
    /// `∂(loss)/∂h`, computed in forward.
    dh: Tensor,
}

impl CustomOp1 for HeadCrossEntropy {
    handed_over!("head-cross-entropy", y, 1);

    fn bwd(&self, _h: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Scaled on the device: no read-back of the incoming gradient.
        Ok(Some(self.dh.broadcast_mul(&grad.to_dtype(self.dh.dtype())?)?))
    }
}

// The CPU body (f32).

/// `(logsumexp(row) − row[target] per row, ∂)` over f32 `logits: [n, vocab]`, where `∂` (when
/// `grad`) is `softmax(row) − onehot(target)` per row, `[n, vocab]` f32 — the cross-entropy of
/// the rows and its gradient in two passes over each row (max and sum of exponentials online,
/// then the probabilities), instead of the composed form's eight. [`total`] sums the rows.
pub fn cross_entropy_rows_cpu(
    logits: &Tensor,
    targets: &[u32],
    grad: bool,
) -> Result<(Vec<f32>, Option<Tensor>)> {
    let op = CeRows { targets: targets.to_vec(), grad, loss: std::sync::Mutex::new(Vec::new()) };
    let out = logits.contiguous()?.apply_op1_no_bwd(&op)?;
    let loss = std::mem::take(
        &mut *op.loss.lock().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned".into()))?,
    );
    Ok((loss, grad.then_some(out)))
}

/// The sum of per-row losses, accumulated in f64.
pub fn total(rows: &[f32]) -> f64 {
    rows.iter().map(|&l| f64::from(l)).sum()
}

/// `logsumexp(row)`: the max, then the sum of exponentials shifted by it.
fn logsumexp(row: &[f32]) -> f32 {
    let m = max(row);
    m + sum_exp(row, m).ln()
}

/// [`cross_entropy_rows`] over a buffer of our own, `logits: [n, vocab]` row-major: returns each
/// row's loss and, when `grad`, overwrites each row with `softmax(row) − onehot(target)` (no
/// second buffer).
pub fn cross_entropy_rows_in_place(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    grad: bool,
) -> Result<Vec<f32>> {
    if vocab == 0 || logits.len() != targets.len() * vocab {
        candle_core::bail!(
            "cross-entropy: {} logits for {} targets over a vocabulary of {vocab}",
            logits.len(),
            targets.len()
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {vocab}");
    }
    let mut losses = Vec::with_capacity(targets.len());
    for (row, &tg) in logits.chunks_exact_mut(vocab).zip(targets) {
        let lse = logsumexp(row);
        losses.push(lse - row[tg as usize]);
        if grad {
            for a in row.iter_mut() {
                *a = exp(*a - lse);
            }
            row[tg as usize] -= 1.0;
        }
    }
    Ok(losses)
}

struct CeRows {
    targets: Vec<u32>,
    grad: bool,
    loss: std::sync::Mutex<Vec<f32>>,
}

impl CustomOp1 for CeRows {
    fn name(&self) -> &'static str {
        "cross-entropy-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("cross-entropy: logits not contiguous".into()))?;
        let x = &s.as_slice::<f32>()?[start..end];
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", self.targets.len());
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {v}");
        }
        let mut out = vec![0f32; if self.grad { n * v } else { 0 }];
        let mut losses = Vec::with_capacity(n);
        for (i, row) in x.chunks_exact(v).enumerate() {
            let lse = logsumexp(row);
            let tg = self.targets[i] as usize;
            losses.push(lse - row[tg]);
            if self.grad {
                let d = &mut out[i * v..(i + 1) * v];
                for (o, &a) in d.iter_mut().zip(row) {
                    *o = exp(a - lse);
                }
                d[tg] -= 1.0;
            }
        }
        *self.loss.lock().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned".into()))? = losses;
        let shape = if self.grad { l.shape().clone() } else { Shape::from(0) };
        Ok((CpuStorage::F32(out), shape))
    }
}

// The CUDA kernels.

/// Per row of `logits: [n, vocab]` and `targets: [n]` (u32): `[n, 2]` f32 of
/// (`logsumexp − logit[target]`, `logsumexp`).
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &CrossEntropyFwd)
}

/// `g · (softmax(logits) − onehot(target))` from the forward's row log-sum-exps (`stats[:, 1]`),
/// in `logits`' dtype.
pub fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, stats: &Tensor, g: f64) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(
        &targets.contiguous()?,
        &stats.contiguous()?,
        &CrossEntropyBwd { g: g as f32 },
    )
}

struct CrossEntropyFwd;

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct CrossEntropyBwd {
    g: f32,
}

gpu_only!(CrossEntropyFwd, 2, "ft-cross-entropy", |self, x, xl, t, tl| launch::ce_fwd(x, xl, t, tl));

gpu_only!(CrossEntropyBwd, 3, "ft-cross-entropy-bwd", |self, x, xl, t, tl, s, sl| launch::ce_bwd(
    x, xl, t, tl, s, sl, self.g
));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn ce_fwd(
        x: &CudaStorage,
        xl: &Layout,
        t: &CudaStorage,
        tl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows {
            candle_core::bail!("cross-entropy: {} targets for {rows} rows", tl.shape().elem_count())
        }
        let func = dev.get_or_load_custom_func(&format!("ce_fwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let stats = unsafe { dev.alloc::<f32>(rows * 2)? };
        let v = cols as i32;
        let vec = i32::from(cols % 8 == 0 && aligned8(xl));
        macro_rules! go {
            ($ty:ty) => {{
                let xv = view!(x, xl, $ty);
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&tv);
                b.arg(&stats);
                b.arg(&v);
                b.arg(&vec);
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
            }};
        }
        if x.dtype() == DType::BF16 {
            go!(bf16)
        } else {
            go!(f32)
        }
        Ok((CudaStorage::wrap_cuda_slice(stats, dev.clone()), Shape::from((rows, 2))))
    }

    pub fn ce_bwd(
        x: &CudaStorage,
        xl: &Layout,
        t: &CudaStorage,
        tl: &Layout,
        s: &CudaStorage,
        sl: &Layout,
        g: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows || sl.shape().elem_count() != rows * 2 {
            candle_core::bail!(
                "cross-entropy backward: shapes {:?} {:?} {:?}",
                xl.shape(),
                tl.shape(),
                sl.shape()
            )
        }
        let func = dev.get_or_load_custom_func(&format!("ce_bwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let sv = view!(s, sl, f32);
        let v = cols as i32;
        let vec = i32::from(cols % 8 == 0 && aligned8(xl));
        macro_rules! go {
            ($ty:ty) => {{
                let xv = view!(x, xl, $ty);
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&tv);
                b.arg(&sv);
                b.arg(&y);
                b.arg(&v);
                b.arg(&g);
                b.arg(&vec);
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_rows_match_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        // Fixed pseudo-random logits around 5 ± 9 (a test must not change from run to run).
        let values: Vec<f32> = (0..7 * 301u32)
            .map(|i| 5.0 + 9.0 * (((i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0) - 0.5))
            .collect();
        let logits = Tensor::from_vec(values, (7, 301), &dev)?;
        let targets = [0u32, 300, 17, 17, 150, 1, 299];
        let (loss, d) = cross_entropy_rows_cpu(&logits, &targets, true)?;
        let tg = Tensor::new(&targets, &dev)?;
        let lse = logits.log_sum_exp(D::Minus1)?;
        let picked = logits.gather(&tg.unsqueeze(1)?, 1)?.squeeze(1)?;
        let per_row: Vec<f32> = (&lse - picked)?.to_vec1()?;
        assert_eq!(loss.len(), 7);
        for (ours, r) in loss.iter().zip(&per_row) {
            assert!((ours - r).abs() < 1e-4 * r.abs().max(1.0), "{ours} vs {r}");
        }
        let reference: f64 = per_row.iter().map(|&l| f64::from(l)).sum();
        assert!(
            (total(&loss) - reference).abs() < 1e-4 * reference.abs().max(1.0),
            "{} vs {reference}",
            total(&loss)
        );
        let p = logits.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
        let onehot = Tensor::zeros((7, 301), candle_core::DType::F32, &dev)?.scatter_add(
            &tg.unsqueeze(1)?,
            &Tensor::ones((7, 1), candle_core::DType::F32, &dev)?,
            1,
        )?;
        let d = d.expect("gradient asked for");
        let diff = (&d - (p - onehot)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Both sides round `logit - lse` in f32 (|lse| ≈ 12 here), so probabilities agree to a few ulps of
        // that difference (~1e-6), not to 1e-6 of themselves: 1e-5 still catches any wrong term.
        assert!(diff < 1e-5, "gradient differs by {diff}");
        let mut buffer: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let in_place = cross_entropy_rows_in_place(&mut buffer, 301, &targets, true)?;
        assert_eq!(in_place, loss);
        assert_eq!(buffer, d.flatten_all()?.to_vec1::<f32>()?);
        assert!(cross_entropy_rows_in_place(&mut buffer, 301, &targets[..6], true).is_err());
        let (no_grad_loss, none) = cross_entropy_rows_cpu(&logits, &targets, false)?;
        assert!(none.is_none() && no_grad_loss == loss);
        assert!(cross_entropy_rows_cpu(&logits, &[0, 1], false).is_err());
        assert!(cross_entropy_rows_cpu(&logits, &[0, 0, 0, 0, 0, 0, 301], false).is_err());
        Ok(())
    }
}
