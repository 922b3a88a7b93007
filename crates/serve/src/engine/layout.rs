//! The weights as the engine wants them: every dense f32 projection and the head packed once
//! for products with few rows (`ferrotune_model::packed`). A decode step multiplies 1–32 rows by
//! every weight; gemm would repack each weight on every call (~a third of a step at 32 rows).
//! Values are unchanged (the packed product sums in a different order, so results differ from
//! gemm's in the last bits). Quantized weights, and weights not on the CPU in f32, stay as they
//! are. A tied head keeps the embedding table for lookups and gets its own packed copy.

use std::sync::Arc;

use candle_core::{DType, Result};
use ferrotune_model::packed::PackedF32;
use ferrotune_model::{BaseWeight, Linear, Llama};

/// Pack `model`'s dense f32 CPU weights (projections and head); returns how many were packed.
pub fn pack_for_decode(model: &mut Llama) -> Result<usize> {
    let mut packed = 0;
    for (_, lin) in model.linears_mut() {
        packed += usize::from(pack(lin)?);
    }
    packed += usize::from(pack(&mut model.lm_head)?);
    Ok(packed)
}

fn pack(lin: &mut Linear) -> Result<bool> {
    let BaseWeight::Dense(w) = lin.weight() else { return Ok(false) };
    if !w.device().is_cpu() || w.dtype() != DType::F32 || w.track_op() {
        return Ok(false);
    }
    let p = PackedF32::from_dense(w)?;
    lin.set_weight(BaseWeight::Packed(Arc::new(p)));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use ferrotune_model::{Logits, WeightMode};

    use super::*;

    #[test]
    fn packs_every_projection_and_the_head_and_the_model_computes_the_same() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        ferrotune_model::testing::write_tiny_model(dir.path())?;
        let m = ferrotune_model::load_path(dir.path(), WeightMode::F32, &Device::Cpu)?;
        let mut packed = m.model.clone();
        let n = pack_for_decode(&mut packed)?;
        assert_eq!(n, 7 * m.config().num_layers + 1);
        assert!(packed.linears_mut().iter().all(|(_, l)| matches!(l.weight(), BaseWeight::Packed(_))));
        assert!(matches!(packed.lm_head.weight(), BaseWeight::Packed(_)));
        // The original keeps its dense weights (a clone shares them; packing replaced its own).
        assert!(matches!(m.model.lm_head.weight(), BaseWeight::Dense(_)));
        // A second pass finds nothing left to pack.
        assert_eq!(pack_for_decode(&mut packed)?, 0);

        let ids = Tensor::new(&[[5u32, 80, 81, 82, 40, 9]], &Device::Cpu)?;
        let want = m.model.forward(&ids, None, None, Logits::All)?;
        let got = packed.forward(&ids, None, None, Logits::All)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "packed model logits differ by {diff}");
        Ok(())
    }
}
