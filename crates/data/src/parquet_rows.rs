//! Parquet input: each row becomes the JSON object it stands for, with the field names of JSONL
//! and CSV. `messages` may be a list-of-struct column or a JSON string column, `metadata` a
//! struct, map or JSON string; the other fields are string columns.
//!
//! Rows are decoded through the `parquet` crate's row API one at a time, one row group after
//! another (a row group's pages are read as its rows are reached), so memory stays flat in the
//! row count. Positions are 1-based row numbers over the whole file.
//!
//! A Parquet schema is shared by every row, so a null is how a row says a field is absent: null
//! columns and null struct fields are left out of the object (as CSV's empty cells are). Nulls in
//! lists and map values are data and kept.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};

use crate::error::{DataError, Result};
use crate::reader::{Payload, RawRow, parse_json};

/// Columns whose string cells hold JSON, as in CSV.
const JSON_COLUMNS: [&str; 2] = ["messages", "metadata"];

pub struct ParquetRows {
    path: PathBuf,
    rows: RowIter<'static>,
    /// Rows handed out so far.
    row: u64,
    /// Set after a decoding error: the decoder's state is unknown, so nothing more is read.
    done: bool,
}

fn corrupt(path: &Path, what: String) -> DataError {
    DataError::InvalidFile { path: path.to_path_buf(), reason: what }
}

impl ParquetRows {
    pub fn open(path: &Path, file: File) -> Result<Self> {
        // The decoder is not hardened against every malformed file: a panic in it is turned into
        // an error naming the file, never a crash of the whole run.
        let opened = catch_unwind(AssertUnwindSafe(|| SerializedFileReader::new(file)));
        let reader = match opened {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(corrupt(path, format!("not a readable Parquet file: {e}"))),
            Err(_) => {
                return Err(corrupt(path, "not a readable Parquet file (its footer is corrupt)".into()));
            }
        };
        check_chunks(path, &reader)?;
        let rows = RowIter::from_file_into(Box::new(reader) as Box<dyn FileReader>);
        Ok(Self { path: path.to_path_buf(), rows, row: 0, done: false })
    }
}

/// No column chunk starts at a negative offset or has a negative size: the decoder asserts it
/// (a panic, not an error; found by fuzzing, `fuzz/fuzz_targets/data_rows.rs`), so such a
/// footer is refused here as the corrupt file it is.
fn check_chunks(path: &Path, reader: &SerializedFileReader<File>) -> Result<()> {
    for (g, group) in reader.metadata().row_groups().iter().enumerate() {
        for (c, col) in group.columns().iter().enumerate() {
            let start = col.dictionary_page_offset().unwrap_or_else(|| col.data_page_offset());
            if start < 0 || col.compressed_size() < 0 {
                return Err(corrupt(
                    path,
                    format!(
                        "not a readable Parquet file: row group {g}, column {c}: negative offset {start} or size {}",
                        col.compressed_size()
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Iterator for ParquetRows {
    type Item = Result<RawRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let n = self.row + 1;
        let next = catch_unwind(AssertUnwindSafe(|| self.rows.next().map(|r| r.map(row_payload))));
        let err = match next {
            Ok(None) => return None,
            Ok(Some(Ok(payload))) => {
                self.row = n;
                return Some(Ok(RawRow { line: n, payload }));
            }
            Ok(Some(Err(e))) => format!("row {n}: cannot decode the Parquet data: {e}"),
            Err(_) => format!("row {n}: cannot decode the Parquet data (the file is corrupt)"),
        };
        self.done = true;
        Some(Err(corrupt(&self.path, err)))
    }
}

/// A row as a JSON object (see the module docs), or what makes it unusable.
fn row_payload(row: Row) -> Payload {
    let mut obj = Map::new();
    for (name, field) in row.into_columns() {
        let value = match to_json(field) {
            Ok(Value::Null) => continue,
            Ok(Value::String(s)) if JSON_COLUMNS.contains(&name.as_str()) => match parse_json(&s) {
                Ok(v) => v,
                Err((col, msg)) => {
                    let message = format!("column `{name}` is not valid JSON: {msg}");
                    return Payload::Bad { csv: false, field: name, column: Some(col), message };
                }
            },
            Ok(v) => v,
            Err(at) => {
                let field = format!("{name}{at}");
                let message = format!("`{field}` is binary data that is not UTF-8 text");
                return Payload::Bad { csv: false, field, column: None, message };
            }
        };
        obj.insert(name, value);
    }
    Payload::Value(Value::Object(obj))
}

fn float(x: f64) -> Value {
    // JSON has no NaN or infinity; keep them visible as text (the parser then names the field).
    Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
}

/// `YYYY-MM-DD` of a day count since 1970-01-01; past the years ±9999 that `time` represents
/// (no real column), the day count itself, kept visible rather than failing.
fn date(days: i64) -> String {
    let julian = i32::try_from(days).ok().and_then(|d| d.checked_add(2_440_588));
    match julian.and_then(|j| time::Date::from_julian_day(j).ok()) {
        Some(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        None => format!("1970-01-01{days:+}d"),
    }
}

/// RFC 3339 UTC time of `units` since the epoch, `per_sec` units a second.
fn timestamp(units: i64, per_sec: i64) -> String {
    let secs = units.div_euclid(per_sec);
    let frac = units.rem_euclid(per_sec);
    let tod = secs.rem_euclid(86_400);
    let digits = if per_sec == 1000 { 3 } else { 6 };
    format!(
        "{}T{:02}:{:02}:{:02}.{frac:0digits$}Z",
        date(secs.div_euclid(86_400)),
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// Time of day of `units` since midnight, `per_sec` units a second.
fn time_of_day(units: i64, per_sec: i64) -> String {
    let secs = units.div_euclid(per_sec);
    let digits = if per_sec == 1000 { 3 } else { 6 };
    format!(
        "{:02}:{:02}:{:02}.{:0digits$}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        units.rem_euclid(per_sec)
    )
}

/// One cell as JSON. `Err` carries the path (inside the cell) of binary data that is not UTF-8.
/// Written out rather than `Row::to_json_value`, which keeps struct nulls, turns binary into
/// base64 and panics on out-of-range dates.
fn to_json(field: Field) -> std::result::Result<Value, String> {
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(n) => Value::from(n),
        Field::Short(n) => Value::from(n),
        Field::Int(n) => Value::from(n),
        Field::Long(n) => Value::from(n),
        Field::UByte(n) => Value::from(n),
        Field::UShort(n) => Value::from(n),
        Field::UInt(n) => Value::from(n),
        Field::ULong(n) => Value::from(n),
        Field::Float16(x) => float(f64::from(x)),
        Field::Float(x) => float(f64::from(x)),
        Field::Double(x) => float(x),
        Field::Decimal(_) => Value::String(field.to_string()),
        Field::Str(s) => Value::String(s),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => return Err(String::new()),
        },
        Field::Date(d) => Value::String(date(i64::from(d))),
        Field::TimeMillis(t) => Value::String(time_of_day(i64::from(t), 1000)),
        Field::TimeMicros(t) => Value::String(time_of_day(t, 1_000_000)),
        Field::TimestampMillis(t) => Value::String(timestamp(t, 1000)),
        Field::TimestampMicros(t) => Value::String(timestamp(t, 1_000_000)),
        Field::Group(row) => {
            let mut obj = Map::new();
            for (name, f) in row.into_columns() {
                match to_json(f) {
                    Ok(Value::Null) => {}
                    Ok(v) => {
                        obj.insert(name, v);
                    }
                    Err(at) => return Err(format!(".{name}{at}")),
                }
            }
            Value::Object(obj)
        }
        // `List` and `Map` lend their elements only by reference.
        Field::ListInternal(list) => {
            let items = list
                .elements()
                .iter()
                .enumerate()
                .map(|(i, f)| to_json(f.clone()).map_err(|at| format!("[{i}]{at}")));
            Value::Array(items.collect::<std::result::Result<_, _>>()?)
        }
        Field::MapInternal(map) => {
            let mut obj = Map::new();
            for (k, v) in map.entries() {
                let key = match to_json(k.clone())? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = to_json(v.clone()).map_err(|at| format!(".{key}{at}"))?;
                obj.insert(key, value);
            }
            Value::Object(obj)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_iso_strings_even_far_out_of_range() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(timestamp(1_500, 1000), "1970-01-01T00:00:01.500Z");
        assert_eq!(timestamp(-1, 1_000_000), "1969-12-31T23:59:59.999999Z");
        assert_eq!(time_of_day(3_723_004, 1000), "01:02:03.004");
        // chrono's conversion in `Field`'s Display panics here; ours does not.
        assert!(timestamp(i64::MAX, 1000).contains('T'));
        assert!(timestamp(i64::MIN, 1000).contains('T'));
    }

    #[test]
    fn non_finite_floats_stay_visible() {
        assert_eq!(float(f64::NAN), Value::String("NaN".into()));
        assert_eq!(float(1.5), serde_json::json!(1.5));
    }
}
