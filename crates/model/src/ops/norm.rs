//! RMSNorm: the autograd op (candle's fused forward), its CPU body (one pass per row, rounded
//! as candle's kernel) and its CUDA input gradient (`kernels/rms_norm.cu`).

use candle_core::{CpuStorage, CustomOp2, D, Result, Shape, Tensor};

use super::Slot;
use super::cpu::with_slices;

/// RMSNorm `x · rsqrt(mean(x²) + ε) · w` with candle's fused kernel forward, differentiable:
/// only `x` (kept anyway: it is the residual stream) stays in the graph, instead of the five
/// f32 intermediates of the composed form. `∂x = r·(∂y⊙w) − x·r³·mean((∂y⊙w)⊙x)`,
/// `∂w = Σ_rows ∂y⊙x·r` (only when `w` is trained), computed in f32.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if crate::ops::cpu::applies(x) && w.dtype() == candle_core::DType::F32 {
        let y = Slot::cpu_buffer(crate::ops::norm::rms_norm_forward(&x.detach(), &w.detach(), eps)?);
        return x.apply_op2(w, RmsNormGrad { y, eps: f64::from(eps) });
    }
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, &w.detach(), eps)?;
    x.apply_op2(w, RmsNormGrad { y: Slot::new(y), eps: f64::from(eps) })
}

struct RmsNormGrad {
    y: Slot,
    eps: f64,
}

impl CustomOp2 for RmsNormGrad {
    handed_over!("rms-norm", y, 2);

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !w.track_op() && crate::ops::cuda::available(x) {
            let dx = crate::ops::norm::rms_norm_backward(&x.detach(), &w.detach(), grad, self.eps as f32)?;
            return Ok((Some(dx), None));
        }
        if !w.track_op() && crate::ops::cpu::applies(x) && w.dtype() == candle_core::DType::F32 {
            return Ok((
                Some(crate::ops::norm::rms_norm_input_grad(&x.detach(), &w.detach(), grad, self.eps as f32)?),
                None,
            ));
        }
        let f32 = candle_core::DType::F32;
        let x32 = x.to_dtype(f32)?;
        let g32 = grad.to_dtype(f32)?;
        let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let gw = g32.broadcast_mul(&w.to_dtype(f32)?)?;
        let dot = (&gw * &x32)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?.to_dtype(x.dtype())?;
        let dw = if w.track_op() {
            let hidden = w.dim(0)?;
            let xr = x32.broadcast_mul(&r)?;
            Some((g32 * xr)?.reshape(((), hidden))?.sum(0)?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

// The CPU body (f32).

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

// The CUDA kernel.

/// RMSNorm's input gradient for a weight that is not trained (`x`, `dy`: `[.., hidden]`,
/// `w: [hidden]`), one pass per row.
pub fn rms_norm_backward(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &RmsNormBwd { eps })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct RmsNormBwd {
    eps: f32,
}

gpu_only!(RmsNormBwd, 3, "ft-rms-norm-bwd", |self, x, xl, w, wl, dy, dyl| launch::rms_norm_bwd(
    x, xl, w, wl, dy, dyl, self.eps
));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn rms_norm_bwd(
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("rms_norm backward", xl, dyl)?;
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if wl.shape().elem_count() != cols || w.dtype() != x.dtype() {
            candle_core::bail!(
                "rms_norm backward: weight {:?} {:?} for rows of {cols} {:?}",
                wl.shape(),
                w.dtype(),
                x.dtype()
            )
        }
        let func =
            dev.get_or_load_custom_func(&format!("rms_norm_bwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let cols_i = cols as i32;
        macro_rules! go {
            ($ty:ty) => {{
                let (xv, wv, dv) = (view!(x, xl, $ty), view!(w, wl, $ty), view!(dy, dyl, $ty));
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&wv);
                b.arg(&dv);
                b.arg(&y);
                b.arg(&cols_i);
                b.arg(&eps);
                unsafe { b.launch(cfg(rows, row_threads(cols).min(512))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, xl.shape().clone()))
    }
}
