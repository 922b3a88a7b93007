//! Training and serving speed, predicted from the project's own benchmark records.
//!
//! The model (docs/plan.md): a step costs `F` FLOPs per token,
//!
//! - LoRA: `4·N_mat + 6·N_lora + 12·L·d_q·s` (forward `2·N_mat`; backward through frozen weights
//!   needs only the activation gradient, another `2·N_mat`; the adapter's forward, activation and
//!   weight gradients `6·N_lora`; attention scores and values `4·L·d_q·s` forward, twice that
//!   backward, computed over the full `s × s` square as ferrotune's kernels do),
//! - full: `6·N_mat + 12·L·d_q·s`,
//!
//! where `N_mat` counts the weights that take part in matmuls (every linear and the output head;
//! the embedding lookup is free), `L` layers, `d_q = heads × head_dim`, `s` the padded sequence.
//! A record measured on the same backend gives the achieved FLOP/s (`tokens/s × F_record`); the
//! nearest record by parameter count is used, and a GPU without records is scaled by its
//! data-sheet peak against the recorded GPU's. The prediction is `achieved FLOP/s / F_target`.

use ferrotune_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};
use crate::hardware::{Backend, Hardware};
use crate::{Method, shapes};

/// One measured training speed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// A shape name of [`shapes`].
    pub shape: String,
    /// The hardware it ran on ([`crate::hardware::lookup`] names; `cpu` = the machine recorded).
    pub hardware: String,
    pub batch: usize,
    pub seq: usize,
    pub tokens_per_sec: f64,
    /// Peak memory measured, GiB (RSS on the CPU, device memory on a GPU).
    pub peak_gib: Option<f64>,
    /// Where the number comes from (file, commit or date).
    pub source: String,
}

/// The records shipped with the binary: `bench/gpu-train-*.json` (H200, 2026-11-30) and
/// `bench/cpu-train.json` (the project's 2-core CI machine).
pub fn builtin_records() -> Vec<Record> {
    let mut out = Vec::new();
    for (text, file) in [
        (include_str!("../../../bench/gpu-train-smollm2-135m.json"), "bench/gpu-train-smollm2-135m.json"),
        (include_str!("../../../bench/gpu-train-llama-1b.json"), "bench/gpu-train-llama-1b.json"),
    ] {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
            && let Some(r) = record_of(&v, "h200", &format!("{file} (H200, 2026-11-30)"))
        {
            out.push(r);
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(include_str!("../../../bench/cpu-train.json")) {
        for r in v["records"].as_array().into_iter().flatten() {
            let src = format!(
                "bench/cpu-train.json ({}, {})",
                v["machine"].as_str().unwrap_or("2-core CI machine"),
                v["date"].as_str().unwrap_or("?")
            );
            out.extend(record_of(r, "cpu", &src));
        }
    }
    out
}

/// A `bench train --json` object as a record.
pub fn record_of(v: &serde_json::Value, hardware: &str, source: &str) -> Option<Record> {
    Some(Record {
        shape: shapes::canonical(v["shape"].as_str()?)?.to_string(),
        hardware: hardware.into(),
        batch: v["batch"].as_u64()? as usize,
        seq: v["seq"].as_u64()? as usize,
        tokens_per_sec: v["ferrotune"]["tokens_per_sec"].as_f64()?,
        peak_gib: v["ferrotune"]["peak_gib"].as_f64(),
        source: source.into(),
    })
}

/// Reads a calibration file written by `ferrotune plan --calibrate` (a `bench train --json`
/// object on this machine's CPU).
pub fn read_calibration(path: &std::path::Path) -> Result<Option<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PlanError::io(path, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| PlanError::InvalidFile {
        path: path.into(),
        field: "(json)".into(),
        reason: e.to_string(),
    })?;
    let date = v["calibrated"].as_str().unwrap_or("?").to_string();
    record_of(&v, "cpu", &format!("{} (this machine, {date})", path.display())).map(Some).ok_or_else(|| {
        PlanError::InvalidFile {
            path: path.into(),
            field: "shape/batch/seq/ferrotune.tokens_per_sec".into(),
            reason: "missing or not a known shape".into(),
        }
    })
}

/// Weights that take part in matmuls: every linear of every layer and the output head.
pub fn matmul_parameters(cfg: &ModelConfig) -> u64 {
    let embed = cfg.vocab_size as u64 * cfg.hidden_size as u64;
    let norms = (2 * cfg.num_layers as u64 + 1) * cfg.hidden_size as u64;
    // Tied: the one embedding matrix is the head (a matmul). Untied: the input embedding is a
    // lookup, the separate head a matmul.
    let lookup_only = if cfg.tie_word_embeddings { 0 } else { embed };
    cfg.parameter_count() - norms - lookup_only
}

/// Training FLOPs per token of `method` at padded length `seq` (the formula of this module's doc).
pub fn training_flops_per_token(cfg: &ModelConfig, method: &Method, seq: usize) -> f64 {
    let n_mat = matmul_parameters(cfg) as f64;
    let attn_fwd = 4.0 * cfg.num_layers as f64 * (cfg.num_heads * cfg.head_dim) as f64 * seq as f64;
    match method {
        Method::Full => 6.0 * n_mat + 3.0 * attn_fwd,
        Method::Lora { .. } | Method::QLora { .. } => {
            4.0 * n_mat + 6.0 * method.trainable_parameters(cfg) as f64 + 3.0 * attn_fwd
        }
    }
}

/// A predicted training speed and how it was reached.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedEstimate {
    pub tokens_per_sec: f64,
    /// Achieved TFLOP/s assumed for the target.
    pub tflops: f64,
    /// The record used and the scaling applied, in words.
    pub basis: String,
    pub record: Record,
}

/// Predicted training tokens/s of `method` on `cfg` at padded length `seq` on `hw`, or `None`
/// with the reason when no record of that backend exists.
pub fn predict_training(
    records: &[Record],
    hw: &Hardware,
    cfg: &ModelConfig,
    method: &Method,
    seq: usize,
) -> std::result::Result<SpeedEstimate, String> {
    let same_backend: Vec<&Record> = records
        .iter()
        .filter(|r| match hw.backend {
            Backend::Cpu => r.hardware == "cpu",
            Backend::Cuda => r.hardware != "cpu",
        })
        .collect();
    if same_backend.is_empty() {
        return Err(match hw.backend {
            Backend::Cpu => "no CPU training record: run `ferrotune plan --calibrate` on this machine".into(),
            Backend::Cuda => "no GPU training record".into(),
        });
    }
    // Prefer records of this very hardware; among them the nearest shape by parameter count.
    let on_hw: Vec<&Record> = same_backend.iter().copied().filter(|r| r.hardware == hw.name).collect();
    let pool = if on_hw.is_empty() { &same_backend } else { &on_hw };
    let target_n = cfg.parameter_count() as f64;
    let record = pool
        .iter()
        .copied()
        .filter_map(|r| Some((r, shapes::lookup(&r.shape).ok()?)))
        .min_by(|a, b| {
            let da = (a.1.parameter_count() as f64 / target_n).ln().abs();
            let db = (b.1.parameter_count() as f64 / target_n).ln().abs();
            // Same shape: the record at the nearest sequence length.
            da.total_cmp(&db).then(
                (a.0.seq as f64 / seq as f64).ln().abs().total_cmp(&(b.0.seq as f64 / seq as f64).ln().abs()),
            )
        })
        .ok_or_else(|| "no record of a known shape".to_string())?;
    let (rec, rec_cfg) = record;
    let rec_method = Method::Lora { r: 16, targets: crate::default_targets() };
    let achieved = rec.tokens_per_sec * training_flops_per_token(&rec_cfg, &rec_method, rec.seq);
    let mut basis = format!(
        "{} measured {:.0} tokens/s on {} ({} × {} tokens, LoRA r=16) = {:.2} TFLOP/s achieved",
        rec.shape,
        rec.tokens_per_sec,
        rec.hardware,
        rec.batch,
        rec.seq,
        achieved / 1e12
    );
    let mut flops = achieved;
    if rec.hardware != hw.name {
        let rec_hw = crate::hardware::lookup(&rec.hardware).map_err(|e| e.to_string())?;
        flops *= hw.peak_tflops / rec_hw.peak_tflops;
        basis.push_str(&format!(
            ", scaled by data-sheet peak {:.0}/{:.0} TFLOP/s",
            hw.peak_tflops, rec_hw.peak_tflops
        ));
    }
    let f = training_flops_per_token(cfg, method, seq);
    basis.push_str(&format!("; this run needs {:.2} GFLOP per token", f / 1e9));
    Ok(SpeedEstimate { tokens_per_sec: flops / f, tflops: flops / 1e12, basis, record: rec.clone() })
}

/// A measured serving speed: completion tokens/s of a whole server at a concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct ServeRecord {
    pub shape: String,
    pub hardware: String,
    pub streams: usize,
    pub tokens_per_sec: f64,
    pub source: String,
}

/// `bench/serve-vs-llamacpp.json`: `ferrotune serve` (f32) on the 2-core machine, 32 streams.
pub fn builtin_serve_records() -> Vec<ServeRecord> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../../../bench/serve-vs-llamacpp.json")).unwrap_or_default();
    let date = v["date"].as_str().unwrap_or("?").to_string();
    v["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(ServeRecord {
                shape: "smollm2-135m".into(),
                hardware: "cpu".into(),
                streams: r["streams"].as_u64()? as usize,
                tokens_per_sec: r["ferrotune"]["tokens_per_s"].as_f64()?,
                source: format!(
                    "bench/serve-vs-llamacpp.json ({date}, {} cores, {} streams)",
                    r["cores"].as_u64().unwrap_or(0),
                    r["streams"].as_u64().unwrap_or(0)
                ),
            })
        })
        .collect()
}

/// Predicted aggregate completion tokens/s of one CPU server for `cfg`: decoding streams weights
/// from memory each step, so the recorded rate is scaled by the weight bytes (parameter count).
pub fn predict_serving(records: &[ServeRecord], cfg: &ModelConfig) -> Option<(f64, String)> {
    let r = records.iter().max_by(|a, b| a.tokens_per_sec.total_cmp(&b.tokens_per_sec))?;
    let rec_n = shapes::lookup(&r.shape).ok()?.parameter_count() as f64;
    let n = cfg.parameter_count() as f64;
    let tps = r.tokens_per_sec * rec_n / n;
    Some((
        tps,
        format!(
            "{} measured {:.0} completion tokens/s from one server ({}), scaled by parameters {:.1}M/{:.1}M",
            r.shape,
            r.tokens_per_sec,
            r.source,
            rec_n / 1e6,
            n / 1e6
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_parameters_count_the_head_once_and_the_embedding_lookup_never() {
        let s = shapes::lookup("smollm2-135m").expect("a known shape");
        // 30 layers × 3,538,944 linear weights + the tied head 49152 × 576.
        assert_eq!(matmul_parameters(&s), 30 * 3_538_944 + 49152 * 576);
        let l = shapes::lookup("llama-3.1-8b").expect("a known shape");
        let per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336;
        assert_eq!(matmul_parameters(&l), 32 * per_layer + 128_256 * 4096);
    }

    #[test]
    fn full_fine_tuning_costs_about_one_and_a_half_times_lora_per_token() {
        let s = shapes::lookup("llama-3.2-1b").expect("a known shape");
        let lora =
            training_flops_per_token(&s, &Method::Lora { r: 16, targets: crate::default_targets() }, 1024);
        let full = training_flops_per_token(&s, &Method::Full, 1024);
        assert!(full / lora > 1.35 && full / lora < 1.5, "{}", full / lora);
    }

    #[test]
    fn a_record_predicts_its_own_speed_and_larger_models_are_slower() {
        let recs = builtin_records();
        let hw = crate::hardware::lookup("h200").expect("known hardware");
        let lora = Method::Lora { r: 16, targets: crate::default_targets() };
        for r in recs.iter().filter(|r| r.hardware == "h200") {
            let cfg = shapes::lookup(&r.shape).expect("a known shape");
            let p = predict_training(&recs, &hw, &cfg, &lora, r.seq).expect("a prediction");
            assert!((p.tokens_per_sec / r.tokens_per_sec - 1.0).abs() < 1e-9, "{r:?}: {}", p.tokens_per_sec);
        }
        let big = predict_training(
            &recs,
            &hw,
            &shapes::lookup("llama-3.1-8b").expect("a known shape"),
            &lora,
            1024,
        )
        .expect("a prediction");
        let one = predict_training(
            &recs,
            &hw,
            &shapes::lookup("llama-3.2-1b").expect("a known shape"),
            &lora,
            1024,
        )
        .expect("a prediction");
        assert!(
            big.tokens_per_sec < one.tokens_per_sec / 4.0,
            "{} vs {}",
            big.tokens_per_sec,
            one.tokens_per_sec
        );
        // An A100 has 312/989 of the H200's peak.
        let a100 = predict_training(
            &recs,
            &crate::hardware::lookup("a100").expect("known hardware"),
            &shapes::lookup("llama-3.2-1b").expect("a known shape"),
            &lora,
            1024,
        )
        .expect("a prediction");
        assert!((a100.tokens_per_sec / one.tokens_per_sec - 312.0 / 989.0).abs() < 1e-9);
    }
}
