//! `ferrotune-bench`: the benchmarks behind `ferrotune bench`. Each module takes a plain config
//! (the CLI fills it from its flags) and prints its report to stdout as it goes, the way the
//! command shows it; results files are written where the config says.
//!
//! - [`generate`]: prefill and decode speed of the f32 and quantized paths, next to llama.cpp
//!   (through llama-cpp-python) on the same GGUF, prompt and thread count.
//! - [`train`]: LoRA training speed and peak memory against HF PEFT on the same shape and batch
//!   ([`profile`]: the pieces of a layer timed one by one; [`memory`]: peak RSS and GPU memory).
//! - [`rag`]: knowledge-base ingest throughput and query latency.
//! - [`audit`]: audit-log appends/s and whole-log verification time.
//! - [`structured`]: constrained decoding's cost in the server's batched engine.

pub mod audit;
pub mod error;
pub mod generate;
pub mod memory;
pub mod profile;
pub mod rag;
pub mod structured;
pub mod train;

pub use error::{BenchError, Result};
