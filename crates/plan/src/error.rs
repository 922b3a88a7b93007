//! Errors of the planner: each names the file, field or value at fault.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, PlanError>;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {field}: {reason}")]
    InvalidFile { path: PathBuf, field: String, reason: String },
    #[error("unknown {what} `{name}` (known: {known})")]
    Unknown { what: &'static str, name: String, known: String },
    #[error("{option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
}

impl PlanError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
