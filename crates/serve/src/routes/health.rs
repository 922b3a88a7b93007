//! `/health` (the process answers), `/ready` (engine thread alive, not shutting down), `/metrics`
//! (Prometheus text), and the OpenAI-shaped 404 / 405 for everything else.
//!
//! Model, adapter and knowledge-base names are not for anyone who can reach the port: when
//! `metrics_require_key` is on (the default with auth), `/metrics` needs a key and `/ready`
//! answers without one with counts only (load balancers need no key for it).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;
use crate::response::{HealthResponse, ReadyResponse};

#[utoipa::path(get, path = "/health", tag = "server",
    responses((status = 200, description = "The process answers", body = HealthResponse)))]
pub async fn health() -> Response {
    axum::Json(HealthResponse { status: "ok".into() }).into_response()
}

#[utoipa::path(get, path = "/ready", tag = "server",
    responses(
        (status = 200, description = "Ready; names only for a key allowed to see them", body = ReadyResponse),
        (status = 503, description = "The engine stopped or the server is shutting down", body = crate::response::ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn ready(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // A dead engine thread answers nothing; say so before anything else (the server exits once
    // drained, see `app::serve`).
    if !state.engine.is_alive() {
        return ApiError::Unavailable("the engine has stopped".into()).into_response();
    }
    if state.is_shutting_down() {
        return ApiError::ShuttingDown.into_response();
    }
    let stats = state.engine.stats();
    let mut body = ReadyResponse {
        status: "ready".into(),
        running: stats.running,
        waiting: stats.waiting,
        adapter_count: stats.adapters.len(),
        model: None,
        adapters: None,
    };
    let caller = if state.cfg.metrics_need_key() {
        crate::auth::identify(&state, &headers)
            .await
            .ok()
            .flatten()
            .map(|k| crate::auth::Caller(Some(k.into())))
    } else {
        Some(crate::auth::Caller(None))
    };
    if let Some(c) = caller {
        let visible = |m: &String| c.check_model(m).is_ok();
        body.model = Some(Some(state.model_name().to_string()).filter(visible));
        body.adapters = Some(stats.adapters.into_iter().filter(visible).collect());
    }
    axum::Json(body).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses(
        (status = 200, description = "Prometheus / OpenMetrics text", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "`metrics_require_key` is on and no valid key was sent", body = crate::response::ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.cfg.metrics_need_key()
        && let Err(e) = crate::auth::identify(&state, &headers).await
    {
        return e.into_response();
    }
    let text = state.metrics.render(&state.engine.stats());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
