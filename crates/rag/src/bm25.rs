//! The lexical index: one tantivy document per chunk, text analysed with tantivy's `en_stem`
//! (split on non-alphanumerics, lower-case, drop tokens over 40 bytes, Porter/Snowball English
//! stemming), scored with BM25 (k1 = 1.2, b = 0.75, tantivy's defaults). It also stores each
//! chunk's text and position, so results are fetched from here.
//!
//! Queries are not parsed as tantivy query syntax (a question mark or a colon in a user's question
//! must not be an error): the question goes through the same analyser and every term becomes an
//! optional clause, i.e. plain BM25 over the distinct query terms.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::collector::TopDocs;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, FileSlice, Lock, MmapDirectory, WatchCallback, WatchHandle,
    WritePtr,
};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, TantivyError, Term, doc};

use crate::error::{RagError, Result};

/// Indexing memory budget (tantivy's minimum per thread is 15 MB); one thread: ingest time is
/// dominated by embedding, not by tantivy.
const WRITER_BUDGET: usize = 50_000_000;

/// tantivy's writer lock file in the index folder.
const WRITER_LOCK: &str = ".tantivy-writer.lock";

/// tantivy's [`MmapDirectory`], except that on a read-only file system a reader's meta lock (a
/// file tantivy opens for writing, so a reader failed there with EROFS) is skipped: the lock keeps
/// a writer's clean-up from deleting segments while they are opened, and no writer can run on a
/// read-only file system. Writers still fail there, with the OS error ([`Bm25Index::writer`]).
#[derive(Clone, Debug)]
struct ReadOnlyTolerant(MmapDirectory);

impl Directory for ReadOnlyTolerant {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.0.get_file_handle(path)
    }
    fn open_read(&self, path: &Path) -> Result<FileSlice, OpenReadError> {
        self.0.open_read(path)
    }
    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.0.delete(path)
    }
    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.0.exists(path)
    }
    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.0.open_write(path)
    }
    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.0.atomic_read(path)
    }
    fn atomic_write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        self.0.atomic_write(path, data)
    }
    fn sync_directory(&self) -> std::io::Result<()> {
        self.0.sync_directory()
    }
    fn watch(&self, callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.0.watch(callback)
    }
    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        match self.0.acquire_lock(lock) {
            Err(LockError::IoError(e))
                if lock.is_blocking && e.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
            {
                Ok(DirectoryLock::from(Box::new(())))
            }
            r => r,
        }
    }
}

/// A tantivy error, with the index folder and the OS error when it is one (a full or read-only
/// disk), instead of tantivy's message, which names neither.
fn index_error(dir: &Path, e: TantivyError) -> RagError {
    match e {
        TantivyError::IoError(io) | TantivyError::LockFailure(LockError::IoError(io), _) => {
            RagError::io(dir, std::io::Error::new(io.kind(), io.to_string()))
        }
        e => RagError::Index(e),
    }
}

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    text: Field,
    start_char: Field,
    end_char: Field,
    ordinal: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_opts = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        chunk_id: b.add_u64_field("chunk_id", INDEXED | STORED | FAST),
        doc_id: b.add_text_field("doc_id", STRING | STORED),
        text: b.add_text_field("text", text_opts),
        start_char: b.add_u64_field("start_char", STORED),
        end_char: b.add_u64_field("end_char", STORED),
        ordinal: b.add_u64_field("ordinal", STORED),
    };
    (b.build(), fields)
}

/// A chunk as stored: document id, position in the document, char span and text.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub chunk_id: u64,
    pub doc_id: String,
    /// 0-based index of the chunk within its document.
    pub ordinal: u64,
    pub start_char: u64,
    pub end_char: u64,
    pub text: String,
}

pub struct Bm25Index {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl Bm25Index {
    /// Opens the index in `dir`, creating it when `create` and the folder holds none.
    pub fn open(dir: &Path, create: bool) -> Result<Self> {
        let (schema, fields) = schema();
        let exists = dir.join("meta.json").exists();
        let index = if exists {
            let mmap = MmapDirectory::open(dir).map_err(|e| index_error(dir, TantivyError::from(e)))?;
            Index::open(ReadOnlyTolerant(mmap)).map_err(|e| index_error(dir, e))?
        } else if create {
            std::fs::create_dir_all(dir).map_err(|e| RagError::io(dir, e))?;
            Index::create_in_dir(dir, schema.clone()).map_err(|e| index_error(dir, e))?
        } else {
            return Err(RagError::Corrupt {
                path: dir.to_path_buf(),
                reason: "the BM25 index is missing".into(),
            });
        };
        if index.schema() != schema {
            return Err(RagError::Corrupt {
                path: dir.to_path_buf(),
                reason: "the BM25 index has another schema (made by another ferrotune version?)".into(),
            });
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| index_error(dir, e))?;
        Ok(Self { dir: dir.to_path_buf(), index, reader, fields })
    }

    /// The index writer; its lock file keeps a second writer (another ingest) out.
    pub fn writer(&self, dir: &Path) -> Result<IndexWriter> {
        self.index.writer_with_num_threads(1, WRITER_BUDGET).map_err(|e| match e {
            TantivyError::LockFailure(LockError::LockBusy, _) => RagError::Locked { path: dir.to_path_buf() },
            // A read-only or full file system: say where and what the OS said.
            TantivyError::LockFailure(LockError::IoError(io), _) => {
                RagError::io(self.dir.join(WRITER_LOCK), std::io::Error::new(io.kind(), io.to_string()))
            }
            e => index_error(&self.dir, e),
        })
    }

    pub fn add_chunk(&self, w: &IndexWriter, c: &StoredChunk) -> Result<()> {
        let f = self.fields;
        w.add_document(doc!(
            f.chunk_id => c.chunk_id,
            f.doc_id => c.doc_id.as_str(),
            f.text => c.text.as_str(),
            f.start_char => c.start_char,
            f.end_char => c.end_char,
            f.ordinal => c.ordinal,
        ))?;
        Ok(())
    }

    pub fn delete_document(&self, w: &IndexWriter, doc_id: &str) {
        w.delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
    }

    pub fn delete_chunk(&self, w: &IndexWriter, chunk_id: u64) {
        w.delete_term(Term::from_field_u64(self.fields.chunk_id, chunk_id));
    }

    /// Commits with the knowledge-base generation as the commit payload.
    pub fn commit(&self, w: &mut IndexWriter, generation: u64) -> Result<()> {
        let mut prepared = w.prepare_commit().map_err(|e| index_error(&self.dir, e))?;
        prepared.set_payload(&generation.to_string());
        ferrotune_model::crash::point("rag-bm25-prepared");
        prepared.commit().map_err(|e| index_error(&self.dir, e))?;
        self.reader.reload()?;
        Ok(())
    }

    /// The generation recorded by the last commit (`None` for an index never committed).
    pub fn generation(&self) -> Result<Option<u64>> {
        Ok(self.index.load_metas()?.payload.and_then(|p| p.parse().ok()))
    }

    /// Picks up commits made since this index was opened.
    pub fn reload(&self) -> Result<()> {
        Ok(self.reader.reload()?)
    }

    /// The distinct analysed terms of `query`.
    fn terms(&self, query: &str) -> Result<Vec<Term>> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.text)?;
        let mut stream = analyzer.token_stream(query);
        let mut seen = HashSet::new();
        let mut terms = Vec::new();
        while stream.advance() {
            let t = stream.token().text.clone();
            if seen.insert(t.clone()) {
                terms.push(Term::from_field_text(self.fields.text, &t));
            }
        }
        Ok(terms)
    }

    /// The `k` best chunks by BM25: `(chunk_id, score)`, best first.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(u64, f32)>> {
        let terms = self.terms(query)?;
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|t| {
                (Occur::Should, Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>)
            })
            .collect();
        let q = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        // tantivy sizes its top-k buffer by the limit: a huge `k` from a user would overflow it.
        let k = k.min(usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX));
        if k == 0 {
            return Ok(Vec::new());
        }
        let top = searcher.search(&q, &TopDocs::with_limit(k).order_by_score())?;
        // Chunk ids from the fast-field column, not the stored document: loading a stored
        // document decompresses its doc-store block, tens of µs each, and hybrid asks for 50 hits.
        let mut columns = HashMap::new();
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let col = match columns.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(searcher.segment_reader(addr.segment_ord).fast_fields().u64("chunk_id")?)
                }
            };
            if let Some(id) = col.first(addr.doc_id) {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// The stored chunks for `ids` (missing ids — deleted since — are absent from the map).
    pub fn fetch(&self, ids: &[u64]) -> Result<HashMap<u64, StoredChunk>> {
        let searcher = self.reader.searcher();
        let f = self.fields;
        let mut out = HashMap::new();
        for &id in ids {
            let q = TermQuery::new(Term::from_field_u64(f.chunk_id, id), IndexRecordOption::Basic);
            let Some((_, addr)) =
                searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?.into_iter().next()
            else {
                continue;
            };
            let d: TantivyDocument = searcher.doc(addr)?;
            let u = |field| d.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
            let s =
                |field| d.get_first(field).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            out.insert(
                id,
                StoredChunk {
                    chunk_id: id,
                    doc_id: s(f.doc_id),
                    ordinal: u(f.ordinal),
                    start_char: u(f.start_char),
                    end_char: u(f.end_char),
                    text: s(f.text),
                },
            );
        }
        Ok(out)
    }

    /// Every live chunk id (for consistency checks after an interrupted ingest).
    pub fn chunk_ids(&self) -> Result<HashSet<u64>> {
        let searcher = self.reader.searcher();
        let mut out = HashSet::new();
        for seg in searcher.segment_readers() {
            let col = seg.fast_fields().u64("chunk_id")?;
            let alive = seg.alive_bitset();
            for doc in 0..seg.max_doc() {
                if alive.is_none_or(|a| a.is_alive(doc))
                    && let Some(v) = col.first(doc)
                {
                    out.insert(v);
                }
            }
        }
        Ok(out)
    }

    pub fn num_chunks(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}
