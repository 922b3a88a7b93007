//! SwiGLU `silu(g) ⊙ u`: the autograd op, its CPU body (one vectorised pass each way) and its
//! CUDA kernels (`kernels/swiglu.cu`).

use candle_core::{CpuStorage, CustomOp2, Result, Shape, Tensor};

use super::Slot;
use super::cpu::with_slices;

/// SwiGLU `silu(g) ⊙ u`, differentiable, with only `g` and `u` kept for backward (the composed
/// form keeps `silu(g)` and builds about ten `[n, ffn]` temporaries in backward). On a GPU one
/// kernel each way; `∂g = ∂y⊙u⊙σ(g)⊙(1 + g⊙(1 − σ(g)))`, `∂u = ∂y⊙silu(g)`.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (gd, ud) = (g.detach(), u.detach());
    if crate::ops::cpu::applies(&gd) {
        return g
            .apply_op2(u, SwiGluGrad { y: Slot::cpu_buffer(crate::ops::swiglu::swiglu_forward(&gd, &ud)?) });
    }
    let y = if crate::ops::cuda::available(&gd) {
        crate::ops::swiglu::swiglu_cuda(&gd, &ud)?
    } else {
        (gd.silu()? * &ud)?
    };
    g.apply_op2(u, SwiGluGrad { y: Slot::new(y) })
}

struct SwiGluGrad {
    y: Slot,
}

impl CustomOp2 for SwiGluGrad {
    handed_over!("swiglu", y, 2);

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u) = (g.detach(), u.detach());
        if crate::ops::cuda::available(&g) {
            let both = crate::ops::swiglu::swiglu_backward_cuda(&g, &u, grad)?;
            return Ok((Some(both.get(0)?), Some(both.get(1)?)));
        }
        if crate::ops::cpu::applies(&g) {
            let (dg, du) = crate::ops::swiglu::swiglu_backward(&g, &u, grad)?;
            return Ok((Some(dg), Some(du)));
        }
        let s = candle_nn::ops::sigmoid(&g)?;
        let dg = ((grad * &u)? * &s)?.mul(&((&g * (1.0 - &s)?)? + 1.0)?)?;
        let du = (grad * (&g * &s)?)?;
        Ok((Some(dg), Some(du)))
    }
}

// The CPU body (f32).

/// `σ(x) = 1/(1 + e^(−x))` with the vectorisable exp.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::fastmath::exp(-x))
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

// The CUDA kernels.

/// SwiGLU `silu(g) ⊙ u` (same shapes), f32 inside.
pub fn swiglu_cuda(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &SwiGlu)
}

/// SwiGLU's backward: `[2, ..g's shape]` holding `∂g` then `∂u`.
pub fn swiglu_backward_cuda(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op3_no_bwd(&u.contiguous()?, &dy.contiguous()?, &SwiGluBwd)
}

struct SwiGlu;

struct SwiGluBwd;

gpu_only!(SwiGlu, 2, "ft-swiglu", |self, g, gl, u, ul| launch::swiglu(g, gl, u, ul));

gpu_only!(SwiGluBwd, 3, "ft-swiglu-bwd", |self, g, gl, u, ul, dy, dyl| launch::swiglu_bwd(
    g, gl, u, ul, dy, dyl
));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn swiglu(
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("swiglu", gl, ul)?;
        let dev = g.device().clone();
        let n = gl.shape().elem_count();
        let func =
            dev.get_or_load_custom_func(&format!("swiglu_fwd_{}", suffix(g.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let vec = i32::from(aligned8(gl) && aligned8(ul));
        macro_rules! go {
            ($ty:ty) => {{
                let (gv, uv) = (view!(g, gl, $ty), view!(u, ul, $ty));
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&vec);
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if g.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, gl.shape().clone()))
    }

    pub fn swiglu_bwd(
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("swiglu backward", gl, ul)?;
        same_shape("swiglu backward", gl, dyl)?;
        let dev = g.device().clone();
        let n = gl.shape().elem_count();
        let func =
            dev.get_or_load_custom_func(&format!("swiglu_bwd_{}", suffix(g.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let vec = i32::from(aligned8(gl) && aligned8(ul) && aligned8(dyl));
        macro_rules! go {
            ($ty:ty) => {{
                let (gv, uv, dv) = (view!(g, gl, $ty), view!(u, ul, $ty), view!(dy, dyl, $ty));
                let y = unsafe { dev.alloc::<$ty>(2 * n)? };
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&dv);
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&vec);
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if g.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((out, Shape::from(dims)))
    }
}
