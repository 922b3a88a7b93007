//! The OpenAI-compatible server.
//!
//! - [`engine`]: one loop on its own thread, fed by a bounded queue; continuous batching over
//!   per-sequence KV caches; adapters grouped per step; cancellation when a client leaves.
//! - [`app`]: shared state, the router and graceful shutdown; [`startup`]: config → running
//!   state; [`config`]: `serve.toml`.
//! - [`routes`]: chat, completions, embeddings, models / adapters, health / metrics — over
//!   [`openai`] (request bodies), [`response`] (the typed response bodies), [`generation`]
//!   (validation, submission, event collection) and [`stream`] (SSE); chat and completions share
//!   one pipeline (`routes/pipeline.rs`: parse, resolve, guards, cache, submit, stream or collect).
//! - [`browser`] (Host, Origin / CORS, Content-Type: what a web page may do); [`auth`] + [`keys`]
//!   (hashed API keys in SQLite) + [`limits`] (per-key buckets, leases, fair share);
//!   [`cache`] (exact-response LRU); [`openapi`] (the OpenAPI 3.1 document at `/openapi.json`); [`metrics`] (Prometheus); [`record`] (request log and
//!   each inference request's [`audit`] entry; `audit` also appends off the request path);
//!   [`error`] (every failure → status + OpenAI error body); [`json`] (bodies → 400 naming the field).
//! - [`guards`]: `[guards]` on the request path (issue #20) — prompt injection in user content
//!   and retrieved chunks, system-prompt leaks and personal data in answers (streamed too), each
//!   `off | log | block | redact` per model and key; the logic lives in `ferrotune_guard`.
//! - [`registry`]: versions from the model registry (`ferrotune_govern`). A `model` that is not
//!   the base or an adapter loaded by name is a registry reference — `support` (through
//!   `[registry] default_alias`, `champion`), `support@canary`, `support@3` — resolved against a
//!   snapshot a watcher refreshes every `poll_ms` when the registry's generation moves. A version
//!   is loaded on first use as adapter `support@3`, only if it is an adapter trained on the
//!   served base (file hashes compared) and every file still hashes to what the registry
//!   recorded (503 `integrity_check_failed` otherwise). Alias moves apply to new requests; a
//!   disabled version is refused (403 `model_disabled`) and its in-flight requests end with
//!   `finish_reason: "disabled"`. Key scopes: `support` permits every `support@…`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod browser;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod generation;
pub mod grounding;
pub mod guards;
pub mod json;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod record;
pub mod registry;
pub mod response;
pub mod routes;
pub mod startup;
pub mod stream;

pub use app::{AppState, app, serve};
pub use config::ServeConfig;
pub use startup::{StartError, build_state, check_exposure};
