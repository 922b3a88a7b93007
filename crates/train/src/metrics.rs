//! `metrics.jsonl`: one [`Metrics`] line per logged step, each written whole so a kill leaves
//! whole lines (or a torn last one, which a resume drops).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::spikes::Spike;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Metrics {
    pub step: usize,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    pub tokens_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Examples of this step whose loss spiked (`spikes`), each with its data file line. A
    /// step with any is always logged; the field is absent otherwise, so a line without it
    /// reads as before (the dashboard and scripts read these lines as they are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_spikes: Vec<Spike>,
}

/// A run's `metrics.jsonl`, open for appending, with the lines it holds.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: File,
    history: Vec<Metrics>,
}

impl MetricsLog {
    /// A new file; or, resuming, `history` (the lines kept from before) written back.
    pub(crate) fn open(path: PathBuf, history: Vec<Metrics>, resume: bool) -> Result<Self> {
        let file = if resume {
            // The kept lines replace the file whole (temp + fsync + rename): a crash here leaves
            // the old file, never a truncated one.
            let kept = history.iter().map(|mt| line(&path, mt)).collect::<Result<String>>()?;
            crate::atomic::write_file(&path, "metrics-rewrite", kept.as_bytes())?;
            std::fs::OpenOptions::new().append(true).open(&path)
        } else {
            File::create(&path)
        }
        .map_err(|e| TrainError::file(&path, e))?;
        Ok(Self { path, file, history })
    }

    pub(crate) fn log(&mut self, mt: &Metrics) -> Result<()> {
        // One write per line, so a kill leaves whole lines (or a torn last one, which resume
        // drops).
        self.file.write_all(line(&self.path, mt)?.as_bytes()).map_err(|e| TrainError::file(&self.path, e))?;
        self.history.push(mt.clone());
        Ok(())
    }

    /// Every line of the run so far, resumed ones included.
    pub(crate) fn history(&self) -> &[Metrics] {
        &self.history
    }
}

fn line(path: &Path, mt: &Metrics) -> Result<String> {
    serde_json::to_string(mt).map(|l| l + "\n").map_err(|e| TrainError::file(path, e))
}

/// The lines of `metrics.jsonl`. A last line cut short without its newline is what a kill
/// mid-write leaves; it is dropped (its step is logged again), any other bad line is an error.
pub(crate) fn read(path: &Path) -> Result<Vec<Metrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Metrics>(line) {
            Ok(mt) => out.push(mt),
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                eprintln!(
                    "{}: dropping the unfinished last line (the run was killed while writing it)",
                    path.display()
                );
            }
            Err(e) => return Err(TrainError::file(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}
