//! The Redis response cache against a real `redis-server` (Debian package `redis-server`; CI
//! starts one per test here). Skipped, saying so, when the binary is not installed — a failure
//! under FERROTUNE_REQUIRE_REDIS=1 (CI) — and a failure everywhere when it is installed but does
//! not start.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{MODEL, Opts, metric_value, start};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh `redis-server` and its URL; `None` (SKIPPED) only when the binary is not installed and
/// FERROTUNE_REQUIRE_REDIS is not set. One that is installed but does not come up fails the test.
async fn redis_server() -> Option<(Redis, String)> {
    let port = free_port();
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let missing = "redis-server is not installed (apt-get install redis-server)";
            ferrotune_model::testing::skip_or_fail(ferrotune_model::testing::REQUIRE_REDIS, missing);
            return None;
        }
        Err(e) => panic!("redis-server did not start: {e}"),
    };
    let mut r = Redis(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Some((r, format!("redis://127.0.0.1:{port}/")));
        }
        if let Ok(Some(status)) = r.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = r.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("redis-server exited with {status} before accepting connections: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not accept connections on port {port} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_answers_through_redis() {
    let Some((_redis, url)) = redis_server().await else { return };
    let a = start(Opts { redis_url: Some(url.clone()), ..Opts::default() }).await;
    // The same model files, as replicas have (the cache key holds their digest).
    let b =
        start(Opts { redis_url: Some(url), model_dir: Some(a.model_dir.clone()), ..Opts::default() }).await;
    assert!(a.state.cache.is_redis());
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0});
    let (status, first) = a.post_json("/v1/chat/completions", Some(&a.keys.user), &body).await;
    assert_eq!(status, 200, "{first}");
    // The write is in the background; give it a moment.
    let mut hit = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_, v) = b.post_json("/v1/chat/completions", Some(&b.keys.user), &body).await;
        let m = b.metrics().await;
        if metric_value(&m, "ferrotune:response_cache_hits_total{model=\"tiny\",adapter=\"\"}") == 1.0 {
            hit = Some(v);
            break;
        }
    }
    let second = hit.expect("replica b answered from the entry replica a wrote");
    assert_eq!(first["choices"], second["choices"]);
    assert_ne!(first["id"], second["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_at_start_up() {
    let cfg = ferrotune_serve::config::CacheConfig {
        redis_url: Some(format!("redis://127.0.0.1:{}/", free_port())),
        ..Default::default()
    };
    assert!(ferrotune_serve::cache::ResponseCache::connect(&cfg).await.is_err());
}
