//! Checkpoints: `checkpoints/step-N/` holding the trainable weights (a PEFT adapter, or the
//! full model's tensors), the optimizer moments and `trainer_state.json`. Each is written to a
//! temp folder, fsync'ed and renamed (`atomic::write_dir`), so a checkpoint is complete or
//! absent — also after `kill -9` or a power loss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Where training stands; with the seed this fixes the data order and dropout masks to come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// Micro-batches consumed (the data position: epoch = micro / batches_per_epoch).
    pub micro_batches: usize,
    pub epoch: f64,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Evaluations in a row without improvement (early stopping).
    pub evals_without_improvement: usize,
    pub tokens_seen: usize,
    pub seed: u64,
    /// The per-example loss-spike detector (absent in checkpoints from before it existed: a
    /// fresh one, warming up again).
    #[serde(default)]
    pub loss_spikes: crate::spikes::SpikeDetector,
}

impl TrainerState {
    /// A run's state before its first step.
    pub fn new(total_steps: usize, seed: u64) -> Self {
        Self {
            step: 0,
            total_steps,
            micro_batches: 0,
            epoch: 0.0,
            best_eval_loss: None,
            best_step: None,
            evals_without_improvement: 0,
            tokens_seen: 0,
            seed,
            loss_spikes: Default::default(),
        }
    }
}

pub fn dir_for(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step}"))
}

/// Steps of the complete checkpoints in `run`, ascending.
pub fn list(run: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Save full-model variables as one safetensors file.
pub fn save_vars(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let map: HashMap<String, candle_core::Tensor> =
        vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&map, path).map_err(|e| TrainError::file(path, e))
}

/// Restore variables saved by `save_vars` (or an adapter's A/B tensors keyed the same way).
pub fn load_vars(vars: &[(String, Var)], path: &Path, key: impl Fn(&str) -> String) -> Result<()> {
    let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| TrainError::file(path, e))?;
    for (name, var) in vars {
        let k = key(name);
        let t = map.get(&k).ok_or_else(|| TrainError::file(path, format!("missing tensor `{k}`")))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(TrainError::file(
                path,
                format!("tensor `{k}` has shape {:?}, expected {:?}", t.dims(), var.as_tensor().dims()),
            ));
        }
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(())
}

/// Write JSON through a temp file + fsync + rename: the old file or the new one, never half of
/// one. The crash tests' point is the file's stem (`config`, `lineage`, `trainer_state`).
pub fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| TrainError::file(path, e))?;
    let point = path.file_stem().and_then(|s| s.to_str()).unwrap_or("json");
    crate::atomic::write_file(path, point, (text + "\n").as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::file(path, e))
}

/// Delete the oldest checkpoints beyond `limit`, never the one at `keep` (the best) nor the
/// newest (what `--resume` continues from; with `limit` 1 and an older best, the newest was
/// the one deleted). Each goes through `atomic::remove_dir`, so a kill leaves none half-deleted.
pub fn prune(run: &Path, limit: usize, keep: Option<usize>) -> Result<()> {
    let steps = list(run);
    let newest = steps.last().copied();
    let mut excess = steps.len().saturating_sub(limit);
    for s in steps {
        if excess == 0 {
            break;
        }
        if Some(s) == keep || Some(s) == newest {
            continue;
        }
        crate::atomic::remove_dir(&dir_for(run, s))?;
        excess -= 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_to_one_keeps_the_best_and_the_newest() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        for s in [2, 4, 6] {
            std::fs::create_dir_all(dir_for(dir.path(), s)).map_err(|e| TrainError::file("mkdir", e))?;
        }
        prune(dir.path(), 1, Some(2))?;
        assert_eq!(list(dir.path()), vec![2, 6]);
        prune(dir.path(), 1, Some(6))?;
        assert_eq!(list(dir.path()), vec![6]);
        Ok(())
    }
}
