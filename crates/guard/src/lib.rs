//! Guards a serving platform owns (OWASP Top 10 for LLM Applications, 2025), as plain functions
//! over text so `serve`, the CLI and tests share one implementation:
//!
//! - [`injection`] (LLM01): cheap rules plus a learned classifier (hashed word and character
//!   n-grams, logistic head, trained by `ferrotune guard train`) scoring user content and
//!   retrieved chunks.
//! - [`output`] (LLM02, LLM07): a streaming filter over an answer's text that redacts personal
//!   data to typed placeholders (`[EMAIL]`, …; the data stage's detectors) and catches a
//!   system-prompt leak (the request's canary, or a long verbatim span of the system prompt),
//!   holding back only the small window a match could still span.
//! - [`settings`]: `off | log | block | redact` per guard, with per-model and per-key overrides
//!   (`[guards]` in `serve.toml`).

pub mod error;
pub mod injection;
pub mod output;
pub mod settings;

pub use error::GuardError;
pub use settings::{GuardKind, GuardMode, GuardModes, GuardsConfig};

/// One thing a guard did, as responses, the request log, the audit log and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardAction {
    pub guard: GuardKind,
    /// `log` (seen, let through), `block` or `redact`.
    pub action: GuardMode,
    /// What was found, without the sensitive text itself: `email`, `canary`,
    /// `verbatim span of 14 words`, `rule ignore_previous`, `score 0.97`.
    pub detail: String,
}
