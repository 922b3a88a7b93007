//! Errors of the guards: each names the file, field or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file (classifier model, labelled data) that does not parse: where and why.
    #[error("{path}: {location}: {reason}")]
    InvalidFile { path: PathBuf, location: String, reason: String },
    /// A setting that cannot hold (`[guards] prompt_injection = "redact"`).
    #[error("{field}: {reason}")]
    InvalidSetting { field: String, reason: String },
}

impl GuardError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
