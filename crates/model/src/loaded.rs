//! A model ready to use: decoder, tokenizer, chat template and EOS set, loaded from a GGUF file
//! or an HF directory given by path or by installed-model name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use crate::chat::{ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMode;
use crate::{gguf, hf, store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfDir,
}

#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// Token ids that end a generation: the config's EOS plus `generation_config.json`'s.
    pub eos_ids: Vec<u32>,
    /// The resolved file or directory.
    pub path: PathBuf,
    pub format: Format,
    /// Every file the model was read from (for lineage hashes).
    pub files: Vec<PathBuf>,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Render a chat with the model's template, ready for generation.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.chat_template.as_ref().ok_or_else(|| {
            ModelError::Template(format!("{} has no chat template; use a plain prompt", self.path.display()))
        })?;
        t.render(messages, add_generation_prompt)
    }
}

/// Load a model by name (installed) or path, with linear layers in `mode`.
pub fn load(spec: &str, mode: WeightMode, device: &Device) -> Result<LoadedModel> {
    let path = store::resolve(spec)?;
    load_path(&path, mode, device)
}

pub fn load_path(path: &Path, mode: WeightMode, device: &Device) -> Result<LoadedModel> {
    if path.is_dir() {
        let m = hf::load(path, device)?;
        if mode == WeightMode::Quantized {
            tracing::info!(
                "{} holds unquantized weights; the quantized path needs a GGUF, using f32",
                path.display()
            );
        }
        let model = Llama::load(&m.weights, &m.config, WeightMode::F32, None)?;
        let TextModel { tokenizer, chat_template, eos_ids } = hf_text(&m)?;
        Ok(LoadedModel {
            model,
            tokenizer,
            chat_template,
            eos_ids,
            path: path.to_path_buf(),
            format: Format::HfDir,
            files: m.files,
        })
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let g = gguf::load(path, device)?;
        let model = Llama::load(&g.weights, &g.config, mode, g.rope_freq_factors.as_deref())?;
        let tokenizer = Tokenizer::from_json(&g.tokenizer_json)?.with_special(
            g.bos_token.clone(),
            g.eos_token.clone(),
            g.add_bos,
        );
        let chat_template = template(g.chat_template.as_deref(), &g.bos_token, &g.eos_token)?;
        Ok(LoadedModel {
            model,
            tokenizer,
            chat_template,
            eos_ids: g.config.eos_token_ids.clone(),
            path: path.to_path_buf(),
            format: Format::Gguf,
            files: vec![path.to_path_buf()],
        })
    } else {
        Err(ModelError::InvalidFile {
            path: path.to_path_buf(),
            what: "model".into(),
            reason: "expected a .gguf file or an HF directory with config.json".into(),
        })
    }
}

/// What the data stage needs of a model: tokenizer, chat template and the EOS set — without
/// the weights.
#[derive(Debug, Clone)]
pub struct TextModel {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// As [`LoadedModel::eos_ids`].
    pub eos_ids: Vec<u32>,
}

/// Tokenizer, chat template and EOS set (config, generation config and the EOS token's id) of
/// an HF directory.
fn hf_text(m: &hf::HfModel) -> Result<TextModel> {
    let tokenizer = Tokenizer::from_file(&m.tokenizer_file)?.with_special(
        m.bos_token.clone(),
        m.eos_token.clone(),
        m.add_bos,
    );
    let mut eos_ids = m.config.eos_token_ids.clone();
    eos_ids.extend(m.generation_eos.iter().copied());
    if let Some(id) = m.eos_token.as_deref().and_then(|e| tokenizer.token_to_id(e)) {
        eos_ids.push(id);
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let chat_template = template(m.chat_template.as_deref(), &m.bos_token, &m.eos_token)?;
    Ok(TextModel { tokenizer, chat_template, eos_ids })
}

/// Load a model's [`TextModel`] by name (installed) or path, reading no weights.
/// The configuration of a model (installed name, GGUF file or HF directory) without its weights:
/// `config.json`, or the GGUF's header.
pub fn load_config(spec: &str) -> Result<ModelConfig> {
    let path = store::resolve(spec)?;
    if path.is_dir() {
        ModelConfig::from_hf_file(&path.join("config.json"))
    } else {
        gguf::read_config(&path)
    }
}

pub fn load_text(spec: &str) -> Result<TextModel> {
    let path = store::resolve(spec)?;
    load_text_path(&path)
}

pub fn load_text_path(path: &Path) -> Result<TextModel> {
    if path.is_dir() {
        hf_text(&hf::load_text(path)?)
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let g = gguf::load_text(path)?;
        let tokenizer = Tokenizer::from_json(&g.tokenizer_json)?.with_special(
            g.bos_token.clone(),
            g.eos_token.clone(),
            g.add_bos,
        );
        let chat_template = template(g.chat_template.as_deref(), &g.bos_token, &g.eos_token)?;
        Ok(TextModel { tokenizer, chat_template, eos_ids: g.eos_ids })
    } else {
        Err(ModelError::InvalidFile {
            path: path.to_path_buf(),
            what: "model".into(),
            reason: "expected a .gguf file or an HF directory with config.json".into(),
        })
    }
}

fn template(
    src: Option<&str>,
    bos: &Option<String>,
    eos: &Option<String>,
) -> Result<Option<Arc<ChatTemplate>>> {
    src.map(|s| {
        ChatTemplate::new(s, bos.as_deref().unwrap_or(""), eos.as_deref().unwrap_or("")).map(Arc::new)
    })
    .transpose()
}
