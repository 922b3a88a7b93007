//! `GET /openapi.json` against the router and against real answers: the document is OpenAPI 3.1,
//! lists exactly the routes `app` serves (a route added without docs fails here), and the
//! server's actual bodies (answers, streamed chunks, errors) validate against their schemas —
//! checked by the independent `jsonschema` crate.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::{MODEL, Opts, sse_data, start};

async fn document(s: &support::Server) -> Value {
    let (status, text) = s.get("/openapi.json", None).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("the document is JSON")
}

/// A validator for `#/components/schemas/{name}`, resolving references inside the document.
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

#[track_caller]
fn assert_valid(doc: &Value, name: &str, instance: &Value) {
    let v = validator(doc, name);
    let errors: Vec<String> =
        v.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{name} does not describe {instance}:\n{}", errors.join("\n"));
}

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        b[k] = v;
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_lists_every_route_the_router_serves() {
    let s = start(Opts::default()).await;
    let doc = document(&s).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routes = ferrotune_serve::app::routes();
    let served: BTreeSet<(String, String)> =
        routes.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    assert_eq!(documented, served, "the document and the router disagree");

    for r in &routes {
        let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
        // A keyed route names the bearer scheme and only it; an open one may be called without.
        let security = op["security"].as_array().cloned().unwrap_or_default();
        let needs_key = !security.is_empty() && security.iter().all(|s| s.get("api_key").is_some());
        assert_eq!(needs_key, r.keyed, "{} {}: security {security:?}", r.method, r.path);
        // Every documented route is answered by its handler, not by the 404 / 405 fallbacks.
        let url = format!("{}{}", s.base, r.path);
        let resp = s
            .client
            .request(r.method.clone(), &url)
            .bearer_auth(&s.keys.admin)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("body");
        assert!(
            status != 405 && !body.contains("no such endpoint"),
            "{} {} is documented but not served: {status} {body}",
            r.method,
            r.path
        );
    }
    // Links (the stateful fuzzing follows them) name operations that exist, as OpenAPI spells it.
    let ids: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("item").values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let mut links = 0;
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("item").values() {
            for response in op["responses"].as_object().into_iter().flat_map(|r| r.values()) {
                for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                    let target =
                        link["operationId"].as_str().unwrap_or_else(|| panic!("no operationId: {link}"));
                    assert!(ids.contains(target), "a link to {target}, which is no operation");
                    assert!(
                        link.get("request_body").is_none() && link.get("requestBody").is_some(),
                        "{link}"
                    );
                    links += 1;
                }
            }
        }
    }
    assert!(links >= 4, "the links to follow from /v1/models and /tokenize");
    // A streamed answer's events: `data` is the chunk as JSON, `[DONE]`, or an error body.
    for (path, chunk) in
        [("/v1/chat/completions", "ChatCompletionChunk"), ("/v1/completions", "CompletionChunk")]
    {
        let event = &doc["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"];
        let data = event["properties"]["data"]["anyOf"].as_array().expect("data: anyOf");
        assert_eq!(data[0]["const"], "[DONE]", "{event}");
        assert_eq!(data[1]["contentMediaType"], "application/json", "{event}");
        let refs = data[1]["contentSchema"]["oneOf"].to_string();
        assert!(refs.contains(chunk) && refs.contains("ErrorResponse"), "{event}");
    }
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_of_the_served_model_and_config_are_in_the_document() {
    let s = start(Opts { configure: |c| c.max_n = 5, ..Opts::default() }).await;
    let doc = document(&s).await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["SamplingFields"]["properties"]["n"]["maximum"], 5);
    let vocab = s.state.engine.info().vocab_size;
    let body = |prompt: Value| json!({"model": MODEL, "prompt": prompt});
    let v = validator(&doc, "CompletionBody");
    assert!(v.is_valid(&body(json!([vocab - 1]))));
    assert!(
        !v.is_valid(&body(json!([vocab]))),
        "a token id past the vocabulary is refused, so the schema must say so"
    );
    assert!(!validator(&doc, "DetokenizeRequest").is_valid(&json!({"tokens": [vocab]})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_schemas_accept_what_the_server_accepts_and_refuse_what_it_refuses() {
    let s = start(Opts::default()).await;
    let doc = document(&s).await;
    let chat_schema = validator(&doc, "ChatCompletionBody");
    for (body, ok) in [
        (chat(json!({})), true),
        (chat(json!({"tools": [], "tool_choice": "auto", "store": false, "logit_bias": {}})), true),
        (chat(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})), false),
        (chat(json!({"audio": {"voice": "alloy"}})), false),
        (chat(json!({"presence_penalty": 0.5})), false),
        (chat(json!({"temperature": 2.5})), false),
        (chat(json!({"messages": []})), false),
        (chat(json!({"response_format": {"type": "xml"}})), false),
    ] {
        assert_eq!(chat_schema.is_valid(&body), ok, "schema on {body}");
        let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &body).await;
        assert_eq!(status == 200, ok, "server on {body}: {status} {v}");
        if !ok {
            assert_eq!(status, 400, "{v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_and_errors_validate_against_their_schemas() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    let doc = document(&s).await;
    let scorer = Some(s.keys.scorer.as_str());

    let (status, v) = s
        .post_json("/v1/chat/completions", scorer, &chat(json!({"logprobs": true, "top_logprobs": 2})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_valid(&doc, "ChatCompletionResponse", &v);

    let resp = s
        .post(
            "/v1/chat/completions",
            scorer,
            &chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for d in &data[..data.len() - 1] {
        assert_valid(&doc, "ChatCompletionChunk", &serde_json::from_str(d).expect("chunk"));
    }

    // Legacy logprobs with echo: the hand-written `TopLogprobMap` and its `null`s.
    let completion = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 2, "logprobs": 3, "echo": true});
    let (status, v) = s.post_json("/v1/completions", scorer, &completion).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["logprobs"]["top_logprobs"][0].is_null(), "{v}");
    assert!(v["choices"][0]["logprobs"]["top_logprobs"][1].is_object(), "{v}");
    assert_valid(&doc, "CompletionResponse", &v);
    let mut bad = v.clone();
    bad["choices"][0]["logprobs"]["top_logprobs"][1] = json!({"x": "not a number"});
    assert!(
        !validator(&doc, "CompletionResponse").is_valid(&bad),
        "TopLogprobMap's schema checks its values"
    );

    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    let text = s.post("/v1/completions", scorer, &streamed).await.text().await.expect("body");
    let data = sse_data(&text);
    for d in &data[..data.len() - 1] {
        assert_valid(&doc, "CompletionChunk", &serde_json::from_str(d).expect("chunk"));
    }

    let (_, models) = s.get("/v1/models", Some(&s.keys.user)).await;
    assert_valid(&doc, "ModelList", &serde_json::from_str(&models).expect("json"));
    let (status, v) = s
        .post_json("/tokenize", Some(&s.keys.user), &json!({"prompt": "hi", "return_token_strs": true}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_valid(&doc, "TokenizeResponse", &v);
    let (_, v) = s.post_json("/detokenize", Some(&s.keys.user), &json!({"tokens": v["tokens"]})).await;
    assert_valid(&doc, "DetokenizeResponse", &v);
    let (_, health) = s.get("/health", None).await;
    assert_valid(&doc, "HealthResponse", &serde_json::from_str(&health).expect("json"));
    for key in [None, Some(s.keys.admin.as_str())] {
        let (_, ready) = s.get("/ready", key).await;
        assert_valid(&doc, "ReadyResponse", &serde_json::from_str(&ready).expect("json"));
    }

    // Errors: a missing key, a bad field, an unknown model.
    let (status, v) = s.post_json("/v1/chat/completions", None, &chat(json!({}))).await;
    assert_eq!(status, 401);
    assert_valid(&doc, "ErrorResponse", &v);
    let (status, v) = s.post_json("/v1/chat/completions", Some(&s.keys.user), &chat(json!({"n": 0}))).await;
    assert_eq!(status, 400);
    assert_valid(&doc, "ErrorResponse", &v);
    let (status, v) =
        s.post_json("/v1/completions", Some(&s.keys.admin), &json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(status, 404);
    assert_valid(&doc, "ErrorResponse", &v);
}
