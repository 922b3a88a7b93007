//! The streaming pipeline shared by `validate` and `prepare`. Rows are read in chunks; within a
//! chunk each row is analysed in parallel (JSON parse, format checks, PII, fingerprint, render
//! and token count) — the expensive, order-free part — and then handed to the caller's sink in
//! file order for the checks that depend on earlier rows (mixed formats, duplicates).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, mpsc};

use rayon::prelude::*;

use crate::dedup::Fingerprint;
use crate::error::Result;
use crate::finding::{Code, Finding};
use crate::minhash::Sketcher;
use crate::parse::{Parsed, parse_clean_chat, parse_value};
use crate::pii::{PiiDetector, PiiKind};
use crate::poison::RowKeys;
use crate::reader::{Chunk, ChunkPayload, Payload, RawRow, RowReader, bad_utf8, parse_json};
use crate::record::{Format, Record};
use crate::render::{RenderOptions, Renderer};

/// Rows analysed together; bounds the memory held at once.
const CHUNK: usize = 4096;

/// Chunks read and handed to the pool before the oldest is waited for.
const IN_FLIGHT: usize = 3;

/// How far ahead [`Scanner::scan_file_ahead`] shows the sink the rows to come.
pub const AHEAD: usize = 8;

#[derive(Clone, Default)]
pub struct ScanConfig {
    /// Require this format instead of detecting it per file.
    pub format: Option<Format>,
    /// Render and count tokens (and check `max_seq_len`) when given.
    pub renderer: Option<Arc<Renderer>>,
    pub render_opts: RenderOptions,
    pub max_seq_len: Option<usize>,
    /// Compute MinHash sketches for near-duplicate detection when given.
    pub sketcher: Option<Arc<Sketcher>>,
    /// Look for personal data.
    pub pii: bool,
    /// Compute fingerprints (exact duplicates, conflicting answers).
    pub fingerprints: bool,
    /// Compute the backdoor-trigger check's keys ([`crate::poison`]).
    pub backdoor: bool,
    /// Told how far the scan is after each chunk.
    pub progress: Progress,
}

/// Where a pass over a file is: its stage (`"checking"` for a scan; `prepare` then reports
/// `"writing"`), rows done so far in `file`, and how many of its bytes have been read (JSONL and
/// CSV; `None` for Parquet).
#[derive(Debug, Clone, Copy)]
pub struct ScanProgress<'a> {
    pub stage: &'static str,
    pub file: &'a Path,
    pub rows: u64,
    pub bytes: Option<u64>,
}

/// A callback for [`ScanProgress`] (e.g. a progress bar), called on the scanning thread after
/// each chunk of rows; none by default.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ProgressFn>>);

/// What [`Progress`] calls.
type ProgressFn = dyn Fn(ScanProgress<'_>) + Send + Sync;

impl Progress {
    pub fn new(f: impl Fn(ScanProgress<'_>) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    pub fn report(&self, p: ScanProgress<'_>) {
        if let Some(f) = &self.0 {
            f(p);
        }
    }
}

/// One analysed row.
#[derive(Debug)]
pub struct Row {
    pub line: u64,
    /// `Some` when the row has no error.
    pub record: Option<Record>,
    pub findings: Vec<Finding>,
    pub fingerprint: Option<Fingerprint>,
    /// Trigger-like prompt tokens and answer patterns, when the config asks for them.
    pub backdoor: Option<RowKeys>,
    /// (all tokens, tokens with loss) after rendering.
    pub tokens: Option<(usize, usize)>,
    /// Kinds of personal data found, with the field.
    pub pii: Vec<(String, PiiKind)>,
    /// The index of the rayon worker that analysed the row (`None` off the pool): where its
    /// memory is best freed (see [`Trash`]).
    pub made_on: Option<usize>,
}

impl Row {
    fn empty(line: u64) -> Self {
        Row {
            line,
            record: None,
            findings: Vec::new(),
            fingerprint: None,
            backdoor: None,
            tokens: None,
            pii: Vec::new(),
            made_on: rayon::current_thread_index(),
        }
    }

    pub fn has_error(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

/// Collects what a sequential sink is done with and frees it in batches on the pool's workers,
/// each worker freeing what it allocated. glibc's malloc takes the allocating thread's arena
/// lock for a free from another thread; with records built on one worker and freed on the
/// other, three quarters of the workers' context switches in a `data validate` run were waits
/// on that lock (perf, `sched:sched_switch`); freed where they were made, none are.
pub struct Trash<T: Send + 'static> {
    bins: Vec<Vec<T>>,
    held: usize,
}

impl<T: Send + 'static> Default for Trash<T> {
    fn default() -> Self {
        Self { bins: Vec::new(), held: 0 }
    }
}

impl<T: Send + 'static> Trash<T> {
    /// Items held before they are handed to the workers.
    const BATCH: usize = 4096;

    /// Frees `item` later, on worker `made_on` (any worker when `None`), or now when that is
    /// the calling thread (the sink runs on a pool thread, which analyses rows too; its own
    /// bin would wait for it to go idle, perhaps not before the scan ends).
    pub fn push(&mut self, item: T, made_on: Option<usize>) {
        if made_on.is_some() && made_on == rayon::current_thread_index() {
            drop(item);
            return;
        }
        if self.bins.is_empty() {
            self.bins.resize_with(rayon::current_num_threads().max(1), Vec::new);
        }
        let bin = made_on.unwrap_or(0) % self.bins.len();
        self.bins[bin].push(item);
        self.held += 1;
        if self.held >= Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.held = 0;
        let bins: Vec<std::sync::Mutex<Vec<T>>> =
            self.bins.iter_mut().map(|b| std::sync::Mutex::new(std::mem::take(b))).collect();
        rayon::spawn_broadcast(move |ctx| {
            if let Some(bin) = bins.get(ctx.index()) {
                drop(std::mem::take(&mut *bin.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
            }
        });
    }
}

pub struct Scanner {
    cfg: ScanConfig,
    pii: PiiDetector,
}

/// A short, non-identifying preview of a match: its first two characters.
fn preview(s: &str) -> String {
    let head: String = s.chars().take(2).collect();
    format!("{head}…")
}

impl Scanner {
    pub fn new(cfg: ScanConfig) -> Self {
        Self { cfg, pii: PiiDetector::new() }
    }

    pub fn config(&self) -> &ScanConfig {
        &self.cfg
    }

    pub fn pii_detector(&self) -> &PiiDetector {
        &self.pii
    }

    /// Analyse one row on its own (no cross-row checks).
    pub fn analyze(&self, file: &Arc<str>, raw: RawRow) -> Row {
        let line = raw.line;
        match raw.payload {
            Payload::Json(text) => self.analyze_json(file, line, &text),
            Payload::Value(v) => self.analyze_parsed(file, line, parse_value(v, file, line, self.cfg.format)),
            Payload::Bad { csv, field, column, message } => {
                let (code, hint) = if csv {
                    (
                        Code::BadCsv,
                        "make every row have the header's number of cells, quoted where they hold commas or quotes",
                    )
                } else {
                    (Code::BadJson, "fix the JSON at that column (a JSON validator shows the exact spot)")
                };
                let msg = match column {
                    Some(c) => format!("{message} (column {c})"),
                    None => message,
                };
                let f = Finding::new(code, file, Some(line), field, msg, hint);
                Row { findings: vec![f], ..Row::empty(line) }
            }
        }
    }

    /// [`Scanner::analyze`] of a JSONL line given as bytes (not yet checked for UTF-8).
    fn analyze_line(&self, file: &Arc<str>, line: u64, bytes: &[u8]) -> Row {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.analyze_json(file, line, text),
            Err(e) => self.analyze(file, RawRow { line, payload: bad_utf8(e) }),
        }
    }

    fn analyze_json(&self, file: &Arc<str>, line: u64, text: &str) -> Row {
        let parsed = match parse_clean_chat(text, file, line, self.cfg.format) {
            Some(parsed) => parsed,
            None => match parse_json(text) {
                Ok(v) => parse_value(v, file, line, self.cfg.format),
                Err((column, message)) => Parsed {
                    record: None,
                    findings: vec![Finding::new(
                        Code::BadJson,
                        file,
                        Some(line),
                        "",
                        format!("invalid JSON at column {column}: {message}"),
                        "fix the JSON at that column; each line must be one complete JSON object",
                    )],
                },
            },
        };
        self.analyze_parsed(file, line, parsed)
    }

    /// PII, fingerprint and rendering of a parsed row.
    fn analyze_parsed(&self, file: &Arc<str>, line: u64, parsed: Parsed) -> Row {
        let Parsed { record, mut findings } = parsed;
        let mut row = Row::empty(line);
        if let Some(rec) = &record {
            if self.cfg.pii && rec.any_text(|t| self.pii.may_contain(t)) {
                for (field, text) in rec.texts() {
                    for m in self.pii.find(text) {
                        findings.push(Finding::new(
                            Code::Pii,
                            file,
                            Some(line),
                            field.clone(),
                            format!(
                                "possible {} ({}) at byte {}",
                                m.kind.as_str(),
                                preview(&text[m.start..m.end]),
                                m.start
                            ),
                            "remove or anonymise it, or run `ferrotune data prepare --redact-pii`",
                        ));
                        row.pii.push((field.clone(), m.kind));
                    }
                }
            }
            if self.cfg.fingerprints {
                row.fingerprint = Some(Fingerprint::of(rec, self.cfg.sketcher.as_deref()));
            }
            if self.cfg.backdoor {
                row.backdoor = RowKeys::of(rec);
            }
            if let Some(r) = &self.cfg.renderer {
                match r.count(rec, &self.cfg.render_opts) {
                    Ok((n, t)) => {
                        row.tokens = Some((n, t));
                        if let Some(max) = self.cfg.max_seq_len
                            && n > max
                        {
                            findings.push(Finding::new(
                                Code::TooLong,
                                file,
                                Some(line),
                                "",
                                format!("{n} tokens after rendering with the chat template, over --max-seq-len {max}"),
                                "shorten or split the conversation, or raise --max-seq-len",
                            ));
                        }
                    }
                    Err(e) => findings.push(Finding::new(
                        Code::RenderFailed,
                        file,
                        Some(line),
                        "",
                        e.to_string(),
                        "fix the record so the model's chat template accepts it",
                    )),
                }
            }
        }
        row.findings = findings;
        if !row.has_error() {
            row.record = record;
        }
        row
    }

    /// Stream `path` through [`Scanner::analyze`] and hand each row, in order, to `sink`.
    /// Rows whose format differs from the file's first valid row get a `mixed_formats` error.
    /// Returns the file's format (of its first valid row).
    ///
    /// A pipeline run on the rayon pool: one pool thread reads ahead, keeping [`IN_FLIGHT`]
    /// chunks queued for analysis, and hands the oldest to `sink`, row by row, once it is
    /// analysed; while it waits it runs queued analysis itself. (With the reading and the sink
    /// on a thread of their own, three threads shared two cores and 10–14% of the CPU stayed
    /// idle; this way a 1M-row `data validate` takes ~7% less time.) At most `IN_FLIGHT + 1`
    /// chunks are in memory.
    pub fn scan_file(
        &self,
        path: &Path,
        mut sink: impl FnMut(Row) -> Result<()> + Send,
    ) -> Result<Option<Format>> {
        self.scan_file_ahead(path, |row, _| sink(row))
    }

    /// [`Scanner::scan_file`], handing `sink` each row together with the one [`AHEAD`] rows
    /// later when that is already analysed: a sink whose lookups miss the cache (the dedup
    /// index) can prefetch for it.
    pub fn scan_file_ahead(
        &self,
        path: &Path,
        mut sink: impl FnMut(Row, Option<&Row>) -> Result<()> + Send,
    ) -> Result<Option<Format>> {
        let file: Arc<str> = path.display().to_string().into();
        let mut reader = RowReader::open(path)?;
        let mut file_format: Option<Format> = None;
        let read_chunk = |reader: &mut RowReader| -> Result<Chunk> { reader.read_chunk(CHUNK) };
        let mut deliver = |mut rows: Vec<Row>| -> Result<()> {
            for i in 0..rows.len() {
                let mut row = std::mem::replace(&mut rows[i], Row::empty(0));
                if let Some(rec) = &row.record {
                    let f = rec.format();
                    match file_format {
                        None => file_format = Some(f),
                        Some(ff) if ff != f => {
                            row.findings.push(Finding::new(
                                Code::MixedFormats,
                                &file,
                                Some(row.line),
                                "",
                                format!("a {} record in a file of {} records", f.as_str(), ff.as_str()),
                                "keep one format per file (split the file, or convert the rows)",
                            ));
                            row.record = None;
                        }
                        Some(_) => {}
                    }
                }
                sink(row, rows.get(i + AHEAD))?;
            }
            Ok(())
        };
        // The rows, and the chunk's buffer back for the reader to reuse.
        let analyse = |chunk: Chunk| -> (Vec<Row>, Vec<u8>) {
            let Chunk { bytes, rows } = chunk;
            let rows = rows
                .into_par_iter()
                .map(|r| match r.payload {
                    ChunkPayload::Line(range) => self.analyze_line(&file, r.line, &bytes[range]),
                    ChunkPayload::Row(payload) => self.analyze(&file, RawRow { line: r.line, payload }),
                })
                .collect();
            (rows, bytes)
        };
        // The body runs on a pool thread, so that waiting for a chunk can run the pool's queued
        // work instead of leaving a core idle (the pool is all the threads there are).
        rayon::scope(|scope| -> Result<()> {
            let mut in_flight: VecDeque<mpsc::Receiver<(Vec<Row>, Vec<u8>)>> =
                VecDeque::with_capacity(IN_FLIGHT);
            let mut eof = false;
            let mut delivered = 0u64;
            loop {
                while !eof && in_flight.len() < IN_FLIGHT {
                    let chunk = read_chunk(&mut reader)?;
                    if chunk.rows.is_empty() {
                        eof = true;
                        break;
                    }
                    let (tx, rx) = mpsc::sync_channel(1);
                    let analyse = &analyse;
                    scope.spawn(move |_| {
                        let _ = tx.send(analyse(chunk));
                    });
                    in_flight.push_back(rx);
                }
                let Some(rx) = in_flight.pop_front() else { return Ok(()) };
                // The sender is dropped only after sending, unless the analysis panicked; then
                // the scope re-raises the panic when it ends.
                let analysed = loop {
                    match rx.try_recv() {
                        Ok(done) => break Some(done),
                        Err(mpsc::TryRecvError::Disconnected) => break None,
                        // Nothing queued to help with: the chunk is being finished elsewhere.
                        Err(mpsc::TryRecvError::Empty)
                            if rayon::yield_now() != Some(rayon::Yield::Executed) =>
                        {
                            break rx.recv().ok();
                        }
                        Err(mpsc::TryRecvError::Empty) => {}
                    }
                };
                if let Some((rows, bytes)) = analysed {
                    reader.recycle(bytes);
                    delivered += rows.len() as u64;
                    deliver(rows)?;
                    self.cfg.progress.report(ScanProgress {
                        stage: "checking",
                        file: path,
                        rows: delivered,
                        bytes: reader.bytes_read(),
                    });
                }
            }
        })?;
        Ok(file_format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn trash_drops_everything_once_whichever_worker_it_names() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let n = 3 * Trash::<Counted>::BATCH + 17;
        let mut trash = Trash::default();
        for i in 0..n {
            let on = match i % 3 {
                0 => None,
                1 => Some(i),
                _ => Some(0),
            };
            trash.push(Counted(dropped.clone()), on);
        }
        drop(trash); // the last partial batch, here
        let t0 = std::time::Instant::now();
        while dropped.load(Ordering::SeqCst) < n && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), n);
    }

    #[test]
    fn trash_made_on_the_calling_worker_is_freed_at_once() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        pool.install(|| {
            let mut trash = Trash::default();
            let here = rayon::current_thread_index();
            trash.push(Counted(dropped.clone()), here);
            assert_eq!(dropped.load(Ordering::SeqCst), 1);
            trash.push(Counted(dropped.clone()), here.map(|i| i + 1));
            assert_eq!(dropped.load(Ordering::SeqCst), 1, "another worker's item waits for its batch");
        });
    }
}
