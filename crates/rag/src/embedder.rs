//! The sentence embedder: a sentence-transformers directory (BERT `config.json`, `model.safetensors`,
//! `tokenizer.json`, `sentence_bert_config.json`, `1_Pooling/config.json`) run on our own [`BertModel`],
//! reproducing `SentenceTransformer.encode`: truncation at `max_seq_length` tokens (including
//! `[CLS]`/`[SEP]`), mean pooling over real tokens, L2 normalisation.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{BertConfig, BertModel, mean_pool_normalize};
use crate::error::{RagError, Result};

/// Texts per forward pass. Inputs are sorted by length first, so a batch pads to similar lengths.
pub const BATCH_SIZE: usize = 32;

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

pub struct Embedder {
    model: BertModel,
    /// Truncates at `max_seq_length`, never pads (batches are padded here).
    tokenizer: Tokenizer,
    max_seq_length: usize,
    device: Device,
    dir: PathBuf,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| RagError::io(path, e))?;
    serde_json::from_str(&s)
        .map_err(|e| RagError::Embedder { path: path.to_path_buf(), reason: e.to_string() })
}

impl Embedder {
    /// The installed default embedder (`all-minilm-l6-v2` in `$FERROTUNE_HOME/models`).
    pub fn load_default() -> Result<Self> {
        Self::load_named(ferrotune_model::store::DEFAULT_EMBEDDER)
    }

    /// A known model name from the store, or a path to a sentence-transformers directory.
    pub fn load_named(spec: &str) -> Result<Self> {
        Self::load(&ferrotune_model::store::resolve(spec)?)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let err = |reason: String| RagError::Embedder { path: dir.to_path_buf(), reason };
        let cfg: BertConfig = read_json(&dir.join("config.json"))?;
        cfg.validate().map_err(err)?;
        let st: SentenceBertConfig = read_json(&dir.join("sentence_bert_config.json"))?;
        if st.max_seq_length > cfg.max_position_embeddings || st.max_seq_length < 3 {
            return Err(err(format!(
                "max_seq_length {} outside 3..={} (max_position_embeddings)",
                st.max_seq_length, cfg.max_position_embeddings
            )));
        }
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let p: PoolingConfig = read_json(&pooling_path)?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(err("only mean pooling (pooling_mode_mean_tokens alone) is implemented".into()));
            }
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        // tokenizer.json ships with 128-token truncation and fixed padding; sentence-transformers
        // replaces both (truncation at max_seq_length, padding to the longest in the batch).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: st.max_seq_length, ..Default::default() }))
            .map_err(|e| err(format!("truncation: {e}")))?;
        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &device)
            .map_err(|e| RagError::Embedder { path: weights_path.clone(), reason: e.to_string() })?;
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let model = BertModel::load(vb, &cfg)
            .map_err(|e| RagError::Embedder { path: weights_path, reason: e.to_string() })?;
        Ok(Self { model, tokenizer, max_seq_length: st.max_seq_length, device, dir: dir.to_path_buf() })
    }

    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// Tokens per input including `[CLS]` and `[SEP]`; longer inputs are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokenizer with truncation switched off (for chunking by token count).
    pub fn chunking_tokenizer(&self) -> Tokenizer {
        let mut t = self.tokenizer.clone();
        t.with_padding(None);
        // Removing truncation cannot fail (only a too-long stride can).
        let _ = t.with_truncation(None);
        t
    }

    /// Unit-length embeddings, one per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, &mut |_| {})
    }

    /// As [`Self::embed`]; `progress` gets the number of texts done after each batch.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| RagError::Embedder { path: self.dir.clone(), reason: format!("tokenizing: {e}") })?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let mut out = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for batch in order.chunks(BATCH_SIZE) {
            let t = batch.iter().map(|&i| encodings[i].get_ids().len()).max().unwrap_or(0);
            let b = batch.len();
            let mut ids = vec![0u32; b * t];
            let mut types = vec![0u32; b * t];
            let mut mask = vec![0f32; b * t];
            for (row, &i) in batch.iter().enumerate() {
                let e = &encodings[i];
                for (j, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                    ids[row * t + j] = id;
                    types[row * t + j] = ty;
                    mask[row * t + j] = 1.0;
                }
            }
            let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
            let types = Tensor::from_vec(types, (b, t), &self.device)?;
            let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
            let hidden = self.model.forward(&ids, &types, &mask)?;
            let pooled = mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()?;
            for (&i, v) in batch.iter().zip(pooled) {
                out[i] = v;
            }
            done += b;
            progress(done);
        }
        Ok(out)
    }
}
