//! What the dashboard is pointed at, and what its handlers share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferrotune_govern::Registry;
use ferrotune_rag::KnowledgeBase;

use crate::auth::{AdminKey, Sessions};
use crate::error::UiError;

/// Appends one event to the audit log: `(actor, action, subject, outcome, fields)`. The binary
/// passes the function its own commands record with, so a write from the dashboard leaves the
/// same entry as the same write from the CLI. An `Err` is the reason, for the page.
pub type Trail =
    Arc<dyn Fn(&str, &str, serde_json::Value, &str, serde_json::Value) -> Result<(), String> + Send + Sync>;

pub struct UiConfig {
    /// `$FERROTUNE_HOME`: `registry.db`, `audit/`, `kb/`, `policy.toml`.
    pub home: PathBuf,
    /// Folders holding run folders (each run: `config.json`, `metrics.jsonl`, …).
    pub runs: Vec<PathBuf>,
    /// Writes are refused while this is `None`.
    pub admin_key: Option<AdminKey>,
    /// Bound to a loopback address: requests must then name a loopback `Host` (a page on another
    /// site cannot reach the dashboard by rebinding its own DNS name to 127.0.0.1).
    pub loopback: bool,
    /// Bearer key sent to a server's `/metrics` on the Serving page (its keys are checked there too).
    pub serve_key: Option<String>,
    /// How often a run page's event stream looks at `metrics.jsonl`.
    pub poll: std::time::Duration,
}

pub struct AppState {
    pub cfg: UiConfig,
    pub sessions: Sessions,
    pub trail: Trail,
    /// Open knowledge bases by folder, so the embedder loads once per knowledge base.
    kbs: Mutex<HashMap<PathBuf, Arc<KnowledgeBase>>>,
    /// Set when the server shuts down: ends the event streams, which would otherwise hold it open.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(cfg: UiConfig, trail: Trail) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            sessions: Sessions::default(),
            trail,
            kbs: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn registry_path(&self) -> PathBuf {
        self.cfg.home.join("registry.db")
    }

    /// The registry, or `None` when nothing has been recorded yet (the dashboard never creates one).
    pub fn registry(&self) -> Result<Option<Registry>, UiError> {
        let path = self.registry_path();
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Registry::open(&path)?))
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.cfg.home.join("audit")
    }

    pub fn kb_root(&self) -> PathBuf {
        self.cfg.home.join("kb")
    }

    /// The knowledge base in `dir`, opened once and reloaded when a writer changed it.
    pub fn knowledge_base(&self, dir: &Path) -> Result<Arc<KnowledgeBase>, UiError> {
        let mut kbs = self.kbs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(kb) = kbs.get(dir) {
            if kb.changed_on_disk()? {
                kb.reload()?;
            }
            return Ok(kb.clone());
        }
        let kb = Arc::new(KnowledgeBase::open(dir)?);
        kbs.insert(dir.to_path_buf(), kb.clone());
        Ok(kb)
    }
}

/// Run blocking work (SQLite, file reads, retrieval) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UiError> + Send + 'static,
) -> Result<T, UiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| UiError::Internal(format!("a worker failed: {e}")))?
}
