//! `ferrotune guard`: check a text with the serving guards, evaluate and train the
//! prompt-injection classifier.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrotune_data::pii::PiiDetector;
use ferrotune_guard::injection::{self, InjectionDetector, LabelledText, TrainConfig};
use ferrotune_model::store::DEFAULT_MODEL;

/// Exit statuses of `guard` (clap's own usage errors are 2 as well).
const CLEAN: u8 = 0;
const FLAGGED: u8 = 1;
const ERROR: u8 = 2;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 clean (check) or done (eval, train); 1 check found something; 2 error or bad usage."
)]
pub struct GuardArgs {
    #[command(subcommand)]
    command: GuardCommand,
}

#[derive(Subcommand)]
enum GuardCommand {
    /// Run the input guards on one text: prompt injection (rules + classifier) and personal data.
    #[command(
        after_help = "Prints the injection verdict (probability 0..1, the rule that fired, flagged or not at the \
threshold) and the kinds and counts of personal data found (never the matched text).\n\
Texts over 16 KiB are judged on their first and last 8 KiB.\n\
Exit status: 0 clean; 1 flagged (an injection, or personal data found); 2 error."
    )]
    Check(CheckArgs),
    /// Recall at 1% and 5% false positives, AUROC, per-source and per-family recall and latency
    /// of the injection detector on labelled rows.
    #[command(
        after_help = "Rows: JSONL {\"text\": …, \"label\": 0|1, \"source\"?: …, \"family\"?: …} (1 = injection).\n\
Recall at X% FPR: the share of injections flagged at the lowest threshold that flags at most X% of the benign rows \
(rule hits count as flagged whatever the threshold). Latency: microseconds per check on one thread, p50/p95 over \
the rows, and for one 512-token input (the rows' text cut to 512 tokens of --tokenizer's tokenizer; 2,048 \
characters when it is not installed).\n\
Exit status: 0 done; 2 error (a bad row names the file, line and field)."
    )]
    Eval(EvalArgs),
    /// Train the injection classifier on labelled rows; the threshold is set at --target-fpr
    /// false positives on the validation rows.
    #[command(
        after_help = "Rows: JSONL {\"text\": …, \"label\": 0|1} (1 = injection), as crates/guard/corpus/ holds them.\n\
Writes the model file (hashed n-gram weights, bias, threshold, training record; checksummed).\n\
Exit status: 0 done; 2 error."
    )]
    Train(TrainArgs),
}

#[derive(Args)]
struct ModelOpts {
    /// Injection classifier file (`guard train --out`); default: the one built into ferrotune.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Probability (0..1] at or above which a text is flagged; default: the model's own,
    /// chosen at 1% false positives on its validation split.
    #[arg(long)]
    threshold: Option<f32>,
}

impl ModelOpts {
    fn load(&self) -> anyhow::Result<InjectionDetector> {
        let det = match &self.model {
            Some(p) => InjectionDetector::from_file(p)?,
            None => InjectionDetector::bundled(),
        };
        Ok(match self.threshold {
            Some(t) if t > 0.0 && t <= 1.0 => det.with_threshold(t),
            Some(t) => bail!("--threshold: must be in (0, 1], got {t}"),
            None => det,
        })
    }
}

#[derive(Args)]
struct CheckArgs {
    /// The text, or `-` to read standard input.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    text: Option<String>,
    /// Read the text from a file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    model: ModelOpts,
    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Labelled rows (JSONL).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    model: ModelOpts,
    /// Tokenizer for the 512-token latency input (installed name, GGUF file or HF directory).
    #[arg(long, default_value = DEFAULT_MODEL)]
    tokenizer: String,
    /// Timed runs of the 512-token input.
    #[arg(long, default_value_t = 500)]
    latency_runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Training rows (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Validation rows (JSONL): epoch losses and the threshold; never trained on.
    #[arg(long)]
    validation: PathBuf,
    /// Model file to write.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training rows.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Starting learning rate (decays linearly to 0; features have unit L2 norm).
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f32,
    /// L2 penalty per example.
    #[arg(long, default_value_t = TrainConfig::default().l2)]
    l2: f32,
    /// Hash buckets, a power of two (262144 = 2^18 weights, a 1 MiB file).
    #[arg(long, default_value_t = 1 << TrainConfig::default().bits)]
    buckets: u64,
    /// Seed of the example order.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// False-positive rate on validation at which the threshold is set (0..1).
    #[arg(long, default_value_t = TrainConfig::default().target_fpr)]
    target_fpr: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GuardArgs) -> ExitCode {
    let result = match args.command {
        GuardCommand::Check(a) => check(a),
        GuardCommand::Eval(a) => eval(a).map(|()| CLEAN),
        GuardCommand::Train(a) => train(a).map(|()| CLEAN),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(ERROR)
        }
    }
}

fn check(a: CheckArgs) -> anyhow::Result<u8> {
    let text = match (&a.text, &a.file) {
        (_, Some(path)) => std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
        (Some(t), None) if t == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("standard input")?;
            s
        }
        (Some(t), None) => t.clone(),
        (None, None) => bail!("give a TEXT, `-` for standard input, or --file"),
    };
    let det = a.model.load()?;
    let v = det.check(&text);
    let mut pii: std::collections::BTreeMap<&'static str, usize> = std::collections::BTreeMap::new();
    for m in PiiDetector::new().find(&text) {
        *pii.entry(m.kind.as_str()).or_default() += 1;
    }
    let flagged = v.flagged || !pii.is_empty();
    if a.json {
        let out = serde_json::json!({
            "flagged": flagged,
            "injection": {"flagged": v.flagged, "score": v.score, "rule": v.rule, "threshold": det.threshold(), "detail": v.detail()},
            "pii": pii,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let state = if v.flagged { "FLAGGED" } else { "clean" };
        println!("injection: {state} ({}; threshold {:.3})", v.detail(), det.threshold());
        if pii.is_empty() {
            println!("pii: none");
        } else {
            let list: Vec<String> = pii.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!("pii: {}", list.join(", "));
        }
    }
    Ok(if flagged { FLAGGED } else { CLEAN })
}

/// About 512 tokens of the rows' own text: exactly 512 by `tokenizer` when it loads.
fn long_input(rows: &[LabelledText], tokenizer: &str) -> (String, String) {
    let mut text = String::new();
    for r in rows.iter().cycle().take(rows.len() * 4) {
        if text.len() >= 16_000 {
            break;
        }
        text.push_str(&r.text);
        text.push_str("\n\n");
    }
    let cut_chars = |n: usize| text.chars().take(n).collect::<String>();
    match ferrotune_model::loaded::load_text(tokenizer).and_then(|m| {
        let ids = m.tokenizer.encode(&text, false)?;
        let n = ids.len().min(512);
        Ok((m.tokenizer.decode(&ids[..n], false)?, n))
    }) {
        Ok((s, n)) => {
            let chars = s.chars().count();
            (s, format!("{n} tokens of {tokenizer} ({chars} characters)"))
        }
        Err(_) => {
            (cut_chars(2048), format!("2048 characters ({tokenizer} not installed: ≈ 512 tokens of English)"))
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let rows = injection::read_labelled(&a.data)?;
    let det = a.model.load()?;
    let report = injection::evaluate(&det, &rows);
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let per_text = injection::measure_latency(&det, &texts, 1);
    let (long, long_what) = long_input(&rows, &a.tokenizer);
    let long_lat = injection::measure_latency(&det, &[long.as_str()], a.latency_runs.max(1));
    if a.json {
        let out = serde_json::json!({
            "data": a.data.display().to_string(),
            "model": a.model.model.as_ref().map_or("bundled".to_string(), |p| p.display().to_string()),
            "threshold": det.threshold(),
            "report": report,
            "latency_per_text": per_text,
            "latency_512_tokens": {"input": long_what, "stats": long_lat},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} rows ({} injections, {} benign)",
        a.data.display(),
        report.rows,
        report.attacks,
        report.benign
    );
    for p in &report.at_fpr {
        let target = p.target_fpr.unwrap_or(0.0);
        let over = if p.fpr > target + 1e-12 { " — the rules alone exceed this FPR" } else { "" };
        println!(
            "recall at {} FPR: {} (threshold {:.4}; FPR {}, {} of {} injections){over}",
            pct(target),
            pct(p.recall),
            p.threshold,
            pct(p.fpr),
            p.true_positives,
            report.attacks
        );
    }
    if let Some(p) = &report.at_threshold {
        println!(
            "at the model's threshold {:.4}: recall {}, FPR {}, precision {} ({} true, {} false positives)",
            p.threshold,
            pct(p.recall),
            pct(p.fpr),
            pct(p.precision),
            p.true_positives,
            p.false_positives
        );
    }
    println!("AUROC {:.4} (classifier alone {:.4})", report.auroc, report.auroc_classifier);
    if !report.rules.is_empty() {
        println!("rules fired (injections / benign):");
        for (name, c) in &report.rules {
            println!("  {name:28} {:5} / {}", c.attacks, c.benign);
        }
    }
    for (title, map) in [("family", &report.per_family), ("source", &report.per_source)] {
        if map.is_empty() {
            continue;
        }
        println!("recall per {title} at the model's threshold (caught/injections; flagged/benign):");
        for (k, g) in map {
            let recall = g.recall().map_or("-".to_string(), pct);
            println!("  {k:60} {recall:>6} ({}/{}; {}/{})", g.caught, g.attacks, g.flagged_benign, g.benign);
        }
    }
    println!(
        "latency per text: p50 {:.0} µs, p95 {:.0} µs ({} texts, one thread)",
        per_text.p50_us, per_text.p95_us, per_text.runs
    );
    println!(
        "latency of a 512-token input: p50 {:.0} µs, p95 {:.0} µs ({} runs; {long_what})",
        long_lat.p50_us, long_lat.p95_us, long_lat.runs
    );
    Ok(())
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    if !a.buckets.is_power_of_two() || a.buckets < 2 {
        bail!("--buckets: must be a power of two ≥ 2, got {}", a.buckets);
    }
    let cfg = TrainConfig {
        bits: a.buckets.trailing_zeros(),
        epochs: a.epochs,
        lr: a.lr,
        l2: a.l2,
        seed: a.seed,
        target_fpr: a.target_fpr,
    };
    let train_rows = injection::read_labelled(&a.data)?;
    let val_rows = injection::read_labelled(&a.validation)?;
    let count = |r: &[LabelledText]| r.iter().filter(|x| x.label).count();
    eprintln!(
        "training on {} rows ({} injections), validation {} rows ({} injections), {} buckets, {} epochs",
        train_rows.len(),
        count(&train_rows),
        val_rows.len(),
        count(&val_rows),
        a.buckets,
        a.epochs
    );
    let start = std::time::Instant::now();
    let (det, report) = injection::train(&train_rows, &val_rows, &cfg, |e| {
        eprintln!(
            "epoch {:3}: train loss {:.4}, validation loss {:.4}, validation AUROC {:.4}",
            e.epoch, e.train_loss, e.validation_loss, e.validation_auroc
        );
    })?;
    det.save(&a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"out": a.out.display().to_string(), "report": report})
            )?
        );
        return Ok(());
    }
    let v = &report.validation;
    println!("wrote {} in {:.1} s", a.out.display(), start.elapsed().as_secs_f64());
    for p in &v.at_fpr {
        println!(
            "validation recall at {} FPR: {} (threshold {:.4})",
            pct(p.target_fpr.unwrap_or(0.0)),
            pct(p.recall),
            p.threshold
        );
    }
    if let Some(p) = &v.at_threshold {
        println!(
            "threshold {:.4} (chosen at {} FPR on validation): recall {}, FPR {}",
            report.threshold,
            pct(a.target_fpr),
            pct(p.recall),
            pct(p.fpr)
        );
    }
    println!("validation AUROC {:.4} (classifier alone {:.4})", v.auroc, v.auroc_classifier);
    Ok(())
}
