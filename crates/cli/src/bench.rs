//! `ferrotune bench <what>`: the flags of each benchmark; the benchmarks themselves are the
//! `ferrotune-bench` crate (`ferrotune_bench::{generate, train, rag, audit, structured}`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferrotune_bench as bench;
use ferrotune_model::store::DEFAULT_MODEL;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

impl BenchArgs {
    /// Whether this is a training benchmark (which wants the training thread setup).
    pub fn is_train(&self) -> bool {
        matches!(self.command, BenchCommand::Train(_))
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill tokens/s (one forward over the prompt) and single-stream decode tokens/s.
    Generate(GenerateBench),
    /// LoRA training tokens/s and peak memory on SmolLM2-135M's shape (random weights), against
    /// HF PEFT on PyTorch CPU with the same setup.
    Train(TrainBench),
    /// Knowledge-base ingest throughput (real embedder) and query latency p50/p99 per mode at each
    /// index size. The latency indexes hold generated text with SYNTHETIC random vectors (exact
    /// search costs the same whatever the vectors hold; embedding 100k chunks would take hours).
    Rag(RagBench),
    /// Audit log: appends/s in batches (the server's way) and the time to verify the whole log
    /// (every leaf rehashed, every checkpoint's signature and root checked), against the
    /// targets (>= 50,000 appends/s; 1M entries verified in < 10 s).
    Audit(AuditBench),
    /// Structured output's cost in the server's batched engine: decode tokens/s with a JSON
    /// Schema enforced vs free text, same prompts, greedy, at 1 and 8 concurrent sequences.
    Structured(StructuredBench),
}

#[derive(Args)]
struct AuditBench {
    /// Entries appended (then verified).
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per append (one lock, one write, one fsync each).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RagBench {
    /// Chunks in each latency index.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Generated chunks ingested through the real path (chunk, MiniLM embed, write); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    ingest_chunks: usize,
    /// Timed queries per mode and size.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Hits per query.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Seed for the generated text, questions and vectors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct TrainBench {
    /// Model shape (random weights, initialised as transformers does): smollm2-135m
    /// (576 hidden, 30 layers, 9/3 heads, vocab 49152) or llama-1b (Llama-3.2-1B: 2048 hidden,
    /// 16 layers, 32/8 heads, FFN 8192, vocab 128256).
    #[arg(long, default_value = "smollm2-135m")]
    shape: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row (every token carries loss).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// cpu, cuda or cuda:N (CUDA needs the GPU build, scripts/gpu/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// auto (f32 on the CPU, bf16 on a GPU), f32 or bf16; LoRA variables and AdamW state are f32.
    #[arg(long, default_value = "auto")]
    dtype: ferrotune_train::config::Precision,
    /// LoRA dropout, the same for both engines.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Python with torch, transformers and peft (several GB; not needed by CI); the peer is
    /// skipped when not given.
    #[arg(long, env = "FERROTUNE_PEFT_PYTHON")]
    peft_python: Option<PathBuf>,
    /// Also time the phases of a step and the pieces of a layer one by one (on a GPU, the device synchronised around each); a GPU run prints the phases anyway.
    #[arg(long)]
    profile: bool,
    /// Data parallel over these GPUs (e.g. `--device cuda --devices 0,1`), as `ferrotune train
    /// --devices`: the batch's rows split across them. Also checks the split's gradients against
    /// the first GPU alone on the whole batch, and each GPU alone against the first.
    #[arg(long)]
    devices: Option<String>,
    /// Write the results as JSON here (with both loss trajectories).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateBench {
    /// Model name or GGUF path.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Prompt length in tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode (greedy, EOS ignored) for the decode measurement.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Python interpreter with llama-cpp-python installed (scripts/parity/install-llama-cpp.sh);
    /// the peer is skipped when not given.
    #[arg(long, env = "FERROTUNE_LLAMACPP_PYTHON")]
    llama_cpp_python: Option<PathBuf>,
    /// Which of our paths to run.
    #[arg(long, value_delimiter = ',', default_value = "f32,quantized")]
    paths: Vec<String>,
}

#[derive(Args)]
struct StructuredBench {
    /// Model name (installed) or path to a GGUF file / HF directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Concurrent sequences, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    streams: Vec<usize>,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Alternating repetitions of (free, schema) per stream count; the medians are compared.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.command {
        BenchCommand::Generate(b) => bench::generate::run(&bench::generate::GenerateBench {
            model: b.model,
            prompt_tokens: b.prompt_tokens,
            gen_tokens: b.gen_tokens,
            llama_cpp_python: b.llama_cpp_python,
            paths: b.paths,
        })?,
        BenchCommand::Train(b) => bench::train::run(&bench::train::TrainBench {
            shape: b.shape,
            batch: b.batch,
            seq: b.seq,
            steps: b.steps,
            device: b.device,
            dtype: b.dtype,
            lora_dropout: b.lora_dropout,
            peft_python: b.peft_python,
            profile: b.profile,
            devices: b.devices,
            json: b.json,
        })?,
        BenchCommand::Rag(b) => bench::rag::run(&bench::rag::BenchConfig {
            sizes: b.sizes,
            ingest_chunks: b.ingest_chunks,
            queries: b.queries,
            k: b.k,
            seed: b.seed,
        })?,
        BenchCommand::Audit(b) => {
            bench::audit::run(&bench::audit::AuditBench { entries: b.entries, batch: b.batch, out: b.out })?
        }
        BenchCommand::Structured(b) => bench::structured::run(&bench::structured::StructuredBench {
            model: b.model,
            streams: b.streams,
            max_tokens: b.max_tokens,
            reps: b.reps,
            out: b.out,
        })?,
    }
    Ok(())
}
