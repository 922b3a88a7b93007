//! json_match: does the model's JSON equal the reference JSON, as a whole and field by field.
//!
//! Structured-output tasks (extraction, routing with arguments, form filling) are judged on the
//! parsed value, not the text: key order, whitespace and number spelling (`12.5` vs `12.50`,
//! `1` vs `1.0`) do not matter. A prediction may be wrapped in one Markdown code fence
//! (```` ```json … ``` ````), as chat models often do; anything else that does not parse is wrong
//! and its row is listed in the report.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Number, Value};

/// Agreement on one top-level field of the reference objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FieldAgreement {
    /// Rows whose prediction had this field with a value equal to the reference's.
    pub matched: usize,
    /// Rows whose reference has this field.
    pub total: usize,
}

impl FieldAgreement {
    /// `matched / total` (0 when no reference has the field).
    pub fn rate(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.matched as f64 / self.total as f64 }
    }
}

/// The json_match score of a set of rows, with the detail needed to see *what* the model gets
/// wrong.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct JsonMatchReport {
    /// Fraction of rows whose whole prediction equals the reference (the json_match score).
    pub whole: f64,
    /// For each top-level key of the reference objects: how often the prediction's value equals it.
    pub per_field: BTreeMap<String, FieldAgreement>,
    /// Rows whose prediction is not JSON (scored 0).
    pub unparseable: Vec<usize>,
    /// Rows whose *reference* is not JSON: a data error, scored 0 so it cannot pass silently.
    pub unparseable_references: Vec<usize>,
}

/// Parses a model answer or reference: surrounding whitespace and one enclosing code fence
/// (with or without a language tag) are removed first.
pub(crate) fn parse(text: &str) -> Option<Value> {
    serde_json::from_str(strip_fence(text)).ok()
}

fn strip_fence(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else { return t };
    let Some(body) = rest.strip_suffix("```") else { return t };
    // The opening fence's line holds the optional language tag ("json", "JSON", …).
    match body.split_once('\n') {
        Some((tag, inner)) if !tag.trim().contains(char::is_whitespace) => inner.trim(),
        _ => t,
    }
}

/// JSON equality with numbers compared by value (`1 == 1.0`, exact for large integers) and
/// object keys compared as sets; booleans are not numbers.
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(u, v)| values_equal(u, v))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, u)| y.get(k).is_some_and(|v| values_equal(u, v)))
        }
        _ => false,
    }
}

fn numbers_equal(x: &Number, y: &Number) -> bool {
    match (integer(x), integer(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => int_equals_float(i, y.as_f64()),
        (None, Some(j)) => int_equals_float(j, x.as_f64()),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// Exact comparison, as Python compares an int with a float (no rounding of the int to f64).
fn int_equals_float(i: i128, f: Option<f64>) -> bool {
    // 2^127 bounds the conversion; every f64 with no fraction below it is an integer exactly.
    f.is_some_and(|f| f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i)
}

/// Whole-object match of one row: 1.0 or 0.0 (unparseable on either side is 0.0).
pub(crate) fn row_match(prediction: &str, reference: &str) -> f64 {
    match (parse(prediction), parse(reference)) {
        (Some(p), Some(r)) => f64::from(u8::from(values_equal(&p, &r))),
        _ => 0.0,
    }
}

/// The json_match report over aligned predictions and references.
///
/// # Panics
/// If `predictions` and `references` differ in length.
pub fn json_match_report(predictions: &[&str], references: &[&str]) -> JsonMatchReport {
    assert_eq!(predictions.len(), references.len(), "json_match: one prediction per reference");
    let mut report = JsonMatchReport::default();
    let mut matched_rows = 0usize;
    for (row, (pred_text, ref_text)) in predictions.iter().zip(references).enumerate() {
        let pred = parse(pred_text);
        if pred.is_none() {
            report.unparseable.push(row);
        }
        let Some(reference) = parse(ref_text) else {
            report.unparseable_references.push(row);
            continue;
        };
        if pred.as_ref().is_some_and(|p| values_equal(p, &reference)) {
            matched_rows += 1;
        }
        if let Value::Object(fields) = &reference {
            let pred_fields = match &pred {
                Some(Value::Object(p)) => Some(p),
                _ => None,
            };
            for (key, want) in fields {
                let agreement = report.per_field.entry(key.clone()).or_default();
                agreement.total += 1;
                if pred_fields.and_then(|p| p.get(key)).is_some_and(|got| values_equal(got, want)) {
                    agreement.matched += 1;
                }
            }
        }
    }
    if !predictions.is_empty() {
        report.whole = matched_rows as f64 / predictions.len() as f64;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_matter() {
        assert_eq!(row_match(r#"{"b": 1.0, "a": [1, 2.50]}"#, r#"{"a":[1,2.5],"b":1}"#), 1.0);
        assert_eq!(row_match(r#"{"a": 1}"#, r#"{"a": 1, "b": null}"#), 0.0);
        assert_eq!(row_match(r#"{"a": true}"#, r#"{"a": 1}"#), 0.0);
        assert_eq!(row_match(r#"{"a": "1"}"#, r#"{"a": 1}"#), 0.0);
    }

    #[test]
    fn large_integers_are_compared_exactly() {
        // 2^53 + 1 is not representable in f64; Python says 9007199254740993 != 9007199254740992.0.
        assert_eq!(row_match("9007199254740993", "9007199254740992.0"), 0.0);
        assert_eq!(row_match("9007199254740992", "9007199254740992.0"), 1.0);
        assert_eq!(row_match("18446744073709551615", "18446744073709551615"), 1.0);
        assert_eq!(row_match("-3", "-3.0"), 1.0);
    }

    #[test]
    fn fenced_prediction_is_unwrapped() {
        let want = r#"{"intent": "cancel"}"#;
        assert_eq!(row_match("```json\n{\"intent\": \"cancel\"}\n```", want), 1.0);
        assert_eq!(row_match("  ```\n{\"intent\":\"cancel\"}```\n", want), 1.0);
        assert_eq!(row_match("Sure! ```json\n{\"intent\": \"cancel\"}\n```", want), 0.0);
        assert_eq!(row_match("```json {\"intent\": \"cancel\"}```", want), 0.0);
    }

    #[test]
    fn report_counts_fields_and_lists_unparseable_rows() {
        let preds = [
            r#"{"name": "Ann", "age": 30}"#,
            r#"{"name": "Bob", "age": 41}"#,
            "not json at all",
            r#"["name", "Cy"]"#,
        ];
        let refs = [
            r#"{"age": 30, "name": "Ann"}"#,
            r#"{"name": "Bob", "age": 40, "city": "Oslo"}"#,
            r#"{"name": "Cy"}"#,
            r#"{"name": "Cy"}"#,
        ];
        let r = json_match_report(&preds, &refs);
        assert_eq!(r.whole, 0.25);
        assert_eq!(r.per_field["name"], FieldAgreement { matched: 2, total: 4 });
        assert_eq!(r.per_field["age"], FieldAgreement { matched: 1, total: 2 });
        assert_eq!(r.per_field["city"], FieldAgreement { matched: 0, total: 1 });
        assert_eq!(r.unparseable, vec![2]);
        assert!(r.unparseable_references.is_empty());
    }

    #[test]
    fn unparseable_reference_is_reported_and_scored_zero() {
        let r = json_match_report(&["{}", "{}"], &["{}", "{oops"]);
        assert_eq!(r.whole, 0.5);
        assert_eq!(r.unparseable_references, vec![1]);
        assert!(r.unparseable.is_empty());
    }
}
