//! What `data validate`, `train` and `eval` put on record in the registry
//! (`$FERROTUNE_HOME/registry.db`, or `--registry`; `--no-registry` opts a command out).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ferrotune_govern::{
    ArtifactKind, ArtifactRecord, EvalSystem, FileHash, Flops, NewArtifact, NewDataset, NewEval, NewModel,
    NewRun, Registry, RunEnd, RunStatus,
};

/// The flags every recording command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryFlags {
    /// Do not record this command in the registry.
    #[arg(long)]
    pub no_registry: bool,
    /// Registry database [default: $FERROTUNE_HOME/registry.db].
    #[arg(long, value_name = "FILE")]
    pub registry: Option<PathBuf>,
}

impl RegistryFlags {
    pub fn open(&self) -> anyhow::Result<Option<Registry>> {
        if self.no_registry {
            return Ok(None);
        }
        let path = self.registry.clone().unwrap_or_else(ferrotune_govern::default_path);
        Ok(Some(
            Registry::open(&path)
                .with_context(|| "opening the registry (pass --no-registry to run without it)")?,
        ))
    }
}

pub fn hash_file(path: &Path) -> anyhow::Result<FileHash> {
    Ok(ferrotune_govern::hash_file(path)?)
}

/// Every file under `dir` (recursively, sorted), hashed, with absolute paths.
pub fn hash_dir(dir: &Path) -> anyhow::Result<Vec<FileHash>> {
    Ok(ferrotune_govern::hash_folder(&std::path::absolute(dir).with_context(|| dir.display().to_string())?)?)
}

/// `[{path, bytes, sha256}]` of the files, for an audit entry.
pub fn hash_paths<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> anyhow::Result<serde_json::Value> {
    let hashed = paths.into_iter().map(|p| hash_file(p)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(serde_json::to_value(hashed)?)
}

/// What a run reads, hashed once when it starts: for the registry and the audit entry both.
pub struct RunInputs {
    pub model_files: Vec<FileHash>,
    /// Training data, then evaluation data.
    pub data: Vec<FileHash>,
}

impl RunInputs {
    pub fn of(s: &ferrotune_train::RunStart<'_>) -> anyhow::Result<Self> {
        let hash = |files: &[PathBuf]| files.iter().map(|f| hash_file(f)).collect::<anyhow::Result<Vec<_>>>();
        Ok(Self { model_files: hash(s.model_files)?, data: hash(&s.data_files)? })
    }
}

fn dataset(h: FileHash) -> NewDataset {
    NewDataset {
        path: h.path,
        sha256: h.sha256,
        bytes: h.bytes,
        format: None,
        rows: None,
        report: None,
        pii_findings: None,
        duplicates: None,
    }
}

/// `data validate`: each checked file with its format, rows and the report's counts.
pub fn validated(reg: &Registry, report: &ferrotune_data::Report) -> anyhow::Result<Vec<i64>> {
    use ferrotune_data::Code;
    let count = |c: Code| report.counts.get(&c).copied().unwrap_or(0);
    let summary = serde_json::json!({
        "ok": report.ok,
        "errors": report.errors,
        "warnings": report.warnings,
        "counts": report.counts,
        "settings": report.settings,
    });
    let mut ids = Vec::new();
    for f in &report.files {
        let mut d = dataset(hash_file(Path::new(&f.path))?);
        d.format = f.format.map(|x| {
            serde_json::to_value(x).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        });
        d.rows = Some(f.rows);
        // The counts are over every file checked together (duplicates and leakage are found
        // across them): each file's record carries the run's summary.
        d.report = Some(summary.clone());
        d.pii_findings = Some(count(Code::Pii));
        d.duplicates = Some(count(Code::ExactDuplicate) + count(Code::NearDuplicate));
        ids.push(reg.register_dataset(&d)?);
    }
    Ok(ids)
}

/// `train`: the run registered when it starts, finished (and its output registered as the next
/// version of `register_as`) when it ends.
pub struct TrainRecord<'r> {
    reg: &'r Registry,
    register_as: Option<String>,
    run: Option<i64>,
    base_model: Option<i64>,
    actor: String,
}

impl<'r> TrainRecord<'r> {
    pub fn new(reg: &'r Registry, register_as: Option<String>) -> Self {
        Self { reg, register_as, run: None, base_model: None, actor: ferrotune_govern::actor(None) }
    }

    /// The registry's id of the run, once started.
    pub fn run_id(&self) -> Option<i64> {
        self.run
    }

    pub fn started(&mut self, s: &ferrotune_train::RunStart<'_>, inputs: &RunInputs) -> anyhow::Result<()> {
        let c = s.model_config;
        let model = self.reg.register_model(&NewModel {
            name: s.config.model.clone(),
            path: ferrotune_model::store::resolve(&s.config.model).map_or_else(|_| s.config.model.clone(), |p| p.display().to_string()),
            files: inputs.model_files.clone(),
            config: serde_json::json!({
                "family": format!("{:?}", c.family).to_lowercase(),
                "layers": c.num_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
                "heads": c.num_heads, "kv_heads": c.num_kv_heads, "head_dim": c.head_dim,
                "vocab": c.vocab_size, "context": c.max_position_embeddings, "tied_embeddings": c.tie_word_embeddings,
            }),
            parameters: Some(s.base_parameters),
        })?;
        let mut datasets = Vec::new();
        for f in &inputs.data {
            datasets.push(self.reg.register_dataset(&dataset(f.clone()))?);
        }
        let run_dir = std::path::absolute(s.run_dir).unwrap_or_else(|_| s.run_dir.to_path_buf());
        let name =
            run_dir.file_name().map_or_else(|| "run".to_string(), |n| n.to_string_lossy().into_owned());
        let register_as = self.register_as.clone().unwrap_or_else(|| artifact_name(&name));
        let run = self.reg.begin_run(&NewRun {
            name,
            run_dir: run_dir.display().to_string(),
            base_model: model,
            datasets,
            config: serde_json::to_value(s.config)?,
            method: serde_json::to_value(s.config.method)?.as_str().unwrap_or("lora").to_string(),
            device: s.config.device.clone(),
            actor: self.actor.clone(),
            register_as: register_as.clone(),
        })?;
        self.register_as = Some(register_as);
        self.run = Some(run);
        self.base_model = Some(model);
        Ok(())
    }

    /// Record the outcome; on success the output becomes the next version of the run's name.
    pub fn finished(
        &self,
        result: &ferrotune_train::Result<ferrotune_train::RunSummary>,
    ) -> anyhow::Result<Option<ArtifactRecord>> {
        let Some(run) = self.run else { return Ok(None) };
        let s = match result {
            Err(e) => {
                let end = RunEnd {
                    status: RunStatus::Failed,
                    error: Some(e.to_string()),
                    tokens: None,
                    steps: None,
                    metrics: None,
                    flops: None,
                };
                self.reg.finish_run(run, &end)?;
                return Ok(None);
            }
            Ok(s) => s,
        };
        let full = s.output.file_name().is_some_and(|n| n == "model");
        let end = RunEnd {
            status: RunStatus::Succeeded,
            error: None,
            tokens: Some(s.tokens),
            steps: Some(s.steps as u64),
            metrics: Some(serde_json::to_value(s)?),
            flops: Some(training_flops(s.base_parameters, s.trainable_parameters, s.tokens, full)),
        };
        self.reg.finish_run(run, &end)?;
        let artifact = self.reg.register_artifact(&NewArtifact {
            name: self.register_as.clone().unwrap_or_default(),
            kind: if full { ArtifactKind::Model } else { ArtifactKind::Adapter },
            path: std::path::absolute(&s.output)?.display().to_string(),
            files: hash_dir(&s.output)?,
            run: Some(run),
            base_model: self.base_model,
            actor: self.actor.clone(),
        })?;
        Ok(Some(artifact))
    }
}

/// A run folder's name as an artifact name: characters other than letters, digits, `.`, `_` and
/// `-` become `-`, at most 64 of them.
pub fn artifact_name(folder: &str) -> String {
    let n: String = folder
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(64)
        .collect();
    if n.is_empty() || n.chars().all(|c| c.is_ascii_digit()) {
        format!("run-{}", &n[..n.len().min(60)])
    } else {
        n
    }
}

/// Training compute by the standard estimate for a decoder (Kaplan et al. 2020; the
/// Chinchilla paper's C ≈ 6ND): a forward pass costs 2 FLOPs per weight per token, the backward
/// pass 4 (2 for the gradient of the activations, 2 for that of the weights). Full fine-tuning:
/// 6·N·T. LoRA: the frozen weights need the activations' gradient but no weight gradient, so
/// 4·N·T, plus 6·N_lora·T for the adapters. Attention's score products (∝ sequence length²) are
/// left out, as in the standard estimate; T counts tokens without padding.
pub fn training_flops(base: u64, trainable: u64, tokens: u64, full: bool) -> Flops {
    let (n, t) = (base as f64, tokens as f64);
    if full {
        Flops { value: 6.0 * n * t, formula: format!("6·N·T, N = {base} parameters, T = {tokens} tokens") }
    } else {
        Flops {
            value: (4.0 * n + 6.0 * trainable as f64) * t,
            formula: format!(
                "(4·N + 6·N_lora)·T, N = {base} base parameters, N_lora = {trainable} LoRA parameters, T = {tokens} tokens"
            ),
        }
    }
}

/// What a `train.start` audit entry names: the run (folder, registry id), the hashes of its
/// config, data and base model files.
pub fn train_subject(
    s: &ferrotune_train::RunStart<'_>,
    inputs: &RunInputs,
    run: Option<i64>,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "run_dir": std::path::absolute(s.run_dir)?.display().to_string(),
        "run": run,
        "config_sha256": ferrotune_govern::sha256_hex(&serde_json::to_vec(s.config)?),
        "data": inputs.data,
        "base_model": {"name": s.config.model, "files": inputs.model_files},
    }))
}

/// `eval`: the written eval.json, its systems matched to registered versions by their files.
pub fn evaluated(
    reg: &Registry,
    eval_json: &Path,
    sha256: &str,
) -> anyhow::Result<ferrotune_govern::EvalRecord> {
    let text = std::fs::read_to_string(eval_json).with_context(|| eval_json.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| eval_json.display().to_string())?;
    let s = |ptr: &str| v.pointer(ptr).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let mut systems = Vec::new();
    for sys in v["systems"].as_array().into_iter().flatten() {
        let adapter = sys["adapter"].as_str().map(str::to_string);
        let adapter_files = match &adapter {
            Some(dir) if Path::new(dir).is_dir() => hash_dir(Path::new(dir))?,
            _ => Vec::new(),
        };
        systems.push(EvalSystem {
            name: sys["name"].as_str().unwrap_or_default().to_string(),
            adapter,
            adapter_files,
        });
    }
    Ok(reg.register_eval(&NewEval {
        path: std::path::absolute(eval_json)?.display().to_string(),
        sha256: sha256.to_string(),
        model: s("/model"),
        data_path: s("/data/path"),
        data_sha256: s("/data/sha256"),
        rows: v.pointer("/data/rows").and_then(|x| x.as_u64()).unwrap_or(0),
        systems,
        metrics: v["metrics"].clone(),
        actor: ferrotune_govern::actor(None),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folder_names_become_valid_artifact_names() {
        assert_eq!(artifact_name("demo"), "demo");
        assert_eq!(artifact_name("my run (2)"), "my-run--2-");
        assert_eq!(artifact_name("123"), "run-123");
        assert_eq!(artifact_name(&"x".repeat(100)).len(), 64);
        for n in ["demo", "my run (2)", "123", "é"] {
            let r: ferrotune_govern::Reference = artifact_name(n).parse().expect("valid");
            assert_eq!(r.selector, ferrotune_govern::Selector::Default);
        }
    }

    #[test]
    fn lora_flops_leave_out_the_frozen_weights_gradient() {
        let f = training_flops(100, 10, 1000, false);
        assert_eq!(f.value, (4.0 * 100.0 + 6.0 * 10.0) * 1000.0);
        assert!(f.formula.contains("N_lora = 10"), "{}", f.formula);
        assert_eq!(training_flops(100, 100, 1000, true).value, 6.0 * 100.0 * 1000.0);
    }
}
