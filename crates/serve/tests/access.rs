//! Who may use what, over real HTTP: per-key concurrency and fair share, the per-request cap and
//! the deadline, token reservations, key changes on a running server, knowledge-base scope, what
//! `/ready` and `/metrics` tell strangers, browsers (Origin, Content-Type, Host), adapter roots.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrotune_serve::config::RagConfig;
use ferrotune_serve::keys::{ApiKey, KeyStore, KeyUpdate};
use serde_json::{Value, json};
use support::{MODEL, Opts, Server, metric_value, sse_data, start};

fn error_code(v: &Value) -> (&str, Option<&str>) {
    assert!(v["error"]["message"].is_string(), "not an OpenAI error body: {v}");
    (v["error"]["code"].as_str().unwrap_or(""), v["error"]["param"].as_str())
}

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        b[k] = v;
    }
    b
}

/// A new key on the running server, and its row (for its id).
fn new_key(s: &Server, key: ApiKey) -> (String, ApiKey) {
    let secret = s.store().create(&key).expect("create key");
    let row = s.store().lookup(&secret).expect("lookup").expect("live");
    (secret, row)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A long streaming request held open (not read) to keep its sequences in flight.
fn long_stream(n: u32) -> Value {
    json!({"model": MODEL, "prompt": "go", "max_tokens": 480, "ignore_eos": true, "temperature": 0, "stream": true, "n": n})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_may_not_start_more_sequences_than_the_server_allows() {
    let s = start(Opts { configure: |c| c.limits.max_sequences_per_request = 4, ..Opts::default() }).await;
    let body = json!({"model": MODEL, "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.user), &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_code(&v).1, Some("prompt"));
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("6 sequences") && msg.contains("max_sequences_per_request"), "{msg}");
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat(json!({"n": 5}))).await;
    assert_eq!((status, error_code(&v).1), (400, Some("n")), "{v}");
    let (status, v) = s
        .post_json(
            "/v1/completions",
            Some(&s.keys.user),
            &json!({"model": MODEL, "prompt": ["a", "b"], "n": 2, "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "4 sequences are allowed: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_hold_more_than_its_concurrency_or_its_share_of_the_engine() {
    // 1 running + 5 waiting = 6 sequences: a key alone may hold 3 of them.
    let engine = ferrotune_serve::engine::EngineConfig {
        max_batch: 1,
        kv_token_budget: 4096,
        queue_capacity: 5,
        ..Default::default()
    };
    let s = start(Opts { engine, cache: false, ..Opts::default() }).await;
    let (two, two_row) =
        new_key(&s, ApiKey { name: "two".into(), max_concurrent: Some(2), ..Default::default() });
    let (greedy, greedy_row) = new_key(&s, ApiKey { name: "greedy".into(), ..Default::default() });
    // The tiny model may finish a stream before the next request arrives: try until a request
    // is seen while the first one's sequences are still in flight.
    let mut refused = (false, false);
    for _ in 0..20 {
        // max_concurrent 2: n = 3 can never fit.
        let (status, v) = s
            .post_json(
                "/v1/completions",
                Some(&two),
                &json!({"model": MODEL, "prompt": "x", "n": 3, "max_tokens": 1}),
            )
            .await;
        assert_eq!((status, error_code(&v).1), (400, Some("n")), "{v}");
        if !refused.0 {
            let held = s.post("/v1/completions", Some(&two), &long_stream(2)).await;
            assert_eq!(held.status().as_u16(), 200);
            let in_flight = s.state.limiter.in_flight(two_row.id);
            let (status, v) = s
                .post_json(
                    "/v1/completions",
                    Some(&two),
                    &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
                )
                .await;
            // 200 is right too when the held stream ended between the look and the request.
            assert!(status == 200 || status == 429, "{status} {v}");
            if in_flight == 2 && status == 429 {
                assert_eq!(error_code(&v).0, "too_many_in_flight", "{v}");
                refused.0 = true;
            }
            drop(held);
        }
        if !refused.1 {
            // Fair share: 3 of the engine's 6 while alone, though its max_concurrent is 64.
            let held = s.post("/v1/completions", Some(&greedy), &long_stream(3)).await;
            assert_eq!(held.status().as_u16(), 200);
            let in_flight = s.state.limiter.in_flight(greedy_row.id);
            let (status, v) = s
                .post_json(
                    "/v1/completions",
                    Some(&greedy),
                    &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
                )
                .await;
            assert!(status == 200 || status == 429, "{status} {v}");
            if in_flight == 3 && status == 429 {
                assert!(v["error"]["message"].as_str().unwrap_or("").contains("fair share"), "{v}");
                // Another key still gets in.
                let (status, v) = s
                    .post_json(
                        "/v1/completions",
                        Some(&s.keys.user),
                        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
                    )
                    .await;
                assert_eq!(status, 200, "{v}");
                refused.1 = true;
            }
            drop(held);
        }
        if refused == (true, true) {
            break;
        }
        wait_until("the held streams are gone", || {
            s.state.limiter.in_flight(two_row.id) + s.state.limiter.in_flight(greedy_row.id) == 0
        })
        .await;
    }
    assert_eq!(refused, (true, true), "never refused a request beyond (max_concurrent, fair share)");
    let m = s.metrics().await;
    assert!(metric_value(&m, "ferrotune:rate_limited_requests_total{reason=\"sequences\"}") >= 2.0, "{m}");
    // Dropping a held stream frees its sequences.
    wait_until("the held streams are gone", || {
        s.state.limiter.in_flight(two_row.id) + s.state.limiter.in_flight(greedy_row.id) == 0
    })
    .await;
    let (status, v) = s
        .post_json(
            "/v1/completions",
            Some(&two),
            &json!({"model": MODEL, "prompt": "x", "n": 2, "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_504_or_an_error_event_in_its_stream() {
    let s = start(Opts { cache: false, configure: |c| c.limits.request_timeout_s = 0.01, ..Opts::default() })
        .await;
    let body = json!({"model": MODEL, "prompt": "go", "max_tokens": 480, "ignore_eos": true, "temperature": 0, "n": 4});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.user), &body).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(error_code(&v).0, "timeout");
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let resp = s.post("/v1/completions", Some(&s.keys.user), &sb).await;
    assert_eq!(resp.status().as_u16(), 200);
    let data = sse_data(&resp.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&data[data.len() - 2]).expect("json");
    assert_eq!(error_code(&err).0, "timeout", "{err}");
    let finished = data.iter().filter(|d| d.contains("\"finish_reason\":\"length\"")).count();
    assert!(finished < 4, "the sequences were cut short");
    // Their sequences are cancelled: the engine empties.
    wait_until("the engine is idle", || {
        let st = s.state.engine.stats();
        st.running == 0 && st.waiting == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reserved_at_admission_and_an_abandoned_stream_still_pays() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    // Regression: admission only checked a balance of one token.
    // 300 a minute refill 5 a second: bounds below allow for the time taken.
    let (k, row) = new_key(&s, ApiKey { name: "tpm".into(), tpm: Some(300), ..Default::default() });
    let body = |max: u32| json!({"model": MODEL, "prompt": "hi", "max_tokens": max, "ignore_eos": true, "temperature": 0});
    let t0 = Instant::now();
    let (status, v) = s.post_json("/v1/completions", Some(&k), &body(250)).await;
    assert_eq!(status, 200, "{v}");
    let used = v["usage"]["total_tokens"].as_u64().expect("usage") as f64;
    let left = s.state.limiter.tokens_left(&row, Instant::now()).expect("bucket");
    assert!(left <= 300.0 - used + 5.0 * t0.elapsed().as_secs_f64() + 0.01, "charged what was used: {left}");
    let (status, v) = s.post_json("/v1/completions", Some(&k), &body(100)).await;
    assert_eq!(status, 429, "{left} tokens left cannot cover 100 + the prompt: {v}");
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "ferrotune:rate_limited_requests_total{reason=\"tokens\"}"), 1.0, "{m}");

    // A stream abandoned after its first token pays for what was generated (600 a minute:
    // the reservation is capped at the bucket's 600; 10 a second refill).
    let (k, row) = new_key(&s, ApiKey { name: "leaver".into(), tpm: Some(600), ..Default::default() });
    let t0 = Instant::now();
    let mut resp = s
        .post(
            "/v1/completions",
            Some(&k),
            &json!({"model": MODEL, "prompt": "go", "max_tokens": 480, "ignore_eos": true, "stream": true, "n": 4}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    while !seen.contains("\"text\"") {
        let chunk = resp.chunk().await.expect("chunk").expect("more");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    wait_until("the abandoned stream's lease ends", || s.state.limiter.in_flight(row.id) == 0).await;
    let left = s.state.limiter.tokens_left(&row, Instant::now()).expect("bucket");
    // Charged: the prompt (≥ 1 token) and every token the client saw (≥ 1), less the refill.
    let received = sse_data(&seen).len() as f64;
    let bound = 600.0 - 1.0 - received + 10.0 * t0.elapsed().as_secs_f64() + 0.01;
    assert!(left <= bound, "charged too little: {left} left, bound {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_recreating_and_changing_a_key_apply_to_the_next_request() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    // Another connection to the file, as `ferrotune keys` in another process would open it.
    let cli = KeyStore::open(&s.path("keys.db")).expect("second connection");
    let secret =
        cli.create(&ApiKey { name: "dev".into(), rpm: Some(1), ..Default::default() }).expect("create");
    let body = chat(json!({}));
    assert_eq!(s.post_json("/v1/chat/completions", Some(&secret), &body).await.0, 200);
    assert_eq!(s.post_json("/v1/chat/completions", Some(&secret), &body).await.0, 429);
    // Regression: the bucket kept the limit it was created with.
    let t0 = Instant::now();
    cli.update("dev", &KeyUpdate { rpm: Some(Some(60)), ..Default::default() }).expect("update");
    let (status, v) = s.post_json("/v1/chat/completions", Some(&secret), &body).await;
    assert_eq!(status, 200, "{v}");
    cli.update("dev", &KeyUpdate { models: Some(vec!["elsewhere".into()]), ..Default::default() })
        .expect("update");
    assert_eq!(s.post_json("/v1/chat/completions", Some(&secret), &body).await.0, 403);
    cli.revoke("dev").expect("revoke");
    assert_eq!(s.post_json("/v1/chat/completions", Some(&secret), &body).await.0, 401);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // Regression: buckets were kept by name, so the new key inherited the spent one.
    let again =
        cli.create(&ApiKey { name: "dev".into(), rpm: Some(1), ..Default::default() }).expect("re-create");
    let (status, v) = s.post_json("/v1/chat/completions", Some(&again), &body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_bases_need_the_keys_scope_unless_attached_to_its_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rag = RagConfig {
        kb_dir: Some(tmp.path().to_path_buf()),
        attach: BTreeMap::from([(MODEL.to_string(), "attached".to_string())]),
        ..RagConfig::default()
    };
    let s = start(Opts { rag: Some(rag), cache: false, ..Opts::default() }).await;
    let (scoped, _) = new_key(&s, ApiKey { name: "hr".into(), kbs: vec!["hr".into()], ..Default::default() });
    let (all, _) = new_key(&s, ApiKey { name: "all".into(), kbs: vec!["*".into()], ..Default::default() });
    let ask = |kb: &str| chat(json!({"knowledge_base": kb}));
    // No scope: 403 naming the base, whether it exists or not.
    for kb in ["hr", "nope"] {
        let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &ask(kb)).await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(error_code(&v), ("knowledge_base_not_permitted", Some("knowledge_base")));
        assert!(v["error"]["message"].as_str().unwrap_or("").contains(kb), "{v}");
    }
    // Past the scope check the base is looked up (none exists here: 404).
    for (key, kb) in [(&scoped, "hr"), (&all, "nope"), (&s.keys.admin, "nope"), (&s.keys.user, "attached")] {
        let (status, v) = s.post_json("/v1/chat/completions", Some(key), &ask(kb)).await;
        assert_eq!(status, 404, "{kb}: {v}");
    }
    let (status, v) = s.post_json("/v1/chat/completions", Some(&scoped), &ask("nope")).await;
    assert_eq!(status, 403, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_metrics_name_nothing_to_a_caller_without_a_key() {
    let s = start(Opts::default()).await;
    let (status, body) = s.get("/ready", None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "ready");
    assert!(v["adapter_count"].is_u64() && v.get("model").is_none() && !body.contains(MODEL), "{body}");
    let (status, body) = s.get("/ready", Some(&s.keys.user)).await;
    assert_eq!(status, 200);
    assert!(body.contains(MODEL), "{body}");
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(MODEL));
    assert_eq!(s.get("/metrics", Some("ft-wrong")).await.0, 401);
    let (status, body) = s.get("/metrics", Some(&s.keys.user)).await;
    assert_eq!(status, 200);
    assert!(body.contains("ferrotune:num_requests_running"), "{body}");

    // The operator may open /metrics to a scraper without a key.
    let open = start(Opts { configure: |c| c.metrics_require_key = Some(false), ..Opts::default() }).await;
    assert_eq!(open.get("/metrics", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_need_json_an_allowed_origin_and_without_auth_a_loopback_host() {
    let s = start(Opts {
        auth: false,
        configure: |c| c.cors_allow_origins = vec!["http://app.example".into()],
        ..Opts::default()
    })
    .await;
    let url = |p: &str| format!("{}{p}", s.base);
    let body = chat(json!({})).to_string();
    let post = |ct: Option<&str>| {
        let mut r = s.client.post(url("/v1/chat/completions")).body(body.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r
    };
    // A page's "simple" request (no preflight): text/plain or no type at all.
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let r = post(ct).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 415, "{ct:?}");
    }
    assert_eq!(
        post(Some("application/json; charset=utf-8")).send().await.expect("send").status().as_u16(),
        200
    );

    // Cross-origin: refused unless allowed; allowed ones get CORS headers and preflights.
    let r =
        post(Some("application/json")).header("origin", "http://evil.example").send().await.expect("send");
    assert_eq!(r.status().as_u16(), 403);
    let r = s.client.get(url("/v1/models")).header("origin", "null").send().await.expect("send");
    assert_eq!(r.status().as_u16(), 403);
    let r = post(Some("application/json")).header("origin", "http://app.example").send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "http://app.example");
    let pre = |origin: &str| {
        s.client
            .request(reqwest::Method::OPTIONS, url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
    };
    let r = pre("http://app.example").await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "http://app.example");
    let methods = r.headers()["access-control-allow-methods"].to_str().unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    assert_eq!(pre("http://evil.example").await.expect("send").status().as_u16(), 403);

    // DNS rebinding: the page's own name pointed at 127.0.0.1 arrives as its Host.
    for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"] {
        let r = s.client.get(url("/v1/models")).header("host", host).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 403, "{host}");
    }
    for host in ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000"] {
        let r = s.client.get(url("/v1/models")).header("host", host).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    // With auth on the key is the guard; any Host is fine.
    let authed = start(Opts::default()).await;
    let r = authed
        .client
        .get(format!("{}/v1/models", authed.base))
        .bearer_auth(&authed.keys.user)
        .header("host", "api.example")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_adapters_load_only_from_adapter_roots_and_refusals_reveal_nothing() {
    let s = start(Opts::default()).await;
    let outside = tempfile::tempdir().expect("outside");
    let save = |dir: &std::path::Path| {
        let mut m = ferrotune_model::load_path(
            &s.path("model"),
            ferrotune_model::WeightMode::F32,
            &candle_core::Device::Cpu,
        )
        .expect("model");
        let a = ferrotune_model::Adapter::init(&mut m.model, &ferrotune_model::LoraSpec::default(), 1)
            .expect("adapter");
        a.save(dir, MODEL).expect("save");
    };
    save(&outside.path().join("a"));
    save(&s.path("inside"));
    #[cfg(unix)]
    std::os::unix::fs::symlink(outside.path().join("a"), s.path("link")).expect("symlink");
    let load = |p: String| json!({"lora_name": "x", "lora_path": p});
    // Both temp folders sit side by side: climb out of the root and into the other.
    let escape = format!(
        "{}/../{}/a",
        s.dir.path().display(),
        outside.path().file_name().and_then(|n| n.to_str()).expect("name")
    );
    let mut messages = Vec::new();
    for p in [
        outside.path().join("a").display().to_string(),
        escape,
        s.path("link").display().to_string(),
        outside.path().join("missing").display().to_string(),
        s.path("missing").display().to_string(),
        "/etc".to_string(),
    ] {
        let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.admin), &load(p.clone())).await;
        assert_eq!((status, error_code(&v).1), (400, Some("lora_path")), "{p}: {v}");
        messages.push(v["error"]["message"].clone());
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "the same answer for missing and forbidden: {messages:?}"
    );
    let (status, v) = s
        .post_json(
            "/v1/load_lora_adapter",
            Some(&s.keys.admin),
            &load(s.path("inside").display().to_string()),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}
