//! Release gates: a candidate version may take an alias only when its recorded evaluation on the
//! policy's `gate_data` is not worse (beyond the tolerance) than the version holding the alias
//! now — or than the base model when nobody holds it. Scores come from registered eval.json
//! files, never from a new run, so the decision is reproducible from the record.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{Res, sha256_file};
use crate::error::Result;
use crate::policy::{AliasRule, Gate};
use crate::query::{alias_holder, eval_in, version_in};
use crate::records::{ArtifactRecord, EvalRecord};

/// How evaluations on the gate's data are recognised.
#[derive(Debug, Clone)]
pub(crate) struct GateData {
    /// As written in the policy (what messages show).
    pub spec: String,
    /// Column of `evals` to compare and the value.
    column: &'static str,
    value: String,
}

impl GateData {
    /// A 64-hex SHA-256 matches `data_sha256`; a path that exists matches by its current
    /// content's SHA-256 (so a rewritten file's old scores do not count); a path that does not
    /// exist here matches `data_path` as recorded. Hashing happens before the transaction.
    pub fn resolve(spec: &str) -> Result<GateData> {
        let s = spec.trim();
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(GateData { spec: spec.into(), column: "data_sha256", value: s.to_ascii_lowercase() });
        }
        let p = Path::new(s);
        if p.is_file() {
            return Ok(GateData { spec: spec.into(), column: "data_sha256", value: sha256_file(p)? });
        }
        Ok(GateData { spec: spec.into(), column: "data_path", value: s.into() })
    }

    /// The data of a rule with gates (`None` when it has none, which needs no data).
    pub fn for_rule(rule: &AliasRule) -> Result<Option<GateData>> {
        match (&rule.gate_data, rule.gates.is_empty()) {
            (_, true) => Ok(None),
            (Some(d), false) => Ok(Some(GateData::resolve(d)?)),
            (None, false) => Err(crate::error::GovernError::Invalid {
                field: "gate_data",
                reason: format!("the rule has gates {:?} but no gate_data to read scores on", rule.gates),
            }),
        }
    }
}

/// SQL: eval system `s` ran artifact `id` — matched to it when recorded, or holding the same files
/// (the same content registered under another name is matched to only one of them).
pub(crate) fn matches(s: &str, id: &str) -> String {
    format!("({s}.artifact = {id} OR {s}.files_key = (SELECT files_key FROM artifacts WHERE id = {id}))")
}

/// The most recent eval on the data where a system is matched to `artifact`: (eval id, system).
fn latest_eval_of(c: &Connection, data: &GateData, artifact: i64) -> Res<Option<(i64, String)>> {
    Ok(c.query_row(
        &format!(
            "SELECT e.id, s.name FROM evals e JOIN eval_systems s ON s.eval = e.id \
             WHERE {} AND e.{} = ?2 ORDER BY e.id DESC LIMIT 1",
            matches("s", "?1"),
            data.column
        ),
        params![artifact, data.value],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// The most recent eval on the data holding both versions: (eval id, candidate system, holder system).
fn latest_eval_of_both(
    c: &Connection,
    data: &GateData,
    cand: i64,
    holder: i64,
) -> Res<Option<(i64, String, String)>> {
    Ok(c.query_row(
        &format!(
            "SELECT e.id, a.name, b.name FROM evals e JOIN eval_systems a ON a.eval = e.id AND {} \
             JOIN eval_systems b ON b.eval = e.id AND {} WHERE e.{} = ?3 ORDER BY e.id DESC LIMIT 1",
            matches("a", "?1"),
            matches("b", "?2"),
            data.column
        ),
        params![cand, holder, data.value],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?)
}

/// A system's score for a metric in an eval's `metrics` array.
fn score(eval: &EvalRecord, metric: &str, system: &str) -> std::result::Result<(f64, bool), String> {
    let metrics = eval.metrics.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(m) = metrics.iter().find(|m| m.get("name").and_then(|n| n.as_str()) == Some(metric)) else {
        let have: Vec<&str> = metrics.iter().filter_map(|m| m.get("name").and_then(|n| n.as_str())).collect();
        return Err(format!(
            "evaluation {} ({}) has no metric `{metric}` (it has: {})",
            eval.id,
            eval.path,
            have.join(", ")
        ));
    };
    let higher_is_better = m.get("higher_is_better").and_then(|h| h.as_bool()).unwrap_or(true);
    let scores = m.get("scores").and_then(|s| s.as_array()).map(Vec::as_slice).unwrap_or_default();
    let value = scores
        .iter()
        .find(|s| s.get("system").and_then(|n| n.as_str()) == Some(system))
        .and_then(|s| s.get("value"))
        .and_then(|v| v.as_f64());
    match value {
        Some(v) if v.is_finite() => Ok((v, higher_is_better)),
        Some(v) => Err(format!(
            "evaluation {} ({}) scores {system} `{metric}` = {v}, not a finite number",
            eval.id, eval.path
        )),
        None => {
            Err(format!("evaluation {} ({}) has no `{metric}` score for system {system}", eval.id, eval.path))
        }
    }
}

fn no_eval(who: &str, data: &GateData, adapter: &str) -> String {
    format!(
        "no evaluation of {who} on {} is recorded; run ferrotune eval --data {} --adapter {adapter}",
        data.spec, data.spec
    )
}

/// Check every gate of `rule` for moving `alias` of `cand.name` to `cand`. `Ok(None)`: pass;
/// `Ok(Some(message))`: refused, the message naming each failing gate and its numbers. The
/// holder is read here, so inside the caller's transaction it is the current one.
pub(crate) fn check(
    c: &Connection,
    cand: &ArtifactRecord,
    alias: &str,
    rule: &AliasRule,
    data: Option<&GateData>,
) -> Res<Option<String>> {
    let gates = rule.parsed_gates()?;
    if gates.is_empty() {
        return Ok(None);
    }
    let Some(data) = data else {
        return Ok(Some(format!("the rule for {alias} has gates but no gate_data")));
    };
    let cand_ref = cand.reference();
    let holder = match alias_holder(c, &cand.name, alias)? {
        Some(v) => version_in(c, &cand.name, v)?,
        None => None,
    };
    // (eval, system) for the candidate, and (eval, system, label) for the reference.
    let (cand_side, ref_side) = match &holder {
        Some(h) => {
            let label = format!("{} (current {alias})", h.reference());
            match latest_eval_of_both(c, data, cand.id, h.id)? {
                Some((e, a, b)) => ((e, a), (e, b, label)),
                None => {
                    let Some(cs) = latest_eval_of(c, data, cand.id)? else {
                        return Ok(Some(format!(
                            "gate for {alias}: {}",
                            no_eval(&cand_ref, data, &cand.path)
                        )));
                    };
                    let Some((he, hs)) = latest_eval_of(c, data, h.id)? else {
                        return Ok(Some(format!("gate for {alias}: {}", no_eval(&label, data, &h.path))));
                    };
                    (cs, (he, hs, label))
                }
            }
        }
        None => {
            let Some((e, s)) = latest_eval_of(c, data, cand.id)? else {
                return Ok(Some(format!("gate for {alias}: {}", no_eval(&cand_ref, data, &cand.path))));
            };
            let eval = eval_in(c, e)?;
            let Some(base) =
                eval.systems.iter().find(|(s, _)| s.adapter.is_none()).map(|(s, _)| s.name.clone())
            else {
                return Ok(Some(format!(
                    "gate for {alias}: nobody holds {alias} yet, so {cand_ref} is compared with the base model, but evaluation \
                     {e} ({}) has no base system; run ferrotune eval with the base model included",
                    eval.path
                )));
            };
            ((e, s), (e, base.clone(), format!("{base} (base model; no version holds {alias})")))
        }
    };
    let cand_eval = eval_in(c, cand_side.0)?;
    let ref_eval = if ref_side.0 == cand_side.0 { cand_eval.clone() } else { eval_in(c, ref_side.0)? };
    let mut failures = Vec::new();
    for gate in &gates {
        if let Some(f) = check_one(
            gate,
            alias,
            data,
            (&cand_eval, &cand_side.1, &cand_ref),
            (&ref_eval, &ref_side.1, &ref_side.2),
        ) {
            failures.push(f);
        }
    }
    Ok(if failures.is_empty() { None } else { Some(failures.join("; ")) })
}

fn check_one(
    gate: &Gate,
    alias: &str,
    data: &GateData,
    cand: (&EvalRecord, &str, &str),
    reference: (&EvalRecord, &str, &str),
) -> Option<String> {
    let head = format!("gate {gate} for {alias}");
    let (cv, higher) = match score(cand.0, &gate.metric, cand.1) {
        Ok(v) => v,
        Err(e) => return Some(format!("{head}: {} (candidate): {e}", cand.2)),
    };
    let (rv, _) = match score(reference.0, &gate.metric, reference.1) {
        Ok(v) => v,
        Err(e) => return Some(format!("{head}: {} (reference): {e}", reference.2)),
    };
    let (worse, by) =
        if higher { (cv < rv - gate.tolerance, rv - cv) } else { (cv > rv + gate.tolerance, cv - rv) };
    if !worse {
        return None;
    }
    Some(format!(
        "{head}: {} = {cv:.4} vs {} = {rv:.4} on {} → worse by {by:.4}{}",
        cand.2,
        reference.2,
        data.spec,
        if gate.tolerance > 0.0 { format!(" (tolerance {})", gate.tolerance) } else { String::new() }
    ))
}
