//! `POST /v1/embeddings` on the sentence embedder from `ferrotune-rag` (all-MiniLM-L6-v2 by
//! default): unit-length vectors as floats or, as the official clients ask by default, base64 of
//! little-endian f32. Runs on the blocking pool, a bounded number of batches at a time, so it
//! never stalls the async workers or starves the generation engine of every core.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use ferrotune_rag::Embedder;
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::{EmbeddingRequest, parse_embedding_input};
use crate::record::RequestRecord;
use crate::response::{EmbeddingData, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, Object};

/// Inputs per request at most.
pub const MAX_INPUTS: usize = 512;

pub struct EmbeddingModel {
    pub name: String,
    embedder: Embedder,
    /// For usage counts (the embedder truncates at its max_seq_length).
    tokenizer: tokenizers::Tokenizer,
    permits: Semaphore,
}

impl EmbeddingModel {
    pub fn new(name: String, embedder: Embedder) -> Self {
        let tokenizer = embedder.chunking_tokenizer();
        Self { name, embedder, tokenizer, permits: Semaphore::new(1) }
    }
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingResponse), crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<RequestRecord>>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    record.set_model(&req.model);
    let model = match &state.embedder {
        Some(e) if e.name == req.model => e.clone(),
        _ => return Err(ApiError::ModelNotFound(req.model, Vec::new())),
    };
    caller.check_model(&model.name)?;
    record.set_resolved(&model.name);
    let inputs = parse_embedding_input(&req.input)?;
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::field("input", format!("at most {MAX_INPUTS} inputs per request")));
    }
    if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
        return Err(ApiError::field(format!("input[{i}]"), "empty string"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(ApiError::field("encoding_format", "must be `float` or `base64`")),
    };
    let dim = model.embedder.dim();
    if req.dimensions.is_some_and(|d| d as usize != dim) {
        return Err(ApiError::field("dimensions", format!("this model gives {dim} dimensions only")));
    }
    record.set_prompt(|| inputs.join("\n---\n"));
    let permit = model.permits.acquire().await.map_err(|_| ApiError::ShuttingDown)?;
    let m = model.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let max = m.embedder.max_seq_length();
        let tokens: usize = refs
            .iter()
            .map(|s| m.tokenizer.encode_fast(*s, true).map_or(0, |e| e.get_ids().len().min(max)))
            .sum();
        m.embedder.embed(&refs).map(|v| (v, tokens))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::error!("embedding failed: {e}");
        ApiError::Internal
    })?;
    drop(permit);
    record.add_tokens(tokens, 0);
    let data = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| EmbeddingData {
            object: Object::Embedding,
            index: i,
            embedding: if base64 {
                EmbeddingVector::Base64(base64_f32(v))
            } else {
                EmbeddingVector::Float(v.iter().map(|&x| x.into()).collect())
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: Object::List,
        data,
        model: model.name.clone(),
        usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

/// Standard base64 (RFC 4648, padded) of the little-endian bytes, as OpenAI encodes vectors.
pub fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        // 1.0f32 = 00 00 80 3f; [1.0, 2.0] = 00 00 80 3f 00 00 00 40.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[]), "");
    }
}
