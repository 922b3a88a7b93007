//! Serving the model registry's versions (`ferrotune_govern`, `[registry]` in serve.toml).
//!
//! A request's `model` that is neither the base nor an adapter loaded by name is a registry
//! reference (`support`, `support@canary`, `support@3`), resolved against a [`Snapshot`] that
//! a watcher ([`watch`]) refreshes whenever the registry's generation changes — so an alias move,
//! a disable or an enable reaches the server within `poll_ms`, with no query per request.
//!
//! A version is loaded into the engine on first use under its reference (`support@3`), once
//! however many requests ask at the same time, and only if it is an adapter, was trained on the
//! base model this server runs (the registry's file hashes for that base equal ours) and every
//! file hashes to what the registry recorded ([`integrity`], checked on every request but only
//! re-hashed when a file changed). A disabled version is refused (403) and the watcher ends its
//! in-flight sequences (`finish_reason: "disabled"`) and unloads it.

pub mod integrity;
pub mod snapshot;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ferrotune_govern::{ArtifactKind, ArtifactRecord, Registry};

use crate::app::AppState;
use crate::config::RegistryConfig;
use crate::error::ApiError;
pub use integrity::{IntegrityError, Verified, Verifier};
pub use snapshot::{Snapshot, VersionRef};

/// The registry as one server uses it.
pub struct RegistryServing {
    pub default_alias: String,
    pub poll: std::time::Duration,
    db_path: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Opened on the first poll that finds the file (only used on the blocking pool), with the
    /// file's identity then.
    conn: Mutex<Option<(Registry, FileId)>>,
    /// The last poll's failure, so a registry that stays unreadable warns once, not every poll.
    last_error: Mutex<Option<String>>,
    /// Whether a poll ever read the registry (a file missing from the start is not a warning:
    /// the registry is on by default, also where nobody uses it).
    ever_read: std::sync::atomic::AtomicBool,
    /// One lock per artifact version: concurrent first requests load it once.
    loading: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    verifier: Verifier,
    /// SHA-256 of each file of the base model this server runs, sorted.
    base_sha256: Vec<String>,
}

impl std::fmt::Debug for RegistryServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryServing")
            .field("db_path", &self.db_path)
            .field("generation", &self.snapshot().generation)
            .finish()
    }
}

/// What tells one file from another at the same path (device and inode on Unix; elsewhere
/// only whether it exists).
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Some((0, 0))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RegistryServing {
    /// `base_sha256`: the SHA-256 of each of the served base model's files (as hashed at start
    /// for the response cache).
    pub fn new(cfg: &RegistryConfig, base_sha256: Vec<String>) -> Self {
        let mut base_sha256: Vec<String> = base_sha256.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        base_sha256.sort();
        Self {
            default_alias: cfg.default_alias.clone(),
            poll: std::time::Duration::from_millis(cfg.poll_ms),
            db_path: cfg.db_path(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            conn: Mutex::new(None),
            last_error: Mutex::new(None),
            ever_read: std::sync::atomic::AtomicBool::new(false),
            loading: Mutex::new(HashMap::new()),
            verifier: Verifier::default(),
            base_sha256,
        }
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The registry as last read.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_snapshot(&self, s: Arc<Snapshot>) {
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = s;
    }

    /// The version `model` names now (disabled or not).
    pub fn resolve(&self, model: &str) -> Option<Arc<ArtifactRecord>> {
        self.snapshot().resolve(model, &self.default_alias).cloned()
    }

    /// Blocking: open the registry if needed and, when its generation moved since the snapshot,
    /// read a new one. `Ok(None)`: nothing changed. On `Err` the connection is dropped, so the
    /// next poll opens it afresh (a replaced file, a lock that went away).
    pub fn poll_blocking(&self) -> Result<Option<Snapshot>, String> {
        let mut conn = lock(&self.conn);
        // Not created here (a server never given a registry leaves no file behind). A file
        // deleted or replaced since it was opened is opened afresh: the old connection would
        // go on reading the deleted file.
        let Some(id) = file_id(&self.db_path) else {
            *conn = None;
            return Err(format!("{} does not exist", self.db_path.display()));
        };
        if conn.as_ref().is_some_and(|(_, opened)| *opened != id) {
            tracing::info!(path = %self.db_path.display(), "the model registry file was replaced: reopening it");
            *conn = None;
        }
        // A generation only means something within one file: after (re)opening, read it all.
        let opened = conn.is_none();
        if opened {
            *conn = Some((Registry::open(&self.db_path).map_err(|e| e.to_string())?, id));
        }
        let Some((reg, _)) = conn.as_ref() else { return Ok(None) };
        let read = || {
            let generation = reg.generation()?;
            if !opened && self.snapshot().generation == Some(generation) {
                return Ok(None);
            }
            Snapshot::read(reg).map(Some)
        };
        read().map_err(|e: ferrotune_govern::GovernError| {
            *conn = None;
            e.to_string()
        })
    }

    /// Note a poll's outcome in the log: a failure once per distinct message (the previous
    /// snapshot stays in use), and the recovery.
    fn note_poll(&self, outcome: Result<(), &str>) {
        use std::sync::atomic::Ordering;
        let mut last = lock(&self.last_error);
        match outcome {
            Ok(()) => {
                let first = !self.ever_read.swap(true, Ordering::SeqCst);
                if last.take().is_some() && !first {
                    tracing::info!(path = %self.db_path.display(), "the model registry is readable again");
                }
            }
            Err(e) => {
                if last.as_deref() != Some(e) {
                    let missing = !self.db_path.exists();
                    if missing && !self.ever_read.load(Ordering::SeqCst) {
                        tracing::info!(path = %self.db_path.display(), "no model registry yet; its names are served once it exists");
                    } else {
                        tracing::warn!(path = %self.db_path.display(), "cannot read the model registry ({e}); serving from the last snapshot");
                    }
                    *last = Some(e.to_string());
                }
            }
        }
    }

    /// Why the last poll could not read the registry (`None`: it could); the server goes on
    /// with the last snapshot meanwhile.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn load_lock(&self, id: i64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.loading).entry(id).or_default().clone()
    }

    /// Whether `a` may be served here as an adapter: its kind and its base model.
    fn check_servable(&self, a: &ArtifactRecord, served: &str) -> Result<(), (ApiError, &'static str)> {
        let reference = a.reference();
        if a.kind != ArtifactKind::Adapter {
            let what = "a full model, not an adapter".to_string();
            return Err((ApiError::NotServable { reference, what }, "not_adapter"));
        }
        let snapshot = self.snapshot();
        let base = a.base_model.and_then(|id| snapshot.base_model(id));
        let Some(base) = base else {
            let wanted = match a.base_model {
                None => "(none recorded)".to_string(),
                Some(id) => format!("#{id} (not in the registry)"),
            };
            return Err((
                ApiError::BaseModelMismatch { reference, wanted, served: served.into() },
                "base_mismatch",
            ));
        };
        if base.sha256 != self.base_sha256 {
            let mismatch = ApiError::BaseModelMismatch {
                reference,
                wanted: format!("`{}`", base.name),
                served: format!("`{served}`"),
            };
            return Err((mismatch, "base_mismatch"));
        }
        Ok(())
    }
}

/// Count a refusal of version `v` (`reason`: the metric's label) and record it in the audit log
/// (`serve.refused`, with what the client is told) as asked by `actor`.
pub fn note_refusal(state: &AppState, actor: &str, v: &VersionRef, e: &ApiError, reason: &str) {
    state.metrics.count_registry_refusal(&v.name, v.version, reason);
    state.audit.record(crate::audit::events::refused(actor, &v.reference(), e));
}

/// Make the registry version `v` ready to take requests: checked (kind, base model, files) and
/// loaded into the engine as `support@3`. Every refusal is counted, logged and audited, and the
/// load recorded with the registry's file hashes; `actor` is the caller that asked.
pub async fn ensure_loaded(
    state: &AppState,
    reg: &Arc<RegistryServing>,
    v: &VersionRef,
    actor: &str,
) -> Result<(), ApiError> {
    let reference = v.reference();
    let refuse = |e: ApiError, reason: &str| {
        note_refusal(state, actor, v, &e, reason);
        e
    };
    let Some(a) = reg.snapshot().version(&v.name, v.version).cloned() else {
        return Err(ApiError::ModelNotFound(reference, Vec::new()));
    };
    if a.disabled {
        return Err(refuse(disabled_error(&a), "disabled"));
    }
    reg.check_servable(&a, state.model_name()).map_err(|(e, reason)| {
        tracing::warn!(artifact = %reference, "refused: {e}");
        refuse(e, reason)
    })?;
    let gate = reg.load_lock(a.id);
    let _held = gate.lock().await;
    let verified = verify(reg, &a).await;
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(
                artifact = %reference,
                file = %e.path.display(),
                expected = %e.expected,
                actual = %e.actual,
                "integrity check failed: refusing to serve this version"
            );
            // Whatever was loaded from these files before is not served either.
            if state.engine.adapters().contains(&reference) {
                let _ = state
                    .unload_adapter(&reference, actor, &format!("integrity check failed: {}", e.file))
                    .await;
            }
            let e = ApiError::IntegrityCheckFailed {
                reference: reference.clone(),
                file: e.file,
                expected: e.expected,
                actual: e.actual,
            };
            return Err(refuse(e, "integrity"));
        }
    };
    if state.engine.adapters().contains(&reference) {
        return Ok(());
    }
    let loaded =
        state.load_adapter_verified(&reference, Path::new(&a.path), verified.cache_digest.clone()).await;
    let files: Vec<(String, String)> = a
        .files
        .iter()
        .map(|f| {
            let p = Path::new(&f.path);
            (p.strip_prefix(&a.path).unwrap_or(p).display().to_string(), f.sha256.clone())
        })
        .collect();
    let error = loaded.as_ref().err().map(String::as_str);
    state.audit.record(crate::audit::events::adapter_load(
        actor,
        &reference,
        Path::new(&a.path),
        &files,
        Some(&reference),
        error,
    ));
    loaded.map_err(|m| {
        tracing::error!(artifact = %reference, dir = %a.path, "loading the registry version failed: {m}");
        ApiError::Unavailable(format!("`{reference}` could not be loaded (see the server log)"))
    })?;
    if let Some(path) = reg.verifier.changed(&verified) {
        let _ = state
            .unload_adapter(&reference, actor, &format!("a file changed while loading: {}", path.display()))
            .await;
        tracing::error!(artifact = %reference, file = %path.display(), "a file changed while the version was loading: unloaded");
        let file = path.strip_prefix(&a.path).unwrap_or(path).display().to_string();
        let e = ApiError::IntegrityCheckFailed {
            reference: reference.clone(),
            file,
            expected: "the bytes that were hashed".into(),
            actual: "changed while loading".into(),
        };
        return Err(refuse(e, "integrity"));
    }
    tracing::info!(artifact = %reference, dir = %a.path, "registry version loaded");
    // Disabled while it loaded (the watcher may have looked at the engine before the load
    // finished): do what the watcher would have done.
    if let Some(now) = reg.snapshot().version(&v.name, v.version).filter(|a| a.disabled) {
        if state.engine.disable_adapter(&reference) {
            let why = format!("disabled: {}", now.disabled_reason.as_deref().unwrap_or("no reason recorded"));
            state.audit.record(crate::audit::events::adapter_unload(
                actor,
                &reference,
                Some(&reference),
                &why,
            ));
        }
        state.weights.remove_adapter(&reference);
        return Err(refuse(disabled_error(now), "disabled"));
    }
    Ok(())
}

/// The integrity check on the blocking pool (it may hash).
async fn verify(reg: &Arc<RegistryServing>, a: &Arc<ArtifactRecord>) -> Result<Verified, IntegrityError> {
    let (reg, rec) = (reg.clone(), a.clone());
    tokio::task::spawn_blocking(move || reg.verifier.verify(&rec)).await.unwrap_or_else(|e| {
        Err(IntegrityError {
            file: "(all files)".into(),
            path: PathBuf::from(&a.path),
            expected: "a completed check".into(),
            actual: format!("the check did not finish: {e}"),
        })
    })
}

/// 403 naming the version and why it was disabled.
pub fn disabled_error(a: &ArtifactRecord) -> ApiError {
    ApiError::ModelDisabled {
        reference: a.reference(),
        reason: a
            .disabled_reason
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no reason recorded".into()),
    }
}
