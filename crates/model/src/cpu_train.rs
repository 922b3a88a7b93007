//! f32 kernels for LoRA training on the CPU that write each result once, into a buffer handed to
//! the graph without a copy.
//!
//! Through candle's API a LoRA projection `x·Wᵀ + (x·Aᵀ)·Bᵀ` costs, besides the two products,
//! a zero-fill of each product's output, the adapter's `[n, out]` product written out, and an add
//! that reads both and writes a third buffer (and backward the same again, plus a dropout pass);
//! SwiGLU is two passes forward and about ten backward. Here the gemm crate (candle's own CPU
//! matmul) is called directly: the frozen product is written into fresh memory, the adapter's
//! product accumulated onto it (`dst += lhs·rhs`, a rank-r product), and SwiGLU forward and
//! backward are one vectorised pass each. Profiled on a SmolLM2 step these passes were ~15% of
//! the step.

use candle_core::{CpuStorage, DType, Result, Shape, Storage, Tensor};

/// Whether `t` can take these kernels: an f32 tensor on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// An f32 2-D operand read in place: its elements from the layout's start, and row/column strides.
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

/// Reads a 2-D f32 CPU tensor's storage, calls `f` with it.
fn with_operand<R>(t: &Tensor, f: impl FnOnce(Operand<'_>) -> Result<R>) -> Result<R> {
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!(
            "cpu_train: expected an f32 CPU tensor, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        )
    };
    let stride = layout.stride();
    let start = layout.start_offset();
    // The furthest element the strides reach must lie inside the storage.
    let last = start + (rows.saturating_sub(1)) * stride[0] + (cols.saturating_sub(1)) * stride[1];
    if rows > 0 && cols > 0 && last >= data.len() {
        candle_core::bail!("cpu_train: layout reaches past the storage");
    }
    f(Operand { data: &data[start..], rows, cols, rs: stride[0] as isize, cs: stride[1] as isize })
}

/// `dst := (accumulate ? dst : ·) + beta · lhs·rhs` for `lhs: [m, k]`, `rhs: [k, n]` (any strides,
/// e.g. a `.t()` view) and `dst` a row-major `[m, n]` buffer. Without `accumulate` `dst` is only
/// written (it may be uninitialised memory).
///
/// # Safety
/// `dst` must point to `m·n` writable f32 (initialised when `accumulate`).
#[allow(unsafe_code)]
unsafe fn gemm_raw(dst: *mut f32, accumulate: bool, lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<()> {
    with_operand(lhs, |l| {
        with_operand(rhs, |r| {
            if l.cols != r.rows {
                candle_core::bail!("cpu_train: inner dimensions {} and {} differ", l.cols, r.rows);
            }
            let threads = candle_core::utils::get_num_threads();
            let parallelism =
                if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            // SAFETY: `l` and `r` were checked to lie inside their storages for their shapes
            // and strides; the caller promises `dst` holds `l.rows · r.cols` f32, row-major.
            unsafe {
                gemm::gemm(
                    l.rows,
                    r.cols,
                    l.cols,
                    dst,
                    1,
                    r.cols as isize,
                    accumulate,
                    l.data.as_ptr(),
                    l.cs,
                    l.rs,
                    r.data.as_ptr(),
                    r.cs,
                    r.rs,
                    1.0,
                    beta,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            Ok(())
        })
    })
}

/// `beta · lhs·rhs` (`lhs: [m, k]`, `rhs: [k, n]`, any strides) into a new row-major buffer,
/// never zero-filled.
#[allow(unsafe_code)]
pub fn product(lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<Vec<f32>> {
    let (m, n) = (lhs.dim(0)?, rhs.dim(1)?);
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the spare capacity holds m·n f32; gemm writes every one (no read: accumulate is
    // false), after which they are initialised and the length may cover them.
    unsafe {
        gemm_raw(out.spare_capacity_mut().as_mut_ptr().cast::<f32>(), false, lhs, rhs, beta)?;
        out.set_len(m * n);
    }
    Ok(out)
}

/// `dst += beta · lhs·rhs` for a row-major `[m, n]` `dst`.
#[allow(unsafe_code)]
fn accumulate(dst: &mut [f32], lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<()> {
    let (m, n) = (lhs.dim(0)?, rhs.dim(1)?);
    if dst.len() != m * n {
        candle_core::bail!("cpu_train: accumulating a {m}×{n} product into {} elements", dst.len());
    }
    // SAFETY: `dst` is an initialised m·n slice.
    unsafe { gemm_raw(dst.as_mut_ptr(), true, lhs, rhs, beta) }
}

/// A LoRA projection's forward, `x·Wᵀ + h·Bᵀ` (`x: [n, in]`, `w: [out, in]`, `h: [n, r]` the
/// scaled adapter input, `b: [out, r]`), as one row-major `[n, out]` buffer.
pub fn lora_forward(x: &Tensor, w: &Tensor, h: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let mut y = product(x, &w.t()?, 1.0)?;
    accumulate(&mut y, h, &b.t()?, 1.0)?;
    Ok(y)
}

/// A LoRA projection's input gradient, `∂y·W + ((∂h·A) ⊙ m)` (`grad: [n, out]`, `w: [out, in]`,
/// `dh: [n, r]`, `a: [r, in]`, `m` LoRA's dropout mask of the input, by element index as
/// [`crate::dropout`] draws it), as one buffer: the rank-r product first, masked in place, then the
/// frozen product accumulated onto it.
pub fn lora_input_grad(
    grad: &Tensor,
    w: &Tensor,
    dh: &Tensor,
    a: &Tensor,
    mask: Option<(u64, f64, u64)>,
) -> Result<Tensor> {
    let mut dx = product(dh, a, 1.0)?;
    if let Some((seed, keep, offset)) = mask {
        crate::dropout::apply_in_place(&mut dx, seed, keep, offset);
    }
    accumulate(&mut dx, grad, w, 1.0)?;
    Tensor::from_vec(dx, (grad.dim(0)?, w.dim(1)?), grad.device())
}

/// `dst += x` for an f32 CPU tensor `x` of `dst`'s element count.
pub fn add_into(dst: &mut [f32], x: &Tensor) -> Result<()> {
    if x.elem_count() != dst.len() {
        candle_core::bail!("cpu_train: adding {} elements into {}", x.elem_count(), dst.len());
    }
    with_slices(&[x], |s| {
        for (d, &v) in dst.iter_mut().zip(s[0]) {
            *d += v;
        }
        Ok(())
    })
}

/// `σ(x) = 1/(1 + e^(−x))` with the vectorisable exp.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::fastmath::exp(-x))
}

/// The tensors (one shape, f32 on the CPU) as contiguous slices, for `f`.
fn with_slices<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let shape = ts[0].shape();
    if let Some(t) = ts.iter().find(|t| t.shape() != shape) {
        candle_core::bail!("cpu_train: shapes {:?} and {:?} differ", shape, t.shape());
    }
    let contiguous = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = contiguous.iter().map(Tensor::storage_and_layout).collect();
    let n = shape.elem_count();
    let mut slices = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(CpuStorage::F32(v)) = &**storage else {
            candle_core::bail!("cpu_train: expected f32 CPU tensors")
        };
        slices.push(&v[layout.start_offset()..layout.start_offset() + n]);
    }
    f(&slices)
}

/// SwiGLU forward `silu(g) ⊙ u` in one pass.
pub fn swiglu_forward(g: &Tensor, u: &Tensor) -> Result<(CpuStorage, Shape)> {
    let y = with_slices(&[g, u], |s| {
        Ok(s[0].iter().zip(s[1]).map(|(&g, &u)| g * sigmoid(g) * u).collect::<Vec<f32>>())
    })?;
    Ok((CpuStorage::F32(y), g.shape().clone()))
}

/// SwiGLU backward in one pass: `∂g = ∂y⊙u⊙σ(g)⊙(1 + g⊙(1 − σ(g)))`, `∂u = ∂y⊙g⊙σ(g)`.
pub fn swiglu_backward(g: &Tensor, u: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = g.elem_count();
    let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
    with_slices(&[g, u, grad], |s| {
        for ((dg, du), ((&g, &u), &d)) in
            dg.iter_mut().zip(du.iter_mut()).zip(s[0].iter().zip(s[1]).zip(s[2]))
        {
            let sg = sigmoid(g);
            *dg = d * u * sg * (1.0 + g * (1.0 - sg));
            *du = d * g * sg;
        }
        Ok(())
    })?;
    Ok((Tensor::from_vec(dg, g.shape(), g.device())?, Tensor::from_vec(du, g.shape(), g.device())?))
}

/// `1/√(mean(x²) + ε)` of a row.
#[inline]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (crate::fastmath::dot(row, row) / row.len() as f32 + eps).sqrt()
}

/// The weight of an RMSNorm as an f32 slice for `f` (`[hidden]`).
fn with_weight<R>(w: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let w = w.flatten_all()?;
    with_slices(&[&w], |s| f(s[0]))
}

/// RMSNorm forward `x / √(mean(x²) + ε) · w` over the last axis, one pass per row, rounded
/// exactly as candle's kernel (the one inference uses): a sequential sum of squares, then
/// `x / m · w`. Training and inference then give the same logits to the last bit (a fresh adapter
/// changes none).
pub fn rms_norm_forward(x: &Tensor, w: &Tensor, eps: f32) -> Result<(CpuStorage, Shape)> {
    let hidden = w.elem_count();
    let y = with_weight(w, |w| {
        with_slices(&[x], |s| {
            let mut y = Vec::with_capacity(s[0].len());
            for row in s[0].chunks_exact(hidden) {
                let m = (row.iter().map(|&v| v * v).sum::<f32>() / hidden as f32 + eps).sqrt();
                y.extend(row.iter().zip(w).map(|(&x, &w)| x / m * w));
            }
            Ok(y)
        })
    })?;
    Ok((CpuStorage::F32(y), x.shape().clone()))
}

/// RMSNorm's input gradient for a frozen weight, one pass per row:
/// `∂x = r·(∂y⊙w) − x·r³·mean((∂y⊙w)⊙x)`.
pub fn rms_norm_input_grad(x: &Tensor, w: &Tensor, grad: &Tensor, eps: f32) -> Result<Tensor> {
    let hidden = w.elem_count();
    let mut dx = vec![0f32; x.elem_count()];
    with_weight(w, |w| {
        with_slices(&[x, grad], |s| {
            let mut gw = vec![0f32; hidden];
            for ((dx, x), g) in
                dx.chunks_exact_mut(hidden).zip(s[0].chunks_exact(hidden)).zip(s[1].chunks_exact(hidden))
            {
                let r = inv_rms(x, eps);
                for ((gw, &g), &w) in gw.iter_mut().zip(g).zip(w) {
                    *gw = g * w;
                }
                let c = r * r * r * crate::fastmath::dot(&gw, x) / hidden as f32;
                for ((dx, &gw), &x) in dx.iter_mut().zip(&gw).zip(x) {
                    *dx = r * gw - x * c;
                }
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// `x: [B, P, Q, d]` (row-major) → `[B, Q, P, d]`, each `d`-row rotated by RoPE (rotate-half)
/// when `rope` gives `(cos, sin, pos_axis, sign)`: tables `[positions, d/2]` indexed by axis
/// `pos_axis` (1 or 2) of `x`, `sign` −1 for the inverse rotation. The CPU's `cuda_kernels::swap12`:
/// splitting a projection into heads (and back) as one graph node instead of a reshape, a
/// transpose, a copy and the rotation, each with a gradient buffer in backward.
pub fn swap12(
    x: &[f32],
    (b, p, q, d): (usize, usize, usize, usize),
    rope: Option<(&[f32], &[f32], usize, f32)>,
) -> Result<Vec<f32>> {
    let half = d / 2;
    if x.len() != b * p * q * d {
        candle_core::bail!("swap12: {} elements for [{b}, {p}, {q}, {d}]", x.len());
    }
    if let Some((c, s, axis, _)) = rope {
        let positions = if axis == 1 { p } else { q };
        if d % 2 != 0 || !(axis == 1 || axis == 2) || c.len() < positions * half || s.len() < positions * half
        {
            candle_core::bail!(
                "swap12: rope tables of {} values for {positions} positions of {d}/2 (axis {axis})",
                c.len()
            );
        }
    }
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for qi in 0..q {
            for pi in 0..p {
                let src = &x[((bi * p + pi) * q + qi) * d..][..d];
                let Some((c, s, axis, sign)) = rope else {
                    out.extend_from_slice(src);
                    continue;
                };
                let pos = if axis == 1 { pi } else { qi };
                let (c, s) = (&c[pos * half..][..half], &s[pos * half..][..half]);
                let (x1, x2) = src.split_at(half);
                out.extend(
                    x1.iter().zip(x2).zip(c.iter().zip(s)).map(|((&a, &b), (&c, &s))| a * c - sign * b * s),
                );
                out.extend(
                    x1.iter().zip(x2).zip(c.iter().zip(s)).map(|((&a, &b), (&c, &s))| b * c + sign * a * s),
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| (((i ^ salt).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0) - 0.5)
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn lora_forward_and_input_grad_match_candles_products() -> Result<()> {
        let dev = Device::Cpu;
        let (n, inp, out, r) = (37, 50, 29, 4);
        let t = |rows, cols, salt| Tensor::from_vec(values(rows * cols, salt), (rows, cols), &dev);
        let (x, w, h, b) = (t(n, inp, 1)?, t(out, inp, 2)?, t(n, r, 3)?, t(out, r, 4)?);
        let ours = Tensor::from_vec(lora_forward(&x, &w, &h, &b)?, (n, out), &dev)?;
        let reference = (x.matmul(&w.t()?)? + h.matmul(&b.t()?)?)?;
        assert!(max_diff(&ours, &reference)? < 1e-5);
        // Input gradient, with and without the dropout mask, from a strided (transposed) gradient.
        let (grad, a) = (t(out, n, 5)?.t()?, t(r, inp, 6)?);
        let dh = t(n, r, 7)?;
        let plain = lora_input_grad(&grad, &w, &dh, &a, None)?;
        let reference = (grad.matmul(&w)? + dh.matmul(&a)?)?;
        assert!(max_diff(&plain, &reference)? < 1e-5);
        let masked = lora_input_grad(&grad, &w, &dh, &a, Some((9, 0.8, 123)))?;
        let reference = (grad.matmul(&w)? + crate::dropout::apply(&dh.matmul(&a)?, 9, 0.8, 123)?)?;
        assert!(max_diff(&masked, &reference)? < 1e-5);
        assert!(max_diff(&masked, &plain)? > 1e-3, "the mask changed nothing");
        assert!(lora_forward(&x, &w.t()?, &h, &b).is_err(), "mismatched inner dimensions");
        Ok(())
    }

    #[test]
    fn rms_norm_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, hidden) = (5, 70);
        let x = (Tensor::from_vec(values(rows * hidden, 1), (1, rows, hidden), &dev)? * 3.0)?;
        let w = (Tensor::from_vec(values(hidden, 2), hidden, &dev)? + 1.0)?;
        let d = Tensor::from_vec(values(rows * hidden, 3), (1, rows, hidden), &dev)?;
        let eps = 1e-5;
        let (y, shape) = rms_norm_forward(&x, &w, eps)?;
        let CpuStorage::F32(y) = y else { panic!("f32 storage") };
        let y = Tensor::from_vec(y, shape, &dev)?;
        assert_eq!(max_diff(&y, &candle_nn::ops::rms_norm(&x, &w, eps)?)?, 0.0);
        // The gradient against the composed form differentiated by candle.
        let xv = candle_core::Var::from_tensor(&x)?;
        let r = (xv.sqr()?.mean_keepdim(candle_core::D::Minus1)? + f64::from(eps))?.sqrt()?.recip()?;
        let composed = xv.broadcast_mul(&r)?.broadcast_mul(&w)?;
        let grads = (composed * &d)?.sum_all()?.backward()?;
        let reference = grads.get(&xv).expect("x's gradient");
        assert!(max_diff(&rms_norm_input_grad(&x, &w, &d, eps)?, reference)? < 1e-5);
        Ok(())
    }

    #[test]
    fn swiglu_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let t = |salt| -> Result<Tensor> { Tensor::from_vec(values(3 * 41, salt), (3, 41), &dev)? * 8.0 };
        let (g, u, d) = (t(1)?, t(2)?, t(3)?);
        let (y, shape) = swiglu_forward(&g, &u)?;
        let CpuStorage::F32(y) = y else { panic!("f32 storage") };
        let y = Tensor::from_vec(y, shape, &dev)?;
        assert!(max_diff(&y, &(g.silu()? * &u)?)? < 1e-5);
        let (dg, du) = swiglu_backward(&g, &u, &d)?;
        let s = candle_nn::ops::sigmoid(&g)?;
        let dg_ref = ((&d * &u)? * &s)?.mul(&((&g * (1.0 - &s)?)? + 1.0)?)?;
        let du_ref = (&d * (&g * &s)?)?;
        assert!(max_diff(&dg, &dg_ref)? < 1e-5);
        assert!(max_diff(&du, &du_ref)? < 1e-5);
        Ok(())
    }
}
