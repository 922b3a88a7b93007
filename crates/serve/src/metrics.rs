//! Prometheus metrics, one registry per server (so tests can run several servers in a process).
//! Names follow vLLM's (`vllm:time_to_first_token_seconds` → `ferrotune:time_to_first_token_seconds`)
//! so its dashboards carry over with a prefix change; per-request series carry `model` (the
//! served base model) and `adapter` (`""` for the base). Engine gauges are read at scrape time.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::EngineStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub adapter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    pub model: String,
    pub adapter: String,
    pub finished_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BaseLabels {
    pub model: String,
}

/// A registry artifact version (`name="support", version="3"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub name: String,
    pub version: String,
}

/// Why a registry version was refused: `integrity`, `disabled`, `base_mismatch`, `not_adapter`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub name: String,
    pub version: String,
    pub reason: String,
}

/// An audit event's action (`inference`, `serve.start`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

/// What a guard did (`guard="output_pii", action="redact"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub guard: String,
    pub action: String,
}

type Hist = Family<ModelLabels, Histogram, fn() -> Histogram>;

// Bucket edges as vLLM's (seconds).
fn ttft_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
        40.0, 80.0,
    ])
}
fn retrieval_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
}

/// Label of the retrieval histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KbLabels {
    pub knowledge_base: String,
}

fn itl_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0])
}
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    base: String,
    pub ttft: Hist,
    pub inter_token: Hist,
    pub e2e: Hist,
    pub queue_time: Hist,
    /// Retrieval time of grounded requests, by knowledge base.
    pub retrieval: Family<KbLabels, Histogram, fn() -> Histogram>,
    pub prompt_tokens: Family<ModelLabels, Counter>,
    pub generation_tokens: Family<ModelLabels, Counter>,
    pub success: Family<FinishLabels, Counter>,
    pub cache_hits: Family<ModelLabels, Counter>,
    pub cache_misses: Family<ModelLabels, Counter>,
    pub rate_limited: Family<ReasonLabels, Counter>,
    pub failed: Family<ReasonLabels, Counter>,
    /// Requests served by a registry version.
    pub registry_requests: Family<VersionLabels, Counter>,
    pub registry_refusals: Family<RefusalLabels, Counter>,
    /// Events appended to the audit log, by action.
    pub audit_events: Family<ActionLabels, Counter>,
    /// Failed audit appends (each retried) and checkpoints.
    pub audit_errors: Counter,
    /// Guard actions (`[guards]`), by guard and action.
    pub guard_actions: Family<GuardLabels, Counter>,
    running: Family<BaseLabels, Gauge>,
    waiting: Family<BaseLabels, Gauge>,
    kv_usage: Family<BaseLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub fn new(base_model: &str) -> Self {
        let mut registry = Registry::default();
        let hist = |f: fn() -> Histogram| Hist::new_with_constructor(f);
        let m = Self {
            base: base_model.to_string(),
            ttft: hist(ttft_histogram),
            inter_token: hist(itl_histogram),
            e2e: hist(latency_histogram),
            queue_time: hist(latency_histogram),
            retrieval: Family::new_with_constructor(retrieval_histogram),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            success: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            rate_limited: Family::default(),
            failed: Family::default(),
            registry_requests: Family::default(),
            registry_refusals: Family::default(),
            audit_events: Family::default(),
            audit_errors: Counter::default(),
            guard_actions: Family::default(),
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("ferrotune:time_to_first_token_seconds", "Time to first token", m.ttft.clone());
        r.register(
            "ferrotune:inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            m.inter_token.clone(),
        );
        r.register(
            "ferrotune:e2e_request_latency_seconds",
            "Request latency from arrival to the last token",
            m.e2e.clone(),
        );
        r.register(
            "ferrotune:request_queue_time_seconds",
            "Time a request waited in the engine queue",
            m.queue_time.clone(),
        );
        r.register(
            "ferrotune:retrieval_seconds",
            "Knowledge-base retrieval time of grounded requests",
            m.retrieval.clone(),
        );
        r.register("ferrotune:prompt_tokens", "Prefilled prompt tokens", m.prompt_tokens.clone());
        r.register("ferrotune:generation_tokens", "Generated tokens", m.generation_tokens.clone());
        r.register("ferrotune:request_success", "Finished generations by finish reason", m.success.clone());
        r.register(
            "ferrotune:response_cache_hits",
            "Requests answered from the response cache",
            m.cache_hits.clone(),
        );
        r.register(
            "ferrotune:response_cache_misses",
            "Cacheable requests not found in the response cache",
            m.cache_misses.clone(),
        );
        r.register(
            "ferrotune:rate_limited_requests",
            "Requests refused with 429, by limit",
            m.rate_limited.clone(),
        );
        r.register(
            "ferrotune:failed_requests",
            "Requests answered with an error, by reason",
            m.failed.clone(),
        );
        r.register(
            "ferrotune:registry_requests",
            "Requests served by a registry artifact version",
            m.registry_requests.clone(),
        );
        r.register(
            "ferrotune:registry_refusals",
            "Requests for a registry artifact version refused, by reason (integrity, disabled, base_mismatch, not_adapter)",
            m.registry_refusals.clone(),
        );
        r.register(
            "ferrotune:audit_events",
            "Events appended to the audit log, by action",
            m.audit_events.clone(),
        );
        r.register(
            "ferrotune:audit_errors",
            "Failed audit log appends (retried) and checkpoints",
            m.audit_errors.clone(),
        );
        r.register(
            "ferrotune:guard_actions",
            "What the guards did (issue #20), by guard (prompt_injection, retrieved_injection, system_prompt_leak, output_pii) and action (log, block, redact)",
            m.guard_actions.clone(),
        );
        r.register("ferrotune:num_requests_running", "Sequences in the running batch", m.running.clone());
        r.register(
            "ferrotune:num_requests_waiting",
            "Requests waiting in the engine queue",
            m.waiting.clone(),
        );
        r.register(
            "ferrotune:kv_cache_usage_perc",
            "Fraction of the KV token budget reserved (0-1)",
            m.kv_usage.clone(),
        );
        Self { registry, ..m }
    }

    pub fn labels(&self, adapter: Option<&str>) -> ModelLabels {
        ModelLabels { model: self.base.clone(), adapter: adapter.unwrap_or("").to_string() }
    }

    /// The text exposition, with the engine gauges read now.
    pub fn render(&self, stats: &EngineStats) -> String {
        let base = BaseLabels { model: self.base.clone() };
        self.running.get_or_create(&base).set(stats.running as i64);
        self.waiting.get_or_create(&base).set(stats.waiting as i64);
        let usage = if stats.kv_budget == 0 { 0.0 } else { stats.kv_used as f64 / stats.kv_budget as f64 };
        self.kv_usage.get_or_create(&base).set(usage);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_registry_request(&self, name: &str, version: u32) {
        self.registry_requests
            .get_or_create(&VersionLabels { name: name.into(), version: version.to_string() })
            .inc();
    }

    pub fn count_registry_refusal(&self, name: &str, version: u32, reason: &str) {
        let labels = RefusalLabels { name: name.into(), version: version.to_string(), reason: reason.into() };
        self.registry_refusals.get_or_create(&labels).inc();
    }

    pub fn count_guard(&self, a: &ferrotune_guard::GuardAction) {
        self.guard_actions
            .get_or_create(&GuardLabels { guard: a.guard.as_str().into(), action: a.action.as_str().into() })
            .inc();
    }

    pub fn count_failure(&self, reason: &str) {
        self.failed.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// Count a refusal by the limit that gave it (429s at admission and at submission); other
    /// errors are not counted here.
    pub fn count_rate_limited(&self, e: &crate::error::ApiError) {
        let what = match e {
            crate::error::ApiError::RateLimited { what, .. } => *what,
            crate::error::ApiError::TooManyInFlight(_) => "sequences",
            _ => return,
        };
        self.rate_limited.get_or_create(&ReasonLabels { reason: what.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_vllm_style_names_and_labels() {
        let m = Metrics::new("tiny");
        m.ttft.get_or_create(&m.labels(Some("a1"))).observe(0.05);
        m.prompt_tokens.get_or_create(&m.labels(None)).inc_by(7);
        m.count_failure("queue_full");
        m.count_registry_request("support", 3);
        m.count_registry_refusal("support", 2, "integrity");
        m.audit_events.get_or_create(&ActionLabels { action: "inference".into() }).inc_by(3);
        m.count_guard(&ferrotune_guard::GuardAction {
            guard: ferrotune_guard::GuardKind::OutputPii,
            action: ferrotune_guard::GuardMode::Redact,
            detail: "email".into(),
        });
        let text =
            m.render(&EngineStats { running: 2, waiting: 1, kv_used: 10, kv_budget: 40, adapters: vec![] });
        assert!(text.contains("ferrotune:time_to_first_token_seconds_bucket{"), "{text}");
        assert!(text.contains(r#"model="tiny",adapter="a1""#), "{text}");
        assert!(text.contains(r#"ferrotune:prompt_tokens_total{model="tiny",adapter=""} 7"#), "{text}");
        assert!(text.contains(r#"ferrotune:failed_requests_total{reason="queue_full"} 1"#), "{text}");
        assert!(text.contains(r#"ferrotune:num_requests_running{model="tiny"} 2"#), "{text}");
        assert!(
            text.contains(r#"ferrotune:registry_requests_total{name="support",version="3"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ferrotune:registry_refusals_total{name="support",version="2",reason="integrity"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"ferrotune:audit_events_total{action="inference"} 3"#), "{text}");
        assert!(text.contains("ferrotune:audit_errors_total 0"), "{text}");
        assert!(
            text.contains(r#"ferrotune:guard_actions_total{guard="output_pii",action="redact"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ferrotune:kv_cache_usage_perc{model="tiny"} 0.25"#), "{text}");
    }
}
