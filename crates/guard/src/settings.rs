//! Which guard does what: `off | log | block | redact` per guard, set in `serve.toml`:
//!
//! ```toml
//! [guards]
//! prompt_injection = "block"     # user content: off | log | block
//! retrieved_injection = "block"  # knowledge-base chunks: off | log | block (block = dropped)
//! system_prompt_leak = "redact"  # answers: off | log | block | redact
//! output_pii = "redact"          # answers: off | log | block | redact
//!
//! [guards.models.support]        # a served name, adapter or registry name (`support` covers `support@3`)
//! output_pii = "log"
//!
//! [guards.keys.analytics]        # an API key's name (`ferrotune keys list`); wins over the model's
//! output_pii = "off"
//! ```
//!
//! Precedence: key, then model, then the `[guards]` defaults. Defaults are `log` for every
//! guard: actions are counted and logged, no request changes until an operator chooses to block.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::GuardError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    Off,
    #[default]
    Log,
    Block,
    Redact,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Off => "off",
            GuardMode::Log => "log",
            GuardMode::Block => "block",
            GuardMode::Redact => "redact",
        }
    }

    pub fn is_on(self) -> bool {
        self != GuardMode::Off
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// Prompt injection in the user's own content (OWASP LLM01, direct).
    PromptInjection,
    /// Prompt injection in a retrieved knowledge-base chunk (LLM01, indirect).
    RetrievedInjection,
    /// The system prompt (its canary or a long verbatim span) in an answer (LLM07).
    SystemPromptLeak,
    /// Personal data in an answer (LLM02).
    OutputPii,
}

impl GuardKind {
    pub const ALL: [GuardKind; 4] = [
        GuardKind::PromptInjection,
        GuardKind::RetrievedInjection,
        GuardKind::SystemPromptLeak,
        GuardKind::OutputPii,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::PromptInjection => "prompt_injection",
            GuardKind::RetrievedInjection => "retrieved_injection",
            GuardKind::SystemPromptLeak => "system_prompt_leak",
            GuardKind::OutputPii => "output_pii",
        }
    }

    /// Modes that mean something for this guard: an input cannot be "redacted" (it is refused
    /// or let through), an answer can.
    pub fn allows(self, mode: GuardMode) -> bool {
        match self {
            GuardKind::PromptInjection | GuardKind::RetrievedInjection => mode != GuardMode::Redact,
            GuardKind::SystemPromptLeak | GuardKind::OutputPii => true,
        }
    }
}

/// Overrides for one model or key: only the guards named change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardModes {
    pub prompt_injection: Option<GuardMode>,
    pub retrieved_injection: Option<GuardMode>,
    pub system_prompt_leak: Option<GuardMode>,
    pub output_pii: Option<GuardMode>,
}

impl GuardModes {
    pub fn get(&self, kind: GuardKind) -> Option<GuardMode> {
        match kind {
            GuardKind::PromptInjection => self.prompt_injection,
            GuardKind::RetrievedInjection => self.retrieved_injection,
            GuardKind::SystemPromptLeak => self.system_prompt_leak,
            GuardKind::OutputPii => self.output_pii,
        }
    }
}

/// `[guards]` of `serve.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardsConfig {
    pub prompt_injection: GuardMode,
    pub retrieved_injection: GuardMode,
    pub system_prompt_leak: GuardMode,
    pub output_pii: GuardMode,
    /// Injection classifier file (`ferrotune guard train --out`); default: the bundled one.
    pub injection_model: Option<PathBuf>,
    /// Probability at or above which content counts as an injection; default: the model's own
    /// threshold (chosen at 1% false positives on its validation split).
    pub injection_threshold: Option<f32>,
    /// Words of the system prompt that, repeated verbatim in an answer, count as a leak.
    pub leak_min_words: usize,
    /// Per served name / adapter / registry name.
    pub models: BTreeMap<String, GuardModes>,
    /// Per API key name.
    pub keys: BTreeMap<String, GuardModes>,
}

impl Default for GuardsConfig {
    fn default() -> Self {
        Self {
            prompt_injection: GuardMode::Log,
            retrieved_injection: GuardMode::Log,
            system_prompt_leak: GuardMode::Log,
            output_pii: GuardMode::Log,
            injection_model: None,
            injection_threshold: None,
            leak_min_words: 12,
            models: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

/// The four modes one request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub prompt_injection: GuardMode,
    pub retrieved_injection: GuardMode,
    pub system_prompt_leak: GuardMode,
    pub output_pii: GuardMode,
}

impl Resolved {
    pub fn get(&self, kind: GuardKind) -> GuardMode {
        match kind {
            GuardKind::PromptInjection => self.prompt_injection,
            GuardKind::RetrievedInjection => self.retrieved_injection,
            GuardKind::SystemPromptLeak => self.system_prompt_leak,
            GuardKind::OutputPii => self.output_pii,
        }
    }

    /// Any guard looks at the answer.
    pub fn watches_output(&self) -> bool {
        self.system_prompt_leak.is_on() || self.output_pii.is_on()
    }
}

impl GuardsConfig {
    pub fn default_mode(&self, kind: GuardKind) -> GuardMode {
        match kind {
            GuardKind::PromptInjection => self.prompt_injection,
            GuardKind::RetrievedInjection => self.retrieved_injection,
            GuardKind::SystemPromptLeak => self.system_prompt_leak,
            GuardKind::OutputPii => self.output_pii,
        }
    }

    /// Modes for a request to `models` (the names it goes by, most specific first: as the
    /// client named it, the adapter, the registry name) from the key named `key`.
    pub fn resolve(&self, models: &[&str], key: Option<&str>) -> Resolved {
        let pick = |kind: GuardKind| {
            key.and_then(|k| self.keys.get(k))
                .and_then(|m| m.get(kind))
                .or_else(|| models.iter().find_map(|n| self.models.get(*n).and_then(|m| m.get(kind))))
                .unwrap_or_else(|| self.default_mode(kind))
        };
        Resolved {
            prompt_injection: pick(GuardKind::PromptInjection),
            retrieved_injection: pick(GuardKind::RetrievedInjection),
            system_prompt_leak: pick(GuardKind::SystemPromptLeak),
            output_pii: pick(GuardKind::OutputPii),
        }
    }

    /// Every mode is one its guard allows, and the numbers are usable.
    pub fn validate(&self) -> Result<(), GuardError> {
        let check = |field: String, kind: GuardKind, mode: GuardMode| {
            if kind.allows(mode) {
                Ok(())
            } else {
                Err(GuardError::InvalidSetting {
                    field,
                    reason: format!(
                        "`{}` is not a mode of this guard (an input is blocked or let through: use off, log or block)",
                        mode.as_str()
                    ),
                })
            }
        };
        for kind in GuardKind::ALL {
            check(format!("guards.{}", kind.as_str()), kind, self.default_mode(kind))?;
        }
        for (scope, table) in [("models", &self.models), ("keys", &self.keys)] {
            for (name, modes) in table {
                for kind in GuardKind::ALL {
                    if let Some(mode) = modes.get(kind) {
                        check(format!("guards.{scope}.{name}.{}", kind.as_str()), kind, mode)?;
                    }
                }
            }
        }
        if let Some(t) = self.injection_threshold
            && !(t > 0.0 && t < 1.0)
        {
            return Err(GuardError::InvalidSetting {
                field: "guards.injection_threshold".into(),
                reason: format!("must be in (0, 1), got {t}"),
            });
        }
        if self.leak_min_words < 4 {
            return Err(GuardError::InvalidSetting {
                field: "guards.leak_min_words".into(),
                reason: format!(
                    "must be at least 4 (shorter spans match ordinary phrases), got {}",
                    self.leak_min_words
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> GuardsConfig {
        #[derive(Deserialize)]
        struct Wrap {
            guards: GuardsConfig,
        }
        let w: Wrap = toml_like(s);
        w.guards
    }

    // The crate has no TOML dependency; the table shapes are the same in JSON.
    fn toml_like<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_str(s).expect("test config parses")
    }

    #[test]
    fn a_key_override_beats_the_model_which_beats_the_default() {
        let g = parse(
            r#"{"guards": {"output_pii": "redact",
                "models": {"support": {"output_pii": "block", "system_prompt_leak": "off"}},
                "keys": {"analytics": {"output_pii": "off"}}}}"#,
        );
        g.validate().expect("valid settings");
        let r = g.resolve(&["support@3", "support"], Some("analytics"));
        assert_eq!(r.output_pii, GuardMode::Off);
        assert_eq!(r.system_prompt_leak, GuardMode::Off);
        assert_eq!(r.prompt_injection, GuardMode::Log);
        let r = g.resolve(&["support@3", "support"], Some("someone"));
        assert_eq!(r.output_pii, GuardMode::Block);
        let r = g.resolve(&["base"], None);
        assert_eq!(r.output_pii, GuardMode::Redact);
        assert!(r.watches_output());
    }

    #[test]
    fn redacting_an_input_is_refused_naming_the_setting() {
        let g = parse(r#"{"guards": {"keys": {"k": {"prompt_injection": "redact"}}}}"#);
        let e = g.validate().expect_err("redact on an input is refused").to_string();
        assert!(e.contains("guards.keys.k.prompt_injection"), "{e}");
        let g = parse(r#"{"guards": {"injection_threshold": 1.5}}"#);
        assert!(
            g.validate().expect_err("threshold out of range").to_string().contains("injection_threshold")
        );
    }

    #[test]
    fn unknown_guard_names_are_refused() {
        let r: Result<GuardModes, _> = serde_json::from_str(r#"{"output_pi": "off"}"#);
        assert!(r.expect_err("unknown guard").to_string().contains("output_pi"));
    }
}
