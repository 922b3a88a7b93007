use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    /// `os`: what the file system said to a small write beside the database when SQLite's
    /// message is only "disk I/O error", "database or disk is full" or "readonly database"
    /// ([`GovernError::db`]). SQLite's error is in the message, not chained (it printed twice).
    #[error("registry {}: {error}{}", path.display(), os.as_ref().map(|o| format!(" ({}: {o})", parent_of(path).display())).unwrap_or_default())]
    Db { path: PathBuf, error: rusqlite::Error, os: Option<std::io::Error> },
    /// The OS error is in the message, not chained as a source (printed with its chain, it
    /// said the same thing twice).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// A file the user handed in (policy.toml, card.toml, lineage.json, eval.json) is malformed:
    /// names the file and the field.
    #[error("{path}: {field}: {reason}")]
    BadFile { path: PathBuf, field: String, reason: String },
    /// `NAME`, `NAME@VERSION` or `NAME@ALIAS` that names nothing.
    #[error("{0}")]
    NotFound(String),
    /// A request the rules refuse (promotion of a disabled version, approving one's own request,
    /// a failed gate, …): the message names the rule.
    #[error("{0}")]
    Refused(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl GovernError {
    /// A SQLite error on the database at `path`, with [`os_cause`]'s answer when there is one.
    pub fn db(path: &std::path::Path, source: rusqlite::Error) -> Self {
        let os = os_cause(path, &source);
        GovernError::Db { path: path.into(), error: source, os }
    }
}

/// When the file system caused a SQLite error on the database at `db` (full, read-only, an I/O
/// error), SQLite does not say how: a 4 KiB write and sync beside the database (then removed)
/// asks the OS, and its error is returned. `None` for every other error. Shared by the registry
/// and serve's key database.
pub fn os_cause(db: &std::path::Path, error: &rusqlite::Error) -> Option<std::io::Error> {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    use std::io::Write;
    let fs_caused = matches!(error, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, SystemIoFailure | DiskFull | ReadOnly | CannotOpen));
    if !fs_caused {
        return None;
    }
    let probe = parent_of(db).join(format!(".ferrotune-probe-{}", std::process::id()));
    let r = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    r.err()
}

/// The folder a database file is in.
pub fn parent_of(db: &std::path::Path) -> &std::path::Path {
    db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."))
}

pub type Result<T, E = GovernError> = std::result::Result<T, E>;
