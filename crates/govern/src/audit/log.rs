//! The append-only log in `$FERROTUNE_HOME/audit/` (layout and formats: `mod.rs`).
//! API SKELETON — bodies being written; signatures are the contract.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::note::Checkpoint;
use crate::error::Result;

/// One event. `canonical()` is what the tree commits to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC, filled with now when empty.
    pub time: String,
    /// Key name (server) or OS user / `--by` (CLI).
    pub actor: String,
    /// e.g. `train.start`, `registry.alias-set`, `inference`, `keys.create`, `serve.start`.
    pub action: String,
    /// What it is about: ids and hashes (`{"run": 3, "artifact": "support@2", "sha256": …}`).
    pub subject: serde_json::Value,
    /// `ok`, `failed`, `refused`, …
    pub outcome: String,
    /// Action-specific fields.
    pub fields: serde_json::Value,
}

impl Event {
    pub fn new(actor: &str, action: &str, subject: serde_json::Value, outcome: &str, fields: serde_json::Value) -> Self {
        Self { time: String::new(), actor: actor.into(), action: action.into(), subject, outcome: outcome.into(), fields }
    }
    /// Canonical JSON: keys sorted at every level, no insignificant whitespace, no floats (a
    /// float is written as a string of its shortest round-trip form); one line, UTF-8.
    pub fn canonical(&self) -> Vec<u8> { todo!("{self:?}") }
}

/// `[audit]` settings (serve.toml) / defaults for the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The log's origin line (the checkpoint's first line), e.g. `ferrotune.example/audit`.
    /// Default: `ferrotune/<hostname>/audit`.
    pub origin: Option<String>,
    /// Sign a checkpoint every N entries …
    pub checkpoint_every_entries: u64,
    /// … or when the last one is older than this many seconds (at the next append).
    pub checkpoint_every_secs: u64,
    /// Entries older than this move to archive segments (at least 183: Art. 19 / 26(6)).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { origin: None, checkpoint_every_entries: 1000, checkpoint_every_secs: 60, retention_days: 183 }
    }
}

/// What `append` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appended {
    /// Index of the first appended entry.
    pub first: u64,
    /// Tree size after.
    pub size: u64,
    /// Set when this append signed a checkpoint.
    pub checkpoint: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub root: String,
    /// Whether all is well; otherwise `problems` names the first bad entry / checkpoint.
    pub ok: bool,
    pub problems: Vec<String>,
}

/// Filter for show / tail / search / export.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub actor: Option<String>,
    /// Exact action or a prefix ending in `.` / `*` (`registry.*`).
    pub action: Option<String>,
    /// Substring of the subject's canonical JSON.
    pub subject: Option<String>,
    pub limit: Option<usize>,
}

pub struct AuditLog {
    #[allow(dead_code)]
    dir: PathBuf,
}

/// `$FERROTUNE_HOME/audit`.
pub fn default_dir() -> PathBuf {
    ferrotune_model::store::home().join("audit")
}

impl AuditLog {
    /// Open (creating the folder 0700, the key, empty files) and repair a torn tail (a last
    /// record cut by a crash is removed with a warning on stderr; the tree is rebuilt to the
    /// last complete entry).
    pub fn open(dir: &Path, cfg: &AuditConfig) -> Result<Self> { todo!("{dir:?}{cfg:?}") }
    pub fn dir(&self) -> &Path { &self.dir }
    /// Append events as one batch under the log's file lock (other processes wait); signs a
    /// checkpoint when the config says it is due. Durable (fsync) when it returns.
    pub fn append(&self, events: &[Event]) -> Result<Appended> { todo!("{}", events.len()) }
    /// Sign a checkpoint of the current size now (no-op returning the last one when nothing
    /// was appended since).
    pub fn checkpoint(&self) -> Result<(Checkpoint, String)> { todo!() }
    pub fn size(&self) -> Result<u64> { todo!() }
    pub fn verifier_key(&self) -> String { todo!() }
    /// Recompute the tree from the entries (archived segments included), check every stored
    /// checkpoint's signature and root, and consistency between successive checkpoints.
    /// `trusted`: a checkpoint (signed note) kept elsewhere that the log must extend.
    pub fn verify(&self, trusted: Option<&str>) -> Result<VerifyReport> { todo!("{trusted:?}") }
    /// The offline inclusion bundle of entry `index` against the latest checkpoint (format in mod.rs).
    pub fn prove(&self, index: u64) -> Result<serde_json::Value> { todo!("{index}") }
    /// Consistency bundle between two sizes (`new` default: the latest checkpoint's size).
    pub fn consistency(&self, old: u64, new: Option<u64>) -> Result<serde_json::Value> { todo!("{old}{new:?}") }
    /// Entries matching the filter, with their indexes, oldest first (`tail`: the last `limit`).
    pub fn entries(&self, f: &Filter, tail: bool) -> Result<Vec<(u64, serde_json::Value)>> { todo!("{f:?}{tail}") }
    /// Write an auditor's bundle to `out` (format in mod.rs); returns how many entries.
    pub fn export(&self, f: &Filter, out: &Path) -> Result<u64> { todo!("{f:?}{out:?}") }
    /// Move entries older than `retention_days` into compressed archive segments.
    pub fn archive(&self) -> Result<u64> { todo!() }
}
