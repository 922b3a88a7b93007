//! `ferrotune-data`: the data stage — read a company's examples, check them, clean and split them,
//! and turn each one into the token ids and loss labels the trainer consumes.
//!
//! - [`reader`]: streaming rows out of JSONL, CSV and Parquet files (memory flat in the row
//!   count); [`parquet_rows`] turns Parquet rows into the records' JSON objects.
//! - [`record`], [`parse`]: the four record formats (chat, alpaca, completion, text) and the
//!   parser that checks a JSON object against them, reporting every problem as a [`Finding`].
//! - [`pii`]: e-mail, phone, credit card (Luhn), IBAN (mod-97), US SSN and IP address detection
//!   and redaction.
//! - [`minhash`], [`dedup`]: exact and near-duplicate detection (MinHash + LSH), conflicting
//!   answers to one prompt, train/eval leakage.
//! - [`agreement`]: Krippendorff's α (nominal) over `metadata.annotations`.
//! - [`poison`]: possible backdoor triggers — rare trigger-like prompt tokens whose rows get one
//!   answer the rest of the data rarely gets (OWASP LLM04).
//! - [`stats`]: distributions (min/p5/median/p95/max) and metadata coverage.
//! - [`render`]: [`render_for_training`] — the model's chat template applied, tokenized, with
//!   labels −100 outside the assistant targets; EOS is part of every target.
//! - [`scan`]: the streaming pipeline shared by validation and preparation (rows are analysed in
//!   parallel chunks, then pass through the order-dependent dataset checks one by one).
//! - [`validate`]: `ferrotune data validate` — the quality [`Report`]; [`human`] prints it.
//! - [`prepare`]: `ferrotune data prepare` — dedup, redaction, stratified split, atomic output.

pub mod agreement;
pub mod chatml;
pub mod dedup;
pub mod error;
pub mod fast_bpe;
pub mod finding;
pub mod human;
pub mod minhash;
pub mod parquet_rows;
pub mod parse;
pub mod pii;
pub mod poison;
pub mod prehashed;
pub mod prepare;
pub mod reader;
pub mod record;
pub mod render;
pub mod scan;
pub mod split;
pub mod stats;
pub mod validate;

pub use error::{DataError, Result};
pub use finding::{Code, Finding, Severity, Unit};
pub use prepare::{DedupMode, PrepareOptions, PrepareReport, prepare};
pub use record::{Body, Format, Origin, Record, Role, Turn};
pub use render::{IGNORE_INDEX, RenderOptions, Rendered, Renderer, render_for_training};
pub use scan::{Progress, ScanProgress};
pub use validate::{Report, ValidateOptions, validate};
