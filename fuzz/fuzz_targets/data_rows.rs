//! A data file of arbitrary bytes (JSONL, CSV or Parquet, by the first byte) through the row
//! reader — row by row and chunk by chunk, which must give the same rows — and each row through
//! the row parser. For JSONL, the clean-chat fast path must agree with the full parse.
#![no_main]
#[path = "common.rs"]
mod common;

use std::sync::Arc;

use ferrotune_data::parse::{parse_clean_chat, parse_value};
use ferrotune_data::reader::{Payload, RawRow, RowReader, parse_json};
use libfuzzer_sys::fuzz_target;

/// Rows read per input at most (a small file can hold many empty rows; they add nothing).
const MAX_ROWS: usize = 2000;

fn describe(r: &RawRow) -> String {
    format!("{r:?}")
}

/// The Parquet reader catches a panic of the parquet crate's decoder at its boundary
/// (`parquet_rows.rs`) and reports an error naming the file: a malformed page is an error to the
/// user, never a crash. libFuzzer's panic hook aborts on every panic, caught or not, so this target
/// replaces it with a silent one. A panic nothing catches still stops the fuzzer: libfuzzer-sys
/// runs the target inside its own `catch_unwind` and aborts when it unwinds that far.
static SILENT_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    SILENT_HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((mode, bytes)) = common::mode(data) else { return };
    let name = ["rows.jsonl", "rows.csv", "rows.parquet"][mode as usize % 3];
    let path = common::write(name, bytes);
    let file: Arc<str> = Arc::from(name);

    let Ok(reader) = RowReader::open(&path) else { return };
    let mut rows = Vec::new();
    let mut failed = false;
    for row in reader.take(MAX_ROWS) {
        match row {
            Ok(row) => rows.push(row),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }

    // The chunked read gives the same rows.
    let mut chunked = Vec::new();
    let mut reader = RowReader::open(&path).expect("the file opened once");
    while chunked.len() < MAX_ROWS {
        match reader.read_chunk(7) {
            Ok(chunk) if chunk.rows.is_empty() => break,
            Ok(chunk) => chunked.extend(chunk.rows.into_iter().map(|r| r.into_raw(&chunk.bytes))),
            Err(_) => {
                assert!(failed, "read_chunk failed where the iterator did not");
                break;
            }
        }
    }
    if !failed && rows.len() < MAX_ROWS {
        assert_eq!(chunked.len(), rows.len(), "chunks and iterator read different row counts");
    }
    for (a, b) in rows.iter().zip(&chunked) {
        assert_eq!(describe(a), describe(b), "chunks and iterator read different rows");
    }

    for row in rows {
        match row.payload {
            Payload::Json(text) => {
                let fast = parse_clean_chat(&text, &file, row.line, None);
                if let Ok(v) = parse_json(&text) {
                    let full = parse_value(v, &file, row.line, None);
                    if let Some(fast) = fast {
                        assert_eq!(fast.record, full.record, "fast and full parse disagree on the record");
                        assert_eq!(format!("{:?}", fast.findings), format!("{:?}", full.findings));
                    }
                } else {
                    assert!(fast.is_none(), "the fast path took a line that is not JSON");
                }
            }
            Payload::Value(v) => {
                let _ = parse_value(v, &file, row.line, None);
            }
            Payload::Bad { .. } => {}
        }
    }
});
