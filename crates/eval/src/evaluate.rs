//! `ferrotune eval` in one call: check the settings, load the rows and the model, run the base
//! and each adapter ([`runner`](crate::runner)), score them with intervals ([`score`](crate::score)),
//! and write `eval.json`, `report.md` and `metrics.svg` ([`report`](crate::report)). The caller
//! prints the [`Report`] and applies its gates last ([`Report::check_gates`]).
//! [`score_predictions`] is `ferrotune eval score`: given predictions scored the same way.

use std::path::{Path, PathBuf};

use ferrotune_model::constrain::JsonFormat;
use ferrotune_model::{SamplingParams, WeightMode};

use crate::error::{EvalError, Result};
use crate::gate::{self, Gate, GateOutcome};
use crate::metrics::{Metric, json_match_report};
use crate::report::{self, DataInfo, EvalFile, RowOutput, RowResult, Settings, SystemInfo};
use crate::rows::{EvalRow, load_rows};
use crate::runner::{Progress, RunSettings, SystemSpec, run_systems};
use crate::score::{Answers, MetricSpec, RowTable, default_metrics, score_systems};

/// Everything `ferrotune eval` is asked to do (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct EvalSpec {
    /// Base model: installed name, GGUF file or HF directory.
    pub model: String,
    pub weights: WeightMode,
    /// The LoRA adapters compared with the base, each `DIR` or `NAME=DIR`.
    pub adapters: Vec<String>,
    /// Test rows (JSONL or CSV).
    pub data: PathBuf,
    /// Comma-separated metrics; `None`: the defaults for these rows.
    pub metrics: Option<String>,
    /// New tokens per answer at most.
    pub max_tokens: usize,
    /// Rows generated together.
    pub batch_size: usize,
    /// Evaluate only the first N rows.
    pub limit: Option<usize>,
    /// Output folder; `None`: RUN/eval for one adapter from runs/RUN/adapter, else
    /// runs/eval-<data file stem>.
    pub out: Option<PathBuf>,
    /// Decoding (temperature 0: greedy). Its seed also seeds the bootstrap.
    pub sampling: SamplingParams,
    /// Structured output: every answer held to this format.
    pub output: Option<JsonFormat>,
    /// `--fail-if-worse` gates, `METRIC[:TOLERANCE]`.
    pub gates: Vec<String>,
    /// A stored eval.json to gate against instead of this run's base, and which of its systems.
    pub baseline: Option<PathBuf>,
    pub baseline_system: Option<String>,
    /// Bootstrap resamples for the 95% intervals.
    pub resamples: usize,
}

/// An adapter's system name and the training run folder it came from.
pub type RunDir = (String, PathBuf);

/// A finished evaluation: what `eval.json` holds, and where it was written.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: EvalFile,
    /// The folder holding `eval.json`, `report.md`, `metrics.svg`.
    pub out: PathBuf,
    /// (system, training run folder) of the adapters that came from a run.
    pub runs: Vec<RunDir>,
    gates: Vec<Gate>,
    baseline: Option<(EvalFile, Option<String>)>,
}

impl Report {
    pub fn eval_json(&self) -> PathBuf {
        self.out.join("eval.json")
    }

    /// The gates' outcomes (none without gates): each adapter against the base, or the baseline.
    pub fn check_gates(&self) -> Result<Vec<GateOutcome>> {
        if self.gates.is_empty() {
            return Ok(Vec::new());
        }
        let baseline = self.baseline.as_ref().map(|(f, s)| (f, s.as_deref()));
        gate::check(&self.file, &self.gates, baseline)
    }
}

/// Run `spec`, reporting progress (the model loaded, each system's phases) to `progress`.
pub fn run(spec: &EvalSpec, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Report> {
    let data = &spec.data;
    if !data.is_file() {
        return Err(EvalError::InvalidFile { path: data.clone(), reason: "no such file".into() });
    }
    let gates: Vec<Gate> = spec.gates.iter().map(|g| g.parse()).collect::<Result<_>>()?;
    let baseline = spec.baseline.as_deref().map(EvalFile::read).transpose()?;
    let (systems, runs) = systems(&spec.adapters)?;
    let rows = load_rows(data, spec.limit)?;
    let metrics = metrics_for(spec.metrics.as_deref(), &rows, true)?;
    let out = spec.out.clone().unwrap_or_else(|| match (runs.as_slice(), systems.len()) {
        ([(_, run)], 2) => run.join("eval"),
        _ => PathBuf::from("runs")
            .join(format!("eval-{}", data.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default())),
    });
    // Fail on a bad gate before the (long) run, not after it.
    for g in &gates {
        if !metrics.contains(&g.metric) {
            return Err(EvalError::InvalidValue {
                option: "--fail-if-worse",
                value: g.metric.to_string(),
                reason: "metric not in --metrics".into(),
            });
        }
    }
    if !gates.is_empty() && baseline.is_none() && systems.len() < 2 {
        return Err(EvalError::Needs {
            option: "--fail-if-worse",
            what: "an --adapter to compare with the base, or --baseline FILE".into(),
        });
    }

    let mut m = ferrotune_model::load(&spec.model, spec.weights, &candle_core::Device::Cpu)
        .map_err(|source| EvalError::Load { spec: spec.model.clone(), source: Box::new(source) })?;
    progress(Progress::Loaded { model: &spec.model, rows: rows.len(), data, systems: systems.len() });
    spec.sampling.validate()?;
    let settings = RunSettings {
        max_tokens: spec.max_tokens,
        batch_size: spec.batch_size,
        loss: metrics.iter().any(|m| m.needs_model()),
        sampling: spec.sampling.clone(),
        output: spec.output.clone(),
    };
    let outputs = run_systems(&mut m, &data.display().to_string(), &rows, &systems, &settings, progress)?;

    let references: Vec<String> = rows.iter().map(|r| r.reference.clone()).collect();
    let answers: Vec<Answers<'_>> = outputs
        .iter()
        .map(|o| Answers { system: &o.spec.name, predictions: &o.predictions, loss: o.loss.as_deref() })
        .collect();
    let seed = spec.sampling.seed;
    let (results, table) = score_systems(&references, &answers, &metrics, spec.resamples, seed)?;
    let infos = outputs
        .iter()
        .map(|o| SystemInfo {
            name: o.spec.name.clone(),
            adapter: o.spec.adapter.as_ref().map(|p| p.display().to_string()),
            run_dir: runs.iter().find(|(n, _)| *n == o.spec.name).map(|(_, r)| r.display().to_string()),
            rows_per_sec: Some(o.rows_per_sec()),
            generated_tokens: Some(o.generated_tokens),
            generation_secs: Some(o.generation_secs),
        })
        .collect();
    let finishes: Vec<Vec<Option<String>>> =
        outputs.iter().map(|o| o.finish.iter().map(|f| Some(f.as_str().to_string())).collect()).collect();
    let (temperature, top_p) = (spec.sampling.temperature, spec.sampling.top_p);
    let file = EvalFile {
        ferrotune_version: env!("CARGO_PKG_VERSION").into(),
        created: now_rfc3339(),
        model: Some(spec.model.clone()),
        data: DataInfo {
            path: data.display().to_string(),
            sha256: ferrotune_model::store::sha256_file(data)?,
            rows: rows.len(),
        },
        settings: Settings {
            decoding: if temperature == 0.0 {
                "greedy".into()
            } else {
                format!("sampled (temperature {temperature}, top_p {top_p}, seed {seed})")
            },
            max_tokens: Some(spec.max_tokens),
            batch_size: Some(spec.batch_size),
            bootstrap_resamples: spec.resamples,
            seed,
        },
        systems: infos,
        json_match: json_detail(&metrics, &answers, &references),
        rows: row_results(&rows, &answers, &finishes, &table),
        metrics: results,
    };
    let primary =
        file.metrics.iter().find(|m| m.name == "rougeL").or(file.metrics.first()).map(|m| m.name.as_str());
    report::write_all(&out, &file, &runs, primary)?;
    let baseline = baseline.map(|b| (b, spec.baseline_system.clone()));
    Ok(Report { file, out, runs, gates, baseline })
}

/// Everything `ferrotune eval score` is asked to do: score given predictions, no model.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    /// JSONL, one `{"prediction": "...", "reference": "..."}` per line (a reference may be a
    /// JSON object, for json_match).
    pub predictions: PathBuf,
    /// Comma-separated text metrics; `None`: the defaults for these rows.
    pub metrics: Option<String>,
    pub resamples: usize,
    pub seed: u64,
}

/// Score `spec.predictions` as one system named `predictions`: what `eval.json` would hold.
pub fn score_predictions(spec: &ScoreSpec) -> Result<EvalFile> {
    let path = &spec.predictions;
    let text =
        std::fs::read_to_string(path).map_err(|source| EvalError::Read { path: path.clone(), source })?;
    let mut predictions = Vec::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| EvalError::BadLine { path: path.clone(), line: n, reason };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("bad JSON at column {}: {e}", e.column())))?;
        let field = |k: &str| -> Result<(String, bool)> {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => Ok((s.clone(), false)),
                Some(x @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                    Ok((x.to_string(), true))
                }
                Some(_) => Err(bad(format!("`{k}`: must be a string (or a JSON object for json_match)"))),
                None => Err(bad(format!("`{k}`: missing; each line needs \"prediction\" and \"reference\""))),
            }
        };
        let (p, _) = field("prediction")?;
        let (r, structured) = field("reference")?;
        predictions.push(p);
        rows.push(EvalRow { line: n, prompt: Vec::new(), reference: r, structured });
    }
    if rows.is_empty() {
        return Err(EvalError::InvalidFile { path: path.clone(), reason: "no rows".into() });
    }
    let metrics = metrics_for(spec.metrics.as_deref(), &rows, false)?;
    let references: Vec<String> = rows.iter().map(|r| r.reference.clone()).collect();
    let answers = [Answers { system: "predictions", predictions: &predictions, loss: None }];
    let (results, table) = score_systems(&references, &answers, &metrics, spec.resamples, spec.seed)?;
    Ok(EvalFile {
        ferrotune_version: env!("CARGO_PKG_VERSION").into(),
        created: now_rfc3339(),
        model: None,
        data: DataInfo {
            path: path.display().to_string(),
            sha256: ferrotune_model::store::sha256_file(path)?,
            rows: rows.len(),
        },
        settings: Settings {
            decoding: "none".into(),
            max_tokens: None,
            batch_size: None,
            bootstrap_resamples: spec.resamples,
            seed: spec.seed,
        },
        systems: vec![SystemInfo {
            name: "predictions".into(),
            adapter: None,
            run_dir: None,
            rows_per_sec: None,
            generated_tokens: None,
            generation_secs: None,
        }],
        json_match: json_detail(&metrics, &answers, &references),
        rows: row_results(&rows, &answers, &[], &table),
        metrics: results,
    })
}

/// The base, then one system per adapter; and (system, run folder) for adapters from a run.
fn systems(adapters: &[String]) -> Result<(Vec<SystemSpec>, Vec<RunDir>)> {
    let mut systems = vec![SystemSpec { name: "base".into(), adapter: None }];
    let mut runs = Vec::new();
    for s in adapters {
        let (spec, run) = adapter_spec(s)?;
        if systems.iter().any(|x| x.name == spec.name) {
            return Err(EvalError::DuplicateSystem { name: spec.name });
        }
        if let Some(r) = run {
            runs.push((spec.name.clone(), r));
        }
        systems.push(spec);
    }
    Ok((systems, runs))
}

/// `NAME=DIR` or `DIR`; the default name of `runs/demo/adapter` is `demo`.
fn adapter_spec(s: &str) -> Result<(SystemSpec, Option<PathBuf>)> {
    let (name, dir) = match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), PathBuf::from(d)),
        _ => (None, PathBuf::from(s)),
    };
    if !dir.join("adapter_config.json").is_file() {
        return Err(EvalError::InvalidValue {
            option: "--adapter",
            value: dir.display().to_string(),
            reason: "no adapter_config.json there (expected a PEFT adapter folder, e.g. runs/NAME/adapter)"
                .into(),
        });
    }
    let run = dir
        .parent()
        .filter(|p| p.join("lineage.json").is_file() || p.join("loss.svg").is_file())
        .map(Path::to_path_buf);
    let default_name = match (&run, dir.file_name()) {
        (Some(r), Some(f)) if f == "adapter" => r.file_name().map(|n| n.to_string_lossy().into_owned()),
        (_, Some(f)) => Some(f.to_string_lossy().into_owned()),
        _ => None,
    };
    let name = name.or(default_name).unwrap_or_else(|| "adapter".into());
    Ok((SystemSpec { name, adapter: Some(dir) }, run))
}

/// The metrics of `list`, or the defaults for `rows` (json_match first when every reference is
/// JSON; loss and perplexity only `with_model`).
fn metrics_for(list: Option<&str>, rows: &[EvalRow], with_model: bool) -> Result<Vec<MetricSpec>> {
    Ok(match list {
        Some(l) => MetricSpec::parse_list(l)?,
        None => default_metrics(
            rows.iter().all(|r| {
                r.structured
                    || serde_json::from_str::<serde_json::Value>(&r.reference).is_ok_and(|v| v.is_object())
            }),
            with_model,
        ),
    })
}

/// json_match's detail per system (per-field agreement, unparseable rows), when it is a metric.
fn json_detail(
    metrics: &[MetricSpec],
    answers: &[Answers<'_>],
    references: &[String],
) -> Option<serde_json::Value> {
    if !metrics.contains(&MetricSpec::Text(Metric::JsonMatch)) {
        return None;
    }
    let refs: Vec<&str> = references.iter().map(String::as_str).collect();
    let mut map = serde_json::Map::new();
    for a in answers {
        let preds: Vec<&str> = a.predictions.iter().map(String::as_str).collect();
        map.insert(a.system.to_string(), serde_json::to_value(json_match_report(&preds, &refs)).ok()?);
    }
    Some(serde_json::Value::Object(map))
}

/// Every row with each system's prediction, finish reason and own scores.
fn row_results(
    rows: &[EvalRow],
    answers: &[Answers<'_>],
    finishes: &[Vec<Option<String>>],
    table: &RowTable,
) -> Vec<RowResult> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| RowResult {
            line: r.line,
            question: r.question().to_string(),
            reference: r.reference.clone(),
            outputs: answers
                .iter()
                .enumerate()
                .map(|(s, a)| RowOutput {
                    system: a.system.to_string(),
                    prediction: a.predictions[i].clone(),
                    finish: finishes.get(s).and_then(|f| f[i].clone()),
                    scores: table
                        .metrics
                        .iter()
                        .enumerate()
                        .map(|(mi, m)| (m.name().to_string(), table.row_score(s, mi, i)))
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// UTC now as `YYYY-MM-DDThh:mm:ssZ` (eval.json's `created`).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_rfc3339_in_whole_utc_seconds() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[4] == b'-', "{t}");
    }

    /// The flag checks keep their messages (the CLI printed them itself before).
    #[test]
    fn bad_settings_are_refused_before_the_model_loads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let spec = |data: PathBuf| EvalSpec {
            model: "no-such-model".into(),
            weights: WeightMode::F32,
            adapters: vec![],
            data,
            metrics: Some("f1".into()),
            max_tokens: 8,
            batch_size: 1,
            limit: None,
            out: None,
            sampling: SamplingParams::default(),
            output: None,
            gates: vec!["rougeL".into()],
            baseline: None,
            baseline_system: None,
            resamples: 10,
        };
        let e = run(&spec(tmp.path().join("none.jsonl")), &mut |_| {}).expect_err("missing file");
        assert!(e.to_string().ends_with("none.jsonl: no such file"), "{e}");
        let data = tmp.path().join("rows.jsonl");
        std::fs::write(&data, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").expect("write");
        let e = run(&spec(data.clone()), &mut |_| {}).expect_err("gate metric not computed");
        assert_eq!(e.to_string(), "--fail-if-worse rougeL: metric not in --metrics");
        let e = run(&EvalSpec { metrics: None, ..spec(data) }, &mut |_| {}).expect_err("no adapter");
        assert_eq!(
            e.to_string(),
            "--fail-if-worse needs an --adapter to compare with the base, or --baseline FILE"
        );
    }
}
