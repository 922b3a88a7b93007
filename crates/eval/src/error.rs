//! Errors of the eval crate; each names the file (and line and field) a user can fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{file}:{line}: `{field}`: {reason}")]
    InvalidRow { file: String, line: u64, field: String, reason: String },

    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },

    #[error("invalid option `{option}`: {reason}")]
    InvalidOption { option: &'static str, reason: String },

    #[error(transparent)]
    Data(#[from] ferrotune_data::DataError),

    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),

    #[error(transparent)]
    Train(#[from] ferrotune_train::TrainError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
