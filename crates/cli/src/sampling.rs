//! The decoding flags `ferrotune generate` and `ferrotune eval` share: how tokens are sampled
//! ([`SamplingArgs`]) and structured output ([`OutputArgs`]).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use ferrotune_model::SamplingParams;
use ferrotune_model::constrain::JsonFormat;

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy (the default, reproducible).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling probability mass in (0, 1]; 1 = off. Only with --temperature > 0.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler (in `eval`, each row's sampler starts from it, and so does the
    /// bootstrap).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// These flags as sampling parameters (top-k and the repetition penalty off).
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Structured output: every answer is JSON valid against this JSON Schema file (constrained
    /// decoding, as the server's `response_format`: tokens that would break it are never sampled).
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    pub json_schema: Option<PathBuf>,
    /// Structured output: every answer is a JSON object.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// `--json` / `--json-schema FILE` as a structured-output format (`None`: free text).
    pub fn format(&self) -> anyhow::Result<Option<JsonFormat>> {
        if let Some(path) = &self.json_schema {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let schema: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            if !schema.is_object() {
                bail!("{}: a JSON Schema is a JSON object", path.display());
            }
            return Ok(Some(JsonFormat::JsonSchema { schema }));
        }
        Ok(self.json.then_some(JsonFormat::JsonObject))
    }
}
