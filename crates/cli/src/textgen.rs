//! `ferrotune generate` and `ferrotune tokenize`.

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ferrotune_model::constrain::{Constraint, Grammars, JsonFormat};
use ferrotune_model::store::DEFAULT_MODEL;
use ferrotune_model::{Format, GenerateParams, LoadedModel, Message, SamplingParams, WeightMode};

use crate::sampling::{OutputArgs, SamplingArgs};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum WeightsArg {
    /// Dequantize everything to f32: the path training and evaluation use (the default).
    F32,
    /// Keep a GGUF's quantized blocks (candle's quantized matmul, like llama.cpp): faster decode,
    /// activations quantized to 8 bits per block. HF directories always load in f32.
    Quantized,
}

impl WeightsArg {
    pub fn mode(self) -> WeightMode {
        match self {
            Self::F32 => WeightMode::F32,
            Self::Quantized => WeightMode::Quantized,
        }
    }
}

pub fn load(spec: &str, weights: WeightsArg) -> anyhow::Result<LoadedModel> {
    ferrotune_model::load(spec, weights.mode(), &candle_core::Device::Cpu)
        .with_context(|| format!("loading model {spec}"))
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model name (installed) or path to a GGUF file / HF directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Raw prompt, tokenized as is (BOS added when the model asks for it).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template (with the generation prompt).
    #[arg(long)]
    chat: Option<String>,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Sample among the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Penalty (> 0) on tokens already in the context, as in transformers; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Stop when the output contains this string (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating after EOS tokens (until --max-tokens).
    #[arg(long, conflicts_with_all = ["json", "json_schema"])]
    ignore_eos: bool,
    #[command(flatten)]
    output: OutputArgs,
    /// Weight path: f32 (reference, default) or quantized (GGUF blocks, faster).
    #[arg(long, value_enum, default_value_t = WeightsArg::F32)]
    weights: WeightsArg,
    /// Print token counts and speeds to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// LoRA adapter directory (PEFT format: adapter_config.json + adapter_model.safetensors),
    /// e.g. runs/NAME/adapter.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let mut m = load(&a.model, a.weights)?;
    if let Some(dir) = &a.adapter {
        let adapter = ferrotune_model::Adapter::load(dir, &mut m.model)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        adapter.attach(&mut m.model);
    }
    let prompt_ids = match (&a.prompt, &a.chat) {
        (Some(p), _) => m.tokenizer.encode(p, true)?,
        (None, Some(c)) => {
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(Message::new("system", s.clone()));
            }
            msgs.push(Message::new("user", c.clone()));
            let text = m.render_chat(&msgs, true)?;
            m.tokenizer.encode(&text, false)?
        }
        (None, None) => bail!("give --prompt or --chat"),
    };
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            top_k: a.top_k,
            repetition_penalty: a.repetition_penalty,
            ..a.sampling.params()
        },
        stop: a.stop.clone(),
        eos_ids: if a.ignore_eos { Vec::new() } else { m.eos_ids.clone() },
    };
    let constraint = output_constraint(&m, a.output.format()?)?;
    let constrained = constraint.is_some();
    let mut out = std::io::stdout().lock();
    let g = ferrotune_model::generate_constrained(
        &m.model,
        &m.tokenizer,
        &prompt_ids,
        &params,
        constraint,
        |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        },
    )?;
    let _ = writeln!(out);
    if a.stats {
        let n = g.tokens.len();
        eprintln!(
            "[{} prompt tokens, prefill {:.1} tok/s; {} generated, decode {:.1} tok/s; finish: {}; weights: {:?}{}]",
            g.prompt_tokens,
            g.prompt_tokens as f64 / g.prefill_secs.max(1e-9),
            n,
            n.saturating_sub(1) as f64 / g.decode_secs.max(1e-9),
            g.finish.as_str(),
            a.weights.mode(),
            if m.format == Format::Gguf { ", from GGUF" } else { "" },
        );
    }
    if constrained && g.finish == ferrotune_model::FinishReason::Length {
        bail!("--max-tokens {} ran out before the JSON was complete", a.max_tokens);
    }
    Ok(())
}

/// The constraint for `format` on this model's vocabulary; an unsupported schema is an error
/// naming what the grammar compiler refused.
pub fn output_constraint(m: &LoadedModel, format: Option<JsonFormat>) -> anyhow::Result<Option<Constraint>> {
    let Some(format) = format else { return Ok(None) };
    let grammars = Grammars::new(&m.tokenizer, m.config().vocab_size, &m.eos_ids)?;
    Ok(Some(grammars.compile(&format)?))
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model name (installed) or path to a GGUF file / HF directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Text to tokenize (special tokens like <|im_start|> become their ids); with --decode, a
    /// JSON array of ids.
    text: String,
    /// Decode a JSON array of ids back to text.
    #[arg(long)]
    decode: bool,
    /// Add BOS when the model asks for it (as for a plain prompt).
    #[arg(long)]
    add_bos: bool,
    /// Also print each token's string.
    #[arg(long, conflicts_with = "decode")]
    verbose: bool,
}

pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    // The tokenizer needs no weights in f32; quantized loading is cheaper.
    let m = load(&a.model, WeightsArg::Quantized)?;
    if a.decode {
        let ids: Vec<u32> = serde_json::from_str(&a.text)
            .context("--decode expects a JSON array of token ids, e.g. [1, 2, 3]")?;
        let vocab = m.tokenizer.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!("token id {bad} is outside the vocabulary (size {vocab})");
        }
        println!("{}", m.tokenizer.decode(&ids, false)?);
        return Ok(());
    }
    let ids = m.tokenizer.encode(&a.text, a.add_bos)?;
    println!("{}", serde_json::to_string(&ids)?);
    if a.verbose {
        for id in &ids {
            eprintln!("{id:>6}  {:?}", m.tokenizer.id_to_token(*id).unwrap_or_default());
        }
    }
    Ok(())
}
