//! Bearer-key authentication and per-key rate limits, as a middleware on the `/v1` routes.
//! Model and knowledge-base scope are checked by the handlers (only they know what a body names).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::ApiError;
use crate::keys::{ApiKey, KEY_PREFIX};
use crate::record::RequestRecord;

/// Who is calling: a key, or nobody when auth is off (then everything is allowed).
#[derive(Clone, Debug)]
pub struct Caller(pub Option<Arc<ApiKey>>);

impl Caller {
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if !k.may_use(model) => Err(ApiError::ModelNotPermitted(model.to_string())),
            _ => Ok(()),
        }
    }

    /// A knowledge base a request names: allowed with the key's `kbs` scope, or when it is the one
    /// serve.toml attaches to the (already permitted) model the request uses.
    pub fn check_kb(&self, kb: &str, attached_to_model: bool) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if !attached_to_model && !k.may_use_kb(kb) => {
                Err(ApiError::KnowledgeBaseNotPermitted(kb.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// `logprobs`, `top_logprobs`, `echo` (named by `field`): auth off, an admin key or a key with
    /// the `logprobs` permission; otherwise 403 naming the field (issue #20: the distribution
    /// helps extract the model or its training data).
    pub fn check_logprobs(&self, field: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if !k.may_see_logprobs() => Err(ApiError::PermissionDenied { param: field.to_string() }),
            _ => Ok(()),
        }
    }

    /// The key's name (what `[guards.keys.NAME]` matches); `None` when auth is off.
    pub fn key_name(&self) -> Option<&str> {
        self.0.as_ref().map(|k| k.name.as_str())
    }

    /// The audit log's actor: the key's name, or `anonymous` when auth is off.
    pub fn actor(&self) -> &str {
        self.0.as_ref().map_or(crate::audit::events::ANONYMOUS, |k| k.name.as_str())
    }

    pub fn check_admin(&self) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if !k.admin => Err(ApiError::AdminOnly),
            _ => Ok(()),
        }
    }
}

/// The live key a request presents (looked up in the database every time, so a revoke or a
/// changed limit applies to the next request): `Ok(None)` when auth is off, 401 when the key is
/// missing or invalid.
pub async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Option<ApiKey>, ApiError> {
    let Some(keys) = state.keys.clone() else {
        return Ok(None);
    };
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("missing API key: send `Authorization: Bearer <key>`".into()))?
        .to_string();
    let invalid = || ApiError::Unauthorized("invalid API key".into());
    if !secret.starts_with(KEY_PREFIX) {
        return Err(invalid());
    }
    let key = tokio::task::spawn_blocking(move || keys.lookup(&secret))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!("API key lookup failed: {e}");
            ApiError::Unavailable("the key database is unavailable".into())
        })?
        .ok_or_else(invalid)?;
    Ok(Some(key))
}

/// Past this point a request is who it says it is: an inference request is recorded in the
/// audit log from here on (a 429 of the key's limits included; a 401 is not — an unauthenticated
/// client could otherwise fill the log).
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = identify(&state, req.headers()).await?;
    if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
        record.set_reached();
        if let Some(key) = &key {
            record.set_key(key);
        }
    }
    let Some(key) = key else {
        req.extensions_mut().insert(Caller(None));
        return Ok(next.run(req).await);
    };
    state.limiter.admit(&key, Instant::now()).inspect_err(|e| state.metrics.count_rate_limited(e))?;
    req.extensions_mut().insert(Caller(Some(Arc::new(key))));
    Ok(next.run(req).await)
}
