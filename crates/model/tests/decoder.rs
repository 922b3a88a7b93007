//! Decoder invariants on tiny random models: cache, padding, op flavours, gradients.

use candle_core::{D, DType, Device, Tensor, Var};
use ferrotune_model::testing::random_weights;
use ferrotune_model::{Family, KvCache, Llama, Logits, ModelConfig, WeightMode};

fn tiny(family: Family) -> anyhow::Result<Llama> {
    let cfg = ModelConfig::tiny(family);
    let w = random_weights(&cfg, &Device::Cpu)?;
    Ok(Llama::load(&w, &cfg, WeightMode::F32, None)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn kv_cache_decode_equals_full_sequence_recompute() -> anyhow::Result<()> {
    for family in [Family::Llama, Family::Qwen2] {
        let m = tiny(family)?;
        let ids: Vec<u32> = vec![5, 17, 3, 99, 42, 7, 64, 1];
        let full =
            m.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, None, None, Logits::All)?;
        let mut cache = KvCache::new(m.config(), 4);
        // Prefill 3 tokens, then decode one at a time (the cache grows past its capacity hint).
        let first = m.forward(
            &Tensor::new(&ids[..3], &Device::Cpu)?.unsqueeze(0)?,
            None,
            Some(&mut cache),
            Logits::Last,
        )?;
        assert!(max_diff(&first, &full.get(0)?.get(2)?.unsqueeze(0)?)? < 1e-4);
        for (i, &id) in ids.iter().enumerate().skip(3) {
            let step = m.forward(
                &Tensor::new(&[id], &Device::Cpu)?.unsqueeze(0)?,
                None,
                Some(&mut cache),
                Logits::Last,
            )?;
            let d = max_diff(&step, &full.get(0)?.get(i)?.unsqueeze(0)?)?;
            assert!(d < 1e-4, "{family:?} position {i}: {d}");
        }
        assert_eq!(cache.len(), ids.len());
    }
    Ok(())
}

#[test]
fn left_padded_batch_of_two_equals_each_alone() -> anyhow::Result<()> {
    let m = tiny(Family::Llama)?;
    let dev = Device::Cpu;
    let long: Vec<u32> = vec![3, 8, 21, 34, 55, 89];
    let short: Vec<u32> = vec![13, 8, 2];
    let pad = long.len() - short.len();
    let mut padded = vec![0u32; pad];
    padded.extend(&short);
    let batch = Tensor::new([long.clone(), padded].concat().as_slice(), &dev)?.reshape((2, long.len()))?;
    let mut cache = KvCache::new(m.config(), 16);
    let both = m.forward(&batch, Some(&[0, pad]), Some(&mut cache), Logits::Last)?;
    let alone_long =
        m.forward(&Tensor::new(long.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::Last)?;
    let alone_short =
        m.forward(&Tensor::new(short.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::Last)?;
    assert!(max_diff(&both.get(0)?, &alone_long.get(0)?)? < 1e-4);
    assert!(max_diff(&both.get(1)?, &alone_short.get(0)?)? < 1e-4);
    // One decode step for both rows continues each sequence as if alone.
    let next = Tensor::new(&[[7u32], [9u32]], &dev)?;
    let step = m.forward(&next, None, Some(&mut cache), Logits::Last)?;
    let long2 = [long.as_slice(), &[7]].concat();
    let short2 = [short.as_slice(), &[9]].concat();
    let a = m.forward(&Tensor::new(long2.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::Last)?;
    let b = m.forward(&Tensor::new(short2.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::Last)?;
    assert!(max_diff(&step.get(0)?, &a.get(0)?)? < 1e-4);
    assert!(max_diff(&step.get(1)?, &b.get(0)?)? < 1e-4);
    Ok(())
}

#[test]
fn differentiable_ops_give_the_same_logits_as_fused_ones() -> anyhow::Result<()> {
    let mut m = tiny(Family::Llama)?;
    let ids = Tensor::new(&[[4u32, 9, 16, 25, 36]], &Device::Cpu)?;
    let fused = m.forward(&ids, None, None, Logits::All)?;
    m.set_differentiable(true);
    let diff = m.forward(&ids, None, None, Logits::All)?;
    assert!(max_diff(&fused, &diff)? < 1e-4);
    Ok(())
}

#[test]
fn gradients_reach_every_linear_layer_through_the_differentiable_path() -> anyhow::Result<()> {
    let mut m = tiny(Family::Llama)?;
    m.set_differentiable(true);
    // Make every projection weight a Var (as full fine-tuning will).
    let mut vars = Vec::new();
    for (name, lin) in m.linears_mut() {
        let v = Var::from_tensor(&lin.dense_weight()?)?;
        lin.set_weight(ferrotune_model::BaseWeight::Dense(v.as_tensor().clone()));
        vars.push((name, v));
    }
    let ids = Tensor::new(&[[4u32, 9, 16, 25, 36]], &Device::Cpu)?;
    let logits = m.forward(&ids, None, None, Logits::All)?;
    let targets = Tensor::new(&[9u32, 16, 25, 36, 49], &Device::Cpu)?;
    let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0)?, &targets)?;
    let grads = loss.backward()?;
    for (name, v) in &vars {
        let g = grads.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
        let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!(norm > 0.0, "zero gradient for {name}");
    }
    Ok(())
}

#[test]
fn logits_last_equals_the_last_row_of_logits_all() -> anyhow::Result<()> {
    let m = tiny(Family::Mistral)?;
    let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &Device::Cpu)?;
    let all = m.forward(&ids, None, None, Logits::All)?;
    let last = m.forward(&ids, None, None, Logits::Last)?;
    assert!(max_diff(&all.narrow(1, 2, 1)?.squeeze(1)?, &last)? < 1e-5);
    assert_eq!(last.dtype(), DType::F32);
    assert_eq!(last.dim(D::Minus1)?, 128);
    Ok(())
}

#[test]
fn missing_and_misshaped_tensors_are_named() -> anyhow::Result<()> {
    let cfg = ModelConfig::tiny(Family::Llama);
    let mut bad = cfg.clone();
    bad.intermediate_size = 100;
    let w = random_weights(&cfg, &Device::Cpu)?;
    let err = Llama::load(&w, &bad, WeightMode::F32, None).expect_err("shape mismatch");
    assert!(err.to_string().contains("model.layers.0.mlp.gate_proj.weight"), "{err}");
    assert!(err.to_string().contains("[100, 64]"), "{err}");
    let mut more = cfg.clone();
    more.num_layers = 3;
    let err = Llama::load(&w, &more, WeightMode::F32, None).expect_err("missing");
    assert!(err.to_string().contains("missing tensor `model.layers.2."), "{err}");
    Ok(())
}

#[test]
fn batched_generation_equals_each_prompt_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ferrotune_model::testing::write_tiny_model(dir.path())?;
    let m = ferrotune_model::load_path(dir.path(), WeightMode::F32, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = ["hi", "a much longer prompt than the first one", "mid length"]
        .iter()
        .map(|p| m.tokenizer.encode(p, false))
        .collect::<Result<_, _>>()?;
    // Random weights rarely pick EOS; a stop string on a common byte ends some rows early.
    let params = ferrotune_model::GenerateParams {
        max_tokens: 12,
        sampling: ferrotune_model::SamplingParams { temperature: 0.0, ..Default::default() },
        stop: vec!["e".into()],
        eos_ids: m.eos_ids.clone(),
    };
    let batch = ferrotune_model::generate_batch(&m.model, &m.tokenizer, &prompts, &params)?;
    assert_eq!(batch.len(), prompts.len());
    for (p, got) in prompts.iter().zip(&batch) {
        let alone = ferrotune_model::generate(&m.model, &m.tokenizer, p, &params, |_| {})?;
        assert_eq!(got.tokens, alone.tokens);
        assert_eq!(got.text, alone.text);
        assert_eq!(got.finish, alone.finish);
        assert_eq!(got.prompt_tokens, p.len());
    }
    Ok(())
}

/// Regression: `generate_batch` (what `eval` runs) prefilled the padded batch in one pass, so a
/// batch of long prompts held `[b, heads, t, t]` scores. Chunked, a padded batch gives the tokens
/// of one pass: chunks shorter than the shortest prompt, than the padding, and one past the end.
#[test]
fn batched_generation_prefilled_in_chunks_equals_one_pass() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ferrotune_model::testing::write_tiny_model(dir.path())?;
    let m = ferrotune_model::load_path(dir.path(), WeightMode::F32, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = [
        "hi",
        "a much longer prompt than the first one, long enough to span several chunks of the prefill",
        "mid length prompt",
    ]
    .iter()
    .map(|p| m.tokenizer.encode(p, false))
    .collect::<Result<_, _>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let params = ferrotune_model::GenerateParams {
        max_tokens: 10,
        sampling: ferrotune_model::SamplingParams { temperature: 0.0, ..Default::default() },
        stop: Vec::new(),
        eos_ids: m.eos_ids.clone(),
    };
    let whole = ferrotune_model::generate::generate_batch_chunked(
        &m.model,
        &m.tokenizer,
        &prompts,
        &params,
        longest,
    )?;
    assert!(whole.iter().all(|g| !g.tokens.is_empty()));
    for chunk in [1, 2, 7, longest - 1, longest + 5] {
        let chunked = ferrotune_model::generate::generate_batch_chunked(
            &m.model,
            &m.tokenizer,
            &prompts,
            &params,
            chunk,
        )?;
        for (a, b) in whole.iter().zip(&chunked) {
            assert_eq!(a.tokens, b.tokens, "chunk {chunk}");
            assert_eq!(a.finish, b.finish, "chunk {chunk}");
        }
    }
    Ok(())
}

/// Chunked prefill (what the server and `generate` run) against one pass over the whole prompt:
/// logits of every position within 1e-4 (max abs; f32 logits of magnitude ~1-10), for llama and
/// qwen2 shapes, a sliding window shorter than the prompt, and a prompt long enough that the one
/// pass takes the per-KV-head attention split (`[4, 1500, 1500]` f32 scores = 34 MiB) while the
/// chunks do not.
#[test]
fn chunked_prefill_gives_the_logits_of_one_full_pass() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let mut cases = Vec::new();
    for family in [Family::Llama, Family::Qwen2] {
        cases.push((ModelConfig::tiny(family), 61usize, 7usize));
    }
    let mut windowed = ModelConfig::tiny(Family::Llama);
    windowed.sliding_window = Some(16);
    cases.push((windowed, 50, 9));
    let mut long = ModelConfig::tiny(Family::Llama);
    long.max_position_embeddings = 2048;
    cases.push((long, 1500, 512));
    for (cfg, n, chunk) in cases {
        let m = Llama::load(&random_weights(&cfg, &dev)?, &cfg, WeightMode::F32, None)?;
        let ids: Vec<u32> = (0..n).map(|i| ((i * 37 + 11) % cfg.vocab_size) as u32).collect();
        let full = m
            .forward(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::All)?
            .squeeze(0)?;
        // Chunk by chunk with every position's logits, as the engine scores an echoed prompt.
        let mut cache = KvCache::new(m.config(), 8);
        let mut rows = Vec::new();
        for part in ids.chunks(chunk) {
            let x = Tensor::new(part, &dev)?.unsqueeze(0)?;
            rows.push(m.forward(&x, None, Some(&mut cache), Logits::All)?.squeeze(0)?);
        }
        let chunked = Tensor::cat(&rows, 0)?;
        let d = max_diff(&chunked, &full)?;
        assert!(
            d < 1e-4,
            "{:?} window {:?}, {n} tokens in chunks of {chunk}: {d}",
            cfg.family,
            cfg.sliding_window
        );
        // `prefill` returns the last position's logits and leaves the whole prompt cached.
        let mut cache = KvCache::new(m.config(), 8);
        let last = m.prefill(&ids, &mut cache, chunk)?;
        assert!(max_diff(&last, &full.get(n - 1)?.unsqueeze(0)?)? < 1e-4);
        assert_eq!(cache.len(), n);
    }
    Ok(())
}

/// The per-KV-head attention split also serves left-padded batches (batched generation in
/// `eval`): two rows of a batch whose scores pass the split threshold (`[2, 4, 1100, 1100]` f32)
/// each equal the row alone (which stays under it), within 1e-4.
#[test]
fn a_padded_batch_over_the_attention_split_threshold_equals_each_row_alone() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::tiny(Family::Llama);
    cfg.max_position_embeddings = 2048;
    let m = Llama::load(&random_weights(&cfg, &dev)?, &cfg, WeightMode::F32, None)?;
    let long: Vec<u32> = (0..1100).map(|i| ((i * 31 + 5) % cfg.vocab_size) as u32).collect();
    let short: Vec<u32> = long[..700].iter().map(|&x| (x + 1) % cfg.vocab_size as u32).collect();
    let pad = long.len() - short.len();
    let flat = [long.clone(), vec![0; pad], short.clone()].concat();
    let batch = Tensor::from_vec(flat, (2, long.len()), &dev)?;
    let both = m.forward(&batch, Some(&[0, pad]), None, Logits::Last)?;
    for (r, row) in [&long, &short].into_iter().enumerate() {
        let alone = m.forward(&Tensor::new(row.as_slice(), &dev)?.unsqueeze(0)?, None, None, Logits::Last)?;
        let d = max_diff(&both.get(r)?, &alone.get(0)?)?;
        assert!(d < 1e-4, "row {r}: {d}");
    }
    Ok(())
}
