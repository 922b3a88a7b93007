//! `import_run`: record a run folder made without the registry, from the `lineage.json` that
//! `train` writes next to every run (`crates/train/src/lineage.rs`), its `config.json` and, when
//! present, `eval/eval.json`.
//!
//! The output files are hashed again and compared with lineage.json: an adapter edited after its
//! run must not be recorded under that run's lineage. Paths in lineage.json are relative to where
//! `train` ran; they are found again under the run folder (the run folder may have moved).

use std::path::{Path, PathBuf};

use rusqlite::OptionalExtension;
use serde_json::Value;

use crate::db::{hash_folder, relative, sha256_file};
use crate::error::{GovernError, Result};
use crate::query::lineage_in;
use crate::recording::{
    Event, Process, finish_run_in, insert_artifact, insert_dataset, insert_eval, insert_model, insert_run,
    now,
};
use crate::records::*;
use crate::registry::{Registry, check_name};

/// A JSON file read for import, so errors name it and the field.
struct JsonFile {
    path: PathBuf,
    v: Value,
}

impl JsonFile {
    fn read(path: PathBuf) -> Result<JsonFile> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(GovernError::BadFile {
                    path,
                    field: "(file)".into(),
                    reason: "not found".into(),
                });
            }
            Err(source) => return Err(GovernError::Io { path, error: source }),
        };
        let v = serde_json::from_str(&text).map_err(|e| GovernError::BadFile {
            path: path.clone(),
            field: "(json)".into(),
            reason: e.to_string(),
        })?;
        Ok(JsonFile { path, v })
    }

    fn bad(&self, field: &str, reason: impl Into<String>) -> GovernError {
        GovernError::BadFile { path: self.path.clone(), field: field.into(), reason: reason.into() }
    }

    /// The value at a dotted path (`base_model.files`), `None` when absent or null.
    fn get(&self, field: &str) -> Option<&Value> {
        field.split('.').try_fold(&self.v, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    fn str(&self, field: &str) -> Result<String> {
        match self.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.bad(field, "expected a string")),
            None => Err(self.bad(field, "missing")),
        }
    }

    fn opt_str(&self, field: &str) -> Option<String> {
        self.get(field).and_then(Value::as_str).map(str::to_string)
    }

    /// `[{path, bytes, sha256}, …]`.
    fn files(&self, field: &str) -> Result<Vec<FileHash>> {
        let Some(items) = self.get(field) else { return Err(self.bad(field, "missing")) };
        let Some(items) = items.as_array() else {
            return Err(self.bad(field, "expected a list of {path, bytes, sha256}"));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let at = |k: &str| format!("{field}[{i}].{k}");
                let path = f
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.bad(&at("path"), "missing or not a string"))?;
                let sha256 = f
                    .get("sha256")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.bad(&at("sha256"), "missing or not a string"))?;
                let bytes = f.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                Ok(FileHash { path: path.into(), bytes, sha256: sha256.into() })
            })
            .collect()
    }
}

/// Where a folder recorded in lineage.json / eval.json is now: as recorded when absolute, else
/// under the run folder (the recorded path minus the recorded run folder), else relative to here.
fn locate(recorded: &str, recorded_run_dir: Option<&str>, run_dir: &Path) -> Option<PathBuf> {
    let p = Path::new(recorded);
    let mut candidates = Vec::new();
    if p.is_absolute() {
        candidates.push(p.to_path_buf());
    }
    if let Some(rest) = recorded_run_dir.and_then(|d| p.strip_prefix(d).ok()) {
        candidates.push(run_dir.join(rest));
    }
    if p.is_relative() {
        candidates.push(p.to_path_buf());
    }
    if let Some(name) = p.file_name() {
        candidates.push(run_dir.join(name));
    }
    candidates.into_iter().find(|c| c.is_dir())
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The output files as they are now, refusing any whose content differs from lineage.json.
fn verify_output(
    lineage: &JsonFile,
    recorded: &[FileHash],
    recorded_folder: &str,
    folder: &Path,
) -> Result<Vec<FileHash>> {
    recorded
        .iter()
        .map(|f| {
            let now_path = folder.join(relative(recorded_folder, &f.path));
            if !now_path.is_file() {
                return Err(GovernError::Refused(format!(
                    "{}: listed in {} (output.files) but missing; refusing to import",
                    now_path.display(),
                    lineage.path.display()
                )));
            }
            let sha = sha256_file(&now_path)?;
            if sha != f.sha256 {
                return Err(GovernError::Refused(format!(
                    "{}: sha256 is {sha} now but {} recorded {}: the file changed after the run; refusing to import",
                    now_path.display(),
                    lineage.path.display(),
                    f.sha256
                )));
            }
            let bytes = std::fs::metadata(&now_path).map_err(|source| GovernError::Io { path: now_path.clone(), error: source })?.len();
            Ok(FileHash { path: now_path.display().to_string(), bytes, sha256: sha })
        })
        .collect()
}

/// `eval/eval.json` as a `NewEval`; adapter systems are hashed from their folders when found.
fn read_eval(path: PathBuf, recorded_run_dir: Option<&str>, run_dir: &Path, actor: &str) -> Result<NewEval> {
    let sha256 = sha256_file(&path)?;
    let f = JsonFile::read(path)?;
    let rows = f
        .get("data.rows")
        .or_else(|| f.get("rows"))
        .and_then(Value::as_u64)
        .ok_or_else(|| f.bad("data.rows", "missing or not a count"))?;
    let Some(systems) = f.get("systems").and_then(Value::as_array) else {
        return Err(f.bad("systems", "missing or not a list"));
    };
    let mut out = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        let name = s
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| f.bad(&format!("systems[{i}].name"), "missing or not a string"))?;
        let adapter = s.get("adapter").and_then(Value::as_str);
        let (adapter, adapter_files) = match adapter.and_then(|a| locate(a, recorded_run_dir, run_dir)) {
            Some(dir) => {
                let dir = absolute(&dir);
                (Some(dir.display().to_string()), hash_folder(&dir)?)
            }
            None => (adapter.map(str::to_string), Vec::new()),
        };
        out.push(EvalSystem { name: name.into(), adapter, adapter_files });
    }
    Ok(NewEval {
        path: absolute(&f.path).display().to_string(),
        sha256,
        model: f.str("model")?,
        data_path: f.str("data.path")?,
        data_sha256: f.str("data.sha256")?,
        rows,
        systems: out,
        metrics: f.get("metrics").cloned().unwrap_or(Value::Array(Vec::new())),
        actor: actor.into(),
    })
}

impl Registry {
    /// Register a run made before the registry existed (or with `--no-registry`) from its
    /// folder's `lineage.json` + `config.json` (+ `eval/eval.json` when present). Importing the
    /// same folder again changes nothing (runs are keyed by folder and start time).
    pub fn import_run(&self, run_dir: &Path, register_as: Option<&str>, actor: &str) -> Result<Lineage> {
        let run_dir = absolute(run_dir);
        let folder_name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let register_as = register_as.map(str::to_string).unwrap_or_else(|| folder_name.clone());
        check_name("register_as", &register_as)?;
        let lineage = JsonFile::read(run_dir.join("lineage.json"))?;
        let started = lineage.str("started")?;
        let finished = lineage.opt_str("finished");
        let config = match run_dir.join("config.json") {
            p if p.is_file() => JsonFile::read(p)?.v,
            _ => lineage.get("config").cloned().unwrap_or_else(|| Value::Object(Default::default())),
        };
        let text = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("unknown").to_string();
        let (method, device) = (text("method"), text("device"));
        // The run folder as `train` saw it: the config's `out`, else the summary's `run_dir`.
        let recorded_run_dir = config
            .get("out")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| lineage.opt_str("metrics.run_dir"));

        let model_files = lineage.files("base_model.files")?;
        let spec = lineage.str("base_model.spec")?;
        let model = NewModel {
            name: spec.clone(),
            path: model_files
                .first()
                .and_then(|f| Path::new(&f.path).parent())
                .map_or(spec.clone(), |p| p.display().to_string()),
            files: model_files,
            config: lineage
                .get("base_model.config")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
            parameters: lineage.get("base_model.parameters").and_then(Value::as_u64),
        };
        let datasets: Vec<NewDataset> = lineage
            .files("data")?
            .into_iter()
            .map(|f| NewDataset {
                path: f.path,
                sha256: f.sha256,
                bytes: f.bytes,
                format: None,
                rows: None,
                report: None,
                pii_findings: None,
                duplicates: None,
            })
            .collect();

        let output_path = lineage.str("output.path")?;
        let recorded_files = lineage.files("output.files")?;
        if recorded_files.is_empty() {
            return Err(
                lineage.bad("output.files", "empty: the run wrote no output, there is nothing to import")
            );
        }
        let folder = locate(&output_path, recorded_run_dir.as_deref(), &run_dir).ok_or_else(|| {
            lineage
                .bad("output.path", format!("{output_path}: not found (looked under {})", run_dir.display()))
        })?;
        let folder = absolute(&folder);
        let files = verify_output(&lineage, &recorded_files, &output_path, &folder)?;
        let kind = if recorded_files.iter().any(|f| relative(&output_path, &f.path) == "adapter_config.json")
        {
            ArtifactKind::Adapter
        } else {
            ArtifactKind::Model
        };
        let eval_path = run_dir.join("eval").join("eval.json");
        let eval = if eval_path.is_file() {
            Some(read_eval(eval_path, recorded_run_dir.as_deref(), &run_dir, actor)?)
        } else {
            None
        };
        let metrics = lineage.get("metrics").cloned();
        let run_dir_s = run_dir.display().to_string();

        self.write(|c| {
            let model_id = insert_model(c, &model)?;
            let mut dataset_ids = Vec::new();
            for d in &datasets {
                dataset_ids.push(insert_dataset(c, d)?);
            }
            let existing: Option<i64> = c
                .query_row(
                    "SELECT id FROM runs WHERE run_dir = ?1 AND started = ?2",
                    [&run_dir_s, &started],
                    |r| r.get(0),
                )
                .optional()?;
            let (run_id, new_run) = match existing {
                Some(id) => (id, false),
                None => {
                    let new = NewRun {
                        name: folder_name.clone(),
                        run_dir: run_dir_s.clone(),
                        base_model: model_id,
                        datasets: dataset_ids.clone(),
                        config: config.clone(),
                        method: method.clone(),
                        device: device.clone(),
                        actor: actor.into(),
                        register_as: register_as.clone(),
                    };
                    // No process to watch: the run ended before it was recorded.
                    let id = insert_run(
                        c,
                        &new,
                        RunStatus::Running,
                        &Process { host: "imported", pid: 0, pid_start: None },
                        &started,
                    )?;
                    let end = RunEnd {
                        status: RunStatus::Succeeded,
                        error: None,
                        tokens: metrics.as_ref().and_then(|m| m.get("tokens")).and_then(Value::as_u64),
                        steps: metrics.as_ref().and_then(|m| m.get("steps")).and_then(Value::as_u64),
                        metrics: metrics.clone(),
                        flops: None,
                    };
                    finish_run_in(c, id, &end, finished.as_deref().unwrap_or(&started))?;
                    (id, true)
                }
            };
            let artifact = NewArtifact {
                name: register_as.clone(),
                kind,
                path: folder.display().to_string(),
                files: files.clone(),
                run: Some(run_id),
                base_model: Some(model_id),
                actor: actor.into(),
            };
            let (artifact, _) = insert_artifact(c, &artifact)?;
            if let Some(e) = &eval {
                insert_eval(c, e)?;
            }
            if new_run {
                let reason = format!("run {run_id} from {run_dir_s} (started {started}, imported {})", now());
                Event {
                    version: Some(artifact.version),
                    reason: Some(&reason),
                    ..Event::new(actor, "imported", &register_as)
                }
                .insert(c)?;
            }
            // Re-read: the eval registered above may have matched this version.
            let artifact = crate::query::artifacts_in(c, "WHERE id = ?1", [artifact.id])?
                .pop()
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            lineage_in(c, artifact)
        })
    }
}
