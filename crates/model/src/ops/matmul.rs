//! Products for training: a frozen weight's matmul whose backward gives only the input's
//! gradient, and summed products into one buffer (cuBLAS `β = 1`) on a GPU.

use candle_core::{CustomOp1, Result, Tensor};

use super::Slot;

/// `x·Wᵀ` for a frozen `W` whose input needs a gradient (LoRA training). candle's matmul
/// backward computes the gradient of both operands, so a frozen weight would cost a second
/// full-size matmul and a weight-shaped buffer per layer per step (the LM head alone: 28M
/// floats for SmolLM2). The backward here returns only `∂L/∂x = ∂L/∂y · W`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.detach().matmul(&w.t()?)?;
    x.apply_op1(FrozenMatmul { y: Slot::new(y), w: w.clone() })
}

struct FrozenMatmul {
    y: Slot,
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    handed_over!("frozen-matmul", y, 1);

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `Σ xᵢ·op(wᵢ)` over 2-D row-major terms (`op` = transpose when the flag is set), summed by
/// cuBLAS into one output (`β = 1` after the first product) instead of separate products and
/// adds: `[n, in]·[out, in]ᵀ + [n, r]·[out, r]ᵀ` (a frozen linear plus its LoRA), or
/// `[n, out]·[out, in] + [n, r]·[r, in]` (its input gradient). All contiguous, one dtype.
pub fn matmul_sum(terms: &[(&Tensor, &Tensor, bool)]) -> Result<Tensor> {
    let Some((x0, _, _)) = terms.first() else { candle_core::bail!("matmul_sum: no terms") };
    let terms: Vec<(Tensor, Tensor, bool)> =
        terms.iter().map(|(x, w, t)| Ok((x.contiguous()?, w.contiguous()?, *t))).collect::<Result<_>>()?;
    x0.contiguous()?.apply_op1_no_bwd(&MatmulSum { terms })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct MatmulSum {
    terms: Vec<(Tensor, Tensor, bool)>,
}

gpu_only!(MatmulSum, 1, "ft-matmul-sum", |self, _, _| launch::matmul_sum(&self.terms));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod launch {
    //! SAFETY: as every launch (see `ops::cuda::launch`).
    use crate::ops::cuda::launch::prelude::*;

    pub fn matmul_sum(
        terms: &[(candle_core::Tensor, candle_core::Tensor, bool)],
    ) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::cublas::{result as blas, sys as bsys};
        use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
        let (x0, w0, t0) = &terms[0];
        let dt = x0.dtype();
        let rows = x0.dim(0)?;
        let cols = if *t0 { w0.dim(0)? } else { w0.dim(1)? };
        let candle_core::Device::Cuda(dev) = x0.device() else {
            candle_core::bail!("matmul_sum: not on a CUDA device")
        };
        let (cuda_dt, _) = match dt {
            DType::BF16 => (bsys::cudaDataType_t::CUDA_R_16BF, 2),
            DType::F32 => (bsys::cudaDataType_t::CUDA_R_32F, 4),
            other => candle_core::bail!("matmul_sum: {other:?}"),
        };
        macro_rules! go {
            ($ty:ty) => {{
                let mut out = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let handle = dev.cublas_handle();
                for (i, (x, w, transposed)) in terms.iter().enumerate() {
                    let (xr, k) = x.dims2()?;
                    let (wk, wn) = if *transposed { (w.dim(1)?, w.dim(0)?) } else { w.dims2()? };
                    if xr != rows || wk != k || wn != cols || x.dtype() != dt || w.dtype() != dt {
                        candle_core::bail!(
                            "matmul_sum: term {i} is {:?}·{:?}{} for [{rows}, {cols}]",
                            x.shape(),
                            w.shape(),
                            if *transposed { "ᵀ" } else { "" }
                        )
                    }
                    let (xs, xl) = x.storage_and_layout();
                    let (ws, wl) = w.storage_and_layout();
                    let (candle_core::Storage::Cuda(xs), candle_core::Storage::Cuda(ws)) = (&*xs, &*ws)
                    else {
                        candle_core::bail!("matmul_sum: not on a CUDA device")
                    };
                    let xv = view!(xs, xl, $ty);
                    let wv = view!(ws, wl, $ty);
                    let stream = out.stream().clone();
                    let (xp, _gx) = xv.device_ptr(&stream);
                    let (wp, _gw) = wv.device_ptr(&stream);
                    let (op, _go) = out.device_ptr_mut(&stream);
                    let (alpha, beta) = (1f32, if i == 0 { 0f32 } else { 1f32 });
                    // Row-major out[rows, cols] is column-major [cols, rows]: out = op(w)ᵀ-side first.
                    let (transa, lda) = if *transposed {
                        (bsys::cublasOperation_t::CUBLAS_OP_T, k)
                    } else {
                        (bsys::cublasOperation_t::CUBLAS_OP_N, cols)
                    };
                    unsafe {
                        blas::gemm_ex(
                            *handle.handle(),
                            transa,
                            bsys::cublasOperation_t::CUBLAS_OP_N,
                            cols as i32,
                            rows as i32,
                            k as i32,
                            (&alpha) as *const f32 as *const _,
                            wp as *const _,
                            cuda_dt,
                            lda as i32,
                            xp as *const _,
                            cuda_dt,
                            k as i32,
                            (&beta) as *const f32 as *const _,
                            op as *mut _,
                            cuda_dt,
                            cols as i32,
                            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                        )
                    }
                    .map_err(|e| candle_core::Error::Msg(format!("matmul_sum: cuBLAS {e:?}")))?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if dt == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, Shape::from((rows, cols))))
    }
}
