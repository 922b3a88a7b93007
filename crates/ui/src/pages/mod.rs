//! One module per page group. Handlers gather what they show on the blocking pool
//! ([`crate::state::blocking`]) and render it with maud, which escapes every interpolated string.

pub mod audit;
pub mod evals;
pub mod kb;
pub mod registry;
pub mod runs;
pub mod serving;
pub mod session;

use crate::error::UiError;

pub async fn not_found(uri: axum::http::Uri) -> UiError {
    UiError::NotFound(format!("no page at {}", uri.path()))
}
