//! Model cards: `ferrotune registry card NAME@VERSION --out DIR` writes `DIR/README.md` from a
//! version's [`Lineage`] and the owner's `card.toml` ([`CardToml`]).
//!
//! Every number comes from the lineage; every statement the record cannot make (intended use,
//! risks, the provider's name …) comes from card.toml, and where card.toml is silent the card
//! says `TODO (owner): …` in place and lists it under "Missing information" — nothing is
//! invented. Sections follow Hugging Face's model card template, then the compliance maps
//! (`compliance`: EU AI Act Annex IV, the GPAI one-third compute line, NIST AI RMF). The front
//! matter (`front_matter`) is what `huggingface_hub.ModelCard` reads.
//!
//! ```toml
//! # card.toml: every key optional; free text is Markdown. [`FIELDS`] lists what each answers.
//! description = "Drafts replies to support tickets in the house style."
//! developers = "Support tooling team"
//! license = "apache-2.0"                 # one Hub license id
//! language = ["en"]
//! tags = ["customer-support"]            # added to `ferrotune` (+ `lora`)
//! datasets = ["org/support-chats"]       # Hub dataset ids, front matter only
//! intended_use = "…"                     # also out_of_scope_use, bias_risks, limitations, recommendations
//! provider = "Example Ltd, Dublin"       # EU AI Act: also intended_purpose, data_provenance,
//!                                        # human_oversight, cybersecurity, metrics_rationale,
//!                                        # risk_management, lifecycle_changes, harmonised_standards,
//!                                        # declaration_of_conformity, post_market_monitoring
//! base_model_repo = "org/base"           # only for a base ferrotune does not know
//! base_training_flops = 1.6e21           # overrides the built-in table (GPAI comparison)
//! base_training_flops_source = "tech report, table 2"
//! ```

mod compliance;
mod front_matter;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{GovernError, Result};
use crate::records::{ArtifactKind, Lineage};
use crate::render::{
    arrow, bytes, count_short, dataset_role, duration, estimate_text, eval_view, kind_word, sci,
    seconds_between, status_word, thousands,
};
use compliance::KnownBase;

/// The owner's statements about a model (`card.toml`); every field is optional. Free text is
/// Markdown and goes into the card as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardToml {
    // Model details
    pub description: Option<String>,
    pub developers: Option<String>,
    pub contact: Option<String>,
    /// SPDX identifier (`apache-2.0`), as the Hub's `license` field takes it.
    pub license: Option<String>,
    /// ISO 639-1 codes.
    pub language: Option<Vec<String>>,
    /// Extra front-matter tags (`ferrotune`, and `lora` for adapters, are always there).
    pub tags: Option<Vec<String>>,
    /// Hugging Face dataset ids for the front matter (the local files are described in the body).
    pub datasets: Option<Vec<String>>,
    /// The base model's Hub repo id, when ferrotune's built-in list does not know it.
    pub base_model_repo: Option<String>,
    /// The base model's training compute, overriding the built-in table (GPAI comparison).
    pub base_training_flops: Option<f64>,
    pub base_training_flops_source: Option<String>,
    // Uses, risks
    pub intended_use: Option<String>,
    pub out_of_scope_use: Option<String>,
    pub bias_risks: Option<String>,
    pub limitations: Option<String>,
    pub recommendations: Option<String>,
    // EU AI Act (Annex IV)
    pub provider: Option<String>,
    pub intended_purpose: Option<String>,
    pub data_provenance: Option<String>,
    pub human_oversight: Option<String>,
    pub cybersecurity: Option<String>,
    pub metrics_rationale: Option<String>,
    pub risk_management: Option<String>,
    pub lifecycle_changes: Option<String>,
    pub harmonised_standards: Option<String>,
    pub declaration_of_conformity: Option<String>,
    pub post_market_monitoring: Option<String>,
}

/// A card.toml field the card needs, where it shows, and what the owner should write.
pub struct Field {
    pub key: &'static str,
    pub section: &'static str,
    pub what: &'static str,
}

/// The fields whose absence is a `TODO (owner)`. `base_model_repo` and `base_training_flops`
/// are needed only for a base model ferrotune does not know; `tags`, `datasets` and
/// `base_training_flops_source` never are.
pub const FIELDS: &[Field] = &[
    Field {
        key: "description",
        section: "Model Details",
        what: "one paragraph on what the model does, for whom, and how it differs from the base model",
    },
    Field {
        key: "developers",
        section: "Model Details",
        what: "the person or organisation that developed the model",
    },
    Field {
        key: "contact",
        section: "Model Details",
        what: "how to reach the owner (address or team channel)",
    },
    Field {
        key: "license",
        section: "Model Details",
        what: "the SPDX license identifier, compatible with the base model's license",
    },
    Field {
        key: "language",
        section: "Model Details",
        what: "the languages (ISO 639-1 codes) the model is meant for",
    },
    Field {
        key: "base_model_repo",
        section: "Model Details",
        what: "the base model's Hugging Face repo id (ferrotune's built-in list does not know this base)",
    },
    Field {
        key: "intended_use",
        section: "Uses",
        what: "the direct use: tasks, users and settings the model is meant for",
    },
    Field {
        key: "out_of_scope_use",
        section: "Uses",
        what: "uses the model is not meant or not suited for, and misuse to guard against",
    },
    Field {
        key: "bias_risks",
        section: "Bias, Risks, and Limitations",
        what: "known biases and risks, technical and sociotechnical",
    },
    Field {
        key: "limitations",
        section: "Bias, Risks, and Limitations",
        what: "known limitations: inputs and situations where it fails or was not tested",
    },
    Field {
        key: "recommendations",
        section: "Bias, Risks, and Limitations",
        what: "what users and deployers should do about these risks and limitations",
    },
    Field { key: "provider", section: "EU AI Act Annex IV", what: "the provider's name and address" },
    Field {
        key: "intended_purpose",
        section: "EU AI Act Annex IV",
        what: "the intended purpose as the provider states it (Annex IV 1(a))",
    },
    Field {
        key: "data_provenance",
        section: "EU AI Act Annex IV",
        what: "where the training data came from and how it was selected, labelled and cleaned (Annex IV 2(d))",
    },
    Field {
        key: "human_oversight",
        section: "EU AI Act Annex IV",
        what: "the human oversight measures (Article 14) and how deployers apply them",
    },
    Field {
        key: "cybersecurity",
        section: "EU AI Act Annex IV",
        what: "the cybersecurity measures in place (Annex IV 2(h))",
    },
    Field {
        key: "metrics_rationale",
        section: "EU AI Act Annex IV",
        what: "why these metrics and this test data measure fitness for the intended purpose (Annex IV 4)",
    },
    Field {
        key: "risk_management",
        section: "EU AI Act Annex IV",
        what: "the risk management system (Article 9), or where it is documented",
    },
    Field {
        key: "lifecycle_changes",
        section: "EU AI Act Annex IV",
        what: "changes made or pre-determined by the provider beyond the recorded versions (Annex IV 6)",
    },
    Field {
        key: "harmonised_standards",
        section: "EU AI Act Annex IV",
        what: "the harmonised standards applied, or the other solutions and specifications used (Annex IV 7)",
    },
    Field {
        key: "declaration_of_conformity",
        section: "EU AI Act Annex IV",
        what: "a reference to the EU declaration of conformity (Article 47), or why none applies",
    },
    Field {
        key: "post_market_monitoring",
        section: "EU AI Act Annex IV",
        what: "the post-market monitoring system and plan (Article 72)",
    },
    Field {
        key: "base_training_flops",
        section: "GPAI threshold",
        what: "the base model's training compute in FLOPs, with `base_training_flops_source`",
    },
];

/// The in-place marker for an unfilled field.
pub(crate) fn todo(key: &str) -> String {
    let what = FIELDS.iter().find(|f| f.key == key).map_or("fill this in", |f| f.what);
    format!("TODO (owner): {what} (card.toml `{key}`)")
}

/// The key of the `key = value` line holding byte `at` of a TOML file (`?` if none).
fn key_at(text: &str, at: usize) -> String {
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_string(),
        None => line.trim().to_string(),
    }
}

impl CardToml {
    /// Read `card.toml`; `None` gives the empty card (every statement a TODO).
    pub fn load(path: Option<&Path>) -> Result<CardToml> {
        let Some(path) = path else { return Ok(CardToml::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| GovernError::Io { path: path.to_path_buf(), error: source })?;
        let bad =
            |field: String, reason: String| GovernError::BadFile { path: path.to_path_buf(), field, reason };
        let card: CardToml = toml::from_str(&text).map_err(|e| {
            let field = e.span().map_or_else(|| "?".to_string(), |s| key_at(&text, s.start));
            bad(field, e.message().to_string())
        })?;
        if let Some(f) = card.base_training_flops
            && !(f.is_finite() && f > 0.0)
        {
            return Err(bad(
                "base_training_flops".into(),
                format!("expected a positive number of FLOPs, got {f}"),
            ));
        }
        for (key, value) in [("license", &card.license), ("base_model_repo", &card.base_model_repo)] {
            if value.as_deref().is_some_and(|v| v.trim().contains(char::is_whitespace)) {
                return Err(bad(key.into(), "expected one identifier as the Hugging Face Hub takes it (`apache-2.0`, `other`, `org/name`), without spaces".into()));
            }
        }
        Ok(card)
    }

    fn field(&self, key: &str) -> Option<Value> {
        serde_json::to_value(self).ok()?.get(key).cloned()
    }

    /// A field as text (lists joined with `, `); `None` when absent or blank.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        let s = match self.field(key)? {
            Value::String(s) => s,
            Value::Array(_) => self.list(key).join(", "),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    /// A list field without blank entries.
    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        match self.field(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The field's text, or its TODO marker.
    pub(crate) fn fill(&self, key: &str) -> String {
        self.text(key).unwrap_or_else(|| todo(key))
    }
}

/// What is known about the base model: the recorded name, its Hub id, and the built-in entry.
pub(crate) struct Base {
    name: Option<String>,
    repo: Option<String>,
    known: Option<&'static KnownBase>,
}

impl Base {
    fn of(l: &Lineage, card: &CardToml) -> Base {
        let name = l.base_model.as_ref().map(|m| m.name.clone()).or_else(|| {
            l.run.as_ref().and_then(|r| r.config.get("model")).and_then(Value::as_str).map(String::from)
        });
        let repo = card.text("base_model_repo");
        let matches = |k: &&KnownBase| {
            name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(k.name) || n.eq_ignore_ascii_case(k.repo))
                || repo.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(k.repo))
        };
        let known = compliance::KNOWN_BASES.iter().find(matches);
        let repo = repo.or_else(|| known.map(|k| k.repo.to_string()));
        Base { name, repo, known }
    }

    /// The front matter's `base_model`: the Hub repo id, else the recorded name.
    fn hub_id(&self) -> Option<String> {
        self.repo.clone().or_else(|| self.name.clone())
    }
}

/// The fields the card marks TODO for this lineage, in [`FIELDS`] order.
pub fn missing(l: &Lineage, card: &CardToml) -> Vec<&'static Field> {
    let base = Base::of(l, card);
    FIELDS
        .iter()
        .filter(|f| match f.key {
            "base_model_repo" => base.repo.is_none(),
            "base_training_flops" => compliance::needs_base_flops(card, &base),
            key => card.text(key).is_none(),
        })
        .collect()
}

/// A table cell: pipes escaped, on one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(json_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A JSON object's scalar entries as `key: value` (nested objects one level down as
/// `key.sub`), at most `max`.
fn summary(v: &Value, max: usize) -> String {
    let mut parts = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            match v {
                Value::Object(inner) => parts.extend(
                    inner
                        .iter()
                        .filter(|(_, x)| !x.is_object() && !x.is_array())
                        .map(|(k2, x)| format!("{k}.{k2}: {}", json_text(x))),
                ),
                Value::Array(_) => {}
                x => parts.push(format!("{k}: {}", json_text(x))),
            }
        }
    }
    let more = parts.len().saturating_sub(max);
    parts.truncate(max);
    if more > 0 {
        parts.push(format!("… {more} more"));
    }
    parts.join(", ")
}

fn files_table(out: &mut String, files: &[crate::records::FileHash]) {
    out.push_str("| file | bytes | sha256 |\n|---|---:|---|\n");
    for f in files {
        let _ = writeln!(out, "| `{}` | {} | `{}` |", cell(&f.path), thousands(f.bytes), f.sha256);
    }
    out.push('\n');
}

fn header(out: &mut String, l: &Lineage, card: &CardToml, base: &Base) {
    let a = &l.artifact;
    let _ = writeln!(out, "# {}\n", a.reference());
    let what = match a.kind {
        ArtifactKind::Adapter => "A LoRA adapter",
        ArtifactKind::Model => "A fully fine-tuned model",
    };
    let from = base.hub_id().map_or(String::new(), |b| format!(" fine-tuned from `{b}`"));
    let _ = writeln!(
        out,
        "{what}{from} with ferrotune. This card is generated from the registry record of `{}` (artifact id {}); every number in it comes from that record; statements the record cannot make come from the owner's card.toml.\n",
        a.reference(),
        a.id
    );
    if a.disabled {
        let _ = writeln!(
            out,
            "> **Disabled** (kill switch): {}. This version is not served and cannot be promoted.\n",
            a.disabled_reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    let missing = missing(l, card);
    out.push_str("## Missing information\n\n");
    if missing.is_empty() {
        out.push_str("None: card.toml answers every item this card asks the owner for.\n\n");
    } else {
        let _ = writeln!(
            out,
            "{} item{} for the owner to fill in card.toml (each appears as `TODO (owner)` below):\n",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        );
        for f in missing {
            let _ = writeln!(out, "- `{}` ({}): {}", f.key, f.section, f.what);
        }
        out.push('\n');
    }
}

fn model_details(out: &mut String, l: &Lineage, card: &CardToml, base: &Base) {
    let a = &l.artifact;
    out.push_str("## Model Details\n\n### Model Description\n\n");
    let _ = writeln!(out, "{}\n", card.fill("description"));
    let arch = l
        .base_model
        .as_ref()
        .and_then(|m| {
            ["architecture", "model_type", "arch"]
                .iter()
                .find_map(|k| m.config.get(*k).and_then(Value::as_str))
        })
        .map_or(String::new(), |s| format!(" ({s})"));
    let model_type = match a.kind {
        ArtifactKind::Adapter => format!("LoRA adapter (PEFT format) for a causal language model{arch}"),
        ArtifactKind::Model => format!("fully fine-tuned causal language model{arch}"),
    };
    let _ = writeln!(out, "- **Developed by:** {}", card.fill("developers").replace('\n', "\n  "));
    let _ = writeln!(out, "- **Contact:** {}", card.fill("contact").replace('\n', "\n  "));
    let _ = writeln!(out, "- **Model type:** {model_type}");
    let _ = writeln!(out, "- **Language(s):** {}", card.fill("language"));
    let _ = writeln!(out, "- **License:** {}", card.fill("license"));
    let finetuned = match (&base.repo, &l.base_model) {
        (Some(repo), _) => format!("`{repo}`"),
        (None, _) => todo("base_model_repo"),
    };
    let _ = write!(out, "- **Finetuned from model:** {finetuned}");
    match &l.base_model {
        Some(m) => {
            let params = m
                .parameters
                .map_or("parameters not recorded".into(), |p| format!("{} parameters", count_short(p)));
            let _ = writeln!(out, " (recorded as `{}`, {params}, files below)", m.name);
        }
        None => {
            let name =
                base.name.as_deref().map_or(String::new(), |n| format!(" (named `{n}` in the run's config)"));
            let _ = writeln!(out, "; base model record: not in the registry{name}");
        }
    }
    let aliases = if a.aliases.is_empty() { "none".into() } else { a.aliases.join(", ") };
    let _ = writeln!(
        out,
        "- **Registry reference:** `{}` (artifact id {}, registered {} by {}; aliases now: {aliases})",
        a.reference(),
        a.id,
        a.created,
        a.actor
    );
    let _ = writeln!(
        out,
        "- **Artifact folder:** `{}` ({}, {} files, {})\n",
        a.path,
        kind_word(a.kind),
        a.files.len(),
        bytes(a.files.iter().map(|f| f.bytes).sum())
    );
    out.push_str("### Files\n\n");
    files_table(out, &a.files);
    if let Some(m) = &l.base_model {
        let _ = writeln!(out, "### Base model files\n\n`{}` at `{}`:\n", m.name, m.path);
        files_table(out, &m.files);
        let config = summary(&m.config, 16);
        if !config.is_empty() {
            let _ = writeln!(out, "Base model configuration as loaded: {config}.\n");
        }
    }
}

fn uses(out: &mut String, l: &Lineage, card: &CardToml) {
    out.push_str("## Uses\n\n### Direct Use\n\n");
    let _ = writeln!(out, "{}\n", card.fill("intended_use"));
    out.push_str("### Out-of-Scope Use\n\n");
    let _ = writeln!(out, "{}\n", card.fill("out_of_scope_use"));
    out.push_str("## Bias, Risks, and Limitations\n\n");
    let _ = writeln!(out, "{}\n\n{}\n", card.fill("bias_risks"), card.fill("limitations"));
    if !l.evals.is_empty() {
        out.push_str("The measured performance is in [Evaluation](#evaluation); it holds for the recorded test data only.\n\n");
    }
    out.push_str("### Recommendations\n\n");
    let _ = writeln!(out, "{}\n", card.fill("recommendations"));
}

fn get_started(out: &mut String, l: &Lineage, base: &Base) {
    let a = &l.artifact;
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    out.push_str("## How to Get Started with the Model\n\n");
    let _ = writeln!(
        out,
        "Serve it behind the OpenAI-compatible API, named `{}` (pin this version as `{}`):\n",
        a.name,
        a.reference()
    );
    let base_name = l
        .base_model
        .as_ref()
        .map(|m| m.name.clone())
        .or_else(|| base.name.clone())
        .unwrap_or_else(|| "BASE_MODEL".into());
    out.push_str("```bash\n");
    match a.kind {
        ArtifactKind::Adapter => {
            // The server resolves registry references itself (files checked against these hashes).
            let _ = writeln!(
                out,
                "ferrotune serve --model {base_name}   # \"model\": \"{}\" = its champion, \"{}\" = this version",
                a.name,
                a.reference()
            );
        }
        ArtifactKind::Model => {
            let _ = writeln!(out, "ferrotune serve --model {} --served-model-name {}", a.path, a.name);
        }
    }
    out.push_str("```\n\n```python\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"YOUR_KEY\")\n");
    let model = if a.kind == ArtifactKind::Adapter { a.reference() } else { a.name.clone() };
    let _ = writeln!(
        out,
        "reply = client.chat.completions.create(model={}, messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}])",
        quote(&model)
    );
    out.push_str("print(reply.choices[0].message.content)\n```\n\n");
    let hub = base.hub_id().unwrap_or_else(|| "BASE_MODEL".into());
    match a.kind {
        ArtifactKind::Adapter => {
            out.push_str("With PEFT and Transformers:\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n");
            let _ = writeln!(out, "tokenizer = AutoTokenizer.from_pretrained({})", quote(&hub));
            let _ = writeln!(out, "base = AutoModelForCausalLM.from_pretrained({})", quote(&hub));
            let _ = writeln!(out, "model = PeftModel.from_pretrained(base, {})", quote(&a.path));
        }
        ArtifactKind::Model => {
            out.push_str("With Transformers:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n");
            let _ = writeln!(out, "tokenizer = AutoTokenizer.from_pretrained({})", quote(&a.path));
            let _ = writeln!(out, "model = AutoModelForCausalLM.from_pretrained({})", quote(&a.path));
        }
    }
    out.push_str("```\n\n");
}

/// Hyperparameters shown from the run's config, in this order (LoRA ones for LoRA runs).
const HYPERPARAMETERS: &[&str] = &[
    "method",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "rslora",
    "lr",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "scheduler",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "packing",
    "train_on_inputs",
    "seed",
    "dtype",
    "device",
    "devices",
];

fn training(out: &mut String, l: &Lineage) {
    out.push_str("## Training Details\n\n### Training Data\n\n");
    if l.datasets.is_empty() {
        out.push_str("No dataset is recorded for this version.\n\n");
    }
    for d in &l.datasets {
        let _ = writeln!(out, "- **{}** `{}`", dataset_role(l, d), d.path);
        let _ = writeln!(out, "  - sha256 `{}`, {}", d.sha256, bytes(d.bytes));
        let rows = d.rows.map_or("rows not recorded".into(), |r| format!("{} rows", thousands(r)));
        let _ = writeln!(out, "  - {rows}, format {}", d.format.as_deref().unwrap_or("not recorded"));
        let pii = d.pii_findings.map_or("not recorded".into(), thousands);
        let dup = d.duplicates.map_or("not recorded".into(), thousands);
        let _ = writeln!(out, "  - PII findings: {pii}; duplicates: {dup}");
        match &d.report {
            Some(r) => {
                let _ =
                    writeln!(out, "  - validation report (`ferrotune data validate`): {}", summary(r, 20));
            }
            None => out.push_str("  - validation report: not recorded\n"),
        }
    }
    out.push_str("\n### Training Procedure\n\n");
    let Some(r) = &l.run else {
        out.push_str("No training run is recorded for this version.\n\n");
        return;
    };
    let _ = writeln!(
        out,
        "Run {} `{}` ({}), folder `{}`, started by {} on host `{}`.\n",
        r.id,
        r.name,
        status_word(r.status),
        r.run_dir,
        r.actor,
        r.host
    );
    if let Some(e) = &r.error {
        let _ = writeln!(out, "Error: {e}\n");
    }
    out.push_str("#### Training Hyperparameters\n\n| hyperparameter | value |\n|---|---|\n");
    let lora = r.method == "lora";
    for key in HYPERPARAMETERS {
        if !lora && (key.starts_with("lora_") || *key == "rslora" || *key == "target_modules") {
            continue;
        }
        let value = match r.config.get(*key) {
            None if *key == "method" => r.method.clone(),
            None => "not recorded".into(),
            Some(Value::Null) => "null (default)".into(),
            Some(v) => json_text(v),
        };
        let _ = writeln!(out, "| {key} | {} |", cell(&value));
    }
    out.push_str("\n#### Speeds, Sizes, Times\n\n");
    let _ = writeln!(out, "- **Hardware:** `{}`", r.device);
    let finished = r.finished.as_deref().unwrap_or("not recorded");
    let took = r
        .finished
        .as_deref()
        .and_then(|f| seconds_between(&r.started, f))
        .map_or(String::new(), |s| format!(" ({})", duration(s)));
    let _ = writeln!(out, "- **Started / finished:** {} → {finished}{took}", r.started);
    let _ = writeln!(out, "- **Steps:** {}", r.steps.map_or("not recorded".into(), thousands));
    let _ = writeln!(
        out,
        "- **Tokens seen by the optimizer:** {}",
        r.tokens.map_or("not recorded".into(), thousands)
    );
    match &r.flops {
        Some(f) => {
            let _ =
                writeln!(out, "- **Estimated training compute:** {} FLOPs = `{}`", sci(f.value), f.formula);
        }
        None => out.push_str("- **Estimated training compute:** not recorded\n"),
    }
    if let Some(m) = &r.metrics {
        let _ = writeln!(out, "- **Run summary:** {}", summary(m, 16));
    }
    out.push('\n');
}

fn evaluation(out: &mut String, l: &Lineage) {
    out.push_str("## Evaluation\n\n");
    if l.evals.is_empty() {
        out.push_str("No evaluation is recorded for this version.\n\n");
        return;
    }
    out.push_str("Scores from `ferrotune eval` as recorded in the registry; intervals are the 95% intervals in eval.json, differences are paired over the same rows.\n\n");
    for e in &l.evals {
        let v = eval_view(e, l.artifact.id);
        let _ = writeln!(out, "### Eval {}: `{}`\n", e.id, e.data_path);
        let _ = writeln!(
            out,
            "- **Testing data:** `{}`, sha256 `{}`, {} rows",
            e.data_path,
            e.data_sha256,
            thousands(e.rows)
        );
        let _ = writeln!(
            out,
            "- **Record:** `{}` (sha256 `{}`), {} by {}; base model `{}`",
            e.path, e.sha256, e.created, e.actor, e.model
        );
        let systems: Vec<String> = v
            .systems
            .iter()
            .map(|s| if Some(s) == v.system.as_ref() { format!("{s} (this version)") } else { s.clone() })
            .collect();
        let _ = writeln!(out, "- **Systems:** {}\n", systems.join(", "));
        if v.system.is_none() {
            out.push_str("This version is not among the systems of this evaluation.\n\n");
            continue;
        }
        out.push_str(
            "| metric | this version [95% CI] | base [95% CI] | difference [95% CI] |\n|---|---|---|---|\n",
        );
        let or_dash = |x: Option<String>| x.unwrap_or_else(|| "—".into());
        for m in &v.rows {
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {} |",
                cell(&m.name),
                arrow(m.higher_is_better),
                or_dash(m.this.as_ref().map(|x| estimate_text(x, false))),
                or_dash(m.base.as_ref().map(|x| estimate_text(x, false))),
                or_dash(m.diff.as_ref().map(|x| estimate_text(x, true)))
            );
        }
        out.push_str("\n↑ higher is better, ↓ lower is better.\n\n");
    }
}

fn environment(out: &mut String, l: &Lineage) {
    out.push_str("## Environmental Impact\n\n");
    let Some(r) = &l.run else {
        out.push_str("No training run is recorded, so hardware and time are unknown.\n\n");
        return;
    };
    let devices = r.config.get("devices").and_then(Value::as_array).map_or(1, |d| d.len().max(1));
    let _ = writeln!(
        out,
        "- **Hardware type:** `{}`{}",
        r.device,
        if devices > 1 { format!(" × {devices} devices") } else { String::new() }
    );
    match r.finished.as_deref().and_then(|f| seconds_between(&r.started, f)) {
        Some(s) => {
            let hours = s as f64 / 3600.0;
            let _ = writeln!(
                out,
                "- **Hours used:** {} wall clock = {:.4} device-hours ({devices} device{}), from the recorded start and finish",
                duration(s),
                hours * devices as f64,
                if devices == 1 { "" } else { "s" }
            );
        }
        None => out.push_str("- **Hours used:** not recorded (no finish time)\n"),
    }
    out.push_str("- **Carbon emitted:** not measured: ferrotune does not record energy use; estimate it from the hardware and hours above if needed.\n\n");
}

/// The `README.md` for `l` with `card`'s statements.
pub fn render(l: &Lineage, card: &CardToml) -> Result<String> {
    let base = Base::of(l, card);
    let mut out = front_matter::render(l, card, &base);
    out.push('\n');
    header(&mut out, l, card, &base);
    model_details(&mut out, l, card, &base);
    uses(&mut out, l, card);
    get_started(&mut out, l, &base);
    training(&mut out, l);
    evaluation(&mut out, l);
    environment(&mut out, l);
    compliance::annex_iv(&mut out, l, card);
    compliance::gpai(&mut out, l, card, &base);
    compliance::nist(&mut out, l, card);
    audit_trail(&mut out, l);
    Ok(out)
}

/// Where the events behind this card are kept, tamper-evident, and how an auditor checks them.
fn audit_trail(out: &mut String, l: &Lineage) {
    let r = l.artifact.reference();
    out.push_str("## Audit trail\n\n");
    let _ = writeln!(
        out,
        "The training run, this version's registration, every release decision (request, approvals, alias moves, \
         disable/enable) and every request served with it are entries of ferrotune's audit log \
         (`$FERROTUNE_HOME/audit`: an RFC 6962 Merkle tree over the entries, checkpoints signed with Ed25519 in the \
         C2SP signed-note format). `ferrotune audit search --subject {r}` lists them; `ferrotune audit export --subject {r} \
         --out DIR` writes them with inclusion proofs, the signed checkpoints and the verifier key, which an auditor checks \
         without ferrotune (`scripts/audit/verify.py bundle DIR --key-file KEY`, with the key from `ferrotune audit pubkey` \
         obtained separately).\n"
    );
}

/// Write `dir/README.md` (creating `dir`) through a temp file and a rename, so a reader never
/// sees half a card.
pub fn write(dir: &Path, l: &Lineage, card: &CardToml) -> Result<PathBuf> {
    let text = render(l, card)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GovernError::Io { path, error: source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dest = dir.join("README.md");
    let tmp = dir.join(".README.md.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(dest)
}
