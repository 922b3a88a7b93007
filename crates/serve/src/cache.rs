//! Exact-response cache for deterministic requests (temperature 0, or a seed; never streamed):
//! an in-process LRU with a time to live (moka). The key is a SHA-256 over the endpoint, the
//! model and adapter, the prompt token ids (after chat-template rendering) and every parameter
//! that changes the output, so two requests share an entry only when the engine would give
//! them the same answer. Responses are stored without their `id` / `created`, which are
//! stamped afresh on each hit.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::CacheConfig;

#[derive(Clone)]
pub struct ResponseCache {
    inner: Option<Cache<String, Arc<serde_json::Value>>>,
}

impl ResponseCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        let inner = cfg.enabled.then(|| {
            Cache::builder().max_capacity(cfg.max_entries).time_to_live(Duration::from_secs(cfg.ttl_secs)).build()
        });
        Self { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn get(&self, key: &str) -> Option<Arc<serde_json::Value>> {
        self.inner.as_ref()?.get(key)
    }

    pub fn put(&self, key: String, value: serde_json::Value) {
        if let Some(c) = &self.inner {
            c.insert(key, Arc::new(value));
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
    fn entries_round_trip_and_disabled_caches_hold_nothing() {
        let c = ResponseCache::new(&CacheConfig::default());
        let k = key_of(&("chat", "m", None::<&str>, [1u32, 2, 3], 0.0f64));
        assert_ne!(k, key_of(&("chat", "m", Some("a"), [1u32, 2, 3], 0.0f64)));
        c.put(k.clone(), serde_json::json!({"x": 1}));
        assert_eq!(c.get(&k).as_deref(), Some(&serde_json::json!({"x": 1})));
        let off = ResponseCache::new(&CacheConfig { enabled: false, ..CacheConfig::default() });
        off.put(k.clone(), serde_json::json!(1));
        assert!(off.get(&k).is_none() && !off.enabled());
    }
}
