//! Who may write. Reading needs nothing; approve, reject, disable and enable need a session,
//! which the login form opens for whoever presents the admin key (`--admin-key-file` or
//! `FERROTUNE_UI_ADMIN_KEY`) with a name for the record (the actor becomes `ui:NAME`).
//!
//! - The key is kept only as its SHA-256 and compared in constant time over the digests (so
//!   neither its bytes nor its length leak through timing); a wrong key costs the caller half a
//!   second.
//! - The session cookie holds a random id, not the key (`HttpOnly`, `SameSite=Strict`); the
//!   server keeps the session for 8 hours or until logout.
//! - Every form that writes carries the session's CSRF token, checked in constant time.
//! - [`browser_checks`] runs before every route: a loopback-bound dashboard answers only to a
//!   loopback `Host` (DNS rebinding), a write whose `Origin` is another site is refused, and
//!   every answer carries a strict Content-Security-Policy (no inline script at all), so text
//!   that escaped escaping still could not run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;

use crate::error::UiError;
use crate::state::AppState;

pub const COOKIE: &str = "ferrotune_ui";
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Shorter keys are refused at start: the key is the only thing between a reader and a release.
pub const MIN_KEY_CHARS: usize = 16;

/// The admin key, kept as its digest.
pub struct AdminKey {
    digest: String,
}

impl AdminKey {
    /// The key as given (surrounding whitespace, such as a file's last newline, is not part of it).
    pub fn new(text: &str) -> Result<Self, String> {
        let key = text.trim();
        if key.chars().count() < MIN_KEY_CHARS {
            return Err(format!(
                "the admin key must be at least {MIN_KEY_CHARS} characters (it has {})",
                key.chars().count()
            ));
        }
        Ok(Self { digest: ferrotune_govern::sha256_hex(key.as_bytes()) })
    }

    pub fn matches(&self, given: &str) -> bool {
        constant_time_eq(
            ferrotune_govern::sha256_hex(given.trim().as_bytes()).as_bytes(),
            self.digest.as_bytes(),
        )
    }
}

/// Equal bytes, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// A logged-in visitor: the name they gave and their session's form token.
#[derive(Clone)]
pub struct Viewer {
    pub user: String,
    pub csrf: String,
}

impl Viewer {
    /// What the registry and the audit log record as the actor.
    pub fn actor(&self) -> String {
        format!("ui:{}", self.user)
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// A new session for `user`; returns its id (the cookie's value).
    pub fn open(&self, user: &str) -> String {
        let id = random_token();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(
            id.clone(),
            Session { user: user.to_string(), csrf: random_token(), expires: now + SESSION_LIFETIME },
        );
        id
    }

    pub fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    fn get(&self, id: &str) -> Option<Viewer> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = map.get(id).filter(|s| s.expires > Instant::now())?;
        Some(Viewer { user: s.user.clone(), csrf: s.csrf.clone() })
    }
}

/// The session id in the request's cookie, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The logged-in visitor, if the cookie names a live session.
pub fn viewer(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    state.sessions.get(&session_id(headers)?)
}

/// The actor for a write, or 403: writes need the admin key configured, a session, and the
/// session's form token.
pub fn authorize(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Viewer, UiError> {
    if state.cfg.admin_key.is_none() {
        return Err(UiError::Forbidden(
            "writes are off: start `ferrotune ui` with --admin-key-file FILE or FERROTUNE_UI_ADMIN_KEY set"
                .into(),
        ));
    }
    let v = viewer(state, headers)
        .ok_or_else(|| UiError::Forbidden("log in with the admin key first (/login)".into()))?;
    if !constant_time_eq(csrf.as_bytes(), v.csrf.as_bytes()) {
        return Err(UiError::Forbidden(
            "the form's token is not this session's: reload the page and try again".into(),
        ));
    }
    Ok(v)
}

/// A name for the record: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok { Ok(()) } else { Err("a name is 1 to 64 letters, digits, `.`, `_`, `-` or `@`".into()) }
}

pub fn set_cookie(id: &str) -> HeaderValue {
    let v =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_LIFETIME.as_secs());
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("ferrotune_ui=; Path=/"))
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("ferrotune_ui=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn browser_checks(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    if state.cfg.loopback && !is_loopback_host(&host) {
        return UiError::Forbidden(format!("this dashboard answers to localhost only, not to Host `{host}`"))
            .into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let origin = req.headers().get(header::ORIGIN).map(|o| o.to_str().unwrap_or("null").to_string());
        if let Some(o) = origin {
            let same = o.split_once("://").is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host));
            if !same {
                return UiError::Forbidden(format!("a write from another site (Origin `{o}`) is refused"))
                    .into_response();
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it Chromium sends `Origin: null` on the dashboard's own form posts.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_matches_itself_only() {
        let k = AdminKey::new("correct horse battery staple\n").expect("long enough");
        assert!(k.matches("correct horse battery staple"));
        assert!(!k.matches("correct horse battery stapl"));
        assert!(!k.matches(""));
        assert!(AdminKey::new("short").is_err());
    }

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for h in ["localhost", "localhost:8090", "127.0.0.1:8090", "127.1.2.3", "[::1]:8090", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["evil.example", "evil.example:8090", "10.0.0.1:8090", "", "localhost.evil.example"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn user_names_for_the_record_are_plain() {
        assert!(check_user("bob").is_ok());
        assert!(check_user("bob.smith@corp").is_ok());
        assert!(check_user("<b>").is_err());
        assert!(check_user("").is_err());
    }
}
