//! A frozen linear layer with its LoRA adapter as one op (`lora_linear`), and what the fused
//! layer ops share: a projection's saved state ([`LoraParts`], `LoraSaved`).

use candle_core::{CpuStorage, D, Result, Shape, Tensor};

use super::Slot;
use super::cpu::{accumulate, product};
use super::dropout::DropoutMask;

/// A frozen linear layer with its LoRA adapter as one op: `x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ` over
/// (`x: [n, in]`, `A: [r, in]`, `B: [out, r]`), `m` the dropout mask or none.
/// One graph node instead of about ten (candle's backward allocates and adds a gradient buffer
/// per node input), keeping only the small `h = s·(x ⊙ m)·Aᵀ` (and `x ⊙ m` on the CPU). Backward:
/// `∂B = ∂yᵀ·h`, `∂h = s·∂y·B`, `∂A = ∂hᵀ·(x ⊙ m)`, `∂x = ∂y·W + (∂h·A) ⊙ m`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&DropoutMask>,
) -> Result<Tensor> {
    let xd = x.detach();
    if crate::ops::cpu::applies(&xd) && w.dtype() == candle_core::DType::F32 {
        // One buffer: the frozen product written, the adapter's accumulated onto it, moved to
        // the graph without a copy; `x ⊙ m` kept for `∂A` (see `LoraSaved`).
        let rows = xd.elem_count() / xd.dim(D::Minus1)?;
        let mut dims = xd.dims().to_vec();
        *dims.last_mut().expect("x has a last axis") = w.dim(0)?;
        let parts = LoraParts { w: w.clone(), a: a.clone(), b: b.clone(), scale, mask: mask.cloned() };
        let (saved, y) = LoraSaved::forward(&parts, &xd.contiguous()?.reshape((rows, ()))?)?;
        return x.apply_op3(
            a,
            b,
            LoraLinearCpu { y: Slot::cpu_buffer((CpuStorage::F32(y), Shape::from(dims))), saved },
        );
    }
    let xm = match mask {
        Some(m) => m.apply(&xd)?,
        None => xd.clone(),
    };
    let h = (xm.matmul(&a.detach().t()?)? * scale)?;
    let y = if crate::ops::cuda::available(&xd) {
        // One output buffer: cuBLAS adds the adapter's product onto the base's.
        crate::ops::matmul::matmul_sum(&[(&xd, w, true), (&h, &b.detach(), true)])?
    } else {
        (xd.matmul(&w.t()?)? + h.matmul(&b.detach().t()?)?)?
    };
    x.apply_op3(a, b, LoraLinear { y: Slot::new(y), w: w.clone(), h, mask: mask.cloned(), scale })
}

/// What a LoRA projection's CPU backward needs (f32): the frozen weight, the adapter's
/// variables, `h = s·(x ⊙ m)·Aᵀ` and `x ⊙ m` from forward.
pub(crate) struct LoraSaved {
    w: Tensor,
    a: Tensor,
    b: Tensor,
    h: Tensor,
    masked_input: Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
}

impl LoraSaved {
    /// The forward of a LoRA projection on the CPU (`x: [n, in]`): `x·Wᵀ + h·Bᵀ` as our own buffer.
    pub(crate) fn forward(p: &LoraParts, x: &Tensor) -> Result<(Self, Vec<f32>)> {
        let xm = match &p.mask {
            Some(m) => m.apply(x)?,
            None => x.clone(),
        };
        let (a, b) = (p.a.detach(), p.b.detach());
        let h = (xm.matmul(&a.t()?)? * p.scale)?;
        let y = crate::ops::lora::lora_forward(x, &p.w, &h, &b)?;
        Ok((Self { w: p.w.clone(), a, b, h, masked_input: xm, mask: p.mask.clone(), scale: p.scale }, y))
    }

    /// `(∂x, ∂A, ∂B)` for the gradient `grad: [n, out]` of the output (`∂x` when `want_dx`).
    pub(crate) fn backward(&self, grad: &Tensor, want_dx: bool) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let db = grad.t()?.matmul(&self.h)?;
        let dh = (grad.matmul(&self.b)? * self.scale)?;
        let da = dh.t()?.matmul(&self.masked_input)?;
        let dx = if want_dx {
            let mask = self.mask.as_ref().map(|m| (m.seed, m.keep, m.offset));
            Some(crate::ops::lora::lora_input_grad(grad, &self.w, &dh, &self.a, mask)?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}

/// A frozen dense layer's weight with its training LoRA adapter's parts, for fused ops.
#[derive(Debug, Clone)]
pub struct LoraParts {
    /// `[out, in]`, frozen.
    pub w: Tensor,
    /// `[r, in]` and `[out, r]`: the adapter's variables (in the graph).
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub mask: Option<DropoutMask>,
}

/// An adapter's `(A, B, scale, dropout mask)` (see `LinearAdapter::lora_parts`).
pub type LoraVars = (Tensor, Tensor, f64, Option<DropoutMask>);

struct LoraLinear {
    y: Slot,
    w: Tensor,
    h: Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
}

/// [`lora_linear`] on the CPU in f32.
struct LoraLinearCpu {
    y: Slot,
    saved: LoraSaved,
}

impl candle_core::CustomOp3 for LoraLinearCpu {
    handed_over!("lora-linear", y, 3);

    fn bwd(
        &self,
        x: &Tensor,
        _a: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = grad.elem_count() / grad.dim(D::Minus1)?;
        let (dx, da, db) = self.saved.backward(&grad.contiguous()?.reshape((rows, ()))?, x.track_op())?;
        Ok((dx.map(|dx| dx.reshape(x.shape())).transpose()?, Some(da), Some(db)))
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    handed_over!("lora-linear", y, 3);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.t()?.matmul(&self.h)?;
        let dh = (grad.matmul(&b.detach())? * self.scale)?;
        let xd = x.detach();
        let xm = match &self.mask {
            Some(m) => m.apply(&xd)?,
            None => xd,
        };
        let da = dh.t()?.matmul(&xm)?;
        let dx = if x.track_op() {
            let a = a.detach();
            match &self.mask {
                // Without dropout both products go into one buffer on a GPU.
                None if crate::ops::cuda::available(&grad) => {
                    Some(crate::ops::matmul::matmul_sum(&[(&grad, &self.w, false), (&dh, &a, false)])?)
                }
                None => Some((grad.matmul(&self.w)? + dh.matmul(&a)?)?),
                Some(m) => Some((grad.matmul(&self.w)? + m.apply(&dh.matmul(&a)?)?)?),
            }
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}

// The CPU body (f32).

/// A LoRA projection's forward, `x·Wᵀ + h·Bᵀ` (`x: [n, in]`, `w: [out, in]`, `h: [n, r]` the
/// scaled adapter input, `b: [out, r]`), as one row-major `[n, out]` buffer.
pub fn lora_forward(x: &Tensor, w: &Tensor, h: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let mut y = product(x, &w.t()?, 1.0)?;
    accumulate(&mut y, h, &b.t()?, 1.0)?;
    Ok(y)
}

/// A LoRA projection's input gradient, `∂y·W + ((∂h·A) ⊙ m)` (`grad: [n, out]`, `w: [out, in]`,
/// `dh: [n, r]`, `a: [r, in]`, `m` LoRA's dropout mask of the input, by element index as
/// [`crate::ops::dropout`] draws it), as one buffer: the rank-r product first, masked in place, then the
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
        crate::ops::dropout::apply_in_place(&mut dx, seed, keep, offset);
    }
    accumulate(&mut dx, grad, w, 1.0)?;
    Tensor::from_vec(dx, (grad.dim(0)?, w.dim(1)?), grad.device())
}
