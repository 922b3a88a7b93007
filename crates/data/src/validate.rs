//! `ferrotune data validate`: every row through the scanner, then the dataset-wide checks
//! (duplicates, conflicting answers, leakage into the eval file, size, coverage, annotator
//! agreement, possible backdoor triggers), into one [`Report`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::agreement::{Agreement, AgreementSummary, MIN_ALPHA};
use crate::dedup::{DupIndex, Fingerprint, RowRef};
use crate::error::{DataError, Result};
use crate::finding::{Code, Finding, Severity};
use crate::minhash::Sketcher;
use crate::poison::{BackdoorScan, Backdoors};
use crate::record::{Format, Record};
use crate::render::{RenderOptions, Renderer};
use crate::scan::{Progress, Row, ScanConfig, Scanner, Trash};
use crate::stats::{Coverage, FieldCoverage, Histogram, Summary};

/// Fewer valid training rows than this is an error (the OpenAI API's minimum).
pub const MIN_EXAMPLES: u64 = 10;
/// Fewer than this is a warning (OpenAI: clear improvements usually need 50–100).
pub const FEW_EXAMPLES: u64 = 100;
/// A metadata class with fewer rows than this fraction of the largest class is under-covered.
pub const SKEW_RATIO: f64 = 0.1;
/// Fields with more classes than this are not checked for skew.
pub const MAX_SKEW_CLASSES: usize = 50;

#[derive(Clone)]
pub struct ValidateOptions {
    pub format: Option<Format>,
    pub renderer: Option<Arc<Renderer>>,
    pub model_name: Option<String>,
    pub render_opts: RenderOptions,
    pub max_seq_len: usize,
    /// Jaccard similarity at or above which two rows are near duplicates; `None` turns the
    /// near-duplicate check off.
    pub near_dup_threshold: Option<f64>,
    pub num_perm: usize,
    pub seed: u64,
    pub epochs: u32,
    pub eval_files: Vec<PathBuf>,
    pub pii: bool,
    /// Look for possible backdoor triggers ([`crate::poison`]) in the training files.
    pub backdoor: bool,
    /// Findings kept per code in the report (all are counted).
    pub max_findings_per_code: usize,
    /// Told how far the scan of each file is (training files, then eval files).
    pub progress: Progress,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            format: None,
            renderer: None,
            model_name: None,
            render_opts: RenderOptions::default(),
            max_seq_len: 2048,
            near_dup_threshold: Some(0.85),
            num_perm: 128,
            seed: 1,
            epochs: 3,
            eval_files: Vec::new(),
            pii: true,
            backdoor: true,
            max_findings_per_code: 1000,
            progress: Progress::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub path: String,
    /// `train` or `eval`.
    pub role: &'static str,
    pub format: Option<Format>,
    pub rows: u64,
    pub valid_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub rows: u64,
    pub valid_rows: u64,
    pub per_format: BTreeMap<Format, u64>,
    pub messages_per_example: Option<Summary>,
    /// Tokens per example after rendering (with a model).
    pub total_tokens: Option<Summary>,
    /// Tokens with loss per example (with a model).
    pub target_tokens: Option<Summary>,
    pub epochs: u32,
    /// Total tokens × epochs: what a per-token training bill counts (with a model).
    pub billed_training_tokens: Option<u64>,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub conflicting_answers: u64,
    pub rows_with_pii: u64,
    pub eval_rows: u64,
    pub eval_rows_leaked: u64,
    pub coverage: BTreeMap<String, FieldCoverage>,
    /// What the backdoor-trigger check looked at (`None` when it was off).
    pub backdoor: Option<BackdoorScan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub model: Option<String>,
    pub max_seq_len: Option<usize>,
    pub near_dup_threshold: Option<f64>,
    pub num_perm: usize,
    /// LSH bands × rows per band chosen for the threshold.
    pub lsh_bands_rows: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No errors (warnings allowed).
    pub ok: bool,
    pub errors: u64,
    pub warnings: u64,
    pub files: Vec<FileSummary>,
    /// Findings per code (all of them, also those left out of `findings`).
    pub counts: BTreeMap<Code, u64>,
    pub findings: Vec<Finding>,
    /// Whether some findings were counted but not listed (see `max_findings_per_code`).
    pub findings_truncated: bool,
    pub stats: Stats,
    pub agreement: Option<AgreementSummary>,
    pub settings: Settings,
}

struct Collector {
    max_per_code: usize,
    counts: BTreeMap<Code, u64>,
    findings: Vec<Finding>,
    truncated: bool,
}

impl Collector {
    fn push(&mut self, f: Finding) {
        let n = self.counts.entry(f.code).or_default();
        *n += 1;
        if (*n as usize) <= self.max_per_code {
            self.findings.push(f);
        } else {
            self.truncated = true;
        }
    }
}

fn where_(files: &[Arc<str>], r: RowRef) -> String {
    let file = files.get(r.file()).map(|f| f.to_string()).unwrap_or_default();
    crate::finding::locate(&file, r.line())
}

pub fn validate(files: &[PathBuf], opts: &ValidateOptions) -> Result<Report> {
    if files.is_empty() {
        return Err(DataError::InvalidOption {
            option: "FILE",
            reason: "give at least one data file".into(),
        });
    }
    for f in files.iter().chain(&opts.eval_files) {
        if !f.is_file() {
            return Err(DataError::InvalidFile { path: f.clone(), reason: "no such file".into() });
        }
    }
    let near = opts.near_dup_threshold.map(|t| (t, opts.num_perm));
    let sketcher = near.map(|(t, p)| Arc::new(Sketcher::new(t, p, opts.seed)));
    let scanner = Scanner::new(ScanConfig {
        format: opts.format,
        renderer: opts.renderer.clone(),
        render_opts: opts.render_opts,
        max_seq_len: opts.renderer.as_ref().map(|_| opts.max_seq_len),
        sketcher: sketcher.clone(),
        pii: opts.pii,
        fingerprints: true,
        backdoor: opts.backdoor,
        progress: opts.progress.clone(),
    });
    let mut index = DupIndex::with_lsh(sketcher.as_deref().map(Sketcher::index));
    index.reserve_for(files.iter().map(PathBuf::as_path));
    let mut out = Collector {
        max_per_code: opts.max_findings_per_code,
        counts: BTreeMap::new(),
        findings: Vec::new(),
        truncated: false,
    };
    let mut stats = Stats { epochs: opts.epochs, ..Stats::default() };
    let mut msgs = Histogram::default();
    let mut total = Histogram::default();
    let mut target = Histogram::default();
    let mut coverage = Coverage::default();
    let mut agreement = Agreement::default();
    let mut summaries = Vec::new();
    let names: Vec<Arc<str>> =
        files.iter().chain(&opts.eval_files).map(|p| p.display().to_string().into()).collect();

    let mut backdoors = opts.backdoor.then(Backdoors::default);
    // Records, fingerprints and backdoor keys are freed on the pool, each on the worker that built it.
    let mut trash: Trash<(Record, Option<Fingerprint>, Option<crate::poison::RowKeys>)> = Trash::default();
    for (fi, path) in files.iter().enumerate() {
        let name = names[fi].clone();
        let (mut rows, mut valid) = (0u64, 0u64);
        let format = scanner.scan_file_ahead(path, |row: Row, ahead: Option<&Row>| {
            rows += 1;
            if let Some(fp) = ahead.and_then(|r| r.fingerprint.as_ref()) {
                index.prefetch(fp);
            }
            let Row { line, record, findings, fingerprint, backdoor, tokens, pii, made_on } = row;
            findings.into_iter().for_each(|f| out.push(f));
            let Some(rec) = record else { return Ok(()) };
            valid += 1;
            *stats.per_format.entry(rec.format()).or_default() += 1;
            msgs.add(rec.turns().len() as u64);
            if let Some((n, t)) = tokens {
                total.add(n as u64);
                target.add(t as u64);
            }
            if !pii.is_empty() {
                stats.rows_with_pii += 1;
            }
            if let Some(meta) = &rec.metadata {
                coverage.add(meta);
                if let Some(Value::Array(labels)) = meta.get("annotations") {
                    agreement.add_unit(labels);
                }
            }
            if let Some(fp) = &fingerprint {
                let at = RowRef::new(fi, line);
                let c = index.check_insert(fp, at);
                let push = |out: &mut Collector, code, msg: String, hint: &str| {
                    out.push(Finding::new(code, &name, Some(line), "", msg, hint))
                };
                if let Some(r) = c.exact_of {
                    stats.exact_duplicates += 1;
                    push(
                        &mut out,
                        Code::ExactDuplicate,
                        format!("same conversation as {}", where_(&names, r)),
                        "drop one copy (`prepare --dedup exact` does)",
                    );
                } else if let Some((r, j)) = c.near_of {
                    stats.near_duplicates += 1;
                    push(
                        &mut out,
                        Code::NearDuplicate,
                        format!("near duplicate of {} (estimated Jaccard {j:.2})", where_(&names, r)),
                        "drop or vary one of them (`prepare --dedup near` drops it)",
                    );
                }
                if let Some(r) = c.conflict_with {
                    stats.conflicting_answers += 1;
                    push(
                        &mut out,
                        Code::ConflictingAnswers,
                        format!("same prompt as {} with a different answer", where_(&names, r)),
                        "make the answers agree, or make the prompts say what differs",
                    );
                }
            }
            if let (Some(b), Some(keys)) = (backdoors.as_mut(), &backdoor) {
                b.add(RowRef::new(fi, line), keys, &rec);
            }
            trash.push((rec, fingerprint, backdoor), made_on);
            Ok(())
        })?;
        stats.rows += rows;
        stats.valid_rows += valid;
        summaries.push(FileSummary {
            path: name.to_string(),
            role: "train",
            format,
            rows,
            valid_rows: valid,
        });
    }

    for (ei, path) in opts.eval_files.iter().enumerate() {
        let fi = files.len() + ei;
        let name = names[fi].clone();
        let (mut rows, mut valid) = (0u64, 0u64);
        let format = scanner.scan_file(path, |row: Row| {
            rows += 1;
            row.findings.into_iter().for_each(|f| out.push(f));
            if row.record.is_none() {
                return Ok(());
            }
            valid += 1;
            if let Some(fp) = row.fingerprint {
                let c = index.check(&fp);
                let hit = c
                    .exact_of
                    .map(|r| (r, "a copy of".to_string()))
                    .or(c.near_of.map(|(r, j)| (r, format!("a near duplicate (Jaccard {j:.2}) of"))));
                if let Some((r, what)) = hit {
                    stats.eval_rows_leaked += 1;
                    out.push(Finding::new(
                        Code::EvalLeakage,
                        &name,
                        Some(row.line),
                        "",
                        format!("eval row is {what} training row {}", where_(&names, r)),
                        "remove it from the eval file (or from training): leaked rows inflate eval scores",
                    ));
                }
            }
            Ok(())
        })?;
        stats.eval_rows += valid;
        summaries.push(FileSummary { path: name.to_string(), role: "eval", format, rows, valid_rows: valid });
    }

    dataset_checks(&names[0], &stats, &coverage, &agreement, &mut out);
    if let Some(b) = backdoors {
        let (found, scan) = b.finish(&names);
        found.into_iter().for_each(|f| out.push(f));
        stats.backdoor = Some(scan);
    }
    stats.messages_per_example = msgs.summary();
    stats.total_tokens = total.summary();
    stats.target_tokens = target.summary();
    stats.billed_training_tokens = opts.renderer.as_ref().map(|_| total.sum() * u64::from(opts.epochs));
    stats.coverage = coverage.fields().clone();
    let errors = out.counts.iter().filter(|(c, _)| c.severity() == Severity::Error).map(|(_, n)| n).sum();
    let warnings = out.counts.iter().filter(|(c, _)| c.severity() == Severity::Warning).map(|(_, n)| n).sum();
    Ok(Report {
        ok: errors == 0,
        errors,
        warnings,
        files: summaries,
        counts: out.counts,
        findings: out.findings,
        findings_truncated: out.truncated,
        stats,
        agreement: (agreement.units() > 0).then(|| agreement.summary()),
        settings: Settings {
            model: opts.model_name.clone(),
            max_seq_len: opts.renderer.as_ref().map(|_| opts.max_seq_len),
            near_dup_threshold: opts.near_dup_threshold,
            num_perm: opts.num_perm,
            lsh_bands_rows: index.lsh_params(),
        },
    })
}

fn dataset_checks(
    file: &Arc<str>,
    stats: &Stats,
    coverage: &Coverage,
    agreement: &Agreement,
    out: &mut Collector,
) {
    let n = stats.valid_rows;
    if n < MIN_EXAMPLES {
        out.push(Finding::new(
            Code::TooFewExamples,
            file,
            None,
            "",
            format!("{n} valid training examples; at least {MIN_EXAMPLES} are needed"),
            "add examples (50–100 good ones is a usual start)",
        ));
    } else if n < FEW_EXAMPLES {
        out.push(Finding::new(
            Code::FewExamples,
            file,
            None,
            "",
            format!("only {n} valid training examples"),
            "fine-tuning usually needs 50–100+ examples to show a clear change; add more",
        ));
    }
    for (field, fc) in coverage.fields() {
        if field == "annotations"
            || fc.high_cardinality
            || fc.counts.len() < 2
            || fc.counts.len() > MAX_SKEW_CLASSES
        {
            continue;
        }
        let max = fc.counts.values().copied().max().unwrap_or(0);
        let mut small: Vec<(&String, &u64)> =
            fc.counts.iter().filter(|(_, c)| (**c as f64) < SKEW_RATIO * max as f64).collect();
        small.sort();
        if !small.is_empty() {
            let list: Vec<String> = small.iter().map(|(k, c)| format!("{k} ({c})")).collect();
            out.push(Finding::new(
                Code::SkewedCoverage,
                file,
                None,
                format!("metadata.{field}"),
                format!(
                    "under-covered values of `{field}` (< {:.0}% of the largest class, {max} rows): {}",
                    SKEW_RATIO * 100.0,
                    list.join(", ")
                ),
                "add examples of these classes, or down-sample the large ones",
            ));
        }
    }
    if let Some(a) = agreement.alpha()
        && a < MIN_ALPHA
    {
        out.push(Finding::new(
            Code::LowAgreement,
            file,
            None,
            "metadata.annotations",
            format!("Krippendorff's alpha (nominal) = {a:.3} over {} units, below {MIN_ALPHA}", agreement.units()),
            "tighten the labelling guidelines and re-annotate the disputed items before training on these labels",
        ));
    }
}
