//! Structured output (`response_format`) over real HTTP: every answer parses and validates
//! against its schema (checked by the `jsonschema` crate, not by the grammar that produced it),
//! streamed and not, on the real default model and on the tiny random model — a nonsense model
//! is the real test of the mask: whatever it prefers, only the grammar's tokens can come out.

mod support;

use serde_json::{Value, json};
use support::{MODEL, Opts, sse_data, start};

/// (name, schema, bounded): `bounded` = every value it allows is finitely long (strings with
/// `maxLength` or enums, arrays with `maxItems`, no extra properties, no free numbers), so even
/// a random model must close it within a few hundred tokens. (An unbounded schema — free extra
/// properties — let the real model write an endless `description` until `max_tokens`: a
/// correct `length` finish, but not a complete answer to validate.)
fn schemas() -> Vec<(&'static str, Value, bool)> {
    vec![
        (
            "person",
            json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                   "required": ["name", "age"], "additionalProperties": false}),
            true,
        ),
        (
            "enum",
            json!({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": false}),
            true,
        ),
        (
            "boolean",
            json!({"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"], "additionalProperties": false}),
            true,
        ),
        (
            "array_of_strings",
            json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 4}},
                   "required": ["tags"], "additionalProperties": false}),
            true,
        ),
        (
            "nested",
            json!({"type": "object", "properties": {"user": {"type": "object",
                     "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}, "email": {"type": "string", "maxLength": 40}},
                     "required": ["id", "email"], "additionalProperties": false}},
                   "required": ["user"], "additionalProperties": false}),
            true,
        ),
        (
            "number_bounds",
            json!({"type": "object", "properties": {"price": {"type": "number", "minimum": 0, "maximum": 1000}, "currency": {"enum": ["USD", "EUR"]}},
                   "required": ["price", "currency"], "additionalProperties": false}),
            false,
        ),
        (
            "array_of_objects",
            json!({"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {"type": "object",
                     "properties": {"sku": {"type": "string", "maxLength": 10}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                     "required": ["sku", "qty"], "additionalProperties": false}}},
                   "required": ["items"], "additionalProperties": false}),
            true,
        ),
        (
            "top_level_array",
            json!({"type": "array", "items": {"type": "integer", "minimum": -10, "maximum": 10}, "minItems": 2, "maxItems": 5}),
            true,
        ),
        (
            "optional_properties",
            json!({"type": "object", "properties": {"title": {"type": "string", "maxLength": 30}, "done": {"type": "boolean"}, "priority": {"enum": [1, 2, 3]}},
                   "required": ["title"], "additionalProperties": false}),
            true,
        ),
        (
            "three_levels",
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object",
                     "properties": {"c": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["c"], "additionalProperties": false}},
                     "required": ["b"], "additionalProperties": false}},
                   "required": ["a"], "additionalProperties": false}),
            true,
        ),
        (
            "const_and_exclusive_bounds",
            json!({"type": "object", "properties": {"kind": {"const": "review"}, "stars": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
                     "verdict": {"enum": ["good", "bad"]}},
                   "required": ["kind", "stars", "verdict"], "additionalProperties": false}),
            true,
        ),
        (
            "pattern_and_min_length",
            json!({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}, "note": {"type": "string", "minLength": 1, "maxLength": 16}},
                   "required": ["code", "note"], "additionalProperties": false}),
            true,
        ),
        (
            "any_of",
            json!({"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "boolean"}]}},
                   "required": ["value"], "additionalProperties": false}),
            true,
        ),
        (
            "defs_and_refs",
            json!({"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -50, "maximum": 50}, "y": {"type": "integer", "minimum": -50, "maximum": 50}},
                                       "required": ["x", "y"], "additionalProperties": false}},
                   "type": "object", "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
                   "required": ["from", "to"], "additionalProperties": false}),
            true,
        ),
    ]
}

fn json_schema_format(name: &str, schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}})
}

/// One answer: its text and finish_reason, from a non-streamed body or the SSE chunks.
async fn ask(s: &support::Server, path: &str, body: Value) -> (String, String) {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let chat = path.ends_with("chat/completions");
    let resp = s.post(path, Some(&s.keys.user), &body).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    if !stream {
        let v: Value = serde_json::from_str(&text).expect("json body");
        let c = &v["choices"][0];
        let out = if chat { c["message"]["content"].as_str() } else { c["text"].as_str() };
        return (out.expect("text").to_string(), c["finish_reason"].as_str().unwrap_or("").to_string());
    }
    let (mut out, mut finish) = (String::new(), String::new());
    for d in sse_data(&text) {
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d).expect("chunk");
        assert!(v.get("error").is_none(), "{v}");
        let Some(c) = v["choices"].get(0) else { continue };
        let piece = if chat { c["delta"]["content"].as_str() } else { c["text"].as_str() };
        out.push_str(piece.unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (out, finish)
}

/// [`ask`] for the chat endpoint, labelled with what it tests and the schema it must meet.
async fn labelled(
    s: &support::Server,
    what: String,
    schema: Value,
    body: Value,
) -> (String, Value, String, String) {
    let (text, finish) = ask(s, "/v1/chat/completions", body).await;
    (what, schema, text, finish)
}

/// Run the requests 16 at a time (one key may have 64 sequences in flight).
async fn all<F: std::future::Future>(asks: Vec<F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(asks).buffer_unordered(16).collect().await
}

/// The answer parses, validates against `schema`, and ended because the value was complete.
fn check(what: &str, schema: &Value, text: &str, finish: &str) {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?} (finish {finish})"));
    let validator = jsonschema::validator_for(schema).expect("the test schema is valid");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {text} violates the schema: {errors:?}");
    assert_eq!(finish, "stop", "{what}: {text}");
}

fn chat(prompt: &str, format: Value, stream: bool, sampled: Option<u64>) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 256,
                       "response_format": format, "stream": stream, "temperature": 0});
    if let Some(seed) = sampled {
        b["temperature"] = json!(1.0);
        b["seed"] = json!(seed);
    }
    b
}

const PROMPTS: [&str; 2] = [
    "Fill in the JSON for a typical example. Reply with JSON only.",
    "Describe your favourite thing as JSON.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_real_model_validates_against_its_schema_streamed_or_not() {
    let Some(path) = ferrotune_model::testing::installed_model("smollm2-135m-instruct") else { return };
    let s = start(Opts { model_dir: Some(path), cache: false, ..Opts::default() }).await;
    let mut asks = Vec::new();
    for (name, schema, _) in schemas() {
        for (p, prompt) in PROMPTS.iter().enumerate() {
            for stream in [false, true] {
                // Greedy, and one sampled variant per schema (the mask applies before either).
                let sampled = (p == 1 && stream).then_some(7);
                let what = format!("{name} / prompt {p} / stream {stream} / sampled {}", sampled.is_some());
                let body = chat(prompt, json_schema_format(name, &schema), stream, sampled);
                asks.push(labelled(&s, what, schema.clone(), body));
            }
        }
    }
    // json_object: any JSON object.
    for stream in [false, true] {
        let body = chat("Give me a JSON object about a cat.", json!({"type": "json_object"}), stream, None);
        asks.push(labelled(&s, format!("json_object / stream {stream}"), json!({"type": "object"}), body));
    }
    let n = asks.len();
    let results = all(asks).await;
    for (what, schema, text, finish) in &results {
        check(what, schema, text, finish);
    }
    assert_eq!(results.len(), n);
    assert!(n >= 12 * 4, "{n} answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_models_answers_hold_to_the_schema_whatever_it_prefers() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    let mut asks = Vec::new();
    for (name, schema, bounded) in schemas() {
        if !bounded {
            continue;
        }
        for seed in 0..3u64 {
            for stream in [false, true] {
                let mut body =
                    chat("hello", json_schema_format(name, &schema), stream, (seed > 0).then_some(seed));
                body["max_tokens"] = json!(400);
                asks.push(labelled(
                    &s,
                    format!("{name} / seed {seed} / stream {stream}"),
                    schema.clone(),
                    body,
                ));
            }
        }
    }
    for (what, schema, text, finish) in all(asks).await {
        check(&what, &schema, &text, &finish);
    }
    // Legacy completions take `response_format` too (as vLLM's do).
    let (name, schema, _) = schemas().swap_remove(0);
    for stream in [false, true] {
        let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 400, "temperature": 0, "stream": stream,
                          "response_format": json_schema_format(name, &schema)});
        let (text, finish) = ask(&s, "/v1/completions", body).await;
        check(&format!("completions / stream {stream}"), &schema, &text, &finish);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_response_format_the_random_model_writes_no_json() {
    // The control for the test above: the same model unconstrained does not produce valid JSON,
    // so it is the mask that makes those answers valid.
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    let (text, _) = ask(&s, "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 40, "temperature": 0})).await;
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_before_the_json_closes_finishes_with_length() {
    let s = start(Opts { cache: false, ..Opts::default() }).await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"], "additionalProperties": false});
    for stream in [false, true] {
        let mut body = chat("hello", json_schema_format("n", &schema), stream, None);
        body["max_tokens"] = json!(3);
        let (text, finish) = ask(&s, "/v1/chat/completions", body).await;
        assert_eq!(finish, "length", "{text:?}");
        // What came out is the start of a valid answer.
        assert!(r#"{"name":""#.starts_with(&text) || text.starts_with(r#"{"name":""#), "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_grammar_cannot_enforce_gets_400_naming_the_feature() {
    let s = start(Opts::default()).await;
    let unsupported = json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true});
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let mut body = chat("hello", json_schema_format("u", &unsupported), false, None);
        if path == "/v1/completions" {
            body = json!({"model": MODEL, "prompt": "x", "max_tokens": 4, "response_format": json_schema_format("u", &unsupported)});
        }
        let (status, v) = s.post_json(path, Some(&s.keys.user), &body).await;
        assert_eq!(status, 400, "{v}");
        let e = &v["error"];
        assert_eq!(e["type"], "invalid_request_error", "{v}");
        assert_eq!(e["param"], "response_format.json_schema.schema", "{v}");
        assert!(e["message"].as_str().is_some_and(|m| m.contains("uniqueItems")), "{v}");
    }
    // A malformed response_format is named too.
    let (status, v) = s
        .post_json(
            "/v1/chat/completions",
            Some(&s.keys.user),
            &chat("hi", json!({"type": "json_schema"}), false, None),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format.json_schema", "{v}");
}
