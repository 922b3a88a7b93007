//! `serve.toml`: the wire struct mirrors the file (every key documented in `examples/serve.toml`),
//! `validate` checks it once at start-up; command-line flags are applied on top by the binary.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Installed model name or path to a GGUF file / HF directory.
    pub model: String,
    /// The name clients put in `model`; default: the installed name, or the file / folder stem.
    pub served_model_name: Option<String>,
    pub weights: WeightsSetting,
    pub host: String,
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on the API (keys from `ferrotune keys create`).
    pub auth: bool,
    /// Default: `$FERROTUNE_HOME/serve/keys.db`.
    pub keys_db: Option<PathBuf>,
    /// Put prompt text in the request log (off: only sizes, for privacy).
    pub log_prompts: bool,
    pub max_body_bytes: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// `max_tokens` when a request leaves it out; unset = the rest of the model's context.
    /// (The engine reserves KV room for prompt + max_tokens, so a smaller default lets more
    /// requests run at once.)
    pub default_max_tokens: Option<usize>,
    /// Seconds to wait for in-flight requests on SIGINT/SIGTERM before exiting anyway.
    pub shutdown_timeout_secs: u64,
    /// LoRA adapters loaded at start-up: name → PEFT directory.
    pub adapters: BTreeMap<String, PathBuf>,
    /// Folders `POST /v1/load_lora_adapter` may load from (after resolving `..` and symlinks);
    /// empty = runtime loading refused.
    pub adapter_roots: Vec<PathBuf>,
    /// Browser origins (`https://app.example.com`) allowed to call the API; any other request
    /// carrying an `Origin` header is refused.
    pub cors_allow_origins: Vec<String>,
    /// With auth off, `Host` values accepted besides localhost / 127.0.0.1 / [::1].
    pub allowed_hosts: Vec<String>,
    /// `/metrics` needs a key, and `/ready` lists names only to a key; default: as `auth`.
    pub metrics_require_key: Option<bool>,
    pub limits: LimitsConfig,
    pub engine: EngineConfig,
    pub cache: CacheConfig,
    pub embeddings: EmbeddingsConfig,
    pub rag: RagConfig,
    pub registry: RegistryConfig,
    pub audit: AuditSettings,
    /// Prompt-injection, system-prompt-leak and output-PII guards (`[guards]`, issue #20):
    /// `off | log | block | redact` per guard, per model / adapter and per key
    /// ([`ferrotune_guard::settings`]; wired in by [`crate::guards`]).
    pub guards: ferrotune_guard::GuardsConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: ferrotune_model::store::DEFAULT_MODEL.to_string(),
            served_model_name: None,
            weights: WeightsSetting::F32,
            host: "127.0.0.1".into(),
            port: 8000,
            auth: true,
            keys_db: None,
            log_prompts: false,
            max_body_bytes: 2 * 1024 * 1024,
            max_n: 16,
            default_max_tokens: None,
            shutdown_timeout_secs: 60,
            adapters: BTreeMap::new(),
            adapter_roots: Vec::new(),
            cors_allow_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            metrics_require_key: None,
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            cache: CacheConfig::default(),
            embeddings: EmbeddingsConfig::default(),
            rag: RagConfig::default(),
            registry: RegistryConfig::default(),
            audit: AuditSettings::default(),
            guards: ferrotune_guard::GuardsConfig::default(),
        }
    }
}

/// What one key, and one request, may take of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sequences (prompts × n) in flight per key, for keys without their own `max_concurrent`.
    pub max_concurrent: u32,
    /// Sequences (prompts × n) one request may start.
    pub max_sequences_per_request: usize,
    /// Seconds from arrival to the last token (queue time included); then a stream ends with an
    /// error event and a plain request gets 504.
    pub request_timeout_s: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_concurrent: 64, max_sequences_per_request: 64, request_timeout_s: 600.0 }
    }
}

/// Grounding chat requests in a knowledge base (`ferrotune rag`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RagConfig {
    /// Folder of the knowledge bases (as `ferrotune rag --kb-dir`); default `$FERROTUNE_HOME/kb`.
    pub kb_dir: Option<PathBuf>,
    /// Model or adapter name → knowledge base used for every chat request to it (a request's
    /// own `"knowledge_base"` field wins).
    pub attach: BTreeMap<String, String>,
    /// Chunks retrieved per request.
    pub k: usize,
    /// Model tokens of retrieved text put into the prompt at most.
    pub context_tokens: usize,
    /// `hybrid`, `bm25` or `vector`.
    pub mode: String,
}

impl Default for RagConfig {
    fn default() -> Self {
        Self { kb_dir: None, attach: BTreeMap::new(), k: 5, context_tokens: 1024, mode: "hybrid".into() }
    }
}

/// Serving versions from the model registry (`ferrotune registry`, `crates/govern`): a request's
/// `model` that is neither the base nor an adapter loaded by name is a registry reference —
/// `support` (its `default_alias`), `support@canary` (an alias), `support@3` (a version). The
/// version is loaded as adapter `support@3` on first use, after its files are checked against
/// the hashes the registry recorded; alias moves and the kill switch (`ferrotune registry
/// disable`) apply within about `poll_ms`, without a restart.
///
/// ```toml
/// [registry]
/// enabled = true
/// # path = "/srv/ferrotune/registry.db"   # default $FERROTUNE_HOME/registry.db
/// default_alias = "champion"              # what a bare name (`support`) means
/// poll_ms = 250                           # how often the registry is checked for changes
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Resolve unknown model names in the registry; off = only the base and named adapters.
    pub enabled: bool,
    /// Default: `$FERROTUNE_HOME/registry.db` (as `ferrotune registry`).
    pub path: Option<PathBuf>,
    /// The alias a bare artifact name resolves through.
    pub default_alias: String,
    /// Milliseconds between checks of the registry's generation (50-5000): how long an alias
    /// move or a disable takes to reach this server at most (plus one engine step).
    pub poll_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { enabled: true, path: None, default_alias: "champion".into(), poll_ms: 250 }
    }
}

impl RegistryConfig {
    pub fn db_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(ferrotune_govern::default_path)
    }
}

/// The audit log (`ferrotune_govern::audit`, read with `ferrotune audit`): one entry per
/// inference request (key name, model as asked and as resolved, status, token counts, latency),
/// per adapter load / unload and registry refusal, and at start and stop; appended off the request
/// path in batches, signed checkpoints as `checkpoint_*` say and at shutdown. Prompts and answers
/// appear only with the top-level `log_prompts`: then as SHA-256 hashes, and as text too with
/// `prompt_text`.
///
/// ```toml
/// [audit]
/// enabled = true
/// # dir = "/srv/ferrotune/audit"       # default $FERROTUNE_HOME/audit (as `ferrotune audit`)
/// prompt_text = false
/// # origin = "ferrotune.example/audit" # default ferrotune/<hostname>/audit
/// checkpoint_every_entries = 1000
/// checkpoint_every_secs = 60
/// retention_days = 183                 # at least 183 (EU AI Act Art. 19 / 26(6))
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    pub enabled: bool,
    /// Default: [`ferrotune_govern::audit::default_dir`].
    pub dir: Option<PathBuf>,
    /// With `log_prompts` on, put the prompt and answer text in the entries beside their hashes.
    pub prompt_text: bool,
    // The log's own settings, passed through ([`ferrotune_govern::audit::AuditConfig`]; the
    // library checks them when the log opens, so its error is the one an operator sees).
    pub origin: Option<String>,
    pub checkpoint_every_entries: u64,
    pub checkpoint_every_secs: u64,
    pub retention_days: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        let lib = ferrotune_govern::audit::AuditConfig::default();
        Self {
            enabled: true,
            dir: None,
            prompt_text: false,
            origin: lib.origin,
            checkpoint_every_entries: lib.checkpoint_every_entries,
            checkpoint_every_secs: lib.checkpoint_every_secs,
            retention_days: lib.retention_days,
        }
    }
}

impl AuditSettings {
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(ferrotune_govern::audit::default_dir)
    }

    /// The library's config.
    pub fn log_config(&self) -> ferrotune_govern::audit::AuditConfig {
        ferrotune_govern::audit::AuditConfig {
            origin: self.origin.clone(),
            checkpoint_every_entries: self.checkpoint_every_entries,
            checkpoint_every_secs: self.checkpoint_every_secs,
            retention_days: self.retention_days,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsSetting {
    /// Everything in f32 (the reference path).
    F32,
    /// Keep a GGUF's quantized blocks (faster decode; HF directories load in f32 anyway).
    Quantized,
}

impl WeightsSetting {
    pub fn mode(self) -> ferrotune_model::WeightMode {
        match self {
            Self::F32 => ferrotune_model::WeightMode::F32,
            Self::Quantized => ferrotune_model::WeightMode::Quantized,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache responses to deterministic requests (temperature 0 or a seed; not streamed).
    pub enabled: bool,
    pub max_entries: u64,
    pub ttl_secs: u64,
    /// Keep the cache in Redis instead (shared by replicas); `max_entries` is then Redis's
    /// business (set its `maxmemory-policy allkeys-lru`), `ttl_secs` still applies.
    pub redis_url: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { enabled: true, max_entries: 4096, ttl_secs: 600, redis_url: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    /// Sentence embedder for `/v1/embeddings` (installed name or directory); "" turns it off.
    /// The default embedder is used when installed and skipped with a warning when not.
    pub model: String,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        Self { model: ferrotune_model::store::DEFAULT_EMBEDDER.to_string() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("invalid setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A `[guards]` setting (the error names it: `guards.keys.k.prompt_injection`).
    #[error("invalid setting {0}")]
    Guards(#[from] ferrotune_guard::GuardError),
}

impl ServeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), reason: e.to_string() })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if self.model.is_empty() {
            return bad("model", "must name a model");
        }
        if self.host.parse::<IpAddr>().is_err() && self.host != "localhost" {
            return bad("host", "must be an IP address (or localhost)");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.default_max_tokens == Some(0) {
            return bad(
                "default_max_tokens",
                "must be at least 1 (leave it out for the rest of the context)",
            );
        }
        if self.max_n == 0 {
            return bad("max_n", "must be at least 1");
        }
        let e = &self.engine;
        if e.max_batch == 0 || e.kv_token_budget == 0 || e.queue_capacity == 0 {
            return bad("engine", "max_batch, kv_token_budget and queue_capacity must be positive");
        }
        if self.cache.enabled && (self.cache.max_entries == 0 || self.cache.ttl_secs == 0) {
            return bad("cache", "max_entries and ttl_secs must be positive when the cache is on");
        }
        if let Some(u) = self.cache.redis_url.as_deref().filter(|u| !u.is_empty())
            && !(u.starts_with("redis://") || u.starts_with("redis+unix://") || u.starts_with("unix://"))
        {
            return bad("cache.redis_url", "must be a redis:// (or redis+unix://) URL");
        }
        if !matches!(self.rag.mode.as_str(), "hybrid" | "bm25" | "vector") {
            return bad("rag.mode", "must be hybrid, bm25 or vector");
        }
        if self.rag.k == 0 || self.rag.context_tokens == 0 {
            return bad("rag", "k and context_tokens must be positive");
        }
        if self.rag.k > ferrotune_rag::MAX_K {
            return bad("rag.k", &format!("must be at most {}", ferrotune_rag::MAX_K));
        }
        for kb in self.rag.attach.values() {
            if ferrotune_rag::kb_path(kb, None).is_err() {
                return bad("rag.attach", "knowledge base names are letters, digits, '-', '_' and '.'");
            }
        }
        let l = &self.limits;
        if l.max_concurrent == 0 || l.max_sequences_per_request == 0 {
            return bad("limits", "max_concurrent and max_sequences_per_request must be positive");
        }
        if !(l.request_timeout_s.is_finite() && l.request_timeout_s > 0.0) {
            return bad("limits.request_timeout_s", "must be a positive number of seconds");
        }
        for o in &self.cors_allow_origins {
            if !crate::browser::is_origin(o) {
                return Err(ConfigError::Invalid {
                    field: "cors_allow_origins",
                    reason: format!(
                        "`{o}` is not an origin (scheme://host[:port], no path or trailing slash)"
                    ),
                });
            }
        }
        for name in self.adapters.keys() {
            crate::routes::models::check_adapter_name(name)
                .map_err(|reason| ConfigError::Invalid { field: "adapters", reason })?;
        }
        let r = &self.registry;
        if !(50..=5000).contains(&r.poll_ms) {
            return bad("registry.poll_ms", "must be between 50 and 5000 milliseconds");
        }
        if r.default_alias.is_empty()
            || r.default_alias.contains('@')
            || r.default_alias.parse::<u32>().is_ok()
        {
            return bad(
                "registry.default_alias",
                "must name an alias (not empty, no '@', not a version number)",
            );
        }
        let a = &self.audit;
        if a.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return bad("audit.dir", "must name a folder (leave it out for $FERROTUNE_HOME/audit)");
        }
        // The origin is the first line of every signed checkpoint (C2SP signed note).
        if a.origin.as_deref().is_some_and(|o| o.trim().is_empty() || o.contains('\n')) {
            return bad("audit.origin", "must be one non-empty line");
        }
        if a.checkpoint_every_entries == 0 || a.checkpoint_every_secs == 0 {
            return bad("audit", "checkpoint_every_entries and checkpoint_every_secs must be positive");
        }
        self.guards.validate()?;
        Ok(())
    }

    /// True when `host` only accepts connections from this machine.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether `/metrics` (and the names in `/ready`) need a key.
    pub fn metrics_need_key(&self) -> bool {
        self.auth && self.metrics_require_key.unwrap_or(true)
    }

    pub fn keys_db_path(&self) -> PathBuf {
        self.keys_db.clone().unwrap_or_else(crate::keys::default_db_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/serve.toml");
        let cfg = ServeConfig::from_file(&path).expect("examples/serve.toml");
        cfg.validate().expect("valid");
        assert_eq!(cfg, ServeConfig::default(), "examples/serve.toml should document the defaults");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ServeConfig>("prot = 1").is_err());
        assert!(toml::from_str::<ServeConfig>("[cache]\nttl = 1").is_err());
    }

    /// Regression: `rag.k` above the knowledge base's limit passed start-up and then failed
    /// every grounded request.
    #[test]
    fn a_rag_k_above_the_knowledge_base_limit_is_refused_at_start_up() {
        let mut c = ServeConfig::default();
        c.rag.k = ferrotune_rag::MAX_K;
        c.validate().expect("the largest k is valid");
        c.rag.k = ferrotune_rag::MAX_K + 1;
        let err = c.validate().expect_err("k above the limit").to_string();
        assert!(err.contains("rag.k"), "{err}");
    }

    #[test]
    fn registry_settings_are_checked() {
        let mut c = ServeConfig::default();
        assert!(c.registry.enabled && c.registry.default_alias == "champion" && c.registry.poll_ms == 250);
        for ms in [49, 5001] {
            c.registry.poll_ms = ms;
            assert!(c.validate().expect_err("out of range").to_string().contains("registry.poll_ms"));
        }
        c.registry.poll_ms = 50;
        c.validate().expect("50 ms is allowed");
        for alias in ["", "a@b", "3"] {
            c.registry.default_alias = alias.into();
            assert!(
                c.validate().expect_err("bad alias").to_string().contains("registry.default_alias"),
                "{alias}"
            );
        }
        let c: ServeConfig = toml::from_str("[registry]\nenabled = false\npoll_ms = 100").expect("parse");
        assert!(!c.registry.enabled && c.registry.poll_ms == 100 && c.registry.default_alias == "champion");
    }

    #[test]
    fn audit_settings_default_to_the_library_and_are_checked() {
        let mut c = ServeConfig::default();
        assert!(c.audit.enabled && !c.audit.prompt_text && c.audit.dir.is_none());
        assert_eq!(c.audit.log_config(), ferrotune_govern::audit::AuditConfig::default());
        c.audit.origin = Some("a\nb".into());
        assert!(c.validate().expect_err("two lines").to_string().contains("audit.origin"));
        c.audit.origin = None;
        c.audit.checkpoint_every_entries = 0;
        assert!(c.validate().expect_err("zero").to_string().contains("audit"));
        let c: ServeConfig = toml::from_str("[audit]\nenabled = false\nretention_days = 400").expect("parse");
        assert!(!c.audit.enabled && c.audit.log_config().retention_days == 400);
        assert!(toml::from_str::<ServeConfig>("[audit]\nretention = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn guard_settings_parse_per_model_and_key_and_are_checked() {
        let c: ServeConfig = toml::from_str(
            "[guards]\noutput_pii = \"redact\"\nleak_min_words = 8\n[guards.models.support]\noutput_pii = \"block\"\n[guards.keys.analytics]\noutput_pii = \"off\"",
        )
        .expect("parse");
        c.validate().expect("valid");
        use ferrotune_guard::GuardMode;
        assert_eq!(c.guards.resolve(&["support@3", "support"], Some("someone")).output_pii, GuardMode::Block);
        assert_eq!(c.guards.resolve(&["support"], Some("analytics")).output_pii, GuardMode::Off);
        let c: ServeConfig = toml::from_str("[guards.keys.k]\nprompt_injection = \"redact\"").expect("parse");
        let e = c.validate().expect_err("an input cannot be redacted").to_string();
        assert!(e.contains("guards.keys.k.prompt_injection"), "{e}");
        assert!(
            toml::from_str::<ServeConfig>("[guards]\noutput_pi = \"off\"").is_err(),
            "unknown guards are refused"
        );
        assert!(
            toml::from_str::<ServeConfig>("[guards]\noutput_pii = \"mask\"").is_err(),
            "unknown modes are refused"
        );
    }

    #[test]
    fn loopback_detection() {
        let mut c = ServeConfig::default();
        assert!(c.is_loopback());
        c.host = "0.0.0.0".into();
        assert!(!c.is_loopback());
        c.host = "::1".into();
        assert!(c.is_loopback());
    }
}
