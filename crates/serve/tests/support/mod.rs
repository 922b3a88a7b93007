//! A real server on 127.0.0.1:0 over the tiny random model, with keys of every kind.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use ferrotune_model::{WeightMode, load_path};
use ferrotune_serve::ServeConfig;
use ferrotune_serve::engine::{self, EngineConfig};
use ferrotune_serve::keys::{ApiKey, KeyStore};
use ferrotune_serve::{AppState, serve};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const MODEL: &str = "tiny";

pub struct Keys {
    pub admin: String,
    pub user: String,
    /// Scoped to another model only.
    pub other: String,
    /// 2 requests per minute.
    pub limited: String,
    /// As `user`, and allowed `logprobs` / `echo` (which `user` is not).
    pub scorer: String,
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub keys: Keys,
    pub dir: tempfile::TempDir,
    pub model_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<std::io::Result<()>>>,
}

pub struct Opts {
    pub auth: bool,
    pub engine: EngineConfig,
    pub cache: bool,
    pub redis_url: Option<String>,
    pub rag: Option<ferrotune_serve::config::RagConfig>,
    /// Last word on the config (limits, CORS, ...). `adapter_roots` is the server's temp folder.
    pub configure: fn(&mut ServeConfig),
    /// Share another server's in-process cache (as replicas share a Redis).
    pub shared_cache: Option<ferrotune_serve::cache::ResponseCache>,
    /// Serve this model folder (another server's `model_dir`, as replicas serve the same files)
    /// instead of writing a fresh tiny model.
    pub model_dir: Option<PathBuf>,
    /// Changes the loaded tiny model before the engine gets it (e.g. makes EOS dominant).
    pub tweak: Option<fn(&mut ferrotune_model::LoadedModel)>,
    /// Serve the model registry at `<dir>/registry.db`, polled every 50 ms (`configure` may
    /// still turn `registry.enabled` off); without it the registry is off.
    pub registry: bool,
    /// Keep the audit log in `<dir>/audit` (opened and started as `build_state` does; `configure`
    /// may change `[audit]` first); without it the audit log is off.
    pub audit: bool,
    /// The guards' canary secret (random per server otherwise): a fixed one gives every run the
    /// same canaries, so the model's answers to prompts holding them are the same too.
    pub guard_secret: Option<[u8; 32]>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            auth: true,
            engine: EngineConfig::default(),
            cache: true,
            redis_url: None,
            rag: None,
            configure: |_| {},
            shared_cache: None,
            model_dir: None,
            tweak: None,
            registry: false,
            audit: false,
            guard_secret: None,
        }
    }
}

pub async fn start(opts: Opts) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = match opts.model_dir {
        Some(d) => d,
        None => {
            let d = dir.path().join("model");
            ferrotune_model::testing::write_tiny_model(&d).expect("tiny model");
            d
        }
    };
    let mut model = load_path(&model_dir, WeightMode::F32, &Device::Cpu).expect("load");
    let per_file = ferrotune_serve::cache::file_digests(&model.files).expect("hash the model files");
    let digest = ferrotune_serve::cache::combine_digests(&per_file);
    if let Some(tweak) = opts.tweak {
        tweak(&mut model);
    }
    let handle = engine::start(model, MODEL.to_string(), opts.engine.clone());
    let mut cfg = ServeConfig {
        auth: opts.auth,
        keys_db: Some(dir.path().join("keys.db")),
        engine: opts.engine,
        ..Default::default()
    };
    cfg.embeddings.model = String::new();
    cfg.cache.enabled = opts.cache;
    cfg.cache.redis_url = opts.redis_url;
    cfg.max_body_bytes = 64 * 1024;
    if let Some(r) = opts.rag {
        cfg.rag = r;
    }
    cfg.adapter_roots = vec![dir.path().to_path_buf()];
    cfg.registry.enabled = opts.registry;
    cfg.registry.path = Some(dir.path().join("registry.db"));
    cfg.registry.poll_ms = 50;
    cfg.audit.enabled = opts.audit;
    cfg.audit.dir = Some(dir.path().join("audit"));
    (opts.configure)(&mut cfg);
    let store = KeyStore::open(&dir.path().join("keys.db")).expect("keys");
    let mk = |name: &str, models: &[&str], admin: bool, rpm: Option<u32>| {
        store
            .create(&ApiKey {
                name: name.into(),
                models: models.iter().map(|s| s.to_string()).collect(),
                admin,
                rpm,
                ..Default::default()
            })
            .expect("create key")
    };
    let keys = Keys {
        admin: mk("admin", &[], true, None),
        user: mk("user", &[MODEL], false, None),
        other: mk("other", &["something-else"], false, None),
        limited: mk("limited", &[], false, Some(2)),
        scorer: store
            .create(&ApiKey {
                name: "scorer".into(),
                models: vec![MODEL.into()],
                logprobs: true,
                ..Default::default()
            })
            .expect("create key"),
    };
    let cache = match opts.shared_cache {
        Some(c) => c,
        None => ferrotune_serve::cache::ResponseCache::connect(&cfg.cache).await.expect("cache"),
    };
    let audit_log = ferrotune_serve::startup::open_audit_log(&cfg).await.expect("open the audit log");
    let mut state = AppState::new(handle, cfg, opts.auth.then_some(store), None);
    if let Some(log) = audit_log {
        ferrotune_serve::startup::start_audit(&mut state, log, &per_file).expect("start the audit log");
    }
    if let Some(secret) = opts.guard_secret {
        let guards =
            ferrotune_serve::guards::Guards::load(&state.cfg.guards).expect("guards").with_secret(secret);
        state.set_guards(guards);
    }
    state.set_cache(cache);
    // As `build_state` does: the cache key names the weights.
    state.set_base_identity(ferrotune_serve::cache::base_identity(&digest, "F32"));
    if state.cfg.registry.enabled {
        state.start_registry(per_file.into_iter().map(|(_, sha)| sha).collect()).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let st = state.clone();
    let handle = tokio::spawn(async move {
        serve(
            listener,
            st,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(30),
        )
        .await
    });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        state,
        keys,
        dir,
        model_dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl Server {
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut r = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().await.expect("send")
    }

    pub async fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let resp = self.post(path, key, body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut r = self.client.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.expect("send");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// `/metrics` (with the admin key: it needs one when auth is on).
    pub async fn metrics(&self) -> String {
        self.get("/metrics", Some(&self.keys.admin)).await.1
    }

    /// The key store of a server with auth on (create / update / revoke keys while it runs).
    pub fn store(&self) -> &KeyStore {
        self.state.keys.as_deref().expect("auth is on")
    }

    /// A PEFT adapter for the served model in `rel` (its A matrices drawn from `seed`).
    pub fn write_adapter(&self, rel: &str, seed: u64) -> PathBuf {
        let dir = self.path(rel);
        let mut m = load_path(&self.model_dir, WeightMode::F32, &Device::Cpu).expect("model");
        let a = ferrotune_model::Adapter::init(&mut m.model, &ferrotune_model::LoraSpec::default(), seed)
            .expect("adapter");
        a.save(&dir, MODEL).expect("save");
        dir
    }

    /// Fire the shutdown signal and wait until the server has returned (drained, audit log
    /// closed).
    pub async fn shutdown(&mut self) {
        self.signal_shutdown();
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server");
        }
    }

    /// Fire the shutdown signal (the server task keeps running until it has drained).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// The value of a metric line `name{labels} value` (first match), or 0.
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Parse an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string()).collect()
}
