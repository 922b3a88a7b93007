//! Test rows: chat or alpaca/completion records whose last assistant turn (or `output`,
//! `completion`) is the reference, or any such record with an `expected` field (a string, or a
//! JSON object/array for structured outputs) that gives the reference instead.

use std::path::Path;
use std::sync::Arc;

use ferrotune_data::parse::parse_value;
use ferrotune_data::reader::{Payload, RowReader, parse_json};
use ferrotune_data::{Format, Role, Turn};
use serde_json::{Value, json};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    /// 1-based line (JSONL) or record line (CSV).
    pub line: u64,
    /// The conversation the model answers: every turn before the reference.
    pub prompt: Vec<Turn>,
    pub reference: String,
    /// The reference came as a JSON object or array (`expected`): compare it as JSON.
    pub structured: bool,
}

impl EvalRow {
    /// The last user message, for reports.
    pub fn question(&self) -> &str {
        self.prompt.iter().rev().find(|t| t.role == Role::User).map_or("", |t| t.content.as_str())
    }
}

/// Read every row of `path` (JSONL or CSV), at most `limit`. The first bad row is an error
/// naming the file, line and field; nothing is evaluated on a file with a bad row.
pub fn load_rows(path: &Path, limit: Option<usize>) -> Result<Vec<EvalRow>> {
    let file: Arc<str> = path.display().to_string().into();
    let mut rows = Vec::new();
    for raw in RowReader::open(path)? {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let raw = raw?;
        let bad = |field: &str, reason: String| EvalError::InvalidRow {
            file: file.to_string(),
            line: raw.line,
            field: field.to_string(),
            reason,
        };
        let value = match raw.payload {
            Payload::Json(text) => {
                parse_json(&text).map_err(|(col, msg)| bad("", format!("bad JSON at column {col}: {msg}")))?
            }
            Payload::Value(v) => v,
            Payload::Bad { field, column, message, .. } => {
                return Err(bad(
                    &field,
                    column.map_or(message.clone(), |c| format!("{message} (column {c})")),
                ));
            }
        };
        rows.push(parse_row(value, &file, raw.line)?);
    }
    if rows.is_empty() {
        return Err(EvalError::InvalidFile {
            path: path.to_path_buf(),
            reason: "no rows to evaluate".into(),
        });
    }
    Ok(rows)
}

/// One row: take out `expected`, let the data crate check the record, split off the reference.
pub fn parse_row(value: Value, file: &Arc<str>, line: u64) -> Result<EvalRow> {
    let bad = |field: &str, reason: String| EvalError::InvalidRow {
        file: file.to_string(),
        line,
        field: field.to_string(),
        reason,
    };
    let Value::Object(mut obj) = value else {
        return Err(bad("", "the row is not a JSON object".into()));
    };
    let expected = match obj.remove("expected") {
        None => None,
        Some(Value::String(s)) => Some((s, false)),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Some((v.to_string(), true)),
        Some(_) => {
            return Err(bad(
                "expected",
                "must be a string, or a JSON object/array for structured output".into(),
            ));
        }
    };
    if let Some((reference, _)) = &expected {
        // Give the record the answer slot its format needs, so the data crate's checks apply
        // unchanged; the reference itself comes from `expected`.
        if let Some(Value::Array(msgs)) = obj.get_mut("messages") {
            // A conversation that already ends with an answer keeps it (it is then replaced).
            let ends_with_assistant =
                msgs.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant");
            if !ends_with_assistant {
                msgs.push(json!({"role": "assistant", "content": reference}));
            }
        } else if obj.contains_key("prompt") && !obj.contains_key("completion") {
            obj.insert("completion".into(), Value::String(reference.clone()));
        } else if obj.contains_key("instruction") && !obj.contains_key("output") {
            obj.insert("output".into(), Value::String(reference.clone()));
        }
    }
    let parsed = parse_value(Value::Object(obj), file, line, None);
    let Some(record) = parsed.record else {
        let first = parsed.findings.iter().find(|f| f.is_error()).or(parsed.findings.first());
        return Err(match first {
            Some(f) => bad(&f.field, format!("{} ({})", f.message, f.hint)),
            None => bad("", "not a usable record".into()),
        });
    };
    if record.format() == Format::Text {
        return Err(bad("text", "a text record has no reference answer; use chat, alpaca or completion records, or add `expected`".into()));
    }
    let turns = record.turns().into_owned();
    let last = turns
        .iter()
        .rposition(|t| t.role == Role::Assistant)
        .ok_or_else(|| bad("messages", "no assistant turn to use as the reference".into()))?;
    let prompt = turns[..last].to_vec();
    if !prompt.iter().any(|t| t.role == Role::User) {
        return Err(bad("messages", "no user turn before the reference answer".into()));
    }
    let (reference, structured) = match expected {
        Some((r, s)) => (r, s),
        None => (turns[last].content.clone(), false),
    };
    Ok(EvalRow { line, prompt, reference, structured })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Result<EvalRow> {
        parse_row(v, &Arc::from("t.jsonl"), 7)
    }

    #[test]
    fn chat_reference_is_the_last_assistant_turn() {
        let r = row(json!({"messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"}]}))
        .expect("the row parses");
        assert_eq!(r.reference, "A2");
        assert_eq!(r.prompt.len(), 4);
        assert_eq!(r.question(), "Q2");
        assert!(!r.structured);
    }

    #[test]
    fn alpaca_and_expected_forms() {
        let r = row(json!({"instruction": "Translate", "input": "hola", "output": "hello"}))
            .expect("the row parses");
        assert_eq!((r.reference.as_str(), r.question()), ("hello", "Translate\n\nhola"));
        let r = row(json!({"messages": [{"role": "user", "content": "Q"}], "expected": {"b": 2, "a": 1}}))
            .expect("the row parses");
        assert!(r.structured);
        assert_eq!(
            serde_json::from_str::<Value>(&r.reference).expect("the reference is JSON"),
            json!({"a": 1, "b": 2})
        );
        let r = row(json!({"prompt": "2+2=", "expected": "4"})).expect("the row parses");
        assert_eq!(r.reference, "4");
        let r = row(json!({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "old"}], "expected": "new"})).expect("the row parses");
        assert_eq!((r.reference.as_str(), r.prompt.len()), ("new", 1));
    }

    #[test]
    fn bad_rows_name_line_and_field() {
        let e = row(json!({"messages": [{"role": "user", "content": "Q"}], "expected": 3}))
            .expect_err("the row is refused")
            .to_string();
        assert!(e.starts_with("t.jsonl:7: `expected`"), "{e}");
        let e = row(json!({"text": "just text"})).expect_err("the row is refused").to_string();
        assert!(e.contains("t.jsonl:7") && e.contains("no reference"), "{e}");
        let e = row(json!({"messages": [{"role": "user", "content": "Q"}]}))
            .expect_err("the row is refused")
            .to_string();
        assert!(e.contains("t.jsonl:7"), "{e}");
        let e = row(json!([1, 2])).expect_err("the row is refused").to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }
}
