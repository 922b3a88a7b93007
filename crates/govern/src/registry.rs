//! `Registry`: the SQLite database (`$FERROTUNE_HOME/registry.db`, WAL, bundled SQLite), shared
//! by every process of the machine (train, eval, serve, the CLI).
//!
//! Each write is one `BEGIN IMMEDIATE` transaction, so concurrent processes serialise and no
//! decision is taken on a read another process has since changed (the next version number, the
//! alias holder a promotion replaces, whether a version is disabled). Each write transaction also
//! bumps `meta.generation`, which the server polls to notice an alias move or a kill switch.
//!
//! The methods live next to what they do: `recording` (models, datasets, runs, artifacts,
//! evals), `query`, `release` (promotion, approval, kill switch), `gate`, `import`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::db::{self, Res};
use crate::error::{GovernError, Result};

pub struct Registry {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// `$FERROTUNE_HOME/registry.db`.
pub fn default_path() -> PathBuf {
    ferrotune_model::store::home().join("registry.db")
}

/// Who is acting: `by` when given (recorded as given), else the OS user (`$USER`, `$LOGNAME`),
/// else `unknown`.
pub fn actor(by: Option<&str>) -> String {
    if let Some(by) = by.filter(|b| !b.trim().is_empty()) {
        return by.to_string();
    }
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into())
}

/// The process's user from its real uid (`/proc/self/status`) and `/etc/passwd`, for shells,
/// containers and services that set no `$USER`; `uid:N` when the uid has no passwd entry.
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid && !f[0].is_empty()).then(|| f[0].to_string())
    });
    Some(name.unwrap_or_else(|| format!("uid:{uid}")))
}

/// Artifact names and aliases: 1–64 of `[A-Za-z0-9._-]` (they appear in URLs, file names and
/// `NAME@ALIAS` references).
pub fn check_name(field: &'static str, s: &str) -> Result<()> {
    let reason = if s.is_empty() {
        "empty".to_string()
    } else if s.len() > 64 {
        format!("`{s}` is {} characters long (64 at most)", s.len())
    } else if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        format!("`{s}` contains {c:?}: use letters, digits, '.', '_' or '-'")
    } else {
        return Ok(());
    };
    Err(GovernError::Invalid { field, reason })
}

/// An alias is a name that is not all digits (`support@3` means version 3).
pub fn check_alias(alias: &str) -> Result<()> {
    check_name("alias", alias)?;
    if alias.chars().all(|c| c.is_ascii_digit()) {
        return Err(GovernError::Invalid {
            field: "alias",
            reason: format!("`{alias}` is all digits, which would read as a version number"),
        });
    }
    Ok(())
}

/// What `promote` / `approve` did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Promotion {
    /// The alias moved (no approval needed, or this approval completed the request).
    Applied { request: i64, alias: String, from_version: Option<u32>, to_version: u32 },
    /// Waiting for `needed` more approvals.
    Pending { request: i64, needed: u32 },
}

/// An artifact reference resolved: `support` (the default alias), `support@canary`, `support@3`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub name: String,
    pub selector: Selector,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Default,
    Version(u32),
    Alias(String),
}

impl std::str::FromStr for Reference {
    type Err = crate::error::GovernError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, selector) = match s.split_once('@') {
            None => (s, Selector::Default),
            Some((name, sel)) if !sel.is_empty() && sel.chars().all(|c| c.is_ascii_digit()) => {
                let v = sel.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| GovernError::Invalid {
                    field: "reference",
                    reason: format!("`{s}`: versions are numbered from 1 (up to {})", u32::MAX),
                })?;
                (name, Selector::Version(v))
            }
            Some((name, sel)) => {
                check_alias(sel).map_err(|e| GovernError::Invalid {
                    field: "reference",
                    reason: format!("`{s}`: alias {e}"),
                })?;
                (name, Selector::Alias(sel.to_string()))
            }
        };
        check_name("reference", name)
            .map_err(|e| GovernError::Invalid { field: "reference", reason: format!("`{s}`: name {e}") })?;
        Ok(Reference { name: name.to_string(), selector })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Default => write!(f, "{}", self.name),
            Selector::Version(v) => write!(f, "{}@{v}", self.name),
            Selector::Alias(a) => write!(f, "{}@{a}", self.name),
        }
    }
}

impl Registry {
    /// Open (creating the file, its folder and the schema when missing). WAL, busy timeout 10 s.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = db::open(path)?;
        Ok(Self { conn: Mutex::new(conn), path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A number that changes whenever any process commits a change (cheap; the server polls it).
    pub fn generation(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| r.get(0))?))
    }

    /// What is wrong with the database (empty: nothing): SQLite's integrity check, broken
    /// references, gaps in version numbers, aliases that disagree with their artifact.
    pub fn check(&self) -> Result<Vec<String>> {
        self.read(|c| db::problems(c))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (an open transaction was
        // rolled back when its guard dropped); keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run reads in one (deferred) transaction: a consistent snapshot across the queries.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Res<T>) -> Result<T> {
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> Res<T> {
            let tx = conn.transaction()?;
            f(&tx)
        };
        run(&mut conn).map_err(|e| e.into_govern(&self.path))
    }

    /// One write transaction (`BEGIN IMMEDIATE`), bumping the generation.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Res<T>) -> Result<T> {
        self.write_outcome(|tx| f(tx).map(Ok))
    }

    /// A write whose outcome may be a refusal that must itself be recorded (the request and its
    /// `alias-refused` event): the inner error is returned after the commit; the outer one rolls
    /// everything back.
    pub(crate) fn write_outcome<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Res<Result<T>>) -> Result<T> {
        let mut conn = self.conn();
        let run = |conn: &mut Connection| -> Res<Result<T>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'", [])?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut conn).map_err(|e| e.into_govern(&self.path))?
    }
}
