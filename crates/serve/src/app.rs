//! The shared state, the router (`app`, separate from the listener so tests drive it directly),
//! and `serve`: run until a shutdown signal, then stop accepting, let in-flight requests finish
//! (the engine refuses new ones), wait for the engine to drain, write the audit log's last
//! entries and checkpoint, and return.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::audit::{Audit, events};
use crate::cache::{ResponseCache, WeightsIdentity};
use crate::config::ServeConfig;
use crate::engine::{AdapterCommand, EngineHandle};
use crate::error::ApiError;
use crate::keys::KeyStore;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::registry::RegistryServing;
use crate::routes::embeddings::EmbeddingModel;
use crate::routes::{chat, completions, embeddings, health, models, tokenize};

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub cfg: Arc<ServeConfig>,
    /// `None` when auth is off.
    pub keys: Option<Arc<KeyStore>>,
    pub limiter: Arc<RateLimiter>,
    pub cache: ResponseCache,
    pub metrics: Arc<Metrics>,
    pub embedder: Option<Arc<EmbeddingModel>>,
    /// Knowledge bases for grounded chat (`[rag]`), opened on first use.
    pub knowledge: Arc<crate::grounding::Knowledge>,
    pub started_unix: u64,
    /// Digests of the served weights, for cache keys.
    pub weights: Arc<WeightsIdentity>,
    /// The model registry's versions (`[registry]`); `None` when off.
    pub registry: Option<Arc<RegistryServing>>,
    /// The audit log's appender ([`crate::audit`]); off unless [`AppState::set_audit`] (as
    /// `build_state` does with `[audit] enabled`).
    pub audit: Audit,
    /// `[guards]`: the injection classifier and the canary secret ([`crate::guards`]).
    pub guards: Arc<crate::guards::Guards>,
    shutting_down: Arc<AtomicBool>,
}

impl AppState {
    /// `keys` must be `Some` exactly when `cfg.auth` is on. The guards use the bundled injection
    /// classifier, whatever `[guards] injection_model` says (`build_state` loads that file and
    /// calls [`AppState::with_guards`]).
    pub fn new(
        engine: EngineHandle,
        cfg: ServeConfig,
        keys: Option<KeyStore>,
        embedder: Option<EmbeddingModel>,
    ) -> Self {
        let guards = crate::guards::Guards::bundled(&cfg.guards);
        Self::with_guards(engine, cfg, keys, embedder, guards)
    }

    pub fn with_guards(
        engine: EngineHandle,
        cfg: ServeConfig,
        keys: Option<KeyStore>,
        embedder: Option<EmbeddingModel>,
        guards: crate::guards::Guards,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(&engine.info().name));
        Self {
            knowledge: Arc::new(crate::grounding::Knowledge::new(cfg.rag.clone())),
            guards: Arc::new(guards),
            cache: ResponseCache::new(&cfg.cache),
            cfg: Arc::new(cfg),
            keys: keys.map(Arc::new),
            limiter: Arc::new(RateLimiter::new()),
            metrics,
            embedder: embedder.map(Arc::new),
            started_unix: crate::generation::now_unix(),
            weights: Arc::new(WeightsIdentity::unique()),
            registry: None,
            audit: Audit::off(),
            shutting_down: Arc::new(AtomicBool::new(false)),
            engine,
        }
    }

    /// Replace the guards (another classifier, a fixed canary secret in tests).
    pub fn set_guards(&mut self, guards: crate::guards::Guards) {
        self.guards = Arc::new(guards);
    }

    /// Replace the response cache (the Redis one needs an async connect first).
    pub fn set_cache(&mut self, cache: ResponseCache) {
        self.cache = cache;
    }

    /// The name clients use for the base model.
    pub fn model_name(&self) -> &str {
        &self.engine.info().name
    }

    /// Set the base model's identity ([`crate::cache::base_identity`]) before serving; until
    /// then it is one no other process shares.
    pub fn set_base_identity(&mut self, identity: String) {
        self.weights = Arc::new(WeightsIdentity::new(identity));
    }

    /// Record in the audit log from here on (call before serving).
    pub fn set_audit(&mut self, audit: Audit) {
        self.audit = audit;
    }

    /// Load an adapter into the engine, its files' digest (streamed, on the blocking pool) kept
    /// for cache keys; recorded in the audit log as done by `actor`, with each file's SHA-256.
    pub async fn load_adapter(&self, name: &str, dir: &std::path::Path, actor: &str) -> Result<(), String> {
        let files = crate::cache::adapter_files(dir);
        let hashed = tokio::task::spawn_blocking(move || crate::cache::file_digests(&files))
            .await
            .map_err(|e| format!("hashing the adapter: {e}"))
            .and_then(|r| r.map_err(|e| format!("reading the adapter: {e}")));
        let (per_file, r) = match hashed {
            Ok(per_file) => {
                let digest = crate::cache::combine_digests(&per_file);
                let r = self.load_adapter_verified(name, dir, digest).await;
                (per_file, r)
            }
            Err(e) => (Vec::new(), Err(e)),
        };
        self.audit.record(events::adapter_load(
            actor,
            name,
            dir,
            &per_file,
            None,
            r.as_ref().err().map(String::as_str),
        ));
        r
    }

    /// As [`AppState::load_adapter`], with the files' digest already computed (a registry
    /// version's, from its integrity check).
    pub async fn load_adapter_verified(
        &self,
        name: &str,
        dir: &std::path::Path,
        digest: String,
    ) -> Result<(), String> {
        self.engine.adapter(AdapterCommand::Load { name: name.to_string(), dir: dir.to_path_buf() }).await?;
        self.weights.set_adapter(name, digest);
        Ok(())
    }

    /// Serve the model registry's versions (`cfg.registry`, which must be on): read it now and
    /// watch it from here on. `base_sha256`: the SHA-256 of each of the base model's files.
    pub async fn start_registry(&mut self, base_sha256: Vec<String>) {
        let reg = Arc::new(RegistryServing::new(&self.cfg.registry, base_sha256));
        self.registry = Some(reg.clone());
        crate::registry::watch::start(self, reg).await;
    }

    /// Unload an adapter; recorded in the audit log as done by `actor` for `reason`.
    pub async fn unload_adapter(&self, name: &str, actor: &str, reason: &str) -> Result<(), String> {
        let r = self.engine.adapter(AdapterCommand::Unload { name: name.to_string() }).await;
        self.weights.remove_adapter(name);
        if r.is_ok() {
            let artifact = name.contains('@').then_some(name);
            self.audit.record(events::adapter_unload(actor, name, artifact, reason));
        }
        r
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// `/ready` turns 503 and the engine refuses new requests; running ones finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.engine.begin_shutdown();
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::Internal.into_response()
}

/// One route the server answers: `app` builds the router from [`routes`] alone, and the OpenAPI
/// document must list exactly these (tests/openapi.rs compares the two).
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Behind the key check ([`crate::auth::authenticate`]).
    pub keyed: bool,
    handler: MethodRouter<AppState>,
}

/// Every route, in one list.
pub fn routes() -> Vec<Route> {
    let r = |method: Method, path, keyed, handler| Route { method, path, keyed, handler };
    vec![
        r(Method::POST, "/v1/chat/completions", true, post(chat::chat_completions)),
        r(Method::POST, "/v1/completions", true, post(completions::completions)),
        r(Method::POST, "/v1/embeddings", true, post(embeddings::embeddings)),
        r(Method::GET, "/v1/models", true, get(models::list)),
        r(Method::POST, "/v1/load_lora_adapter", true, post(models::load_adapter)),
        r(Method::POST, "/v1/unload_lora_adapter", true, post(models::unload_adapter)),
        r(Method::POST, "/tokenize", true, post(tokenize::tokenize)),
        r(Method::POST, "/detokenize", true, post(tokenize::detokenize)),
        r(Method::GET, "/health", false, get(health::health)),
        r(Method::GET, "/ready", false, get(health::ready)),
        r(Method::GET, "/metrics", false, get(health::metrics)),
        r(Method::GET, "/openapi.json", false, get(crate::openapi::openapi_json)),
    ]
}

/// Whether `path` has a POST route (whose body must then be JSON, [`crate::browser::check`]).
pub fn takes_post(path: &str) -> bool {
    static POST_PATHS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        routes().into_iter().filter(|r| r.method == Method::POST).map(|r| r.path).collect()
    });
    POST_PATHS.contains(&path)
}

pub fn app(state: AppState) -> Router {
    let (mut api, mut open) = (Router::new(), Router::new());
    for route in routes() {
        if route.keyed {
            api = api.route(route.path, route.handler);
        } else {
            open = open.route(route.path, route.handler);
        }
    }
    let api = api.route_layer(from_fn_with_state(state.clone(), crate::auth::authenticate));
    open.merge(api)
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        // Host / Origin / Content-Type before anything else runs (`guard`); CORS headers inside.
        .layer(crate::browser::cors(&state))
        .layer(from_fn_with_state(state.clone(), crate::browser::check))
        .layer(from_fn_with_state(state.clone(), crate::record::request_log))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then shut down gracefully: in-flight requests (streams
/// included) finish, new connections are refused, and the engine drains. After `timeout` the
/// remaining connections are abandoned.
///
/// If the engine thread dies first (a bug: every step runs under a panic guard), the server
/// drains the same way and returns an error, so the process exits non-zero and an orchestrator
/// restarts it; meanwhile `/ready` answers 503.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let engine_died = Arc::new(AtomicBool::new(false));
    let (st, died) = (state.clone(), engine_died.clone());
    let signal = async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutting down: finishing in-flight requests"),
            () = st.engine.stopped() => {
                died.store(true, Ordering::SeqCst);
                tracing::error!("the engine thread stopped unexpectedly; draining, then exiting with an error");
            }
        }
        st.begin_shutdown();
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(signal).into_future();
    let deadline = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!("shutdown timeout: abandoning open connections"),
    }
    if tokio::time::timeout(timeout, state.engine.drained()).await.is_err() {
        tracing::warn!("shutdown timeout: the engine did not drain");
    }
    // Last: every request's entry is queued by now (records drop when their responses end).
    let died = engine_died.load(Ordering::SeqCst);
    let uptime = crate::generation::now_unix().saturating_sub(state.started_unix);
    state.audit.close(events::stop(state.model_name(), uptime, died)).await;
    if died {
        return Err(std::io::Error::other(
            "the engine thread stopped unexpectedly (see the log); exiting so the server is restarted",
        ));
    }
    Ok(())
}
