//! From a validated config to a running [`AppState`]: open the audit log (first, so a setting
//! the log refuses stops the start before the model loads), load the model (and hash its files
//! for the response cache's key, the registry's base-model check and `serve.start`), start the
//! engine, open the key database, load the embedder, start watching the model registry, load the
//! start-up adapters.
//! Also the exposure rule: a server without auth only binds to loopback unless the operator
//! insists.

use candle_core::Device;

use crate::app::AppState;
use crate::config::{ConfigError, ServeConfig};
use crate::engine;
use crate::keys::{KeyError, KeyStore};
use crate::routes::embeddings::EmbeddingModel;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("loading model {spec}: {source}")]
    Model { spec: String, source: ferrotune_model::ModelError },
    #[error("hashing the files of model {spec} (for the response cache's key): {source}")]
    Hashing { spec: String, source: std::io::Error },
    #[error("loading adapter `{name}` from {dir}: {reason}")]
    Adapter { name: String, dir: String, reason: String },
    #[error("[engine] {0}")]
    Engine(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("response cache: {0}")]
    Cache(String),
    #[error("loading the embedder {spec}: {reason}")]
    Embedder { spec: String, reason: String },
    /// The log's error is in the message, not chained (it printed twice).
    #[error("audit log {dir}: {error}")]
    Audit { dir: String, error: ferrotune_govern::GovernError },
    #[error("[guards] {0}")]
    Guards(#[from] ferrotune_guard::GuardError),
    #[error("starting the audit log's appender thread: {0}")]
    AuditThread(std::io::Error),
    #[error(
        "refusing to serve {host} without authentication: auth is off and the address is reachable from \
         other machines; turn auth on, bind to 127.0.0.1, or pass --insecure-no-auth"
    )]
    Exposed { host: String },
}

/// Auth off is for local development: only on loopback, unless `insecure_no_auth`.
pub fn check_exposure(cfg: &ServeConfig, insecure_no_auth: bool) -> Result<(), StartError> {
    if !cfg.auth && !cfg.is_loopback() && !insecure_no_auth {
        return Err(StartError::Exposed { host: cfg.host.clone() });
    }
    Ok(())
}

/// The name clients use for the base: `served_model_name`, else the installed name, else the
/// file or folder stem.
pub fn served_name(cfg: &ServeConfig) -> String {
    if let Some(n) = cfg.served_model_name.as_ref().filter(|n| !n.is_empty()) {
        return n.clone();
    }
    if ferrotune_model::store::known(&cfg.model).is_some() {
        return cfg.model.clone();
    }
    let p = std::path::Path::new(&cfg.model);
    p.file_stem().and_then(|s| s.to_str()).map_or_else(|| cfg.model.clone(), str::to_string)
}

/// Open the audit log `[audit]` names (`None` when it is off), on the blocking pool: opening
/// checks the settings (retention) and repairs a torn tail.
pub async fn open_audit_log(
    cfg: &ServeConfig,
) -> Result<Option<ferrotune_govern::audit::AuditLog>, StartError> {
    if !cfg.audit.enabled {
        return Ok(None);
    }
    if cfg.audit.prompt_text && !cfg.log_prompts {
        tracing::warn!(
            "[audit] prompt_text is on but log_prompts is off: no prompt or answer is recorded (log_prompts decides)"
        );
    }
    let (dir, log_cfg) = (cfg.audit.dir(), cfg.audit.log_config());
    let d = dir.clone();
    let opened = tokio::task::spawn_blocking(move || ferrotune_govern::audit::AuditLog::open(&d, &log_cfg))
        .await
        .map_err(|e| StartError::Audit {
            dir: dir.display().to_string(),
            error: ferrotune_govern::GovernError::Refused(e.to_string()),
        })?;
    opened.map(Some).map_err(|error| StartError::Audit { dir: dir.display().to_string(), error })
}

/// Start the appender on an opened log and record `serve.start`: the model, its files'
/// SHA-256 (`per_file`: name, digest) and the settings that decide who may ask what.
pub fn start_audit(
    state: &mut AppState,
    log: ferrotune_govern::audit::AuditLog,
    per_file: &[(String, String)],
) -> Result<(), StartError> {
    let content = crate::audit::Content::of(state.cfg.log_prompts, state.cfg.audit.prompt_text);
    tracing::info!(dir = %log.dir().display(), "audit log on");
    let audit =
        crate::audit::Audit::start(log, content, state.metrics.clone()).map_err(StartError::AuditThread)?;
    audit.record(crate::audit::events::start(&state.cfg.model, state.model_name(), per_file, &state.cfg));
    state.set_audit(audit);
    Ok(())
}

pub async fn build_state(cfg: ServeConfig) -> Result<AppState, StartError> {
    cfg.validate()?;
    // Before the model: a classifier file that does not load stops the start at once.
    let guards = crate::guards::Guards::load(&cfg.guards)?;
    let audit_log = open_audit_log(&cfg).await?;
    let spec = cfg.model.clone();
    let mode = cfg.weights.mode();
    // The files are hashed once, here, for the cache key (see `cache`) and for matching registry
    // adapters to their base model: streamed, ~1 s per GB.
    let (model, identity, file_sha256) = tokio::task::spawn_blocking(move || {
        let model = ferrotune_model::load(&spec, mode, &Device::Cpu)
            .map_err(|source| StartError::Model { spec: spec.clone(), source })?;
        let per_file = crate::cache::file_digests(&model.files)
            .map_err(|source| StartError::Hashing { spec, source })?;
        let identity =
            crate::cache::base_identity(&crate::cache::combine_digests(&per_file), &format!("{mode:?}"));
        Ok::<_, StartError>((model, identity, per_file))
    })
    .await
    .map_err(|e| StartError::Model {
        spec: cfg.model.clone(),
        source: ferrotune_model::ModelError::Template(e.to_string()),
    })??;
    cfg.engine.limits(model.config().max_position_embeddings).map_err(StartError::Engine)?;
    let name = served_name(&cfg);
    let engine = engine::start(model, name.clone(), cfg.engine.clone());
    let keys = if cfg.auth {
        let store = KeyStore::open(&cfg.keys_db_path())?;
        if store.live_count()? == 0 {
            tracing::warn!(
                "auth is on and {} holds no keys: every API request will get 401; create one with `ferrotune keys create --name NAME`",
                cfg.keys_db_path().display()
            );
        }
        Some(store)
    } else {
        None
    };
    let embedder = load_embedder(&cfg).await?;
    let cache = crate::cache::ResponseCache::connect(&cfg.cache).await.map_err(StartError::Cache)?;
    let adapters = cfg.adapters.clone();
    let registry = cfg.registry.enabled;
    let mut state = AppState::with_guards(engine, cfg, keys, embedder, guards);
    state.set_cache(cache);
    state.set_base_identity(identity);
    if let Some(log) = audit_log {
        start_audit(&mut state, log, &file_sha256)?;
    }
    if registry {
        // After everything the watcher's copy of the state must see (the weights identity, the
        // audit log).
        state.start_registry(file_sha256.into_iter().map(|(_, sha)| sha).collect()).await;
    }
    for (adapter, dir) in &adapters {
        state.load_adapter(adapter, dir, &crate::audit::events::server_actor()).await.map_err(|reason| {
            StartError::Adapter { name: adapter.clone(), dir: dir.display().to_string(), reason }
        })?;
    }
    Ok(state)
}

async fn load_embedder(cfg: &ServeConfig) -> Result<Option<EmbeddingModel>, StartError> {
    let spec = cfg.embeddings.model.clone();
    if spec.is_empty() {
        return Ok(None);
    }
    let s = spec.clone();
    let loaded = tokio::task::spawn_blocking(move || ferrotune_rag::Embedder::load_named(&s))
        .await
        .map_err(|e| StartError::Embedder { spec: spec.clone(), reason: e.to_string() })?;
    match loaded {
        Ok(e) => {
            let name =
                std::path::Path::new(&spec).file_name().and_then(|n| n.to_str()).unwrap_or(&spec).to_string();
            Ok(Some(EmbeddingModel::new(name, e)))
        }
        Err(e) if spec == ferrotune_model::store::DEFAULT_EMBEDDER => {
            tracing::warn!(
                "/v1/embeddings is off: the default embedder is not available ({e}); `ferrotune models pull {spec}` installs it"
            );
            Ok(None)
        }
        Err(e) => Err(StartError::Embedder { spec, reason: e.to_string() }),
    }
}
