//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update order), global-norm
//! gradient clipping, and state that checkpoints can save and restore exactly. candle-nn's AdamW
//! keeps its moments private, which would make `--resume` impossible — hence this small module.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var, backprop::GradStore};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

pub struct AdamW {
    params: AdamWParams,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// On a GPU: the moments of all variables as one flat tensor each, updated by ~10 kernels
    /// per step instead of ~10 per variable (launch-bound: 60 ms of a 640 ms step at 224 LoRA
    /// tensors on the H200). `m`/`v` are then empty. Same arithmetic per element.
    flat: Option<(Tensor, Tensor)>,
    /// Optimizer steps taken (bias correction uses it).
    pub t: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let on_gpu = vars.first().is_some_and(|(_, v)| !v.device().is_cpu());
        if on_gpu {
            let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
            let (dt, dev) = (vars[0].1.dtype(), vars[0].1.device().clone());
            let flat = (Tensor::zeros(n, dt, &dev)?, Tensor::zeros(n, dt, &dev)?);
            return Ok(Self { params, vars, m: Vec::new(), v: Vec::new(), flat: Some(flat), t: 0 });
        }
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { params, vars, m, v, flat: None, t: 0 })
    }

    fn flatten(ts: &[Tensor]) -> candle_core::Result<Tensor> {
        let parts = ts.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// Per-variable views of a flat tensor.
    fn split(&self, flat: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut off = 0;
        let mut out = Vec::with_capacity(self.vars.len());
        for (_, v) in &self.vars {
            let n = v.elem_count();
            out.push(flat.narrow(0, off, n)?.reshape(v.shape())?);
            off += n;
        }
        Ok(out)
    }

    /// The moments per variable (`m`, `v`), whichever way they are kept.
    fn moments(&self) -> candle_core::Result<(Vec<Tensor>, Vec<Tensor>)> {
        match &self.flat {
            Some((m, v)) => Ok((self.split(m)?, self.split(v)?)),
            None => Ok((self.m.clone(), self.v.clone())),
        }
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with the given gradients (already averaged and clipped) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        if let Some((fm, fv)) = &self.flat {
            let g = Self::flatten(grads)?;
            let thetas: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
            let theta = Self::flatten(&thetas)?;
            let m = ((fm * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((fv * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let decayed = if p.weight_decay > 0.0 { (theta * (1.0 - lr * p.weight_decay))? } else { theta };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            let new = (decayed - (update * lr)?)?;
            for ((_, var), t) in self.vars.iter().zip(self.split(&new)?) {
                var.set(&t)?;
            }
            self.flat = Some((m, v));
            return Ok(());
        }
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let theta = var.as_tensor();
            let decayed =
                if p.weight_decay > 0.0 { (theta * (1.0 - lr * p.weight_decay))? } else { theta.clone() };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        let (ms, vs) = self.moments()?;
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), ms[i].clone());
            map.insert(format!("v.{name}"), vs[i].clone());
        }
        candle_core::safetensors::save(&map, path).map_err(|e| TrainError::file(path, e))
    }

    pub fn load(&mut self, path: &Path, t: u64) -> Result<()> {
        let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .map_err(|e| TrainError::file(path, e))?;
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        for (name, var) in &self.vars {
            for (key, out) in [(format!("m.{name}"), &mut ms), (format!("v.{name}"), &mut vs)] {
                let t = map
                    .get(&key)
                    .ok_or_else(|| TrainError::file(path, format!("no optimizer state `{key}`")))?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(TrainError::file(path, format!("`{key}` has shape {:?}", t.dims())));
                }
                out.push(t.to_device(var.device())?);
            }
        }
        if self.flat.is_some() {
            self.flat = Some((Self::flatten(&ms)?, Self::flatten(&vs)?));
        } else {
            (self.m, self.v) = (ms, vs);
        }
        self.t = t;
        Ok(())
    }
}

/// Gradients of `vars` in `grads`, as one list (zeros for a variable the loss did not reach).
pub fn collect_grads(vars: &[(String, Var)], grads: &GradStore) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|(_, v)| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(v.as_tensor().zeros_like()?),
        })
        .collect()
}

/// Scale gradients in place so their global L2 norm is at most `max_norm` (0 = no clipping);
/// returns the norm before clipping, as `torch.nn.utils.clip_grad_norm_` does.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    // Each tensor's sum of squares on the device, read back in one transfer (one sync, not one
    // per tensor), summed in f64 here.
    let sums =
        grads.iter().map(|g| g.sqr()?.sum_all()?.reshape(1)).collect::<candle_core::Result<Vec<_>>>()?;
    let sq: f64 = if sums.is_empty() {
        0.0
    } else {
        Tensor::cat(&sums, 0)?.to_vec1::<f32>()?.iter().map(|&x| x as f64).sum()
    };
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign() -> Result<()> {
        let v = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu)?)?;
        let mut opt = AdamW::new(vec![("w".into(), v.clone())], AdamWParams::default())?;
        let g = Tensor::new(&[0.5f32, -0.1, 0.0], &Device::Cpu)?;
        opt.step(&[g], 0.1)?;
        let w = v.as_tensor().to_vec1::<f32>()?;
        // Bias-corrected first step: update = g/|g| (= sign), 0 where g = 0.
        assert!((w[0] - 0.9).abs() < 1e-5 && (w[1] + 1.9).abs() < 1e-5 && (w[2] - 3.0).abs() < 1e-6, "{w:?}");
        Ok(())
    }

    #[test]
    fn decoupled_weight_decay_shrinks_weights_without_gradient() -> Result<()> {
        let v = Var::from_tensor(&Tensor::new(&[2.0f32], &Device::Cpu)?)?;
        let params = AdamWParams { weight_decay: 0.5, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), v.clone())], params)?;
        opt.step(&[Tensor::zeros(1, DType::F32, &Device::Cpu)?], 0.1)?;
        assert!((v.as_tensor().to_vec1::<f32>()?[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_original() -> Result<()> {
        let mut g = vec![Tensor::new(&[3.0f32], &Device::Cpu)?, Tensor::new(&[4.0f32], &Device::Cpu)?];
        let norm = clip_global_norm(&mut g, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let a = g[0].to_vec1::<f32>()?[0];
        let b = g[1].to_vec1::<f32>()?[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-5);
        Ok(())
    }
}
