//! `ferrotune data validate | prepare | render`: the data stage (`ferrotune-data`) on the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use ferrotune_data::prepare::DedupMode;
use ferrotune_data::reader::RowReader;
use ferrotune_data::scan::{ScanConfig, Scanner};
use ferrotune_data::{Format, IGNORE_INDEX, PrepareOptions, RenderOptions, Renderer, ValidateOptions};
use ferrotune_model::store::DEFAULT_MODEL;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Check data files: format errors, duplicates, PII, lengths, coverage, agreement. Exit 0 when
    /// there are no errors (warnings allowed), 1 when there are, 2 on usage errors.
    Validate(ValidateArgs),
    /// Drop bad and duplicate rows, redact PII, split into train.jsonl / eval.jsonl + report.json.
    Prepare(PrepareArgs),
    /// Show what the model sees: the chat template applied, token counts, and which tokens carry loss.
    Render(RenderArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum FormatArg {
    Auto,
    Chat,
    Alpaca,
    Completion,
    Text,
}

impl FormatArg {
    fn format(self) -> Option<Format> {
        match self {
            Self::Auto => None,
            Self::Chat => Some(Format::Chat),
            Self::Alpaca => Some(Format::Alpaca),
            Self::Completion => Some(Format::Completion),
            Self::Text => Some(Format::Text),
        }
    }
}

#[derive(Args)]
struct ValidateArgs {
    /// JSONL, CSV or Parquet files (one dataset; duplicates are found across them).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Record format; `auto` detects it per file.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    format: FormatArg,
    /// Model (name or path) whose tokenizer and chat template count tokens and check lengths.
    #[arg(long)]
    model: Option<String>,
    /// Longest allowed example in tokens after rendering (with --model).
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Held-out file checked for rows that duplicate or nearly duplicate training rows (repeatable).
    #[arg(long = "eval")]
    eval: Vec<PathBuf>,
    /// Jaccard similarity (word 3-grams, MinHash estimate) at or above which rows are near duplicates.
    #[arg(long, default_value_t = 0.85)]
    near_dup_threshold: f64,
    /// Skip the near-duplicate check.
    #[arg(long)]
    no_near_dup: bool,
    /// Epochs for the billed-token estimate.
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    /// Count loss on prompts too (as `--train-on-inputs` in training).
    #[arg(long)]
    train_on_inputs: bool,
    /// Skip the PII scan.
    #[arg(long)]
    no_pii: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Findings listed per code in the JSON report (all are counted).
    #[arg(long, default_value_t = 1000)]
    max_findings: usize,
    #[command(flatten)]
    registry: crate::record::RegistryFlags,
}

#[derive(Args)]
struct PrepareArgs {
    /// Input JSONL, CSV or Parquet file (never modified).
    input: PathBuf,
    /// Output folder for train.jsonl, eval.jsonl and report.json (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DedupArg::Exact)]
    dedup: DedupArg,
    /// Jaccard threshold for --dedup near.
    #[arg(long, default_value_t = 0.85)]
    near_dup_threshold: f64,
    /// Replace e-mails, phones, card numbers, IBANs, SSNs and IP addresses with placeholders.
    #[arg(long)]
    redact_pii: bool,
    /// Fraction of the kept rows that go to eval.jsonl.
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Metadata field to stratify the split by (each value split in the same proportion).
    #[arg(long)]
    stratify_by: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    format: FormatArg,
    /// With a model, rows longer than --max-seq-len tokens after rendering are dropped too.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum DedupArg {
    Off,
    Exact,
    Near,
}

#[derive(Args)]
struct RenderArgs {
    file: PathBuf,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// How many examples to show.
    #[arg(long, default_value_t = 3)]
    n: usize,
    #[arg(long)]
    train_on_inputs: bool,
    /// Mark loss spans with [[ ]] instead of colour (the default when stdout is not a terminal).
    #[arg(long)]
    plain: bool,
    /// Also print the input_ids and labels as JSON.
    #[arg(long)]
    ids: bool,
}

/// Exit 2 with a usage message, as clap does for bad arguments.
fn usage_error(msg: String) -> ! {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{msg}\n")).exit()
}

fn require_files<'a>(files: impl IntoIterator<Item = &'a PathBuf>) {
    for f in files {
        if !f.is_file() {
            usage_error(format!("{}: no such file", f.display()));
        }
    }
}

fn renderer(spec: &str) -> anyhow::Result<Arc<Renderer>> {
    // Tokenizer and template only: the data commands never run the model.
    let m = ferrotune_model::loaded::load_text(spec).with_context(|| format!("loading model {spec}"))?;
    Ok(Arc::new(Renderer::from_text_model(&m)?))
}

pub fn run(a: DataArgs) -> anyhow::Result<()> {
    match a.command {
        DataCommand::Validate(v) => validate(v),
        DataCommand::Prepare(p) => prepare(p),
        DataCommand::Render(r) => render(r),
    }
}

fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    require_files(a.files.iter().chain(&a.eval));
    if !(0.0..=1.0).contains(&a.near_dup_threshold) || a.near_dup_threshold == 0.0 {
        usage_error(format!("--near-dup-threshold {} is not in (0, 1]", a.near_dup_threshold));
    }
    let renderer = a.model.as_deref().map(renderer).transpose()?;
    let opts = ValidateOptions {
        format: a.format.format(),
        renderer,
        model_name: a.model.clone(),
        render_opts: RenderOptions { train_on_inputs: a.train_on_inputs },
        max_seq_len: a.max_seq_len,
        near_dup_threshold: (!a.no_near_dup).then_some(a.near_dup_threshold),
        epochs: a.epochs,
        eval_files: a.eval.clone(),
        pii: !a.no_pii,
        max_findings_per_code: a.max_findings,
        ..ValidateOptions::default()
    };
    let (bar, progress) = scan_bar(a.files.iter().chain(&a.eval), "checking");
    let opts = ValidateOptions { progress, ..opts };
    let report = ferrotune_data::validate(&a.files, &opts);
    bar.finish_and_clear();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    crate::audit::trail(
        &ferrotune_govern::actor(None),
        "data.validate",
        serde_json::json!({"files": crate::record::hash_paths(a.files.iter().chain(&a.eval))?}),
        if report.ok { "ok" } else { "failed" },
        serde_json::json!({"errors": report.errors, "warnings": report.warnings, "rows": report.stats.rows, "counts": report.counts}),
    )?;
    if let Some(reg) = a.registry.open()? {
        let ids = crate::record::validated(&reg, &report)
            .with_context(|| "recording the datasets in the registry (pass --no-registry to skip)")?;
        if !a.json {
            println!("registered: {} dataset(s) ({})", ids.len(), reg.path().display());
        }
    }
    if !report.ok {
        bail!("{} error(s) in the data", report.errors);
    }
    Ok(())
}

/// A progress bar over the bytes of `files` (scanned one after another) for the data scan,
/// on stderr and only when it is a terminal (indicatif hides it otherwise), and the callback
/// that moves it. Parquet files, whose readers report no byte position, count as done when
/// their scan moves on.
fn scan_bar<'a>(
    files: impl IntoIterator<Item = &'a PathBuf>,
    what: &str,
) -> (indicatif::ProgressBar, ferrotune_data::Progress) {
    let sizes: Vec<(PathBuf, u64)> =
        files.into_iter().map(|f| (f.clone(), std::fs::metadata(f).map_or(0, |m| m.len()))).collect();
    let bar = indicatif::ProgressBar::new(sizes.iter().map(|(_, n)| n).sum());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} {bar:30} {bytes}/{total_bytes} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(what.to_string());
    /// Where the bar is: the stage shown, the file being read (index into `sizes`), its rows at
    /// the last report, and the bytes of the files before it.
    struct At {
        stage: String,
        file: usize,
        rows: u64,
        before: u64,
    }
    let at = std::sync::Mutex::new(At { stage: what.to_string(), file: 0, rows: 0, before: 0 });
    let b = bar.clone();
    let progress = ferrotune_data::Progress::new(move |p| {
        let mut at = at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if at.stage != p.stage {
            // A new pass over the files (prepare's writing pass): the bar starts again.
            *at = At { stage: p.stage.to_string(), file: 0, rows: 0, before: 0 };
            b.set_prefix(p.stage);
            b.reset_elapsed();
            b.reset_eta();
        }
        // A report for a later file: the row count starts again (the same file given twice),
        // or the path is another (files with no rows report nothing).
        let mut next = p.rows < at.rows;
        while next || sizes.get(at.file).is_some_and(|(f, _)| f != p.file) {
            let Some((_, n)) = sizes.get(at.file) else { break };
            at.before += n;
            at.file += 1;
            next = false;
        }
        at.rows = p.rows;
        let size = sizes.get(at.file).map_or(0, |(_, n)| *n);
        b.set_position(at.before + p.bytes.unwrap_or(0).min(size));
        b.set_message(format!("{} rows ({})", p.rows, p.file.display()));
    });
    (bar, progress)
}

fn prepare(a: PrepareArgs) -> anyhow::Result<()> {
    require_files([&a.input]);
    if !(0.0..1.0).contains(&a.eval_fraction) {
        usage_error(format!("--eval-fraction {} is not in [0, 1)", a.eval_fraction));
    }
    let renderer = a.model.as_deref().map(renderer).transpose()?;
    let opts = PrepareOptions {
        format: a.format.format(),
        dedup: match a.dedup {
            DedupArg::Off => DedupMode::Off,
            DedupArg::Exact => DedupMode::Exact,
            DedupArg::Near => DedupMode::Near,
        },
        near_dup_threshold: a.near_dup_threshold,
        redact_pii: a.redact_pii,
        eval_fraction: a.eval_fraction,
        stratify_by: a.stratify_by.clone(),
        seed: a.seed,
        renderer,
        max_seq_len: a.max_seq_len,
        ..PrepareOptions::default()
    };
    let (bar, progress) = scan_bar([&a.input], "checking");
    let opts = PrepareOptions { progress, ..opts };
    let r = ferrotune_data::prepare(&a.input, &a.out, &opts);
    bar.finish_and_clear();
    let r = r?;
    let outputs = [a.out.join("train.jsonl"), a.out.join("eval.jsonl"), a.out.join("report.json")];
    crate::audit::trail(
        &ferrotune_govern::actor(None),
        "data.prepare",
        serde_json::json!({"input": crate::record::hash_paths([&a.input])?, "outputs": crate::record::hash_paths(outputs.iter().filter(|p| p.exists()))?}),
        "ok",
        serde_json::json!({"rows_read": r.rows_read, "rows_kept": r.rows_kept, "train_rows": r.train_rows, "eval_rows": r.eval_rows,
            "dropped": r.dropped.len(), "changed": r.changed.len(), "redact_pii": r.redact_pii, "dedup": r.dedup, "seed": r.seed}),
    )?;
    println!(
        "{}: {} rows read, {} dropped, {} changed; wrote {} train + {} eval rows to {} (details in report.json)",
        r.input,
        r.rows_read,
        r.dropped.len(),
        r.changed.len(),
        r.train_rows,
        r.eval_rows,
        a.out.display()
    );
    Ok(())
}

fn render(a: RenderArgs) -> anyhow::Result<()> {
    require_files([&a.file]);
    let renderer = renderer(&a.model)?;
    let opts = RenderOptions { train_on_inputs: a.train_on_inputs };
    let colour = !a.plain && std::io::stdout().is_terminal();
    let scanner = Scanner::new(ScanConfig::default());
    let file: Arc<str> = a.file.display().to_string().into();
    let mut shown = 0usize;
    for raw in RowReader::open(&a.file)? {
        if shown >= a.n {
            break;
        }
        let row = scanner.analyze(&file, raw?);
        let Some(rec) = row.record else {
            for f in row.findings.iter().filter(|f| f.is_error()) {
                eprintln!("{f}");
            }
            continue;
        };
        shown += 1;
        let out = ferrotune_data::render_for_training(&rec, &renderer, &opts)?;
        let at = ferrotune_data::finding::locate(&rec.origin.file, rec.origin.line);
        println!("── example {shown}: {at} — {} tokens, {} with loss ──", out.len(), out.target_tokens());
        print_spans(&renderer, &out.input_ids, &out.labels, colour);
        if a.ids {
            println!("{}", serde_json::json!({"input_ids": out.input_ids, "labels": out.labels}));
        }
        println!();
    }
    if shown == 0 {
        bail!("{}: no valid example to render (run `ferrotune data validate` on it)", a.file.display());
    }
    let legend = if colour {
        "\x1b[1;32mgreen\x1b[0m = loss, \x1b[2mdim\x1b[0m = masked"
    } else {
        "[[ ]] = loss, the rest is masked"
    };
    println!("{legend}");
    Ok(())
}

/// Print the tokens run by run: loss runs highlighted, masked runs dimmed.
fn print_spans(r: &Renderer, ids: &[u32], labels: &[i64], colour: bool) {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let loss = labels[i] != IGNORE_INDEX;
        let start = i;
        while i < ids.len() && (labels[i] != IGNORE_INDEX) == loss {
            i += 1;
        }
        let text = r.tokenizer().decode(&ids[start..i], false).unwrap_or_else(|_| "�".into());
        match (loss, colour) {
            (true, true) => out.push_str(&format!("\x1b[1;32m{text}\x1b[0m")),
            (false, true) => out.push_str(&format!("\x1b[2m{text}\x1b[0m")),
            (true, false) => out.push_str(&format!("[[{text}]]")),
            (false, false) => out.push_str(&text),
        }
    }
    println!("{out}");
}
