//! `ferrotune ui`: a server-rendered dashboard over what ferrotune keeps on disk — run folders
//! (live loss curves over server-sent events), evaluations, the registry (approvals, the kill
//! switch), the audit log, knowledge bases and a running server's metrics.
//!
//! Pages are HTML from [`maud`] templates (every interpolated string is escaped) with charts
//! drawn as inline SVG on the server; the one script (`/static/app.js`) only swaps in re-rendered
//! charts as a run's `metrics.jsonl` grows, so every page reads without JavaScript. Writes
//! (approve, reject, disable, enable) need the admin key ([`auth`]) and are recorded through the
//! caller's audit hook ([`Trail`]), the same one the CLI's `registry` commands use.
//!
//! - [`state`]: the configuration and what the handlers share; [`app`] builds the router.
//! - [`auth`]: the admin key, sessions, CSRF tokens, the browser checks.
//! - [`runs`]: reading run folders; [`chart`]: the SVG line chart.
//! - [`pages`]: one module per page group.

pub mod auth;
pub mod chart;
pub mod error;
mod layout;
mod pages;
pub mod runs;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use error::UiError;
pub use state::{AppState, Trail, UiConfig};

/// Every route of the dashboard.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pages::runs::list))
        .route("/static/app.js", get(layout::script))
        .route("/static/app.css", get(layout::stylesheet))
        .route("/runs/{root}/{name}", get(pages::runs::show))
        .route("/runs/{root}/{name}/events", get(pages::runs::events))
        .route("/compare", get(pages::runs::compare))
        .route("/evals", get(pages::evals::list))
        .route("/eval", get(pages::evals::show))
        .route("/registry", get(pages::registry::index))
        .route("/registry/history/{name}", get(pages::registry::history))
        .route("/registry/version/{reference}", get(pages::registry::version))
        .route("/registry/approve", post(pages::registry::approve))
        .route("/registry/reject", post(pages::registry::reject))
        .route("/registry/disable", get(pages::registry::confirm_disable).post(pages::registry::disable))
        .route("/registry/enable", get(pages::registry::confirm_enable).post(pages::registry::enable))
        .route("/audit", get(pages::audit::index))
        .route("/audit/verify", get(pages::audit::verify))
        .route("/kb", get(pages::kb::list))
        .route("/kb/{name}", get(pages::kb::show))
        .route("/serving", get(pages::serving::show))
        .route("/login", get(pages::session::login_form).post(pages::session::login))
        .route("/logout", post(pages::session::logout))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::browser_checks))
        .with_state(state)
}

/// Serve the dashboard on `listener` until `shutdown` completes (open event streams are ended
/// then, so they do not hold the server open).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
