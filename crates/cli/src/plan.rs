//! `ferrotune plan`: method, memory, time and cost of a fine-tune (and its serving) predicted
//! from the data's token statistics and the project's benchmark records, before anything runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use ferrotune_data::{Renderer, ValidateOptions};
use ferrotune_model::ModelConfig;
use ferrotune_model::store::DEFAULT_MODEL;
use ferrotune_plan::cost::{Prices, Traffic};
use ferrotune_plan::hyper::DataStats;
use ferrotune_plan::{Method, PlanInputs, hardware, shapes, throughput};

#[derive(Args)]
pub struct PlanArgs {
    /// Training data (JSONL, CSV or Parquet; chat, alpaca, completion or text rows), read with
    /// the data stage and the model's tokenizer.
    #[arg(long, required_unless_present = "calibrate")]
    data: Option<PathBuf>,
    /// Base model: an installed name, GGUF file or HF directory (its tokenizer counts the
    /// tokens), or a known shape without weights (smollm2-360m, llama-3.2-1b, llama-3.2-3b,
    /// llama-3.1-8b, qwen2.5-7b, mistral-7b, …; tokens then counted with the default model's
    /// tokenizer as a stand-in).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Methods to compare: lora, full, qlora (qlora is estimated only: ferrotune cannot train it yet).
    #[arg(long, value_delimiter = ',', default_value = "lora,full,qlora")]
    methods: Vec<String>,
    /// Hardware to compare: cpu (this machine), h100, h200, a100, l40s, l4, a10g.
    #[arg(long, value_delimiter = ',', default_value = "cpu,h100")]
    hardware: Vec<String>,
    /// Epochs (default: recommended from the row count).
    #[arg(long)]
    epochs: Option<f64>,
    /// Rows per optimizer step (default: 4 on a CPU, ≈ 8192 tokens a step on a GPU).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per row at most (default: from the length distribution).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// Serving: requests per day (with --tokens-per-request gives the monthly TCO against APIs).
    #[arg(long, requires = "tokens_per_request")]
    requests_per_day: Option<f64>,
    /// Serving: prompt + completion tokens per request.
    #[arg(long, requires = "requests_per_day")]
    tokens_per_request: Option<f64>,
    /// Serving: share of each request's tokens that are generated (completion), in [0, 1].
    #[arg(long, default_value_t = 0.3)]
    completion_share: f64,
    /// Serving: share of a server's measured throughput to plan on, in (0, 1] (headroom for peaks).
    #[arg(long, default_value_t = 0.5)]
    utilization: f64,
    /// Price table (TOML: device_hour, storage, api). Default: the shipped example table.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Run a short `bench train` on this machine's CPU (≈ 1 minute) and store it in
    /// $FERROTUNE_HOME/plan/calibration.json; CPU times then come from it.
    #[arg(long)]
    calibrate: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

fn calibration_path() -> PathBuf {
    ferrotune_model::store::home().join("plan").join("calibration.json")
}

fn calibrate() -> anyhow::Result<()> {
    let path = calibration_path();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let tmp = dir.join(".calibration.json.tmp");
    let exe = std::env::current_exe()?;
    eprintln!(
        "calibrating: `ferrotune bench train` (SmolLM2-135M shape, random weights, 4 × 256 tokens, 3 timed steps) on this CPU…"
    );
    let status = std::process::Command::new(exe)
        .args([
            "bench",
            "train",
            "--shape",
            "smollm2-135m",
            "--batch",
            "4",
            "--seq",
            "256",
            "--steps",
            "3",
            "--json",
        ])
        .arg(&tmp)
        .status()?;
    if !status.success() {
        bail!("the calibration benchmark failed ({status})");
    }
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tmp)?)?;
    v["calibrated"] = serde_json::Value::String(ferrotune_train::lineage::now_rfc3339());
    v["threads"] = serde_json::json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    std::fs::write(&tmp, serde_json::to_string_pretty(&v)? + "\n")?;
    std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
    let r = throughput::read_calibration(&path)?.context("the calibration file does not hold a record")?;
    println!("calibrated: {:.0} tokens/s on this CPU -> {}", r.tokens_per_sec, path.display());
    Ok(())
}

/// The model's configuration and the renderer that counts its tokens.
fn model_of(spec: &str) -> anyhow::Result<(ModelConfig, Arc<Renderer>, String, String)> {
    let installed_or_path = ferrotune_model::store::resolve(spec).ok().filter(|p| p.exists());
    if let Some(path) = installed_or_path {
        let cfg = ferrotune_model::loaded::load_config(&path.display().to_string())
            .with_context(|| format!("reading the configuration of {}", path.display()))?;
        let text = ferrotune_model::loaded::load_text_path(&path)
            .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
        return Ok((
            cfg,
            Arc::new(Renderer::from_text_model(&text)?),
            spec.to_string(),
            "counted with the model's own tokenizer and chat template".into(),
        ));
    }
    let Some(canon) = shapes::canonical(spec) else {
        bail!(
            "--model {spec}: not an installed model, a model file or directory, or a known shape ({})",
            shapes::names().join(", ")
        );
    };
    let cfg = shapes::lookup(canon)?;
    let text = ferrotune_model::loaded::load_text(DEFAULT_MODEL)
        .with_context(|| format!("--model {canon} is a shape without a tokenizer; its tokens are counted with {DEFAULT_MODEL}'s, which is not installed (ferrotune models pull)"))?;
    Ok((
        cfg,
        Arc::new(Renderer::from_text_model(&text)?),
        canon.to_string(),
        format!("counted with {DEFAULT_MODEL}'s tokenizer as a stand-in for {canon}'s"),
    ))
}

fn data_stats(data: &Path, renderer: Arc<Renderer>) -> anyhow::Result<DataStats> {
    let opts = ValidateOptions {
        renderer: Some(renderer),
        max_seq_len: usize::MAX / 2,
        ..ValidateOptions::default()
    };
    let report = ferrotune_data::validate(&[data.to_path_buf()], &opts)
        .with_context(|| format!("reading {}", data.display()))?;
    let st = &report.stats;
    let Some(tokens) = &st.total_tokens else {
        bail!(
            "{}: no valid rows to plan with ({} rows, {} errors; `ferrotune data validate {}` lists them)",
            data.display(),
            st.rows,
            report.errors,
            data.display()
        );
    };
    Ok(DataStats {
        rows: st.valid_rows,
        tokens_mean: tokens.mean,
        tokens_p5: tokens.p5,
        tokens_median: tokens.median,
        tokens_p95: tokens.p95,
        tokens_max: tokens.max,
        target_mean: st.target_tokens.as_ref().map_or(0.0, |t| t.mean),
        exact_duplicates: st.exact_duplicates,
        near_duplicates: st.near_duplicates,
        conflicting_answers: st.conflicting_answers,
        rows_with_pii: st.rows_with_pii,
        eval_rows: st.eval_rows,
        eval_rows_leaked: st.eval_rows_leaked,
        errors: report.errors,
    })
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    if a.calibrate {
        calibrate()?;
        if a.data.is_none() {
            return Ok(());
        }
    }
    let Some(data) = a.data.as_deref() else { bail!("--data FILE is required") };
    if !data.is_file() {
        bail!("--data {}: no such file", data.display());
    }
    if !(0.0..=1.0).contains(&a.completion_share) {
        bail!("--completion-share {} is not in [0, 1]", a.completion_share);
    }
    if !(a.utilization > 0.0 && a.utilization <= 1.0) {
        bail!("--utilization {} is not in (0, 1]", a.utilization);
    }
    for (name, v) in [
        ("--epochs", a.epochs),
        ("--requests-per-day", a.requests_per_day),
        ("--tokens-per-request", a.tokens_per_request),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v > 0.0)
        {
            bail!("{name} {v} must be a positive number");
        }
    }
    if a.batch_size == Some(0) || a.max_seq_len == Some(0) || a.lora_r == 0 {
        bail!("--batch-size, --max-seq-len and --lora-r must be positive");
    }
    let targets = ferrotune_plan::default_targets();
    let methods = a
        .methods
        .iter()
        .map(|m| match m.as_str() {
            "lora" => Ok(Method::Lora { r: a.lora_r, targets: targets.clone() }),
            "qlora" => Ok(Method::QLora { r: a.lora_r, targets: targets.clone() }),
            "full" => Ok(Method::Full),
            other => bail!("--methods: unknown method `{other}` (lora, full, qlora)"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hardware = a.hardware.iter().map(|h| hardware::lookup(h)).collect::<Result<Vec<_>, _>>()?;
    let prices = match &a.prices {
        Some(p) => Prices::from_file(p)?,
        None => Prices::builtin(),
    };
    for hw in &hardware {
        if prices.hour(&hw.name).is_none() {
            eprintln!("note: the price table has no device_hour.{} — no cost for it", hw.name);
        }
    }
    let (cfg, renderer, model_name, tokenizer_note) = model_of(&a.model)?;
    let stats = data_stats(data, renderer)?;
    let mut records = throughput::builtin_records();
    if let Some(cal) = throughput::read_calibration(&calibration_path())? {
        // This machine's own measurement replaces the shipped CPU records.
        records.retain(|r| r.hardware != "cpu");
        records.push(cal);
    }
    let inputs = PlanInputs {
        model_name,
        cfg,
        tokenizer_note,
        data: stats,
        methods,
        hardware,
        epochs: a.epochs,
        batch_size: a.batch_size,
        max_seq_len: a.max_seq_len,
        traffic: a.requests_per_day.zip(a.tokens_per_request).map(|(r, t)| Traffic {
            requests_per_day: r,
            tokens_per_request: t,
            completion_share: a.completion_share,
        }),
        prices,
        records,
        serve_records: throughput::builtin_serve_records(),
        utilization: a.utilization,
    };
    let plan = ferrotune_plan::plan(&inputs);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", ferrotune_plan::report::render(&plan));
    }
    Ok(())
}
