//! Errors of the model crate. Every variant names the file (and tensor or field) a user can fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid {what}: {reason}")]
    InvalidFile { path: PathBuf, what: String, reason: String },

    #[error("{path}: unsupported architecture `{arch}` (supported: llama, mistral, qwen2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },

    #[error("{path}: config field `{field}`: {reason}")]
    InvalidConfig { path: PathBuf, field: String, reason: String },

    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("{path}: tensor `{name}`: {reason}")]
    BadTensor { path: PathBuf, name: String, reason: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("model `{0}` not found: not a file or directory, and not a known model name (known: {1})")]
    UnknownModel(String, String),

    #[error("model `{name}` is not installed in {home}; run `ferrotune models pull {name}`")]
    NotInstalled { name: String, home: PathBuf },

    #[error("model install: {0}")]
    Install(String),

    #[error("invalid generation setting `{field}`: {reason}")]
    InvalidSetting { field: &'static str, reason: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
