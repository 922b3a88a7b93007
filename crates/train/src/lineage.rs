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
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", tod / 3600, tod / 60 % 60, tod % 60)
}

pub fn write(path: &Path, i: &Inputs<'_>) -> Result<()> {
    let v = json!({
        "tool": {"name": "ferrotune", "version": env!("CARGO_PKG_VERSION")},
        "started": i.started,
        "finished": now_rfc3339(),
        "config": i.config,
        "data": hashes(i.data_files)?,
        "base_model": {"spec": i.config.model, "files": hashes(i.model_files)?},
        "output": {"path": i.output.display().to_string(), "files": hashes(&files_under(i.output))?},
        "metrics": i.summary,
    });
    crate::checkpoint::write_json(path, &v)
}
