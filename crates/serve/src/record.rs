//! The structured request log: one line per request (target `ferrotune_serve::request`) with the
//! request id, key name, model, token counts, latency and status — never the prompt text unless
//! `log_prompts` is on. The line is written when the request's record is dropped, which for a
//! stream is when the stream ends or the client leaves, so latency and token counts are final.
//! Dropping the record also ends the request's [`Lease`] on its key's limits (its sequences
//! leave the key's count and unused reserved tokens go back); a request answered without the
//! engine, and so without a lease, is charged its usage then.
//!
//! An inference request (chat, completions, embeddings) that got past authentication also
//! leaves an `inference` entry in the audit log, built here from the same record
//! ([`crate::audit::events::inference`]): the answer's finish reasons and, with `log_prompts`,
//! the prompt's and the answer's SHA-256 (text too with `[audit] prompt_text`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use ferrotune_guard::GuardAction;

use crate::app::AppState;
use crate::audit::events::{
    ANONYMOUS, GuardCount, Inference, InferenceSubject, inference, join_choices, sha256_hex,
};
use crate::audit::{Audit, Content};
use crate::error::{FailureCode, FailureReason};
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
    /// Past authentication (what makes an inference request an audit entry).
    reached: bool,
    failure_code: Option<&'static str>,
    /// The base's served name, the adapter or `support@3` the request ran on.
    resolved: Option<String>,
    stream: bool,
    /// Per choice index.
    finishes: BTreeMap<usize, String>,
    /// Generated text per choice index, kept only when the audit log records answers.
    answers: BTreeMap<usize, String>,
    knowledge_base: Option<String>,
    sources: Vec<String>,
    /// What the guards did, in order (never the text they found).
    guards: Vec<GuardAction>,
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
    /// On for inference endpoints while the audit log is (`audit_endpoint`).
    audit: Audit,
    endpoint: &'static str,
}

/// The inference endpoints, as named in audit entries.
fn audit_endpoint(method: &axum::http::Method, path: &str) -> Option<&'static str> {
    if method != axum::http::Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some("chat"),
        "/v1/completions" => Some("completions"),
        "/v1/embeddings" => Some("embeddings"),
        _ => None,
    }
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

    /// The request got past authentication (called by [`crate::auth::authenticate`]).
    pub fn set_reached(&self) {
        self.with(|f| f.reached = true);
    }

    /// What `model` resolved to: the base's served name, an adapter, `support@3`.
    pub fn set_resolved(&self, resolved: &str) {
        self.with(|f| f.resolved = Some(resolved.to_string()));
    }

    pub fn set_stream(&self, stream: bool) {
        self.with(|f| f.stream = stream);
    }

    /// Whether the audit log wants the answer's text (to hash it): streams push their pieces
    /// only then.
    pub fn keeps_answers(&self) -> bool {
        self.audit.content() != Content::Nothing
    }

    /// A piece of choice `i`'s streamed text (dropped unless [`Self::keeps_answers`]).
    pub fn push_answer(&self, i: usize, text: &str) {
        if self.keeps_answers() && !text.is_empty() {
            self.with(|f| f.answers.entry(i).or_default().push_str(text));
        }
    }

    /// Choice `i` ended: its finish reason, and its whole text for a plain response (`None` for
    /// a stream, whose text came by [`Self::push_answer`]).
    pub fn set_choice(&self, i: usize, finish: &str, text: Option<&str>) {
        let keep = self.keeps_answers();
        self.with(|f| {
            f.finishes.insert(i, finish.to_string());
            match (keep, text) {
                (true, Some(t)) => _ = f.answers.insert(i, t.to_string()),
                // A stream's pieces are in already; one that streamed no text answered "".
                (true, None) => _ = f.answers.entry(i).or_default(),
                (false, _) => {}
            }
        });
    }

    /// A grounded chat request's knowledge base and its sources' document ids.
    pub fn set_sources(&self, knowledge_base: &str, doc_ids: Vec<String>) {
        self.with(|f| {
            f.knowledge_base = Some(knowledge_base.to_string());
            f.sources = doc_ids;
        });
    }

    /// A record for unit tests that drive handlers' parts without the middleware.
    #[cfg(test)]
    pub(crate) fn for_tests(state: &AppState) -> Arc<Self> {
        let started = Instant::now();
        Arc::new(Self {
            id: "test".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            started,
            deadline: started + std::time::Duration::from_secs(60),
            log_prompts: false,
            limiter: state.limiter.clone(),
            fields: Mutex::new(Fields::default()),
            audit: Audit::off(),
            endpoint: "chat",
        })
    }

    /// What the guards did so far (tests).
    #[cfg(test)]
    pub(crate) fn guards(&self) -> Vec<GuardAction> {
        self.with(|f| f.guards.clone())
    }

    /// A guard acted on this request ([`crate::guards`] counts it in `/metrics` too).
    pub fn add_guard(&self, action: &GuardAction) {
        self.with(|f| f.guards.push(action.clone()));
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
            guards = %guards_field(&f.guards),
            latency_ms = (latency_ms * 10.0).round() / 10.0,
            prompt = f.prompt.as_deref().unwrap_or(""),
        );
        if self.audit.is_on() && f.reached {
            self.audit.record(self.audit_entry(f, latency_ms));
        }
    }
}

impl RequestRecord {
    fn audit_entry(&self, f: Fields, latency_ms: f64) -> ferrotune_govern::audit::Event {
        let content = self.audit.content();
        let answer = (content != Content::Nothing && !f.answers.is_empty()).then(|| join_choices(&f.answers));
        let what = Inference {
            endpoint: self.endpoint.to_string(),
            status: if f.status == 0 { 499 } else { f.status },
            failure: f.failure_code.map(str::to_string),
            prompt_tokens: f.prompt_tokens as u64,
            completion_tokens: f.completion_tokens as u64,
            latency_ms: latency_ms.round() as u64,
            cached: f.cached,
            stream: f.stream,
            finish_reasons: f.finishes.into_values().collect(),
            knowledge_base: f.knowledge_base,
            sources: f.sources,
            guards: guard_counts(&f.guards),
            prompt_sha256: f.prompt.as_deref().filter(|_| content != Content::Nothing).map(sha256_hex),
            completion_sha256: answer.as_deref().map(sha256_hex),
            prompt: f.prompt.filter(|_| content == Content::Text),
            completion: answer.filter(|_| content == Content::Text),
        };
        let who = InferenceSubject {
            request_id: &self.id,
            actor: f.key.as_ref().map_or(ANONYMOUS, |k| k.name.as_str()),
            model: f.model.as_deref(),
            resolved: f.resolved.as_deref(),
            artifact: f.artifact.as_deref(),
        };
        inference(&who, &what)
    }
}

/// The request log's `guards` field: `output_pii=redact(email), prompt_injection=log(rule x)`,
/// or `-`.
fn guards_field(actions: &[GuardAction]) -> String {
    if actions.is_empty() {
        return "-".into();
    }
    actions
        .iter()
        .map(|a| format!("{}={}({})", a.guard.as_str(), a.action.as_str(), a.detail))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The audit entry's `guards`: how many times each (guard, action, kind) happened. Kinds are the
/// actions' details (`email`, `canary`, a rule's name), which never hold the text found.
fn guard_counts(actions: &[GuardAction]) -> Vec<GuardCount> {
    let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for a in actions {
        *counts.entry((a.guard.as_str(), a.action.as_str(), a.detail.as_str())).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((guard, action, kind), count)| GuardCount {
            guard: guard.into(),
            action: action.into(),
            kind: kind.into(),
            count,
        })
        .collect()
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
    let endpoint = audit_endpoint(req.method(), req.uri().path());
    let record = Arc::new(RequestRecord {
        id: id.clone(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        started,
        // Clamped: a huge setting means "no deadline" without overflowing `Instant`.
        deadline: started
            + std::time::Duration::from_secs_f64(state.cfg.limits.request_timeout_s.clamp(0.0, 1e9)),
        log_prompts: state.cfg.log_prompts,
        limiter: state.limiter.clone(),
        fields: Mutex::new(Fields::default()),
        audit: if endpoint.is_some() { state.audit.clone() } else { Audit::off() },
        endpoint: endpoint.unwrap_or("-"),
    });
    req.extensions_mut().insert(record.clone());
    req.extensions_mut().insert(BodyLimit(state.cfg.max_body_bytes));
    let mut resp = next.run(req).await;
    let failure = resp.extensions().get::<FailureReason>().map(|r| r.0);
    if let Some(reason) = failure {
        state.metrics.count_failure(reason);
    }
    let failure_code = resp.extensions().get::<FailureCode>().map(|c| c.0);
    let status = resp.status().as_u16();
    let artifact = record.with(|f| {
        f.status = status;
        f.failure = failure;
        f.failure_code = failure_code;
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

#[cfg(test)]
mod tests {
    use ferrotune_guard::{GuardKind, GuardMode};

    use super::*;

    fn acted(guard: GuardKind, action: GuardMode, detail: &str) -> GuardAction {
        GuardAction { guard, action, detail: detail.into() }
    }

    #[test]
    fn the_log_line_lists_each_action_and_the_audit_entry_counts_them_by_kind() {
        assert_eq!(guards_field(&[]), "-");
        let actions = [
            acted(GuardKind::OutputPii, GuardMode::Redact, "email"),
            acted(
                GuardKind::PromptInjection,
                GuardMode::Log,
                "messages[0].content: rule ignore_previous, score 0.98",
            ),
            acted(GuardKind::OutputPii, GuardMode::Redact, "email"),
            acted(GuardKind::OutputPii, GuardMode::Redact, "phone"),
        ];
        assert_eq!(
            guards_field(&actions),
            "output_pii=redact(email), prompt_injection=log(messages[0].content: rule ignore_previous, score 0.98), \
             output_pii=redact(email), output_pii=redact(phone)"
        );
        let counts: Vec<(String, String, String, u64)> =
            guard_counts(&actions).into_iter().map(|c| (c.guard, c.action, c.kind, c.count)).collect();
        assert_eq!(
            counts,
            [
                ("output_pii".into(), "redact".into(), "email".into(), 2),
                ("output_pii".into(), "redact".into(), "phone".into(), 1),
                (
                    "prompt_injection".into(),
                    "log".into(),
                    "messages[0].content: rule ignore_previous, score 0.98".into(),
                    1
                ),
            ]
        );
    }
}
