//! The files of an evaluation: `eval.json` (scores with intervals, per-row predictions),
//! `report.md` (side-by-side table, speed, rows where the answers differ) and `metrics.svg`
//! (bar chart with the intervals), written to a temporary folder and renamed into place.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::score::{MetricResult, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: String,
    pub sha256: String,
    pub rows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `greedy` for model runs; `none` when scoring given predictions.
    pub decoding: String,
    pub max_tokens: Option<usize>,
    pub batch_size: Option<usize>,
    pub bootstrap_resamples: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub name: String,
    pub adapter: Option<String>,
    /// The training run the adapter came from (its folder), when it has one.
    pub run_dir: Option<String>,
    pub rows_per_sec: Option<f64>,
    pub generated_tokens: Option<usize>,
    pub generation_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowOutput {
    pub system: String,
    pub prediction: String,
    pub finish: Option<String>,
    /// This row's own score per metric.
    pub scores: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub line: u64,
    pub question: String,
    pub reference: String,
    pub outputs: Vec<RowOutput>,
}

/// `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalFile {
    pub ferrotune_version: String,
    pub created: String,
    /// The base model (name or path); `None` when scoring given predictions.
    pub model: Option<String>,
    pub data: DataInfo,
    pub settings: Settings,
    pub systems: Vec<SystemInfo>,
    pub metrics: Vec<MetricResult>,
    /// json_match detail per system (per-field agreement, unparseable rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_match: Option<serde_json::Value>,
    pub rows: Vec<RowResult>,
}

impl EvalFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| EvalError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("not an eval.json written by ferrotune: {e}"),
        })
    }

    pub fn metric(&self, name: &str) -> Option<&MetricResult> {
        self.metrics.iter().find(|m| m.name.eq_ignore_ascii_case(name))
    }
}

/// How a number of this metric is printed.
fn fmt_value(m: &MetricResult, v: f64) -> String {
    match m.scale {
        Some(s) if s > 1.0 => format!("{v:.2}"),
        Some(_) => format!("{v:.3}"),
        None if m.name == "perplexity" => format!("{v:.2}"),
        None => format!("{v:.3}"),
    }
}

fn fmt_score(m: &MetricResult, s: Score) -> String {
    format!("{} [{}, {}]", fmt_value(m, s.value), fmt_value(m, s.ci95[0]), fmt_value(m, s.ci95[1]))
}

/// `+0.12 [0.05, 0.20] ✓` — the check when the whole interval is on the better side of zero.
fn fmt_delta(m: &MetricResult, s: Score) -> String {
    let better = if m.higher_is_better { s.ci95[0] > 0.0 } else { s.ci95[1] < 0.0 };
    let worse = if m.higher_is_better { s.ci95[1] < 0.0 } else { s.ci95[0] > 0.0 };
    let sign = |v: f64| {
        if v >= 0.0 { format!("+{}", fmt_value(m, v)) } else { fmt_value(m, v) }
    };
    let mark = if better {
        " ✓"
    } else if worse {
        " ✗"
    } else {
        ""
    };
    format!("{} [{}, {}]{mark}", sign(s.value), sign(s.ci95[0]), sign(s.ci95[1]))
}

/// The side-by-side metric table (Markdown), also printed on the terminal.
pub fn metric_table(f: &EvalFile) -> String {
    let mut out = String::new();
    let names: Vec<&str> = f.systems.iter().map(|s| s.name.as_str()).collect();
    let _ = write!(out, "| metric |");
    for n in &names {
        let _ = write!(out, " {n} |");
    }
    for n in names.iter().skip(1) {
        let _ = write!(out, " {n} − {} |", names[0]);
    }
    out.push('\n');
    out.push_str(&"|---".repeat(names.len() * 2));
    out.push_str("|\n");
    for m in &f.metrics {
        let arrow = if m.higher_is_better { "↑" } else { "↓" };
        let _ = write!(out, "| {} {arrow} |", m.name);
        for s in &m.scores {
            let _ = write!(out, " {} |", fmt_score(m, s.score));
        }
        for d in &m.vs_base {
            let _ = write!(out, " {} |", fmt_delta(m, d.score));
        }
        out.push('\n');
    }
    out
}

fn quote(text: &str) -> String {
    if text.is_empty() {
        return "> *(empty)*\n".into();
    }
    text.lines().map(|l| format!("> {l}\n")).collect()
}

/// `report.md`.
pub fn markdown(
    f: &EvalFile,
    loss_curves: &[(String, String)],
    chart: Option<&str>,
    primary: Option<&str>,
) -> String {
    let mut out = String::new();
    let what = f.model.as_deref().map_or_else(|| "predictions".to_string(), |m| format!("`{m}`"));
    let _ = writeln!(out, "# Evaluation of {what} on `{}` ({} rows)\n", f.data.path, f.data.rows);
    let _ = writeln!(
        out,
        "Created {} by ferrotune {}. Decoding: {}{}. Intervals: 95% bootstrap over rows ({} resamples, seed {}); \
         differences are paired (same resampled rows); ✓ / ✗ mark an interval wholly better / worse than the base.\n",
        f.created,
        f.ferrotune_version,
        f.settings.decoding,
        f.settings.max_tokens.map_or(String::new(), |n| format!(", at most {n} new tokens")),
        f.settings.bootstrap_resamples,
        f.settings.seed
    );
    out.push_str("## Metrics\n\n");
    out.push_str(&metric_table(f));
    out.push('\n');
    if let Some(c) = chart {
        let _ = writeln!(out, "![metrics]({c})\n");
    }
    for (system, file) in loss_curves {
        let _ = writeln!(out, "### Training loss of `{system}`\n\n![loss curve of {system}]({file})\n");
    }
    if f.systems.iter().any(|s| s.rows_per_sec.is_some()) {
        out.push_str("## Speed\n\n| system | rows/s | generated tokens | seconds |\n|---|---|---|---|\n");
        for s in &f.systems {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s.name,
                s.rows_per_sec.map_or("–".into(), |v| format!("{v:.2}")),
                s.generated_tokens.map_or("–".into(), |v| v.to_string()),
                s.generation_secs.map_or("–".into(), |v| format!("{v:.1}"))
            );
        }
        out.push('\n');
    }
    if f.systems.len() > 1 {
        let differ: Vec<&RowResult> = f
            .rows
            .iter()
            .filter(|r| r.outputs.iter().any(|o| o.prediction != r.outputs[0].prediction))
            .collect();
        let key = primary.unwrap_or("rougeL");
        let change = |r: &RowResult| {
            let base = r.outputs[0].scores.get(key).copied().unwrap_or(0.0);
            r.outputs
                .iter()
                .skip(1)
                .map(|o| (o.scores.get(key).copied().unwrap_or(0.0) - base).abs())
                .fold(0.0, f64::max)
        };
        let mut shown = differ.clone();
        shown.sort_by(|a, b| change(b).total_cmp(&change(a)));
        shown.truncate(25);
        let _ = writeln!(
            out,
            "## Rows where the answers differ\n\n{} of {} rows differ; {} shown, largest change in `{key}` first (all rows are in eval.json).\n",
            differ.len(),
            f.rows.len(),
            shown.len()
        );
        for r in shown {
            let _ = writeln!(
                out,
                "### line {}\n\n**question**\n\n{}\n**reference**\n\n{}",
                r.line,
                quote(&r.question),
                quote(&r.reference)
            );
            for o in &r.outputs {
                let scores: Vec<String> = o.scores.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                let _ = writeln!(out, "**{}** ({})\n\n{}", o.system, scores.join(", "), quote(&o.prediction));
            }
        }
    }
    out
}

const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Grouped bars of the text metrics (as % of each metric's best score) with 95% intervals.
pub fn bar_chart(path: &Path, f: &EvalFile) -> Result<bool> {
    let metrics: Vec<&MetricResult> = f.metrics.iter().filter(|m| m.scale.is_some()).collect();
    if metrics.is_empty() {
        return Ok(false);
    }
    let err = |e: &dyn std::fmt::Display| EvalError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("drawing the chart: {e}"),
    };
    let n_sys = f.systems.len().max(1);
    let width = (160 + 110 * metrics.len() as u32).max(520);
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("score (% of best possible), 95% intervals", ("sans-serif", 18))
        .margin(12)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..metrics.len() as f64, -10f64..105f64)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().disable_x_mesh().disable_x_axis().y_desc("%").draw().map_err(|e| err(&e))?;
    let w = 0.8 / n_sys as f64;
    for (si, sys) in f.systems.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (mi, m) in metrics.iter().enumerate() {
            let Some(s) = m.score_of(&sys.name) else {
                continue;
            };
            let scale = 100.0 / m.scale.unwrap_or(1.0);
            let x0 = mi as f64 + 0.1 + si as f64 * w;
            bars.push(Rectangle::new([(x0, 0.0), (x0 + w * 0.9, s.value * scale)], color.filled()));
            let xc = x0 + w * 0.45;
            whiskers.push(PathElement::new(
                vec![(xc, s.ci95[0] * scale), (xc, s.ci95[1] * scale)],
                BLACK.stroke_width(1),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(sys.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(|e| err(&e))?;
    }
    chart
        .draw_series(metrics.iter().enumerate().map(|(mi, m)| {
            Text::new(m.name.clone(), (mi as f64 + 0.35, -4.0), ("sans-serif", 14).into_font())
        }))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

/// Write `eval.json`, `report.md`, `metrics.svg` and copies of the runs' loss curves into `out`
/// (created if missing; other files there are left alone). Everything is written into a
/// temporary sibling folder first and then renamed file by file, `eval.json` last, so a failure
/// never leaves a half-written file. `runs`: (system, run folder holding a `loss.svg`).
pub fn write_all(out: &Path, f: &EvalFile, runs: &[(String, PathBuf)], primary: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "eval".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| EvalError::io(&tmp, e))?;
    let result = (|| -> Result<Vec<String>> {
        let mut files = Vec::new();
        let chart = bar_chart(&tmp.join("metrics.svg"), f)?.then_some("metrics.svg");
        if chart.is_some() {
            files.push("metrics.svg".to_string());
        }
        let mut curves = Vec::new();
        for (system, run) in runs {
            let src = run.join("loss.svg");
            if src.is_file() {
                let file = format!(
                    "loss-{}.svg",
                    system.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_")
                );
                std::fs::copy(&src, tmp.join(&file)).map_err(|e| EvalError::io(&src, e))?;
                curves.push((system.clone(), file.clone()));
                files.push(file);
            }
        }
        std::fs::write(tmp.join("report.md"), markdown(f, &curves, chart, primary))
            .map_err(|e| EvalError::io(out.join("report.md"), e))?;
        files.push("report.md".into());
        let json = serde_json::to_string_pretty(f)
            .map_err(|e| EvalError::InvalidFile { path: out.join("eval.json"), reason: e.to_string() })?;
        std::fs::write(tmp.join("eval.json"), json + "\n")
            .map_err(|e| EvalError::io(out.join("eval.json"), e))?;
        files.push("eval.json".into());
        for file in &files {
            std::fs::rename(tmp.join(file), out.join(file)).map_err(|e| EvalError::io(out.join(file), e))?;
        }
        Ok(files)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| ())
}
