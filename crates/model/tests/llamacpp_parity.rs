//! Parity with llama.cpp on the default GGUF, against fixtures recorded by
//! `scripts/parity/llamacpp_fixtures.py` (llama-cpp-python 0.3.36).

mod common_real;

use candle_core::{Device, Tensor};
use ferrotune_model::{LoadedModel, Logits, Message, WeightMode, load_path};

fn load(mode: WeightMode) -> Option<LoadedModel> {
    let path = common_real::default_model_path()?;
    Some(load_path(&path, mode, &Device::Cpu).expect("default model loads"))
}

#[test]
fn tokenizer_matches_llama_cpp_on_the_corpus() {
    let Some(m) = load(WeightMode::Quantized) else { return };
    let fx = common_real::fixture("llamacpp/tokenize.json");
    let cases = fx["cases"].as_array().expect("cases");
    let mut mismatches = Vec::new();
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).expect("ids");
        let got = m.tokenizer.encode(text, false).expect("encode");
        if got != want {
            mismatches.push(format!("{text:?}\n  ours  {got:?}\n  llama {want:?}"));
        }
        let detok = m.tokenizer.decode(&want, false).expect("decode");
        if detok != c["detokenized"].as_str().expect("detok") {
            mismatches.push(format!("decode {want:?}\n  ours  {detok:?}\n  llama {:?}", c["detokenized"]));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

struct Stats {
    positions: usize,
    top1_agree: usize,
    max_abs: f32,
    mean_abs: f64,
}

/// Our logits for every position: one forward over the whole sequence (prefill), or token by
/// token through the KV cache (`stepwise`, the decode path, which is where the quantized kernels run).
fn our_logits(m: &LoadedModel, ids: &[u32], stepwise: bool) -> Vec<Vec<f32>> {
    let tensor =
        |ids: &[u32]| Tensor::new(ids, &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("ids tensor");
    if !stepwise {
        let logits = m.model.forward(&tensor(ids), None, None, Logits::All).expect("forward");
        return logits.squeeze(0).and_then(|l| l.to_vec2()).expect("logits");
    }
    let mut cache = ferrotune_model::KvCache::new(m.config(), ids.len());
    ids.iter()
        .map(|&id| {
            let l = m.model.forward(&tensor(&[id]), None, Some(&mut cache), Logits::Last).expect("forward");
            l.squeeze(0).and_then(|l| l.to_vec1()).expect("logits")
        })
        .collect()
}

fn compare(m: &LoadedModel, stepwise: bool) -> Stats {
    let fx = common_real::fixture("llamacpp/logits.json");
    let (mut positions, mut agree, mut max_abs, mut sum, mut n) = (0, 0, 0f32, 0f64, 0usize);
    for c in fx["cases"].as_array().expect("cases") {
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).expect("ids");
        let rows = our_logits(m, &ids, stepwise);
        for (row, p) in rows.iter().zip(c["positions"].as_array().expect("positions")) {
            let top: Vec<u32> = serde_json::from_value(p["top_ids"].clone()).expect("top ids");
            let vals: Vec<f32> = serde_json::from_value(p["top_logits"].clone()).expect("top logits");
            positions += 1;
            if ferrotune_model::sampling::argmax(row) == top[0] {
                agree += 1;
            }
            for (&id, &v) in top.iter().zip(&vals) {
                let d = (row[id as usize] - v).abs();
                max_abs = max_abs.max(d);
                sum += d as f64;
                n += 1;
            }
        }
    }
    Stats { positions, top1_agree: agree, max_abs, mean_abs: sum / n as f64 }
}

/// Tolerance held against llama.cpp (fixtures recorded with an f32 KV cache): top-1 agreement on
/// at least 93% of positions, mean |Δlogit| < 0.30 and max < 2.5 over llama.cpp's top-20 tokens.
/// Why this loose: this 135M model's logits are sensitive to rounding — llama.cpp's own switch from
/// its default f16 KV cache to f32 moves its logits by mean 0.26 / max 1.6 on the chat prompt — and
/// llama.cpp quantizes activations to Q8 per block before every matmul while our f32 path does not.
/// Exactness of the math itself is checked against transformers in f32 (scripts/parity/hf_logits.py).
fn assert_close(label: &str, s: &Stats) {
    eprintln!(
        "{label} vs llama.cpp: top-1 {}/{} positions, |Δlogit| on llama.cpp's top-20: max {:.4}, mean {:.4}",
        s.top1_agree, s.positions, s.max_abs, s.mean_abs
    );
    assert!(
        s.top1_agree as f64 >= 0.93 * s.positions as f64,
        "{label}: top-1 {}/{}",
        s.top1_agree,
        s.positions
    );
    assert!(s.max_abs < 2.5 && s.mean_abs < 0.30, "{label}: max {} mean {}", s.max_abs, s.mean_abs);
}

/// Token by token, so every matmul runs the Q4_1/Q8_0 kernels with 8-bit activations, as
/// llama.cpp computes.
#[test]
fn quantized_decode_logits_match_llama_cpp() {
    let Some(m) = load(WeightMode::Quantized) else { return };
    assert_close("quantized decode", &compare(&m, true));
}

#[test]
fn f32_logits_match_llama_cpp() {
    let Some(m) = load(WeightMode::F32) else { return };
    assert_close("f32 prefill", &compare(&m, false));
}

#[test]
fn greedy_answer_is_sensible() {
    let Some(m) = load(WeightMode::F32) else { return };
    let text =
        m.render_chat(&[Message::new("user", "What is the capital of France?")], true).expect("template");
    let ids = m.tokenizer.encode(&text, false).expect("encode");
    let params = ferrotune_model::GenerateParams {
        max_tokens: 24,
        sampling: Default::default(),
        stop: vec![],
        eos_ids: m.eos_ids.clone(),
    };
    let g = ferrotune_model::generate(&m.model, &m.tokenizer, &ids, &params, |_| {}).expect("generate");
    eprintln!("answer: {:?}", g.text);
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert_eq!(g.finish, ferrotune_model::FinishReason::Stop);
}
