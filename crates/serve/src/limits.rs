//! Per-key limits, kept under the key's row id (a key re-created under a revoked name starts
//! afresh; a renamed limit never leaks between keys).
//!
//! - Requests per minute and tokens per minute: token buckets refilled continuously (capacity =
//!   the per-minute limit, so a key may burst its whole minute at once, as OpenAI's limits allow).
//!   Each request takes one from the request bucket when it is authenticated.
//! - Tokens are reserved before the engine sees a request: its prompts plus `n × max_tokens`
//!   (at most the bucket's capacity, so no request is impossible). When the request ends — done,
//!   failed, timed out or abandoned by its client — what was not used goes back and what was used
//!   stays charged: a client that disconnects mid-stream pays for what was generated, and a
//!   balance of one token no longer admits any number of requests at once. A request that may
//!   use more than the whole minute reserves the minute and owes the rest when it ends.
//! - Sequences in flight (prompts × n of requests not yet finished): at most the key's
//!   `max_concurrent` (server default `limits.max_concurrent`), and a fair share of the engine:
//!   a key that already has sequences in flight may add more only while its total stays within
//!   `(queue_capacity + max_batch) / max(2, keys with sequences in flight)`. So one key alone
//!   holds at most half of what the engine takes, leaving room for others to arrive, and keys
//!   split it evenly once they do. A key with nothing in flight may always start one request (up
//!   to `limits.max_sequences_per_request`), so no key waits for the others to finish.
//!
//! A limit changed with `ferrotune keys update` applies at the key's next request: the bucket
//! keeps what was used and takes the new capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

    /// Refill up to now under the key's current limit (what was used carries over a change).
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_minute / 60.0).min(self.per_minute);
        self.last = now;
        let new = per_minute as f64;
        if new != self.per_minute {
            self.level = (self.level + new - self.per_minute).min(new);
            self.per_minute = new;
        }
    }

    /// Time until the level reaches `amount`.
    fn wait(&self, amount: f64) -> Duration {
        Duration::from_secs_f64(((amount - self.level) * 60.0 / self.per_minute).max(0.0))
    }
}

#[derive(Debug, Default)]
struct KeyState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Sequences of unfinished requests.
    in_flight: usize,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    keys: Mutex<HashMap<i64, KeyState>>,
}

/// What a request asks for when it is submitted.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// Prompts × n.
    pub sequences: usize,
    /// Prompt tokens (each prompt once) + n × max_tokens per prompt.
    pub tokens: usize,
    /// `limits.max_concurrent`, for keys without their own.
    pub default_max_concurrent: u32,
    /// Sequences the engine holds at once: `queue_capacity + max_batch`.
    pub engine_slots: usize,
}

/// A request's hold on its key's limits; dropping it (the request's end, however it ends) gives
/// back its sequences and settles its tokens: reserved − used returns to the bucket.
#[derive(Debug)]
pub struct Lease {
    limiter: Arc<RateLimiter>,
    key_id: i64,
    sequences: usize,
    /// Tokens taken from the bucket (0 without a token limit).
    reserved: usize,
    tpm: Option<u32>,
    used: AtomicUsize,
}

impl Lease {
    /// Count tokens as they are used (prompts when known, each generated token as it comes).
    pub fn use_tokens(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let used = self.used();
        let now = Instant::now();
        self.limiter.with(|keys| {
            let Some(st) = keys.get_mut(&self.key_id) else {
                return;
            };
            st.in_flight = st.in_flight.saturating_sub(self.sequences);
            if let (Some(tpm), Some(t)) = (self.tpm, st.tokens.as_mut()) {
                t.refill(tpm, now);
                t.level += self.reserved as f64 - used as f64;
            }
        });
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<i64, KeyState>) -> R) -> R {
        let mut g = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Admit one request for `key` (the request bucket) or say how long to wait. A key whose
    /// token balance is below one is refused here too, before its body is read.
    pub fn admit(&self, key: &ApiKey, now: Instant) -> Result<(), ApiError> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        self.with(|keys| {
            let st = keys.entry(key.id).or_default();
            if let Some(tpm) = key.tpm {
                let t = st.tokens.get_or_insert_with(|| Bucket::new(tpm, now));
                t.refill(tpm, now);
                if t.level < 1.0 {
                    return Err(ApiError::RateLimited { what: "tokens", retry_after: t.wait(1.0) });
                }
            }
            if let Some(rpm) = key.rpm {
                let r = st.requests.get_or_insert_with(|| Bucket::new(rpm, now));
                r.refill(rpm, now);
                if r.level < 1.0 {
                    return Err(ApiError::RateLimited { what: "requests", retry_after: r.wait(1.0) });
                }
                r.level -= 1.0;
            }
            Ok(())
        })
    }

    /// Take the sequences and tokens a request needs, or refuse it: 400 when it could never
    /// fit the key's concurrency, 429 when it must wait for the key's other requests or tokens.
    pub fn reserve(self: &Arc<Self>, key: &ApiKey, ask: Ask, now: Instant) -> Result<Lease, ApiError> {
        let max_concurrent = key.max_concurrent.unwrap_or(ask.default_max_concurrent) as usize;
        if ask.sequences > max_concurrent {
            return Err(ApiError::field(
                "n",
                format!(
                    "this request starts {} sequences (prompts × n); this key may have at most {max_concurrent} in flight",
                    ask.sequences
                ),
            ));
        }
        self.with(|keys| {
            let active = keys.iter().filter(|(id, st)| st.in_flight > 0 && **id != key.id).count() + 1;
            let st = keys.entry(key.id).or_default();
            if st.in_flight + ask.sequences > max_concurrent {
                return Err(ApiError::TooManyInFlight(format!(
                    "this key has {} sequences in flight and may have at most {max_concurrent}; retry when some finish",
                    st.in_flight
                )));
            }
            let share = (ask.engine_slots / active.max(2)).max(1);
            if st.in_flight > 0 && st.in_flight + ask.sequences > share {
                return Err(ApiError::TooManyInFlight(format!(
                    "this key holds {} sequences of the engine's {} while {active} keys are active; its fair share is {share}",
                    st.in_flight, ask.engine_slots
                )));
            }
            let mut reserved = 0;
            if let Some(tpm) = key.tpm {
                let t = st.tokens.get_or_insert_with(|| Bucket::new(tpm, now));
                t.refill(tpm, now);
                reserved = ask.tokens.min(tpm as usize);
                if t.level < reserved as f64 {
                    return Err(ApiError::RateLimited { what: "tokens", retry_after: t.wait(reserved as f64) });
                }
                t.level -= reserved as f64;
            }
            st.in_flight += ask.sequences;
            Ok(Lease {
                limiter: Arc::clone(self),
                key_id: key.id,
                sequences: ask.sequences,
                reserved,
                tpm: key.tpm,
                used: AtomicUsize::new(0),
            })
        })
    }

    /// Charge tokens used outside a lease (a request answered without the engine).
    pub fn charge(&self, key: &ApiKey, tokens: usize, now: Instant) {
        let Some(tpm) = key.tpm else { return };
        self.with(|keys| {
            let st = keys.entry(key.id).or_default();
            let t = st.tokens.get_or_insert_with(|| Bucket::new(tpm, now));
            t.refill(tpm, now);
            t.level -= tokens as f64;
        });
    }

    /// The key's token balance now (`None` without a token bucket yet).
    pub fn tokens_left(&self, key: &ApiKey, now: Instant) -> Option<f64> {
        let tpm = key.tpm?;
        self.with(|keys| {
            let t = keys.get_mut(&key.id)?.tokens.as_mut()?;
            t.refill(tpm, now);
            Some(t.level)
        })
    }

    /// Sequences in flight for a key (tests and the request log).
    pub fn in_flight(&self, key_id: i64) -> usize {
        self.with(|keys| keys.get(&key_id).map_or(0, |s| s.in_flight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u32>, tpm: Option<u32>) -> ApiKey {
        ApiKey { id: 1, name: "k".into(), rpm, tpm, ..Default::default() }
    }

    fn ask(sequences: usize, tokens: usize) -> Ask {
        Ask { sequences, tokens, default_max_concurrent: 64, engine_slots: 288 }
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
    fn a_reservation_holds_tokens_until_the_request_ends_and_refunds_the_unused_part() {
        // Regression: admission only checked a balance of one, so any number of requests could
        // start at once; now each takes prompt + n × max_tokens up front.
        let l = Arc::new(RateLimiter::new());
        let k = key(None, Some(1000));
        let t0 = Instant::now();
        let first = l.reserve(&k, ask(1, 600), t0).expect("first");
        match l.reserve(&k, ask(1, 600), t0) {
            Err(ApiError::RateLimited { what: "tokens", retry_after }) => {
                // 200 more needed at 1000/60 per second.
                assert!((retry_after.as_secs_f64() - 12.0).abs() < 0.01, "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        first.use_tokens(100);
        drop(first);
        let second = l.reserve(&k, ask(1, 600), t0).expect("500 came back");
        // 100 used by the first, 600 held by the second.
        assert!(l.admit(&k, t0).is_ok());
        assert!(l.reserve(&k, ask(1, 301), t0).is_err());
        drop(second);
    }

    #[test]
    fn an_abandoned_request_pays_for_what_it_used() {
        // Regression: tokens were charged from the finished request's usage, which a client
        // that disconnected mid-stream never got, so it paid nothing.
        let l = Arc::new(RateLimiter::new());
        let k = key(None, Some(600));
        let t0 = Instant::now();
        let lease = l.reserve(&k, ask(1, 600), t0).expect("reserve");
        lease.use_tokens(450);
        drop(lease);
        assert!(matches!(l.reserve(&k, ask(1, 151), t0), Err(ApiError::RateLimited { what: "tokens", .. })));
        assert!(l.reserve(&k, ask(1, 150), t0).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_minute_reserves_the_minute_and_owes_the_rest() {
        let l = Arc::new(RateLimiter::new());
        let k = key(None, Some(600));
        let t0 = Instant::now();
        let lease = l.reserve(&k, ask(1, 5000), t0).expect("capped at the capacity");
        lease.use_tokens(1200);
        drop(lease);
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
    fn buckets_belong_to_the_key_id_not_its_name() {
        let l = RateLimiter::new();
        let t0 = Instant::now();
        let old = key(Some(1), None);
        let recreated = ApiKey { id: 2, ..old.clone() };
        assert!(l.admit(&old, t0).is_ok());
        assert!(l.admit(&old, t0).is_err());
        assert!(l.admit(&recreated, t0).is_ok(), "same name, new key: its own bucket");
    }

    #[test]
    fn a_changed_limit_applies_at_the_next_request() {
        // Regression: a bucket kept the per-minute limit it was created with.
        let l = RateLimiter::new();
        let t0 = Instant::now();
        let mut k = key(Some(1), None);
        assert!(l.admit(&k, t0).is_ok());
        assert!(l.admit(&k, t0).is_err());
        k.rpm = Some(3);
        assert!(l.admit(&k, t0).is_ok() && l.admit(&k, t0).is_ok(), "two more of the new three");
        assert!(l.admit(&k, t0).is_err());
        k.rpm = Some(1);
        assert!(l.admit(&k, t0 + Duration::from_secs(20)).is_err(), "lowered: what was used still counts");
    }

    #[test]
    fn concurrency_is_capped_per_key_and_freed_when_requests_end() {
        let l = Arc::new(RateLimiter::new());
        let k = ApiKey { max_concurrent: Some(4), ..key(None, None) };
        let t0 = Instant::now();
        assert!(
            matches!(l.reserve(&k, ask(5, 0), t0), Err(ApiError::InvalidField { param, .. }) if param == "n")
        );
        let a = l.reserve(&k, ask(3, 0), t0).expect("3 of 4");
        assert!(matches!(l.reserve(&k, ask(2, 0), t0), Err(ApiError::TooManyInFlight(_))));
        let b = l.reserve(&k, ask(1, 0), t0).expect("4 of 4");
        assert_eq!(l.in_flight(k.id), 4);
        drop(a);
        drop(b);
        assert_eq!(l.in_flight(k.id), 0);
        // The server default applies to keys without their own.
        let d = key(None, None);
        assert!(l.reserve(&d, Ask { default_max_concurrent: 2, ..ask(3, 0) }, t0).is_err());
    }

    #[test]
    fn a_busy_key_keeps_to_its_fair_share_of_the_engine() {
        let l = Arc::new(RateLimiter::new());
        let t0 = Instant::now();
        let slots = |sequences| Ask { engine_slots: 12, ..ask(sequences, 0) };
        let a = key(None, None);
        let b = ApiKey { id: 2, ..key(None, None) };
        let c = ApiKey { id: 3, ..key(None, None) };
        // Alone, `a` may hold half the engine (6), not all of it.
        let _a1 = l.reserve(&a, slots(6), t0).expect("a: 6");
        assert!(matches!(l.reserve(&a, slots(1), t0), Err(ApiError::TooManyInFlight(_))));
        // An idle key always gets in.
        let _b1 = l.reserve(&b, slots(2), t0).expect("b: 2");
        let _c1 = l.reserve(&c, slots(1), t0).expect("c: 1");
        // Three keys active: a share is 4.
        assert!(l.reserve(&b, slots(2), t0).is_ok(), "b: 4 of 4");
        assert!(matches!(l.reserve(&c, slots(4), t0), Err(ApiError::TooManyInFlight(_))));
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
