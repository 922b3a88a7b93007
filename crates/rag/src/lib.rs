//! `ferrotune-rag`: knowledge bases for retrieval-augmented answers — hybrid search (BM25 +
//! embeddings) over a company's documents, with citations (document id + char span).
//!
//! - [`source`]: reading text / Markdown / HTML ([`html`]) files and JSONL records, stable ids.
//! - [`chunk`]: token-window chunks cut at paragraph, then sentence boundaries, with overlap.
//! - [`bert`], [`embedder`]: all-MiniLM-L6-v2 on our own candle BERT, matching sentence-transformers.
//! - [`bm25`] (tantivy), [`vectors`] (exact cosine over an on-disk f32 matrix: an 8-bit pass
//!   ([`int8`]) picks candidates, an f32 rerank and an error bound make the result exact),
//!   [`fusion`] (RRF).
//! - [`kb`]: [`KnowledgeBase`] — open once, `query` concurrently from many threads;
//!   [`writer`]: [`Writer`] — ingest / replace / delete, one writer at a time; [`manifest`]: `kb.json`;
//!   [`ingest`]: paths into a knowledge base, the steps of `ferrotune rag ingest`.
//! - [`metrics`], [`eval`]: recall@k, MRR@10, nDCG@10 over labelled queries.
//! - [`synthetic`]: seeded generated text and synthetic indexes, for tests and the retrieval
//!   benchmark (`ferrotune-bench`).

pub mod bert;
pub mod bm25;
pub mod chunk;
pub mod embedder;
pub mod error;
pub mod eval;
pub mod fusion;
pub mod html;
pub mod ingest;
pub mod int8;
pub mod kb;
pub mod manifest;
pub mod metrics;
pub mod source;
pub mod synthetic;
pub mod vectors;
pub mod writer;

pub use chunk::{Chunk, ChunkConfig};
pub use embedder::Embedder;
pub use error::{RagError, Result};
pub use ingest::{IngestSpec, ingest};
pub use kb::{DocumentInfo, Hit, KnowledgeBase, MAX_K, Mode, kb_path};
pub use manifest::KbSettings;
pub use source::{DocKind, SourceDoc};
pub use writer::{IngestReport, Progress, Writer};
