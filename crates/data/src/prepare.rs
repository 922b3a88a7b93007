//! `ferrotune data prepare`: drop unusable and duplicate rows, optionally redact personal data,
//! split into train and eval (stratified by a metadata field), and publish `train.jsonl`,
//! `eval.jsonl` and `report.json` atomically.
//!
//! Two streaming passes over the input, never modified: the first checks every row and decides
//! which to drop (remembering only their line numbers) and counts rows per stratum; the second
//! re-reads the kept rows, redacts, and sends exactly round(F·n) of each stratum to eval by
//! sequential random selection ([`crate::split`]). Outputs go to a temporary folder beside
//! `--out` (`.OUT.tmp-PID`), fsync'ed and renamed into place at the end, so a failed or killed
//! run (or a power loss) leaves nothing half-written under `--out`: it is either absent (or the
//! empty folder it was) or complete. A killed run's temporary folder is removed by the next
//! `prepare` to the same `--out`.
//!
//! Crash points (test-only, [`ferrotune_model::crash`]): `prepare-write` (the first chunk of
//! rows written to the temporary folder), `prepare-fill` (every file written and fsync'ed,
//! nothing renamed).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::dedup::{DupIndex, RowRef};
use crate::error::{DataError, Result};
use crate::finding::{Code, Unit};
use crate::minhash::Sketcher;
use crate::pii::PiiKind;
use crate::reader::{Chunk, ChunkRow, RowReader};
use crate::record::{Format, Record};
use crate::render::{RenderOptions, Renderer};
use crate::scan::{Progress, Row, ScanConfig, ScanProgress, Scanner, Trash};
use crate::split::{Selector, eval_count};
use crate::stats::class_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    Off,
    Exact,
    Near,
}

#[derive(Clone)]
pub struct PrepareOptions {
    pub format: Option<Format>,
    pub dedup: DedupMode,
    pub near_dup_threshold: f64,
    pub num_perm: usize,
    pub redact_pii: bool,
    pub eval_fraction: f64,
    /// Metadata field whose values are split in proportion.
    pub stratify_by: Option<String>,
    pub seed: u64,
    /// With a model, rows over `max_seq_len` tokens after rendering are dropped too.
    pub renderer: Option<Arc<Renderer>>,
    pub max_seq_len: usize,
    /// Told how far each pass is (`"checking"`, then `"writing"`).
    pub progress: Progress,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            format: None,
            dedup: DedupMode::Exact,
            near_dup_threshold: 0.85,
            num_perm: 128,
            redact_pii: false,
            eval_fraction: 0.1,
            stratify_by: None,
            seed: 0,
            renderer: None,
            max_seq_len: 2048,
            progress: Progress::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    /// Line (JSONL, CSV) or row (Parquet) of the input; see [`PrepareReport::unit`].
    pub line: u64,
    pub reason: Code,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub line: u64,
    pub reason: &'static str,
    /// (field, kind of personal data replaced), never the data itself.
    pub redacted: Vec<(String, PiiKind)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StratumCounts {
    pub train: u64,
    pub eval: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub input: String,
    /// What `line` in `dropped` and `changed` counts: `line` (JSONL, CSV) or `row` (Parquet).
    pub unit: Unit,
    pub out: String,
    pub seed: u64,
    pub dedup: DedupMode,
    pub near_dup_threshold: Option<f64>,
    pub redact_pii: bool,
    pub eval_fraction: f64,
    pub stratify_by: Option<String>,
    pub rows_read: u64,
    pub rows_kept: u64,
    pub train_rows: u64,
    pub eval_rows: u64,
    pub strata: BTreeMap<String, StratumCounts>,
    pub dropped: Vec<Dropped>,
    pub changed: Vec<Changed>,
}

/// Stratum of a record: the value of `field` in its metadata, or `(missing)`.
fn stratum(rec: &Record, field: Option<&str>) -> String {
    let Some(field) = field else { return "(all)".into() };
    rec.metadata.as_ref().and_then(|m| m.get(field)).and_then(class_of).unwrap_or_else(|| "(missing)".into())
}

pub fn prepare(input: &Path, out: &Path, opts: &PrepareOptions) -> Result<PrepareReport> {
    check(input, out, opts)?;
    let sketcher = (opts.dedup == DedupMode::Near)
        .then(|| Arc::new(Sketcher::new(opts.near_dup_threshold, opts.num_perm, opts.seed ^ 0x5eed)));
    let scanner = scanner(opts, sketcher.clone());
    let unit = Unit::of_file(&input.display().to_string());

    // Pass 1: decide what to drop; count each stratum's kept rows.
    let decided = decide(&scanner, input, opts, sketcher.as_deref(), unit)?;

    // Pass 2: write the kept rows, split, to a temporary folder beside `out`.
    let tmp = TempOut::beside(out)?;
    let written = write_kept(&scanner, input, opts, unit, &decided, &tmp.path)?;

    // The report, then the folder renamed into place.
    let (train_rows, eval_rows) = written.strata.values().fold((0, 0), |(t, e), c| (t + c.train, e + c.eval));
    let report = PrepareReport {
        input: input.display().to_string(),
        unit,
        out: out.display().to_string(),
        seed: opts.seed,
        dedup: opts.dedup,
        near_dup_threshold: (opts.dedup == DedupMode::Near).then_some(opts.near_dup_threshold),
        redact_pii: opts.redact_pii,
        eval_fraction: opts.eval_fraction,
        stratify_by: opts.stratify_by.clone(),
        rows_read: decided.rows_read,
        rows_kept: train_rows + eval_rows,
        train_rows,
        eval_rows,
        strata: written.strata,
        dropped: decided.dropped,
        changed: written.changed,
    };
    publish(tmp, out, &report)?;
    Ok(report)
}

/// The options and paths, checked before any row is read: `out` must be new or empty.
fn check(input: &Path, out: &Path, opts: &PrepareOptions) -> Result<()> {
    if !(0.0..1.0).contains(&opts.eval_fraction) {
        return Err(DataError::InvalidOption {
            option: "--eval-fraction",
            reason: format!("{} is not in [0, 1)", opts.eval_fraction),
        });
    }
    if !input.is_file() {
        return Err(DataError::InvalidFile { path: input.to_path_buf(), reason: "no such file".into() });
    }
    if out.exists() && std::fs::read_dir(out).map_err(|e| DataError::io(out, e))?.next().is_some() {
        return Err(DataError::InvalidFile {
            path: out.to_path_buf(),
            reason: "exists and is not empty; choose a new --out".into(),
        });
    }
    Ok(())
}

/// The scanner of pass 1: every check that drops a row, fingerprints for dedup.
fn scanner(opts: &PrepareOptions, sketcher: Option<Arc<Sketcher>>) -> Scanner {
    Scanner::new(ScanConfig {
        format: opts.format,
        renderer: opts.renderer.clone(),
        render_opts: RenderOptions::default(),
        max_seq_len: opts.renderer.as_ref().map(|_| opts.max_seq_len),
        sketcher,
        pii: false,
        fingerprints: opts.dedup != DedupMode::Off,
        // A warning `validate` reports; `prepare` drops no row for it.
        backdoor: false,
        progress: opts.progress.clone(),
    })
}

/// What pass 1 decided.
struct Decisions {
    /// The rows to drop, in file order.
    dropped: Vec<Dropped>,
    /// Kept rows per stratum.
    strata: BTreeMap<String, u64>,
    rows_read: u64,
}

/// Pass 1: every row checked; the invalid ones and the duplicates dropped (only their lines
/// remembered), the kept ones counted per stratum.
fn decide(
    scanner: &Scanner,
    input: &Path,
    opts: &PrepareOptions,
    sketcher: Option<&Sketcher>,
    unit: Unit,
) -> Result<Decisions> {
    let mut index = DupIndex::with_lsh(sketcher.map(Sketcher::index));
    if opts.dedup != DedupMode::Off {
        index.reserve_for([input]);
    }
    let strat = opts.stratify_by.as_deref();
    let mut d = Decisions { dropped: Vec::new(), strata: BTreeMap::new(), rows_read: 0 };
    // Rows are freed on the worker that built them (see `Trash`).
    let mut trash: Trash<Row> = Trash::default();
    scanner.scan_file(input, |row| {
        d.rows_read += 1;
        match &row.record {
            None => d.dropped.extend(first_error(&row)),
            Some(rec) => match duplicate(&row, &mut index, unit) {
                Some(dup) => d.dropped.push(dup),
                None => *d.strata.entry(stratum(rec, strat)).or_default() += 1,
            },
        }
        let made_on = row.made_on;
        trash.push(row, made_on);
        Ok(())
    })?;
    drop(trash);
    Ok(d)
}

/// A row without a record dropped for its first error (the others counted).
fn first_error(row: &Row) -> Option<Dropped> {
    let mut errs = row.findings.iter().filter(|f| f.is_error());
    let first = errs.next()?;
    let more = errs.count();
    let detail =
        if more > 0 { format!("{} (+{more} more errors)", first.message) } else { first.message.clone() };
    Some(Dropped { line: row.line, reason: first.code, detail })
}

/// A row dropped as an exact or near duplicate of one kept before it (`index` learns it
/// otherwise).
fn duplicate(row: &Row, index: &mut DupIndex, unit: Unit) -> Option<Dropped> {
    let c = index.check_insert(row.fingerprint.as_ref()?, RowRef::new(0, row.line));
    if let Some(r) = c.exact_of {
        return Some(Dropped {
            line: row.line,
            reason: Code::ExactDuplicate,
            detail: format!("duplicate of {} {}", unit.as_str(), r.line()),
        });
    }
    let (r, j) = c.near_of?;
    Some(Dropped {
        line: row.line,
        reason: Code::NearDuplicate,
        detail: format!("near duplicate of {} {} (Jaccard {j:.2})", unit.as_str(), r.line()),
    })
}

/// The temporary folder beside `out` (same file system, so it can be renamed into place),
/// removed when dropped unless published.
struct TempOut {
    path: PathBuf,
    published: bool,
}

impl TempOut {
    /// `.OUT.tmp-PID` beside `out`, after removing those of dead processes (a killed run's).
    fn beside(out: &Path) -> Result<Self> {
        let parent = parent_of(out);
        std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
        let name = out.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        let prefix = format!(".{name}.tmp-");
        remove_dead_temps(&parent, &prefix);
        let path = parent.join(format!("{prefix}{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| DataError::io(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self { path, published: false })
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn parent_of(out: &Path) -> PathBuf {
    out.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Removes `dir/PREFIX<pid>` folders whose process is gone. Only where a process can be looked up
/// without a new dependency (`/proc`); elsewhere a killed run's folder stays (hidden, harmless).
fn remove_dead_temps(dir: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else { continue };
        if !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// fsync `path` (a file, or a folder so the names in it survive a power loss; opening a folder
/// for fsync is a Unix idiom).
fn sync(path: &Path) -> Result<()> {
    if path.is_dir() && !cfg!(unix) {
        return Ok(());
    }
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| DataError::io(path, e))
}

/// What pass 2 wrote.
struct Written {
    strata: BTreeMap<String, StratumCounts>,
    changed: Vec<Changed>,
}

/// Pass 2: the kept rows re-read, redacted and split into `dir`'s `train.jsonl` and
/// `eval.jsonl`. Rows are parsed, redacted and serialised in parallel, a chunk at a time, while
/// the chunk before is written.
fn write_kept(
    scanner: &Scanner,
    input: &Path,
    opts: &PrepareOptions,
    unit: Unit,
    decided: &Decisions,
    dir: &Path,
) -> Result<Written> {
    let kept = KeptRows {
        scanner,
        light: Scanner::new(ScanConfig { format: opts.format, ..ScanConfig::default() }),
        input,
        file: input.display().to_string().into(),
        unit,
        opts,
        // In file order (pass 1 pushed them so).
        drop_lines: decided.dropped.iter().map(|d| d.line).collect(),
    };
    let mut split = Split::new(dir, &decided.strata, opts)?;
    let mut reader = RowReader::open(input)?;
    let mut trash: Trash<String> = Trash::default();
    let mut pending: Vec<Result<Option<Ready>>> = Vec::new();
    let mut read_rows = 0u64;
    loop {
        let Chunk { bytes, rows } = reader.read_chunk(4096)?;
        let last = rows.is_empty();
        let (wrote, next) = rayon::join(
            || split.write(std::mem::take(&mut pending), &mut trash),
            || rows.into_par_iter().map(|r| kept.ready(r, &bytes)).collect::<Vec<_>>(),
        );
        wrote?;
        reader.recycle(bytes);
        pending = next;
        if last {
            break;
        }
        read_rows += pending.len() as u64;
        opts.progress.report(ScanProgress {
            stage: "writing",
            file: input,
            rows: read_rows,
            bytes: reader.bytes_read(),
        });
    }
    drop(trash);
    split.finish()
}

/// A kept row made ready in parallel: its stratum, its JSON line, what was redacted.
struct Ready {
    line: u64,
    key: String,
    json: String,
    redacted: Vec<(String, PiiKind)>,
    made_on: Option<usize>,
}

/// How pass 2 makes a kept row ready.
struct KeptRows<'a> {
    /// Pass 1's scanner, for its PII detector.
    scanner: &'a Scanner,
    /// Parses a row again, with no checks.
    light: Scanner,
    input: &'a Path,
    file: Arc<str>,
    unit: Unit,
    opts: &'a PrepareOptions,
    drop_lines: Vec<u64>,
}

impl KeptRows<'_> {
    /// The row ready to write, or `None` when pass 1 dropped it.
    fn ready(&self, r: ChunkRow, bytes: &[u8]) -> Result<Option<Ready>> {
        let line = r.line;
        if self.drop_lines.binary_search(&line).is_ok() {
            return Ok(None);
        }
        let Some(mut rec) = self.light.analyze(&self.file, r.into_raw(bytes)).record else {
            return Err(DataError::InvalidFile {
                path: self.input.to_path_buf(),
                reason: format!("{} {line} changed while preparing", self.unit.as_str()),
            });
        };
        let mut redacted = Vec::new();
        if self.opts.redact_pii {
            let det = self.scanner.pii_detector();
            let fields: Vec<String> = rec.texts().into_iter().map(|(f, _)| f).collect();
            let mut i = 0;
            rec.map_texts(|text| {
                let (new, matches) = det.redact(text);
                for m in &matches {
                    redacted.push((fields.get(i).cloned().unwrap_or_default(), m.kind));
                }
                i += 1;
                (!matches.is_empty()).then_some(new)
            });
        }
        let mut json = serde_json::to_string(&rec.to_json())
            .map_err(|e| DataError::InvalidFile { path: self.input.to_path_buf(), reason: e.to_string() })?;
        json.push('\n');
        Ok(Some(Ready {
            line,
            key: stratum(&rec, self.opts.stratify_by.as_deref()),
            json,
            redacted,
            made_on: rayon::current_thread_index(),
        }))
    }
}

/// The split and the writes: exactly round(F·n) rows of each stratum to eval, by a seeded draw
/// per row in file order ([`crate::split`]).
struct Split {
    train: Output,
    eval: Output,
    /// Chunks written so far (the crash point `prepare-write` is after the first).
    chunks: usize,
    selectors: BTreeMap<String, Selector>,
    rng: StdRng,
    strata: BTreeMap<String, StratumCounts>,
    changed: Vec<Changed>,
}

/// One output file and its path (named in every error: a full disk says which file).
struct Output {
    path: PathBuf,
    w: BufWriter<File>,
}

impl Output {
    fn create(path: PathBuf) -> Result<Self> {
        let f = File::create(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self { path, w: BufWriter::new(f) })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).map_err(|e| DataError::io(&self.path, e))
    }

    /// Flushed and fsync'ed.
    fn finish(self) -> Result<()> {
        let Output { path, w } = self;
        let f = w.into_inner().map_err(|e| DataError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| DataError::io(&path, e))
    }
}

impl Split {
    /// `train.jsonl` and `eval.jsonl` created in `dir`, for strata of `counts` rows.
    fn new(dir: &Path, counts: &BTreeMap<String, u64>, opts: &PrepareOptions) -> Result<Self> {
        let (train, eval) =
            (Output::create(dir.join("train.jsonl"))?, Output::create(dir.join("eval.jsonl"))?);
        let selectors = counts
            .iter()
            .map(|(k, &n)| (k.clone(), Selector::new(n, eval_count(n, opts.eval_fraction))))
            .collect();
        Ok(Self {
            train,
            eval,
            chunks: 0,
            selectors,
            rng: StdRng::seed_from_u64(opts.seed),
            strata: BTreeMap::new(),
            changed: Vec::new(),
        })
    }

    /// One chunk's rows, in file order.
    fn write(&mut self, done: Vec<Result<Option<Ready>>>, trash: &mut Trash<String>) -> Result<()> {
        for r in done {
            let Some(Ready { line, key, json, redacted, made_on }) = r? else { continue };
            if !redacted.is_empty() {
                self.changed.push(Changed { line, reason: "pii_redacted", redacted });
            }
            let to_eval = self.selectors.get_mut(&key).is_some_and(|s| s.pick(&mut self.rng));
            let counts = self.strata.entry(key).or_default();
            let w = if to_eval {
                counts.eval += 1;
                &mut self.eval
            } else {
                counts.train += 1;
                &mut self.train
            };
            w.write(json.as_bytes())?;
            trash.push(json, made_on);
        }
        self.chunks += 1;
        if self.chunks == 2 {
            // The first chunk of rows (the first call has none) is in the temp folder.
            for w in [&mut self.train, &mut self.eval] {
                w.w.flush().map_err(|e| DataError::io(&w.path, e))?;
            }
            ferrotune_model::crash::point("prepare-write");
        }
        Ok(())
    }

    fn finish(self) -> Result<Written> {
        self.train.finish()?;
        self.eval.finish()?;
        Ok(Written { strata: self.strata, changed: self.changed })
    }
}

/// `report.json` written into `tmp` and everything fsync'ed, then `tmp` renamed to `out` (an
/// empty `out` replaced: `rename` takes an empty folder's place in one step on Unix).
fn publish(mut tmp: TempOut, out: &Path, report: &PrepareReport) -> Result<()> {
    let report_path = tmp.path.join("report.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| DataError::InvalidFile { path: report_path.clone(), reason: e.to_string() })?;
    let mut f = File::create(&report_path).map_err(|e| DataError::io(&report_path, e))?;
    f.write_all((text + "\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| DataError::io(&report_path, e))?;
    sync(&tmp.path)?;
    ferrotune_model::crash::point("prepare-fill");
    if out.exists() && !cfg!(unix) {
        std::fs::remove_dir(out).map_err(|e| DataError::io(out, e))?;
    }
    // On failure `tmp` is dropped, and removed.
    std::fs::rename(&tmp.path, out).map_err(|e| DataError::io(out, e))?;
    tmp.published = true;
    sync(&parent_of(out))
}
