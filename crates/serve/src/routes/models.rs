//! `GET /v1/models` (the base, its adapters, the embedder) and vLLM's runtime adapter endpoints
//! `POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (admin scope; bodies
//! `{"lora_name","lora_path"}`; plain-text success answers, as vLLM gives).

use std::path::PathBuf;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::{LoadAdapterRequest, UnloadAdapterRequest};

/// Adapter names are what clients put in `model`: keep them to a safe alphabet.
pub fn check_adapter_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok { Ok(()) } else { Err(format!("adapter name `{name}`: use 1-128 letters, digits, '-', '_', '.', ':' or '/'")) }
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let created = state.started_unix;
    let base = state.model_name().to_string();
    let ctx = state.engine.info().context_len;
    let mut data = Vec::new();
    let visible = |name: &str| caller.check_model(name).is_ok();
    if visible(&base) {
        data.push(json!({"id": base, "object": "model", "created": created, "owned_by": "ferrotune", "root": base, "parent": null, "max_model_len": ctx}));
    }
    for a in state.engine.adapters() {
        if visible(&a) {
            data.push(json!({"id": a, "object": "model", "created": created, "owned_by": "ferrotune", "root": a, "parent": base, "max_model_len": ctx}));
        }
    }
    if let Some(e) = &state.embedder
        && visible(&e.name)
    {
        data.push(json!({"id": e.name, "object": "model", "created": created, "owned_by": "ferrotune", "root": e.name, "parent": null}));
    }
    Json(json!({"object": "list", "data": data}))
}

pub async fn load_adapter(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<LoadAdapterRequest>,
) -> Result<String, ApiError> {
    caller.check_admin()?;
    check_adapter_name(&req.lora_name).map_err(|m| ApiError::field("lora_name", m))?;
    let taken = req.lora_name == state.model_name() || state.embedder.as_ref().is_some_and(|e| e.name == req.lora_name);
    if taken {
        return Err(ApiError::field("lora_name", "is the name of a served model"));
    }
    if state.engine.adapters().contains(&req.lora_name) {
        return Err(ApiError::field("lora_name", format!("an adapter named `{}` is already loaded; unload it first", req.lora_name)));
    }
    let dir = PathBuf::from(&req.lora_path);
    if !dir.join("adapter_config.json").is_file() {
        return Err(ApiError::field("lora_path", "is not a PEFT adapter directory (no adapter_config.json)"));
    }
    state
        .load_adapter(&req.lora_name, &dir)
        .await
        .map_err(|m| ApiError::field("lora_path", format!("could not load the adapter: {m}")))?;
    tracing::info!(adapter = %req.lora_name, path = %req.lora_path, "adapter loaded");
    Ok(format!("Success: LoRA adapter '{}' added successfully.", req.lora_name))
}

pub async fn unload_adapter(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UnloadAdapterRequest>,
) -> Result<String, ApiError> {
    caller.check_admin()?;
    if !state.engine.adapters().contains(&req.lora_name) {
        return Err(ApiError::NotFound(format!("no adapter named `{}` is loaded", req.lora_name)));
    }
    state
        .unload_adapter(&req.lora_name)
        .await
        .map_err(|m| ApiError::field("lora_name", format!("could not unload the adapter: {m}")))?;
    tracing::info!(adapter = %req.lora_name, "adapter unloaded");
    Ok(format!("Success: LoRA adapter '{}' removed successfully.", req.lora_name))
}
