//! The server's audit events, one builder each, so their shapes live in one place. Times,
//! latencies and sizes are integers (the log's canonical JSON has no floats); digests are
//! lowercase hex SHA-256.
//!
//! | action | actor | subject | fields |
//! |---|---|---|---|
//! | `serve.start` | OS user | `model` (as configured), `served_name`, `files` {name: sha256} | `host`, `port`, `auth`, `registry`, `cache`, `log_prompts`, `prompt_text`, `weights`, `adapters`, `pid`, `version` |
//! | `serve.stop` | OS user | `served_name` | `uptime_s`, `engine_died` |
//! | `serve.adapter-load` | key / OS user | `adapter`, `dir`, `files`, `artifact` (`support@3`) | `error` when it failed |
//! | `serve.adapter-unload` | key / OS user | `adapter`, `artifact` | `reason` |
//! | `serve.refused` | key | `artifact` | `reason` (the error code), and the code's details |
//! | `inference` | key / `anonymous` | `request_id`, `model` (as asked), `resolved`, `artifact` | see [`Inference`] |

use std::collections::BTreeMap;
use std::path::Path;

use ferrotune_govern::audit::Event;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::ServeConfig;
use crate::error::ApiError;

/// The actor of a request without a key (auth off).
pub const ANONYMOUS: &str = "anonymous";

/// The actor of what the server does on its own: the OS user it runs as.
pub fn server_actor() -> String {
    ferrotune_govern::actor(None)
}

fn files_map(files: &[(String, String)]) -> Value {
    files
        .iter()
        .map(|(name, sha)| (name.clone(), Value::from(sha.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `serve.start`: the weights by their files' digests (hashed once at start, as the cache's key
/// and the registry's base check use them) and what decides who may ask what.
pub fn start(spec: &str, served_name: &str, files: &[(String, String)], cfg: &ServeConfig) -> Event {
    let subject = json!({"model": spec, "served_name": served_name, "files": files_map(files)});
    let fields = json!({
        "host": cfg.host,
        "port": cfg.port,
        "auth": cfg.auth,
        "registry": cfg.registry.enabled,
        "cache": cfg.cache.enabled,
        "log_prompts": cfg.log_prompts,
        "prompt_text": cfg.audit.prompt_text,
        "weights": format!("{:?}", cfg.weights).to_lowercase(),
        "adapters": cfg.adapters.keys().collect::<Vec<_>>(),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    Event::new(&server_actor(), "serve.start", subject, "ok", fields)
}

/// `serve.stop`, the last entry of a graceful shutdown (`failed` when the engine thread died).
pub fn stop(served_name: &str, uptime_s: u64, engine_died: bool) -> Event {
    let outcome = if engine_died { "failed" } else { "ok" };
    Event::new(
        &server_actor(),
        "serve.stop",
        json!({"served_name": served_name}),
        outcome,
        json!({"uptime_s": uptime_s, "engine_died": engine_died}),
    )
}

/// `serve.adapter-load`: `files` as (name in the folder, sha256); `artifact` for a registry
/// version.
pub fn adapter_load(
    actor: &str,
    name: &str,
    dir: &Path,
    files: &[(String, String)],
    artifact: Option<&str>,
    error: Option<&str>,
) -> Event {
    let subject = json!({"adapter": name, "dir": dir.display().to_string(), "files": files_map(files), "artifact": artifact});
    let (outcome, fields) = match error {
        None => ("ok", json!({})),
        Some(e) => ("failed", json!({"error": e})),
    };
    Event::new(actor, "serve.adapter-load", subject, outcome, fields)
}

/// `serve.adapter-unload`: `reason` says why (`requested`, the kill switch's reason, an
/// integrity failure).
pub fn adapter_unload(actor: &str, name: &str, artifact: Option<&str>, reason: &str) -> Event {
    Event::new(
        actor,
        "serve.adapter-unload",
        json!({"adapter": name, "artifact": artifact}),
        "ok",
        json!({"reason": reason}),
    )
}

/// `serve.refused`: a registry version refused, with what the client was told.
pub fn refused(actor: &str, artifact: &str, e: &ApiError) -> Event {
    let details = match e {
        ApiError::IntegrityCheckFailed { file, expected, actual, .. } => {
            json!({"file": file, "expected_sha256": expected, "actual_sha256": actual})
        }
        ApiError::ModelDisabled { reason, .. } => json!({"disabled_reason": reason}),
        ApiError::BaseModelMismatch { wanted, served, .. } => {
            json!({"wanted_base": wanted, "served_base": served})
        }
        ApiError::NotServable { what, .. } => json!({"what": what}),
        other => json!({"message": other.to_string()}),
    };
    let mut fields = json!({"reason": e.code(), "status": e.status().as_u16()});
    if let (Some(f), Some(d)) = (fields.as_object_mut(), details.as_object()) {
        f.extend(d.clone());
    }
    Event::new(actor, "serve.refused", json!({"artifact": artifact}), "refused", fields)
}

/// One inference request (chat, completions, embeddings) as it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inference {
    pub endpoint: String,
    pub status: u16,
    /// The error code when it failed (`model_not_found`, …).
    pub failure: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    pub cached: bool,
    pub stream: bool,
    /// Per choice, in index order (none for embeddings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finish_reasons: Vec<String>,
    pub knowledge_base: Option<String>,
    /// The retrieved chunks' document ids, in rank order (grounded chat only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// What the guards did (`[guards]`): counts per guard, action and kind — never the text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardCount>,
    /// With `log_prompts`: SHA-256 of the prompt as the request log shows it (chat: the rendered
    /// template, retrieved context included; completions / embeddings: the prompts joined by
    /// `\n---\n`) and of the generated text (choices joined the same way).
    pub prompt_sha256: Option<String>,
    pub completion_sha256: Option<String>,
    /// With `[audit] prompt_text` too.
    pub prompt: Option<String>,
    pub completion: Option<String>,
}

/// One line of [`Inference::guards`]: `{"guard": "output_pii", "action": "redact", "kind": "email", "count": 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardCount {
    pub guard: String,
    pub action: String,
    /// What was found (`email`, `canary`, `verbatim span of 12 words of the system prompt`, an
    /// injection rule or score), as the guard reports it without the text itself.
    pub kind: String,
    pub count: u64,
}

/// Who asked for what and how it resolved.
pub struct InferenceSubject<'a> {
    pub request_id: &'a str,
    pub actor: &'a str,
    /// As the client named it.
    pub model: Option<&'a str>,
    /// The base's served name, the adapter, or `support@3`; `None` when it did not resolve.
    pub resolved: Option<&'a str>,
    /// The registry version, when the name was a registry reference.
    pub artifact: Option<&'a str>,
}

pub fn inference(who: &InferenceSubject<'_>, what: &Inference) -> Event {
    let outcome = match what.status {
        200..=299 => "ok",
        499 => "cancelled",
        400..=498 => "refused",
        _ => "failed",
    };
    let subject = json!({"request_id": who.request_id, "model": who.model, "resolved": who.resolved, "artifact": who.artifact});
    // Absent rather than null for what does not apply (no text kept, no knowledge base).
    let mut fields = serde_json::to_value(what).unwrap_or_default();
    if let Some(f) = fields.as_object_mut() {
        f.retain(|_, v| !v.is_null());
    }
    Event::new(who.actor, "inference", subject, outcome, fields)
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// `texts` by choice index, joined as the prompts are (`\n---\n`).
pub fn join_choices(texts: &BTreeMap<usize, String>) -> String {
    texts.values().map(String::as_str).collect::<Vec<_>>().join("\n---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_entries_leave_out_what_does_not_apply_and_use_integers() {
        let who = InferenceSubject {
            request_id: "r1",
            actor: "user",
            model: Some("tiny"),
            resolved: Some("tiny"),
            artifact: None,
        };
        let e = inference(
            &who,
            &Inference { endpoint: "chat".into(), status: 200, latency_ms: 12, ..Default::default() },
        );
        assert_eq!((e.actor.as_str(), e.action.as_str(), e.outcome.as_str()), ("user", "inference", "ok"));
        assert!(
            e.fields.get("prompt_sha256").is_none() && e.fields.get("knowledge_base").is_none(),
            "{}",
            e.fields
        );
        assert!(e.fields.get("guards").is_none(), "no guard acted: no field, {}", e.fields);
        let g = GuardCount {
            guard: "output_pii".into(),
            action: "redact".into(),
            kind: "email".into(),
            count: 2,
        };
        let e2 = inference(&who, &Inference { status: 200, guards: vec![g], ..Default::default() });
        assert_eq!(e2.fields["guards"][0]["count"], 2);
        assert_eq!(e2.fields["guards"][0]["kind"], "email");
        assert_eq!(e.fields["latency_ms"], 12);
        assert!(e.fields["latency_ms"].is_u64());
        let e = inference(&who, &Inference { status: 404, ..Default::default() });
        assert_eq!(e.outcome, "refused");
        let e = inference(&who, &Inference { status: 503, ..Default::default() });
        assert_eq!(e.outcome, "failed");
    }

    #[test]
    fn a_refusal_names_its_code_and_details() {
        let e = ApiError::IntegrityCheckFailed {
            reference: "s@2".into(),
            file: "a.safetensors".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        let ev = refused("user", "s@2", &e);
        assert_eq!(ev.fields["reason"], "integrity_check_failed");
        assert_eq!(
            (ev.fields["file"].as_str(), ev.fields["expected_sha256"].as_str(), ev.fields["status"].as_u64()),
            (Some("a.safetensors"), Some("aa"), Some(503))
        );
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
