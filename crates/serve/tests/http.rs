//! The API end to end: real HTTP on 127.0.0.1 against the engine on the tiny random model.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{MODEL, Opts, metric_value, sse_data, start};

fn chat_body(extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

fn error_of(v: &Value) -> (&str, &str, Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "not an OpenAI error body: {v}");
    (e["type"].as_str().unwrap_or(""), e["code"].as_str().unwrap_or(""), e["param"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_answers_with_text_and_usage() {
    let s = start(Opts::default()).await;
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(json!({}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string());
    let fin = v["choices"][0]["finish_reason"].as_str().expect("finish");
    assert!(fin == "stop" || fin == "length");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().expect("prompt") > 0);
    assert!(u["completion_tokens"].as_u64().expect("completion") <= 8);
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
    );
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));

    // n choices, each its own.
    let (status, v) = s
        .post_json(
            "/v1/chat/completions",
            Some(&s.keys.user),
            &chat_body(json!({"n": 3, "temperature": 1.0, "seed": 7})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_sends_chunks_then_done_and_matches_the_plain_answer() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    let body = chat_body(json!({"max_tokens": 12, "ignore_eos": true}));
    let (_, plain) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body).await;
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let resp = s.post("/v1/chat/completions", Some(&s.keys.user), &sb).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk json")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
        .collect();
    assert_eq!(content, plain["choices"][0]["message"]["content"].as_str().unwrap_or("?"));
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter(|ch| !ch["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["finish_reason"], "length");
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_with_echo_return_prompt_logprobs_for_loglikelihood_scoring() {
    let s = start(Opts::default()).await;
    // As lm-evaluation-harness local-completions sends it: token ids, echo, max_tokens 0.
    let prompt = vec![10u32, 20, 30, 40, 50];
    let body = json!({"model": MODEL, "prompt": [prompt, [7, 8, 9]], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for (i, len) in [(0usize, 5usize), (1, 3)] {
        let c = &choices[i];
        assert_eq!(c["index"], i);
        let lp = &c["logprobs"];
        let tl = lp["token_logprobs"].as_array().expect("token_logprobs");
        assert_eq!(tl.len(), len, "{lp}");
        assert!(tl[0].is_null(), "the first prompt token has no logprob");
        assert!(tl[1..].iter().all(|x| x.as_f64().is_some_and(|x| x <= 0.0)), "{lp}");
        let top = lp["top_logprobs"].as_array().expect("top_logprobs");
        assert!(top[0].is_null());
        for (t, x) in top[1..].iter().zip(&tl[1..]) {
            let best =
                t.as_object().expect("dict").values().filter_map(Value::as_f64).fold(f64::MIN, f64::max);
            assert!(best >= x.as_f64().unwrap_or(0.0) - 1e-6);
        }
        assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(len));
        assert_eq!(lp["text_offset"].as_array().map(Vec::len), Some(len));
    }
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["completion_tokens"], 0);

    // Echo with generation: prompt entries then generated ones; the text starts with the prompt.
    let body = json!({"model": MODEL, "prompt": "abc", "max_tokens": 4, "echo": true, "logprobs": 2, "temperature": 0, "ignore_eos": true});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert!(c["text"].as_str().is_some_and(|t| t.starts_with("abc")));
    let n_prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens") as usize;
    assert_eq!(c["logprobs"]["token_logprobs"].as_array().map(Vec::len), Some(n_prompt + 4));

    // Plain completion without logprobs.
    let (status, v) = s
        .post_json(
            "/v1/completions",
            Some(&s.keys.user),
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["logprobs"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_get_400_naming_the_field_and_unknown_models_404() {
    let s = start(Opts::default()).await;
    let k = Some(s.keys.user.as_str());
    for (body, param) in [
        (chat_body(json!({"max_tokens": "ten"})), "max_tokens"),
        (chat_body(json!({"max_tokens": 100_000})), "max_tokens"),
        (chat_body(json!({"temperature": 9})), "temperature"),
        (chat_body(json!({"messages": [{"role": "user", "content": 5}]})), "messages[0].content"),
        (chat_body(json!({"messages": []})), "messages"),
        (chat_body(json!({"stop": [1]})), "stop"),
        (chat_body(json!({"n": 0})), "n"),
        (chat_body(json!({"seed": -1})), "seed"),
        (json!({"messages": []}), "model"),
    ] {
        let (status, v) = s.post_json("/v1/chat/completions", k, &body).await;
        assert_eq!(status, 400, "{body} -> {v}");
        let (kind, _, p) = error_of(&v);
        assert_eq!(kind, "invalid_request_error");
        assert_eq!(p, Some(param), "{body} -> {v}");
    }
    let (status, v) = s.post_json("/v1/completions", k, &json!({"model": MODEL, "prompt": [1, 99999]})).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&v).2, Some("prompt[1]"));

    let (status, v) = s.post_json("/v1/chat/completions", k, &chat_body(json!({"model": "nope"}))).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(error_of(&v).1, "model_not_found");

    // Not JSON, too large, wrong method, no such path: OpenAI-shaped, never a 500.
    let raw = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&s.keys.user)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status().as_u16(), 400);
    let big = json!({"model": MODEL, "prompt": "x".repeat(100 * 1024)});
    let (status, v) = s.post_json("/v1/completions", k, &big).await;
    assert_eq!(status, 413, "{v}");
    error_of(&v);
    let (status, _) = s.get("/v1/chat/completions", k).await;
    assert_eq!(status, 405);
    let (status, body) = s.get("/v1/nothing", k).await;
    assert_eq!(status, 404);
    error_of(&serde_json::from_str(&body).expect("json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_inputs_never_produce_a_server_error() {
    let s = start(Opts::default()).await;
    let k = Some(s.keys.user.as_str());
    let bodies = [
        json!(null),
        json!([]),
        json!({"model": MODEL}),
        json!({"model": MODEL, "messages": [{"role": "", "content": "x"}]}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "\u{0}\u{ffff}"}], "max_tokens": 1}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 0}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50, "logprobs": true}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ""}),
        json!({"model": MODEL, "prompt": []}),
        json!({"model": MODEL, "prompt": [[]]}),
        json!({"model": MODEL, "prompt": {"a": 1}}),
        json!({"model": MODEL, "prompt": "x", "logprobs": 1000}),
        json!({"model": MODEL, "prompt": "x", "max_tokens": 0}),
        json!({"model": MODEL, "prompt": "x".repeat(600)}),
        json!({"model": 5, "prompt": "x"}),
    ];
    for b in &bodies {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/load_lora_adapter"] {
            let (status, v) = s.post_json(path, k, b).await;
            assert!(status < 500, "{path} {b} -> {status} {v}");
            if status != 200 {
                error_of(&v);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_scoped_and_rate_limited() {
    let s = start(Opts::default()).await;
    let body = chat_body(json!({"max_tokens": 2}));
    let (status, v) = s.post_json("/v1/chat/completions", None, &body).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(error_of(&v).1, "invalid_api_key");
    let (status, _) = s.post_json("/v1/chat/completions", Some("ft-0000"), &body).await;
    assert_eq!(status, 401);
    let (status, _) = s.post_json("/v1/chat/completions", Some("sk-whatever"), &body).await;
    assert_eq!(status, 401);
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.other), &body).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(error_of(&v).0, "permission_error");
    // The other key does not see the model in the list either.
    let (status, list) = s.get("/v1/models", Some(&s.keys.other)).await;
    assert_eq!(status, 200);
    assert!(!list.contains(MODEL), "{list}");

    // 2 requests per minute: the third is refused with Retry-After.
    for _ in 0..2 {
        let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.limited), &body).await;
        assert_eq!(status, 200, "{v}");
    }
    let resp = s.post("/v1/chat/completions", Some(&s.keys.limited), &body).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(error_of(&v).1, "rate_limit_exceeded");
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "ferrotune:rate_limited_requests_total{reason=\"requests\"}"), 1.0, "{m}");
    assert!(metric_value(&m, "ferrotune:failed_requests_total{reason=\"unauthorized\"}") >= 3.0, "{m}");

    // Health and readiness need no key; metrics do (they name models and adapters).
    assert_eq!(s.get("/health", None).await.0, 200);
    assert_eq!(s.get("/ready", None).await.0, 200);
    assert_eq!(s.get("/metrics", None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let engine = ferrotune_serve::engine::EngineConfig {
        max_batch: 1,
        kv_token_budget: 512,
        queue_capacity: 1,
        ..Default::default()
    };
    let s = start(Opts { engine, cache: false, ..Opts::default() }).await;
    let body =
        json!({"model": MODEL, "prompt": "slow", "max_tokens": 400, "ignore_eos": true, "temperature": 0});
    // One key may hold only its fair share of the engine, so eight keys fill it.
    let keys: Vec<String> = (0..8)
        .map(|i| {
            s.store()
                .create(&ferrotune_serve::keys::ApiKey { name: format!("q{i}"), ..Default::default() })
                .expect("key")
        })
        .collect();
    let reqs = keys.iter().map(|k| s.post("/v1/completions", Some(k), &body));
    let resps = futures_util::future::join_all(reqs).await;
    let mut ok = 0;
    let mut full = 0;
    for r in resps {
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let v: Value = r.json().await.expect("json");
                assert_eq!(error_of(&v).1, "queue_full");
                full += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, queue full {full}");
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "ferrotune:failed_requests_total{reason=\"queue_full\"}"),
        full as f64,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_deterministic_request_is_served_from_the_cache() {
    let s = start(Opts::default()).await;
    let body = chat_body(json!({"max_tokens": 6}));
    let (_, a) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body).await;
    let (_, b) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body).await;
    assert_eq!(a["choices"], b["choices"]);
    assert_ne!(a["id"], b["id"], "a cached answer gets a fresh id");
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "ferrotune:response_cache_hits_total{model=\"tiny\",adapter=\"\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "ferrotune:response_cache_misses_total{model=\"tiny\",adapter=\"\"}"),
        1.0,
        "{m}"
    );
    // Sampled without a seed: never cached.
    let (_, _) = s
        .post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(json!({"temperature": 0.8})))
        .await;
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "ferrotune:response_cache_misses_total{model=\"tiny\",adapter=\"\"}"), 1.0);
    // The engine metrics are there too.
    for name in [
        "ferrotune:time_to_first_token_seconds_count",
        "ferrotune:e2e_request_latency_seconds_count",
        "ferrotune:request_queue_time_seconds_count",
        "ferrotune:prompt_tokens_total",
        "ferrotune:generation_tokens_total",
        "ferrotune:num_requests_running",
        "ferrotune:kv_cache_usage_perc",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_and_unload_at_runtime_with_an_admin_key() {
    let s = start(Opts::default()).await;
    let dir = s.path("adapter");
    {
        let mut m = ferrotune_model::load_path(
            &s.path("model"),
            ferrotune_model::WeightMode::F32,
            &candle_core::Device::Cpu,
        )
        .expect("model");
        let a = ferrotune_model::Adapter::init(&mut m.model, &ferrotune_model::LoraSpec::default(), 1)
            .expect("adapter");
        a.save(&dir, MODEL).expect("save");
    }
    let load = json!({"lora_name": "support", "lora_path": dir.display().to_string()});
    let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.user), &load).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = s
        .post_json(
            "/v1/load_lora_adapter",
            Some(&s.keys.admin),
            &json!({"lora_name": "x", "lora_path": "/nonexistent"}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_of(&v).2, Some("lora_path"));
    let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.admin), &load).await;
    assert_eq!(status, 200, "{v}");
    let (_, list) = s.get("/v1/models", Some(&s.keys.admin)).await;
    let list: Value = serde_json::from_str(&list).expect("json");
    let ids: Vec<&str> =
        list["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, [MODEL, "support"]);
    // Served by name; the user key is scoped to the base only.
    let (status, v) = s
        .post_json("/v1/chat/completions", Some(&s.keys.admin), &chat_body(json!({"model": "support"})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "support");
    let (status, _) = s
        .post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(json!({"model": "support"})))
        .await;
    assert_eq!(status, 403);

    let unload = json!({"lora_name": "support"});
    let (status, _) = s.post_json("/v1/unload_lora_adapter", Some(&s.keys.user), &unload).await;
    assert_eq!(status, 403);
    let (status, v) = s.post_json("/v1/unload_lora_adapter", Some(&s.keys.admin), &unload).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = s.post_json("/v1/unload_lora_adapter", Some(&s.keys.admin), &unload).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .post_json("/v1/chat/completions", Some(&s.keys.admin), &chat_body(json!({"model": "support"})))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_then_stops() {
    let mut s = start(Opts { cache: false, ..Opts::default() }).await;
    let body = json!({"model": MODEL, "prompt": "go", "max_tokens": 200, "ignore_eos": true, "temperature": 0, "stream": true});
    let resp = s.post("/v1/completions", Some(&s.keys.user), &body).await;
    assert_eq!(resp.status().as_u16(), 200);
    s.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.state.is_shutting_down());
    assert!(
        s.client.get(format!("{}/health", s.base)).send().await.is_err(),
        "new connections are refused while draining"
    );
    let text = resp.text().await.expect("the stream finishes");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let tokens: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|c| c["choices"][0]["finish_reason"] == "length")
        .map(|_| "x".to_string())
        .collect();
    assert_eq!(tokens, "x", "the in-flight stream ran to its end");
    let handle = s.handle.take().expect("server task");
    let r = tokio::time::timeout(Duration::from_secs(20), handle).await.expect("server stops").expect("join");
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_everything_is_open() {
    let s = start(Opts { auth: false, ..Opts::default() }).await;
    let (status, v) = s.post_json("/v1/chat/completions", None, &chat_body(json!({}))).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = s.post_json("/v1/unload_lora_adapter", None, &json!({"lora_name": "none"})).await;
    assert_eq!(status, 404);
}

/// (hits, misses) of the response cache for requests to `adapter`.
fn cache_counts(metrics: &str, adapter: &str) -> (f64, f64) {
    let labels = format!("{{model=\"{MODEL}\",adapter=\"{adapter}\"}}");
    let hits = metric_value(metrics, &format!("ferrotune:response_cache_hits_total{labels}"));
    let misses = metric_value(metrics, &format!("ferrotune:response_cache_misses_total{labels}"));
    (hits, misses)
}

/// Regression: the key held the adapter's name and a per-process load counter, so a replica
/// (or a restart) with other weights under the same name was served this one's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_are_never_served_for_other_weights_under_the_same_name() {
    let a = start(Opts::default()).await;
    let b = start(Opts {
        shared_cache: Some(a.state.cache.clone()),
        model_dir: Some(a.model_dir.clone()),
        ..Opts::default()
    })
    .await;
    // Same base files on both: they share (the base is keyed by its files' digest).
    let body = chat_body(json!({"max_tokens": 4}));
    let (_, first) = a.post_json("/v1/chat/completions", Some(&a.keys.admin), &body).await;
    let (_, second) = b.post_json("/v1/chat/completions", Some(&b.keys.admin), &body).await;
    assert_eq!(first["choices"], second["choices"]);
    assert_eq!(cache_counts(&b.metrics().await, ""), (1.0, 0.0));

    // Each loads its own weights as "support", both as their first adapter load.
    let (v1, v2) = (a.write_adapter("v1", 1), b.write_adapter("v2", 2));
    for (s, dir) in [(&a, &v1), (&b, &v2)] {
        let load = json!({"lora_name": "support", "lora_path": dir.display().to_string()});
        let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.admin), &load).await;
        assert_eq!(status, 200, "{v}");
    }
    let body = chat_body(json!({"model": "support", "max_tokens": 4}));
    let (status, _) = a.post_json("/v1/chat/completions", Some(&a.keys.admin), &body).await;
    assert_eq!(status, 200);
    let (status, _) = b.post_json("/v1/chat/completions", Some(&b.keys.admin), &body).await;
    assert_eq!(status, 200);
    assert_eq!(cache_counts(&b.metrics().await, "support"), (0.0, 1.0), "other weights: a miss, not a hit");

    // A restarts with v2's files under the same name: now it shares b's entry.
    let reload = |s: &support::Server, dir: &std::path::Path| {
        let (c, base, key) = (s.client.clone(), s.base.clone(), s.keys.admin.clone());
        let load = json!({"lora_name": "support", "lora_path": dir.display().to_string()});
        async move {
            let unload = c
                .post(format!("{base}/v1/unload_lora_adapter"))
                .bearer_auth(&key)
                .json(&json!({"lora_name": "support"}));
            assert_eq!(unload.send().await.expect("unload").status().as_u16(), 200);
            let r = c
                .post(format!("{base}/v1/load_lora_adapter"))
                .bearer_auth(&key)
                .json(&load)
                .send()
                .await
                .expect("load");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    // (A copy inside a's own adapter_roots: the key follows the files' content, not their place.)
    let copy_into_a = |from: &std::path::Path| {
        let to = a.path("v2-copy");
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in std::fs::read_dir(from).expect("adapter dir") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
        }
        to
    };
    let a_v2 = copy_into_a(&v2);
    reload(&a, &a_v2).await;
    let (status, _) = a.post_json("/v1/chat/completions", Some(&a.keys.admin), &body).await;
    assert_eq!(status, 200);
    assert_eq!(cache_counts(&a.metrics().await, "support"), (1.0, 1.0), "same weights: b's answer");

    // The adapter retrained in place (same folder, same name, new weights) and reloaded: a miss.
    assert_eq!(b.write_adapter("v2", 3), v2);
    assert_eq!(copy_into_a(&v2), a_v2);
    reload(&a, &a_v2).await;
    let (status, _) = a.post_json("/v1/chat/completions", Some(&a.keys.admin), &body).await;
    assert_eq!(status, 200);
    assert_eq!(cache_counts(&a.metrics().await, "support"), (1.0, 2.0), "retrained weights: a miss");
}

/// `/ready` of a state, asked through the router directly (a server whose engine died stops
/// accepting connections soon after).
async fn ready_status(state: &ferrotune_serve::AppState) -> u16 {
    use tower::ServiceExt;
    let req = axum::http::Request::get("/ready")
        .header("host", "localhost")
        .body(axum::body::Body::empty())
        .expect("request");
    ferrotune_serve::app(state.clone()).oneshot(req).await.expect("response").status().as_u16()
}

/// Regression: `/ready` said 200 with the engine thread dead, and the process stayed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_makes_ready_503_and_serve_return_an_error() {
    let mut s = start(Opts { cache: false, ..Opts::default() }).await;
    assert_eq!(ready_status(&s.state).await, 200);
    s.state.engine.inject_fault(ferrotune_serve::engine::Fault::KillEngineThread);
    // The request wakes the loop, which dies taking it: the client gets an error, not a hang.
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(json!({}))).await;
    assert!(status == 500 || status == 503, "{status} {v}");
    let handle = s.handle.take().expect("server task");
    let r = tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("the server stops by itself")
        .expect("join");
    assert!(r.is_err(), "serve must return an error so the process exits non-zero: {r:?}");
    assert!(!s.state.engine.is_alive());
    assert_eq!(ready_status(&s.state).await, 503);
    // `/ready` looks at the engine itself, not only at the shutdown the engine's death started.
    let cfg = ferrotune_serve::ServeConfig { auth: false, ..Default::default() };
    let fresh = ferrotune_serve::AppState::new(s.state.engine.clone(), cfg, None, None);
    assert!(!fresh.is_shutting_down());
    assert_eq!(ready_status(&fresh).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_loading_an_adapter_fails_that_load_and_the_engine_lives_on() {
    let s = start(Opts::default()).await;
    let dir = s.write_adapter("adapter", 1);
    let load = json!({"lora_name": "support", "lora_path": dir.display().to_string()});
    s.state.engine.inject_fault(ferrotune_serve::engine::Fault::PanicInAdapterLoad);
    let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.admin), &load).await;
    assert!(status >= 400, "{v}");
    assert!(s.state.engine.is_alive(), "the panic was caught");
    assert_eq!(ready_status(&s.state).await, 200);
    let (status, v) = s.post_json("/v1/load_lora_adapter", Some(&s.keys.admin), &load).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .post_json("/v1/chat/completions", Some(&s.keys.admin), &chat_body(json!({"model": "support"})))
        .await;
    assert_eq!(status, 200, "{v}");
}

/// Regression: these were dropped silently, answering something the client did not ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_fields_we_cannot_honour_get_400_naming_them_while_defaults_pass() {
    let s = start(Opts::default()).await;
    for (field, value) in [
        ("tools", json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}])),
        ("tool_choice", json!("required")),
        ("response_format", json!({"type": "xml"})),
        ("logit_bias", json!({"65": 100})),
        ("functions", json!([{"name": "lookup"}])),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("store", json!(true)),
    ] {
        let (status, v) = s
            .post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(json!({ field: value })))
            .await;
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(error_of(&v), ("invalid_request_error", "invalid_value", Some(field)), "{v}");
    }
    let tool_turn = json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "and?"},
    ]});
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(tool_turn)).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_of(&v).2, Some("messages[1].tool_calls"));
    // What SDKs send by default is fine.
    let defaults = json!({"tools": [], "tool_choice": "none", "logit_bias": {}, "response_format": {"type": "text"},
        "parallel_tool_calls": true, "functions": null, "store": false, "metadata": {"k": "v"}, "user": "u"});
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat_body(defaults)).await;
    assert_eq!(status, 200, "{v}");
    // Completions: logit_bias refused, an empty one fine.
    let c = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            b[k] = v;
        }
        b
    };
    let (status, v) =
        s.post_json("/v1/completions", Some(&s.keys.user), &c(json!({"logit_bias": {"1": -100}}))).await;
    assert_eq!((status, error_of(&v).2), (400, Some("logit_bias")), "{v}");
    let (status, v) = s
        .post_json("/v1/completions", Some(&s.keys.user), &c(json!({"logit_bias": {}, "suffix": null})))
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize_answer_like_vllm() {
    let s = start(Opts::default()).await;
    let info = s.state.engine.info();
    // A prompt round trip.
    let (status, v) = s
        .post_json(
            "/tokenize",
            Some(&s.keys.user),
            &json!({"model": MODEL, "prompt": "Hello, wörld", "add_special_tokens": false}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let tokens: Vec<u64> = v["tokens"].as_array().expect("tokens").iter().filter_map(Value::as_u64).collect();
    assert_eq!(v["count"].as_u64(), Some(tokens.len() as u64));
    assert_eq!(v["max_model_len"].as_u64(), Some(info.context_len as u64));
    assert!(v.get("token_strs").is_none(), "only on request: {v}");
    let (status, d) =
        s.post_json("/detokenize", Some(&s.keys.user), &json!({"model": MODEL, "tokens": tokens})).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["prompt"], "Hello, wörld");

    // Messages go through the model's chat template, exactly as chat completions render them.
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]);
    let (status, v) = s
        .post_json(
            "/tokenize",
            Some(&s.keys.user),
            &json!({"model": MODEL, "messages": messages, "return_token_strs": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let msgs = [
        ferrotune_model::Message::new("system", "Be brief."),
        ferrotune_model::Message::new("user", "hello"),
    ];
    let want = info.encode(&info.render_chat(&msgs, true).expect("render"), false).expect("encode");
    let got: Vec<u32> =
        v["tokens"].as_array().expect("tokens").iter().filter_map(|t| t.as_u64().map(|t| t as u32)).collect();
    assert_eq!(got, want);
    assert_eq!(v["token_strs"].as_array().map(Vec::len), Some(want.len()));
    let (_, chat) = s
        .post_json(
            "/v1/chat/completions",
            Some(&s.keys.user),
            &json!({"model": MODEL, "messages": messages, "max_tokens": 1}),
        )
        .await;
    assert_eq!(chat["usage"]["prompt_tokens"].as_u64(), Some(want.len() as u64), "{chat}");
    // Left open for the model to continue: the rendering stops after the last message's text.
    let (status, v) = s
        .post_json(
            "/tokenize",
            Some(&s.keys.user),
            &json!({"messages": messages, "add_generation_prompt": false, "continue_final_message": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, d) = s.post_json("/detokenize", Some(&s.keys.user), &json!({"tokens": v["tokens"]})).await;
    assert!(d["prompt"].as_str().is_some_and(|p| p.ends_with("hello")), "{d}");

    // Bad input: 400 naming the field; and the same keys as /v1.
    for (body, param) in [
        (json!({"tokens": [1, 99999]}), "tokens[1]"),
        (json!({"tokens": [1, -1]}), "tokens[1]"),
        (json!({"tokens": "abc"}), "tokens"),
    ] {
        let (status, v) = s.post_json("/detokenize", Some(&s.keys.user), &body).await;
        assert_eq!((status, error_of(&v).2), (400, Some(param)), "{body}: {v}");
    }
    for (body, param) in [
        (json!({"prompt": "a", "messages": messages}), "messages"),
        (json!({"model": MODEL}), "prompt"),
        (
            json!({"messages": messages, "continue_final_message": true, "add_generation_prompt": true}),
            "continue_final_message",
        ),
        (json!({"messages": messages, "tools": [{"type": "function"}]}), "tools"),
    ] {
        let (status, v) = s.post_json("/tokenize", Some(&s.keys.user), &body).await;
        assert_eq!((status, error_of(&v).2), (400, Some(param)), "{body}: {v}");
    }
    let (status, _) = s.post_json("/tokenize", None, &json!({"prompt": "a"})).await;
    assert_eq!(status, 401);
    let (status, _) = s.post_json("/tokenize", Some(&s.keys.other), &json!({"prompt": "a"})).await;
    assert_eq!(status, 403, "a key scoped to another model");
    let (status, _) =
        s.post_json("/detokenize", Some(&s.keys.user), &json!({"model": "nope", "tokens": [1]})).await;
    assert_eq!(status, 404);
}

/// Regression: a token-id prompt filling the context with echo + logprobs made one forward pass
/// build `[heads, t, t]` attention scores and `[t, vocab]` logits (gigabytes on a real model at
/// 8k tokens; the process could abort). Now it is prefilled and scored in chunks, prompts past
/// the limits get a 400 naming them, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_context_token_prompt_with_echo_and_logprobs_completes_or_is_refused_and_serving_goes_on() {
    let engine = ferrotune_serve::engine::EngineConfig { prefill_chunk_tokens: 64, ..Default::default() };
    let s = start(Opts { engine, cache: false, ..Opts::default() }).await;
    let ctx = 512; // the tiny model's context
    let ids: Vec<u32> = (0..ctx).map(|i| 3 + (i * 13 % 250) as u32).collect();
    // Scoring the whole context (max_tokens 0) fits.
    let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 1});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 200, "{v}");
    let tl = v["choices"][0]["logprobs"]["token_logprobs"].as_array().expect("token_logprobs");
    assert_eq!(tl.len(), ctx as usize);
    assert!(tl[1..].iter().all(|x| x.as_f64().is_some_and(|x| x <= 0.0 && x.is_finite())));
    // One token more than the context holds: refused, naming the prompt and the context.
    for (prompt, max_tokens) in [(ids.clone(), 1), ([ids.clone(), vec![5]].concat(), 0)] {
        let body =
            json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "echo": true, "logprobs": 1});
        let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
        assert_eq!(status, 400, "{v}");
        let (kind, _, param) = error_of(&v);
        assert_eq!((kind, param), ("invalid_request_error", Some("prompt")), "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("512")), "{v}");
    }
    let (status, v) = s
        .post_json(
            "/v1/completions",
            Some(&s.keys.user),
            &json!({"model": MODEL, "prompt": "still here", "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // An operator's max_prompt_tokens is enforced by name, for completions and chat.
    let engine = ferrotune_serve::engine::EngineConfig { max_prompt_tokens: Some(100), ..Default::default() };
    let s = start(Opts { engine, cache: false, ..Opts::default() }).await;
    let body = json!({"model": MODEL, "prompt": &ids[..101], "max_tokens": 1, "echo": true, "logprobs": 1});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_of(&v).2, Some("prompt"));
    assert!(
        v["error"]["message"].as_str().is_some_and(|m| m.contains("max_prompt_tokens") && m.contains("100")),
        "{v}"
    );
    let long = "x".repeat(150);
    let (status, v) = s
        .post_json(
            "/v1/chat/completions",
            Some(&s.keys.user),
            &chat_body(json!({"messages": [{"role": "user", "content": long}]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_of(&v).2, Some("messages"));
    let body = json!({"model": MODEL, "prompt": &ids[..100], "max_tokens": 1, "echo": true, "logprobs": 1});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 200, "{v}");
}

/// lm-evaluation-harness `local-completions` loglikelihood: `max_tokens: 1, echo, logprobs: 1`,
/// then it drops the last entry as the generated token. Regression: when the next token was
/// EOS nothing was generated and a prompt token's logprob was dropped. Now EOS is the generated
/// token: empty in `text`, present in every logprobs list, `finish_reason: "stop"` (as vLLM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_eval_scoring_gets_eos_back_as_the_generated_token() {
    fn eos_always(m: &mut ferrotune_model::LoadedModel) {
        let eos = m.eos_ids[0];
        ferrotune_model::testing::make_token_dominant(&mut m.model, eos).expect("bias");
    }
    let s = start(Opts { cache: false, tweak: Some(eos_always), ..Opts::default() }).await;
    let prompt = vec![10u32, 20, 30, 40, 50];
    let body = json!({"model": MODEL, "prompt": [prompt], "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0});
    let (status, v) = s.post_json("/v1/completions", Some(&s.keys.scorer), &body).await;
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{v}");
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().expect("tokens");
    let tl = lp["token_logprobs"].as_array().expect("token_logprobs");
    // Five prompt entries and the generated EOS: dropping the last leaves every prompt token.
    assert_eq!(tokens.len(), prompt.len() + 1, "{lp}");
    assert_eq!(tl.len(), prompt.len() + 1);
    assert_eq!(lp["top_logprobs"].as_array().map(Vec::len), Some(prompt.len() + 1));
    assert_eq!(lp["text_offset"].as_array().map(Vec::len), Some(prompt.len() + 1));
    assert_eq!(tokens[prompt.len()], "<|im_end|>");
    assert!(tl[prompt.len()].as_f64().is_some_and(|x| x > -1e-3 && x <= 0.0), "{lp}");
    // The EOS token adds no text: the echoed prompt is the whole text.
    let echoed: String = tokens[..prompt.len()].iter().filter_map(Value::as_str).collect();
    assert_eq!(c["text"].as_str(), Some(echoed.as_str()));
    assert_eq!(v["usage"]["completion_tokens"], 1);
}
