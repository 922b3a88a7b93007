//! Exact-response cache for deterministic requests (temperature 0, or a seed; never streamed):
//! an in-process LRU with a time to live (moka) by default, or Redis when `cache.redis_url` is
//! set, so replicas behind one load balancer share answers. The key is a SHA-256 over the
//! endpoint, the model and adapter, the prompt token ids (after chat-template rendering) and
//! every parameter that changes the output, so two requests share an entry only when the engine
//! would give them the same answer. Responses are stored as their typed body
//! ([`crate::response`]), with only the guards' actions on the answers; each hit gets a fresh
//! `id` / `created` and the request's own guard list. A Redis that fails or is slow, or an entry
//! that does not read back as the endpoint's body, only costs cache misses.
//!
//! "The model and adapter" means their weights, not their names: the key carries the SHA-256 of
//! the base model's files (with the weight path and this build's version, which change the
//! numbers) and of the adapter's files ([`WeightsIdentity`]), hashed once when each is loaded.
//! A name alone would let a replica, or a restart with a retrained adapter under the same name,
//! answer from another model's entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::sync::Cache;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::CacheConfig;

/// Redis keys are namespaced so the cache can share a Redis with other uses.
const REDIS_PREFIX: &str = "ferrotune:response:";

#[derive(Clone)]
enum Backend {
    Off,
    Local(Cache<String, Arc<serde_json::Value>>),
    Redis { conn: redis::aio::ConnectionManager, ttl_secs: u64 },
}

#[derive(Clone)]
pub struct ResponseCache {
    backend: Backend,
}

impl ResponseCache {
    /// The in-process cache (or none); Redis needs [`ResponseCache::connect`].
    pub fn new(cfg: &CacheConfig) -> Self {
        let backend = if cfg.enabled {
            Backend::Local(
                Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .time_to_live(Duration::from_secs(cfg.ttl_secs))
                    .build(),
            )
        } else {
            Backend::Off
        };
        Self { backend }
    }

    /// As `new`, but on Redis when `redis_url` is set (connection checked now).
    pub async fn connect(cfg: &CacheConfig) -> Result<Self, String> {
        let url = match cfg.redis_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) if cfg.enabled => u,
            _ => return Ok(Self::new(cfg)),
        };
        let client = redis::Client::open(url).map_err(|e| format!("cache.redis_url: {e}"))?;
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(mcfg)
            .await
            .map_err(|e| format!("connecting to Redis at {url}: {e}"))?;
        Ok(Self { backend: Backend::Redis { conn, ttl_secs: cfg.ttl_secs } })
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    pub async fn get(&self, key: &str) -> Option<Arc<serde_json::Value>> {
        match &self.backend {
            Backend::Off => None,
            Backend::Local(c) => c.get(key),
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let got: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(format!("{REDIS_PREFIX}{key}")).query_async(&mut conn).await;
                match got {
                    Ok(v) => v.and_then(|s| serde_json::from_str(&s).ok()).map(Arc::new),
                    Err(e) => {
                        tracing::warn!("response cache: Redis GET failed: {e}");
                        None
                    }
                }
            }
        }
    }

    /// Store an answer; a Redis write happens in the background (the response does not wait).
    pub fn put(&self, key: String, value: serde_json::Value) {
        match &self.backend {
            Backend::Off => {}
            Backend::Local(c) => c.insert(key, Arc::new(value)),
            Backend::Redis { conn, ttl_secs } => {
                let mut conn = conn.clone();
                let ttl = *ttl_secs;
                tokio::spawn(async move {
                    let r: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(format!("{REDIS_PREFIX}{key}"))
                        .arg(value.to_string())
                        .arg("EX")
                        .arg(ttl)
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = r {
                        tracing::warn!("response cache: Redis SET failed: {e}");
                    }
                });
            }
        }
    }
}

/// SHA-256 over files, streamed (a model's weights are not read into memory again): each file
/// contributes its name and its own SHA-256, in name order, so the digest does not depend on
/// where the files live (replicas with the model in different folders share entries).
pub fn digest_files(files: &[PathBuf]) -> std::io::Result<String> {
    Ok(combine_digests(&file_digests(files)?))
}

/// Each file's name and SHA-256 (streamed), in the order given.
pub fn file_digests(files: &[PathBuf]) -> std::io::Result<Vec<(String, String)>> {
    files
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let digest = ferrotune_model::store::sha256_file(path)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok((name, digest))
        })
        .collect()
}

/// [`digest_files`] from digests already computed: (file name, SHA-256) pairs in any order.
pub fn combine_digests(per_file: &[(String, String)]) -> String {
    let mut per_file = per_file.to_vec();
    per_file.sort();
    let mut h = Sha256::new();
    for (name, digest) in &per_file {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(digest.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The files of a PEFT adapter directory that shape its output.
pub fn adapter_files(dir: &Path) -> Vec<PathBuf> {
    vec![dir.join("adapter_config.json"), dir.join("adapter_model.safetensors")]
}

/// The base model's identity: the digest of its files plus what else changes its numbers (the
/// weight path — a GGUF's quantized blocks answer differently from the same file in f32 — and
/// this build's version).
pub fn base_identity(files_digest: &str, weights: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "{files_digest}\0{weights}\0ferrotune-serve {}",
        env!("CARGO_PKG_VERSION")
    )))
}

/// What the served weights are, for cache keys: the base's identity, and each loaded adapter's
/// file digest by name (added after the adapter loads, removed when it unloads; a name without
/// a digest is not cached).
#[derive(Debug)]
pub struct WeightsIdentity {
    base: String,
    adapters: RwLock<HashMap<String, String>>,
}

impl WeightsIdentity {
    pub fn new(base: String) -> Self {
        Self { base, adapters: RwLock::new(HashMap::new()) }
    }

    /// For a state built without its files' digest (tests driving `AppState::new` directly): an
    /// identity no other process has, so this server never shares entries it cannot vouch for.
    pub fn unique() -> Self {
        Self::new(format!("unhashed-{:032x}", rand::random::<u128>()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn adapter(&self, name: &str) -> Option<String> {
        self.adapters.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    pub fn set_adapter(&self, name: &str, digest: String) {
        self.adapters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), digest);
    }

    pub fn remove_adapter(&self, name: &str) {
        self.adapters.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    /// (base, adapter) digests for a request to `adapter` (`None` = the base); `None` when the
    /// adapter's digest is not known (loading or unloading right now): such a request is not cached.
    pub fn of(&self, adapter: Option<&str>) -> Option<(String, Option<String>)> {
        match adapter {
            None => Some((self.base.clone(), None)),
            Some(a) => self.adapter(a).map(|d| (self.base.clone(), Some(d))),
        }
    }
}

/// The cache key of anything serialisable (the caller passes a struct with every input that
/// shapes the output).
pub fn key_of<T: Serialize>(parts: &T) -> String {
    let bytes = serde_json::to_vec(parts).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digests_follow_content_not_location() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).expect("dir");
            std::fs::write(d.join("adapter_config.json"), "{}").expect("write");
            std::fs::write(d.join("adapter_model.safetensors"), [1u8, 2, 3]).expect("write");
        }
        let da = digest_files(&adapter_files(&a)).expect("digest");
        assert_eq!(
            da,
            digest_files(&adapter_files(&b)).expect("digest"),
            "same bytes elsewhere: same digest"
        );
        std::fs::write(b.join("adapter_model.safetensors"), [1u8, 2, 4]).expect("write");
        assert_ne!(da, digest_files(&adapter_files(&b)).expect("digest"), "one byte changed");
        assert!(digest_files(&[tmp.path().join("missing")]).is_err());
        assert_ne!(base_identity(&da, "F32"), base_identity(&da, "Quantized"));
        assert_ne!(WeightsIdentity::unique().base(), WeightsIdentity::unique().base());
    }

    #[tokio::test]
    async fn entries_round_trip_and_disabled_caches_hold_nothing() {
        let c = ResponseCache::new(&CacheConfig::default());
        let k = key_of(&("chat", "m", None::<&str>, [1u32, 2, 3], 0.0f64));
        assert_ne!(k, key_of(&("chat", "m", Some("a"), [1u32, 2, 3], 0.0f64)));
        c.put(k.clone(), serde_json::json!({"x": 1}));
        assert_eq!(c.get(&k).await.as_deref(), Some(&serde_json::json!({"x": 1})));
        let off = ResponseCache::new(&CacheConfig { enabled: false, ..CacheConfig::default() });
        off.put(k.clone(), serde_json::json!(1));
        assert!(off.get(&k).await.is_none() && !off.enabled());
    }
}
