//! The audit log: recent entries, search by action / actor / subject / time, the latest signed
//! checkpoint with its signature checked, and a full verification (`ferrotune audit verify`).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use ferrotune_govern::audit::note::Verifier;
use ferrotune_govern::audit::{AuditConfig, AuditLog, Filter, VerifyReport};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth;
use crate::error::UiError;
use crate::layout::page;
use crate::state::{AppState, blocking};

/// Logs up to this size are verified on every visit (about a tenth of a second); larger ones on demand.
const VERIFY_ON_PAGE: u64 = 100_000;

fn open(dir: &Path) -> Result<Option<AuditLog>, UiError> {
    // Opening creates a log; the dashboard only reads one that exists.
    if !dir.join("origin").is_file() {
        return Ok(None);
    }
    let cfg_path = dir.join("config.toml");
    let cfg: AuditConfig = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => {
            toml::from_str(&t).map_err(|e| UiError::BadRequest(format!("{}: {e}", cfg_path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => AuditConfig::default(),
        Err(e) => return Err(UiError::io(&cfg_path)(e)),
    };
    Ok(Some(AuditLog::open(dir, &cfg)?))
}

/// The newest checkpoint on disk: its size, and either its root (signature good) or why not.
struct Latest {
    size: u64,
    checked: Result<String, String>,
}

fn latest_checkpoint(log: &AuditLog) -> Option<Latest> {
    let dir = log.dir().join("checkpoints");
    let (size, path) = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_suffix(".note")?.parse::<u64>().ok()?, e.path()))
        })
        .max_by_key(|(s, _)| *s)?;
    let checked =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display())).and_then(|note| {
            let cp = Verifier::parse(&log.verifier_key())
                .and_then(|v| v.verify(&note))
                .map_err(|e| e.to_string())?;
            if cp.size != size {
                return Err(format!("{} says size {}", path.display(), cp.size));
            }
            Ok(cp.root.iter().map(|b| format!("{b:02x}")).collect())
        });
    Some(Latest { size, checked })
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn verify_report(r: &VerifyReport) -> Markup {
    html! {
        @if r.ok {
            p.ok role="status" { "✓ Verified: " (r.entries) " entries recomputed into the tree"
                @if r.checkpoints > 0 { "; " (r.checkpoints) " signed checkpoints, each signature, root and consistency proof checked." } @else { "; no signed checkpoint to check yet." } }
        } @else {
            div.danger role="alert" {
                p { strong { "The log does not verify." } }
                ul { @for p in &r.problems { li { (p) } } }
            }
        }
    }
}

fn entry_rows(rows: &[(u64, serde_json::Value)]) -> Markup {
    html! {
        table {
            thead { tr { th.n { "#" } th { "time" } th { "action" } th { "outcome" } th { "actor" } th { "subject" } th { "fields" } } }
            tbody { @for (i, e) in rows.iter().rev() { tr {
                td.n { (i) }
                td { (e["time"].as_str().unwrap_or("")) }
                td { (e["action"].as_str().unwrap_or("")) }
                td { @let o = e["outcome"].as_str().unwrap_or(""); span class=[(o != "ok").then_some("error")] { (o) } }
                td { (e["actor"].as_str().unwrap_or("")) }
                td { code { (serde_json::to_string(&e["subject"]).unwrap_or_default()) } }
                td { details { summary { "fields" } pre { (serde_json::to_string_pretty(&e["fields"]).unwrap_or_default()) } } }
            } } }
        }
    }
}

pub async fn index(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let dir = st.audit_dir();
    let filter = Filter {
        since: opt(&q.since),
        until: opt(&q.until),
        actor: opt(&q.actor),
        action: opt(&q.action),
        subject: opt(&q.subject),
        limit: None,
    };
    let searching = filter.since.is_some()
        || filter.until.is_some()
        || filter.actor.is_some()
        || filter.action.is_some()
        || filter.subject.is_some();
    let d = dir.clone();
    let data = blocking(move || {
        let Some(log) = open(&d)? else { return Ok(None) };
        let size = log.size()?;
        let rows = log.entries(&Filter { limit: Some(if searching { 200 } else { 50 }), ..filter }, true)?;
        let latest = latest_checkpoint(&log);
        let report = (size <= VERIFY_ON_PAGE).then(|| log.verify(None)).transpose()?;
        Ok(Some((size, rows, latest, report, log.verifier_key())))
    })
    .await?;
    let body = html! {
        h1 { "Audit log" }
        @match &data {
            None => p.notice { "No audit log yet in " code { (dir.display()) } ": the first training, evaluation or registry decision starts it." },
            Some((size, rows, latest, report, vkey)) => {
                h2 { "Integrity" }
                p { (size) " entries in " code { (dir.display()) } "." }
                @match latest {
                    None => p.muted { "No signed checkpoint yet (" code { "ferrotune audit checkpoint" } " signs one)." },
                    Some(Latest { size: cs, checked: Ok(root) }) => p.ok { "✓ Latest checkpoint: tree size " (cs) ", root " code { (root) } ", signature good (" code { (vkey) } ")."
                        @if cs < size { span.muted { " " (size - cs) " newer entries are not yet in a checkpoint." } } },
                    Some(Latest { size: cs, checked: Err(e) }) => p.error role="alert" { "✗ Latest checkpoint (size " (cs) "): " (e) },
                }
                @match report {
                    Some(r) => (verify_report(r)),
                    None => p { a href="/audit/verify" { "Verify the whole log" } " (recomputes every entry; a few seconds per million)" },
                }
                h2 { "Search" }
                form.filters method="get" action="/audit" {
                    label { span { "Action (" code { "registry.*" } " for a family)" } input type="text" name="action" value=(q.action); }
                    label { "Actor" input type="text" name="actor" value=(q.actor); }
                    label { "Subject contains" input type="text" name="subject" value=(q.subject); }
                    label { "Since (2026-12-01 or RFC 3339)" input type="text" name="since" value=(q.since); }
                    label { "Until" input type="text" name="until" value=(q.until); }
                    span { button.primary type="submit" { "Search" } " " a href="/audit" { "Clear" } }
                }
                h2 { @if searching { "Matching entries (newest first, at most 200)" } @else { "Recent entries (newest first)" } }
                @if rows.is_empty() { p.muted { "None." } } @else { (entry_rows(rows)) }
            }
        }
    };
    Ok(page("Audit log", "/audit", viewer.as_ref(), body))
}

pub async fn verify(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let dir = st.audit_dir();
    let d = dir.clone();
    let report =
        blocking(move || open(&d)?.map(|log| log.verify(None)).transpose().map_err(UiError::from)).await?;
    let body = html! {
        h1 { "Verify the audit log" }
        @match &report { Some(r) => (verify_report(r)), None => p.notice { "No audit log in " code { (dir.display()) } "." } }
        p { a href="/audit" { "Back to the audit log" } }
    };
    Ok(page("Verify the audit log", "/audit", viewer.as_ref(), body))
}
