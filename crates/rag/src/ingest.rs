//! Files into a knowledge base, the steps `ferrotune rag ingest` runs: read and check every input
//! before anything is opened for writing; the base's own settings unless the caller asks for
//! others; the embedder; the writer (which repairs an interrupted change first); embedding and
//! writing a new generation.

use std::path::{Path, PathBuf};

use crate::chunk::ChunkConfig;
use crate::embedder::Embedder;
use crate::error::{RagError, Result};
use crate::manifest::{KbSettings, Manifest};
use crate::source::collect;
use crate::writer::{IngestReport, Progress, Writer};

/// What to ingest where; `None` settings keep the base's own (or the defaults for a new base).
#[derive(Debug, Clone, Default)]
pub struct IngestSpec {
    /// The knowledge base's folder (see [`crate::kb_path`]).
    pub dir: PathBuf,
    /// Files, or folders read recursively.
    pub paths: Vec<PathBuf>,
    pub chunk_tokens: Option<usize>,
    pub overlap_tokens: Option<usize>,
    /// An installed embedder's name or a folder (see [`Embedder::load_named`]).
    pub embedder: Option<String>,
}

/// What happens along the way, in order, for the caller to show.
pub enum Event<'a> {
    /// A file inside a folder with a type that is not read.
    Skipped(&'a Path),
    /// Documents dropped to repair an earlier interrupted change (ingested again if among the
    /// inputs).
    Repaired(&'a [String]),
    /// Embedding and writing.
    Progress(Progress),
}

/// Ingests `spec.paths` into `spec.dir` (created on first use).
pub fn ingest(spec: &IngestSpec, on_event: &mut dyn FnMut(Event<'_>)) -> Result<IngestReport> {
    let collected = collect(&spec.paths)?;
    if collected.docs.is_empty() {
        let paths = spec.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(RagError::NoDocuments { paths });
    }
    for f in &collected.skipped_files {
        on_event(Event::Skipped(f));
    }
    let existing = match Manifest::read(&spec.dir) {
        Ok(m) => Some(m.settings),
        Err(RagError::NoKnowledgeBase { .. }) => None,
        Err(e) => return Err(e),
    };
    let base = existing.unwrap_or_default();
    let asked = spec.chunk_tokens.is_some() || spec.overlap_tokens.is_some() || spec.embedder.is_some();
    let requested = KbSettings {
        embedder: spec.embedder.clone().unwrap_or(base.embedder.clone()),
        chunking: ChunkConfig {
            max_tokens: spec.chunk_tokens.unwrap_or(base.chunking.max_tokens),
            overlap_tokens: spec.overlap_tokens.unwrap_or(base.chunking.overlap_tokens),
        },
    };
    let embedder = Embedder::load_named(&requested.embedder)
        .map_err(|e| RagError::EmbedderLoad { name: requested.embedder.clone(), error: Box::new(e) })?;
    requested.chunking.validate(embedder.max_seq_length()).map_err(RagError::Chunking)?;
    let mut writer = Writer::open(&spec.dir, asked.then_some(&requested), embedder.dim())?;
    if !writer.repaired().is_empty() {
        on_event(Event::Repaired(writer.repaired()));
    }
    writer.ingest(&collected.docs, &embedder, &mut |p| on_event(Event::Progress(p)))
}
