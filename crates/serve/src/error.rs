//! Every way a request can fail, mapped exhaustively to an HTTP status and OpenAI's error body
//! `{"error":{"message","type","code","param"}}`. Internal details never reach the client: engine
//! failures are logged and answered with a generic message.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::engine::SubmitError;
use crate::response::{ErrorBody, ErrorResponse};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A field has a bad value (400); `param` names it as a JSON path (`messages[0].content`).
    #[error("{message}")]
    InvalidField { param: String, message: String },
    /// The body is not JSON at all, or not an object (400).
    #[error("{0}")]
    InvalidJson(String),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("this API key may not use `{0}`")]
    ModelNotPermitted(String),
    #[error("this endpoint needs an API key with admin scope")]
    AdminOnly,
    #[error("this API key may not use the knowledge base `{0}`")]
    KnowledgeBaseNotPermitted(String),
    /// A field the key may not use (`logprobs`, `top_logprobs`, `echo`: they expose the model's
    /// token distribution), 403 naming it.
    #[error(
        "this API key may not use `{param}` (it exposes the model's token distribution); an operator can allow it with `ferrotune keys update --name KEY --logprobs true`"
    )]
    PermissionDenied { param: String },
    /// `[guards] prompt_injection = "block"` refused this content (400 naming the field); the
    /// detail is the rule or score, never the text.
    #[error("{param} looks like a prompt injection ({detail}) and this server refuses it")]
    PromptInjection { param: String, detail: String },
    /// Refused before routing (Host / Origin checks), 403.
    #[error("{0}")]
    Forbidden(String),
    #[error("POST bodies must be sent with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// The name, and the names the caller may use instead (empty: not listed).
    #[error("the model `{}` does not exist{}", .0, available_list(.1))]
    ModelNotFound(String, Vec<String>),
    /// A registry version switched off (`ferrotune registry disable`), 403.
    #[error("`{reference}` is disabled: {reason}")]
    ModelDisabled { reference: String, reason: String },
    /// A registry version this server cannot serve as an adapter (a full model), 409.
    #[error("`{reference}` is {what}; serve it as the base model instead (`ferrotune serve --model PATH`)")]
    NotServable { reference: String, what: String },
    /// A registry adapter trained on another base model than the one served, 409.
    #[error(
        "`{reference}` was trained on base model {wanted}, but this server serves {served} (its files' SHA-256 differ)"
    )]
    BaseModelMismatch { reference: String, wanted: String, served: String },
    /// A registry version's file does not hash to what the registry recorded (or is missing):
    /// refused (OWASP LLM03, supply chain), 503. `file` is relative to the artifact's folder.
    #[error(
        "refusing to load `{reference}`: {file} failed its integrity check (sha256 recorded in the registry {expected}, on disk {actual})"
    )]
    IntegrityCheckFailed { reference: String, file: String, expected: String, actual: String },
    #[error("{0}")]
    NotFound(String),
    #[error("this endpoint does not take that HTTP method")]
    MethodNotAllowed,
    #[error("rate limit reached ({what} per minute); retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { what: &'static str, retry_after: Duration },
    /// Per-key concurrency or fair-share limit (429, retry soon).
    #[error("{0}")]
    TooManyInFlight(String),
    #[error("the request did not finish within the server's request_timeout_s ({0} s)")]
    Timeout(f64),
    #[error("the server is busy (request queue full); retry later")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Unavailable(String),
    /// Logged in full where it happens; the client sees only this generic text.
    #[error("internal error while generating; see the server log (request id in x-request-id)")]
    Internal,
}

/// Put on error responses so the request log and the failure counter know why a request failed.
#[derive(Debug, Clone, Copy)]
pub struct FailureReason(pub &'static str);

/// Put beside [`FailureReason`]: the error's `code` (`model_not_found`, …), for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct FailureCode(pub &'static str);

impl ApiError {
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField { param: param.into(), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ModelNotPermitted(_)
            | Self::AdminOnly
            | Self::KnowledgeBaseNotPermitted(_)
            | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ModelDisabled { .. } | Self::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            Self::PromptInjection { .. } => StatusCode::BAD_REQUEST,
            Self::NotServable { .. } | Self::BaseModelMismatch { .. } => StatusCode::CONFLICT,
            Self::IntegrityCheckFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyInFlight(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ModelNotFound(..) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QueueFull | Self::ShuttingDown | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// (OpenAI `type`, `code`): the type groups errors the way OpenAI's clients expect.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidField { .. } => ("invalid_request_error", "invalid_value"),
            Self::InvalidJson(_) => ("invalid_request_error", "invalid_json"),
            Self::BodyTooLarge { .. } => ("invalid_request_error", "body_too_large"),
            Self::Unauthorized(_) => ("invalid_request_error", "invalid_api_key"),
            Self::ModelNotPermitted(_) => ("permission_error", "model_not_permitted"),
            Self::AdminOnly => ("permission_error", "admin_required"),
            Self::KnowledgeBaseNotPermitted(_) => ("permission_error", "knowledge_base_not_permitted"),
            Self::PermissionDenied { .. } => ("permission_error", "permission_denied"),
            Self::PromptInjection { .. } => ("invalid_request_error", "prompt_injection_detected"),
            Self::Forbidden(_) => ("permission_error", "forbidden"),
            Self::UnsupportedMediaType => ("invalid_request_error", "unsupported_media_type"),
            Self::TooManyInFlight(_) => ("rate_limit_error", "too_many_in_flight"),
            Self::Timeout(_) => ("server_error", "timeout"),
            Self::ModelNotFound(..) => ("invalid_request_error", "model_not_found"),
            Self::ModelDisabled { .. } => ("permission_error", "model_disabled"),
            Self::NotServable { .. } => ("invalid_request_error", "model_not_servable"),
            Self::BaseModelMismatch { .. } => ("invalid_request_error", "base_model_mismatch"),
            Self::IntegrityCheckFailed { .. } => ("server_error", "integrity_check_failed"),
            Self::NotFound(_) => ("invalid_request_error", "not_found"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            Self::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Self::QueueFull => ("server_error", "queue_full"),
            Self::ShuttingDown => ("server_error", "shutting_down"),
            Self::Unavailable(_) => ("server_error", "unavailable"),
            Self::Internal => ("server_error", "internal_error"),
        }
    }

    /// The label of the failed-requests counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidField { .. }
            | Self::InvalidJson(_)
            | Self::BodyTooLarge { .. }
            | Self::MethodNotAllowed
            | Self::UnsupportedMediaType => "invalid_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::ModelNotPermitted(_)
            | Self::AdminOnly
            | Self::KnowledgeBaseNotPermitted(_)
            | Self::Forbidden(_)
            | Self::PermissionDenied { .. } => "forbidden",
            Self::PromptInjection { .. } => "guard",
            Self::TooManyInFlight(_) => "rate_limited",
            Self::Timeout(_) => "timeout",
            Self::ModelNotFound(..) | Self::NotFound(_) => "not_found",
            Self::ModelDisabled { .. } => "disabled",
            Self::NotServable { .. } | Self::BaseModelMismatch { .. } => "not_servable",
            Self::IntegrityCheckFailed { .. } => "integrity",
            Self::RateLimited { .. } => "rate_limited",
            Self::QueueFull => "queue_full",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidField { param, .. }
            | Self::PermissionDenied { param }
            | Self::PromptInjection { param, .. } => Some(param),
            Self::ModelNotFound(..)
            | Self::ModelNotPermitted(_)
            | Self::ModelDisabled { .. }
            | Self::NotServable { .. }
            | Self::BaseModelMismatch { .. } => Some("model"),
            Self::KnowledgeBaseNotPermitted(_) => Some("knowledge_base"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            Self::QueueFull | Self::TooManyInFlight(_) => Some(1),
            Self::ShuttingDown => Some(5),
            _ => None,
        }
    }

    /// OpenAI's `code` of the error body (`model_not_found`, `integrity_check_failed`, …).
    pub fn code(&self) -> &'static str {
        self.kind().1
    }

    /// The JSON body (also sent as an SSE event when a stream fails after it started).
    pub fn body(&self) -> ErrorResponse {
        let (kind, code) = self.kind();
        ErrorResponse {
            error: ErrorBody {
                message: self.to_string(),
                kind: kind.to_string(),
                code: code.to_string(),
                param: self.param().map(str::to_string),
            },
        }
    }

    /// Map an engine refusal; `model` is the name the client asked for.
    pub fn from_submit(e: SubmitError, model: &str) -> Self {
        match e {
            SubmitError::QueueFull => Self::QueueFull,
            SubmitError::UnknownAdapter(_) => Self::ModelNotFound(model.to_string(), Vec::new()),
            e @ SubmitError::TooLarge { .. } => Self::field("max_tokens", e.to_string()),
            e @ SubmitError::PromptTooLong { .. } => Self::field("prompt", e.to_string()),
            SubmitError::ShuttingDown => Self::ShuttingDown,
        }
    }
}

/// `; available: a, b, c` (at most 20 names, then how many more).
fn available_list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "; available: {}",
        names.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ")
    );
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more (GET /v1/models)", names.len() - SHOWN));
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::Unauthorized(_)) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(FailureReason(self.reason()));
        resp.extensions_mut().insert(FailureCode(self.code()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_body_has_the_openai_shape() {
        let all = [
            ApiError::field("messages[0].role", "bad"),
            ApiError::InvalidJson("x".into()),
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::Unauthorized("no key".into()),
            ApiError::ModelNotPermitted("m".into()),
            ApiError::AdminOnly,
            ApiError::KnowledgeBaseNotPermitted("kb".into()),
            ApiError::PermissionDenied { param: "logprobs".into() },
            ApiError::PromptInjection {
                param: "messages[2].content".into(),
                detail: "rule ignore_previous".into(),
            },
            ApiError::Forbidden("x".into()),
            ApiError::UnsupportedMediaType,
            ApiError::TooManyInFlight("x".into()),
            ApiError::Timeout(1.0),
            ApiError::ModelNotFound("m".into(), vec!["tiny".into()]),
            ApiError::ModelDisabled { reference: "s@2".into(), reason: "r".into() },
            ApiError::NotServable { reference: "s@2".into(), what: "a full model".into() },
            ApiError::BaseModelMismatch { reference: "s@2".into(), wanted: "a".into(), served: "b".into() },
            ApiError::IntegrityCheckFailed {
                reference: "s@2".into(),
                file: "f".into(),
                expected: "e".into(),
                actual: "a".into(),
            },
            ApiError::NotFound("x".into()),
            ApiError::MethodNotAllowed,
            ApiError::RateLimited { what: "requests", retry_after: Duration::from_millis(1500) },
            ApiError::QueueFull,
            ApiError::ShuttingDown,
            ApiError::Unavailable("x".into()),
            ApiError::Internal,
        ];
        for e in all {
            let b = serde_json::to_value(e.body()).expect("serialize");
            let err = &b["error"];
            assert!(err["message"].is_string() && err["type"].is_string() && err["code"].is_string(), "{b}");
            assert!(err.get("param").is_some(), "{b}");
        }
    }

    #[test]
    fn guard_refusals_name_their_field() {
        let b =
            ApiError::PromptInjection { param: "messages[2].content".into(), detail: "score 0.97".into() }
                .body()
                .error;
        assert_eq!(b.code, "prompt_injection_detected");
        assert_eq!(b.kind, "invalid_request_error");
        assert_eq!(b.param.as_deref(), Some("messages[2].content"));
        let e = ApiError::PermissionDenied { param: "echo".into() };
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let b = e.body().error;
        assert_eq!((b.code.as_str(), b.param.as_deref()), ("permission_denied", Some("echo")));
    }

    #[test]
    fn an_unknown_model_lists_what_is_available() {
        let e = ApiError::ModelNotFound("nope".into(), vec!["tiny".into(), "support".into()]);
        assert_eq!(e.to_string(), "the model `nope` does not exist; available: tiny, support");
        assert_eq!(
            ApiError::ModelNotFound("nope".into(), vec![]).to_string(),
            "the model `nope` does not exist"
        );
        let many: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
        assert!(
            ApiError::ModelNotFound("x".into(), many)
                .to_string()
                .ends_with("m19 and 5 more (GET /v1/models)")
        );
    }

    #[test]
    fn rate_limit_rounds_retry_after_up() {
        let e = ApiError::RateLimited { what: "requests", retry_after: Duration::from_millis(1500) };
        assert_eq!(e.retry_after(), Some(2));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
