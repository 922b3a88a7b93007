//! The crate's error type: every variant names what the user can act on (file, line, field).

use std::path::{Path, PathBuf};

pub type Result<T, E = RagError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RagError {
    // The io::Error is shown in the message, not chained as a source (it would print twice).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: not valid UTF-8 text (byte {valid_up_to}); convert it to UTF-8 first", path.display())]
    NotUtf8 { path: PathBuf, valid_up_to: usize },
    #[error("{}:{line}: {reason}", path.display())]
    InvalidRecord { path: PathBuf, line: usize, reason: String },
    #[error("{}: unsupported file type (use .txt, .md, .markdown, .html, .htm or .jsonl)", path.display())]
    UnsupportedFile { path: PathBuf },
    #[error("document id {id:?} appears twice: {first} and {second}")]
    DuplicateDocument { id: String, first: String, second: String },
    #[error("no document {id:?} in knowledge base {}", kb.display())]
    UnknownDocument { id: String, kb: PathBuf },
    #[error("no knowledge base at {} (create it with `ferrotune rag ingest --kb NAME PATH`)", path.display())]
    NoKnowledgeBase { path: PathBuf },
    #[error("invalid knowledge base name {0:?}: use letters, digits, '-', '_' or '.', not starting with '.'")]
    InvalidName(String),
    #[error("knowledge base {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("knowledge base {} is being written by another process (its writer lock is held); retry when that ingest ends", path.display())]
    Locked { path: PathBuf },
    #[error("knowledge base {} was made with {existing}; this ingest asks for {requested} (ingest into a new knowledge base to change it)", path.display())]
    SettingsMismatch { path: PathBuf, existing: String, requested: String },
    #[error("embedder {}: {reason}", path.display())]
    Embedder { path: PathBuf, reason: String },
    // Wrapped errors are part of the message, not chained sources (`{:#}` would print them twice).
    #[error("embedding model: {0}")]
    Model(ferrotune_model::ModelError),
    #[error("tensor op: {0}")]
    Candle(candle_core::Error),
    #[error("search index: {0}")]
    Index(tantivy::TantivyError),
    #[error("query {query:?}: {reason}")]
    Query { query: String, reason: String },
    #[error("k = {k}: at most {max} chunks can be asked for")]
    TooManyHits { k: usize, max: usize },
    #[error("no documents found in {paths} (looked for .txt, .md, .markdown, .html, .htm, .jsonl)")]
    NoDocuments { paths: String },
    #[error("loading the embedder {name:?} (install it with `ferrotune models pull`): {error}")]
    EmbedderLoad { name: String, error: Box<RagError> },
    #[error("{0}")]
    Chunking(String),
}

impl RagError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        RagError::Io { path: path.as_ref().to_path_buf(), error: source }
    }

    pub fn record(path: impl AsRef<Path>, line: usize, reason: impl Into<String>) -> Self {
        RagError::InvalidRecord { path: path.as_ref().to_path_buf(), line, reason: reason.into() }
    }
}

impl From<ferrotune_model::ModelError> for RagError {
    fn from(e: ferrotune_model::ModelError) -> Self {
        RagError::Model(e)
    }
}

impl From<candle_core::Error> for RagError {
    fn from(e: candle_core::Error) -> Self {
        RagError::Candle(e)
    }
}

impl From<tantivy::TantivyError> for RagError {
    fn from(e: tantivy::TantivyError) -> Self {
        RagError::Index(e)
    }
}
