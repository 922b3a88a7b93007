//! The `ferrotune` binary: argument parsing and wiring; the work lives in the library crates.

mod audit;
mod bench;
mod data;
mod eval;
mod guard;
mod keys;
mod models;
mod plan;
mod rag;
mod record;
mod registry;
mod sampling;
mod serve;
mod textgen;
mod train;
mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrotune",
    version,
    about = "Fine-tune, evaluate and serve LLaMA-family models from your own examples"
)]
#[command(
    after_help = "State (installed models, keys, registry) lives in $FERROTUNE_HOME (default ~/.ferrotune).\n\
CPU threads: set RAYON_NUM_THREADS (default: all cores)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install, list, verify and export models.
    Models(models::ModelsArgs),
    /// Generate text from a prompt or a chat message, streamed to stdout.
    Generate(textgen::GenerateArgs),
    /// Print the token ids of a text as a JSON array (or decode ids with --decode).
    Tokenize(textgen::TokenizeArgs),
    /// Fine-tune a model with LoRA (or fully) on chat/alpaca/completion/text data.
    Train(train::TrainArgs),
    /// Fold a LoRA adapter into the base weights and write an HF directory.
    Merge(train::MergeArgs),
    /// Benchmarks, printed as ratios against the named peer measured in the same run.
    Bench(bench::BenchArgs),
    /// Check, clean, split and render training data.
    Data(data::DataArgs),
    /// Compare the base model with tuned adapters on test rows (metrics with 95% intervals,
    /// report, regression gate), or score given predictions (`eval score`).
    Eval(eval::EvalArgs),
    /// Knowledge bases: ingest documents, hybrid retrieval (BM25 + embeddings) with citations,
    /// retrieval metrics on labelled queries.
    Rag(rag::RagArgs),
    /// Serve a model (and its LoRA adapters) behind an OpenAI-compatible API with keys, rate
    /// limits, a response cache and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API keys for `serve` (stored hashed in $FERROTUNE_HOME/serve).
    Keys(keys::KeysArgs),
    /// What is on record (models, datasets, runs, adapters, evaluations), lineage, releases by
    /// approval, the kill switch, model cards.
    Registry(registry::RegistryArgs),
    /// The tamper-evident audit log: verify, prove an entry, search, export for an auditor.
    Audit(audit::AuditArgs),
    /// Before a run: which method, how much memory, how long and what it costs (training and
    /// serving), with recommended settings — from the data's token counts and measured speeds.
    Plan(plan::PlanArgs),
    /// A web dashboard: runs with live loss curves, comparisons, evaluations, the registry with
    /// approvals and the kill switch, the audit log, knowledge bases, serving metrics.
    Ui(ui::UiArgs),
    /// Input guards: check a text for prompt injection and personal data; evaluate and train the
    /// injection classifier.
    Guard(guard::GuardArgs),
}

/// Training frees and reallocates the same activation-sized buffers on every op. glibc, left
/// alone, gives them back to the kernel (blocks over its mmap threshold, and free memory at the
/// top of a heap beyond its trim threshold) and the next allocation page-faults in fresh zeroed
/// pages; rayon's threads each get an arena of their own whose heaps are trimmed the same way.
/// Measured on a CPU LoRA step (SmolLM2 shape, 2 threads, `perf stat`): ~290k page faults a step
/// and a quarter of its CPU time in the kernel clearing pages. One arena, blocks up to 32 MiB
/// (glibc's largest mmap threshold) from the heap, and up to 1 GiB of free heap kept: the
/// buffers are reused and a step's page faults fall to a few thousand, at the same peak RSS.
///
/// Called first thing in `main`, before any thread exists: glibc's `mallopt` is not safe to call
/// while other threads allocate (rayon's pool used to be started before it). Should a thread exist
/// anyway, it says so and leaves glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if let Some(n) = threads_running().filter(|&n| n > 1) {
        eprintln!("warning: not tuning malloc for training: {n} threads are already running");
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; this process has one thread (checked above).
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Older glibc refuses thresholds over 32 MiB: keep what it takes.
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 0 {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// This process's thread count (`Threads:` in /proc/self/status).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn threads_running() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> ExitCode {
    // Argument parsing starts no thread, and only training wants malloc tuned: parse, then tune
    // before anything else can start one (the tracing subscriber, rayon's pool).
    let cli = Cli::parse();
    let trains = match &cli.command {
        Command::Train(_) => true,
        Command::Bench(b) => b.is_train(),
        _ => false,
    };
    if trains {
        keep_freed_memory();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERROTUNE_LOG")
                .unwrap_or_else(|_| "warn,ferrotune_serve=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(unix)]
    if !matches!(cli.command, Command::Serve(_) | Command::Ui(_)) {
        // Rust ignores SIGPIPE, so printing a report into a pipe that closed early (`| head`)
        // panicked; with the default action the command just ends, as other tools do. (Not for
        // `serve`, whose sockets must survive a client going away.)
        // SAFETY: no other thread exists yet; this only sets a signal's disposition.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if trains && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Training is dominated by gemm, which runs on rayon's pool; candle's second (spinning)
        // pool for elementwise ops competed with it for the cores (a fifth of a step spent
        // spin-waiting, measured). One thread for that pool means no second pool at all.
        // SAFETY: no other thread exists yet (argument parsing is single-threaded).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1")
        };
    }
    if trains {
        // A CPU training step runs one share of the batch's rows per rayon thread, each share's
        // matmuls on its own thread (`ferrotune_train::optimizer_step`). candle reads
        // RAYON_NUM_THREADS on every matmul to choose gemm's parallelism: the pool is built
        // with the threads asked for (or the cores), then the variable tells candle 1 — gemm
        // splitting each share's products over threads that are busy with the other shares cost
        // ~9% of the step's speed (bench train, 2 threads). GPU matmuls do not read it.
        let threads =
            std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // SAFETY: no other thread exists yet; the pool is built after the variable is set.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "1")
        };
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
            eprintln!("error: could not start {threads} worker threads: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match cli.command {
        Command::Models(a) => models::run(a),
        Command::Generate(a) => textgen::generate(a),
        Command::Tokenize(a) => textgen::tokenize(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::train(a),
        Command::Merge(a) => train::merge(a),
        Command::Data(a) => data::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Rag(a) => rag::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Registry(a) => registry::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Ui(a) => ui::run(a),
        // Its own exit statuses: 0 clean, 1 flagged, 2 error.
        Command::Guard(a) => return guard::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<eval::GateFailed>().is_some() => {
            eprintln!("gate failed: {e:#}");
            ExitCode::from(eval::GATE_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
