//! Errors of the training crate: configuration problems are caught before any step runs.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid setting `{field}`: {reason}")]
    Config { field: String, reason: String },

    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },

    /// Another trainer holds the run folder's lock (`runlock.rs`).
    #[error("{dir}: {holder} is using this run folder; wait for it to finish, or choose another --out", dir = .dir.display(), holder = crate::runlock::holder(.pid))]
    Locked { dir: PathBuf, pid: Option<u32> },

    // transparent: the inner error's message once (`{0}` plus its chained source printed it twice).
    #[error(transparent)]
    Data(#[from] ferrotune_data::DataError),

    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::File { path: path.into(), reason: reason.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
