use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    #[error("registry {path}: {source}")]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
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

pub type Result<T, E = GovernError> = std::result::Result<T, E>;
