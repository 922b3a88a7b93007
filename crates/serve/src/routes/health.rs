//! `/health` (the process answers), `/ready` (engine thread alive, not shutting down), `/metrics`
//! (Prometheus text), and the OpenAI-shaped 404 / 405 for everything else. None needs a key.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;

pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(state): State<AppState>) -> Response {
    // A dead engine thread answers nothing; say so before anything else (the server exits once
    // drained, see `app::serve`).
    if !state.engine.is_alive() {
        return ApiError::Unavailable("the engine has stopped".into()).into_response();
    }
    if state.is_shutting_down() {
        return ApiError::ShuttingDown.into_response();
    }
    let stats = state.engine.stats();
    axum::Json(json!({
        "status": "ready",
        "model": state.model_name(),
        "adapters": stats.adapters,
        "running": stats.running,
        "waiting": stats.waiting,
    }))
    .into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.engine.stats());
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
