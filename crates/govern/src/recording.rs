//! What the stages record: base models, datasets, runs (begin / finish), artifacts (the next
//! version of a name) and evaluations. Each call is one transaction and idempotent where a
//! repeat is natural (the same files are the same model / dataset / version / eval).

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{Res, files_key, model_key, to_json};
use crate::error::{GovernError, Result};
use crate::process;
use crate::query::{artifacts_in, eval_in, kind_str, status_str};
use crate::records::*;
use crate::registry::{Registry, check_name};

pub(crate) struct Event<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub name: &'a str,
    pub version: Option<u32>,
    pub alias: Option<&'a str>,
    pub from_version: Option<u32>,
    pub to_version: Option<u32>,
    pub request: Option<i64>,
    pub reason: Option<&'a str>,
}

impl<'a> Event<'a> {
    pub fn new(actor: &'a str, action: &'a str, name: &'a str) -> Self {
        Event {
            actor,
            action,
            name,
            version: None,
            alias: None,
            from_version: None,
            to_version: None,
            request: None,
            reason: None,
        }
    }

    pub fn insert(&self, c: &Connection) -> Res<i64> {
        c.execute(
            "INSERT INTO events (time, actor, action, name, version, alias, from_version, to_version, request, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                now(),
                self.actor,
                self.action,
                self.name,
                self.version,
                self.alias,
                self.from_version,
                self.to_version,
                self.request,
                self.reason
            ],
        )?;
        Ok(c.last_insert_rowid())
    }
}

/// UTC now as `YYYY-MM-DDThh:mm:ssZ`.
pub(crate) fn now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `YYYY-MM-DDThh:mm:ssZ` (RFC 3339, UTC, whole seconds): the form every stored time has, so
/// times compare as strings.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .unwrap_or_default()
}

fn exists(c: &Connection, table: &str, id: i64) -> Res<bool> {
    Ok(c.query_row(&format!("SELECT 1 FROM {table} WHERE id = ?1"), [id], |_| Ok(())).optional()?.is_some())
}

fn require(c: &Connection, table: &str, what: &str, id: i64) -> Res<()> {
    if exists(c, table, id)? {
        return Ok(());
    }
    Err(GovernError::NotFound(format!("no {what} {id} in the registry (register it first)")).into())
}

pub(crate) fn insert_model(c: &Connection, m: &NewModel) -> Res<i64> {
    let key = model_key(&m.name, &m.files);
    if let Some(id) =
        c.query_row("SELECT id FROM models WHERE files_key = ?1", [&key], |r| r.get(0)).optional()?
    {
        return Ok(id);
    }
    c.execute(
        "INSERT INTO models (name, path, files, files_key, config, parameters, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![m.name, m.path, to_json(&m.files), key, to_json(&m.config), m.parameters.map(|p| p as i64), now()],
    )?;
    Ok(c.last_insert_rowid())
}

pub(crate) fn insert_dataset(c: &Connection, d: &NewDataset) -> Res<i64> {
    if d.sha256.trim().is_empty() {
        return Err(
            GovernError::Invalid { field: "sha256", reason: format!("dataset {}: empty", d.path) }.into()
        );
    }
    let report = d.report.as_ref().map(to_json);
    let (pii, dups, rows) =
        (d.pii_findings.map(|v| v as i64), d.duplicates.map(|v| v as i64), d.rows.map(|v| v as i64));
    if let Some(id) = c
        .query_row("SELECT id FROM datasets WHERE sha256 = ?1", [&d.sha256], |r| r.get::<_, i64>(0))
        .optional()?
    {
        // Fill in what the earlier record lacked (e.g. `validate` after `train` registered it).
        c.execute(
            "UPDATE datasets SET format = COALESCE(format, ?2), rows = COALESCE(rows, ?3), report = COALESCE(report, ?4), \
             pii_findings = COALESCE(pii_findings, ?5), duplicates = COALESCE(duplicates, ?6) WHERE id = ?1",
            params![id, d.format, rows, report, pii, dups],
        )?;
        return Ok(id);
    }
    c.execute(
        "INSERT INTO datasets (path, sha256, bytes, format, rows, report, pii_findings, duplicates, created) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![d.path, d.sha256, d.bytes as i64, d.format, rows, report, pii, dups, now()],
    )?;
    Ok(c.last_insert_rowid())
}

/// The process a run row belongs to (imported runs have none: pid 0).
pub(crate) struct Process<'a> {
    pub host: &'a str,
    pub pid: u32,
    pub pid_start: Option<&'a str>,
}

/// Insert a run row.
pub(crate) fn insert_run(
    c: &Connection,
    r: &NewRun,
    status: RunStatus,
    p: &Process<'_>,
    started: &str,
) -> Res<i64> {
    let Process { host, pid, pid_start } = *p;
    check_name("register_as", &r.register_as)?;
    require(c, "models", "base model", r.base_model)?;
    for d in &r.datasets {
        require(c, "datasets", "dataset", *d)?;
    }
    c.execute(
        "INSERT INTO runs (name, run_dir, status, base_model, config, method, device, actor, register_as, host, pid, pid_start, started) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            r.name,
            r.run_dir,
            status_str(status),
            r.base_model,
            to_json(&r.config),
            r.method,
            r.device,
            r.actor,
            r.register_as,
            host,
            pid,
            pid_start,
            started
        ],
    )?;
    let id = c.last_insert_rowid();
    for (pos, d) in r.datasets.iter().enumerate() {
        c.execute(
            "INSERT INTO run_datasets (run, position, dataset) VALUES (?1, ?2, ?3)",
            params![id, pos as i64, d],
        )?;
    }
    Ok(id)
}

pub(crate) fn finish_run_in(c: &Connection, run: i64, end: &RunEnd, finished: &str) -> Res<()> {
    require(c, "runs", "run", run)?;
    c.execute(
        "UPDATE runs SET status = ?2, error = ?3, tokens = ?4, steps = ?5, metrics = ?6, flops = ?7, finished = ?8 WHERE id = ?1",
        params![
            run,
            status_str(end.status),
            end.error,
            end.tokens.map(|v| v as i64),
            end.steps.map(|v| v as i64),
            end.metrics.as_ref().map(to_json),
            end.flops.as_ref().map(to_json),
            finished
        ],
    )?;
    Ok(())
}

/// The next version of `a.name`, or the existing version with the same files. The version number
/// is computed inside the caller's IMMEDIATE transaction, and `UNIQUE(name, version)` backs it.
pub(crate) fn insert_artifact(c: &Connection, a: &NewArtifact) -> Res<(ArtifactRecord, bool)> {
    check_name("name", &a.name)?;
    if a.files.is_empty() {
        return Err(GovernError::Invalid {
            field: "files",
            reason: format!("artifact {} at {} has no files", a.name, a.path),
        }
        .into());
    }
    if let Some(run) = a.run {
        require(c, "runs", "run", run)?;
    }
    if let Some(m) = a.base_model {
        require(c, "models", "base model", m)?;
    }
    let key = files_key(&a.path, &a.files);
    let same = artifacts_in(c, "WHERE name = ?1 AND files_key = ?2", params![a.name, key])?;
    if let Some(existing) = same.into_iter().next() {
        return Ok((existing, false));
    }
    let version: u32 =
        c.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM artifacts WHERE name = ?1", [&a.name], |r| {
            r.get(0)
        })?;
    c.execute(
        "INSERT INTO artifacts (name, version, kind, path, files, files_key, run, base_model, created, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![a.name, version, kind_str(a.kind), a.path, to_json(&a.files), key, a.run, a.base_model, now(), a.actor],
    )?;
    let id = c.last_insert_rowid();
    // Evaluations recorded before this version was registered now point at it.
    c.execute(
        "UPDATE eval_systems SET artifact = ?1 WHERE artifact IS NULL AND files_key = ?2",
        params![id, key],
    )?;
    let reason = match a.run {
        Some(run) => format!("{} {} from run {run}", kind_str(a.kind), a.path),
        None => format!("{} {}", kind_str(a.kind), a.path),
    };
    Event { version: Some(version), reason: Some(&reason), ..Event::new(&a.actor, "register", &a.name) }
        .insert(c)?;
    let rec = artifacts_in(c, "WHERE id = ?1", [id])?.pop().ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok((rec, true))
}

pub(crate) fn insert_eval(c: &Connection, e: &NewEval) -> Res<EvalRecord> {
    if let Some(id) =
        c.query_row("SELECT id FROM evals WHERE sha256 = ?1", [&e.sha256], |r| r.get(0)).optional()?
    {
        return eval_in(c, id);
    }
    c.execute(
        "INSERT INTO evals (path, sha256, model, data_path, data_sha256, rows, created, actor, metrics) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            e.path,
            e.sha256,
            e.model,
            e.data_path,
            e.data_sha256,
            e.rows as i64,
            now(),
            e.actor,
            to_json(&e.metrics)
        ],
    )?;
    let id = c.last_insert_rowid();
    for (pos, s) in e.systems.iter().enumerate() {
        let (key, artifact) = if s.adapter_files.is_empty() {
            (None, None)
        } else {
            let key = files_key(s.adapter.as_deref().unwrap_or(""), &s.adapter_files);
            let artifact: Option<i64> = c
                .query_row(
                    "SELECT id FROM artifacts WHERE files_key = ?1 ORDER BY id DESC LIMIT 1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()?;
            (Some(key), artifact)
        };
        c.execute(
            "INSERT INTO eval_systems (eval, position, name, adapter, adapter_files, files_key, artifact) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, pos as i64, s.name, s.adapter, to_json(&s.adapter_files), key, artifact],
        )?;
    }
    eval_in(c, id)
}

impl Registry {
    /// The same set of file hashes is the same model: registering again returns the existing id.
    pub fn register_model(&self, m: &NewModel) -> Result<i64> {
        self.write(|c| insert_model(c, m))
    }

    /// The same SHA-256 is the same dataset: returns the existing id, filling in fields the
    /// earlier record lacked.
    pub fn register_dataset(&self, d: &NewDataset) -> Result<i64> {
        self.write(|c| insert_dataset(c, d))
    }

    /// A run starts: recorded as running by this process (pid and its start time, so a killed
    /// run reads as abandoned later).
    pub fn begin_run(&self, r: &NewRun) -> Result<i64> {
        let pid = std::process::id();
        let pid_start = process::start_time(pid);
        self.write(|c| {
            let p = Process { host: process::host(), pid, pid_start: pid_start.as_deref() };
            let id = insert_run(c, r, RunStatus::Running, &p, &now())?;
            let reason = format!("run {id} ({}) in {}", r.name, r.run_dir);
            Event { reason: Some(&reason), ..Event::new(&r.actor, "run-started", &r.register_as) }
                .insert(c)?;
            Ok(id)
        })
    }

    pub fn finish_run(&self, run: i64, end: &RunEnd) -> Result<()> {
        self.write(|c| {
            finish_run_in(c, run, end, &now())?;
            let (actor, register_as): (String, String) =
                c.query_row("SELECT actor, register_as FROM runs WHERE id = ?1", [run], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let mut reason = format!("run {run} {}", status_str(end.status));
            if let Some(e) = &end.error {
                reason.push_str(&format!(": {e}"));
            }
            Event { reason: Some(&reason), ..Event::new(&actor, "run-finished", &register_as) }.insert(c)?;
            Ok(())
        })
    }

    /// The next version of `a.name` (or the existing version holding the same files).
    pub fn register_artifact(&self, a: &NewArtifact) -> Result<ArtifactRecord> {
        self.write(|c| Ok(insert_artifact(c, a)?.0))
    }

    /// Idempotent by the eval.json's SHA-256; each adapter system is matched to the artifact
    /// version holding the same files.
    pub fn register_eval(&self, e: &NewEval) -> Result<EvalRecord> {
        self.write(|c| insert_eval(c, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form of times is unchanged by the move to the `time` crate: no fractional
    /// seconds, a `Z`, and a UTC offset converted (not dropped).
    #[test]
    fn times_are_rfc3339_utc_in_whole_seconds() {
        let t = time::macros::datetime!(2026-11-30 01:02:03.456 +02:00);
        assert_eq!(rfc3339(t), "2026-11-29T23:02:03Z");
        assert_eq!(rfc3339(time::OffsetDateTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let n = now();
        assert_eq!(n.len(), 20, "{n}");
        assert!(n.ends_with('Z') && n.as_bytes()[10] == b'T', "{n}");
    }
}
