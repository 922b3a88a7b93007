//! Runs: the list, a run's page with its live loss curves, and the comparison of several runs.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use ferrotune_eval::report::EvalFile;
use ferrotune_govern::RunRecord;
use ferrotune_train::trainer::Metrics;
use futures_util::{Stream, StreamExt};
use maud::{Markup, html};

use crate::auth;
use crate::chart::{self, PALETTE, Series};
use crate::error::UiError;
use crate::layout::{num, page};
use crate::pages::evals;
use crate::runs::{self, RunRef};
use crate::state::{AppState, blocking};

/// The registry's run records by folder, or the reason there are none (never fatal for a page).
fn recorded(st: &AppState) -> (HashMap<PathBuf, RunRecord>, Option<String>) {
    match st.registry() {
        Ok(Some(reg)) => match reg.runs() {
            Ok(r) => (runs::recorded(r), None),
            Err(e) => (HashMap::new(), Some(format!("registry: {e}"))),
        },
        Ok(None) => (HashMap::new(), None),
        Err(e) => (HashMap::new(), Some(format!("registry: {e}"))),
    }
}

struct Row {
    run: RunRef,
    status: String,
    data: String,
    base: String,
    steps: Option<usize>,
    last_loss: Option<f64>,
}

pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let (listing, rows, reg_note) = blocking(move || {
        let listing = runs::list(&st2.cfg.runs);
        let (rec, note) = recorded(&st2);
        let rows: Vec<Row> = listing
            .runs
            .iter()
            .map(|r| {
                let d = runs::read(r);
                let cfg = |k: &str| {
                    d.config
                        .as_ref()
                        .and_then(|c| c.get(k))
                        .map(runs::config_text)
                        .unwrap_or_else(|| "—".into())
                };
                Row {
                    run: r.clone(),
                    status: runs::status(r, &d, &rec),
                    data: cfg("data"),
                    base: cfg("model"),
                    steps: d.metrics.last().map(|m| m.step),
                    last_loss: runs::last_loss(&d.metrics),
                }
            })
            .collect();
        Ok((listing, rows, note))
    })
    .await?;
    let roots: Vec<String> = st.cfg.runs.iter().map(|p| p.display().to_string()).collect();
    let body = html! {
        h1 { "Runs" }
        p.muted { "Run folders in " (roots.join(", ")) " (" code { "--runs DIR" } ")." }
        @for n in listing.notes.iter().chain(&reg_note) { p.notice role="status" { (n) } }
        @if rows.is_empty() {
            p { "No runs found." }
        } @else {
            form method="get" action="/compare" {
                table {
                    caption { "Tick two or more runs to compare them." }
                    thead { tr { th { "Compare" } th { "Run" } th { "Status" } th { "Data" } th { "Base model" } th.n { "Steps" } th.n { "Last loss" } } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { input type="checkbox" name="run" value=(r.run.key()) aria-label={"compare " (r.run.name)}; }
                                td { a href=(r.run.href()) { (r.run.name) } }
                                td { (r.status) }
                                td { (r.data) }
                                td { (r.base) }
                                td.n { (r.steps.map_or("—".into(), |s| s.to_string())) }
                                td.n { (r.last_loss.map_or("—".into(), num)) }
                            }
                        }
                    }
                }
                button.primary type="submit" { "Compare selected" }
            }
        }
    };
    Ok(page("Runs", "/", viewer.as_ref(), body))
}

/// Loss (solid) and eval loss (dashed) per run, each run in its own colour.
pub fn curves(runs: &[(&str, &[Metrics])]) -> Markup {
    let mut series = Vec::new();
    for (i, (name, m)) in runs.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let one = runs.len() == 1;
        series.push(Series {
            label: if one { "loss".into() } else { format!("{name} loss") },
            points: m.iter().filter_map(|m| Some((m.step as f64, m.loss?))).collect(),
            color,
            dashed: false,
        });
        let eval: Vec<(f64, f64)> = m.iter().filter_map(|m| Some((m.step as f64, m.eval_loss?))).collect();
        if !eval.is_empty() {
            series.push(Series {
                label: if one { "eval loss".into() } else { format!("{name} eval") },
                points: eval,
                color: if one { PALETTE[1] } else { color },
                dashed: true,
            });
        }
    }
    let names: Vec<&str> = runs.iter().map(|(n, _)| *n).collect();
    chart::line_chart(
        &format!("Training loss and eval loss by step: {}", names.join(", ")),
        "step",
        "loss",
        &series,
    )
}

/// `step 30 · loss 1.234 · eval loss 1.301 · 812 tokens/s`.
fn summary(m: &[Metrics]) -> String {
    let Some(last) = m.last() else { return "no steps logged yet".into() };
    let mut s = format!("step {} · epoch {:.2}", last.step, last.epoch);
    if let Some(l) = runs::last_loss(m) {
        s += &format!(" · loss {}", num(l));
    }
    if let Some(e) = m.iter().rev().find_map(|m| m.eval_loss) {
        s += &format!(" · eval loss {}", num(e));
    }
    s += &format!(" · lr {} · {} tokens/s", num(last.lr), num(last.tokens_per_sec));
    s
}

fn kv_table(v: &serde_json::Value) -> Markup {
    html! {
        @if let Some(obj) = v.as_object() {
            table.kv { tbody { @for (k, val) in obj { tr { td { (k) } td { code { (runs::config_text(val)) } } } } } }
        } @else {
            pre { (serde_json::to_string_pretty(v).unwrap_or_default()) }
        }
    }
}

pub async fn show(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((root, name)): Path<(usize, String)>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let (run, d, status, rec) = blocking(move || {
        let run = runs::find(&st2.cfg.runs, root, &name)?;
        let d = runs::read(&run);
        let (rec, _) = recorded(&st2);
        let status = runs::status(&run, &d, &rec);
        let dir = std::fs::canonicalize(&run.dir).unwrap_or_else(|_| run.dir.clone());
        Ok((run, d, status, rec.get(&dir).cloned()))
    })
    .await?;
    let body = html! {
        h1 { "Run " (run.name) }
        p { "Status: " strong { (status) } " · " span #summary { (summary(&d.metrics)) } " · " span #live.muted aria-live="polite" { "" } }
        p.muted { code { (run.dir.display()) } }
        @for n in &d.notes { p.notice role="status" { (n) } }
        h2 { "Loss" }
        div.chart #curve data-events={(run.href()) "/events"} { (curves(&[(run.name.as_str(), &d.metrics)])) }
        @if let Some(e) = &d.eval {
            p { a href={"/eval?" (crate::layout::query(&[("file", &e.display().to_string())]))} { "Evaluation of this run" } }
        }
        @if let Some(r) = &rec {
            h2 { "Registry" }
            table.kv { tbody {
                tr { td { "run id" } td { (r.id) } }
                tr { td { "started by" } td { (r.actor) } }
                tr { td { "started" } td { (r.started) } }
                tr { td { "finished" } td { (r.finished.as_deref().unwrap_or("—")) } }
                tr { td { "device" } td { (r.device) } }
                tr { td { "registers as" } td { a href={"/registry/history/" (crate::layout::seg(&r.register_as))} { (r.register_as) } } }
                @if let Some(f) = &r.flops { tr { td { "training FLOPs" } td { (num(f.value)) " — " (f.formula) } } }
                @if let Some(e) = &r.error { tr { td { "error" } td.error { (e) } } }
            } }
        }
        h2 { "Checkpoints" }
        @if d.checkpoints.is_empty() {
            p.muted { "none kept" }
        } @else {
            table { thead { tr { th.n { "step" } th.n { "files" } th.n { "MB" } } } tbody {
                @for c in &d.checkpoints { tr { td.n { (c.step) } td.n { (c.files) } td.n { (format!("{:.2}", c.bytes as f64 / 1e6)) } } }
            } }
        }
        p { "Output: " (d.output.map_or("not written yet".to_string(), |o| format!("{o}/"))) }
        h2 { "Config" }
        @match &d.config { Some(c) => (kv_table(c)), None => p.muted { "no config.json" } }
        h2 { "Lineage" }
        @match &d.lineage {
            Some(l) => details { summary { "lineage.json" } pre { (serde_json::to_string_pretty(l).unwrap_or_default()) } },
            None => p.muted { "no lineage.json yet (written when the run ends)" },
        }
    };
    Ok(page(&format!("Run {}", run.name), "/", viewer.as_ref(), body))
}

/// Server-sent events for a run page: `curve` (the chart, re-rendered) and `summary` (the line
/// above it), sent on connect and whenever `metrics.jsonl` changes size or time.
pub async fn events(
    State(st): State<Arc<AppState>>,
    Path((root, name)): Path<(usize, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let roots = st.cfg.runs.clone();
    let run = blocking(move || runs::find(&roots, root, &name)).await?;
    let closing = st.closing.subscribe();
    let poll = st.cfg.poll;
    let stream = futures_util::stream::unfold(
        (run, None, closing, true),
        move |(run, last, mut closing, first)| async move {
            loop {
                if *closing.borrow() {
                    return None;
                }
                if !first {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = closing.changed() => return None,
                    }
                }
                let dir = run.dir.clone();
                let stamp =
                    tokio::task::spawn_blocking(move || runs::metrics_stamp(&dir)).await.ok().flatten();
                if !first && stamp == last {
                    continue;
                }
                let r = run.clone();
                let events = tokio::task::spawn_blocking(move || {
                    let (m, _) = runs::read_metrics(&r.dir.join("metrics.jsonl"));
                    vec![
                        Ok(Event::default()
                            .event("curve")
                            .data(curves(&[(r.name.as_str(), &m)]).into_string())),
                        Ok(Event::default().event("summary").data(summary(&m))),
                    ]
                })
                .await
                .unwrap_or_default();
                return Some((futures_util::stream::iter(events), (run, stamp, closing, false)));
            }
        },
    )
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The `run` values of a query string (`?run=0/a&run=0/b`).
fn run_keys(q: Option<&str>) -> Vec<String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "run")
        .map(|(_, v)| v.into_owned())
        .collect()
}

pub async fn compare(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let keys = run_keys(q.as_deref());
    if keys.len() < 2 {
        return Err(UiError::BadRequest(
            "pick two or more runs to compare (tick them on the Runs page)".into(),
        ));
    }
    if keys.len() > PALETTE.len() {
        return Err(UiError::BadRequest(format!("compare at most {} runs at once", PALETTE.len())));
    }
    let roots = st.cfg.runs.clone();
    let loaded = blocking(move || {
        keys.iter()
            .map(|k| {
                let run = runs::find_key(&roots, k)?;
                let d = runs::read(&run);
                let eval = d.eval.as_ref().map(|p| EvalFile::read(p).map_err(|e| e.to_string()));
                Ok((run, d, eval))
            })
            .collect::<Result<Vec<_>, UiError>>()
    })
    .await?;
    let names: Vec<&str> = loaded.iter().map(|(r, _, _)| r.name.as_str()).collect();
    let chart =
        curves(&loaded.iter().map(|(r, d, _)| (r.name.as_str(), d.metrics.as_slice())).collect::<Vec<_>>());
    let body = html! {
        h1 { "Compare " (names.join(", ")) }
        div.chart { (chart) }
        p.muted { "Solid: training loss; dashed: eval loss, in the run's colour." }
        h2 { "Config differences" }
        (config_diff(&loaded.iter().map(|(r, d, _)| (r.name.as_str(), d.config.as_ref())).collect::<Vec<_>>()))
        h2 { "Evaluation" }
        (eval_deltas(&loaded.iter().map(|(r, _, e)| (r, e.as_ref())).collect::<Vec<_>>()))
    };
    Ok(page("Compare runs", "/", viewer.as_ref(), body))
}

fn config_diff(runs: &[(&str, Option<&serde_json::Value>)]) -> Markup {
    let keys: BTreeSet<&String> =
        runs.iter().filter_map(|(_, c)| c.and_then(|c| c.as_object())).flat_map(|o| o.keys()).collect();
    let value = |c: Option<&serde_json::Value>, k: &str| {
        c.and_then(|c| c.get(k)).map(runs::config_text).unwrap_or_else(|| "—".into())
    };
    let (differ, same): (Vec<&String>, Vec<&String>) = keys.into_iter().partition(|k| {
        let first = value(runs[0].1, k);
        runs.iter().any(|(_, c)| value(*c, k) != first)
    });
    html! {
        @if differ.is_empty() {
            p { "The configs are the same." }
        } @else {
            table.diff {
                thead { tr { th { "setting" } @for (n, _) in runs { th { (n) } } } }
                tbody { @for k in &differ { tr { td { (k) } @for (_, c) in runs { td { code { (value(*c, k)) } } } } } }
            }
        }
        @if !same.is_empty() {
            details { summary { (same.len()) " settings are the same" }
                table.diff { tbody { @for k in &same { tr { td { (k) } td { code { (value(runs[0].1, k)) } } } } } }
            }
        }
    }
}

/// Each run's score with its 95% interval and its paired difference from the base (from its own
/// eval.json), then the point difference from the first run (no interval: the runs were not
/// resampled together).
fn eval_deltas(runs: &[(&RunRef, Option<&Result<EvalFile, String>>)]) -> Markup {
    let mut cols: Vec<(&str, &EvalFile, String)> = Vec::new();
    let mut notes = Vec::new();
    for (r, e) in runs {
        match e {
            None => notes.push(format!("{}: no eval/eval.json", r.name)),
            Some(Err(msg)) => notes.push(format!("{}: {msg}", r.name)),
            Some(Ok(f)) => match evals::system_for_run(f, &r.dir) {
                Some(sys) => cols.push((r.name.as_str(), f, sys)),
                None => notes.push(format!("{}: its eval.json names no system from this run", r.name)),
            },
        }
    }
    let metrics: BTreeSet<&str> =
        cols.iter().flat_map(|(_, f, _)| f.metrics.iter().map(|m| m.name.as_str())).collect();
    html! {
        @for n in &notes { p.muted { (n) } }
        @if !cols.is_empty() {
            table {
                caption { "score [95% interval] · Δ vs the base model [95% interval, paired bootstrap]" }
                thead { tr { th { "metric" } @for (n, _, s) in &cols { th { (n) " (" (s) ")" } } @if cols.len() > 1 { @for (n, _, _) in &cols[1..] { th { (n) " − " (cols[0].0) } } } } }
                tbody {
                    @for m in &metrics {
                        tr {
                            td { (m) }
                            @for (_, f, s) in &cols {
                                td { (evals::score_cell(f, m, s)) br; (evals::delta_cell(f, m, s)) }
                            }
                            @if cols.len() > 1 {
                                @for (_, f, s) in &cols[1..] {
                                    td.n { (point_delta(f, s, cols[0].1, &cols[0].2, m)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn point_delta(f: &EvalFile, s: &str, f0: &EvalFile, s0: &str, metric: &str) -> String {
    let v = f.metric(metric).and_then(|m| m.score_of(s)).map(|x| x.value);
    let v0 = f0.metric(metric).and_then(|m| m.score_of(s0)).map(|x| x.value);
    match (v, v0) {
        (Some(a), Some(b)) => format!("{:+.4}", a - b),
        _ => "—".into(),
    }
}
