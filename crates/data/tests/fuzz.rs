//! Property tests: the reader, parser, validator pieces and PII scanner never panic, whatever
//! the input; a record comes back exactly when a row has no error.

use std::sync::Arc;

use ferrotune_data::parse::parse_value;
use ferrotune_data::pii::PiiDetector;
use ferrotune_data::reader::{RowReader, parse_json};
use ferrotune_data::scan::{ScanConfig, Scanner};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// JSON values biased towards the shapes records have: known keys, roles, strings and numbers.
fn value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("messages".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("weight".to_string()),
        Just("instruction".to_string()),
        Just("input".to_string()),
        Just("output".to_string()),
        Just("prompt".to_string()),
        Just("completion".to_string()),
        Just("text".to_string()),
        Just("metadata".to_string()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just("user"), Just("assistant"), Just("system"), Just(""), Just("  ")]
            .prop_map(|s| json!(s)),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_any_json_value_never_panics_and_records_mean_no_errors(v in value()) {
        let file: Arc<str> = "fuzz.jsonl".into();
        let p = parse_value(v, &file, 1, None);
        prop_assert_eq!(p.record.is_some(), !p.findings.iter().any(|f| f.is_error()));
        prop_assert!(p.findings.iter().all(|f| f.line == Some(1) && !f.hint.is_empty() && !f.message.is_empty()));
    }

    #[test]
    fn analysing_any_line_never_panics(line in "\\PC{0,200}") {
        let file: Arc<str> = "fuzz.jsonl".into();
        let scanner = Scanner::new(ScanConfig { pii: true, fingerprints: true, ..ScanConfig::default() });
        let row = scanner.analyze(&file, ferrotune_data::reader::RawRow { line: 3, payload: ferrotune_data::reader::Payload::Json(line.clone()) });
        prop_assert_eq!(row.record.is_some(), !row.has_error());
        if parse_json(&line).is_err() {
            prop_assert!(row.findings.iter().any(|f| f.code == ferrotune_data::Code::BadJson));
        }
    }

    #[test]
    fn pii_scanning_and_redaction_never_panic_on_any_text(text in "(\\PC|[0-9 .:@+()-]){0,120}") {
        let d = PiiDetector::new();
        let matches = d.find(&text);
        for w in matches.windows(2) {
            prop_assert!(w[0].end <= w[1].start, "overlapping matches");
        }
        let (out, _) = d.redact(&text);
        prop_assert!(d.find(&out).iter().all(|m| !out[m.start..m.end].starts_with('[')));
    }

    #[test]
    fn reading_any_bytes_as_jsonl_or_csv_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["x.jsonl", "x.csv"] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).expect("write");
            if let Ok(reader) = RowReader::open(&p) {
                let scanner = Scanner::new(ScanConfig { pii: true, fingerprints: true, ..ScanConfig::default() });
                let file: Arc<str> = name.into();
                for row in reader.flatten() {
                    let _ = scanner.analyze(&file, row);
                }
            }
        }
    }
}
