//! The OpenAI-compatible server.
//!
//! - [`engine`]: one loop on its own thread, fed by a bounded queue; continuous batching over
//!   per-sequence KV caches; adapters grouped per step; cancellation when a client leaves.
//! - [`app`]: shared state, the router and graceful shutdown; [`startup`]: config → running
//!   state; [`config`]: `serve.toml`.
//! - [`routes`]: chat, completions, embeddings, models / adapters, health / metrics — over
//!   [`openai`] (request bodies), [`generation`] (validation, submission, event collection) and
//!   [`stream`] (SSE).
//! - [`browser`] (Host, Origin / CORS, Content-Type: what a web page may do); [`auth`] + [`keys`]
//!   (hashed API keys in SQLite) + [`limits`] (per-key buckets, leases, fair share);
//!   [`cache`] (exact-response LRU); [`metrics`] (Prometheus); [`record`] (request log);
//!   [`error`] (every failure → status + OpenAI error body); [`json`] (bodies → 400 naming the field).

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod generation;
pub mod grounding;
pub mod browser;
pub mod json;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod record;
pub mod routes;
pub mod startup;
pub mod stream;

pub use app::{AppState, app, serve};
pub use config::ServeConfig;
pub use startup::{StartError, build_state, check_exposure};
