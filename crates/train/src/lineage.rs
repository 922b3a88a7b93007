//! `lineage.json`: what went into a run and what came out — SHA-256 of every data file, base model
//! file and output file, the resolved config, tool version, start/end time, final metrics. The
//! registry (governance issue) builds on it.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::trainer::RunSummary;

pub struct Inputs<'a> {
    pub config: &'a TrainConfig,
    pub data_files: &'a [PathBuf],
    pub model_files: &'a [PathBuf],
    pub output: &'a Path,
    pub started: &'a str,
    pub summary: &'a RunSummary,
}

fn hashes(files: &[PathBuf]) -> Result<serde_json::Value> {
    let mut out = Vec::new();
    for f in files {
        let sha = ferrotune_model::store::sha256_file(f).map_err(|e| TrainError::file(f, e))?;
        let bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        out.push(json!({"path": f.display().to_string(), "bytes": bytes, "sha256": sha}));
    }
    Ok(json!(out))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

/// UTC now as `YYYY-MM-DDThh:mm:ssZ`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .unwrap_or_default()
}

pub fn write(path: &Path, i: &Inputs<'_>) -> Result<()> {
    let v = json!({
        "tool": {"name": "ferrotune", "version": env!("CARGO_PKG_VERSION")},
        "started": i.started,
        "finished": now_rfc3339(),
        "config": i.config,
        "data": hashes(i.data_files)?,
        "base_model": {"spec": i.config.model, "parameters": i.summary.base_parameters, "files": hashes(i.model_files)?},
        "output": {"path": i.output.display().to_string(), "files": hashes(&files_under(i.output))?},
        "metrics": i.summary,
    });
    crate::checkpoint::write_json(path, &v)
}
