//! The guards of issue #20 on the request path; what they look for lives in `ferrotune_guard`,
//! when and on what they run lives here.
//!
//! - **Input** ([`RequestGuards::check_input`]): every user message of a chat, every prompt of a
//!   completion, scored by the injection classifier. `log`: counted, the request goes on;
//!   `block`: 400 `prompt_injection_detected` naming the field.
//! - **Retrieved chunks** (`crate::grounding`, with [`RequestGuards::retrieval`]): a flagged chunk
//!   is left out of the prompt under `block` and listed in `sources` as dropped; under `log` it
//!   stays, listed as flagged.
//! - **Answers** ([`RequestGuards::output_guard`], one `OutputGuard` per choice): personal data
//!   and system-prompt leaks, redacted or ended (`finish_reason: "content_filter"`), streaming
//!   included. Under `block` / `redact` the first system message gets a canary line
//!   ([`RequestGuards::protect_system`]); `log` adds none (verbatim spans only).
//! - **Visible**: each action goes to `/metrics` (`ferrotune:guard_actions_total{guard,action}`),
//!   the request log and the audit entry as it happens ([`RequestGuards::note`]), and into the
//!   response's `guards` list ([`RequestGuards::all`]) — absent when no guard acted.
//!
//! The common path stays cheap: with the output guards off (or `system_prompt_leak` with no
//! system prompt to protect) no filter exists and the token path is unchanged.

use std::sync::Arc;

use ferrotune_guard::injection::InjectionDetector;
use ferrotune_guard::output::{OutputConfig, OutputGuard, canary, with_canary};
use ferrotune_guard::settings::Resolved;
use ferrotune_guard::{GuardAction, GuardError, GuardKind, GuardMode, GuardsConfig};
use ferrotune_model::Message;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::generation::Target;
use crate::metrics::Metrics;
use crate::record::RequestRecord;

/// What every request shares: the settings, the injection classifier (loaded once) and the
/// canary secret (random per server start, never sent to a client).
pub struct Guards {
    cfg: GuardsConfig,
    injection: InjectionDetector,
    secret: [u8; 32],
}

impl Guards {
    /// The classifier `injection_model` names (default: the bundled one), at
    /// `injection_threshold` when set.
    pub fn load(cfg: &GuardsConfig) -> Result<Self, GuardError> {
        let detector = match &cfg.injection_model {
            Some(path) => InjectionDetector::from_file(path)?,
            None => InjectionDetector::bundled(),
        };
        Ok(Self::with_detector(cfg, detector))
    }

    /// The bundled classifier, whatever `injection_model` says ([`crate::AppState::new`]'s
    /// default; `build_state` uses [`Guards::load`]).
    pub fn bundled(cfg: &GuardsConfig) -> Self {
        Self::with_detector(cfg, InjectionDetector::bundled())
    }

    fn with_detector(cfg: &GuardsConfig, detector: InjectionDetector) -> Self {
        let injection = match cfg.injection_threshold {
            Some(t) => detector.with_threshold(t),
            None => detector,
        };
        Self { cfg: cfg.clone(), injection, secret: rand::random() }
    }

    /// A fixed canary secret instead of a random one. For tests, which need to know the canary;
    /// a server whose secret is known has canaries a client can predict.
    pub fn with_secret(mut self, secret: [u8; 32]) -> Self {
        self.secret = secret;
        self
    }

    /// The canary this server puts into `system_prompt` (all its system messages joined by
    /// `\n`).
    pub fn canary_for(&self, system_prompt: &str) -> String {
        canary(&self.secret, system_prompt)
    }

    pub fn config(&self) -> &GuardsConfig {
        &self.cfg
    }

    /// The modes a request to `target` from `caller` runs under: the names it goes by, most
    /// specific first (as the client named it, the adapter, the registry artifact of
    /// `support@3`), and the key's name.
    pub fn resolve(&self, target: &Target, caller: &Caller) -> Resolved {
        let mut names = vec![target.name.as_str()];
        names.extend(target.adapter.as_deref());
        names.extend(target.version.as_ref().map(|v| v.name.as_str()));
        self.cfg.resolve(&names, caller.key_name())
    }
}

/// One thing a guard did, as the response lists it: [`GuardAction`] plus, for an answer, the
/// choice it happened in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Acted {
    #[schema(schema_with = guard_kind_schema)]
    pub guard: GuardKind,
    #[schema(schema_with = guard_mode_schema)]
    pub action: GuardMode,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

/// `guard`'s values, from [`GuardKind::ALL`] (the guard crate knows nothing of OpenAPI).
fn guard_kind_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(GuardKind::ALL.iter().map(|k| k.as_str())))
        .build()
}

/// `action`'s values: the mode that acted (`off` never does).
fn guard_mode_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let acting = [GuardMode::Log, GuardMode::Block, GuardMode::Redact];
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(acting.map(GuardMode::as_str))).build()
}

/// The settings the response cache's key must hold: a redacted answer is not the answer to a
/// request whose key has redaction off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputGuardKey {
    pub output_pii: GuardMode,
    pub system_prompt_leak: GuardMode,
    pub leak_min_words: usize,
}

/// One request's guards: its modes, what it protects, and what the guards did so far.
pub struct RequestGuards {
    pub modes: Resolved,
    shared: Arc<Guards>,
    metrics: Arc<Metrics>,
    record: Arc<RequestRecord>,
    /// The client's system messages (without the canary), when the leak guard is on.
    system_prompt: Option<String>,
    canary: Option<String>,
    /// Before generation (user content, retrieved chunks); answers (with their choice index).
    input: Vec<Acted>,
    output: Vec<Acted>,
}

impl RequestGuards {
    pub fn new(state: &AppState, target: &Target, caller: &Caller, record: &Arc<RequestRecord>) -> Self {
        Self {
            modes: state.guards.resolve(target, caller),
            shared: state.guards.clone(),
            metrics: state.metrics.clone(),
            record: record.clone(),
            system_prompt: None,
            canary: None,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Count `a` in `/metrics`, the request log and the audit entry, and keep it for the
    /// response (`index`: the choice, for an answer).
    pub fn note(&mut self, a: GuardAction, index: Option<usize>) {
        self.metrics.count_guard(&a);
        self.record.add_guard(&a);
        let acted = Acted { guard: a.guard, action: a.action, detail: a.detail, index };
        if index.is_some() { self.output.push(acted) } else { self.input.push(acted) }
    }

    /// Score content the client sent (`param` names it: `messages[2].content`, `prompt[1]`).
    pub fn check_input(&mut self, param: &str, text: &str) -> Result<(), ApiError> {
        let mode = self.modes.prompt_injection;
        if !mode.is_on() || text.trim().is_empty() {
            return Ok(());
        }
        let verdict = self.shared.injection.check(text);
        if !verdict.flagged {
            return Ok(());
        }
        let detail = verdict.detail();
        self.note(
            GuardAction {
                guard: GuardKind::PromptInjection,
                action: mode,
                detail: format!("{param}: {detail}"),
            },
            None,
        );
        if mode == GuardMode::Block {
            return Err(ApiError::PromptInjection { param: param.to_string(), detail });
        }
        Ok(())
    }

    /// The classifier and mode for retrieved chunks; `None` when that guard is off.
    pub fn retrieval(&self) -> Option<(&InjectionDetector, GuardMode)> {
        let mode = self.modes.retrieved_injection;
        mode.is_on().then_some((&self.shared.injection, mode))
    }

    /// Remember the system prompt the leak guard protects and, under `block` / `redact`, put the
    /// canary into the first system message. Call before grounding adds the retrieved chunks
    /// (quoting those is what grounding is for, not a leak).
    pub fn protect_system(&mut self, msgs: &mut [Message]) {
        let mode = self.modes.system_prompt_leak;
        if !mode.is_on() {
            return;
        }
        let system: Vec<usize> =
            msgs.iter().enumerate().filter(|(_, m)| m.role == "system").map(|(i, _)| i).collect();
        let Some(&first) = system.first() else { return };
        let text = system.iter().map(|&i| msgs[i].content.as_str()).collect::<Vec<_>>().join("\n");
        if text.trim().is_empty() {
            return;
        }
        if matches!(mode, GuardMode::Block | GuardMode::Redact) {
            let c = self.shared.canary_for(&text);
            msgs[first].content = with_canary(&msgs[first].content, &c);
            self.canary = Some(c);
        }
        self.system_prompt = Some(text);
    }

    /// The modes the answer's filter runs under: the leak guard has nothing to look for without
    /// a system prompt.
    fn output_modes(&self) -> (GuardMode, GuardMode) {
        let leak = if self.system_prompt.is_some() { self.modes.system_prompt_leak } else { GuardMode::Off };
        (self.modes.output_pii, leak)
    }

    /// Whether an answer may change (redacted or cut short) — what token logprobs would give away.
    pub fn rewrites_output(&self) -> bool {
        let (pii, leak) = self.output_modes();
        [pii, leak].iter().any(|m| matches!(m, GuardMode::Block | GuardMode::Redact))
    }

    /// Logprobs show every generated token, redacted ones included: refused (400 naming
    /// `param`) while an output guard may block or redact this request's answer.
    pub fn check_logprobs(&self, param: &str) -> Result<(), ApiError> {
        if self.rewrites_output() {
            let (pii, leak) = self.output_modes();
            return Err(ApiError::field(
                param,
                format!(
                    "token logprobs would show the text the output guards remove (output_pii = {}, system_prompt_leak = {} for this model and key); ask without them",
                    pii.as_str(),
                    leak.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// A filter for one choice's text; `None` when no output guard has anything to do.
    pub fn output_guard(&self) -> Option<OutputGuard> {
        let (pii, leak) = self.output_modes();
        if !pii.is_on() && !leak.is_on() {
            return None;
        }
        Some(OutputGuard::new(OutputConfig {
            pii,
            leak,
            system_prompt: self.system_prompt.clone(),
            canary: self.canary.clone(),
            leak_min_words: self.shared.cfg.leak_min_words,
        }))
    }

    /// A whole answer (not streamed) through the filter: the text to send, and whether a
    /// `block` guard ended it (then `finish_reason: "content_filter"`).
    pub fn filter(&mut self, index: usize, text: String) -> (String, bool) {
        let Some(mut g) = self.output_guard() else { return (text, false) };
        let r = g.push(&text);
        let (mut out, mut blocked) = (r.text, r.blocked);
        if !blocked {
            let rest = g.finish();
            out.push_str(&rest.text);
            blocked = rest.blocked;
        }
        self.note_output(index, g.take_actions());
        (out, blocked)
    }

    pub fn note_output(&mut self, index: usize, actions: Vec<GuardAction>) {
        for a in actions {
            self.note(a, Some(index));
        }
    }

    /// A guard ended an answer: such a response is not cached.
    pub fn blocked_output(&self) -> bool {
        self.output.iter().any(|a| a.action == GuardMode::Block)
    }

    pub fn cache_key(&self) -> OutputGuardKey {
        let (output_pii, system_prompt_leak) = self.output_modes();
        OutputGuardKey { output_pii, system_prompt_leak, leak_min_words: self.shared.cfg.leak_min_words }
    }

    /// A cached body's `guards` (what the guards did to its answers) happened again: count them.
    pub fn replay(&mut self, cached: &[Acted]) {
        for a in cached {
            self.note(
                GuardAction { guard: a.guard, action: a.action, detail: a.detail.clone() },
                Some(a.index.unwrap_or(0)),
            );
        }
    }

    /// Everything the guards did, as the response's `guards`; `None` when nothing.
    pub fn all(&self) -> Option<Vec<Acted>> {
        if self.input.is_empty() && self.output.is_empty() {
            return None;
        }
        Some(self.input.iter().chain(&self.output).cloned().collect())
    }

    /// The `guards` of the body as the response cache keeps it: only what the guards did to the
    /// answers (the input's actions happen, and are counted, again on each request).
    pub fn answers(&self) -> Option<Vec<Acted>> {
        (!self.output.is_empty()).then(|| self.output.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keys::ApiKey;
    use crate::registry::VersionRef;

    fn settings() -> GuardsConfig {
        let mut cfg = GuardsConfig::default();
        cfg.models.insert(
            "support".into(),
            ferrotune_guard::GuardModes { output_pii: Some(GuardMode::Block), ..Default::default() },
        );
        cfg.keys.insert(
            "analytics".into(),
            ferrotune_guard::GuardModes { output_pii: Some(GuardMode::Off), ..Default::default() },
        );
        cfg
    }

    fn caller(name: &str) -> Caller {
        Caller(Some(Arc::new(ApiKey { name: name.into(), ..Default::default() })))
    }

    #[test]
    fn a_request_is_resolved_by_every_name_it_goes_by_and_by_its_key() {
        let g = Guards::bundled(&settings());
        // `support@canary` runs as adapter `support@3` of the registry artifact `support`.
        let registry = Target {
            name: "support@canary".into(),
            adapter: Some("support@3".into()),
            version: Some(VersionRef { id: 1, name: "support".into(), version: 3 }),
        };
        assert_eq!(g.resolve(&registry, &caller("someone")).output_pii, GuardMode::Block);
        assert_eq!(
            g.resolve(&registry, &Caller(None)).output_pii,
            GuardMode::Block,
            "auth off: the model's setting"
        );
        assert_eq!(g.resolve(&registry, &caller("analytics")).output_pii, GuardMode::Off, "the key's wins");
        let by_name = Target { name: "support".into(), adapter: Some("support".into()), version: None };
        assert_eq!(g.resolve(&by_name, &caller("someone")).output_pii, GuardMode::Block);
        let base = Target { name: "smollm2".into(), adapter: None, version: None };
        assert_eq!(g.resolve(&base, &caller("someone")).output_pii, GuardMode::Log, "the [guards] default");
    }

    #[test]
    fn canaries_are_per_secret_and_system_prompt() {
        let a = Guards::bundled(&GuardsConfig::default()).with_secret([1; 32]);
        let b = Guards::bundled(&GuardsConfig::default()).with_secret([2; 32]);
        assert_eq!(
            a.canary_for("Be brief."),
            a.canary_for("Be brief."),
            "the same prompt renders the same (cacheable)"
        );
        assert_ne!(a.canary_for("Be brief."), a.canary_for("Be kind."));
        assert_ne!(
            a.canary_for("Be brief."),
            b.canary_for("Be brief."),
            "another server's secret, another canary"
        );
        let random = Guards::bundled(&GuardsConfig::default());
        assert_ne!(
            random.canary_for("x"),
            Guards::bundled(&GuardsConfig::default()).canary_for("x"),
            "a random secret per start"
        );
    }
}
