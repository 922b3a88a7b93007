//! The card's YAML front matter, written by hand: every string double-quoted and escaped, so
//! no value can turn into another YAML type or break the block (huggingface_hub reads it with
//! PyYAML's `safe_load`; `scripts/govern/check_card.sh` proves it does).

use std::fmt::Write;

use super::{Base, CardToml};
use crate::records::{ArtifactKind, Lineage};
use crate::render::eval_view;

/// A YAML double-quoted scalar. Escapes what PyYAML would reject or read differently: quotes,
/// backslashes, C0/C1 control characters and the Unicode line separators.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML number. Rust's `Display` for `f64` never uses an exponent, which YAML 1.1 (PyYAML)
/// would read as a string without a signed exponent and a dot; `None` for NaN / infinity.
pub(crate) fn number(x: f64) -> Option<String> {
    x.is_finite().then(|| format!("{x}"))
}

fn list(out: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{key}:");
    for i in items {
        let _ = writeln!(out, "- {}", quoted(i));
    }
}

/// The data file's name as the eval's dataset name (`eval.jsonl`).
fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().filter(|n| !n.is_empty()).unwrap_or(path)
}

/// `model-index`: for each eval of this version, one result per metric with this version's
/// score. Empty when nothing was scored.
fn model_index(l: &Lineage) -> String {
    let mut results = String::new();
    for e in &l.evals {
        let v = eval_view(e, l.artifact.id);
        for m in &v.rows {
            let Some(value) = m.this.as_ref().and_then(|x| number(x.value)) else { continue };
            let _ = write!(
                results,
                "  - task:\n      type: \"text-generation\"\n    dataset:\n      name: {}\n      type: \"custom\"\n    metrics:\n    - type: {}\n      value: {value}\n      name: {}\n",
                quoted(file_name(&e.data_path)),
                quoted(&m.name),
                quoted(&m.name),
            );
        }
    }
    if results.is_empty() {
        return results;
    }
    format!("model-index:\n- name: {}\n  results:\n{results}", quoted(&l.artifact.name))
}

/// The block between the `---` lines, `---` included.
pub(crate) fn render(l: &Lineage, card: &CardToml, base: &Base) -> String {
    let adapter = l.artifact.kind == ArtifactKind::Adapter;
    let mut out = String::from("---\n");
    if let Some(b) = base.hub_id() {
        let _ = writeln!(out, "base_model: {}", quoted(&b));
    }
    let relation = if adapter { "adapter" } else { "finetune" };
    let _ = writeln!(out, "base_model_relation: {}", quoted(relation));
    let _ = writeln!(out, "library_name: {}", quoted(if adapter { "peft" } else { "transformers" }));
    if let Some(license) = card.text("license") {
        let _ = writeln!(out, "license: {}", quoted(&license));
    }
    list(&mut out, "language", &card.list("language"));
    list(&mut out, "datasets", &card.list("datasets"));
    let mut tags = vec!["ferrotune".to_string()];
    if adapter {
        tags.push("lora".into());
    }
    for t in card.list("tags") {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    list(&mut out, "tags", &tags);
    out.push_str(&model_index(l));
    out.push_str("---\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_what_yaml_would_misread() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quoted("x\ny\u{7}"), r#""x\ny\x07""#);
        assert_eq!(quoted("yes"), r#""yes""#);
    }

    #[test]
    fn numbers_have_no_exponent() {
        assert_eq!(number(1e-5).as_deref(), Some("0.00001"));
        assert_eq!(number(0.38338).as_deref(), Some("0.38338"));
        assert_eq!(number(f64::NAN), None);
    }

    #[test]
    fn dataset_name_is_the_file_name() {
        assert_eq!(file_name("examples/support/eval.jsonl"), "eval.jsonl");
        assert_eq!(file_name("eval.jsonl"), "eval.jsonl");
    }
}
