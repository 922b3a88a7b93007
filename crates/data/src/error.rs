//! Errors of the data crate. Every variant names the file (and line or row, and field) a user can fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The io::Error is in the message, not chained as a source (a `{:#}` chain printed it twice).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    /// A record that cannot be used (rendering, or a library caller handing in a bad row).
    #[error("{}: `{field}`: {reason}", crate::finding::locate(file, *line))]
    InvalidRecord { file: String, line: u64, field: String, reason: String },

    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },

    #[error("invalid option `{option}`: {reason}")]
    InvalidOption { option: &'static str, reason: String },

    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
