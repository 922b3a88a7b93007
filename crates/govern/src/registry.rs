//! `Registry`: the SQLite database (`$FERROTUNE_HOME/registry.db`, WAL, bundled SQLite).
//! API SKELETON — bodies are being written (see the brief); signatures are the contract.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::policy::Policy;
use crate::records::*;

pub struct Registry {
    #[allow(dead_code)]
    path: PathBuf,
}

/// `$FERROTUNE_HOME/registry.db`.
pub fn default_path() -> PathBuf {
    ferrotune_model::store::home().join("registry.db")
}

/// Who is acting: `by` when given (recorded as given), else the OS user (`$USER`, `$LOGNAME`),
/// else `unknown`.
pub fn actor(by: Option<&str>) -> String {
    todo!("{by:?}")
}

/// What `promote` / `approve` did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Promotion {
    /// The alias moved (no approval needed, or this approval completed the request).
    Applied { request: i64, alias: String, from_version: Option<u32>, to_version: u32 },
    /// Waiting for `needed` more approvals.
    Pending { request: i64, needed: u32 },
}

/// An artifact reference resolved: `support` (the default alias), `support@canary`, `support@3`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub name: String,
    pub selector: Selector,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Default,
    Version(u32),
    Alias(String),
}

impl std::str::FromStr for Reference {
    type Err = crate::error::GovernError;
    fn from_str(s: &str) -> Result<Self> {
        todo!("{s}")
    }
}

impl Registry {
    /// Open (creating the file, its folder and the schema when missing). WAL, busy timeout 10 s.
    pub fn open(path: &Path) -> Result<Self> { todo!("{path:?}") }
    pub fn path(&self) -> &Path { &self.path }
    /// A number that changes whenever any process commits a change (cheap; the server polls it).
    pub fn generation(&self) -> Result<i64> { todo!() }

    // ---- recording (each is idempotent where the brief says so) ----
    pub fn register_model(&self, m: &NewModel) -> Result<i64> { todo!("{m:?}") }
    pub fn register_dataset(&self, d: &NewDataset) -> Result<i64> { todo!("{d:?}") }
    pub fn begin_run(&self, r: &NewRun) -> Result<i64> { todo!("{r:?}") }
    pub fn finish_run(&self, run: i64, end: &RunEnd) -> Result<()> { todo!("{run} {end:?}") }
    pub fn register_artifact(&self, a: &NewArtifact) -> Result<ArtifactRecord> { todo!("{a:?}") }
    pub fn register_eval(&self, e: &NewEval) -> Result<EvalRecord> { todo!("{e:?}") }
    /// Register a run made before the registry existed (or with `--no-registry`) from its
    /// folder's `lineage.json` + `config.json` (+ `eval/eval.json` when present).
    pub fn import_run(&self, run_dir: &Path, register_as: Option<&str>, actor: &str) -> Result<Lineage> { todo!("{run_dir:?} {register_as:?} {actor}") }

    // ---- queries ----
    pub fn models(&self) -> Result<Vec<ModelRecord>> { todo!() }
    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> { todo!() }
    pub fn runs(&self) -> Result<Vec<RunRecord>> { todo!() }
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>> { todo!() }
    pub fn evals(&self) -> Result<Vec<EvalRecord>> { todo!() }
    pub fn run(&self, id: i64) -> Result<RunRecord> { todo!("{id}") }
    /// `support`, `support@3`, `support@canary`; `default_alias` is what a bare name means.
    pub fn resolve(&self, reference: &str, default_alias: &str) -> Result<ArtifactRecord> { todo!("{reference} {default_alias}") }
    pub fn lineage(&self, reference: &str, default_alias: &str) -> Result<Lineage> { todo!("{reference} {default_alias}") }
    /// Every event about `name`, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEvent>> { todo!("{name}") }
    /// name → alias → version.
    pub fn aliases(&self) -> Result<Vec<(String, String, u32)>> { todo!() }
    pub fn requests(&self, open_only: bool) -> Result<Vec<PromotionRequest>> { todo!("{open_only}") }

    // ---- releases ----
    pub fn promote(&self, name: &str, version: u32, alias: &str, reason: &str, actor: &str, policy: &Policy) -> Result<Promotion> { todo!("{name}{version}{alias}{reason}{actor}{policy:?}") }
    pub fn approve(&self, request: i64, actor: &str, policy: &Policy) -> Result<Promotion> { todo!("{request}{actor}{policy:?}") }
    pub fn reject(&self, request: i64, actor: &str, reason: &str) -> Result<PromotionRequest> { todo!("{request}{actor}{reason}") }
    pub fn disable(&self, name: &str, version: u32, reason: &str, actor: &str) -> Result<ArtifactRecord> { todo!("{name}{version}{reason}{actor}") }
    pub fn enable(&self, name: &str, version: u32, reason: &str, actor: &str) -> Result<ArtifactRecord> { todo!("{name}{version}{reason}{actor}") }
}
