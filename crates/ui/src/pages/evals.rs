//! Evaluations: every eval.json the registry recorded or a run folder holds; one evaluation's
//! metrics with their intervals and the rows where the systems answered differently.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use ferrotune_eval::report::EvalFile;
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth;
use crate::error::UiError;
use crate::layout::{num, page, query};
use crate::runs;
use crate::state::{AppState, blocking};

/// Rows shown where the answers differ; the rest are counted.
const MAX_ROWS: usize = 100;

struct Known {
    path: PathBuf,
    /// Registry id, when recorded.
    id: Option<i64>,
    created: String,
    data: String,
    rows: u64,
    systems: Vec<String>,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The registry's evaluations, then run folders' `eval/eval.json` not among them.
fn known(st: &AppState) -> (Vec<Known>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    match st.registry().and_then(|r| Ok(r.map(|r| r.evals()).transpose()?)) {
        Ok(Some(evals)) => {
            for e in evals.into_iter().rev() {
                out.push(Known {
                    path: PathBuf::from(&e.path),
                    id: Some(e.id),
                    created: e.created,
                    data: e.data_path,
                    rows: e.rows,
                    systems: e.systems.iter().map(|(s, _)| s.name.clone()).collect(),
                });
            }
        }
        Ok(None) => {}
        Err(e) => notes.push(format!("registry: {e}")),
    }
    let seen: std::collections::HashSet<PathBuf> = out.iter().map(|k| canonical(&k.path)).collect();
    for r in runs::list(&st.cfg.runs).runs {
        let p = r.dir.join("eval").join("eval.json");
        if !p.is_file() || seen.contains(&canonical(&p)) {
            continue;
        }
        match EvalFile::read(&p) {
            Ok(f) => out.push(Known {
                path: p,
                id: None,
                created: f.created.clone(),
                data: f.data.path.clone(),
                rows: f.data.rows as u64,
                systems: f.systems.iter().map(|s| s.name.clone()).collect(),
            }),
            Err(e) => notes.push(e.to_string()),
        }
    }
    (out, notes)
}

fn href(p: &Path) -> String {
    format!("/eval?{}", query(&[("file", &p.display().to_string())]))
}

pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let (evals, notes) = blocking(move || Ok(known(&st2))).await?;
    let body = html! {
        h1 { "Evaluations" }
        @for n in &notes { p.notice role="status" { (n) } }
        @if evals.is_empty() {
            p { "No evaluations yet: " code { "ferrotune eval --data test.jsonl --adapter runs/NAME/adapter" } " writes one." }
        } @else {
            table {
                thead { tr { th { "eval.json" } th { "registry id" } th { "created" } th { "data" } th.n { "rows" } th { "systems" } } }
                tbody { @for e in &evals { tr {
                    td { a href=(href(&e.path)) { (e.path.display()) } }
                    td { (e.id.map_or("—".into(), |i| i.to_string())) }
                    td { (e.created) }
                    td { (e.data) }
                    td.n { (e.rows) }
                    td { (e.systems.join(", ")) }
                } } }
            }
        }
    };
    Ok(page("Evaluations", "/evals", viewer.as_ref(), body))
}

/// The system of `f` that came from the run in `run_dir`: by its recorded run folder, else by
/// its adapter's folder, else the only adapter.
pub fn system_for_run(f: &EvalFile, run_dir: &Path) -> Option<String> {
    let dir = canonical(run_dir);
    let by_run =
        f.systems.iter().find(|s| s.run_dir.as_deref().is_some_and(|d| canonical(Path::new(d)) == dir));
    let by_adapter = || {
        f.systems
            .iter()
            .find(|s| s.adapter.as_deref().is_some_and(|a| canonical(Path::new(a)).starts_with(&dir)))
    };
    let only = || {
        let adapters: Vec<_> = f.systems.iter().filter(|s| s.adapter.is_some()).collect();
        (adapters.len() == 1).then(|| adapters[0])
    };
    by_run.or_else(by_adapter).or_else(only).map(|s| s.name.clone())
}

fn fmt(m: &ferrotune_eval::score::MetricResult, v: f64) -> String {
    match m.scale {
        Some(s) if s > 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// `0.412 [0.380, 0.447]`.
pub fn score_cell(f: &EvalFile, metric: &str, system: &str) -> Markup {
    let Some(m) = f.metric(metric) else { return html! { "—" } };
    match m.score_of(system) {
        Some(s) => {
            html! { (fmt(m, s.value)) " " span.muted { "[" (fmt(m, s.ci95[0])) ", " (fmt(m, s.ci95[1])) "]" } }
        }
        None => html! { "—" },
    }
}

/// `Δ +0.05 [0.01, 0.09] ✓`: ✓ when the whole interval is on the better side, ✗ when on the worse.
pub fn delta_cell(f: &EvalFile, metric: &str, system: &str) -> Markup {
    let Some(m) = f.metric(metric) else { return html! {} };
    let Some(d) = m.vs_base.iter().find(|s| s.system == system).map(|s| s.score) else { return html! {} };
    let (lo, hi) = (d.ci95[0], d.ci95[1]);
    let (better, worse) = if m.higher_is_better { (lo > 0.0, hi < 0.0) } else { (hi < 0.0, lo > 0.0) };
    html! {
        span.muted { "Δ vs base " }
        span class=(if better { "better" } else if worse { "worse" } else { "" }) {
            (format!("{:+.3}", d.value)) " [" (format!("{lo:+.3}")) ", " (format!("{hi:+.3}")) "]"
            @if better { " ✓" } @else if worse { " ✗" }
        }
    }
}

#[derive(Deserialize)]
pub struct EvalQuery {
    file: String,
}

pub async fn show(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<EvalQuery>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let (path, f) = blocking(move || {
        // Only a file the listing holds: the query names which one, never a path to read.
        let want = canonical(Path::new(&q.file));
        let (evals, _) = known(&st2);
        let k = evals.into_iter().find(|k| canonical(&k.path) == want).ok_or_else(|| {
            UiError::NotFound(format!("`{}` is not an evaluation the registry or a run folder holds", q.file))
        })?;
        let f = EvalFile::read(&k.path)?;
        Ok((k.path, f))
    })
    .await?;
    let systems: Vec<&str> = f.systems.iter().map(|s| s.name.as_str()).collect();
    let differing: Vec<&ferrotune_eval::report::RowResult> = f
        .rows
        .iter()
        .filter(|r| {
            r.outputs.iter().any(|o| r.outputs.first().is_some_and(|first| first.prediction != o.prediction))
        })
        .collect();
    let body = html! {
        h1 { "Evaluation" }
        p.muted { code { (path.display()) } }
        table.kv { tbody {
            tr { td { "created" } td { (f.created) } }
            tr { td { "base model" } td { (f.model.as_deref().unwrap_or("— (given predictions)")) } }
            tr { td { "data" } td { (f.data.path) " · " (f.data.rows) " rows · sha256 " code { (f.data.sha256.get(..12).unwrap_or(&f.data.sha256)) "…" } } }
            tr { td { "decoding" } td { (f.settings.decoding) @if let Some(t) = f.settings.max_tokens { ", max " (t) " tokens" } ", " (f.settings.bootstrap_resamples) " bootstrap resamples, seed " (f.settings.seed) } }
        } }
        h2 { "Systems" }
        table {
            thead { tr { th { "system" } th { "adapter" } th { "run" } th.n { "rows/s" } } }
            tbody { @for s in &f.systems { tr {
                td { (s.name) }
                td { (s.adapter.as_deref().unwrap_or("— (base model)")) }
                td { (s.run_dir.as_deref().unwrap_or("—")) }
                td.n { (s.rows_per_sec.map_or("—".into(), num)) }
            } } }
        }
        h2 { "Metrics" }
        table {
            caption { "score [95% bootstrap interval]; Δ: paired difference from the base, ✓ when the whole interval is better, ✗ when worse" }
            thead { tr { th { "metric" } @for s in &systems { th { (s) } } } }
            tbody { @for m in &f.metrics { tr {
                td { (m.name) span.muted { @if m.higher_is_better { " ↑" } @else { " ↓" } } }
                @for s in &systems { td { (score_cell(&f, &m.name, s)) br; (delta_cell(&f, &m.name, s)) } }
            } } }
        }
        h2 { "Rows where the answers differ (" (differing.len()) " of " (f.rows.len()) ")" }
        @if differing.len() > MAX_ROWS { p.muted { "The first " (MAX_ROWS) " are shown; eval.json holds them all." } }
        @for r in differing.iter().take(MAX_ROWS) {
            section {
                h3 { "Line " (r.line) }
                table.diff { tbody {
                    tr { th { "question" } td colspan="2" { (r.question) } }
                    tr { th { "reference" } td colspan="2" { (r.reference) } }
                    @for o in &r.outputs { tr {
                        th { (o.system) }
                        td { (o.prediction) }
                        td.muted { @for (k, v) in &o.scores { (k) " " (format!("{v:.3}")) " " } }
                    } }
                } }
            }
        }
    };
    Ok(page("Evaluation", "/evals", viewer.as_ref(), body))
}
