//! `GET /v1/models` (the base, its adapters, the registry's names, the embedder) and vLLM's runtime adapter endpoints
//! `POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (admin scope; bodies
//! `{"lora_name","lora_path"}`; plain-text success answers, as vLLM gives). `lora_path` must lie
//! under one of `adapter_roots` once `..` and symlinks are resolved.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::{Extension, Json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::{LoadAdapterRequest, UnloadAdapterRequest};
use crate::response::{ModelCard, ModelList, Object};

/// Adapter names are what clients put in `model`: keep them to a safe alphabet.
pub fn check_adapter_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("adapter name `{name}`: use 1-128 letters, digits, '-', '_', '.', ':' or '/'"))
    }
}

/// The adapter directory `lora_path` names, resolved, if it is a PEFT directory inside one of
/// `roots`. Every refusal is the same `None`, so a client learns nothing about paths outside the
/// roots (whether they exist, are folders, hold an adapter).
pub fn resolve_adapter_dir(lora_path: &str, roots: &[PathBuf]) -> Option<PathBuf> {
    if lora_path.is_empty() || roots.is_empty() {
        return None;
    }
    let dir = std::fs::canonicalize(Path::new(lora_path)).ok()?;
    let inside =
        roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|root| dir.starts_with(&root));
    (inside && dir.join("adapter_config.json").is_file()).then_some(dir)
}

/// One entry of `/v1/models`.
struct Listed {
    id: String,
    /// What it serves: itself, or a registry reference's version (`support@3`).
    root: String,
    /// The base an adapter runs on (`None` for the base and the embedder).
    parent: Option<String>,
    generates: bool,
}

/// What `caller` may put in `model`: the base, the adapters loaded by name, the registry's names
/// (`support` for each artifact with the default alias, every `support@alias`; not those
/// pointing at a disabled version), the embedder.
fn listing(state: &AppState, caller: &Caller) -> Vec<Listed> {
    let base = state.model_name().to_string();
    let mut out = vec![Listed { id: base.clone(), root: base.clone(), parent: None, generates: true }];
    // Registry versions loaded as `support@3` are listed through their references below.
    for a in state.engine.adapters().into_iter().filter(|a| !a.contains('@')) {
        out.push(Listed { id: a.clone(), root: a, parent: Some(base.clone()), generates: true });
    }
    if let Some(reg) = &state.registry {
        for (id, v) in reg.snapshot().listing(&reg.default_alias) {
            out.push(Listed { id, root: v.reference(), parent: Some(base.clone()), generates: true });
        }
    }
    if let Some(e) = &state.embedder {
        out.push(Listed { id: e.name.clone(), root: e.name.clone(), parent: None, generates: false });
    }
    out.retain(|m| caller.check_model(&m.id).is_ok());
    out
}

/// The names `caller` may use (for the 404 of an unknown model).
pub fn available(state: &AppState, caller: &Caller) -> Vec<String> {
    listing(state, caller).into_iter().map(|m| m.id).collect()
}

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, body = ModelList, links(
            ("chat" = (operation_id = "chat_completions",
                request_body = json!({"model": "$response.body#/data/0/id",
                    "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
                description = "Chat with a listed model")),
            ("complete" = (operation_id = "completions",
                request_body = json!({"model": "$response.body#/data/0/id", "prompt": "Hi", "max_tokens": 2}),
                description = "Complete with a listed model")),
            ("tokenize" = (operation_id = "tokenize",
                request_body = json!({"model": "$response.body#/data/0/id", "prompt": "Hi"}),
                description = "Tokenize for a listed model")))),
        crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Json<ModelList> {
    let ctx = state.engine.info().context_len;
    let data = listing(&state, &caller)
        .into_iter()
        .map(|m| ModelCard {
            id: m.id,
            object: Object::Model,
            created: state.started_unix,
            owned_by: "ferrotune".into(),
            root: m.root,
            parent: m.parent,
            max_model_len: m.generates.then_some(ctx),
        })
        .collect();
    Json(ModelList { object: Object::List, data })
}

#[utoipa::path(post, path = "/v1/load_lora_adapter", tag = "vllm",
    request_body = LoadAdapterRequest,
    responses((status = 200, description = "vLLM's plain-text success line", body = String, content_type = "text/plain"),
        crate::openapi::Failures),
    security(("api_key" = [])))]
pub async fn load_adapter(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<LoadAdapterRequest>,
) -> Result<String, ApiError> {
    caller.check_admin()?;
    check_adapter_name(&req.lora_name).map_err(|m| ApiError::field("lora_name", m))?;
    let taken = req.lora_name == state.model_name()
        || state.embedder.as_ref().is_some_and(|e| e.name == req.lora_name);
    if taken {
        return Err(ApiError::field("lora_name", "is the name of a served model"));
    }
    if state.engine.adapters().contains(&req.lora_name) {
        return Err(ApiError::field(
            "lora_name",
            format!("an adapter named `{}` is already loaded; unload it first", req.lora_name),
        ));
    }
    let roots = state.cfg.adapter_roots.clone();
    let path = req.lora_path.clone();
    let dir = tokio::task::spawn_blocking(move || resolve_adapter_dir(&path, &roots))
        .await
        .map_err(|_| ApiError::Internal)?;
    let Some(dir) = dir else {
        tracing::warn!(path = %req.lora_path, "refused an adapter path outside adapter_roots (or not an adapter)");
        return Err(ApiError::field(
            "lora_path",
            "must be a PEFT adapter directory (with adapter_config.json) inside one of the server's adapter_roots",
        ));
    };
    state
        .load_adapter(&req.lora_name, &dir, caller.actor())
        .await
        .map_err(|m| ApiError::field("lora_path", format!("could not load the adapter: {m}")))?;
    tracing::info!(adapter = %req.lora_name, path = %req.lora_path, "adapter loaded");
    Ok(format!("Success: LoRA adapter '{}' added successfully.", req.lora_name))
}

#[utoipa::path(post, path = "/v1/unload_lora_adapter", tag = "vllm",
    request_body = UnloadAdapterRequest,
    responses((status = 200, description = "vLLM's plain-text success line", body = String, content_type = "text/plain"),
        crate::openapi::Failures),
    security(("api_key" = [])))]
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
        .unload_adapter(&req.lora_name, caller.actor(), "requested")
        .await
        .map_err(|m| ApiError::field("lora_name", format!("could not unload the adapter: {m}")))?;
    tracing::info!(adapter = %req.lora_name, "adapter unloaded");
    Ok(format!("Success: LoRA adapter '{}' removed successfully.", req.lora_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_adapter_folders_inside_a_root_resolve_and_every_refusal_looks_the_same() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("adapters");
        let good = root.join("a");
        let outside = tmp.path().join("secret");
        for d in [&good, &outside, &root.join("empty")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(good.join("adapter_config.json"), "{}").expect("write");
        std::fs::write(outside.join("adapter_config.json"), "{}").expect("write");
        let roots = vec![root.clone()];
        let s = |p: &Path| p.display().to_string();
        assert_eq!(
            resolve_adapter_dir(&s(&good), &roots),
            Some(std::fs::canonicalize(&good).expect("canon"))
        );
        // `..` out of the root, a symlink out of the root, a missing path, a folder without an
        // adapter, the root list empty: all the same refusal.
        assert_eq!(resolve_adapter_dir(&s(&root.join("../secret")), &roots), None);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
            assert_eq!(resolve_adapter_dir(&s(&root.join("link")), &roots), None);
        }
        assert_eq!(resolve_adapter_dir(&s(&root.join("missing")), &roots), None);
        assert_eq!(resolve_adapter_dir(&s(&root.join("empty")), &roots), None);
        assert_eq!(resolve_adapter_dir(&s(&outside), &roots), None);
        assert_eq!(resolve_adapter_dir(&s(&good), &[]), None);
    }
}
