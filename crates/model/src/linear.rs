//! The linear layer seam. Every projection of the model is a [`Linear`]: a frozen base weight
//! (dense f32 for training, or quantized GGUF blocks for the fast inference path) plus an optional
//! [`LinearAdapter`] whose output is added to the base output — this is where LoRA plugs in.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

use crate::lora::LoraLayer;
use crate::ops::lora::LoraParts;
use crate::qkernels::QWeight;

/// Something that adds a learned delta to a linear layer's output: `y = W x + b + delta(x)`.
/// LoRA implements it as `scale · B(A(dropout(x)))`. Training knows LoRA by its type
/// ([`crate::lora::LoraLayer`]): its fused ops are not part of this seam.
pub trait LinearAdapter: Any + Debug + Send + Sync {
    fn delta(&self, x: &Tensor) -> Result<Tensor>;
}

#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// `[out, in]` f32 (or any float dtype), differentiable.
    Dense(Tensor),
    /// GGUF quantized blocks, inference only (candle's `QMatMul` has no backward).
    Quantized(Arc<QMatMul>),
    /// Q4_1 / Q8_0 blocks with our own SIMD kernels (see `qkernels`), inference only.
    Kernel(Arc<QWeight>),
    /// f32 packed once for products with few rows (see `packed`), inference only.
    Packed(Arc<crate::packed::PackedF32>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl Linear {
    pub fn new(weight: BaseWeight, bias: Option<Tensor>, in_features: usize, out_features: usize) -> Self {
        Self { weight, bias, in_features, out_features, adapter: None }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn weight(&self) -> &BaseWeight {
        &self.weight
    }

    /// Replace the base weight (e.g. with a trainable `Var`'s tensor for full fine-tuning).
    pub fn set_weight(&mut self, weight: BaseWeight) {
        self.weight = weight;
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn set_bias(&mut self, bias: Option<Tensor>) {
        self.bias = bias;
    }

    /// The adapter when it is a LoRA layer.
    fn lora(&self) -> Option<&LoraLayer> {
        let a: &dyn Any = self.adapter.as_deref()?;
        a.downcast_ref::<LoraLayer>()
    }

    /// Whether this is a frozen dense layer without bias whose LoRA adapter is training (its
    /// variables in the graph): the layer can join the fused training ops.
    pub fn trains_lora(&self) -> bool {
        let BaseWeight::Dense(w) = &self.weight else { return false };
        self.bias.is_none() && !w.track_op() && self.lora().is_some_and(LoraLayer::is_training)
    }

    /// For [`Self::trains_lora`] layers: the weight and the adapter's parts in `dtype` (see
    /// [`LoraLayer::training_parts`]).
    pub fn training_lora(&self, dtype: candle_core::DType) -> Option<Result<LoraParts>> {
        let BaseWeight::Dense(w) = &self.weight else { return None };
        if !self.trains_lora() || w.dtype() != dtype {
            return None;
        }
        let parts = self.lora()?.training_parts(self.in_features, dtype)?;
        Some(parts.map(|(a, b, scale, mask)| LoraParts { w: w.clone(), a, b, scale, mask }))
    }

    pub fn adapter(&self) -> Option<&Arc<dyn LinearAdapter>> {
        self.adapter.as_ref()
    }

    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }

    /// The base weight as a dense `[out, in]` tensor (dequantizing if needed).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            BaseWeight::Dense(w) => Ok(w.clone()),
            BaseWeight::Quantized(q) => match q.as_ref() {
                QMatMul::QTensor(t) => t.dequantize(&t.device()),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
            },
            BaseWeight::Kernel(q) => q.dequantize(&candle_core::Device::Cpu),
            BaseWeight::Packed(p) => p.dequantize(&candle_core::Device::Cpu),
        }
    }

    /// `x: [.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // `adapted`: the adapter's delta is already in `y` (fused with a frozen base for training).
        let (y, adapted) = match &self.weight {
            BaseWeight::Dense(w) => {
                // Flatten leading dims into one matmul: one gemm call instead of a batched one.
                let lead = x.elem_count() / self.in_features;
                let x2 = x.reshape((lead, self.in_features))?;
                let fused = match self.lora() {
                    Some(l) if !w.track_op() => l.fused_with_frozen(&x2, w).transpose()?,
                    _ => None,
                };
                let (y, adapted) = match fused {
                    Some(y) => (y, true),
                    None if x2.track_op() && !w.track_op() => {
                        (crate::ops::matmul::frozen_matmul(&x2, w)?, false)
                    }
                    None => (x2.matmul(&w.t()?)?, false),
                };
                let mut out_dims = x.dims().to_vec();
                if let Some(last) = out_dims.last_mut() {
                    *last = self.out_features;
                }
                (y.reshape(out_dims)?, adapted)
            }
            BaseWeight::Quantized(q) => (q.forward(x)?, false),
            BaseWeight::Kernel(q) => (q.forward(x)?, false),
            BaseWeight::Packed(p) => (p.forward(x)?, false),
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &self.adapter {
            Some(a) if !adapted => y + a.delta(x)?,
            _ => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[derive(Debug)]
    struct Doubling;
    impl LinearAdapter for Doubling {
        fn delta(&self, x: &Tensor) -> Result<Tensor> {
            x.affine(2.0, 0.0)
        }
    }

    #[test]
    fn adapter_output_is_added_to_the_base_output() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::eye(3, DType::F32, &dev)?;
        let mut lin = Linear::new(BaseWeight::Dense(w), None, 3, 3);
        let x = Tensor::new(&[[1f32, 2., 3.]], &dev)?;
        assert_eq!(lin.forward(&x)?.to_vec2::<f32>()?, vec![vec![1., 2., 3.]]);
        lin.set_adapter(Some(Arc::new(Doubling)));
        assert_eq!(lin.forward(&x)?.to_vec2::<f32>()?, vec![vec![3., 6., 9.]]);
        Ok(())
    }

    #[test]
    fn frozen_weight_gets_no_gradient_and_input_gradient_is_exact() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev)?;
        let lin = Linear::new(BaseWeight::Dense(w.clone()), None, 3, 5);
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3), &dev)?)?;
        let y = lin.forward(x.as_tensor())?;
        assert_eq!(y.to_vec2::<f32>()?, x.as_tensor().matmul(&w.t()?)?.to_vec2::<f32>()?);
        let grads = y.sum_all()?.backward()?;
        // d(sum(x·Wᵀ))/dx = 1·W: every row of the gradient is the column sums of W.
        let want = Tensor::ones((2, 5), DType::F32, &dev)?.matmul(&w)?;
        let got = grads.get(x.as_tensor()).expect("x has a gradient");
        assert_eq!(got.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        assert!(grads.get(&w).is_none(), "the frozen weight must get no gradient");
        Ok(())
    }

    #[test]
    fn quantized_and_dense_weights_agree_within_quantization_error() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 256), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 256), &dev)?;
        let dense = Linear::new(BaseWeight::Dense(w.clone()), None, 256, 64);
        let q = candle_core::quantized::QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0)?;
        let quant = Linear::new(BaseWeight::Quantized(Arc::new(QMatMul::from_qtensor(q)?)), None, 256, 64);
        let a = dense.forward(&x)?;
        let b = quant.forward(&x)?;
        assert_eq!(a.dims(), &[2, 5, 64]);
        let rel = ((a.clone() - b)?.sqr()?.mean_all()?.to_scalar::<f32>()?
            / a.sqr()?.mean_all()?.to_scalar::<f32>()?)
        .sqrt();
        assert!(rel < 0.02, "relative error {rel}");
        Ok(())
    }
}
