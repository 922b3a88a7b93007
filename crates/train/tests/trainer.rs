//! The trainer end to end on a tiny random model (byte-level tokenizer, ChatML): it learns,
//! masks the loss to targets, resumes exactly, and refuses bad configs before step 0.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ferrotune_train::batch::{Example, loss_sum, make_batch};
use ferrotune_train::{Method, RunOptions, TrainConfig};

fn setup(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let model = dir.join("tiny");
    ferrotune_model::testing::write_tiny_model(&model)?;
    let mut rows = String::new();
    for i in 0..24 {
        let q = format!("What is {i} plus {i}?");
        let a = format!("[ok] {} -- bye", 2 * i);
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        rows.push('\n');
    }
    let data = dir.join("train.jsonl");
    std::fs::write(&data, rows)?;
    Ok((model, data))
}

fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: model.display().to_string(),
        data: data.to_path_buf(),
        eval_data: Some(data.to_path_buf()),
        out: Some(out.to_path_buf()),
        lr: 5e-3,
        batch_size: 4,
        max_steps: Some(8),
        save_steps: Some(2),
        eval_steps: Some(4),
        lora_dropout: 0.1,
        ..Default::default()
    }
}

/// (step, loss, eval loss) per line of metrics.jsonl.
type Losses = Vec<(usize, Option<f64>, Option<f64>)>;

fn losses(run: &Path) -> anyhow::Result<Losses> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((v["step"].as_u64().unwrap_or(0) as usize, v["loss"].as_f64(), v["eval_loss"].as_f64()))
        })
        .collect()
}

#[test]
fn lora_training_lowers_eval_loss_and_writes_the_run_folder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path())?;
    let out = dir.path().join("run");
    let s = ferrotune_train::run(config(&model, &data, &out), &RunOptions::default())?;
    let first = s.first_eval_loss.expect("eval before training");
    let best = s.best_eval_loss.expect("best eval");
    assert!(best < first * 0.9, "eval loss {first} -> {best}");
    for f in [
        "config.json",
        "metrics.jsonl",
        "loss.svg",
        "lineage.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let lineage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lineage.json"))?)?;
    assert_eq!(lineage["data"][0]["sha256"].as_str().map(str::len), Some(64));
    assert!(lineage["base_model"]["files"].as_array().is_some_and(|f| !f.is_empty()));
    assert_eq!(ferrotune_train::checkpoint::list(&out), vec![2, 4, 6, 8]);
    Ok(())
}

/// An uninterrupted run (`straight`) and one stopped after step 5 (`broken`, last checkpoint:
/// step 4) of the same config, under `dir`: (model, data, straight, broken).
fn straight_and_stopped_runs(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let (model, data) = setup(dir)?;
    let straight = dir.join("straight");
    ferrotune_train::run(config(&model, &data, &straight), &RunOptions::default())?;
    let broken = dir.join("broken");
    let stop = RunOptions { stop_after: Some(5), ..Default::default() };
    assert!(ferrotune_train::run(config(&model, &data, &broken), &stop).is_err());
    Ok((model, data, straight, broken))
}

#[test]
fn resumed_run_repeats_the_uninterrupted_loss_trajectory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data, straight, broken) = straight_and_stopped_runs(dir.path())?;
    ferrotune_train::run(config(&model, &data, &broken), &RunOptions { resume: true, ..Default::default() })?;
    assert_eq!(losses(&straight)?, losses(&broken)?);
    Ok(())
}

/// A kill mid-write can leave metrics.jsonl's last line cut short; `--resume` failed on it. Now
/// the torn line is dropped (its step is logged again), while a bad line elsewhere is an error
/// naming its line.
#[test]
fn resume_drops_a_torn_last_metrics_line_and_names_a_bad_one() -> anyhow::Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let (model, data, straight, broken) = straight_and_stopped_runs(dir.path())?;
    let metrics = broken.join("metrics.jsonl");
    let whole = std::fs::read_to_string(&metrics)?;
    std::fs::write(&metrics, format!("not json\n{whole}"))?;
    let resume = RunOptions { resume: true, ..Default::default() };
    let e = ferrotune_train::run(config(&model, &data, &broken), &resume)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("metrics.jsonl") && e.contains("line 1"), "{e}");
    std::fs::write(&metrics, &whole)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics)?
        .write_all(br#"{"step": 6, "epoch": 1.0, "lo"#)?;
    ferrotune_train::run(config(&model, &data, &broken), &resume)?;
    assert_eq!(losses(&straight)?, losses(&broken)?);
    Ok(())
}

#[test]
fn save_total_limit_keeps_the_newest_and_the_best() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path())?;
    let out = dir.path().join("run");
    let cfg = TrainConfig { save_total_limit: Some(2), ..config(&model, &data, &out) };
    let s = ferrotune_train::run(cfg, &RunOptions::default())?;
    let kept = ferrotune_train::checkpoint::list(&out);
    assert!(kept.len() <= 3 && kept.contains(&8), "{kept:?}");
    if let Some(best) = s.best_step.filter(|&b| b > 0 && b % 2 == 0) {
        assert!(kept.contains(&best), "best {best} pruned: {kept:?}");
    }
    Ok(())
}

#[test]
fn full_fine_tuning_writes_an_hf_model() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path())?;
    let out = dir.path().join("run");
    let cfg =
        TrainConfig { method: Method::Full, lr: 1e-3, max_steps: Some(3), ..config(&model, &data, &out) };
    let s = ferrotune_train::run(cfg, &RunOptions::default())?;
    assert!(s.output.join("model.safetensors").exists());
    let reloaded = ferrotune_model::load_path(&s.output, ferrotune_model::WeightMode::F32, &Device::Cpu)?;
    assert_eq!(reloaded.config().num_layers, 2);
    Ok(())
}

#[test]
fn bad_configs_fail_before_training() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path())?;
    let out = dir.path().join("run");
    let err = |cfg: TrainConfig| {
        ferrotune_train::run(cfg, &RunOptions::default()).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = err(TrainConfig { target_modules: vec!["nope".into()], ..config(&model, &data, &out) });
    assert!(e.contains("nope") && e.contains("q_proj"), "{e}");
    let e = err(TrainConfig { max_seq_len: Some(100_000), ..config(&model, &data, &out) });
    assert!(e.contains("max_seq_len") && e.contains("512"), "{e}");
    let e =
        err(TrainConfig { eval_data: Some(dir.path().join("missing.jsonl")), ..config(&model, &data, &out) });
    assert!(e.contains("missing.jsonl"), "{e}");
    assert!(!out.join("checkpoints").exists(), "nothing may be written for a refused config");
    Ok(())
}

/// Loss masking: only target tokens count, and the sum equals a hand computation from the
/// full logits.
#[test]
fn loss_covers_exactly_the_target_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, _) = setup(dir.path())?;
    let m = ferrotune_model::load_path(&model, ferrotune_model::WeightMode::F32, &Device::Cpu)?;
    let ex = Example { input_ids: vec![5, 6, 7, 8, 9], labels: vec![-100, -100, 7, -100, 9] };
    let batch = make_batch(&[&ex], 2, &Device::Cpu)?;
    assert_eq!(batch.n_targets, 2);
    let ours = loss_sum(&m.model, &batch)?.to_scalar::<f32>()? as f64;
    let logits: Vec<Vec<f32>> = m
        .model
        .forward(
            &Tensor::new(&[[5u32, 6, 7, 8, 9]], &Device::Cpu)?,
            None,
            None,
            ferrotune_model::Logits::All,
        )?
        .squeeze(0)?
        .to_vec2()?;
    // Position p predicts token p+1: targets are token 7 (from p=1) and token 9 (from p=3).
    let nll = |row: &[f32], t: usize| {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        lse - row[t] as f64
    };
    let want = nll(&logits[1], 7) + nll(&logits[3], 9);
    assert!((ours - want).abs() < 1e-4, "ours {ours} vs hand {want}");
    Ok(())
}

#[test]
fn packed_training_takes_fewer_longer_sequences_and_still_learns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path())?;
    let out = dir.path().join("packed");
    let cfg = TrainConfig {
        packing: true,
        max_seq_len: Some(256),
        batch_size: 2,
        epochs: 4.0,
        max_steps: None,
        ..config(&model, &data, &out)
    };
    let s = ferrotune_train::run(cfg, &RunOptions::default())?;
    // 24 rows of ~40 tokens pack into ~4-5 sequences of ≤ 256: 2-3 steps per epoch, not 12.
    assert!(s.steps <= 12, "{} steps for 4 epochs", s.steps);
    let (first, best) = (s.first_eval_loss.expect("eval"), s.best_eval_loss.expect("best"));
    assert!(best < first * 0.9, "eval loss {first} -> {best}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json"))?)?;
    assert_eq!(saved["packing"], true);
    Ok(())
}
