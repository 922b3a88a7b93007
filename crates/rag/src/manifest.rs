//! `kb.json`: a knowledge base's settings and its documents (id → content hash, chunk ids,
//! metadata), with the generation counter that ties it to the BM25 commit and the vector file.
//! Staged beside as `kb.json.next` before the BM25 commit and renamed in last in every change
//! (see [`crate::writer`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkConfig;
use crate::error::{RagError, Result};
use crate::source::DocKind;
use crate::vectors::write_atomic;

pub const FORMAT: u32 = 1;
pub const FILE: &str = "kb.json";

/// Fixed when a knowledge base is created: every chunk must come from the same chunker and
/// embedder, or scores stop being comparable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbSettings {
    /// A model name from the store (or a path) of a sentence-transformers directory.
    pub embedder: String,
    pub chunking: ChunkConfig,
}

impl Default for KbSettings {
    fn default() -> Self {
        Self {
            embedder: ferrotune_model::store::DEFAULT_EMBEDDER.to_string(),
            chunking: ChunkConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocEntry {
    /// Where it was read from (`path`, or `path:line` for JSONL).
    pub origin: String,
    pub kind: DocKind,
    pub hash: String,
    /// Length of the indexed text in chars.
    pub chars: usize,
    pub chunk_ids: Vec<u64>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Seconds since the Unix epoch.
    pub ingested_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub settings: KbSettings,
    /// Embedding width, recorded so a different embedder is refused.
    pub dim: usize,
    /// Bumped by every change; the BM25 commit payload and `vectors.bin` carry the same number.
    pub generation: u64,
    pub next_chunk_id: u64,
    pub documents: BTreeMap<String, DocEntry>,
}

impl Manifest {
    pub fn new(settings: KbSettings, dim: usize) -> Self {
        Self { format: FORMAT, settings, dim, generation: 0, next_chunk_id: 0, documents: BTreeMap::new() }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        Self::read_file(dir, &dir.join(FILE))
    }

    /// The manifest in `path` (`kb.json`, or the staged `kb.json.next` of a change; see
    /// [`crate::writer`]) of the knowledge base in `dir`.
    pub fn read_file(dir: &Path, path: &Path) -> Result<Self> {
        let s = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RagError::NoKnowledgeBase { path: dir.to_path_buf() });
            }
            Err(e) => return Err(RagError::io(path, e)),
        };
        let m: Manifest = serde_json::from_str(&s)
            .map_err(|e| RagError::Corrupt { path: dir.to_path_buf(), reason: format!("{FILE}: {e}") })?;
        if m.format != FORMAT {
            return Err(RagError::Corrupt {
                path: dir.to_path_buf(),
                reason: format!("{FILE} has format {} (this ferrotune reads {FORMAT})", m.format),
            });
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_to(dir, &dir.join(FILE))
    }

    /// Written (atomically) to `path` instead of `dir`'s `kb.json`.
    pub fn write_to(&self, dir: &Path, path: &Path) -> Result<()> {
        let s = serde_json::to_string_pretty(self).map_err(|e| RagError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("serializing {FILE}: {e}"),
        })?;
        write_atomic(path, s.as_bytes())
    }

    pub fn num_chunks(&self) -> usize {
        self.documents.values().map(|d| d.chunk_ids.len()).sum()
    }
}
