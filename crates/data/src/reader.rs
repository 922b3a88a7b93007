//! Streaming rows out of a file: JSONL (one object per line), CSV (a header row with the same
//! field names; `messages` and `metadata` cells hold JSON) or Parquet (the same field names as
//! columns, see [`crate::parquet_rows`]). One row in memory at a time, so memory stays flat as
//! files grow. JSON text is parsed later (in parallel) by the scanner.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Result};
use crate::parquet_rows::ParquetRows;

/// A row as read, before its record is checked.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// 1-based line of the row in the file (for CSV: the line the record starts on; for
    /// Parquet: the row number).
    pub line: u64,
    pub payload: Payload,
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// One JSONL line, not parsed yet.
    Json(String),
    /// A CSV or Parquet row already turned into a JSON object.
    Value(Value),
    /// A row that could not be read as text or CSV, a JSON cell that did not parse, or a
    /// Parquet cell of binary data that is not text.
    Bad { csv: bool, field: String, column: Option<u64>, message: String },
}

/// Parse one JSONL line; on failure, the 1-based column and serde's message.
pub fn parse_json(text: &str) -> std::result::Result<Value, (u64, String)> {
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde appends " at line 1 column N"; the caller reports the column itself.
        let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]).to_string();
        (e.column() as u64, msg)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Jsonl,
    Csv,
    Parquet,
}

impl FileKind {
    /// By extension: `.csv`, `.parquet` (or `.pq`); anything else is read as JSONL.
    pub fn of(path: &Path) -> Self {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => FileKind::Csv,
            Some("parquet" | "pq") => FileKind::Parquet,
            _ => FileKind::Jsonl,
        }
    }
}

pub struct RowReader {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    Jsonl { reader: BufReader<File>, line: u64, buf: Vec<u8> },
    Csv { reader: csv::Reader<File>, headers: Vec<String>, record: csv::ByteRecord },
    Parquet(ParquetRows),
}

impl RowReader {
    pub fn open(path: &Path) -> Result<Self> {
        let kind = FileKind::of(path);
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let inner = match kind {
            FileKind::Jsonl => Inner::Jsonl { reader: BufReader::with_capacity(1 << 20, file), line: 0, buf: Vec::new() },
            FileKind::Csv => {
                let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(file);
                let headers = reader
                    .headers()
                    .map_err(|e| DataError::InvalidFile { path: path.to_path_buf(), reason: format!("CSV header: {e}") })?
                    .iter()
                    .map(|h| h.trim().to_string())
                    .collect();
                Inner::Csv { reader, headers, record: csv::ByteRecord::new() }
            }
            FileKind::Parquet => Inner::Parquet(ParquetRows::open(path, file)?),
        };
        Ok(Self { path: path.to_path_buf(), inner })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for RowReader {
    type Item = Result<RawRow>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Jsonl { reader, line, buf } => loop {
                buf.clear();
                match reader.read_until(b'\n', buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(DataError::io(&self.path, e))),
                }
                *line += 1;
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue; // blank lines separate nothing in JSONL; skip them
                }
                let payload = match std::str::from_utf8(buf) {
                    // Hand the line's buffer over instead of copying it (a new one is needed
                    // either way, the row keeps its text).
                    Ok(_) => {
                        let cap = buf.capacity();
                        Payload::Json(String::from_utf8(std::mem::replace(buf, Vec::with_capacity(cap))).unwrap_or_default())
                    }
                    Err(e) => Payload::Bad {
                        csv: false,
                        field: String::new(),
                        column: Some(e.valid_up_to() as u64 + 1),
                        message: "the line is not valid UTF-8".into(),
                    },
                };
                return Some(Ok(RawRow { line: *line, payload }));
            },
            Inner::Csv { reader, headers, record } => match reader.read_byte_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    Some(Ok(RawRow { line, payload: csv_row(headers, record) }))
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        return Some(Err(DataError::InvalidFile { path: self.path.clone(), reason: e.to_string() }));
                    }
                    Some(Ok(RawRow { line, payload: Payload::Bad { csv: true, field: String::new(), column: None, message: e.to_string() } }))
                }
            },
            Inner::Parquet(rows) => rows.next(),
        }
    }
}

/// A CSV row as the JSON object it stands for: empty cells are absent, `messages` and
/// `metadata` cells are JSON, every other cell is a string.
fn csv_row(headers: &[String], record: &csv::ByteRecord) -> Payload {
    let mut obj = Map::new();
    for (h, cell) in headers.iter().zip(record.iter()) {
        let Ok(cell) = std::str::from_utf8(cell) else {
            return Payload::Bad { csv: true, field: h.clone(), column: None, message: format!("cell `{h}` is not valid UTF-8") };
        };
        if cell.is_empty() {
            continue;
        }
        let value = if h == "messages" || h == "metadata" {
            match parse_json(cell) {
                Ok(v) => v,
                Err((col, msg)) => {
                    return Payload::Bad { csv: false, field: h.clone(), column: Some(col), message: format!("cell `{h}` is not valid JSON: {msg}") };
                }
            }
        } else {
            Value::String(cell.to_string())
        };
        obj.insert(h.clone(), value);
    }
    Payload::Value(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::File::create(&path).and_then(|mut f| f.write_all(text.as_bytes())).expect("write");
        (dir, path)
    }

    #[test]
    fn jsonl_rows_keep_their_line_numbers_across_blank_lines() {
        let (_d, p) = write("a.jsonl", "{\"text\":\"a\"}\r\n\n  \n{\"text\":\"b\"}");
        let rows: Vec<RawRow> = RowReader::open(&p).expect("open").collect::<Result<_>>().expect("rows");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 4]);
        assert!(matches!(&rows[0].payload, Payload::Json(s) if s == "{\"text\":\"a\"}"));
    }

    #[test]
    fn csv_cells_become_fields_and_json_cells_are_parsed() {
        let (_d, p) = write("a.csv", "prompt,completion,metadata\nhi,\"there, you\",\"{\"\"k\"\":1}\"\nx,,\n");
        let rows: Vec<RawRow> = RowReader::open(&p).expect("open").collect::<Result<_>>().expect("rows");
        assert_eq!(rows[0].line, 2);
        match &rows[0].payload {
            Payload::Value(v) => assert_eq!(v, &serde_json::json!({"prompt":"hi","completion":"there, you","metadata":{"k":1}})),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&rows[1].payload, Payload::Value(v) if v == &serde_json::json!({"prompt":"x"})));
    }

    #[test]
    fn bad_json_reports_its_column() {
        let (col, msg) = parse_json("{\"text\": tru}").expect_err("bad");
        assert_eq!(col, 13, "{msg}");
    }
}
