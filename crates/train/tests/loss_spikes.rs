//! Per-example loss spikes end to end on the tiny random model: a garbage row among clean ones
//! is flagged with its data file line in `metrics.jsonl`, the run summary and `lineage.json`;
//! clean data flags none; `--resume` flags what the uninterrupted run does.

use std::path::{Path, PathBuf};

use ferrotune_train::{RunOptions, RunSummary, TrainConfig};
use rand::{Rng, SeedableRng};

/// 160 arithmetic rows in one house format; `garbage` puts random printable characters in place
/// of the answer on those (1-based) lines.
fn setup(dir: &Path, garbage: &[u64]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let model = dir.join("tiny");
    if !model.exists() {
        ferrotune_model::testing::write_tiny_model(&model)?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut rows = String::new();
    for i in 0..160u64 {
        let q = format!("What is {i} plus {i}?");
        let a = if garbage.contains(&(i + 1)) {
            (0..48).map(|_| char::from(rng.random_range(b'!'..=b'~'))).collect()
        } else {
            format!("[ok] {} -- bye", 2 * i)
        };
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        rows.push('\n');
    }
    let data = dir.join(format!("train-{}.jsonl", garbage.len()));
    std::fs::write(&data, rows)?;
    Ok((model, data))
}

fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: model.display().to_string(),
        data: data.to_path_buf(),
        out: Some(out.to_path_buf()),
        lr: 5e-3,
        batch_size: 4,
        epochs: 3.0,
        save_steps: Some(40),
        lora_dropout: 0.0,
        ..Default::default()
    }
}

/// `(row, step)` of every spike in metrics.jsonl.
fn logged(run: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for l in std::fs::read_to_string(run.join("metrics.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        for s in v["loss_spikes"].as_array().into_iter().flatten() {
            out.push((s["row"].as_u64().unwrap_or(0), s["step"].as_u64().unwrap_or(0)));
        }
    }
    Ok(out)
}

fn rows(s: &RunSummary) -> Vec<u64> {
    let mut r: Vec<u64> = s.loss_spikes.iter().filter_map(|x| x.row).collect();
    r.sort_unstable();
    r.dedup();
    r
}

#[test]
fn a_garbage_row_is_flagged_with_its_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path(), &[97])?;
    let out = dir.path().join("run");
    let s = ferrotune_train::run(config(&model, &data, &out), &RunOptions::default())?;
    let spikes = logged(&out)?;
    assert!(!spikes.is_empty(), "no spike logged");
    assert!(spikes.iter().all(|(row, _)| *row == 97), "only the garbage row: {spikes:?}");
    assert_eq!(rows(&s), vec![97]);
    assert_eq!(s.loss_spikes_flagged, spikes.len() as u64);
    let top = &s.loss_spikes[0];
    assert!(
        top.z > ferrotune_train::spikes::Z && top.loss > ferrotune_train::spikes::RATIO * top.median,
        "{top:?}"
    );
    // The summary is part of the lineage record.
    let lineage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lineage.json"))?)?;
    assert_eq!(lineage["metrics"]["loss_spikes"][0]["row"], 97);
    // A step with a spike is logged even off the logging interval; the lines still read as
    // the metrics every consumer parses.
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    for l in text.lines() {
        let m: ferrotune_train::trainer::Metrics = serde_json::from_str(l)?;
        assert!(m.loss.is_some() || m.eval_loss.is_some());
    }
    Ok(())
}

#[test]
fn clean_data_flags_no_example() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path(), &[])?;
    let out = dir.path().join("run");
    let s = ferrotune_train::run(config(&model, &data, &out), &RunOptions::default())?;
    assert_eq!(s.loss_spikes_flagged, 0, "{:?}", s.loss_spikes);
    assert!(logged(&out)?.is_empty());
    assert!(!std::fs::read_to_string(out.join("metrics.jsonl"))?.contains("loss_spikes"));
    Ok(())
}

/// The detector's window is in the checkpoint: a run stopped and resumed logs the spikes of
/// the uninterrupted one, at the same steps.
#[test]
fn a_resumed_run_flags_what_the_uninterrupted_one_does() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, data) = setup(dir.path(), &[97])?;
    let straight = dir.path().join("straight");
    let a = ferrotune_train::run(config(&model, &data, &straight), &RunOptions::default())?;
    let broken = dir.path().join("broken");
    let stop = RunOptions { stop_after: Some(90), ..Default::default() };
    assert!(ferrotune_train::run(config(&model, &data, &broken), &stop).is_err());
    let b = ferrotune_train::run(
        config(&model, &data, &broken),
        &RunOptions { resume: true, ..Default::default() },
    )?;
    assert_eq!(logged(&straight)?, logged(&broken)?);
    assert!(!logged(&straight)?.is_empty());
    assert_eq!(a.loss_spikes, b.loss_spikes);
    assert_eq!(a.loss_spikes_flagged, b.loss_spikes_flagged);
    // The detector's whole state (window included) ends equal: the CLI's kill-and-resume tests
    // compare trainer_state.json by value.
    let state = |run: &Path| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(run.join("checkpoints/step-120/trainer_state.json"))?;
        Ok(serde_json::from_str(&text)?)
    };
    let (sa, sb) = (state(&straight)?, state(&broken)?);
    assert_eq!(sa["loss_spikes"]["seen"], 480);
    assert_eq!(sa["loss_spikes"]["window"].as_array().map(Vec::len), Some(ferrotune_train::spikes::WINDOW));
    assert_eq!(sa, sb);
    Ok(())
}
