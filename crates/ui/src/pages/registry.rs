//! The registry: artifacts and their versions, aliases, the approval queue (approve / reject),
//! history, lineage, and the kill switch (disable / enable, each behind a confirmation page).
//! Writes call the same `Registry` methods as `ferrotune registry approve|reject|disable|enable`
//! and record the same audit events, with the actor `ui:NAME`.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use ferrotune_govern::{Policy, Promotion, Reference, Registry, RequestStatus, Selector};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::{self, Viewer};
use crate::error::UiError;
use crate::layout::{page, query, seg};
use crate::state::{AppState, blocking};

fn open(st: &AppState) -> Result<Registry, UiError> {
    st.registry()?
        .ok_or_else(|| UiError::NotFound(format!("no registry at {} yet", st.registry_path().display())))
}

fn status_name(s: RequestStatus) -> &'static str {
    match s {
        RequestStatus::Open => "open",
        RequestStatus::Applied => "applied",
        RequestStatus::Rejected => "rejected",
        RequestStatus::Refused => "refused",
    }
}

pub async fn index(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let data = blocking(move || {
        let Some(reg) = st2.registry()? else { return Ok(None) };
        Ok(Some((reg.artifacts()?, reg.aliases()?, reg.requests(false)?)))
    })
    .await?;
    let can_write = st.cfg.admin_key.is_some();
    let body = html! {
        h1 { "Registry" }
        @match &data {
            None => p.notice { "Nothing recorded yet (" code { (st.registry_path().display()) } " does not exist): "
                code { "ferrotune train" } ", " code { "eval" } " and " code { "data validate" } " record into it." },
            Some((artifacts, aliases, requests)) => {
                h2 #queue { "Approval queue" }
                (write_hint(viewer.as_ref(), can_write))
                @let open: Vec<_> = requests.iter().filter(|r| r.status == RequestStatus::Open).collect();
                @if open.is_empty() { p.muted { "No open requests." } } @else {
                    table {
                        thead { tr { th.n { "request" } th { "promote" } th { "asked by" } th { "reason" } th { "approvals" } th { "decide" } } }
                        tbody { @for r in &open { tr {
                            td.n { (r.id) }
                            td { (r.name) "@" (r.version) " → " strong { (r.alias) } }
                            td { (r.requester) br; span.muted { (r.created) } }
                            td { (r.reason) }
                            td { @if r.approvals.is_empty() { "none" } @else { (r.approvals.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(", ")) } }
                            td { @if let Some(v) = viewer.as_ref().filter(|_| can_write) {
                                form.inline method="post" action="/registry/approve" {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    input type="hidden" name="request" value=(r.id);
                                    button.primary type="submit" id={"approve-" (r.id)} { "Approve request " (r.id) }
                                }
                                form.inline method="post" action="/registry/reject" {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    input type="hidden" name="request" value=(r.id);
                                    label for={"reject-reason-" (r.id)} { "Reason" }
                                    input type="text" id={"reject-reason-" (r.id)} name="reason" required;
                                    button type="submit" { "Reject" }
                                }
                            } @else { span.muted { "log in to decide" } } }
                        } } }
                    }
                }
                h2 { "Aliases" }
                @if aliases.is_empty() { p.muted { "No aliases yet: " code { "ferrotune registry promote NAME VERSION --to champion --reason …" } } } @else {
                    table { thead { tr { th { "alias" } th { "points at" } } } tbody {
                        @for (n, a, v) in aliases { tr { td { (n) "@" (a) } td { a href={"/registry/version/" (seg(&format!("{n}@{v}")))} { (n) "@" (v) } } } }
                    } }
                }
                h2 { "Artifacts" }
                @if artifacts.is_empty() { p.muted { "No artifacts yet: " code { "ferrotune train" } " registers its output." } } @else {
                    table {
                        thead { tr { th { "version" } th { "kind" } th { "aliases" } th { "state" } th { "created" } th { "by" } th { "kill switch" } } }
                        tbody { @for a in artifacts { tr {
                            td { a href={"/registry/version/" (seg(&a.reference()))} { (a.reference()) } " " a.muted href={"/registry/history/" (seg(&a.name))} { "history" } }
                            td { (format!("{:?}", a.kind).to_lowercase()) }
                            td { (a.aliases.join(", ")) }
                            td { @if a.disabled { span.error { "DISABLED" } " " (a.disabled_reason.as_deref().unwrap_or("")) } @else { "enabled" } }
                            td { (a.created) }
                            td { (a.actor) }
                            td { @if a.disabled {
                                a href={"/registry/enable?" (query(&[("ref", &a.reference())]))} { "Enable " (a.reference()) "…" }
                            } @else {
                                a href={"/registry/disable?" (query(&[("ref", &a.reference())]))} { "Disable " (a.reference()) "…" }
                            } }
                        } } }
                    }
                }
                h2 { "Decided requests" }
                @let closed: Vec<_> = requests.iter().filter(|r| r.status != RequestStatus::Open).collect();
                @if closed.is_empty() { p.muted { "None yet." } } @else {
                    table { thead { tr { th.n { "request" } th { "promote" } th { "status" } th { "asked by" } th { "approvals" } th { "decided" } th { "why" } } } tbody {
                        @for r in &closed { tr {
                            td.n { (r.id) }
                            td { (r.name) "@" (r.version) " → " (r.alias) }
                            td { (status_name(r.status)) }
                            td { (r.requester) }
                            td { (r.approvals.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (r.decided.as_deref().unwrap_or("—")) }
                            td { (r.decision_reason.as_deref().unwrap_or(&r.reason)) }
                        } }
                    } }
                }
            }
        }
    };
    Ok(page("Registry", "/registry", viewer.as_ref(), body))
}

fn write_hint(viewer: Option<&Viewer>, can_write: bool) -> Markup {
    html! {
        @if !can_write {
            p.muted { "Read-only: start " code { "ferrotune ui" } " with " code { "--admin-key-file" } " (or " code { "FERROTUNE_UI_ADMIN_KEY" } ") to approve, reject, disable and enable here." }
        } @else if viewer.is_none() {
            p { a href="/login" { "Log in with the admin key" } " to approve, reject, disable and enable." }
        }
    }
}

pub async fn history(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let n = name.clone();
    let h = blocking(move || Ok(open(&st2)?.history(&n)?)).await?;
    if h.is_empty() {
        return Err(UiError::NotFound(format!("nothing on record for `{name}`")));
    }
    let v = |x: Option<u32>| x.map_or("none".to_string(), |v| format!("v{v}"));
    let body = html! {
        h1 { "History of " (name) }
        table {
            thead { tr { th { "time" } th { "action" } th { "version" } th { "alias" } th { "by" } th.n { "request" } th { "reason" } } }
            tbody { @for e in &h { tr {
                td { (e.time) }
                td { (e.action) }
                td { (e.version.map_or(String::new(), |v| format!("{}@{v}", e.name))) }
                td { @if let Some(a) = &e.alias { (a) ": " (v(e.from_version)) " → " (v(e.to_version)) } }
                td { (e.actor) }
                td.n { (e.request.map_or(String::new(), |r| r.to_string())) }
                td { (e.reason.as_deref().unwrap_or("")) }
            } } }
        }
    };
    Ok(page(&format!("History of {name}"), "/registry", viewer.as_ref(), body))
}

pub async fn version(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let r = reference.clone();
    let l = blocking(move || Ok(open(&st2)?.lineage(&r, "champion")?)).await?;
    let a = &l.artifact;
    let body = html! {
        h1 { (a.reference()) }
        p { @if a.disabled { span.error { "DISABLED: " (a.disabled_reason.as_deref().unwrap_or("")) } } @else { "Enabled" }
            @if !a.aliases.is_empty() { " · holds " strong { (a.aliases.join(", ")) } } }
        p.muted { code { (a.path) } }
        h2 { "Lineage" }
        pre { (ferrotune_govern::render::tree(&l)) }
        h2 { "Files" }
        table { thead { tr { th { "file" } th.n { "bytes" } th { "sha256" } } } tbody {
            @for f in &a.files { tr { td { (f.path) } td.n { (f.bytes) } td { code { (f.sha256) } } } }
        } }
        p { a href={"/registry/history/" (seg(&a.name))} { "History of " (a.name) } }
    };
    Ok(page(&a.reference(), "/registry", viewer.as_ref(), body))
}

/// Record a registry change (or its refusal) in the audit log as `ferrotune registry` does, then
/// hand the outcome on.
fn audited<T: serde::Serialize>(
    st: &AppState,
    actor: &str,
    action: &str,
    subject: serde_json::Value,
    fields: serde_json::Value,
    r: ferrotune_govern::Result<T>,
) -> Result<T, UiError> {
    let mut fields = fields;
    let outcome = match &r {
        Ok(v) => {
            fields["result"] = serde_json::to_value(v).map_err(|e| UiError::Internal(e.to_string()))?;
            "ok"
        }
        Err(e) => {
            fields["error"] = e.to_string().into();
            if matches!(e, ferrotune_govern::GovernError::Refused(_)) { "refused" } else { "failed" }
        }
    };
    (st.trail)(actor, action, subject, outcome, fields)
        .map_err(|e| UiError::Internal(format!("recording `{action}` in the audit log: {e}")))?;
    Ok(r?)
}

fn policy(st: &AppState) -> Result<Policy, UiError> {
    let p = st.cfg.home.join("policy.toml");
    Ok(Policy::load(p.exists().then_some(p.as_path()))?)
}

fn done(viewer: &Viewer, title: &str, message: Markup) -> Markup {
    page(
        title,
        "/registry",
        Some(viewer),
        html! {
            h1 { (title) }
            p.notice role="status" { (message) }
            p { a href="/registry" { "Back to the registry" } }
        },
    )
}

#[derive(Deserialize)]
pub struct Decision {
    // Defaults, so a POST without them meets the 403 of `authorize`, not a form error.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    request: i64,
    #[serde(default)]
    reason: String,
}

pub async fn approve(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<Decision>,
) -> Result<Markup, UiError> {
    let viewer = auth::authorize(&st, &headers, &f.csrf)?;
    let actor = viewer.actor();
    let st2 = st.clone();
    let (p, name) = blocking(move || {
        let reg = open(&st2)?;
        let policy = policy(&st2)?;
        let about = reg.request(f.request).ok();
        let subject = serde_json::json!({"request": f.request, "name": about.as_ref().map(|r| &r.name), "version": about.as_ref().map(|r| r.version),
            "alias": about.as_ref().map(|r| &r.alias)});
        let p = audited(&st2, &actor, "registry.approve", subject, serde_json::json!({}), reg.approve(f.request, &actor, &policy))?;
        Ok((p, about.map(|r| r.name).unwrap_or_default()))
    })
    .await?;
    let msg = match p {
        Promotion::Applied { request, alias, from_version, to_version } => {
            let from = from_version.map_or("nothing".to_string(), |v| format!("{name}@{v}"));
            html! { "Request " (request) " approved: " strong { (name) "@" (alias) " → " (name) "@" (to_version) } " (was " (from) ")." }
        }
        Promotion::Pending { request, needed } => {
            html! { "Request " (request) " approved; it waits for " (needed) " more approval(s)." }
        }
    };
    Ok(done(&viewer, "Approved", msg))
}

pub async fn reject(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<Decision>,
) -> Result<Markup, UiError> {
    let viewer = auth::authorize(&st, &headers, &f.csrf)?;
    if f.reason.trim().is_empty() {
        return Err(UiError::BadRequest("a rejection needs a reason".into()));
    }
    let actor = viewer.actor();
    let st2 = st.clone();
    let r = blocking(move || {
        let reg = open(&st2)?;
        audited(
            &st2,
            &actor,
            "registry.reject",
            serde_json::json!({"request": f.request}),
            serde_json::json!({"reason": f.reason}),
            reg.reject(f.request, &actor, &f.reason),
        )
    })
    .await?;
    Ok(done(
        &viewer,
        "Rejected",
        html! { "Request " (r.id) " rejected: " (r.name) "@" (r.version) " stays off " (r.alias) "." },
    ))
}

/// NAME@VERSION, for the kill switch.
fn name_version(reference: &str) -> Result<(String, u32), UiError> {
    match reference.parse::<Reference>()? {
        Reference { name, selector: Selector::Version(v) } => Ok((name, v)),
        _ => Err(UiError::BadRequest(format!("`{reference}`: name the version, as NAME@VERSION"))),
    }
}

#[derive(Deserialize)]
pub struct RefQuery {
    #[serde(rename = "ref")]
    reference: String,
}

/// The confirmation step before the kill switch: what the version holds, a reason, one button.
async fn confirm(
    st: Arc<AppState>,
    headers: HeaderMap,
    reference: String,
    disable: bool,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let (name, version) = name_version(&reference)?;
    let st2 = st.clone();
    let a = blocking(move || Ok(open(&st2)?.resolve(&format!("{name}@{version}"), "champion")?)).await?;
    let (verb, action) =
        if disable { ("Disable", "/registry/disable") } else { ("Enable", "/registry/enable") };
    let body = html! {
        h1 { (verb) " " (a.reference()) "?" }
        @if disable {
            div.danger {
                p { "A disabled version is not served (a running server stops its requests within a second) and cannot be promoted." }
                @if !a.aliases.is_empty() { p { "It still holds " strong { (a.aliases.join(", ")) } ": requests for those aliases will be refused until it is enabled or another version is promoted." } }
            }
        } @else {
            p { "It was disabled: " (a.disabled_reason.as_deref().unwrap_or("")) ". Enabling lets it be served and promoted again." }
        }
        (write_hint(viewer.as_ref(), st.cfg.admin_key.is_some()))
        @if let Some(v) = viewer.as_ref().filter(|_| st.cfg.admin_key.is_some()) {
            form.stack method="post" action=(action) {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="ref" value=(a.reference());
                input type="hidden" name="confirm" value="yes";
                label for="reason" { "Reason (recorded in the history and the audit log)" }
                input #reason type="text" name="reason" required[disable] size="60";
                p { button type="submit" class=(if disable { "warn" } else { "primary" }) { (verb) " " (a.reference()) } " " a href="/registry" { "Cancel" } }
            }
        }
    };
    Ok(page(&format!("{verb} {}", a.reference()), "/registry", viewer.as_ref(), body))
}

pub async fn confirm_disable(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RefQuery>,
) -> Result<Markup, UiError> {
    confirm(st, headers, q.reference, true).await
}

pub async fn confirm_enable(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RefQuery>,
) -> Result<Markup, UiError> {
    confirm(st, headers, q.reference, false).await
}

#[derive(Deserialize)]
pub struct Switch {
    #[serde(default)]
    csrf: String,
    #[serde(rename = "ref", default)]
    reference: String,
    #[serde(default)]
    reason: String,
    /// Set by the confirmation page's form: a bare POST does not flip the switch.
    #[serde(default)]
    confirm: String,
}

async fn switch(st: Arc<AppState>, headers: HeaderMap, f: Switch, disable: bool) -> Result<Markup, UiError> {
    let viewer = auth::authorize(&st, &headers, &f.csrf)?;
    if f.confirm != "yes" {
        return Err(UiError::BadRequest(
            "confirm on the confirmation page (/registry/disable?ref=NAME@VERSION)".into(),
        ));
    }
    if disable && f.reason.trim().is_empty() {
        return Err(UiError::BadRequest("disabling needs a reason".into()));
    }
    let (name, version) = name_version(&f.reference)?;
    let actor = viewer.actor();
    let st2 = st.clone();
    let a = blocking(move || {
        let reg = open(&st2)?;
        let subject = serde_json::json!({"name": name, "version": version});
        let fields = serde_json::json!({"reason": f.reason});
        if disable {
            audited(
                &st2,
                &actor,
                "registry.disable",
                subject,
                fields,
                reg.disable(&name, version, &f.reason, &actor),
            )
        } else {
            audited(
                &st2,
                &actor,
                "registry.enable",
                subject,
                fields,
                reg.enable(&name, version, &f.reason, &actor),
            )
        }
    })
    .await?;
    let msg = if disable {
        html! { strong { (a.reference()) } " disabled."
        @if !a.aliases.is_empty() { " It still holds " (a.aliases.join(", ")) ": requests for it are refused." } }
    } else {
        html! { strong { (a.reference()) } " enabled." }
    };
    Ok(done(&viewer, if disable { "Disabled" } else { "Enabled" }, msg))
}

pub async fn disable(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<Switch>,
) -> Result<Markup, UiError> {
    switch(st, headers, f, true).await
}

pub async fn enable(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<Switch>,
) -> Result<Markup, UiError> {
    switch(st, headers, f, false).await
}
