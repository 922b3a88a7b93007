//! Exact-response cache for deterministic requests (temperature 0, or a seed; never streamed):
//! an in-process LRU with a time to live (moka) by default, or Redis when `cache.redis_url` is
//! set, so replicas behind one load balancer share answers. The key is a SHA-256 over the
//! endpoint, the model and adapter, the prompt token ids (after chat-template rendering) and
//! every parameter that changes the output, so two requests share an entry only when the engine
//! would give them the same answer. Responses are stored without their `id` / `created`, which
//! are stamped afresh on each hit. A Redis that fails or is slow only costs cache misses.

use std::sync::Arc;
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
                Cache::builder().max_capacity(cfg.max_entries).time_to_live(Duration::from_secs(cfg.ttl_secs)).build(),
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

/// The cache key of anything serialisable (the caller passes a struct with every input that
/// shapes the output).
pub fn key_of<T: Serialize>(parts: &T) -> String {
    let bytes = serde_json::to_vec(parts).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
