//! Log in with the admin key and a name for the record; log out.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth;
use crate::error::UiError;
use crate::layout::page;
use crate::state::AppState;

fn form(st: &AppState, user: &str, error: Option<&str>) -> Markup {
    let writable = st.cfg.admin_key.is_some();
    html! {
        h1 { "Log in" }
        @if !writable {
            p.notice { "Writes are off: this dashboard was started without an admin key ("
                code { "--admin-key-file FILE" } " or " code { "FERROTUNE_UI_ADMIN_KEY" } "). Everything else reads without logging in." }
        } @else {
            p { "Approving, rejecting, disabling and enabling need the admin key. Your name goes on the record as " code { "ui:NAME" } "." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.stack method="post" action="/login" {
                label for="user" { "Your name" }
                input #user type="text" name="user" value=(user) required autocomplete="username";
                label for="key" { "Admin key" }
                input #key type="password" name="key" required autocomplete="current-password";
                p { button.primary type="submit" { "Log in" } }
            }
        }
    }
}

pub async fn login_form(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Markup {
    let viewer = auth::viewer(&st, &headers);
    page("Log in", "/login", viewer.as_ref(), form(&st, "", None))
}

#[derive(Deserialize)]
pub struct Login {
    #[serde(default)]
    user: String,
    #[serde(default)]
    key: String,
}

pub async fn login(State(st): State<Arc<AppState>>, Form(f): Form<Login>) -> Response {
    let Some(admin) = &st.cfg.admin_key else {
        return UiError::Forbidden("writes are off: no admin key was given to `ferrotune ui`".into())
            .into_response();
    };
    let user = f.user.trim();
    if let Err(e) = auth::check_user(user) {
        return (StatusCode::BAD_REQUEST, page("Log in", "/login", None, form(&st, "", Some(&e))))
            .into_response();
    }
    if !admin.matches(&f.key) {
        // Slows guessing; the comparison itself is constant-time.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return (
            StatusCode::FORBIDDEN,
            page("Log in", "/login", None, form(&st, user, Some("That is not the admin key."))),
        )
            .into_response();
    }
    let id = st.sessions.open(user);
    ([(header::SET_COOKIE, auth::set_cookie(&id))], Redirect::to("/registry")).into_response()
}

#[derive(Deserialize)]
pub struct Logout {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap, Form(f): Form<Logout>) -> Response {
    if let Err(e) = auth::authorize(&st, &headers, &f.csrf) {
        return e.into_response();
    }
    if let Some(id) = auth::session_id(&headers) {
        st.sessions.close(&id);
    }
    ([(header::SET_COOKIE, auth::clear_cookie())], Redirect::to("/")).into_response()
}
