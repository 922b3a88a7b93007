//! Training ops, one file per op: each holds the op's autograd form, its CPU body (f32) and its
//! CUDA launch side by side ([`cpu`] and [`cuda`] hold what the bodies share).
//!
//! Ops whose forward result is computed off the autograd graph and handed over, so the graph
//! holds only what the hand-written backward needs — on every device.
//!
//! candle records each op's inputs in the graph until backward. Two places in training pay for
//! that: a frozen weight's matmul (candle's backward would compute the weight's gradient too) and
//! attention scores (`q·kᵀ`, `[b, heads, t, t]`, kept alive by the softmax that reads them). Here
//! the result is computed with ordinary (no-grad) tensor ops — candle's fused kernels on the CPU
//! or the GPU — and a custom op attaches it to the graph as a function of the inputs whose
//! gradients are wanted, with a backward of our own (some recompute what they need instead). The op's forward only hands the stored
//! result over (a copy on the device; the original is dropped at once).

//!
//! - [`matmul`]: a frozen weight's product (`frozen_matmul`), summed products (`matmul_sum`).
//! - [`lora`]: a frozen linear layer with its LoRA adapter as one op.
//! - [`layer`]: a decoder layer's attention and MLP halves with LoRA on every projection as one op
//!   each (the CPU's fused training path).
//! - [`norm`], [`swiglu`], [`rope`] (tables, the rotation, the heads' split and merge), [`dropout`],
//!   [`loss`] (the LM head's cross-entropy).
//! - Attention's ops live in [`crate::attention`].

use std::sync::Mutex;

use candle_core::{CpuStorage, CudaStorage, Result, Shape, Storage, Tensor};

/// `name`, `cpu_fwd` and `cuda_fwd` of an op whose result waits in `self.$slot` (arity 1–3).
macro_rules! handed_over {
    ($name:literal, $slot:ident, 1) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
            self.$slot.cpu($name)
        }
        fn cuda_fwd(&self, _: &::candle_core::CudaStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
            self.$slot.cuda($name)
        }
    };
    ($name:literal, $slot:ident, 2) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
            self.$slot.cpu($name)
        }
        fn cuda_fwd(&self, _: &::candle_core::CudaStorage, _: &::candle_core::Layout, _: &::candle_core::CudaStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
            self.$slot.cuda($name)
        }
    };
    ($name:literal, $slot:ident, 3) => {
        fn name(&self) -> &'static str {
            $name
        }
        #[rustfmt::skip]
        fn cpu_fwd(&self, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout, _: &::candle_core::CpuStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CpuStorage, ::candle_core::Shape)> {
            self.$slot.cpu($name)
        }
        #[rustfmt::skip]
        fn cuda_fwd(&self, _: &::candle_core::CudaStorage, _: &::candle_core::Layout, _: &::candle_core::CudaStorage, _: &::candle_core::Layout, _: &::candle_core::CudaStorage, _: &::candle_core::Layout) -> ::candle_core::Result<(::candle_core::CudaStorage, ::candle_core::Shape)> {
            self.$slot.cuda($name)
        }
    };
}

#[macro_use]
pub mod cuda;
pub(crate) mod cpu;
pub mod dropout;
pub mod layer;
pub mod lora;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;

#[cfg(test)]
mod tests;

/// A result waiting to be handed to the graph by the op's forward (which runs once).
pub(crate) struct Slot(Mutex<Option<Handed>>);

enum Handed {
    /// A tensor: handed over as a copy of its storage.
    Tensor(Tensor),
    /// A CPU buffer of our own (see [`crate::ops::cpu`]): moved, never copied.
    Cpu(CpuStorage, Shape),
}

impl Slot {
    pub(crate) fn new(y: Tensor) -> Self {
        Self(Mutex::new(Some(Handed::Tensor(y))))
    }

    pub(crate) fn cpu_buffer((storage, shape): (CpuStorage, Shape)) -> Self {
        Self(Mutex::new(Some(Handed::Cpu(storage, shape))))
    }

    pub(crate) fn take(&self, op: &str) -> Result<(Storage, Shape)> {
        let y = self.0.lock().ok().and_then(|mut g| g.take());
        let y = match y {
            None => candle_core::bail!("{op}: forward ran twice"),
            Some(Handed::Cpu(storage, shape)) => return Ok((Storage::Cpu(storage), shape)),
            Some(Handed::Tensor(y)) => y,
        };
        let y = y.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        if layout.start_offset() != 0 {
            candle_core::bail!("{op}: result is a view");
        }
        Ok((storage.try_clone(layout)?, y.shape().clone()))
    }

    pub(crate) fn cpu(&self, op: &str) -> Result<(CpuStorage, Shape)> {
        match self.take(op)? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{op}: result not on the CPU"),
        }
    }

    pub(crate) fn cuda(&self, op: &str) -> Result<(CudaStorage, Shape)> {
        match self.take(op)? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{op}: result not on the CUDA device"),
        }
    }
}

/// A CPU body's result as a tensor (no copy).
pub(crate) fn cpu_tensor(
    (storage, shape): (CpuStorage, Shape),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let CpuStorage::F32(v) = storage else { candle_core::bail!("cpu op: expected an f32 result") };
    Tensor::from_vec(v, shape, device)
}
