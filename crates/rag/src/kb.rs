//! [`KnowledgeBase`]: the read side. `open` once, then `query` from any number of threads
//! (`KnowledgeBase: Send + Sync`; queries take `&self`). A folder holds:
//!
//! ```text
//! kb.json       settings, documents, generation            (manifest.rs)
//! bm25/         tantivy index: chunk text, spans, BM25      (bm25.rs)
//! vectors.bin   chunk embeddings, exact cosine search       (vectors.rs)
//! ```
//!
//! Readers never block on a writer: tantivy readers see the last commit, and `vectors.bin` /
//! `kb.json` are replaced by rename. An open reader keeps the snapshot it loaded until
//! [`KnowledgeBase::reload`]. A writer changes the three parts in the order BM25 → vectors →
//! manifest; a reader that opens in between may briefly see a vector hit whose chunk BM25 no
//! longer has, and such hits are dropped.
//!
//! Because `kb.json` is replaced last in every change, a finished change always shows as a new
//! `kb.json` (another inode, size or modification time): [`KnowledgeBase::changed_on_disk`] is
//! one `stat`, so a long-lived reader (the server) reloads only when something changed. A
//! reader that loaded while a change was under way sees that change finish the same way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25Index;
use crate::embedder::Embedder;
use crate::error::{RagError, Result};
use crate::fusion::{RRF_K, reciprocal_rank_fusion};
use crate::manifest::{DocEntry, Manifest};
use crate::source::DocKind;
use crate::vectors::VectorIndex;

pub const BM25_DIR: &str = "bm25";
pub const VECTORS_FILE: &str = "vectors.bin";

/// Retrieval mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 and vector rankings fused with Reciprocal Rank Fusion (k = 60).
    Hybrid,
    /// Lexical only (BM25 over stemmed terms).
    Bm25,
    /// Embedding cosine only.
    Vector,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Bm25, Mode::Vector, Mode::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::Bm25 => "bm25",
            Mode::Vector => "vector",
        }
    }
}

/// One retrieved chunk: a citation into a document.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    /// Mode-dependent: BM25 score, cosine similarity, or the RRF sum.
    pub score: f64,
    pub doc_id: String,
    pub chunk_id: u64,
    /// 0-based position of the chunk in its document.
    pub chunk_index: u64,
    /// Char (Unicode scalar) offsets into the document's indexed text, end exclusive.
    pub start_char: u64,
    pub end_char: u64,
    pub text: String,
    /// Ranks in the two lists that were fused (hybrid), 1-based; `None` = not in that list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bm25_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A document as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentInfo {
    pub id: String,
    pub origin: String,
    pub kind: DocKind,
    pub chars: usize,
    pub chunks: usize,
    pub hash: String,
    pub ingested_unix: u64,
}

impl DocumentInfo {
    pub(crate) fn from_entry(id: &str, d: &DocEntry) -> Self {
        Self {
            id: id.to_string(),
            origin: d.origin.clone(),
            kind: d.kind,
            chars: d.chars,
            chunks: d.chunk_ids.len(),
            hash: d.hash.clone(),
            ingested_unix: d.ingested_unix,
        }
    }
}

struct Snapshot {
    manifest: Manifest,
    vectors: VectorIndex,
    /// `kb.json` as it was just before this snapshot read it (`None`: not there).
    stamp: Option<Stamp>,
}

/// What identifies one version of `kb.json` without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// The file is replaced by rename, so each version is a new inode (unix).
    inode: (u64, u64),
}

fn stamp(dir: &Path) -> Result<Option<Stamp>> {
    let path = dir.join(crate::manifest::FILE);
    match std::fs::metadata(&path) {
        Ok(m) => {
            #[cfg(unix)]
            let inode = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            };
            #[cfg(not(unix))]
            let inode = (0, 0);
            Ok(Some(Stamp { len: m.len(), modified: m.modified().ok(), inode }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RagError::io(&path, e)),
    }
}

pub struct KnowledgeBase {
    dir: PathBuf,
    bm25: Bm25Index,
    snapshot: RwLock<Arc<Snapshot>>,
    embedder: Mutex<Option<Arc<Embedder>>>,
}

/// Reads the manifest and vectors that go with the BM25 commit (`bm25_gen`): `kb.json` and
/// `vectors.bin`, or the staged `.next` files of a change whose commit is made but not yet
/// renamed in (a writer between its last steps, or killed there: see `writer.rs`). Without
/// waiting: if a writer commits while this reads, the parts may still be a generation apart
/// (hits missing from BM25 are dropped), and the writer's final `kb.json` shows up in
/// [`KnowledgeBase::changed_on_disk`] for the next reload.
fn load_snapshot(dir: &Path, bm25_gen: u64) -> Result<Snapshot> {
    // Stamped before reading: a change that lands while we read leaves a newer kb.json behind.
    let stamp = stamp(dir)?;
    let mut manifest = Manifest::read(dir)?;
    if manifest.generation != bm25_gen {
        let next = crate::writer::staged(&dir.join(crate::manifest::FILE));
        match Manifest::read_file(dir, &next) {
            Ok(m) if m.generation == bm25_gen => manifest = m,
            // Renamed in meanwhile: kb.json is the new one now.
            Err(RagError::NoKnowledgeBase { .. }) => manifest = Manifest::read(dir)?,
            _ => {}
        }
    }
    let vpath = dir.join(VECTORS_FILE);
    let vnext = crate::writer::staged(&vpath);
    let vpath = match crate::vectors::read_generation(&vnext) {
        Ok(g) if g == manifest.generation => vnext,
        _ => vpath,
    };
    let vectors = match VectorIndex::read(&vpath) {
        Ok(v) => v,
        Err(RagError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            // No vectors yet, or the staged file renamed in while we looked.
            let plain = dir.join(VECTORS_FILE);
            if plain.exists() { VectorIndex::read(&plain)? } else { VectorIndex::new(manifest.dim) }
        }
        Err(e) => return Err(e),
    };
    if vectors.dim != manifest.dim {
        return Err(RagError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("vectors.bin has {} dimensions, kb.json says {}", vectors.dim, manifest.dim),
        });
    }
    if vectors.generation != manifest.generation {
        tracing::debug!(dir = %dir.display(), "read a knowledge base while a change was being written");
    }
    Ok(Snapshot { manifest, vectors, stamp })
}

impl KnowledgeBase {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(crate::manifest::FILE).exists() {
            return Err(RagError::NoKnowledgeBase { path: dir.to_path_buf() });
        }
        let bm25 = Bm25Index::open(&dir.join(BM25_DIR), false)?;
        let snapshot = load_snapshot(dir, bm25.generation()?.unwrap_or(0))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            bm25,
            snapshot: RwLock::new(Arc::new(snapshot)),
            embedder: Mutex::new(None),
        })
    }

    /// Uses an embedder already in memory (a server, or tests) instead of loading the recorded one.
    pub fn with_embedder(self, embedder: Arc<Embedder>) -> Self {
        if let Ok(mut e) = self.embedder.lock() {
            *e = Some(embedder);
        }
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Picks up changes written since `open` (or the last reload). Queries running meanwhile
    /// keep the snapshot they started with; the new one is swapped in at the end.
    pub fn reload(&self) -> Result<()> {
        self.bm25.reload()?;
        let s = Arc::new(load_snapshot(&self.dir, self.bm25.generation()?.unwrap_or(0))?);
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = s;
        Ok(())
    }

    /// Whether a change finished since the snapshot was read (so [`Self::reload`] would see
    /// something new): one `stat` of `kb.json`, no reading.
    pub fn changed_on_disk(&self) -> Result<bool> {
        Ok(stamp(&self.dir)? != self.snap().stamp)
    }

    fn snap(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn settings(&self) -> crate::manifest::KbSettings {
        self.snap().manifest.settings.clone()
    }

    pub fn documents(&self) -> Vec<DocumentInfo> {
        self.snap().manifest.documents.iter().map(|(id, d)| DocumentInfo::from_entry(id, d)).collect()
    }

    pub fn num_chunks(&self) -> usize {
        self.snap().manifest.num_chunks()
    }

    /// The embedder named in `kb.json`, loaded on first use and shared afterwards.
    pub fn embedder(&self) -> Result<Arc<Embedder>> {
        let mut slot = match self.embedder.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let snap = self.snap();
        let e = Arc::new(Embedder::load_named(&snap.manifest.settings.embedder)?);
        if e.dim() != snap.manifest.dim {
            return Err(RagError::Embedder {
                path: e.dir().to_path_buf(),
                reason: format!("{} dimensions; the knowledge base holds {}", e.dim(), snap.manifest.dim),
            });
        }
        *slot = Some(e.clone());
        Ok(e)
    }

    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let e = self.embedder()?;
        e.embed(&[text])?
            .pop()
            .ok_or_else(|| RagError::Query { query: text.into(), reason: "no embedding".into() })
    }

    /// The `k` best chunks for `question`.
    pub fn query(&self, question: &str, k: usize, mode: Mode) -> Result<Vec<Hit>> {
        self.rank(question, k, mode, |snap, depth| {
            Ok(snap.vectors.search(&self.embed_query(question)?, depth))
        })
    }

    /// As [`Self::query`] with the question's embedding given (computed once for several modes).
    pub fn query_with_vector(
        &self,
        question: &str,
        qvec: Option<&[f32]>,
        k: usize,
        mode: Mode,
    ) -> Result<Vec<Hit>> {
        self.rank(question, k, mode, |snap, depth| {
            let qvec = qvec.ok_or_else(|| RagError::Query {
                query: question.into(),
                reason: "no query embedding given".into(),
            })?;
            Ok(snap.vectors.search(qvec, depth))
        })
    }

    /// The rankings `mode` needs, then the hits. `vector_side(snapshot, depth)` gives the vector
    /// ranking (embedding the question when `query` calls). Hybrid runs BM25 on one thread while
    /// another does the vector side (`rayon::join`): BM25 costs a few ms at 100k chunks, which
    /// then hides behind the embedding instead of adding to it.
    fn rank(
        &self,
        question: &str,
        k: usize,
        mode: Mode,
        vector_side: impl FnOnce(&Snapshot, usize) -> Result<Vec<(u64, f32)>> + Send,
    ) -> Result<Vec<Hit>> {
        check_k(k)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let snap = self.snap();
        let depth = depth(k, mode);
        let (bm, vh) = match mode {
            Mode::Bm25 => (self.bm25.search(question, depth)?, Vec::new()),
            Mode::Vector => (Vec::new(), vector_side(&snap, depth)?),
            Mode::Hybrid => {
                let (bm, vh) =
                    rayon::join(|| self.bm25.search(question, depth), || vector_side(&snap, depth));
                (bm?, vh?)
            }
        };
        self.hits(&snap, k, mode, bm, vh)
    }

    /// Fuses (hybrid) or takes the one ranking, then fetches the chunks' text and spans.
    fn hits(
        &self,
        snap: &Snapshot,
        k: usize,
        mode: Mode,
        bm: Vec<(u64, f32)>,
        vh: Vec<(u64, f32)>,
    ) -> Result<Vec<Hit>> {
        let ranked: Vec<(u64, f64)> = match mode {
            Mode::Bm25 => bm.iter().map(|&(id, s)| (id, f64::from(s))).collect(),
            Mode::Vector => vh.iter().map(|&(id, s)| (id, f64::from(s))).collect(),
            Mode::Hybrid => {
                let lists = [bm.iter().map(|h| h.0).collect::<Vec<_>>(), vh.iter().map(|h| h.0).collect()];
                reciprocal_rank_fusion(&lists, RRF_K)
            }
        };
        let candidates: Vec<u64> = ranked.iter().map(|r| r.0).take(k + 10).collect();
        let stored = self.bm25.fetch(&candidates)?;
        let rank_in = |list: &[(u64, f32)], id: u64| list.iter().position(|h| h.0 == id).map(|p| p + 1);
        let mut hits = Vec::with_capacity(k.min(ranked.len()));
        for (id, score) in ranked {
            let Some(c) = stored.get(&id) else { continue };
            let metadata =
                snap.manifest.documents.get(&c.doc_id).map(|d| d.metadata.clone()).unwrap_or_default();
            hits.push(Hit {
                rank: hits.len() + 1,
                score,
                doc_id: c.doc_id.clone(),
                chunk_id: id,
                chunk_index: c.ordinal,
                start_char: c.start_char,
                end_char: c.end_char,
                text: c.text.clone(),
                bm25_rank: if mode == Mode::Hybrid { rank_in(&bm, id) } else { None },
                vector_rank: if mode == Mode::Hybrid { rank_in(&vh, id) } else { None },
                metadata,
            });
            if hits.len() == k {
                break;
            }
        }
        Ok(hits)
    }
}

/// The most chunks one query may ask for. Each hit carries its chunk's text (~1 KB), hybrid reads
/// 4·k candidates from both rankings, and a grounded prompt holds a handful; a `k` in the
/// billions is a mistake to report, not a ranking to size buffers for (`k + 10` wrapped to 9).
pub const MAX_K: usize = 1000;

/// `k` within `0..=MAX_K`.
pub fn check_k(k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(RagError::TooManyHits { k, max: MAX_K });
    }
    Ok(())
}

/// How deep each ranking goes. Hybrid fuses deeper lists than it returns: a chunk ranked 30th by
/// both lists can beat one ranked 1st by one list only.
fn depth(k: usize, mode: Mode) -> usize {
    match mode {
        Mode::Hybrid => k.saturating_mul(4).max(50),
        _ => k.saturating_add(10),
    }
}

/// Where knowledge base `name` lives: `<root>/<name>`, `root` defaulting to `$FERROTUNE_HOME/kb`.
pub fn kb_path(name: &str, root: Option<&Path>) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(RagError::InvalidName(name.to_string()));
    }
    let root = root.map_or_else(|| ferrotune_model::store::home().join("kb"), Path::to_path_buf);
    Ok(root.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DocKind, SourceDoc};
    use crate::writer::Writer;

    fn doc(id: &str, text: &str) -> SourceDoc {
        SourceDoc::new(id.into(), id.into(), DocKind::Text, text.into(), serde_json::Map::new())
    }

    #[test]
    fn a_finished_change_shows_on_disk_until_the_reader_reloads() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| RagError::io("tempdir", e))?;
        let dir = tmp.path().join("kb");
        let mut w = Writer::open(&dir, None, 2)?;
        w.ingest_with_vectors(&[doc("a", "refunds take five days")], &mut |_| vec![1.0, 0.0])?;
        let kb = KnowledgeBase::open(&dir)?;
        assert!(!kb.changed_on_disk()?, "nothing written since open");
        assert!(!kb.changed_on_disk()?, "checking does not change the answer");
        w.ingest_with_vectors(&[doc("b", "express shipping costs extra")], &mut |_| vec![0.0, 1.0])?;
        assert!(kb.changed_on_disk()?, "an ingest replaced kb.json");
        assert!(
            kb.query("express shipping", 3, Mode::Bm25)?.iter().all(|h| h.doc_id != "b"),
            "old snapshot until reload"
        );
        kb.reload()?;
        assert!(!kb.changed_on_disk()?);
        assert_eq!(
            kb.query("express shipping", 3, Mode::Bm25)?.first().map(|h| h.doc_id.as_str()),
            Some("b")
        );
        w.delete("b")?;
        assert!(kb.changed_on_disk()?, "a delete too");
        Ok(())
    }
}
