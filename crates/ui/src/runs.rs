//! Run folders as `ferrotune train` leaves them: `config.json`, `metrics.jsonl` (one line per
//! logged step), `lineage.json`, `checkpoints/step-N/`, `adapter/` or `model/`, `eval/eval.json`.
//! Everything here tolerates a run being written while it is read: a last line without its
//! newline is a step being written and is left for the next look.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ferrotune_govern::{RunRecord, RunStatus};
use ferrotune_train::trainer::Metrics;

use crate::error::UiError;

/// One run folder: which `--runs` folder it is in (by position) and its name there.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub root: usize,
    pub name: String,
    pub dir: PathBuf,
}

impl RunRef {
    /// `/runs/ROOT/NAME`, the name percent-encoded.
    pub fn href(&self) -> String {
        format!("/runs/{}/{}", self.root, crate::layout::seg(&self.name))
    }

    /// `ROOT/NAME`, as the compare form sends it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.root, self.name)
    }
}

/// The runs found, and what kept others from being listed (a missing folder, an unreadable one).
#[derive(Debug, Default)]
pub struct Listing {
    pub runs: Vec<RunRef>,
    pub notes: Vec<String>,
}

fn is_run_dir(dir: &Path) -> bool {
    ["config.json", "metrics.jsonl", "lineage.json"].iter().any(|f| dir.join(f).is_file())
}

/// Every run folder directly inside each of `roots`, sorted by name within a root.
pub fn list(roots: &[PathBuf]) -> Listing {
    let mut out = Listing::default();
    for (i, root) in roots.iter().enumerate() {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.notes.push(format!(
                    "{} does not exist (yet): `ferrotune train --out {}/NAME` creates a run there",
                    root.display(),
                    root.display()
                ));
                continue;
            }
            Err(e) => {
                out.notes.push(format!("{}: {e}", root.display()));
                continue;
            }
        };
        let mut found: Vec<RunRef> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir() && is_run_dir(&e.path()))
            .filter_map(|e| Some(RunRef { root: i, name: e.file_name().into_string().ok()?, dir: e.path() }))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        out.runs.extend(found);
    }
    out
}

/// The run `name` in root `root`: only a name the listing holds (never a path built from input).
pub fn find(roots: &[PathBuf], root: usize, name: &str) -> Result<RunRef, UiError> {
    list(roots)
        .runs
        .into_iter()
        .find(|r| r.root == root && r.name == name)
        .ok_or_else(|| UiError::NotFound(format!("no run `{name}` in the runs folder {root}")))
}

/// `ROOT/NAME` from the compare form.
pub fn find_key(roots: &[PathBuf], key: &str) -> Result<RunRef, UiError> {
    let (root, name) =
        key.split_once('/').ok_or_else(|| UiError::BadRequest(format!("`{key}`: expected ROOT/NAME")))?;
    let root = root.parse().map_err(|_| UiError::BadRequest(format!("`{key}`: expected ROOT/NAME")))?;
    find(roots, root, name)
}

/// The logged steps; a line that does not parse is skipped and named in the note (the dashboard
/// shows what it can; `train --resume` is where a bad file is an error).
pub fn read_metrics(path: &Path) -> (Vec<Metrics>, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), None),
        Err(e) => return (Vec::new(), Some(format!("{}: {e}", path.display()))),
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') || line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Metrics>(line) {
            Ok(m) => out.push(m),
            Err(_) => bad.push(i + 1),
        }
    }
    let note = (!bad.is_empty())
        .then(|| format!("{}: skipped line(s) {:?} that are not metrics", path.display(), bad));
    (out, note)
}

/// Size and modification time of `metrics.jsonl`: what the live view watches.
pub fn metrics_stamp(dir: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(dir.join("metrics.jsonl")).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    pub step: u64,
    pub files: usize,
    pub bytes: u64,
}

/// Everything a run page shows.
#[derive(Debug, Default)]
pub struct RunData {
    pub config: Option<serde_json::Value>,
    pub lineage: Option<serde_json::Value>,
    pub metrics: Vec<Metrics>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// `adapter` or `model` when the run's output is there.
    pub output: Option<&'static str>,
    pub eval: Option<PathBuf>,
    /// What could not be read, for the page.
    pub notes: Vec<String>,
}

pub fn read(run: &RunRef) -> RunData {
    let mut d = RunData::default();
    match read_json(&run.dir.join("config.json")) {
        Ok(v) => d.config = v,
        Err(e) => d.notes.push(e),
    }
    match read_json(&run.dir.join("lineage.json")) {
        Ok(v) => d.lineage = v,
        Err(e) => d.notes.push(e),
    }
    let (metrics, note) = read_metrics(&run.dir.join("metrics.jsonl"));
    d.metrics = metrics;
    d.notes.extend(note);
    d.checkpoints = checkpoints(&run.dir.join("checkpoints"));
    d.output = ["adapter", "model"].into_iter().find(|o| run.dir.join(o).is_dir());
    let eval = run.dir.join("eval").join("eval.json");
    d.eval = eval.is_file().then_some(eval);
    d
}

fn checkpoints(dir: &Path) -> Vec<CheckpointInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<CheckpointInfo> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let (files, bytes) = std::fs::read_dir(e.path())
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|f| f.metadata().ok().filter(|m| m.is_file()))
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()));
            Some(CheckpointInfo { step, files, bytes })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    out
}

/// The registry's record of each run folder, by canonical path (the latest record wins).
pub fn recorded(runs: Vec<RunRecord>) -> HashMap<PathBuf, RunRecord> {
    let mut out = HashMap::new();
    for r in runs {
        let p = std::fs::canonicalize(&r.run_dir).unwrap_or_else(|_| PathBuf::from(&r.run_dir));
        out.insert(p, r);
    }
    out
}

/// The registry's status when it has the run, else what the folder says.
pub fn status(run: &RunRef, data: &RunData, recorded: &HashMap<PathBuf, RunRecord>) -> String {
    let dir = std::fs::canonicalize(&run.dir).unwrap_or_else(|_| run.dir.clone());
    if let Some(r) = recorded.get(&dir) {
        return match r.status {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        }
        .into();
    }
    match (data.output, data.metrics.is_empty()) {
        (Some(_), _) => "finished (not in the registry)".into(),
        (None, false) => "no output yet (not in the registry)".into(),
        (None, true) => "not started".into(),
    }
}

/// A config value as one line of text (strings without their quotes).
pub fn config_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// The last logged training loss.
pub fn last_loss(metrics: &[Metrics]) -> Option<f64> {
    metrics.iter().rev().find_map(|m| m.loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_last_line_waits_and_a_bad_line_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"step\":1,\"epoch\":0.1,\"loss\":2.5,\"lr\":0.001,\"tokens_per_sec\":10}\nnot json\n{\"step\":2,\"epoch\":0.2,\"lo",
        )?;
        let (m, note) = read_metrics(&p);
        assert_eq!(m.len(), 1);
        assert!(note.is_some_and(|n| n.contains("[2]")));
        Ok(())
    }

    #[test]
    fn a_missing_runs_folder_is_a_note_not_an_error() {
        let l = list(&[PathBuf::from("/nonexistent/runs")]);
        assert!(l.runs.is_empty());
        assert!(l.notes[0].contains("does not exist"), "{:?}", l.notes);
    }
}
