//! Regression tests for what fuzzing the API through its OpenAPI document found
//! (scripts/serve/fuzz_api.sh; the findings are listed in reliability/api-fuzz.md).

mod support;

use serde_json::json;
use support::{MODEL, Opts, start};

/// Broke: a POST to a GET-only route without `Content-Type: application/json` was answered 415
/// by the browser checks, before routing could say 405 (the method is what is wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_get_route_is_405_whatever_its_content_type() {
    let s = start(Opts::default()).await;
    for path in ["/health", "/ready", "/metrics", "/v1/models", "/openapi.json"] {
        let resp =
            s.client.post(format!("{}{path}", s.base)).bearer_auth(&s.keys.admin).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 405, "{path}");
        let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(allow.contains("GET"), "{path}: Allow `{allow}`");
    }
    // A POST route still wants JSON.
    let resp = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415);
}

/// Broke: `/tokenize` with `prompt` ignored `tools`, `chat_template` and `chat_template_kwargs`
/// (only the `messages` shape refused them), so a request the document calls invalid got a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_refuses_chat_only_options_with_a_prompt_too() {
    let s = start(Opts::default()).await;
    let key = Some(s.keys.user.as_str());
    for (field, value) in [
        ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
        ("chat_template", json!("{{ messages }}")),
        ("chat_template_kwargs", json!({"x": 1})),
    ] {
        let mut body = json!({"model": MODEL, "prompt": "hi"});
        body[field] = value;
        let (status, v) = s.post_json("/tokenize", key, &body).await;
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["param"], field);
    }
    let (status, v) = s
        .post_json(
            "/tokenize",
            key,
            &json!({"prompt": "hi", "tools": [], "chat_template": "", "chat_template_kwargs": {}}),
        )
        .await;
    assert_eq!(status, 200, "no-op values still pass: {v}");
}

/// Broke: `response_format.json_schema.description` was never read, so a non-string there (an
/// array, a number) was accepted where the document (and OpenAI) want a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_description_must_be_a_string() {
    let s = start(Opts::default()).await;
    let body = |description: serde_json::Value| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "description": description}}})
    };
    for bad in [json!(["a"]), json!(1), json!({})] {
        let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "response_format.json_schema.description");
    }
    for ok in [json!("a thing"), json!(null)] {
        let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body(ok.clone())).await;
        assert_eq!(status, 200, "{ok}: {v}");
    }
}
