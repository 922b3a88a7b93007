//! The card's compliance maps: EU AI Act Annex IV (what the record answers, what the provider
//! adds), the GPAI one-third compute comparison, and NIST AI RMF subcategories. Documentation
//! maps only: nothing here decides whether a law applies.

use std::fmt::Write;

use super::{Base, CardToml};
use crate::records::Lineage;
use crate::render::{event_text, sci, seconds_between, thousands};

/// Base models whose training compute ferrotune knows, with where the number comes from.
pub(crate) struct KnownBase {
    /// The installed model's name (`ferrotune models`).
    pub name: &'static str,
    /// Its Hugging Face repo id.
    pub repo: &'static str,
    pub training_flops: Option<f64>,
    pub source: &'static str,
}

pub(crate) const KNOWN_BASES: &[KnownBase] = &[
    KnownBase {
        name: "smollm2-135m-instruct",
        repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
        // 6·N·D with N = 135M, D = 2T; the instruct stage (SFT + DPO) adds a negligible share.
        training_flops: Some(6.0 * 135e6 * 2e12),
        source: "≈ 6·N·D = 6 × 135M parameters × 2T tokens; the SmolLM2 paper (arXiv:2502.02737) and model card state that the 135M model was trained on 2 trillion tokens",
    },
    KnownBase {
        name: "all-minilm-l6-v2",
        repo: "sentence-transformers/all-MiniLM-L6-v2",
        training_flops: None,
        source: "",
    },
];

/// The base's training compute and its source: card.toml's `base_training_flops` first, then
/// the built-in table.
fn base_flops(card: &CardToml, base: &Base) -> Option<(f64, String)> {
    if let Some(f) = card.base_training_flops {
        let source = card
            .text("base_training_flops_source")
            .unwrap_or_else(|| "card.toml `base_training_flops` (no source given)".into());
        return Some((f, source));
    }
    let k = base.known?;
    Some((k.training_flops?, k.source.to_string()))
}

/// Whether the GPAI comparison needs the owner's `base_training_flops`.
pub(crate) fn needs_base_flops(card: &CardToml, base: &Base) -> bool {
    base_flops(card, base).is_none()
}

pub(crate) fn gpai(out: &mut String, l: &Lineage, card: &CardToml, base: &Base) {
    out.push_str("## GPAI threshold (downstream modification)\n\n");
    out.push_str(
        "The European Commission's 2025 guidelines on the scope of the obligations for providers of \
         general-purpose AI models treat a downstream modifier as the provider of the modified model \
         when the modification uses more than one third of the compute used to train the original \
         model. This section compares the recorded estimate with that line; it is a documentation \
         aid, not a legal assessment (whether the base model is a general-purpose AI model at all is \
         for the provider to establish).\n\n",
    );
    let run_flops = l.run.as_ref().and_then(|r| r.flops.as_ref());
    match run_flops {
        Some(f) => {
            let _ = writeln!(
                out,
                "- **This run's training compute:** {} FLOPs, estimated as `{}`.",
                sci(f.value),
                f.formula
            );
        }
        None => {
            let why = if l.run.is_some() {
                "the run did not record its FLOPs (an import from a lineage.json without them, or an unfinished run)"
            } else {
                "no training run is recorded"
            };
            let _ = writeln!(
                out,
                "- **This run's training compute:** not recorded ({why}), so the comparison cannot be made from this record."
            );
        }
    }
    let name = base.hub_id().unwrap_or_else(|| "the base model".into());
    match base_flops(card, base) {
        Some((b, source)) => {
            let third = b / 3.0;
            let _ = writeln!(
                out,
                "- **Base model's training compute:** {} FLOPs for {name}. Source: {source}.",
                sci(b)
            );
            let _ = writeln!(out, "- **One third of it:** {} FLOPs.", sci(third));
            if let Some(f) = run_flops {
                let ratio = f.value / third;
                let side = if f.value > third { "above" } else { "below" };
                let _ = writeln!(
                    out,
                    "- **Comparison:** this run used {} of one third of the base model's training compute, {side} the one-third line.",
                    ratio_text(ratio)
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "- **Base model's training compute:** not known for {name} (not in ferrotune's built-in table), so the comparison cannot be made. {}",
                super::todo("base_training_flops")
            );
        }
    }
    out.push('\n');
}

/// `42.0%`, or `2.2e-7 (2.2e-5%)` when tiny.
fn ratio_text(r: f64) -> String {
    if r >= 0.01 { format!("{:.1}%", r * 100.0) } else { format!("{:.1e} ({:.1e}%)", r, r * 100.0) }
}

/// Free text as a list item's continuation: later lines indented so Markdown keeps them inside.
fn nested(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("\n    ")
}

/// One Annex IV point: what the record answers, then the provider's statements (each the
/// card.toml field's text or its TODO), then what lies outside this card.
fn point(
    out: &mut String,
    title: &str,
    recorded: &str,
    card: &CardToml,
    adds: &[(&str, &str)],
    beyond: &str,
) {
    let _ = writeln!(out, "**{title}**\n\n- *Recorded:* {recorded}\n- *Provider adds:*");
    for (label, key) in adds {
        let _ = writeln!(out, "  - {label}: {}", nested(&card.fill(key)));
    }
    if !beyond.is_empty() {
        let _ = writeln!(out, "  - {beyond}");
    }
    out.push('\n');
}

pub(crate) fn annex_iv(out: &mut String, l: &Lineage, card: &CardToml) {
    let a = &l.artifact;
    let reference = a.reference();
    out.push_str("## EU AI Act Annex IV documentation map\n\n");
    out.push_str(
        "A map from the technical documentation items of Annex IV of Regulation (EU) 2024/1689 to what \
         the registry recorded for this version and what the provider still has to supply. It does \
         not decide whether the Act applies to this model or to a system built on it (for example \
         whether that system is high-risk).\n\n",
    );
    let run = l.run.as_ref();
    let compute = match run {
        Some(r) => {
            let time = r
                .finished
                .as_deref()
                .and_then(|f| seconds_between(&r.started, f))
                .map_or("duration not recorded".into(), crate::render::duration);
            let flops =
                r.flops.as_ref().map_or("FLOPs not recorded".into(), |f| format!("{} FLOPs", sci(f.value)));
            format!("device `{}`, {time}, {flops}", r.device)
        }
        None => "no run recorded".into(),
    };
    point(
        out,
        "1. General description",
        &format!(
            "name and version `{reference}` (versions of `{}` are numbered in the registry; this is version {}), kind, base model and file hashes ([Model Details](#model-details)); how to run it ([How to Get Started](#how-to-get-started-with-the-model)).",
            a.name, a.version
        ),
        card,
        &[("Provider", "provider"), ("Intended purpose", "intended_purpose")],
        "Beyond this card: the forms in which it is placed on the market, the hardware it is meant to run on, the deployer's user interface and instructions for use (Annex IV 1(b)–(h)).",
    );
    point(
        out,
        "2. Detailed description of the elements and the development process",
        &format!(
            "method and pre-trained base model with hashes; hyperparameters ([Training Procedure](#training-procedure)); computational resources ({compute}); training data with SHA-256, rows, format and validation summary ([Training Data](#training-data)); validation and testing ([Evaluation](#evaluation), {} evaluation{} dated and attributed in the registry).",
            l.evals.len(),
            if l.evals.len() == 1 { "" } else { "s" }
        ),
        card,
        &[
            ("Data provenance, selection, labelling and cleaning", "data_provenance"),
            ("Human oversight measures (Article 14)", "human_oversight"),
            ("Cybersecurity measures", "cybersecurity"),
        ],
        "",
    );
    point(
        out,
        "3. Monitoring, functioning and control",
        "measured performance with 95% intervals against the base model ([Evaluation](#evaluation)); the input format of the training data; control through registry aliases (which version is served) and the kill switch (a disabled version is neither served nor promoted). No per-group accuracy is recorded.",
        card,
        &[
            ("Limitations", "limitations"),
            ("Foreseeable risks", "bias_risks"),
            ("Human oversight", "human_oversight"),
        ],
        "",
    );
    point(
        out,
        "4. Appropriateness of the performance metrics",
        "the metrics, their direction and intervals as computed by `ferrotune eval` ([Evaluation](#evaluation)).",
        card,
        &[("Why these metrics and data fit the intended purpose", "metrics_rationale")],
        "",
    );
    point(
        out,
        "5. Risk management system (Article 9)",
        "release control: alias moves with approvals and gates, and the kill switch, all in the registry history.",
        card,
        &[("Risk management system", "risk_management")],
        "",
    );
    let mut events = String::new();
    for e in &l.releases {
        let _ = write!(events, "\n  - {}", event_text(e));
    }
    let recorded = if l.releases.is_empty() {
        format!("version {} of `{}`; no alias change involving this version yet.", a.version, a.name)
    } else {
        format!(
            "version {} of `{}`; alias changes involving this version (registry history):{events}",
            a.version, a.name
        )
    };
    point(
        out,
        "6. Relevant changes through the lifecycle",
        &recorded,
        card,
        &[("Changes made or pre-determined", "lifecycle_changes")],
        "",
    );
    point(
        out,
        "7. Harmonised standards applied",
        "nothing (the registry does not record standards).",
        card,
        &[("Standards or other solutions", "harmonised_standards")],
        "",
    );
    point(
        out,
        "8. EU declaration of conformity",
        "nothing.",
        card,
        &[("Declaration", "declaration_of_conformity")],
        "",
    );
    point(
        out,
        "9. Post-market monitoring system (Article 72)",
        "the server's per-request records (request id, key, model, tokens, latency, status) and metrics can feed it; evaluations can be re-run and registered against this version.",
        card,
        &[("Post-market monitoring system and plan", "post_market_monitoring")],
        "",
    );
}

/// `met`/`missing` text for a NIST line that depends on card.toml fields.
fn needs(card: &CardToml, fields: &[&str]) -> String {
    let missing: Vec<String> =
        fields.iter().filter(|f| card.text(f).is_none()).map(|f| format!("`{f}`")).collect();
    if missing.is_empty() {
        String::new()
    } else {
        format!(" Missing from card.toml: {}.", missing.join(", "))
    }
}

pub(crate) fn nist(out: &mut String, l: &Lineage, card: &CardToml) {
    let a = &l.artifact;
    let evals = l.evals.len();
    let approvals = l.releases.iter().filter(|e| e.action == "approved").count();
    out.push_str("## NIST AI RMF map\n\n");
    out.push_str("Where the record and this card address selected NIST AI RMF 1.0 subcategories, and what is missing.\n\n");
    let _ = writeln!(
        out,
        "- **GOVERN 1.6** (inventory of AI systems): registry entry `{}` (artifact id {}), with files and hashes, run, base model, data, evaluations, aliases and history.",
        a.reference(),
        a.id
    );
    let _ = writeln!(
        out,
        "- **MAP 2.2** (knowledge limits, use and human oversight documented): [Uses](#uses), [Bias, Risks, and Limitations](#bias-risks-and-limitations), human oversight under Annex IV point 2.{}",
        needs(card, &["intended_use", "limitations", "human_oversight"])
    );
    let measured = if evals == 0 {
        "Missing: no evaluation is recorded for this version.".to_string()
    } else {
        format!(
            "[Evaluation](#evaluation): {evals} evaluation{} with data SHA-256, rows, metrics and the eval.json hash (`ferrotune eval`).",
            if evals == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(out, "- **MEASURE 2.1** (test sets, metrics and tools documented): {measured}");
    let _ = writeln!(
        out,
        "- **MEASURE 2.3** (performance measured for conditions like deployment): {}{}",
        if evals == 0 {
            "no measurement recorded."
        } else {
            "scores with 95% intervals in [Evaluation](#evaluation); how the test data resembles deployment is the owner's statement."
        },
        needs(card, &["metrics_rationale"])
    );
    let _ = writeln!(
        out,
        "- **MEASURE 2.5** (validity, reliability, limits of generalisation): {}{}",
        if evals == 0 {
            "no measurement recorded."
        } else {
            "paired differences from the base with 95% intervals."
        },
        needs(card, &["limitations"])
    );
    let decided = if l.releases.is_empty() {
        "no release decision recorded for this version yet.".to_string()
    } else {
        format!(
            "{} release event{} ({approvals} approval{}) in the registry history, with actor, time and reason.",
            thousands(l.releases.len() as u64),
            if l.releases.len() == 1 { "" } else { "s" },
            if approvals == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(
        out,
        "- **MANAGE 1.1** (decision whether it meets its purpose and should proceed): {decided}{}",
        needs(card, &["intended_purpose"])
    );
    let state = if a.disabled { "this version is disabled now" } else { "this version is enabled now" };
    let _ = writeln!(
        out,
        "- **MANAGE 2.4** (mechanisms to supersede or deactivate): the registry's kill switch (a disabled version is neither served nor promoted; {state}) and alias moves back to an earlier version.{}",
        needs(card, &["post_market_monitoring"])
    );
    out.push('\n');
}
