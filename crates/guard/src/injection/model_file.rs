//! The classifier file: small, self-describing and checked.
//!
//! ```text
//! "FTINJECT" (8 bytes) | format version u32 | metadata length u32 | metadata (JSON, ModelInfo)
//! | 2^bits weights f32 | bias f32 | SHA-256 of everything before (32 bytes)
//! ```
//! All integers and floats little-endian. The checksum makes a truncated or corrupted file an
//! error naming the file instead of a detector that silently scores garbage. (Not safetensors:
//! one dense vector and a threshold do not need a tensor container, and the workspace reads
//! safetensors only for models.)

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::features::FEATURES_VERSION;
use crate::GuardError;

const MAGIC: &[u8; 8] = b"FTINJECT";
const FORMAT: u32 = 1;
/// More buckets than this is not a model this crate wrote (2^24 weights = 64 MiB).
const MAX_BITS: u32 = 24;
const MAX_META: usize = 1 << 20;

/// What the file says about itself: the features it expects, the operating threshold and how
/// it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The text → features recipe the weights were trained on (`features::FEATURES_VERSION`).
    pub features: u32,
    /// log2 of the number of hash buckets.
    pub bits: u32,
    /// Probability at or above which a text is flagged (chosen on the validation split).
    pub threshold: f32,
    /// Texts longer than this many bytes are scored on their first and last halves of it.
    pub max_bytes: usize,
    pub training: Option<TrainingRecord>,
}

/// How the weights came to be: enough to reproduce them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub train_rows: usize,
    pub train_sha256: String,
    pub validation_rows: usize,
    pub validation_sha256: String,
    pub epochs: usize,
    pub lr: f32,
    pub l2: f32,
    pub seed: u64,
    pub target_fpr: f64,
    /// On the validation split, with the threshold above (rules included).
    pub validation_recall: f64,
    pub validation_fpr: f64,
    pub validation_auroc: f64,
}

pub(crate) struct ModelParts {
    pub info: ModelInfo,
    pub weights: Vec<f32>,
    pub bias: f32,
}

pub(crate) fn encode(info: &ModelInfo, weights: &[f32], bias: f32) -> Vec<u8> {
    // ModelInfo holds only numbers and strings: serialising it cannot fail.
    let meta = serde_json::to_vec(info).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + 8 + meta.len() + weights.len() * 4 + 4 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    for w in weights {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&bias.to_le_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<ModelParts, GuardError> {
    let bad = |location: &str, reason: String| GuardError::InvalidFile {
        path: path.to_path_buf(),
        location: location.into(),
        reason,
    };
    if bytes.len() < 8 + 8 + 4 + 32 || &bytes[..8] != MAGIC {
        return Err(bad("header", "not an injection classifier file (expected the FTINJECT header)".into()));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum", "SHA-256 does not match: the file is truncated or corrupted".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let format = u32_at(8);
    if format != FORMAT {
        return Err(bad("format", format!("version {format}, this build reads version {FORMAT}")));
    }
    let meta_len = u32_at(12) as usize;
    if meta_len > MAX_META || 16 + meta_len > body.len() {
        return Err(bad("metadata", format!("length {meta_len} does not fit the file")));
    }
    let info: ModelInfo =
        serde_json::from_slice(&body[16..16 + meta_len]).map_err(|e| bad("metadata", e.to_string()))?;
    if info.features != FEATURES_VERSION {
        return Err(bad(
            "metadata.features",
            format!(
                "feature recipe {}, this build computes recipe {FEATURES_VERSION}: retrain with `ferrotune guard train`",
                info.features
            ),
        ));
    }
    if info.bits == 0 || info.bits > MAX_BITS {
        return Err(bad("metadata.bits", format!("{} is outside 1..={MAX_BITS}", info.bits)));
    }
    if !(info.threshold > 0.0 && info.threshold <= 1.0) {
        return Err(bad("metadata.threshold", format!("{} is outside (0, 1]", info.threshold)));
    }
    if info.max_bytes < 64 {
        return Err(bad("metadata.max_bytes", format!("{} is too small to score anything", info.max_bytes)));
    }
    let n = 1usize << info.bits;
    let rest = &body[16 + meta_len..];
    if rest.len() != n * 4 + 4 {
        return Err(bad(
            "weights",
            format!("{} bytes for 2^{} weights and a bias, expected {}", rest.len(), info.bits, n * 4 + 4),
        ));
    }
    let mut floats = rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let weights: Vec<f32> = floats.by_ref().take(n).collect();
    let bias = floats.next().unwrap_or(0.0);
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(bad("weights", format!("weight {i} is not finite")));
    }
    if !bias.is_finite() {
        return Err(bad("bias", "not finite".into()));
    }
    Ok(ModelParts { info, weights, bias })
}
