//! [`Writer`]: the write side — ingest, replace, delete. One writer per knowledge base at a time
//! (tantivy's writer lock file; a second one gets [`RagError::Locked`]); readers are never blocked.
//!
//! Every change runs: work out what changed → chunk and embed (nothing written yet, so a failure
//! leaves the knowledge base as it was) → the new `vectors.bin` and `kb.json` staged beside the
//! old ones as `vectors.bin.next` and `kb.json.next` (fsync'ed) → BM25 commit (payload: the new
//! generation) → `vectors.bin.next` renamed in → `kb.json.next` renamed in. The BM25 commit is
//! the commit point: a process killed before it leaves the old knowledge base (the staged files
//! carry a generation the index never reached, and the next writer deletes them); killed after
//! it, the staged files are the rest of the new one — readers take them (`kb.rs`), and the next
//! writer renames them in. So a reader sees the old or the new knowledge base whole, never a mix,
//! whenever the process dies.
//!
//! Knowledge bases left mid-change by versions before the staging (BM25 committed, vectors or
//! manifest a generation behind) are still repaired: the next writer keeps the documents whose
//! chunks are complete in both indexes, drops the rest (listed in [`Writer::repaired`]) so the
//! next ingest of the same files adds them again.
//!
//! Crash points (test-only, [`ferrotune_model::crash`]): `rag-staged` (both staged files written,
//! BM25 not committed), `rag-bm25-prepared` (in `bm25.rs`: the new segments written, the commit's
//! `meta.json` not), `rag-bm25` (committed, nothing renamed in), `rag-vectors` (`vectors.bin`
//! renamed in, `kb.json` not).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tantivy::IndexWriter;

use crate::bm25::{Bm25Index, StoredChunk};
use crate::chunk::{Chunk, chunk_text};
use crate::embedder::Embedder;
use crate::error::{RagError, Result};
use crate::kb::{BM25_DIR, DocumentInfo, VECTORS_FILE};
use crate::manifest::{DocEntry, FILE as MANIFEST_FILE, KbSettings, Manifest};
use crate::source::SourceDoc;
use crate::vectors::VectorIndex;

/// What happened to each input document.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    pub chunks_written: usize,
    pub chunks_removed: usize,
    /// Seconds spent embedding (the bulk of an ingest).
    pub embed_seconds: f64,
}

/// Progress callbacks for long ingests.
pub enum Progress {
    /// Chunking done: this many chunks will be embedded.
    Chunked { docs: usize, chunks: usize },
    /// Chunks embedded so far.
    Embedded(usize),
    /// Writing the indexes.
    Writing,
}

pub struct Writer {
    dir: PathBuf,
    bm25: Bm25Index,
    iw: IndexWriter,
    manifest: Manifest,
    vectors: VectorIndex,
    repaired: Vec<String>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Writer {
    /// Opens the knowledge base in `dir` for writing, creating it when absent. `requested`:
    /// settings asked for on the command line; for a new knowledge base they (or the defaults)
    /// are used, for an existing one they must equal what it was made with. `dim`: the width of
    /// the embedder that will be used (checked against an existing knowledge base).
    pub fn open(dir: &Path, requested: Option<&KbSettings>, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| RagError::io(dir, e))?;
        let bm25 = Bm25Index::open(&dir.join(BM25_DIR), true)?;
        // The lock first: the manifest read below cannot change under us.
        let iw = bm25.writer(dir)?;
        settle_staged(dir, bm25.generation()?.unwrap_or(0))?;
        let manifest = match Manifest::read(dir) {
            Ok(m) => {
                if let Some(r) = requested
                    && *r != m.settings
                {
                    return Err(RagError::SettingsMismatch {
                        path: dir.to_path_buf(),
                        existing: describe(&m.settings),
                        requested: describe(r),
                    });
                }
                if m.dim != dim {
                    return Err(RagError::SettingsMismatch {
                        path: dir.to_path_buf(),
                        existing: format!("{}-dimensional embeddings", m.dim),
                        requested: format!("{dim}-dimensional embeddings"),
                    });
                }
                m
            }
            Err(RagError::NoKnowledgeBase { .. }) => {
                let m = Manifest::new(requested.cloned().unwrap_or_default(), dim);
                m.write(dir)?;
                m
            }
            Err(e) => return Err(e),
        };
        let vpath = dir.join(VECTORS_FILE);
        let vectors =
            if vpath.exists() { VectorIndex::read(&vpath)? } else { VectorIndex::new(manifest.dim) };
        let mut w = Self { dir: dir.to_path_buf(), bm25, iw, manifest, vectors, repaired: Vec::new() };
        w.repair_if_interrupted()?;
        Ok(w)
    }

    /// Documents dropped by the repair of an interrupted change (ingest them again).
    pub fn repaired(&self) -> &[String] {
        &self.repaired
    }

    pub fn settings(&self) -> &KbSettings {
        &self.manifest.settings
    }

    pub fn documents(&self) -> Vec<DocumentInfo> {
        self.manifest.documents.iter().map(|(id, d)| DocumentInfo::from_entry(id, d)).collect()
    }

    fn repair_if_interrupted(&mut self) -> Result<()> {
        let g = self.manifest.generation;
        let bm_gen = self.bm25.generation()?.unwrap_or(0);
        if bm_gen == g && self.vectors.generation == g {
            return Ok(());
        }
        let in_bm25 = self.bm25.chunk_ids()?;
        let in_vec: HashSet<u64> = self.vectors.ids().iter().copied().collect();
        let mut keep = HashSet::new();
        let mut dropped = Vec::new();
        for (id, d) in &self.manifest.documents {
            if d.chunk_ids.iter().all(|c| in_bm25.contains(c) && in_vec.contains(c)) {
                keep.extend(d.chunk_ids.iter().copied());
            } else {
                dropped.push(id.clone());
            }
        }
        for id in &dropped {
            self.manifest.documents.remove(id);
        }
        for c in in_bm25.difference(&keep) {
            self.bm25.delete_chunk(&self.iw, *c);
        }
        self.vectors.retain(|c| keep.contains(&c));
        // Chunk ids written by the interrupted change must not be reused.
        let max_seen = in_bm25.iter().chain(in_vec.iter()).copied().max().map_or(0, |m| m + 1);
        self.manifest.next_chunk_id = self.manifest.next_chunk_id.max(max_seen);
        tracing::warn!(dir = %self.dir.display(), ?dropped, "repaired an interrupted knowledge-base change");
        self.repaired = dropped;
        self.publish()
    }

    /// Vectors and manifest staged → BM25 commit → both renamed in, all stamped with the next
    /// generation (the module's doc says why in this order).
    fn publish(&mut self) -> Result<()> {
        let g =
            self.manifest.generation.max(self.bm25.generation()?.unwrap_or(0)).max(self.vectors.generation)
                + 1;
        let (vectors, manifest) = (self.dir.join(VECTORS_FILE), self.dir.join(MANIFEST_FILE));
        self.vectors.generation = g;
        self.manifest.generation = g;
        let written = self
            .vectors
            .write(&staged(&vectors))
            .and_then(|()| self.manifest.write_to(&self.dir, &staged(&manifest)))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = written {
            // Not committed: the knowledge base on disk is the old one; drop the staged files.
            let _ = std::fs::remove_file(staged(&vectors));
            let _ = std::fs::remove_file(staged(&manifest));
            return Err(e);
        }
        ferrotune_model::crash::point("rag-staged");
        self.bm25.commit(&mut self.iw, g)?;
        ferrotune_model::crash::point("rag-bm25");
        rename(&staged(&vectors), &vectors)?;
        ferrotune_model::crash::point("rag-vectors");
        rename(&staged(&manifest), &manifest)?;
        sync_dir(&self.dir)
    }

    /// Adds new documents, replaces changed ones (by content hash), skips unchanged ones.
    pub fn ingest(
        &mut self,
        docs: &[SourceDoc],
        embedder: &Embedder,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<IngestReport> {
        let mut report = IngestReport::default();
        let tokenizer = embedder.chunking_tokenizer();
        let cfg = self.manifest.settings.chunking;
        let mut todo: Vec<(&SourceDoc, Vec<Chunk>)> = Vec::new();
        for d in docs {
            match self.manifest.documents.get(&d.id) {
                Some(e) if e.hash == d.hash => report.unchanged.push(d.id.clone()),
                existing => {
                    if existing.is_some() {
                        report.replaced.push(d.id.clone());
                    } else {
                        report.added.push(d.id.clone());
                    }
                    todo.push((d, chunk_text(&tokenizer, &d.text, &cfg)?));
                }
            }
        }
        if todo.is_empty() {
            return Ok(report);
        }
        let texts: Vec<&str> = todo.iter().flat_map(|(_, cs)| cs.iter().map(|c| c.text.as_str())).collect();
        progress(Progress::Chunked { docs: todo.len(), chunks: texts.len() });
        let t0 = std::time::Instant::now();
        let embeddings = embedder.embed_with_progress(&texts, &mut |n| progress(Progress::Embedded(n)))?;
        report.embed_seconds = t0.elapsed().as_secs_f64();
        progress(Progress::Writing);

        self.apply(&todo, embeddings, &mut report)?;
        Ok(report)
    }

    /// **Benchmarks only** (`ferrotune bench rag`): adds `docs` as one chunk each (the whole text,
    /// no tokenizer) with vectors from `vector` instead of the knowledge base's embedder, so that
    /// a 100k-chunk index can be built in seconds rather than hours of embedding. BM25 sees the
    /// real text; vector and hybrid *rankings* over such an index are meaningless, but their
    /// latency is real (exact search costs the same whatever the vectors hold). Never use it for
    /// a knowledge base anyone will query for answers.
    pub fn ingest_with_vectors(
        &mut self,
        docs: &[SourceDoc],
        vector: &mut dyn FnMut(&str) -> Vec<f32>,
    ) -> Result<IngestReport> {
        let mut report = IngestReport::default();
        let mut todo = Vec::with_capacity(docs.len());
        let mut embeddings = Vec::with_capacity(docs.len());
        for d in docs {
            if self.manifest.documents.get(&d.id).is_some_and(|e| e.hash == d.hash) {
                report.unchanged.push(d.id.clone());
                continue;
            }
            if self.manifest.documents.contains_key(&d.id) {
                report.replaced.push(d.id.clone());
            } else {
                report.added.push(d.id.clone());
            }
            let chunk =
                Chunk { start_char: 0, end_char: d.text.chars().count(), n_tokens: 0, text: d.text.clone() };
            embeddings.push(vector(&d.text));
            todo.push((d, vec![chunk]));
        }
        if !todo.is_empty() {
            self.apply(&todo, embeddings, &mut report)?;
        }
        Ok(report)
    }

    /// Writes chunked and embedded documents (one vector per chunk, in order) to both indexes and
    /// the manifest, replacing earlier versions of the same documents.
    fn apply(
        &mut self,
        todo: &[(&SourceDoc, Vec<Chunk>)],
        embeddings: Vec<Vec<f32>>,
        report: &mut IngestReport,
    ) -> Result<()> {
        // Nothing has been written so far; from here on the three parts change.
        let mut removed: HashSet<u64> = HashSet::new();
        let mut emb = embeddings.into_iter();
        let now = now_unix();
        for (d, chunks) in todo {
            if let Some(old) = self.manifest.documents.get(&d.id) {
                removed.extend(old.chunk_ids.iter().copied());
                self.bm25.delete_document(&self.iw, &d.id);
            }
            let mut ids = Vec::with_capacity(chunks.len());
            for (ordinal, c) in chunks.iter().enumerate() {
                let chunk_id = self.manifest.next_chunk_id;
                self.manifest.next_chunk_id += 1;
                let v = emb.next().ok_or_else(|| RagError::Corrupt {
                    path: self.dir.clone(),
                    reason: "embedder returned fewer vectors than chunks".into(),
                })?;
                let stored = StoredChunk {
                    chunk_id,
                    doc_id: d.id.clone(),
                    ordinal: ordinal as u64,
                    start_char: c.start_char as u64,
                    end_char: c.end_char as u64,
                    text: c.text.clone(),
                };
                self.bm25.add_chunk(&self.iw, &stored)?;
                ids.push((chunk_id, v));
            }
            report.chunks_written += ids.len();
            self.manifest.documents.insert(
                d.id.clone(),
                DocEntry {
                    origin: d.origin.clone(),
                    kind: d.kind,
                    hash: d.hash.clone(),
                    chars: d.text.chars().count(),
                    chunk_ids: ids.iter().map(|x| x.0).collect(),
                    metadata: d.metadata.clone(),
                    ingested_unix: now,
                },
            );
            for (id, v) in ids {
                self.vectors.push(id, &v)?;
            }
        }
        // New chunk ids are fresh, so this drops exactly the replaced documents' rows.
        self.vectors.retain(|c| !removed.contains(&c));
        report.chunks_removed = removed.len();
        self.publish()
    }

    /// Removes one document and its chunks.
    pub fn delete(&mut self, doc_id: &str) -> Result<usize> {
        let Some(old) = self.manifest.documents.remove(doc_id) else {
            return Err(RagError::UnknownDocument { id: doc_id.to_string(), kb: self.dir.clone() });
        };
        self.bm25.delete_document(&self.iw, doc_id);
        let removed: HashSet<u64> = old.chunk_ids.iter().copied().collect();
        self.vectors.retain(|c| !removed.contains(&c));
        self.publish()?;
        Ok(removed.len())
    }
}

/// Where a change stages the new version of `path` (`vectors.bin.next`, `kb.json.next`).
pub(crate) fn staged(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| RagError::io(to, e))
}

/// fsync a folder so the renames in it survive a power loss (a Unix idiom; elsewhere a no-op).
fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(unix) {
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| RagError::io(dir, e))?;
    }
    Ok(())
}

/// Finishes or undoes a change a killed writer left staged, under the writer lock: staged files
/// of the generation BM25 committed (`bm25_gen`) are renamed in (vectors first, the manifest
/// last, as `publish` does); staged files of another generation (killed before the commit) and
/// the temp files of `write_atomic` (`NAME.tmp-PID`) are deleted.
fn settle_staged(dir: &Path, bm25_gen: u64) -> Result<()> {
    let mut changed = false;
    for name in [VECTORS_FILE, MANIFEST_FILE] {
        let path = dir.join(name);
        let next = staged(&path);
        if !next.exists() {
            continue;
        }
        let generation = if name == VECTORS_FILE {
            crate::vectors::read_generation(&next).ok()
        } else {
            Manifest::read_file(dir, &next).ok().map(|m| m.generation)
        };
        if generation == Some(bm25_gen) {
            rename(&next, &path)?;
            tracing::warn!(dir = %dir.display(), file = name, "finished a change an interrupted writer committed");
        } else {
            std::fs::remove_file(&next).map_err(|e| RagError::io(&next, e))?;
        }
        changed = true;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            {
                std::fs::remove_file(e.path()).map_err(|err| RagError::io(e.path(), err))?;
                changed = true;
            }
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

fn describe(s: &KbSettings) -> String {
    format!(
        "embedder {}, {}-token chunks with {} tokens of overlap",
        s.embedder, s.chunking.max_tokens, s.chunking.overlap_tokens
    )
}
