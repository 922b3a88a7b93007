//! Every failure a page can meet, mapped here (and only here) to an HTTP status and a page.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrotune_govern::GovernError;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A write without the admin key, with a stale form token, or from another site.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Govern(#[from] GovernError),
    #[error(transparent)]
    Rag(#[from] ferrotune_rag::RagError),
    #[error(transparent)]
    Eval(#[from] ferrotune_eval::EvalError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Internal(String),
}

impl UiError {
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> UiError + '_ {
        move |source| UiError::Io { path: path.to_path_buf(), source }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::Govern(e) => match e {
                GovernError::NotFound(_) => StatusCode::NOT_FOUND,
                // A release rule said no (and the refusal is on record): the request was fine.
                GovernError::Refused(_) => StatusCode::CONFLICT,
                GovernError::Invalid { .. } => StatusCode::BAD_REQUEST,
                GovernError::Db { .. } | GovernError::Io { .. } | GovernError::BadFile { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            UiError::Rag(e) => match e {
                ferrotune_rag::RagError::NoKnowledgeBase { .. } => StatusCode::NOT_FOUND,
                ferrotune_rag::RagError::Query { .. }
                | ferrotune_rag::RagError::TooManyHits { .. }
                | ferrotune_rag::RagError::InvalidName(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            UiError::Eval(_) | UiError::Io { .. } | UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard page failed");
        }
        // The dashboard's users are the operators of these files: the message (a path, the
        // rule that refused) is what they need, as the CLI would print it.
        let title = status.canonical_reason().unwrap_or("Error");
        let body = maud::html! {
            h1 { (title) }
            p.error role="alert" { (self.to_string()) }
            p { a href="/" { "Back to the runs" } }
        };
        (status, crate::layout::page(title, "", None, body)).into_response()
    }
}
