//! Reading the registry: lists, one run, reference resolution (with errors that say what exists),
//! lineage and history. The `*_in` functions take a connection so the write paths reuse them
//! inside their transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::db::{Res, from_json, opt_from_json};
use crate::error::{GovernError, Result};
use crate::process;
use crate::records::*;
use crate::registry::{Reference, Registry, Selector};

const MODEL_COLS: &str = "id, name, path, files, config, parameters, created";
const DATASET_COLS: &str = "id, path, sha256, bytes, format, rows, report, pii_findings, duplicates, created";
const RUN_COLS: &str = "id, name, run_dir, status, error, base_model, config, method, device, actor, register_as, host, pid, \
     pid_start, started, finished, tokens, steps, metrics, flops";
pub(crate) const ARTIFACT_COLS: &str =
    "id, name, version, kind, path, files, run, base_model, created, actor, disabled, disabled_reason";
const EVAL_COLS: &str = "id, path, sha256, model, data_path, data_sha256, rows, created, actor, metrics";
const EVENT_COLS: &str =
    "id, time, actor, action, name, version, alias, from_version, to_version, request, reason";
const REQUEST_COLS: &str =
    "id, name, version, alias, requester, reason, created, status, decided, decision_reason";

pub(crate) fn status_str(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Abandoned => "abandoned",
    }
}

pub(crate) fn kind_str(k: ArtifactKind) -> &'static str {
    match k {
        ArtifactKind::Adapter => "adapter",
        ArtifactKind::Model => "model",
    }
}

pub(crate) fn request_status_str(s: RequestStatus) -> &'static str {
    match s {
        RequestStatus::Open => "open",
        RequestStatus::Applied => "applied",
        RequestStatus::Rejected => "rejected",
        RequestStatus::Refused => "refused",
    }
}

fn bad_value(col: usize, what: &str, v: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        format!("unknown {what} `{v}` (written by a newer ferrotune?)").into(),
    )
}

fn u64_col(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}

fn model_row(r: &Row<'_>) -> rusqlite::Result<ModelRecord> {
    Ok(ModelRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        path: r.get(2)?,
        files: from_json(3, &r.get::<_, String>(3)?)?,
        config: from_json(4, &r.get::<_, String>(4)?)?,
        parameters: u64_col(r, 5)?,
        created: r.get(6)?,
    })
}

fn dataset_row(r: &Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        id: r.get(0)?,
        path: r.get(1)?,
        sha256: r.get(2)?,
        bytes: u64_col(r, 3)?.unwrap_or(0),
        format: r.get(4)?,
        rows: u64_col(r, 5)?,
        report: opt_from_json(6, r.get(6)?)?,
        pii_findings: u64_col(r, 7)?,
        duplicates: u64_col(r, 8)?,
        created: r.get(9)?,
    })
}

/// A run row; `running` is reported as `abandoned` when its process is gone (decided here, at
/// read, so a killed trainer needs nobody to clean up after it).
fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = r.get(3)?;
    let host: String = r.get(11)?;
    let pid = r.get::<_, i64>(12)?.clamp(0, u32::MAX as i64) as u32;
    let pid_start: Option<String> = r.get(13)?;
    let status = match status.as_str() {
        "running" if process::is_abandoned(&host, pid, pid_start.as_deref()) => RunStatus::Abandoned,
        "running" => RunStatus::Running,
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        "abandoned" => RunStatus::Abandoned,
        other => return Err(bad_value(3, "run status", other)),
    };
    Ok(RunRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        run_dir: r.get(2)?,
        status,
        error: r.get(4)?,
        base_model: r.get(5)?,
        datasets: Vec::new(),
        config: from_json(6, &r.get::<_, String>(6)?)?,
        method: r.get(7)?,
        device: r.get(8)?,
        actor: r.get(9)?,
        register_as: r.get(10)?,
        host,
        pid,
        started: r.get(14)?,
        finished: r.get(15)?,
        tokens: u64_col(r, 16)?,
        steps: u64_col(r, 17)?,
        metrics: opt_from_json(18, r.get(18)?)?,
        flops: opt_from_json(19, r.get(19)?)?,
    })
}

fn artifact_row(r: &Row<'_>) -> rusqlite::Result<ArtifactRecord> {
    let kind: String = r.get(3)?;
    let kind = match kind.as_str() {
        "adapter" => ArtifactKind::Adapter,
        "model" => ArtifactKind::Model,
        other => return Err(bad_value(3, "artifact kind", other)),
    };
    Ok(ArtifactRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        kind,
        path: r.get(4)?,
        files: from_json(5, &r.get::<_, String>(5)?)?,
        run: r.get(6)?,
        base_model: r.get(7)?,
        created: r.get(8)?,
        actor: r.get(9)?,
        disabled: r.get(10)?,
        disabled_reason: r.get(11)?,
        aliases: Vec::new(),
    })
}

fn eval_row(r: &Row<'_>) -> rusqlite::Result<EvalRecord> {
    Ok(EvalRecord {
        id: r.get(0)?,
        path: r.get(1)?,
        sha256: r.get(2)?,
        model: r.get(3)?,
        data_path: r.get(4)?,
        data_sha256: r.get(5)?,
        rows: u64_col(r, 6)?.unwrap_or(0),
        created: r.get(7)?,
        actor: r.get(8)?,
        systems: Vec::new(),
        metrics: from_json(9, &r.get::<_, String>(9)?)?,
    })
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<HistoryEvent> {
    Ok(HistoryEvent {
        id: r.get(0)?,
        time: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        name: r.get(4)?,
        version: r.get(5)?,
        alias: r.get(6)?,
        from_version: r.get(7)?,
        to_version: r.get(8)?,
        request: r.get(9)?,
        reason: r.get(10)?,
    })
}

fn request_row(r: &Row<'_>) -> rusqlite::Result<PromotionRequest> {
    let status: String = r.get(7)?;
    let status = match status.as_str() {
        "open" => RequestStatus::Open,
        "applied" => RequestStatus::Applied,
        "rejected" => RequestStatus::Rejected,
        "refused" => RequestStatus::Refused,
        other => return Err(bad_value(7, "request status", other)),
    };
    Ok(PromotionRequest {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        alias: r.get(3)?,
        requester: r.get(4)?,
        reason: r.get(5)?,
        created: r.get(6)?,
        status,
        approvals: Vec::new(),
        decided: r.get(8)?,
        decision_reason: r.get(9)?,
    })
}

fn collect<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Res<Vec<T>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map(params, f)?.collect::<rusqlite::Result<Vec<T>>>()?;
    Ok(rows)
}

pub(crate) fn models_in(c: &Connection, filter: &str, p: impl rusqlite::Params) -> Res<Vec<ModelRecord>> {
    collect(c, &format!("SELECT {MODEL_COLS} FROM models {filter} ORDER BY id"), p, model_row)
}

pub(crate) fn datasets_in(c: &Connection, filter: &str, p: impl rusqlite::Params) -> Res<Vec<DatasetRecord>> {
    collect(c, &format!("SELECT {DATASET_COLS} FROM datasets {filter} ORDER BY id"), p, dataset_row)
}

pub(crate) fn runs_in(c: &Connection, filter: &str, p: impl rusqlite::Params) -> Res<Vec<RunRecord>> {
    let mut runs = collect(c, &format!("SELECT {RUN_COLS} FROM runs {filter} ORDER BY id"), p, run_row)?;
    for run in &mut runs {
        run.datasets =
            collect(c, "SELECT dataset FROM run_datasets WHERE run = ?1 ORDER BY position", [run.id], |r| {
                r.get(0)
            })?;
    }
    Ok(runs)
}

pub(crate) fn run_in(c: &Connection, id: i64) -> Res<RunRecord> {
    runs_in(c, "WHERE id = ?1", [id])?
        .pop()
        .ok_or_else(|| GovernError::NotFound(format!("no run {id} in the registry")).into())
}

pub(crate) fn artifacts_in(
    c: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Res<Vec<ArtifactRecord>> {
    let mut arts =
        collect(c, &format!("SELECT {ARTIFACT_COLS} FROM artifacts {filter} ORDER BY id"), p, artifact_row)?;
    for a in &mut arts {
        a.aliases =
            collect(c, "SELECT alias FROM aliases WHERE artifact = ?1 ORDER BY alias", [a.id], |r| r.get(0))?;
    }
    Ok(arts)
}

/// `name@version`, or `None` when there is no such version.
pub(crate) fn version_in(c: &Connection, name: &str, version: u32) -> Res<Option<ArtifactRecord>> {
    Ok(artifacts_in(c, "WHERE name = ?1 AND version = ?2", params![name, version])?.pop())
}

pub(crate) fn evals_in(c: &Connection, filter: &str, p: impl rusqlite::Params) -> Res<Vec<EvalRecord>> {
    let mut evals = collect(c, &format!("SELECT {EVAL_COLS} FROM evals {filter}"), p, eval_row)?;
    for e in &mut evals {
        e.systems = collect(
            c,
            "SELECT name, adapter, adapter_files, artifact FROM eval_systems WHERE eval = ?1 ORDER BY position",
            [e.id],
            |r| {
                let sys = EvalSystem {
                    name: r.get(0)?,
                    adapter: r.get(1)?,
                    adapter_files: from_json(2, &r.get::<_, String>(2)?)?,
                };
                Ok((sys, r.get(3)?))
            },
        )?;
    }
    Ok(evals)
}

pub(crate) fn eval_in(c: &Connection, id: i64) -> Res<EvalRecord> {
    evals_in(c, "WHERE id = ?1", [id])?
        .pop()
        .ok_or_else(|| GovernError::NotFound(format!("no evaluation {id} in the registry")).into())
}

pub(crate) fn events_in(c: &Connection, filter: &str, p: impl rusqlite::Params) -> Res<Vec<HistoryEvent>> {
    collect(c, &format!("SELECT {EVENT_COLS} FROM events {filter} ORDER BY id"), p, event_row)
}

pub(crate) fn requests_in(
    c: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Res<Vec<PromotionRequest>> {
    let mut reqs =
        collect(c, &format!("SELECT {REQUEST_COLS} FROM requests {filter} ORDER BY id"), p, request_row)?;
    for q in &mut reqs {
        q.approvals =
            collect(c, "SELECT actor, time FROM approvals WHERE request = ?1 ORDER BY rowid", [q.id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
    }
    Ok(reqs)
}

/// The version `alias` of `name` points at now.
pub(crate) fn alias_holder(c: &Connection, name: &str, alias: &str) -> Res<Option<u32>> {
    Ok(c.query_row("SELECT version FROM aliases WHERE name = ?1 AND alias = ?2", params![name, alias], |r| {
        r.get(0)
    })
    .optional()?)
}

fn list_some(items: &[String], max: usize) -> String {
    let mut s = items.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(", … ({} more)", items.len() - max));
    }
    s
}

/// Resolve a reference; the errors say what does exist, so the next command is obvious.
pub(crate) fn resolve_in(c: &Connection, r: &Reference, default_alias: &str) -> Res<ArtifactRecord> {
    let (count, min, max): (u32, Option<u32>, Option<u32>) = c.query_row(
        "SELECT COUNT(*), MIN(version), MAX(version) FROM artifacts WHERE name = ?1",
        [&r.name],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let (Some(min), Some(max)) = (min, max) else {
        let names: Vec<String> =
            collect(c, "SELECT DISTINCT name FROM artifacts ORDER BY name", [], |row| row.get(0))?;
        let known = if names.is_empty() {
            "the registry has no artifacts yet".to_string()
        } else {
            format!("known: {}", list_some(&names, 10))
        };
        return Err(GovernError::NotFound(format!("no artifact named `{}` ({known})", r.name)).into());
    };
    let versions = if min == max {
        format!("{}@{min}", r.name)
    } else {
        format!("{}@{min} … {}@{max}", r.name, r.name)
    };
    let aliases = || -> Res<String> {
        let list: Vec<String> = collect(
            c,
            "SELECT alias, version FROM aliases WHERE name = ?1 ORDER BY alias",
            [&r.name],
            |row| Ok(format!("{} (→ {})", row.get::<_, String>(0)?, row.get::<_, u32>(1)?)),
        )?;
        Ok(if list.is_empty() {
            "it has no aliases".into()
        } else {
            format!("its aliases: {}", list.join(", "))
        })
    };
    let version = match &r.selector {
        Selector::Version(v) => *v,
        Selector::Alias(a) => match alias_holder(c, &r.name, a)? {
            Some(v) => v,
            None => {
                return Err(
                    GovernError::NotFound(format!("{} has no alias `{a}`; {}", r.name, aliases()?)).into()
                );
            }
        },
        Selector::Default => match alias_holder(c, &r.name, default_alias)? {
            Some(v) => v,
            None => {
                return Err(GovernError::NotFound(format!(
                    "{} has no `{default_alias}` alias yet (it has {count} version{}: {versions}); name a version or an alias, \
                     e.g. {}@{max}",
                    r.name,
                    if count == 1 { "" } else { "s" },
                    r.name
                ))
                .into());
            }
        },
    };
    version_in(c, &r.name, version)?.ok_or_else(|| {
        GovernError::NotFound(format!("{} has no version {version} (it has {count}: {versions})", r.name))
            .into()
    })
}

/// Everything known about one artifact version.
pub(crate) fn lineage_in(c: &Connection, artifact: ArtifactRecord) -> Res<Lineage> {
    let run = artifact.run.map(|id| run_in(c, id)).transpose()?;
    let base_id = artifact.base_model.or(run.as_ref().map(|r| r.base_model));
    let base_model = match base_id {
        Some(id) => models_in(c, "WHERE id = ?1", [id])?.pop(),
        None => None,
    };
    let mut datasets = Vec::new();
    if let Some(run) = &run {
        for id in &run.datasets {
            datasets.extend(datasets_in(c, "WHERE id = ?1", [id])?);
        }
    }
    let evals = evals_in(
        c,
        &format!(
            "WHERE id IN (SELECT eval FROM eval_systems s WHERE {}) ORDER BY id DESC",
            crate::gate::matches("s", "?1")
        ),
        [artifact.id],
    )?;
    let releases = events_in(
        c,
        "WHERE name = ?1 AND alias IS NOT NULL AND (version = ?2 OR from_version = ?2 OR to_version = ?2)",
        params![artifact.name, artifact.version],
    )?;
    Ok(Lineage { artifact, run, base_model, datasets, evals, releases })
}

impl Registry {
    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        self.read(|c| models_in(c, "", []))
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.read(|c| datasets_in(c, "", []))
    }

    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        self.read(|c| runs_in(c, "", []))
    }

    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>> {
        self.read(|c| artifacts_in(c, "", []))
    }

    pub fn evals(&self) -> Result<Vec<EvalRecord>> {
        self.read(|c| evals_in(c, "ORDER BY id", []))
    }

    pub fn run(&self, id: i64) -> Result<RunRecord> {
        self.read(|c| run_in(c, id))
    }

    /// `support`, `support@3`, `support@canary`; `default_alias` is what a bare name means.
    /// A disabled version resolves (the caller decides whether to refuse it).
    pub fn resolve(&self, reference: &str, default_alias: &str) -> Result<ArtifactRecord> {
        let r: Reference = reference.parse()?;
        self.read(|c| resolve_in(c, &r, default_alias))
    }

    pub fn lineage(&self, reference: &str, default_alias: &str) -> Result<Lineage> {
        let r: Reference = reference.parse()?;
        self.read(|c| {
            let artifact = resolve_in(c, &r, default_alias)?;
            lineage_in(c, artifact)
        })
    }

    /// Every event about `name`, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEvent>> {
        self.read(|c| events_in(c, "WHERE name = ?1", [name]))
    }

    /// name → alias → version.
    pub fn aliases(&self) -> Result<Vec<(String, String, u32)>> {
        self.read(|c| {
            collect(c, "SELECT name, alias, version FROM aliases ORDER BY name, alias", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
    }

    pub fn requests(&self, open_only: bool) -> Result<Vec<PromotionRequest>> {
        self.read(|c| {
            if open_only { requests_in(c, "WHERE status = 'open'", []) } else { requests_in(c, "", []) }
        })
    }

    /// One promotion request.
    pub fn request(&self, id: i64) -> Result<PromotionRequest> {
        self.read(|c| request_in(c, id))
    }
}

pub(crate) fn request_in(c: &Connection, id: i64) -> Res<PromotionRequest> {
    requests_in(c, "WHERE id = ?1", [id])?
        .pop()
        .ok_or_else(|| GovernError::NotFound(format!("no promotion request {id}")).into())
}
