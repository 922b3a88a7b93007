//! The structured request log: one line per request (target `ferrotune_serve::request`) with the
//! request id, key name, model, token counts, latency and status — never the prompt text unless
//! `log_prompts` is on. The line is written when the request's record is dropped, which for a
//! stream is when the stream ends or the client leaves, so latency and token counts are final.
//! Dropping the record also ends the request's [`Lease`] on its key's limits (its sequences
//! leave the key's count and unused reserved tokens go back); a request answered without the
//! engine, and so without a lease, is charged its usage then.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::FailureReason;
use crate::json::BodyLimit;
use crate::keys::ApiKey;
use crate::limits::{Lease, RateLimiter};

#[derive(Debug, Default)]
struct Fields {
    key: Option<ApiKey>,
    model: Option<String>,
    status: u16,
    failure: Option<&'static str>,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached: bool,
    /// The registry version that answered (`support@3`).
    artifact: Option<String>,
    prompt: Option<String>,
    lease: Option<Arc<Lease>>,
}

pub struct RequestRecord {
    pub id: String,
    method: String,
    path: String,
    started: Instant,
    /// `limits.request_timeout_s` after arrival.
    pub deadline: Instant,
    log_prompts: bool,
    limiter: Arc<RateLimiter>,
    fields: Mutex<Fields>,
}

impl RequestRecord {
    fn with<R>(&self, f: impl FnOnce(&mut Fields) -> R) -> R {
        f(&mut self.fields.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set_key(&self, key: &ApiKey) {
        self.with(|f| f.key = Some(key.clone()));
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn set_model(&self, model: &str) {
        self.with(|f| f.model = Some(model.to_string()));
    }

    /// The registry version serving this request: logged, and sent back as `x-ferrotune-artifact`.
    pub fn set_artifact(&self, reference: &str) {
        self.with(|f| f.artifact = Some(reference.to_string()));
    }

    pub fn add_tokens(&self, prompt: usize, completion: usize) {
        self.with(|f| {
            f.prompt_tokens += prompt;
            f.completion_tokens += completion;
        });
    }

    /// Hold the request's lease until the record drops (the request's end, however it ends).
    pub fn set_lease(&self, lease: Arc<Lease>) {
        self.with(|f| f.lease = Some(lease));
    }

    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.with(|f| f.lease.clone())
    }

    pub fn set_cached(&self) {
        self.with(|f| f.cached = true);
    }

    /// Kept only when `log_prompts` is on.
    pub fn set_prompt(&self, text: impl FnOnce() -> String) {
        if self.log_prompts {
            let t = text();
            self.with(|f| f.prompt = Some(t));
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let f = std::mem::take(&mut *self.fields.lock().unwrap_or_else(|p| p.into_inner()));
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        // A cache hit cost no compute, so it is not charged; a lease settles itself.
        if let (Some(key), false, None) = (&f.key, f.cached, &f.lease) {
            self.limiter.charge(key, f.prompt_tokens + f.completion_tokens, Instant::now());
        }
        tracing::info!(
            target: "ferrotune_serve::request",
            request_id = %self.id,
            method = %self.method,
            path = %self.path,
            key = f.key.as_ref().map_or("-", |k| k.name.as_str()),
            model = f.model.as_deref().unwrap_or("-"),
            artifact = f.artifact.as_deref().unwrap_or("-"),
            // 499 (nginx's "client closed request"): the client left before the response.
            status = if f.status == 0 { 499 } else { f.status },
            failure = f.failure.unwrap_or("-"),
            prompt_tokens = f.prompt_tokens,
            completion_tokens = f.completion_tokens,
            cached = f.cached,
            latency_ms = (latency_ms * 10.0).round() / 10.0,
            prompt = f.prompt.as_deref().unwrap_or(""),
        );
    }
}

fn new_request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Outermost layer: give the request an id (`x-request-id`, the client's if it sent a sane
/// one), a record for the log, the body limit, and count failed responses by reason.
pub async fn request_log(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_string);
    let started = Instant::now();
    let record = Arc::new(RequestRecord {
        id: id.clone(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        started,
        // Clamped: a huge setting means "no deadline" without overflowing `Instant`.
        deadline: started + std::time::Duration::from_secs_f64(state.cfg.limits.request_timeout_s.clamp(0.0, 1e9)),
        log_prompts: state.cfg.log_prompts,
        limiter: state.limiter.clone(),
        fields: Mutex::new(Fields::default()),
    });
    req.extensions_mut().insert(record.clone());
    req.extensions_mut().insert(BodyLimit(state.cfg.max_body_bytes));
    let mut resp = next.run(req).await;
    let failure = resp.extensions().get::<FailureReason>().map(|r| r.0);
    if let Some(reason) = failure {
        state.metrics.count_failure(reason);
    }
    let status = resp.status().as_u16();
    let artifact = record.with(|f| {
        f.status = status;
        f.failure = failure;
        f.artifact.clone()
    });
    if let Some(v) = artifact.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert("x-ferrotune-artifact", v);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
