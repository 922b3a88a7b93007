//! `ferrotune bench generate`: prefill tokens/s (one forward over the prompt) and single-stream
//! decode tokens/s of the f32 and quantized paths, next to llama.cpp (through llama-cpp-python)
//! on the same GGUF, prompt and thread count, in one run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrotune_model::{KvCache, LoadedModel, Logits, WeightMode};

use crate::error::{BenchError, Result};

#[derive(Debug, Clone)]
pub struct GenerateBench {
    /// Model name or GGUF path.
    pub model: String,
    /// Prompt length in tokens for the prefill measurement.
    pub prompt_tokens: usize,
    /// Tokens to decode (greedy, EOS ignored) for the decode measurement.
    pub gen_tokens: usize,
    /// Python with llama-cpp-python installed; the peer is skipped when `None`.
    pub llama_cpp_python: Option<PathBuf>,
    /// Which of our paths to run: `f32`, `quantized`.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// A deterministic prompt of exactly `n` tokens: repeated varied English text.
fn prompt_ids(m: &LoadedModel, n: usize) -> Result<Vec<u32>> {
    const TEXT: &str = "The committee reviewed the quarterly report on regional water usage, noting that \
        consumption rose 4.2% while rainfall fell. Engineers proposed three measures: repairing leaks in \
        the old network, metering commercial users, and publishing daily figures online. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(m.tokenizer.encode(TEXT, false)?);
    }
    ids.truncate(n);
    Ok(ids)
}

/// Prefill of `prompt`, then `n_gen` greedy decode steps, each timed as a whole.
pub fn measure(m: &LoadedModel, prompt: &[u32], n_gen: usize) -> Result<Speed> {
    let dev = Device::Cpu;
    // Warm-up: allocations, rayon pool, rope tables in cache.
    let mut cache = KvCache::new(m.config(), 8);
    m.model.forward(
        &Tensor::new(&prompt[..8.min(prompt.len())], &dev)?.unsqueeze(0)?,
        None,
        Some(&mut cache),
        Logits::Last,
    )?;

    let mut cache = KvCache::new(m.config(), prompt.len() + n_gen + 1);
    let t0 = Instant::now();
    let mut logits =
        m.model.forward(&Tensor::new(prompt, &dev)?.unsqueeze(0)?, None, Some(&mut cache), Logits::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..n_gen {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = ferrotune_model::sampling::argmax(&row);
        logits = m.model.forward(
            &Tensor::new(&[next], &dev)?.unsqueeze(0)?,
            None,
            Some(&mut cache),
            Logits::Last,
        )?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(Speed { prefill_tok_s: prompt.len() as f64 / prefill, decode_tok_s: n_gen as f64 / decode })
}

/// The same measurement by llama.cpp (`scripts/bench/llamacpp_speed.py`) on the same tokens.
fn llama_cpp(python: &Path, gguf: &Path, prompt: &[u32], n_gen: usize, threads: usize) -> Result<Speed> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench/llamacpp_speed.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(gguf)
        .arg("--tokens")
        .arg(serde_json::to_string(prompt)?)
        .arg("--gen")
        .arg(n_gen.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .output()
        .map_err(|e| BenchError::io(format!("running {}", python.display()), e))?;
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "llama.cpp benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map_err(|e| BenchError::Peer(format!("parsing llama.cpp benchmark output {last:?}: {e}")))
}

pub fn run(b: &GenerateBench) -> Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let path = ferrotune_model::store::resolve(&b.model)?;
    println!(
        "bench generate: {} | prompt {} tokens | decode {} tokens | {threads} threads",
        path.display(),
        b.prompt_tokens,
        b.gen_tokens
    );
    let mut ours = Vec::new();
    for p in &b.paths {
        let mode = match p.as_str() {
            "f32" => WeightMode::F32,
            "quantized" => WeightMode::Quantized,
            other => {
                return Err(BenchError::InvalidSetting(format!(
                    "--paths: unknown path `{other}` (f32, quantized)"
                )));
            }
        };
        let m = ferrotune_model::load_path(&path, mode, &Device::Cpu)?;
        let prompt = prompt_ids(&m, b.prompt_tokens)?;
        let s = measure(&m, &prompt, b.gen_tokens)?;
        ours.push((p.clone(), s, prompt));
    }
    let peer = match (&b.llama_cpp_python, ours.first()) {
        (Some(py), Some((_, _, prompt))) => Some(llama_cpp(py, &path, prompt, b.gen_tokens, threads)?),
        _ => None,
    };
    println!(
        "{:<22} {:>14} {:>14} {:>16} {:>16}",
        "engine", "prefill tok/s", "decode tok/s", "prefill vs llama", "decode vs llama"
    );
    let ratio = |x: f64, y: Option<f64>| y.map(|y| format!("{:.2}x", x / y)).unwrap_or_else(|| "-".into());
    if let Some(p) = peer {
        println!(
            "{:<22} {:>14.1} {:>14.1} {:>16} {:>16}",
            "llama.cpp", p.prefill_tok_s, p.decode_tok_s, "1.00x", "1.00x"
        );
    } else {
        println!("(llama.cpp not measured: pass --llama-cpp-python or set FERROTUNE_LLAMACPP_PYTHON)");
    }
    for (name, s, _) in &ours {
        println!(
            "{:<22} {:>14.1} {:>14.1} {:>16} {:>16}",
            format!("ferrotune {name}"),
            s.prefill_tok_s,
            s.decode_tok_s,
            ratio(s.prefill_tok_s, peer.map(|p| p.prefill_tok_s)),
            ratio(s.decode_tok_s, peer.map(|p| p.decode_tok_s)),
        );
    }
    Ok(())
}
