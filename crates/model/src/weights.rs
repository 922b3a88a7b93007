//! A name → tensor map read from a checkpoint, with HF names as keys. Both loaders (safetensors
//! and GGUF) fill it; the model takes tensors out of it by name and checks their shapes, so every
//! missing or misshaped tensor is reported with the file it should have come from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::linear::BaseWeight;
use crate::qkernels::QWeight;

#[derive(Debug, Clone)]
pub enum WeightTensor {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl WeightTensor {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Dense(t) => t.dims().to_vec(),
            Self::Quantized(q) => q.shape().dims().to_vec(),
        }
    }
}

/// How the model keeps its linear weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// Everything dequantized to f32: the training path and the reference for parity.
    #[default]
    F32,
    /// Linear layers keep the GGUF's quantized blocks (candle's quantized matmul): the fast
    /// inference path. Norms and the embedding lookup stay f32.
    Quantized,
}

#[derive(Debug)]
pub struct Weights {
    /// The checkpoint (file or directory) the tensors came from, for error messages.
    pub source: PathBuf,
    map: HashMap<String, (PathBuf, WeightTensor)>,
    device: Device,
}

impl Weights {
    pub fn new(source: impl Into<PathBuf>, device: Device) -> Self {
        Self { source: source.into(), map: HashMap::new(), device }
    }

    pub fn insert(&mut self, name: String, file: &Path, t: WeightTensor) {
        self.map.insert(name, (file.to_path_buf(), t));
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn lookup(&self, name: &str, shape: &[usize]) -> Result<(&PathBuf, &WeightTensor)> {
        let (file, t) = self
            .map
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.source.clone(), name: name.to_string() })?;
        let got = t.dims();
        if got != shape {
            return Err(ModelError::ShapeMismatch {
                path: file.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
            });
        }
        Ok((file, t))
    }

    /// A dense f32 tensor of the given shape (dequantized if stored quantized).
    pub fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (file, t) = self.lookup(name, shape)?;
        let bad = |e: candle_core::Error| ModelError::BadTensor {
            path: file.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        };
        match t {
            WeightTensor::Dense(t) => t.to_dtype(DType::F32).map_err(bad),
            WeightTensor::Quantized(q) => q.dequantize(&self.device).map_err(bad),
        }
    }

    /// A linear weight `[out, in]`, kept quantized when `mode` asks for it and the file has it so.
    pub fn linear(&self, name: &str, out: usize, inp: usize, mode: WeightMode) -> Result<BaseWeight> {
        let (file, t) = self.lookup(name, &[out, inp])?;
        match (mode, t) {
            (WeightMode::Quantized, WeightTensor::Quantized(q)) if QWeight::supports(q.dtype()) => {
                let k = QWeight::from_qtensor(q).map_err(|e| ModelError::BadTensor {
                    path: file.clone(),
                    name: name.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(BaseWeight::Kernel(Arc::new(k)))
            }
            (WeightMode::Quantized, WeightTensor::Quantized(q)) => {
                let qm = QMatMul::from_arc(q.clone()).map_err(|e| ModelError::BadTensor {
                    path: file.clone(),
                    name: name.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(BaseWeight::Quantized(Arc::new(qm)))
            }
            _ => Ok(BaseWeight::Dense(self.dense(name, &[out, inp])?)),
        }
    }
}
