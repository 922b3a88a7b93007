//! Streaming rows out of a file: JSONL (one object per line), CSV (a header row with the same
//! field names; `messages` and `metadata` cells hold JSON) or Parquet (the same field names as
//! columns, see [`crate::parquet_rows`]). One row in memory at a time (or one chunk of rows, see
//! [`RowReader::read_chunk`]), so memory stays flat as files grow. JSON text is parsed later (in
//! parallel) by the scanner.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::ops::Range;
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

/// A JSONL line that is not UTF-8, with the column of its first bad byte.
pub fn bad_utf8(e: std::str::Utf8Error) -> Payload {
    Payload::Bad {
        csv: false,
        field: String::new(),
        column: Some(e.valid_up_to() as u64 + 1),
        message: "the line is not valid UTF-8".into(),
    }
}

/// JSONL bytes a chunk reads before it stops at a line end (it may hold more rows' worth when
/// one line is longer).
const CHUNK_BYTES: usize = 2 << 20;
/// Bytes asked of the file per read (bypasses `BufReader`'s buffer: no second copy).
const READ_BLOCK: usize = 1 << 20;

/// Rows read together ([`RowReader::read_chunk`]): JSONL lines are byte ranges of one buffer,
/// so reading allocates per chunk, not per row (and the lines are checked for UTF-8 by whoever
/// analyses them, in parallel).
#[derive(Debug, Default)]
pub struct Chunk {
    /// The lines' bytes (past the last line: scratch).
    pub bytes: Vec<u8>,
    pub rows: Vec<ChunkRow>,
}

#[derive(Debug)]
pub struct ChunkRow {
    /// As [`RawRow::line`].
    pub line: u64,
    pub payload: ChunkPayload,
}

#[derive(Debug)]
pub enum ChunkPayload {
    /// A JSONL line without its line end: `chunk.bytes[range]`, not yet checked for UTF-8.
    Line(Range<usize>),
    /// A row of any other kind.
    Row(Payload),
}

impl ChunkRow {
    /// The row as [`RowReader`]'s iterator gives it.
    pub fn into_raw(self, bytes: &[u8]) -> RawRow {
        let payload = match self.payload {
            ChunkPayload::Line(r) => match std::str::from_utf8(&bytes[r]) {
                Ok(text) => Payload::Json(text.to_string()),
                Err(e) => bad_utf8(e),
            },
            ChunkPayload::Row(p) => p,
        };
        RawRow { line: self.line, payload }
    }
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

/// About how many rows a JSONL or CSV file holds, from the line density of its first MiB (exact
/// for a file that short; `None` for Parquet or an unreadable file). For sizing tables, not
/// for reporting: a file whose first rows are unusually short or long is misjudged.
pub fn estimate_rows(path: &Path) -> Option<u64> {
    if FileKind::of(path) == FileKind::Parquet {
        return None;
    }
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = Vec::with_capacity(READ_BLOCK);
    (&mut file).take(READ_BLOCK as u64).read_to_end(&mut head).ok()?;
    let lines = memchr::memchr_iter(b'\n', &head).count() as u64;
    if head.len() as u64 >= size {
        return Some(lines + u64::from(head.last().is_some_and(|&b| b != b'\n')));
    }
    Some((size as f64 * lines as f64 / head.len() as f64) as u64)
}

pub struct RowReader {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    /// `carry`: the start of a line that the last chunk read but did not hold.
    /// `spare`: chunk buffers handed back ([`RowReader::recycle`]).
    Jsonl {
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
        carry: Vec<u8>,
        eof: bool,
        block: usize,
        spare: Vec<Vec<u8>>,
    },
    Csv {
        reader: csv::Reader<File>,
        headers: Vec<String>,
        record: csv::ByteRecord,
    },
    Parquet(ParquetRows),
}

impl RowReader {
    pub fn open(path: &Path) -> Result<Self> {
        let kind = FileKind::of(path);
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let inner = match kind {
            FileKind::Jsonl => Inner::Jsonl {
                reader: BufReader::with_capacity(1 << 20, file),
                line: 0,
                buf: Vec::new(),
                carry: Vec::new(),
                eof: false,
                block: READ_BLOCK,
                spare: Vec::new(),
            },
            FileKind::Csv => {
                let mut reader =
                    csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(file);
                let headers = reader
                    .headers()
                    .map_err(|e| DataError::InvalidFile {
                        path: path.to_path_buf(),
                        reason: format!("CSV header: {e}"),
                    })?
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

    /// How far into the file reading has got, in bytes (JSONL: the file's position; CSV: the
    /// parser's; `None` for Parquet, whose reader seeks).
    pub fn bytes_read(&self) -> Option<u64> {
        match &self.inner {
            Inner::Jsonl { reader, .. } => {
                let mut file: &File = reader.get_ref();
                file.stream_position().ok()
            }
            Inner::Csv { reader, .. } => Some(reader.position().byte()),
            Inner::Parquet(_) => None,
        }
    }

    /// The next rows, at most `max_rows` (fewer at the end of the file; none after it): the same
    /// rows, in the same order, as the iterator gives. Read a file either by chunks or by the
    /// iterator, not both.
    pub fn read_chunk(&mut self, max_rows: usize) -> Result<Chunk> {
        let Inner::Jsonl { reader, line, carry, eof, block, spare, .. } = &mut self.inner else {
            let mut rows = Vec::with_capacity(max_rows.min(4096));
            for raw in self.by_ref().take(max_rows) {
                let raw = raw?;
                rows.push(ChunkRow { line: raw.line, payload: ChunkPayload::Row(raw.payload) });
            }
            return Ok(Chunk { bytes: Vec::new(), rows });
        };
        // `bytes[..filled]` holds file data; what lies past it is scratch from an earlier chunk
        // (so a reused buffer is not zeroed again).
        let mut bytes = spare.pop().unwrap_or_default();
        let mut filled = carry.len();
        if bytes.len() < filled {
            bytes.resize(filled, 0);
        }
        bytes[..filled].copy_from_slice(carry);
        carry.clear();
        let mut rows = Vec::new();
        // `start`: where the first line not yet split off begins.
        let mut start = 0;
        loop {
            let base = start;
            let mut ends = memchr::memchr_iter(b'\n', &bytes[base..filled]).map(move |i| base + i);
            while rows.len() < max_rows {
                let Some(end) = ends.next() else { break };
                *line += 1;
                push_line(&bytes, start..end, *line, &mut rows);
                start = end + 1;
            }
            if rows.len() >= max_rows || (!rows.is_empty() && filled >= CHUNK_BYTES) {
                break;
            }
            if *eof {
                if start < filled {
                    *line += 1;
                    push_line(&bytes, start..filled, *line, &mut rows);
                    start = filled;
                }
                break;
            }
            if bytes.len() < filled + *block {
                bytes.resize(filled + *block, 0);
            }
            let n = loop {
                match reader.read(&mut bytes[filled..filled + *block]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(DataError::io(&self.path, e)),
                }
            };
            filled += n;
            *eof = n == 0;
        }
        carry.extend_from_slice(&bytes[start..filled]);
        Ok(Chunk { bytes, rows })
    }

    /// Hands a chunk's buffer back for a later chunk to read into.
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        if let Inner::Jsonl { spare, .. } = &mut self.inner
            && spare.len() < 2
        {
            spare.push(bytes);
        }
    }
}

/// One JSONL line of a chunk, as the iterator treats it: line ends stripped, blank lines skipped.
fn push_line(bytes: &[u8], mut r: Range<usize>, line: u64, rows: &mut Vec<ChunkRow>) {
    while r.end > r.start && matches!(bytes[r.end - 1], b'\n' | b'\r') {
        r.end -= 1;
    }
    if bytes[r.clone()].iter().all(u8::is_ascii_whitespace) {
        return; // blank lines separate nothing in JSONL; skip them
    }
    rows.push(ChunkRow { line, payload: ChunkPayload::Line(r) });
}

impl Iterator for RowReader {
    type Item = Result<RawRow>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Jsonl { reader, line, buf, .. } => loop {
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
                        Payload::Json(
                            String::from_utf8(std::mem::replace(buf, Vec::with_capacity(cap)))
                                .unwrap_or_default(),
                        )
                    }
                    Err(e) => bad_utf8(e),
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
                        return Some(Err(DataError::InvalidFile {
                            path: self.path.clone(),
                            reason: e.to_string(),
                        }));
                    }
                    Some(Ok(RawRow {
                        line,
                        payload: Payload::Bad {
                            csv: true,
                            field: String::new(),
                            column: None,
                            message: e.to_string(),
                        },
                    }))
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
            return Payload::Bad {
                csv: true,
                field: h.clone(),
                column: None,
                message: format!("cell `{h}` is not valid UTF-8"),
            };
        };
        if cell.is_empty() {
            continue;
        }
        let value = if h == "messages" || h == "metadata" {
            match parse_json(cell) {
                Ok(v) => v,
                Err((col, msg)) => {
                    return Payload::Bad {
                        csv: false,
                        field: h.clone(),
                        column: Some(col),
                        message: format!("cell `{h}` is not valid JSON: {msg}"),
                    };
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
        let (_d, p) =
            write("a.csv", "prompt,completion,metadata\nhi,\"there, you\",\"{\"\"k\"\":1}\"\nx,,\n");
        let rows: Vec<RawRow> = RowReader::open(&p).expect("open").collect::<Result<_>>().expect("rows");
        assert_eq!(rows[0].line, 2);
        match &rows[0].payload {
            Payload::Value(v) => assert_eq!(
                v,
                &serde_json::json!({"prompt":"hi","completion":"there, you","metadata":{"k":1}})
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&rows[1].payload, Payload::Value(v) if v == &serde_json::json!({"prompt":"x"})));
    }

    #[test]
    fn row_estimates_are_exact_for_short_files_and_close_for_uniform_long_ones() {
        let (_d, p) = write("a.jsonl", "{}\n{}\n{}");
        assert_eq!(estimate_rows(&p), Some(3));
        let (_d, p) = write("b.jsonl", "");
        assert_eq!(estimate_rows(&p), Some(0));
        let row = "{\"text\": \"a row of about sixty bytes, give or take a few\"}\n";
        let n = 3 * READ_BLOCK / row.len();
        let (_d, p) = write("c.jsonl", &row.repeat(n));
        let est = estimate_rows(&p).expect("estimate");
        assert!((est as f64 / n as f64 - 1.0).abs() < 0.01, "{est} vs {n}");
        assert_eq!(estimate_rows(Path::new("no-such.parquet")), None);
        assert_eq!(estimate_rows(Path::new("/no/such/file.jsonl")), None);
    }

    fn set_block(r: &mut RowReader, n: usize) {
        if let Inner::Jsonl { block, .. } = &mut r.inner {
            *block = n;
        }
    }

    proptest::proptest! {
        #[test]
        fn chunks_hold_the_rows_the_iterator_gives(
            text in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b"{\"text\":\"a\"}".to_vec()),
                proptest::strategy::Just(b"\n".to_vec()),
                proptest::strategy::Just(b"\r\n".to_vec()),
                proptest::strategy::Just(b"\r".to_vec()),
                proptest::strategy::Just(b"  \t".to_vec()),
                proptest::strategy::Just(vec![0xff, b'x']),
                proptest::strategy::Just("é".as_bytes().to_vec()),
                proptest::strategy::Just(b"[1, 2]".to_vec()),
            ], 0..40),
            block in 1usize..20,
            max_rows in 1usize..6,
        ) {
            let text: Vec<u8> = text.concat();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("a.jsonl");
            std::fs::write(&path, &text).expect("write");
            let want: Vec<String> = RowReader::open(&path).expect("open").map(|r| format!("{:?}", r.expect("row"))).collect();
            let mut reader = RowReader::open(&path).expect("open");
            set_block(&mut reader, block);
            let mut got = Vec::new();
            loop {
                let chunk = reader.read_chunk(max_rows).expect("chunk");
                proptest::prop_assert!(chunk.rows.len() <= max_rows);
                if chunk.rows.is_empty() {
                    break;
                }
                got.extend(chunk.rows.into_iter().map(|r| format!("{:?}", r.into_raw(&chunk.bytes))));
                reader.recycle(chunk.bytes);
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn csv_chunks_hold_the_rows_the_iterator_gives() {
        let (_d, p) = write("a.csv", "prompt,completion\na,b\nc,d\ne,f\n");
        let want: Vec<String> =
            RowReader::open(&p).expect("open").map(|r| format!("{:?}", r.expect("row"))).collect();
        let mut reader = RowReader::open(&p).expect("open");
        let mut got = Vec::new();
        loop {
            let chunk = reader.read_chunk(2).expect("chunk");
            if chunk.rows.is_empty() {
                break;
            }
            got.extend(chunk.rows.into_iter().map(|r| format!("{:?}", r.into_raw(&chunk.bytes))));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn bad_json_reports_its_column() {
        let (col, msg) = parse_json("{\"text\": tru}").expect_err("bad");
        assert_eq!(col, 13, "{msg}");
    }
}
