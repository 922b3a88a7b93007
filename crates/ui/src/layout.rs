//! The page shell (navigation, who is logged in), the stylesheet and the one script.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, html};

use crate::auth::Viewer;

const NAV: [(&str, &str); 6] = [
    ("/", "Runs"),
    ("/evals", "Evaluations"),
    ("/registry", "Registry"),
    ("/audit", "Audit"),
    ("/kb", "Knowledge bases"),
    ("/serving", "Serving"),
];

/// A whole page. `active` is the navigation entry's path.
pub fn page(title: &str, active: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ferrotune" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "ferrotune" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label) in &NAV {
                                li { a href=(href) aria-current=[(*href == active).then_some("page")] { (label) } }
                            }
                        }
                    }
                    div.who {
                        @if let Some(v) = viewer {
                            "Logged in as " strong { (v.actor()) }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/login" { "Log in" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// One path segment, percent-encoded (a run or artifact name may hold anything a file name can).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A query string from pairs, encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A number as a person reads it: 4 significant digits, no exponent for ordinary sizes.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() { "—".into() } else { format!("{v}") };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("static/app.js"),
    )
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("static/app.css"),
    )
}
