//! What the ops' CUDA launches share. Row-wise CUDA kernels for training, compiled at run time by NVRTC (so the CPU build and CI need
//! no CUDA): the causal softmax of attention (scale, mask and softmax in one pass, and its
//! backward) and the cross-entropy of LM-head logits (row log-sum-exp and target logit in one
//! pass, and `softmax − onehot` in one pass backward). Composed from candle ops, each of these was
//! five to ten passes over `[rows, cols]` tensors (measured on the H200, 1B shape, 8×1024 tokens:
//! attention 30 ms per layer forward+backward, cross-entropy 129 ms per step).
//!
//! One block per row; f32 arithmetic inside; bf16 handled as raw 16-bit words (no CUDA headers
//! needed by NVRTC). Each op is a candle `CustomOp` without backward, used by the ops
//! inside their forward and backward; [`available`] says whether a tensor's device has them.

//!
//! The CUDA C lives in `src/kernels/*.cu` (one file per op, `common.cuh` first), compiled as one
//! module; `scripts/gpu/check-kernels.py` compiles the same files.

use candle_core::{CpuStorage, Result, Shape, Tensor};

/// A candle op that only runs on a CUDA device (an `launch::` launch); the CPU path composes
/// candle's ops instead, so `cpu_fwd` is an error.
macro_rules! gpu_only {
    ($op:ty, 1, $name:literal, |$s:tt, $a:tt, $al:tt| $body:expr) => {
        impl ::candle_core::CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
                $crate::ops::cuda::no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            fn cuda_fwd(&$s, $a: &::candle_core::CudaStorage, $al: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
                $body
            }
        }
    };
    ($op:ty, 2, $name:literal, |$s:tt, $a:tt, $al:tt, $b:tt, $bl:tt| $body:expr) => {
        impl ::candle_core::CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
                $crate::ops::cuda::no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            #[rustfmt::skip]
            fn cuda_fwd(&$s, $a: &::candle_core::CudaStorage, $al: &::candle_core::Layout, $b: &::candle_core::CudaStorage, $bl: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
                $body
            }
        }
    };
    ($op:ty, 3, $name:literal, |$s:tt, $a:tt, $al:tt, $b:tt, $bl:tt, $c:tt, $cl:tt| $body:expr) => {
        impl ::candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            #[rustfmt::skip]
            fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
                $crate::ops::cuda::no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            #[rustfmt::skip]
            fn cuda_fwd(&$s, $a: &::candle_core::CudaStorage, $al: &::candle_core::Layout, $b: &::candle_core::CudaStorage, $bl: &::candle_core::Layout, $c: &::candle_core::CudaStorage, $cl: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
                $body
            }
        }
    };
}

/// Whether the fused kernels run on `t`'s device (a CUDA device in a CUDA build, f32 or bf16).
pub fn available(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), candle_core::DType::BF16 | candle_core::DType::F32)
}

pub(crate) fn no_cpu(name: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{name}: a CUDA kernel; the CPU path uses candle's ops")
}

#[cfg(feature = "cuda")]
pub(crate) mod launch {
    //! What the ops' launch modules share. SAFETY (every `unsafe` in them): outputs are allocated
    //! for exactly the elements the kernels write, inputs are contiguous views of the sizes the
    //! kernels read, and all work runs on candle's one stream.
    use std::sync::OnceLock;

    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use candle_core::{DType, Layout, Result};

    /// The kernels' CUDA C, in the order NVRTC compiles them (one module).
    const SOURCES: [&str; 7] = [
        include_str!("../kernels/common.cuh"),
        include_str!("../kernels/softmax.cu"),
        include_str!("../kernels/cross_entropy.cu"),
        include_str!("../kernels/dropout.cu"),
        include_str!("../kernels/swiglu.cu"),
        include_str!("../kernels/rms_norm.cu"),
        include_str!("../kernels/swap12.cu"),
    ];

    pub(crate) const MODULE: &str = "ferrotune_rows";

    pub(crate) fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let r = PTX.get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCES.concat().as_str())
                .map(|p| p.to_src())
                .map_err(|e| format!("{e:?}"))
        });
        match r {
            Ok(s) => Ok(s.as_str()),
            Err(e) => candle_core::bail!("compiling ferrotune's CUDA kernels with NVRTC: {e}"),
        }
    }

    pub(crate) fn suffix(dt: DType) -> Result<&'static str> {
        match dt {
            DType::BF16 => Ok("bf16"),
            DType::F32 => Ok("f32"),
            other => candle_core::bail!("ferrotune's CUDA kernels take f32 or bf16, not {other:?}"),
        }
    }

    pub(crate) fn rows_cols(l: &Layout) -> Result<(usize, usize)> {
        let cols = *l.dims().last().ok_or_else(|| candle_core::Error::Msg("scalar input".into()))?;
        Ok((l.shape().elem_count() / cols.max(1), cols))
    }

    pub(crate) fn cfg(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }

    macro_rules! view {
        ($s:expr, $l:expr, $t:ty) => {{
            let (a, b) = $l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("input not contiguous".into()))?;
            $s.as_cuda_slice::<$t>()?.slice(a..b)
        }};
    }

    /// Threads for a one-block-per-row kernel over `cols` columns: enough for the softmax
    /// kernels to keep the row in registers (8 values a thread) up to 8192 columns.
    pub(crate) fn row_threads(cols: usize) -> u32 {
        cols.div_ceil(8).next_power_of_two().clamp(128, 1024) as u32
    }

    /// A grid-stride launch over `n` elements.
    pub(crate) fn flat(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Whether a contiguous view starts on a 16-byte boundary for 8-element accesses (candle's
    /// buffers do; a narrowed view may not).
    pub(crate) fn aligned8(l: &Layout) -> bool {
        l.contiguous_offsets().is_some_and(|(a, _)| a % 8 == 0)
    }

    pub(crate) fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
        if a.shape() != b.shape() {
            candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.shape(), b.shape())
        }
        Ok(())
    }
    pub(crate) use view;

    /// Everything an op's `launch` module uses.
    pub(crate) mod prelude {
        pub(crate) use super::{
            MODULE, aligned8, cfg, flat, ptx, row_threads, rows_cols, same_shape, suffix, view,
        };
        pub(crate) use candle_core::backend::BackendStorage;
        pub(crate) use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        pub(crate) use candle_core::cuda_backend::{CudaStorage, WrapErr};
        pub(crate) use candle_core::{DType, Layout, Result, Shape};
        pub(crate) use half::bf16;
    }
}
