//! Errors of the eval crate; each names the file (and line and field) a user can fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{file}:{line}: `{field}`: {reason}")]
    InvalidRow { file: String, line: u64, field: String, reason: String },

    /// A line of a predictions file (`eval score`).
    #[error("{path}:{line}: {reason}")]
    BadLine { path: PathBuf, line: u64, reason: String },

    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },

    #[error("invalid option `{option}`: {reason}")]
    InvalidOption { option: &'static str, reason: String },

    /// One value of a repeatable option (`--adapter DIR`, `--fail-if-worse METRIC`).
    #[error("{option} {value}: {reason}")]
    InvalidValue { option: &'static str, value: String, reason: String },

    /// An option that only makes sense with another.
    #[error("{option} needs {what}")]
    Needs { option: &'static str, what: String },

    #[error("two systems are named `{name}`; name them with --adapter NAME=DIR")]
    DuplicateSystem { name: String },

    #[error("loading model {spec}")]
    Load {
        spec: String,
        // Boxed: inline, it made this enum (and the UI's error holding it) twice its size.
        #[source]
        source: Box<ferrotune_model::ModelError>,
    },

    #[error(transparent)]
    Data(#[from] ferrotune_data::DataError),

    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
