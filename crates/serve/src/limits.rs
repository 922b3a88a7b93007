//! Per-key rate limits: two token buckets per key, refilled continuously (capacity = the
//! per-minute limit, so a key may burst its whole minute at once, as OpenAI's limits allow).
//! Requests take one from the request bucket on admission. Tokens are only known when a
//! request ends, so they are charged then and the token bucket may go below zero; a key is
//! refused while its token balance is below one, until it refills.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::keys::ApiKey;

#[derive(Debug, Clone)]
struct Bucket {
    per_minute: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        Self { per_minute: per_minute as f64, level: per_minute as f64, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_minute / 60.0).min(self.per_minute);
        self.last = now;
    }

    /// Time until the level reaches one.
    fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.level) * 60.0 / self.per_minute).max(0.0))
    }
}

#[derive(Debug, Default)]
struct KeyBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    keys: Mutex<HashMap<String, KeyBuckets>>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, KeyBuckets>) -> R) -> R {
        let mut g = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Admit one request for `key` or say how long to wait.
    pub fn admit(&self, key: &ApiKey, now: Instant) -> Result<(), ApiError> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        self.with(|keys| {
            let b = keys.entry(key.name.clone()).or_default();
            if let Some(tpm) = key.tpm {
                let t = b.tokens.get_or_insert_with(|| Bucket::new(tpm, now));
                t.refill(now);
                if t.level < 1.0 {
                    return Err(ApiError::RateLimited { what: "tokens", retry_after: t.wait() });
                }
            }
            if let Some(rpm) = key.rpm {
                let r = b.requests.get_or_insert_with(|| Bucket::new(rpm, now));
                r.refill(now);
                if r.level < 1.0 {
                    return Err(ApiError::RateLimited { what: "requests", retry_after: r.wait() });
                }
                r.level -= 1.0;
            }
            Ok(())
        })
    }

    /// Charge the tokens a finished (or abandoned) request used.
    pub fn charge(&self, key: &ApiKey, tokens: usize, now: Instant) {
        let Some(tpm) = key.tpm else { return };
        self.with(|keys| {
            let b = keys.entry(key.name.clone()).or_default();
            let t = b.tokens.get_or_insert_with(|| Bucket::new(tpm, now));
            t.refill(now);
            t.level -= tokens as f64;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u32>, tpm: Option<u32>) -> ApiKey {
        ApiKey { name: "k".into(), models: vec![], admin: false, rpm, tpm }
    }

    #[test]
    fn requests_beyond_the_minute_budget_wait_for_the_refill() {
        let l = RateLimiter::new();
        let k = key(Some(2), None);
        let t0 = Instant::now();
        assert!(l.admit(&k, t0).is_ok());
        assert!(l.admit(&k, t0).is_ok());
        match l.admit(&k, t0) {
            Err(ApiError::RateLimited { what: "requests", retry_after }) => {
                assert!((retry_after.as_secs_f64() - 30.0).abs() < 0.01, "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(l.admit(&k, t0 + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_block_until_repaid() {
        let l = RateLimiter::new();
        let k = key(None, Some(600));
        let t0 = Instant::now();
        assert!(l.admit(&k, t0).is_ok());
        l.charge(&k, 1200, t0);
        match l.admit(&k, t0) {
            // 601 tokens owed at 10 tokens/s.
            Err(ApiError::RateLimited { what: "tokens", retry_after }) => {
                assert!((retry_after.as_secs_f64() - 60.1).abs() < 0.01, "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(l.admit(&k, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn unlimited_keys_are_always_admitted() {
        let l = RateLimiter::new();
        let k = key(None, None);
        for _ in 0..1000 {
            assert!(l.admit(&k, Instant::now()).is_ok());
        }
    }
}
