//! Serving: a running `ferrotune serve`'s `/metrics` (Prometheus text) reduced to the numbers an
//! operator looks at first, and a link to a Grafana dashboard for the rest.
//!
//! The fetch is plain HTTP/1.0 over a socket (a `/metrics` on the same host or network; no TLS,
//! no redirects) with a 3-second limit, and only the path `/metrics` of the address given is
//! read — the page never turns into a proxy for other URLs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth;
use crate::error::UiError;
use crate::layout::page;
use crate::state::AppState;

const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BODY: u64 = 8 << 20;

/// `http://host[:port][/prefix]` → (host, port, path of its `/metrics`).
pub fn metrics_target(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .trim()
        .strip_prefix("http://")
        .ok_or("the address must start with http:// (TLS is not supported here)")?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || authority.contains('@') {
        return Err("expected http://HOST:PORT".into());
    }
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| format!("`{p}` is not a port"));
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), port_of(p)?),
            None if after.is_empty() => (h.to_string(), 80),
            None => return Err("expected http://[ADDRESS]:PORT".into()),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), port_of(p)?),
            None => (authority.to_string(), 80),
        }
    };
    let base = path.trim_end_matches('/').trim_end_matches("metrics").trim_end_matches('/');
    let path = if base.is_empty() { "/metrics".to_string() } else { format!("/{base}/metrics") };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path holds spaces or control characters".into());
    }
    Ok((host, port, path))
}

async fn fetch(url: &str, key: Option<&str>) -> Result<String, String> {
    let (host, port, path) = metrics_target(url)?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        // HTTP/1.0: the answer ends when the connection closes, never chunked.
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: text/plain\r\n{auth}\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, io)
        .await
        .map_err(|_| format!("no answer from {host}:{port} within {} s", TIMEOUT.as_secs()))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.lines().next().unwrap_or("");
    let code: u16 =
        status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not an HTTP answer")?;
    match code {
        200 => Ok(body.to_string()),
        401 | 403 => Err(format!(
            "{path} answered {code}: the server wants an API key (start `ferrotune ui` with FERROTUNE_UI_SERVE_KEY set)"
        )),
        _ => Err(format!("{path} answered `{status}`")),
    }
}

/// Each metric's samples summed over their labels (`name{labels} value` lines; comments skipped).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], line[i..].rsplit_once('}').map_or("", |(_, r)| r)),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// (label, value) for the headline numbers.
pub fn key_numbers(m: &BTreeMap<String, f64>) -> Vec<(&'static str, String)> {
    let get = |n: &str| m.get(&format!("ferrotune:{n}")).copied();
    let mean = |n: &str| Some(get(&format!("{n}_sum"))? / get(&format!("{n}_count")).filter(|c| *c > 0.0)?);
    let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.1} ms", v * 1e3));
    let count = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
    let hit_rate = match (get("response_cache_hits_total"), get("response_cache_misses_total")) {
        (Some(h), Some(mi)) if h + mi > 0.0 => format!("{:.1}%", 100.0 * h / (h + mi)),
        _ => "—".into(),
    };
    vec![
        ("requests running", count(get("num_requests_running"))),
        ("requests waiting", count(get("num_requests_waiting"))),
        ("KV cache used", get("kv_cache_usage_perc").map_or("—".into(), |v| format!("{:.0}%", v * 100.0))),
        ("finished generations", count(get("request_success_total"))),
        ("failed requests", count(get("failed_requests_total"))),
        ("rate-limited requests", count(get("rate_limited_requests_total"))),
        ("generated tokens", count(get("generation_tokens_total"))),
        ("prompt tokens", count(get("prompt_tokens_total"))),
        ("mean time to first token", ms(mean("time_to_first_token_seconds"))),
        ("mean inter-token latency", ms(mean("inter_token_latency_seconds"))),
        ("mean request latency", ms(mean("e2e_request_latency_seconds"))),
        ("response cache hit rate", hit_rate),
    ]
}

#[derive(Deserialize, Default)]
pub struct ServingQuery {
    #[serde(default)]
    url: String,
    #[serde(default)]
    grafana: String,
}

pub async fn show(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ServingQuery>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let url =
        if q.url.trim().is_empty() { "http://127.0.0.1:8000".to_string() } else { q.url.trim().to_string() };
    let fetched = if q.url.trim().is_empty() {
        None
    } else {
        Some(fetch(&url, st.cfg.serve_key.as_deref()).await.map(|t| parse_prometheus(&t)))
    };
    // Only web addresses become links (never `javascript:` or `data:`).
    let grafana = q.grafana.trim();
    let grafana_ok = grafana.starts_with("http://") || grafana.starts_with("https://");
    let body = html! {
        h1 { "Serving" }
        form.stack method="get" action="/serving" {
            label for="url" { "Server address (its " code { "/metrics" } " is read)" }
            input #url type="url" name="url" value=(url) size="50";
            label for="grafana" { "Grafana dashboard (optional link)" }
            input #grafana type="url" name="grafana" value=(q.grafana) size="50";
            p { button.primary type="submit" { "Show" } }
        }
        @if grafana_ok { p { a href=(grafana) rel="noopener noreferrer" { "Open the Grafana dashboard" } } }
        @else if !grafana.is_empty() { p.error { "The Grafana link must start with http:// or https://." } }
        @match &fetched {
            None => p.muted { "Give the address of a running " code { "ferrotune serve" } " to see its numbers." },
            Some(Err(e)) => p.error role="alert" { (e) },
            Some(Ok(m)) if !m.keys().any(|k| k.starts_with("ferrotune:")) => p.notice { "That /metrics holds no ferrotune metrics." },
            Some(Ok(m)) => {
                p.muted { "From " code { (url) } ", summed over models and adapters; reload for new numbers." }
                div.tiles { @for (label, v) in key_numbers(m) { div.tile { div.muted { (label) } div.v { (v) } } } }
            },
        }
    };
    Ok(page("Serving", "/serving", viewer.as_ref(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_are_read_as_host_port_and_metrics_path() {
        assert_eq!(
            metrics_target("http://127.0.0.1:8000").ok(),
            Some(("127.0.0.1".into(), 8000, "/metrics".into()))
        );
        assert_eq!(metrics_target("http://h:9/metrics").ok(), Some(("h".into(), 9, "/metrics".into())));
        assert_eq!(metrics_target("http://h/prefix/").ok(), Some(("h".into(), 80, "/prefix/metrics".into())));
        assert_eq!(metrics_target("http://[::1]:8000").ok(), Some(("::1".into(), 8000, "/metrics".into())));
        assert!(metrics_target("https://h").is_err());
        assert!(metrics_target("javascript:alert(1)").is_err());
        assert!(metrics_target("http://user@h").is_err());
        assert!(metrics_target("http://h:x").is_err());
    }

    #[test]
    fn prometheus_samples_are_summed_over_labels() {
        let t = "# HELP x\nferrotune:prompt_tokens_total{model=\"a\",adapter=\"\"} 7\nferrotune:prompt_tokens_total{model=\"b\",adapter=\"x\"} 3\n\
                 ferrotune:time_to_first_token_seconds_sum{model=\"a\"} 0.5\nferrotune:time_to_first_token_seconds_count{model=\"a\"} 2\n";
        let m = parse_prometheus(t);
        assert_eq!(m["ferrotune:prompt_tokens_total"], 10.0);
        let k = key_numbers(&m);
        assert!(k.contains(&("prompt tokens", "10".into())), "{k:?}");
        assert!(k.contains(&("mean time to first token", "250.0 ms".into())), "{k:?}");
    }
}
