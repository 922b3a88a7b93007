//! The database file: schema (versioned by `PRAGMA user_version`), the error type the SQL helpers
//! share, and the JSON / file-set encodings the tables use.
//!
//! Every table that refers to another has a foreign key (`foreign_keys=ON`), so a crash between
//! two statements cannot leave an artifact pointing at a run that does not exist: each write is
//! one transaction, and SQLite's WAL makes the transaction all-or-nothing across `kill -9`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::error::GovernError;
use crate::records::FileHash;

/// The schema this build writes. A file with a larger number was written by a newer ferrotune.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('generation', 0);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    files TEXT NOT NULL,
    files_key TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    parameters INTEGER,
    created TEXT NOT NULL
);
CREATE TABLE datasets (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    format TEXT,
    rows INTEGER,
    report TEXT,
    pii_findings INTEGER,
    duplicates INTEGER,
    created TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    base_model INTEGER NOT NULL REFERENCES models(id),
    config TEXT NOT NULL,
    method TEXT NOT NULL,
    device TEXT NOT NULL,
    actor TEXT NOT NULL,
    register_as TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT,
    started TEXT NOT NULL,
    finished TEXT,
    tokens INTEGER,
    steps INTEGER,
    metrics TEXT,
    flops TEXT
);
CREATE INDEX runs_dir ON runs(run_dir, started);
CREATE TABLE run_datasets (
    run INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    PRIMARY KEY (run, position)
);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    files TEXT NOT NULL,
    files_key TEXT NOT NULL,
    run INTEGER REFERENCES runs(id),
    base_model INTEGER REFERENCES models(id),
    created TEXT NOT NULL,
    actor TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    UNIQUE (name, version)
);
CREATE INDEX artifacts_files ON artifacts(files_key);
CREATE TABLE evals (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    data_path TEXT NOT NULL,
    data_sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created TEXT NOT NULL,
    actor TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE eval_systems (
    eval INTEGER NOT NULL REFERENCES evals(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    adapter TEXT,
    adapter_files TEXT NOT NULL,
    files_key TEXT,
    artifact INTEGER REFERENCES artifacts(id),
    PRIMARY KEY (eval, position)
);
CREATE INDEX eval_systems_artifact ON eval_systems(artifact);
CREATE TABLE aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    artifact INTEGER NOT NULL REFERENCES artifacts(id),
    version INTEGER NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    alias TEXT NOT NULL,
    requester TEXT NOT NULL,
    reason TEXT NOT NULL,
    created TEXT NOT NULL,
    status TEXT NOT NULL,
    decided TEXT,
    decision_reason TEXT,
    FOREIGN KEY (name, version) REFERENCES artifacts(name, version)
);
CREATE TABLE approvals (
    request INTEGER NOT NULL REFERENCES requests(id),
    actor TEXT NOT NULL,
    time TEXT NOT NULL,
    UNIQUE (request, actor)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER,
    alias TEXT,
    from_version INTEGER,
    to_version INTEGER,
    request INTEGER REFERENCES requests(id),
    reason TEXT
);
CREATE INDEX events_name ON events(name, id);
";

/// What the SQL helpers fail with: a SQLite error (turned into `GovernError::Db` with the file's
/// path at the public boundary) or an error already worded for the user.
#[derive(Debug)]
pub enum Fail {
    Sql(rusqlite::Error),
    Gov(GovernError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<GovernError> for Fail {
    fn from(e: GovernError) -> Self {
        Fail::Gov(e)
    }
}

impl Fail {
    pub fn into_govern(self, path: &Path) -> GovernError {
        match self {
            Fail::Sql(source) => GovernError::db(path, source),
            Fail::Gov(e) => e,
        }
    }
}

pub type Res<T> = std::result::Result<T, Fail>;

/// Open the connection with the settings every process must share, and create or check the schema.
pub fn open(path: &Path) -> Result<Connection, GovernError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| GovernError::Io { path: dir.into(), error: source })?;
    }
    // Switching a new file to WAL, and the first read while another process does so, can fail
    // with SQLITE_BUSY without SQLite calling the busy handler (two `train`s starting at once on
    // a fresh home did): retried here for as long as the busy timeout would have waited.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match open_once(path) {
            Err(GovernError::Db { error, .. }) if is_busy(&error) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn open_once(path: &Path) -> Result<Connection, GovernError> {
    let db = |source| GovernError::db(path, source);
    let mut conn = Connection::open(path).map_err(db)?;
    // First, so that the statements below wait for a process that holds the lock.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(())).map_err(db)?;
    // FULL: a committed promotion survives a power cut, not only a killed process.
    conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    migrate(&mut conn).map_err(|f| f.into_govern(path))?;
    Ok(conn)
}

/// Create the schema in a fresh file (one IMMEDIATE transaction, so two processes opening a new
/// file at once do not both create it), or refuse a file from a newer ferrotune.
fn migrate(conn: &mut Connection) -> Res<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(GovernError::Invalid {
                field: "registry",
                reason: format!(
                    "schema version {v} was written by a newer ferrotune (this one reads {SCHEMA_VERSION})"
                ),
            }
            .into());
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Records are plain data (strings, numbers, serde_json values): serialising cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A JSON column back into its type; a row a newer or broken writer left is reported as a
/// conversion error of that column rather than a panic.
pub fn from_json<T: serde::de::DeserializeOwned>(col: usize, s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e)))
}

pub fn opt_from_json<T: serde::de::DeserializeOwned>(
    col: usize,
    s: Option<String>,
) -> rusqlite::Result<Option<T>> {
    s.map(|s| from_json(col, &s)).transpose()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file's SHA-256 (streamed).
pub fn sha256_file(path: &Path) -> Result<String, GovernError> {
    ferrotune_model::store::sha256_file(path)
        .map_err(|e| GovernError::Io { path: path.into(), error: std::io::Error::other(e.to_string()) })
}

/// `path` relative to `folder` with `/` separators (the file's name when it is not under it):
/// what makes a file set comparable between folders.
pub fn relative(folder: &str, path: &str) -> String {
    let p = Path::new(path);
    let rel = match p.strip_prefix(folder) {
        Ok(r) => r.to_path_buf(),
        Err(_) => p.file_name().map(PathBuf::from).unwrap_or_else(|| p.to_path_buf()),
    };
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// The identity of a folder's content: SHA-256 over the sorted (relative name, sha256) pairs.
/// Two folders with the same key hold the same files.
pub fn files_key(folder: &str, files: &[FileHash]) -> String {
    let mut lines: Vec<String> =
        files.iter().map(|f| format!("{}\t{}", relative(folder, &f.path), f.sha256)).collect();
    lines.sort();
    sha256_hex(lines.join("\n").as_bytes())
}

/// The identity of a base model: its files' hashes (wherever they live), or its name when none
/// were recorded.
pub fn model_key(name: &str, files: &[FileHash]) -> String {
    if files.is_empty() {
        return format!("name:{name}");
    }
    let mut shas: Vec<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
    shas.sort_unstable();
    shas.dedup();
    shas.join(",")
}

/// Every file under `dir` (recursively, sorted) with its size and hash; paths as `dir.join(..)`.
pub fn hash_folder(dir: &Path) -> Result<Vec<FileHash>, GovernError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), GovernError> {
        let rd =
            std::fs::read_dir(dir).map_err(|source| GovernError::Io { path: dir.into(), error: source })?;
        for e in rd {
            let p = e.map_err(|source| GovernError::Io { path: dir.into(), error: source })?.path();
            if p.is_dir() { walk(&p, out)? } else { out.push(p) }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    paths.sort();
    paths.iter().map(|p| hash_file(p)).collect()
}

/// One file's size and SHA-256, its path as given.
pub fn hash_file(path: &Path) -> Result<FileHash, GovernError> {
    let bytes =
        std::fs::metadata(path).map_err(|source| GovernError::Io { path: path.into(), error: source })?.len();
    Ok(FileHash { path: path.display().to_string(), bytes, sha256: sha256_file(path)? })
}

/// What is wrong with the file, as sentences (empty: nothing): SQLite's own integrity check,
/// broken references, gaps in a name's versions, aliases that disagree with their artifact.
pub fn problems(c: &Connection) -> Res<Vec<String>> {
    let strings = |sql: &str| -> Res<Vec<String>> {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    };
    let mut out: Vec<String> = strings("SELECT integrity_check FROM pragma_integrity_check")?
        .into_iter()
        .filter(|m| m != "ok")
        .map(|m| format!("integrity: {m}"))
        .collect();
    out.extend(strings(
        "SELECT \"table\" || ' row ' || COALESCE(rowid, 0) || ' refers to a missing ' || parent FROM pragma_foreign_key_check",
    )?);
    out.extend(strings(
        "SELECT name || ': ' || COUNT(*) || ' versions numbered ' || MIN(version) || '..' || MAX(version) FROM artifacts \
         GROUP BY name HAVING MIN(version) != 1 OR MAX(version) != COUNT(*)",
    )?);
    out.extend(strings(
        "SELECT l.name || '@' || l.alias || ' points at version ' || l.version || ', which is not that artifact' \
         FROM aliases l LEFT JOIN artifacts a ON a.id = l.artifact WHERE a.id IS NULL OR a.name != l.name OR a.version != l.version",
    )?);
    Ok(out)
}
