//! Shared by the tests that need the real default model: they run when it is installed in
//! `$FERROTUNE_HOME` (CI installs it) and say so when skipped; under FERROTUNE_REQUIRE_MODELS=1
//! (CI) a missing model fails them, and a broken install fails them everywhere
//! (`ferrotune_model::testing::installed_model`).

use std::path::PathBuf;

#[allow(dead_code)]
pub fn default_model_path() -> Option<PathBuf> {
    ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_MODEL)
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compare our f32 logits with a reference's top-k per position (fixture layout of
/// scripts/parity/*): returns (positions, top-1 agreements, max |Δlogit| over the reference's
/// top-k tokens).
#[allow(dead_code)]
pub fn compare_with_reference(
    m: &ferrotune_model::LoadedModel,
    cases: &serde_json::Value,
) -> (usize, usize, f32) {
    use candle_core::{Device, Tensor};
    let (mut positions, mut agree, mut max_abs) = (0usize, 0usize, 0f32);
    for c in cases.as_array().expect("cases") {
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).expect("ids");
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("tensor");
        let rows: Vec<Vec<f32>> = m
            .model
            .forward(&x, None, None, ferrotune_model::Logits::All)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec2())
            .expect("forward");
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
    (positions, agree, max_abs)
}
