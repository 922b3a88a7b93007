//! What a browser may do to the server, checked before any route runs. A web page the operator
//! visits can send requests to `127.0.0.1` too: a "simple" cross-origin POST (`text/plain`, no
//! preflight) reaches the handler even though the page cannot read the answer, and DNS
//! rebinding (a page's own name re-pointed at 127.0.0.1) makes the answers readable as well. So:
//!
//! - a request carrying an `Origin` that is not in `cors_allow_origins` is refused (403) —
//!   API clients (curl, the `openai` package) send no `Origin`; browsers always do on a POST;
//! - allowed origins get CORS headers and their preflight `OPTIONS` answered (tower-http);
//! - a POST must say `Content-Type: application/json` (415), so it cannot be a simple request;
//! - with auth off, `Host` must be a loopback name (localhost, 127.0.0.1, [::1], any port) or one
//!   of `allowed_hosts`: a rebound name carries the attacker's host name.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::AppState;
use crate::error::ApiError;

/// `scheme://host[:port]` with nothing after it, as browsers send `Origin`.
pub fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// The host part of a `Host` value (`[::1]:8000` → `[::1]`, `localhost:80` → `localhost`).
fn host_name(value: &str) -> &str {
    if value.starts_with('[') {
        return value.find(']').map_or(value, |i| &value[..=i]);
    }
    match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => value,
    }
}

pub fn is_loopback_host(value: &str) -> bool {
    let h = host_name(value).to_ascii_lowercase();
    matches!(h.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

fn host_allowed(state: &AppState, value: &str) -> bool {
    is_loopback_host(value)
        || state
            .cfg
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host_name(value)) || h.eq_ignore_ascii_case(value))
}

fn is_json(v: &HeaderValue) -> bool {
    v.to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Host, Origin and Content-Type checks (outside the CORS layer, which only adds headers).
pub async fn check(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.cfg.auth {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        match host {
            Some(h) if host_allowed(&state, h) => {}
            other => {
                tracing::warn!(
                    host = other.unwrap_or("-"),
                    "refused a request for a non-loopback Host with auth off"
                );
                return ApiError::Forbidden(
                    "this server answers only to localhost while auth is off (see allowed_hosts)".into(),
                )
                .into_response();
            }
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| state.cfg.cors_allow_origins.iter().any(|a| a == o));
        if !allowed {
            return ApiError::Forbidden(
                "cross-origin requests are refused unless the origin is in cors_allow_origins".into(),
            )
            .into_response();
        }
    }
    // Only where a POST is served: elsewhere the router's 404 / 405 is the answer (a POST to a
    // GET route answered 415 before the fix, telling a client to change the wrong thing).
    if req.method() == Method::POST
        && crate::app::takes_post(req.uri().path())
        && !req.headers().get(header::CONTENT_TYPE).is_some_and(is_json)
    {
        return ApiError::UnsupportedMediaType.into_response();
    }
    next.run(req).await
}

/// CORS headers and preflight answers for the allowed origins (none: no CORS headers at all).
pub fn cors(state: &AppState) -> CorsLayer {
    let origins: Vec<HeaderValue> =
        state.cfg.cors_allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([header::RETRY_AFTER, header::HeaderName::from_static("x-request-id")])
        .max_age(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_a_port() {
        for h in ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:9", "[::1]", "[::1]:8000"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in
            ["evil.com", "evil.com:8000", "localhost.evil.com", "127.0.0.1.nip.io", "[::2]:80", "0.0.0.0", ""]
        {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert!(is_origin("https://app.example.com") && is_origin("http://localhost:3000"));
        for bad in ["app.example.com", "https://a.com/", "https://a.com/x", "*", "https://", "null"] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
