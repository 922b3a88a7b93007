//! What the registry stores: the `New*` structs are what a stage hands in, the `*Record` structs
//! what queries give back (both serialise to the `--json` output of `ferrotune registry`).

use serde::{Deserialize, Serialize};

/// One file with its content hash (paths as given: relative paths stay relative to where the
/// command ran; artifacts store absolute paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A base model. The same set of file hashes is the same model (registering again returns the
/// existing id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewModel {
    /// The name it was asked for by (`smollm2-135m-instruct`, or a path).
    pub name: String,
    pub path: String,
    pub files: Vec<FileHash>,
    /// architecture, layers, hidden, heads, kv heads, vocab, context, … as loaded.
    pub config: serde_json::Value,
    /// `None` when not known (a run imported from a lineage.json that did not record it).
    pub parameters: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub files: Vec<FileHash>,
    pub config: serde_json::Value,
    pub parameters: Option<u64>,
    pub created: String,
}

/// A data file. The same SHA-256 is the same dataset (registering again returns the existing id
/// and fills in what the earlier record lacked, e.g. the validate report's summary).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDataset {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// `chat`, `alpaca`, `completion`, `text`, or `None` when not known.
    pub format: Option<String>,
    pub rows: Option<u64>,
    /// The validate report's summary (counts of errors, warnings, PII findings, duplicates, …).
    pub report: Option<serde_json::Value>,
    pub pii_findings: Option<u64>,
    pub duplicates: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub id: i64,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub format: Option<String>,
    pub rows: Option<u64>,
    pub report: Option<serde_json::Value>,
    pub pii_findings: Option<u64>,
    pub duplicates: Option<u64>,
    pub created: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Recorded as running, but its process is gone (killed, machine rebooted): decided when read.
    Abandoned,
}

/// What `train` registers when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRun {
    /// The run's name (the run folder's name unless given).
    pub name: String,
    pub run_dir: String,
    pub base_model: i64,
    /// Training data first, then evaluation data.
    pub datasets: Vec<i64>,
    /// The resolved training config (`config.json` of the run).
    pub config: serde_json::Value,
    /// `lora` or `full`.
    pub method: String,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// Who started it (`--by` or the OS user).
    pub actor: String,
    /// The artifact name its output will be registered under (`--register-as`, else the run name).
    pub register_as: String,
}

/// What `train` records when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEnd {
    pub status: RunStatus,
    /// The error, for a failed run.
    pub error: Option<String>,
    /// Tokens the optimizer saw (padding excluded), over the whole run (resumes included).
    pub tokens: Option<u64>,
    pub steps: Option<u64>,
    /// `RunSummary` as JSON: losses, best step, tokens/s.
    pub metrics: Option<serde_json::Value>,
    pub flops: Option<Flops>,
}

/// Estimated training compute, with the formula that gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flops {
    pub value: f64,
    /// e.g. `(4·N + 6·N_lora)·T, N = 134515008 base parameters, N_lora = …, T = … tokens`.
    pub formula: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub name: String,
    pub run_dir: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub base_model: i64,
    pub datasets: Vec<i64>,
    pub config: serde_json::Value,
    pub method: String,
    pub device: String,
    pub actor: String,
    pub register_as: String,
    pub host: String,
    pub pid: u32,
    pub started: String,
    pub finished: Option<String>,
    pub tokens: Option<u64>,
    pub steps: Option<u64>,
    pub metrics: Option<serde_json::Value>,
    pub flops: Option<Flops>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A PEFT LoRA adapter folder.
    Adapter,
    /// A full model (HF folder).
    Model,
}

/// A run's output, registered as the next version of `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewArtifact {
    pub name: String,
    pub kind: ArtifactKind,
    /// The folder (absolute).
    pub path: String,
    /// Every file under it, with hashes (sorted by path).
    pub files: Vec<FileHash>,
    pub run: Option<i64>,
    pub base_model: Option<i64>,
    pub actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub id: i64,
    pub name: String,
    pub version: u32,
    pub kind: ArtifactKind,
    pub path: String,
    pub files: Vec<FileHash>,
    pub run: Option<i64>,
    pub base_model: Option<i64>,
    pub created: String,
    pub actor: String,
    /// Kill switch: a disabled version is not served and cannot be promoted.
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// Aliases pointing at this version now.
    pub aliases: Vec<String>,
}

impl ArtifactRecord {
    /// `support@3`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One system of an evaluation (`base`, or an adapter identified by its files' hashes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSystem {
    pub name: String,
    /// The adapter folder it ran (`None` = the base model).
    pub adapter: Option<String>,
    /// Hashes of the adapter's files (empty for the base): how the system is matched to a
    /// registered artifact version.
    pub adapter_files: Vec<FileHash>,
}

/// An `eval.json` produced by `ferrotune eval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEval {
    /// The eval.json file and its SHA-256.
    pub path: String,
    pub sha256: String,
    /// The base model it ran (spec as given).
    pub model: String,
    /// The evaluation data (path, sha256) and rows.
    pub data_path: String,
    pub data_sha256: String,
    pub rows: u64,
    pub systems: Vec<EvalSystem>,
    /// eval.json's `metrics` array as written (name, higher_is_better, scale, scores with ci95,
    /// vs_base).
    pub metrics: serde_json::Value,
    pub actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub id: i64,
    pub path: String,
    pub sha256: String,
    pub model: String,
    pub data_path: String,
    pub data_sha256: String,
    pub rows: u64,
    pub created: String,
    pub actor: String,
    /// Each system with the artifact version it was matched to (`None`: base, or an adapter the
    /// registry does not know).
    pub systems: Vec<(EvalSystem, Option<i64>)>,
    pub metrics: serde_json::Value,
}

/// Every alias change, approval, rejection, disable/enable, registration: who, when, why, from → to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub id: i64,
    pub time: String,
    pub actor: String,
    /// `register`, `promote-requested`, `approved`, `rejected`, `alias-set`, `alias-refused`,
    /// `disabled`, `enabled`, `imported`, `run-started`, `run-finished`.
    pub action: String,
    pub name: String,
    pub version: Option<u32>,
    pub alias: Option<String>,
    /// For alias moves: the version it pointed at before (`None`: newly created) and after.
    pub from_version: Option<u32>,
    pub to_version: Option<u32>,
    pub request: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Open,
    /// Approved and the alias moved.
    Applied,
    Rejected,
    /// Approvals complete but a rule failed when applying (the reason says which).
    Refused,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotionRequest {
    pub id: i64,
    pub name: String,
    pub version: u32,
    pub alias: String,
    pub requester: String,
    pub reason: String,
    pub created: String,
    pub status: RequestStatus,
    /// Who approved, in order.
    pub approvals: Vec<(String, String)>,
    pub decided: Option<String>,
    pub decision_reason: Option<String>,
}

/// The lineage of one artifact version: data → run → artifact → evals → releases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lineage {
    pub artifact: ArtifactRecord,
    pub run: Option<RunRecord>,
    pub base_model: Option<ModelRecord>,
    pub datasets: Vec<DatasetRecord>,
    pub evals: Vec<EvalRecord>,
    /// Alias changes that involved this version, oldest first.
    pub releases: Vec<HistoryEvent>,
}
