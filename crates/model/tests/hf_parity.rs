//! The f32 path equals transformers (f32, eager attention) on the exported default model, using
//! fixtures from scripts/parity/hf_logits.py. This is the exactness check of the model math
//! (llama.cpp parity is looser because llama.cpp quantizes activations).

mod common_real;

use candle_core::{Device, Tensor};
use ferrotune_model::{Logits, WeightMode, load_path};

#[test]
fn f32_logits_equal_transformers() {
    let Some(path) = common_real::default_model_path() else { return };
    let m = load_path(&path, WeightMode::F32, &Device::Cpu).expect("loads");
    let fx = common_real::fixture("hf/logits.json");
    let (mut positions, mut agree, mut max_abs) = (0usize, 0usize, 0f32);
    for c in fx["cases"].as_array().expect("cases") {
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).expect("ids");
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("tensor");
        let rows: Vec<Vec<f32>> =
            m.model.forward(&x, None, None, Logits::All).and_then(|l| l.squeeze(0)).and_then(|l| l.to_vec2()).expect("forward");
        for (row, p) in rows.iter().zip(c["positions"].as_array().expect("positions")) {
            let top: Vec<u32> = serde_json::from_value(p["top_ids"].clone()).expect("ids");
            let vals: Vec<f32> = serde_json::from_value(p["top_logits"].clone()).expect("logits");
            positions += 1;
            agree += usize::from(ferrotune_model::sampling::argmax(row) == top[0]);
            for (&id, &v) in top.iter().zip(&vals) {
                max_abs = max_abs.max((row[id as usize] - v).abs());
            }
        }
    }
    eprintln!("f32 vs transformers: top-1 {agree}/{positions}, max |Δlogit| on its top-20 {max_abs:.2e}");
    // f32 with different summation orders (gemm vs MKL/oneDNN): differences of a few 1e-4 on logits
    // of magnitude ~20-40; the fixtures are rounded to 1e-5.
    assert_eq!(agree, positions);
    assert!(max_abs < 2e-3, "max |Δlogit| {max_abs}");
}
