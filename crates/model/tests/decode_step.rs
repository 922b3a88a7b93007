//! `Llama::decode_step` (one token for several sequences with their own caches) against each
//! sequence's own `forward` with its cache.

use candle_core::{Device, Tensor};
use ferrotune_model::testing::random_weights;
use ferrotune_model::{Family, KvCache, Llama, Logits, ModelConfig, WeightMode};

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn prefill(m: &Llama, ids: &[u32]) -> anyhow::Result<KvCache> {
    let mut cache = KvCache::new(m.config(), ids.len() + 4);
    m.forward(&Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;
    Ok(cache)
}

#[test]
fn decode_step_over_three_sequences_equals_each_alone() -> anyhow::Result<()> {
    for family in [Family::Llama, Family::Qwen2] {
        let cfg = ModelConfig::tiny(family);
        let m = Llama::load(&random_weights(&cfg, &Device::Cpu)?, &cfg, WeightMode::F32, None)?;
        let prompts: [&[u32]; 3] = [&[5, 17, 3, 99, 42, 7, 64], &[13], &[8, 21, 34, 55]];
        let mut batched: Vec<KvCache> =
            prompts.iter().map(|p| prefill(&m, p)).collect::<anyhow::Result<_>>()?;
        let mut alone: Vec<KvCache> =
            prompts.iter().map(|p| prefill(&m, p)).collect::<anyhow::Result<_>>()?;
        // Three steps, so the rows keep their different lengths while advancing together.
        for step in 0..3u32 {
            let ids: Vec<u32> = (0..3).map(|r| 11 + 7 * r + step).collect();
            let mut refs: Vec<&mut KvCache> = batched.iter_mut().collect();
            let logits = m.decode_step(&ids, &mut refs)?;
            assert_eq!(logits.dims(), &[3, cfg.vocab_size]);
            for (r, cache) in alone.iter_mut().enumerate() {
                let want = m.forward(
                    &Tensor::new(&[ids[r]], &Device::Cpu)?.unsqueeze(0)?,
                    None,
                    Some(cache),
                    Logits::Last,
                )?;
                let d = max_diff(&logits.get(r)?, &want.get(0)?)?;
                assert!(d < 1e-4, "{family:?} step {step} row {r}: {d}");
            }
        }
        for (p, c) in prompts.iter().zip(&batched) {
            assert_eq!(c.len(), p.len() + 3);
        }
    }
    Ok(())
}

#[test]
fn decode_step_respects_the_sliding_window() -> anyhow::Result<()> {
    let mut cfg = ModelConfig::tiny(Family::Llama);
    cfg.sliding_window = Some(4);
    let m = Llama::load(&random_weights(&cfg, &Device::Cpu)?, &cfg, WeightMode::F32, None)?;
    let ids: Vec<u32> = vec![5, 17, 3, 99, 42, 7, 64, 1];
    let full =
        m.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, None, None, Logits::All)?;
    let mut cache = prefill(&m, &ids[..6])?;
    let step = m.decode_step(&ids[6..7], &mut [&mut cache])?;
    assert!(max_diff(&step.get(0)?, &full.get(0)?.get(6)?)? < 1e-4);
    Ok(())
}

#[test]
fn decode_step_refuses_mismatched_inputs() -> anyhow::Result<()> {
    let cfg = ModelConfig::tiny(Family::Llama);
    let m = Llama::load(&random_weights(&cfg, &Device::Cpu)?, &cfg, WeightMode::F32, None)?;
    let mut c = prefill(&m, &[1, 2, 3])?;
    assert!(m.decode_step(&[1, 2], &mut [&mut c]).is_err());
    assert!(m.decode_step(&[], &mut []).is_err());
    Ok(())
}
