//! Rotary position embeddings in HF's "rotate half" layout (`LlamaRotaryEmbedding`), with the
//! config's θ and scaling. Tables are computed once per model.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

/// Inverse frequencies after scaling, as transformers' `_compute_default_rope_parameters`,
/// `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters` define them.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    /// Tables cover `max_position_embeddings` positions (capped at 64Ki to bound memory; longer
    /// sequences are refused by `positions`).
    pub fn new(cfg: &ModelConfig, freq_factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let mut inv = inv_freq(cfg);
        // llama.cpp stores Llama-3.1-style scaling as per-frequency divisors (`rope_freqs.weight`).
        if let Some(ff) = freq_factors {
            for (f, d) in inv.iter_mut().zip(ff) {
                *f /= *d as f64;
            }
        }
        let max_positions = cfg.max_position_embeddings.clamp(1, 65_536);
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv {
                // Angles in f64 then rounded: HF computes them in f32, the difference is < 1 ulp of
                // the final f32 cos/sin for positions in range.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
            max_positions,
        })
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
            max_positions: self.max_positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos/sin for the given positions: `[t, d/2]` for a contiguous range shared by the whole
    /// batch, `[b, t, d/2]` when rows have their own positions (left padding).
    pub fn tables(&self, positions: &Positions) -> Result<(Tensor, Tensor)> {
        match positions {
            Positions::Range { start, len } => {
                if start + len > self.max_positions {
                    candle_core::bail!(
                        "position {} beyond the model's {} positions",
                        start + len,
                        self.max_positions
                    )
                }
                Ok((self.cos.narrow(0, *start, *len)?, self.sin.narrow(0, *start, *len)?))
            }
            Positions::PerRow { ids, b, t } => {
                let cos = self.cos.index_select(ids, 0)?;
                let sin = self.sin.index_select(ids, 0)?;
                let half = self.cos.dim(1)?;
                Ok((cos.reshape((*b, *t, half))?, sin.reshape((*b, *t, half))?))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Positions {
    Range {
        start: usize,
        len: usize,
    },
    /// `ids`: flattened `[b * t]` u32 positions.
    PerRow {
        ids: Tensor,
        b: usize,
        t: usize,
    },
}

/// Apply RoPE to `x: [b, heads, t, d]` with candle's fused kernel; `differentiable` attaches
/// its backward (the inverse rotation, `handoff::rope`).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable { crate::handoff::rope(x, cos, sin) } else { candle_nn::rotary_emb::rope(x, cos, sin) }
}

pub fn positions_tensor(per_row: &[u32], b: usize, t: usize, device: &Device) -> Result<Positions> {
    let ids = Tensor::from_slice(per_row, b * t, device)?.to_dtype(DType::U32)?;
    Ok(Positions::PerRow { ids, b, t })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    #[test]
    fn fused_rope_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = ModelConfig::tiny(Family::Llama);
        let rope = Rope::new(&cfg, None, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 5, cfg.head_dim), &dev)?;
        let (c, s) = rope.tables(&Positions::Range { start: 3, len: 5 })?;
        let a = apply(&x, &c, &s, false)?;
        let b = candle_nn::rotary_emb::rope_slow(&x, &c, &s)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn llama3_scaling_leaves_high_frequencies_alone_and_divides_low_ones() {
        let mut cfg = ModelConfig::tiny(Family::Llama);
        cfg.head_dim = 128;
        cfg.rope_theta = 500_000.0;
        let plain = inv_freq(&cfg);
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = inv_freq(&cfg);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((plain[last] / 8.0 - scaled[last]).abs() < 1e-15);
    }
}
