//! `ferrotune bench structured`: what constrained decoding costs the server. The server's batched
//! engine (`ferrotune_serve::engine`, as `ferrotune serve` runs it) decodes the same chat prompts
//! greedily, free text against JSON held to a schema, at each number of concurrent sequences;
//! runs alternate so both see the same machine load, and the median of the repetitions is compared.
//!
//! Both runs generate exactly `--max-tokens` per sequence, so the batch has the same rows at every
//! step: free text ignores EOS, and the schema (an array of at least 100 records) cannot be closed
//! sooner. Decode tokens/s = tokens after each sequence's first / (last Done − first token).

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_model::constrain::{Constraint, JsonFormat};
use ferrotune_model::{Message, SamplingParams, WeightMode};
use ferrotune_serve::engine::{self, EngineConfig, EngineHandle, Event, GenRequest};
use serde_json::json;

use crate::error::{BenchError, Result};

#[derive(Debug, Clone)]
pub struct StructuredBench {
    /// Model name (installed) or path to a GGUF file / HF directory.
    pub model: String,
    /// Concurrent sequences, one measurement each.
    pub streams: Vec<usize>,
    /// New tokens per sequence.
    pub max_tokens: usize,
    /// Alternating repetitions of (free, schema) per stream count; the medians are compared.
    pub reps: usize,
    /// Also write the results as JSON here.
    pub out: Option<PathBuf>,
}

const PROMPTS: [&str; 8] = [
    "List the members of a small software team as JSON.",
    "Write the staff directory of a bakery.",
    "Give me a roster of volunteers for a charity run.",
    "Produce a list of users for a test database.",
    "Who works at the library? Answer with records.",
    "Describe the players of a football club.",
    "Make up customer accounts for a bank demo.",
    "List the people on a research project.",
];

/// Records of several kinds of value (strings with bounds, integers with bounds, enums,
/// booleans), at least 100 of them, so no sequence can finish before `--max-tokens`.
fn schema() -> serde_json::Value {
    json!({"type": "array", "minItems": 100, "items": {"type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "email": {"type": "string", "maxLength": 40},
            "role": {"enum": ["engineer", "manager", "designer", "analyst"]},
            "active": {"type": "boolean"}
        },
        "required": ["name", "age", "email", "role", "active"], "additionalProperties": false}})
}

/// One batch: `streams` sequences submitted at once; aggregate decode tokens/s.
fn run_once(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    constraint: Option<&Constraint>,
) -> Result<(f64, usize)> {
    let mut rxs = Vec::new();
    for p in prompts {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        engine
            .submit(GenRequest {
                adapter: None,
                prompt: p.clone(),
                max_tokens,
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                logprobs: None,
                prompt_logprobs: false,
                ignore_eos: constraint.is_none(),
                constraint: constraint.cloned(),
                received: Instant::now(),
                events: tx,
            })
            .map_err(|e| BenchError::Failed(e.to_string()))?;
        rxs.push(rx);
    }
    // One reader per sequence, so each event is timed when it arrives.
    let per_seq: Vec<Result<(Instant, Instant, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                s.spawn(move || {
                    let mut first = None;
                    while let Some(ev) = rx.blocking_recv() {
                        match ev {
                            Event::Token { .. } => {
                                first.get_or_insert_with(Instant::now);
                            }
                            Event::Done { completion_tokens, .. } => {
                                let first =
                                    first.ok_or_else(|| failed("a sequence ended without a token"))?;
                                return Ok((first, Instant::now(), completion_tokens));
                            }
                            Event::Error(e) => {
                                return Err(failed(&format!("the engine failed a sequence: {e}")));
                            }
                            _ => {}
                        }
                    }
                    Err(failed("the engine dropped a sequence"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(failed("a reader panicked")))).collect()
    });
    let per_seq = per_seq.into_iter().collect::<Result<Vec<_>>>()?;
    let start = per_seq.iter().map(|s| s.0).min().ok_or_else(|| failed("no sequences"))?;
    let end = per_seq.iter().map(|s| s.1).max().ok_or_else(|| failed("no sequences"))?;
    let tokens: usize = per_seq.iter().map(|s| s.2.saturating_sub(1)).sum();
    if per_seq.iter().any(|s| s.2 != max_tokens) {
        return Err(failed("a sequence stopped before --max-tokens; the comparison needs equal lengths"));
    }
    Ok((tokens as f64 / (end - start).as_secs_f64().max(1e-9), tokens))
}

fn failed(what: &str) -> BenchError {
    BenchError::Failed(what.to_string())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn run(b: &StructuredBench) -> Result<()> {
    if b.reps == 0 || b.streams.iter().any(|&s| s == 0 || s > PROMPTS.len()) {
        return Err(BenchError::InvalidSetting(format!(
            "--reps must be at least 1 and --streams between 1 and {}",
            PROMPTS.len()
        )));
    }
    let path = ferrotune_model::store::resolve(&b.model)?;
    let m = ferrotune_model::load_path(&path, WeightMode::F32, &candle_core::Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            let text = m.render_chat(&[Message::new("user", (*p).to_string())], true)?;
            Ok(m.tokenizer.encode(&text, false)?)
        })
        .collect::<Result<_>>()?;
    let engine = engine::start(m, b.model.clone(), EngineConfig::default());
    let t = Instant::now();
    let grammars = engine.info().grammars()?;
    let trie_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let constraint = grammars.compile(&JsonFormat::JsonSchema { schema: schema() })?;
    let compile_secs = t.elapsed().as_secs_f64();
    println!(
        "bench structured: {} | {} tokens per sequence, greedy | {} reps | trie + slices {:.2} s, schema compile {:.3} s | load {}",
        path.display(),
        b.max_tokens,
        b.reps,
        trie_secs,
        compile_secs,
        load_average()
    );
    // Warm-up (first-touch of caches and buffers) is not measured.
    run_once(&engine, &prompts[..1], 8, None)?;
    run_once(&engine, &prompts[..1], 8, Some(&constraint))?;
    println!("{:>8} {:>16} {:>16} {:>8}", "streams", "free tok/s", "schema tok/s", "ratio");
    let mut results = Vec::new();
    for &n in &b.streams {
        let (mut free, mut held) = (Vec::new(), Vec::new());
        let load_before = load_average();
        for _ in 0..b.reps {
            free.push(run_once(&engine, &prompts[..n], b.max_tokens, None)?.0);
            held.push(run_once(&engine, &prompts[..n], b.max_tokens, Some(&constraint))?.0);
        }
        let (f, h) = (median(&free), median(&held));
        println!("{n:>8} {f:>16.1} {h:>16.1} {:>7.3}x", h / f);
        results.push(json!({"streams": n, "free_tok_s": free, "schema_tok_s": held, "free_median": f, "schema_median": h,
                            "ratio": h / f, "load_before": load_before, "load_after": load_average()}));
    }
    if let Some(out) = &b.out {
        let commit = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok();
        let commit =
            commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        let doc = json!({
            "bench": "structured",
            "date": ferrotune_train::lineage::now_rfc3339(),
            "commit": commit,
            "model": b.model,
            "weights": "f32",
            "threads": candle_core::utils::get_num_threads(),
            "max_tokens": b.max_tokens,
            "reps": b.reps,
            "decoding": "greedy; free text ignores EOS, the schema needs >= 100 records: both generate max_tokens per sequence",
            "schema": schema(),
            "trie_and_slices_secs": trie_secs,
            "schema_compile_secs": compile_secs,
            "results": results,
        });
        std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
            .map_err(|e| BenchError::io(format!("writing {}", out.display()), e))?;
    }
    Ok(())
}
