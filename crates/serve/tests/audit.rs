//! The audit log over real HTTP: one `inference` entry per request between `serve.start` and
//! `serve.stop` (key name, model, token counts, status, stream, finish reasons), a log that
//! verifies after a graceful shutdown; prompt and answer hashes (text only with `prompt_text`);
//! adapter loads and unloads; a tampered registry version's refusal; the log switched off; a
//! retention the regulation does not allow refused at start.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use ferrotune_govern::policy::AliasRule;
use ferrotune_govern::{ArtifactKind, FileHash, NewArtifact, NewModel, Policy, Registry};
use ferrotune_serve::ServeConfig;
use ferrotune_serve::audit::events::sha256_hex;
use ferrotune_serve::audit::{Audit, Content};
use serde_json::{Value, json};
use support::{MODEL, Opts, Server, metric_value, sse_data, start};

fn audit_opts() -> Opts {
    Opts { audit: true, cache: false, ..Default::default() }
}

/// Every entry of the server's audit log, oldest first (after its shutdown), and the log.
fn entries(s: &Server) -> (AuditLog, Vec<Value>) {
    let log = AuditLog::open(&s.path("audit"), &AuditConfig::default()).expect("open the audit log");
    let all = log.entries(&Filter::default(), false).expect("entries").into_iter().map(|(_, v)| v).collect();
    (log, all)
}

fn actions(all: &[Value]) -> Vec<&str> {
    all.iter().map(|e| e["action"].as_str().unwrap_or("")).collect()
}

/// The `inference` entries by request id.
fn inference_by_id(all: &[Value]) -> HashMap<String, Value> {
    all.iter()
        .filter(|e| e["action"] == "inference")
        .map(|e| (e["subject"]["request_id"].as_str().unwrap_or("").to_string(), e.clone()))
        .collect()
}

/// POST with our own request id; (status, body text).
async fn post_id(s: &Server, path: &str, key: Option<&str>, id: &str, body: &Value) -> (u16, String) {
    let mut r = s.client.post(format!("{}{path}", s.base)).header("x-request-id", id).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.expect("send");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

/// A stream's text and usage (it asks for `include_usage`).
fn stream_text(body: &str, chat: bool) -> (String, Value) {
    let mut text = String::new();
    let mut usage = Value::Null;
    for d in sse_data(body).iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).expect("chunk");
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            let piece = if chat { c["delta"]["content"].as_str() } else { c["text"].as_str() };
            text.push_str(piece.unwrap_or(""));
        }
    }
    (text, usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_leaves_one_inference_entry_between_start_and_stop_and_the_log_verifies() {
    let mut s = start(audit_opts()).await;
    let (user, admin) = (s.keys.user.clone(), s.keys.admin.clone());
    let chat = |stream: bool| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0,
               "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    let completion = |stream: bool| {
        json!({"model": MODEL, "prompt": "once upon", "max_tokens": 4, "temperature": 0, "stream": stream,
               "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    let mut expected: BTreeMap<&str, (&str, u16, bool, Value)> = BTreeMap::new();
    let (status, body) = post_id(&s, "/v1/chat/completions", Some(&user), "req-chat", &chat(false)).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    expected.insert("req-chat", ("user", status, false, v["usage"].clone()));
    let (status, body) =
        post_id(&s, "/v1/chat/completions", Some(&admin), "req-chat-stream", &chat(true)).await;
    expected.insert("req-chat-stream", ("admin", status, true, stream_text(&body, true).1));
    let (status, body) = post_id(&s, "/v1/completions", Some(&user), "req-cmpl", &completion(false)).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    expected.insert("req-cmpl", ("user", status, false, v["usage"].clone()));
    let (status, body) =
        post_id(&s, "/v1/completions", Some(&user), "req-cmpl-stream", &completion(true)).await;
    expected.insert("req-cmpl-stream", ("user", status, true, stream_text(&body, false).1));
    let missing = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _) = post_id(&s, "/v1/chat/completions", Some(&user), "req-404", &missing).await;
    assert_eq!(status, 404);
    // Not audited: a 401 (nobody to name), and what is not inference.
    let (status, _) = post_id(&s, "/v1/chat/completions", Some("ft-wrong"), "req-401", &chat(false)).await;
    assert_eq!(status, 401);
    let (status, _) = s.get("/v1/models", Some(&user)).await;
    assert_eq!(status, 200);
    // Appended off the request path within a batch interval or so.
    let t0 = Instant::now();
    loop {
        let m = s.metrics().await;
        if metric_value(&m, "ferrotune:audit_events_total{action=\"inference\"}") >= 5.0 {
            assert_eq!(metric_value(&m, "ferrotune:audit_events_total{action=\"serve.start\"}"), 1.0, "{m}");
            assert_eq!(metric_value(&m, "ferrotune:audit_errors_total"), 0.0, "{m}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the entries were not appended: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.shutdown().await;

    let (log, all) = entries(&s);
    let acts = actions(&all);
    assert_eq!(acts.first(), Some(&"serve.start"), "{acts:?}");
    assert_eq!(acts.last(), Some(&"serve.stop"), "{acts:?}");
    assert_eq!(
        acts.iter().filter(|a| **a == "inference").count(),
        5,
        "one per request that passed auth: {acts:?}"
    );
    let start = &all[0];
    assert_eq!(start["subject"]["served_name"], MODEL);
    let files = start["subject"]["files"].as_object().expect("files");
    assert!(
        !files.is_empty() && files.values().all(|d| d.as_str().is_some_and(|d| d.len() == 64)),
        "{start}"
    );
    assert_eq!(
        (start["fields"]["auth"].as_bool(), start["fields"]["registry"].as_bool()),
        (Some(true), Some(false)),
        "{start}"
    );
    let by_id = inference_by_id(&all);
    for (id, (key, status, stream, usage)) in &expected {
        let e = by_id.get(*id).unwrap_or_else(|| panic!("no entry for {id}: {all:?}"));
        assert_eq!(
            (e["actor"].as_str(), e["fields"]["status"].as_u64()),
            (Some(*key), Some(u64::from(*status))),
            "{e}"
        );
        assert_eq!(
            (e["subject"]["model"].as_str(), e["subject"]["resolved"].as_str()),
            (Some(MODEL), Some(MODEL)),
            "{e}"
        );
        assert_eq!(e["fields"]["stream"].as_bool(), Some(*stream), "{e}");
        assert_eq!(e["fields"]["prompt_tokens"], usage["prompt_tokens"], "{id}: {e}");
        assert_eq!(e["fields"]["completion_tokens"], usage["completion_tokens"], "{id}: {e}");
        assert_eq!(e["fields"]["finish_reasons"].as_array().map(Vec::len), Some(1), "{e}");
        assert!(e["fields"]["latency_ms"].is_u64(), "{e}");
        assert_eq!(e["outcome"], "ok");
        assert!(e["fields"].get("prompt_sha256").is_none(), "log_prompts is off: {e}");
    }
    assert_eq!(by_id["req-chat"]["fields"]["endpoint"], "chat");
    assert_eq!(by_id["req-cmpl-stream"]["fields"]["endpoint"], "completions");
    let e = &by_id["req-404"];
    assert_eq!(
        (e["fields"]["status"].as_u64(), e["outcome"].as_str(), e["fields"]["failure"].as_str()),
        (Some(404), Some("refused"), Some("model_not_found")),
        "{e}"
    );
    assert_eq!(
        (e["subject"]["model"].as_str(), e["subject"]["resolved"].as_str()),
        (Some("no-such-model"), None),
        "{e}"
    );
    assert!(!by_id.contains_key("req-401"), "a 401 is not audited");
    let report = log.verify(None).expect("verify");
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.entries as usize, all.len());
    assert!(report.checkpoints >= 1, "a checkpoint is signed at shutdown");
}

/// A server with `log_prompts` and `[audit] prompt_text` as given.
async fn prompts_server(prompt_text: bool) -> Server {
    let configure: fn(&mut ServeConfig) = if prompt_text {
        |c| {
            c.log_prompts = true;
            c.audit.prompt_text = true;
        }
    } else {
        |c| c.log_prompts = true
    };
    start(Opts { auth: false, configure, tweak: Some(answer_with_a), ..audit_opts() }).await
}

/// The random tiny model mostly picks bytes that are no text on their own: make it say `aaaa…`
/// so the answers hashed are not empty.
fn answer_with_a(m: &mut ferrotune_model::LoadedModel) {
    let a = m.tokenizer.encode("a", false).expect("encode")[0];
    ferrotune_model::testing::make_token_dominant(&mut m.model, a).expect("bias");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_prompts_entries_hash_the_prompt_and_answer_and_hold_text_only_with_prompt_text() {
    for prompt_text in [false, true] {
        let mut s = prompts_server(prompt_text).await;
        let body =
            json!({"model": MODEL, "prompt": "the quick brown fox", "max_tokens": 6, "temperature": 0});
        let (status, text) = post_id(&s, "/v1/completions", None, "plain", &body).await;
        assert_eq!(status, 200, "{text}");
        let answer = serde_json::from_str::<Value>(&text).expect("json")["choices"][0]["text"]
            .as_str()
            .expect("text")
            .to_string();
        let mut streamed = body.clone();
        streamed["stream"] = true.into();
        let (status, text) = post_id(&s, "/v1/completions", None, "streamed", &streamed).await;
        assert_eq!(status, 200, "{text}");
        let stream_answer = stream_text(&text, false).0;
        assert!(answer.starts_with("aaa") && stream_answer == answer, "{answer:?} / {stream_answer:?}");
        let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, "temperature": 0});
        let (status, text) = post_id(&s, "/v1/chat/completions", None, "chat", &chat).await;
        assert_eq!(status, 200, "{text}");
        let chat_answer =
            serde_json::from_str::<Value>(&text).expect("json")["choices"][0]["message"]["content"]
                .as_str()
                .expect("c")
                .to_string();
        s.shutdown().await;

        let (_, all) = entries(&s);
        let by_id = inference_by_id(&all);
        for (id, want) in [("plain", &answer), ("streamed", &stream_answer)] {
            let f = &by_id[id]["fields"];
            assert_eq!(by_id[id]["actor"], "anonymous", "auth is off");
            assert_eq!(
                f["prompt_sha256"].as_str(),
                Some(sha256_hex("the quick brown fox").as_str()),
                "{id}: {f}"
            );
            assert_eq!(f["completion_sha256"].as_str(), Some(sha256_hex(want).as_str()), "{id}: {f}");
            if prompt_text {
                assert_eq!(
                    (f["prompt"].as_str(), f["completion"].as_str()),
                    (Some("the quick brown fox"), Some(want.as_str())),
                    "{f}"
                );
            } else {
                assert!(
                    f.get("prompt").is_none() && f.get("completion").is_none(),
                    "no text without prompt_text: {f}"
                );
            }
        }
        // Chat: the prompt as the model saw it (the rendered template).
        let f = &by_id["chat"]["fields"];
        assert_eq!(f["completion_sha256"].as_str(), Some(sha256_hex(&chat_answer).as_str()), "{f}");
        if prompt_text {
            let prompt = f["prompt"].as_str().expect("prompt text");
            assert!(prompt.contains("hello there"), "{prompt}");
            assert_eq!(f["prompt_sha256"].as_str(), Some(sha256_hex(prompt).as_str()));
        } else {
            assert!(
                f["prompt_sha256"].as_str().is_some_and(|h| h.len() == 64) && f.get("prompt").is_none(),
                "{f}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_loads_and_unloads_are_recorded_with_their_files_digests() {
    let mut s = start(audit_opts()).await;
    let dir = s.write_adapter("adapters/a1", 7);
    let admin = s.keys.admin.clone();
    let (status, v) = s
        .post_json(
            "/v1/load_lora_adapter",
            Some(&admin),
            &json!({"lora_name": "a1", "lora_path": dir.display().to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .post_json(
            "/v1/chat/completions",
            Some(&admin),
            &json!({"model": "a1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.post_json("/v1/unload_lora_adapter", Some(&admin), &json!({"lora_name": "a1"})).await;
    assert_eq!(status, 200, "{v}");
    s.shutdown().await;

    let (_, all) = entries(&s);
    let load = all.iter().find(|e| e["action"] == "serve.adapter-load").expect("adapter-load entry");
    assert_eq!(
        (load["actor"].as_str(), load["subject"]["adapter"].as_str(), load["outcome"].as_str()),
        (Some("admin"), Some("a1"), Some("ok")),
        "{load}"
    );
    let weights = ferrotune_model::store::sha256_file(&dir.join("adapter_model.safetensors")).expect("hash");
    assert_eq!(
        load["subject"]["files"]["adapter_model.safetensors"].as_str(),
        Some(weights.as_str()),
        "{load}"
    );
    assert!(load["subject"]["files"]["adapter_config.json"].is_string(), "{load}");
    let inference = all.iter().find(|e| e["action"] == "inference").expect("inference");
    assert_eq!(inference["subject"]["resolved"], "a1");
    let unload = all.iter().find(|e| e["action"] == "serve.adapter-unload").expect("adapter-unload entry");
    assert_eq!(
        (
            unload["actor"].as_str(),
            unload["subject"]["adapter"].as_str(),
            unload["fields"]["reason"].as_str()
        ),
        (Some("admin"), Some("a1"), Some("requested"))
    );
    let acts = actions(&all);
    let pos = |a: &str| acts.iter().position(|x| *x == a).expect(a);
    assert!(
        pos("serve.adapter-load") < pos("inference") && pos("inference") < pos("serve.adapter-unload"),
        "{acts:?}"
    );
}

fn hashes(files: &[PathBuf]) -> Vec<FileHash> {
    files
        .iter()
        .map(|p| FileHash {
            path: p.display().to_string(),
            bytes: std::fs::metadata(p).expect("meta").len(),
            sha256: ferrotune_model::store::sha256_file(p).expect("hash"),
        })
        .collect()
}

/// The served base and adapter `support` v1 (in `<dir>/support-v1`) registered, promoted to
/// champion, and served (a first request got 200 with `key`). Returns the registry and the
/// version's folder.
async fn serve_a_registry_version(s: &Server, key: &str) -> (Registry, PathBuf) {
    let reg = Registry::open(&s.path("registry.db")).expect("registry");
    let base_files =
        ferrotune_model::load_path(&s.model_dir, ferrotune_model::WeightMode::F32, &candle_core::Device::Cpu)
            .expect("model")
            .files;
    let base = reg
        .register_model(&NewModel {
            name: MODEL.into(),
            path: s.model_dir.display().to_string(),
            files: hashes(&base_files),
            config: json!({}),
            parameters: None,
        })
        .expect("base");
    let dir = std::fs::canonicalize(s.write_adapter("support-v1", 1)).expect("canonical");
    let files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    let actor = ferrotune_govern::actor(Some("audit-test"));
    reg.register_artifact(&NewArtifact {
        name: "support".into(),
        kind: ArtifactKind::Adapter,
        path: dir.display().to_string(),
        files: hashes(&files),
        run: None,
        base_model: Some(base),
        actor: actor.clone(),
    })
    .expect("artifact");
    let free = AliasRule { approvers: 0, gates: vec![], gate_data: None };
    let policy = Policy { alias: BTreeMap::from([("champion".into(), free.clone()), ("*".into(), free)]) };
    reg.promote("support", 1, "champion", "test", &actor, &policy).expect("promote");
    let t0 = Instant::now();
    while s.post_json("/v1/chat/completions", Some(key), &registry_chat()).await.0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(3), "the version is never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (reg, dir)
}

fn registry_chat() -> Value {
    json!({"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_version_refused_for_a_tampered_file_is_recorded_with_the_file_and_its_hashes() {
    let mut s = start(Opts { registry: true, ..audit_opts() }).await;
    let user = s.keys.admin.clone();
    let ask = registry_chat();
    let (_reg, dir) = serve_a_registry_version(&s, &user).await;
    let weights = dir.join("adapter_model.safetensors");
    let expected = ferrotune_model::store::sha256_file(&weights).expect("hash");
    let mut bytes = std::fs::read(&weights).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).expect("tamper");
    let actual = ferrotune_model::store::sha256_file(&weights).expect("hash");
    let (status, v) = s.post_json("/v1/chat/completions", Some(&user), &ask).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("integrity_check_failed")), "{v}");
    s.shutdown().await;

    let (log, all) = entries(&s);
    let load = all.iter().find(|e| e["action"] == "serve.adapter-load").expect("load");
    assert_eq!(
        (load["subject"]["artifact"].as_str(), load["actor"].as_str()),
        (Some("support@1"), Some("admin")),
        "{load}"
    );
    assert_eq!(
        load["subject"]["files"]["adapter_model.safetensors"].as_str(),
        Some(expected.as_str()),
        "{load}"
    );
    let refused = all.iter().find(|e| e["action"] == "serve.refused").expect("serve.refused");
    let f = &refused["fields"];
    assert_eq!(
        (refused["subject"]["artifact"].as_str(), refused["outcome"].as_str()),
        (Some("support@1"), Some("refused")),
        "{refused}"
    );
    assert_eq!(f["reason"], "integrity_check_failed");
    assert_eq!(
        (f["file"].as_str(), f["expected_sha256"].as_str(), f["actual_sha256"].as_str()),
        (Some("adapter_model.safetensors"), Some(expected.as_str()), Some(actual.as_str())),
        "{f}"
    );
    let unload =
        all.iter().find(|e| e["action"] == "serve.adapter-unload").expect("unloaded after the failed check");
    assert!(unload["fields"]["reason"].as_str().is_some_and(|r| r.contains("integrity")), "{unload}");
    let failed = all
        .iter()
        .filter(|e| e["action"] == "inference")
        .find(|e| e["fields"]["status"] == 503)
        .expect("the 503 request");
    assert_eq!(
        (failed["subject"]["model"].as_str(), failed["subject"]["artifact"].as_str()),
        (Some("support"), None),
        "{failed}"
    );
    assert!(log.verify(None).expect("verify").ok);
}

/// The tiny model as `build_state` loads it (a folder path), everything in `dir`.
fn build_config(dir: &Path, model_dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig {
        model: model_dir.display().to_string(),
        served_model_name: Some(MODEL.into()),
        auth: false,
        ..Default::default()
    };
    cfg.keys_db = Some(dir.join("keys.db"));
    cfg.embeddings.model = String::new();
    cfg.registry.enabled = false;
    cfg.audit.dir = Some(dir.join("audit"));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_log_off_no_audit_folder_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model_dir = tmp.path().join("model");
    ferrotune_model::testing::write_tiny_model(&model_dir).expect("tiny");
    let mut cfg = build_config(tmp.path(), &model_dir);
    cfg.audit.enabled = false;
    let state = ferrotune_serve::build_state(cfg).await.expect("start");
    assert!(!state.audit.is_on());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferrotune_serve::serve(
        listener,
        state,
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    let body = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    let r =
        reqwest::Client::new().post(format!("{base}/v1/completions")).json(&body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let _ = tx.send(());
    server.await.expect("task").expect("serve");
    assert!(!tmp.path().join("audit").exists(), "no audit folder with [audit] enabled = false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_state_records_serve_start_with_the_base_files_digests() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model_dir = tmp.path().join("model");
    ferrotune_model::testing::write_tiny_model(&model_dir).expect("tiny");
    let state = ferrotune_serve::build_state(build_config(tmp.path(), &model_dir)).await.expect("start");
    assert!(state.audit.is_on(), "on by default");
    state.audit.close(ferrotune_serve::audit::events::stop(MODEL, 0, false)).await;
    let log = AuditLog::open(&tmp.path().join("audit"), &AuditConfig::default()).expect("open");
    let all: Vec<Value> =
        log.entries(&Filter::default(), false).expect("entries").into_iter().map(|(_, v)| v).collect();
    assert_eq!(actions(&all), ["serve.start", "serve.stop"]);
    let files = &all[0]["subject"]["files"];
    for f in
        ferrotune_model::load_path(&model_dir, ferrotune_model::WeightMode::F32, &candle_core::Device::Cpu)
            .expect("model")
            .files
    {
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(
            files[&name].as_str(),
            Some(ferrotune_model::store::sha256_file(&f).expect("hash").as_str()),
            "{name}: {files}"
        );
    }
    assert_eq!(all[0]["subject"]["model"].as_str(), Some(model_dir.display().to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_under_183_days_refuses_to_start_naming_the_regulation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model_dir = tmp.path().join("model");
    ferrotune_model::testing::write_tiny_model(&model_dir).expect("tiny");
    let mut cfg = build_config(tmp.path(), &model_dir);
    cfg.audit.retention_days = 30;
    let Err(err) = ferrotune_serve::build_state(cfg).await else {
        panic!("30 days is too short, yet the server started")
    };
    let err = err.to_string();
    assert!(err.contains("Art. 19") && err.contains("26(6)"), "{err}");
    assert!(err.contains("audit log"), "{err}");
}

/// The appender alone: everything queued before `close` is written, in order, in few batches,
/// `stop` last, a checkpoint over all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appender_writes_every_queued_event_in_order_before_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = AuditLog::open(tmp.path(), &AuditConfig::default()).expect("open");
    let metrics = Arc::new(ferrotune_serve::metrics::Metrics::new(MODEL));
    let audit = Audit::start(log, Content::Nothing, metrics.clone()).expect("start");
    let n = 2500;
    for i in 0..n {
        audit.record(Event::new("t", "inference", json!({"i": i}), "ok", json!({})));
    }
    audit.close(Event::new("t", "serve.stop", json!({}), "ok", json!({}))).await;
    audit.record(Event::new("t", "late", json!({}), "ok", json!({})));
    let log = AuditLog::open(tmp.path(), &AuditConfig::default()).expect("reopen");
    let all = log.entries(&Filter::default(), false).expect("entries");
    assert_eq!(all.len(), n + 1);
    for (k, (_, e)) in all.iter().take(n).enumerate() {
        assert_eq!(e["subject"]["i"].as_u64(), Some(k as u64));
    }
    assert_eq!(all[n].1["action"], "serve.stop");
    let report = log.verify(None).expect("verify");
    assert!(report.ok && report.checkpoints >= 1, "{:?}", report.problems);
    let text = metrics.render(&ferrotune_serve::engine::EngineStats {
        running: 0,
        waiting: 0,
        kv_used: 0,
        kv_budget: 1,
        adapters: vec![],
    });
    assert_eq!(metric_value(&text, "ferrotune:audit_events_total{action=\"inference\"}"), n as f64, "{text}");
}

/// Needs the MiniLM embedder (skipped without it, as tests/grounding.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grounded_answer_records_its_knowledge_base_and_sources_doc_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(embedder_dir) =
        ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER)
    else {
        return;
    };
    let embedder = ferrotune_rag::Embedder::load(&embedder_dir).expect("the installed MiniLM loads");
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).expect("mkdir");
    std::fs::write(
        docs.join("returns.md"),
        "# Returns\n\nItems can be returned within 30 days of delivery for a full refund.",
    )
    .expect("write");
    std::fs::write(
        docs.join("shipping.md"),
        "# Shipping\n\nExpress delivery costs 9.95 and arrives the next working day.",
    )
    .expect("write");
    let collected = ferrotune_rag::source::collect(&[docs]).expect("collect");
    let mut w =
        ferrotune_rag::Writer::open(&tmp.path().join("kb/policies"), None, embedder.dim()).expect("writer");
    w.ingest(&collected.docs, &embedder, &mut |_| {}).expect("ingest");
    let rag = ferrotune_serve::config::RagConfig {
        kb_dir: Some(tmp.path().join("kb")),
        attach: BTreeMap::from([(MODEL.to_string(), "policies".to_string())]),
        k: 2,
        ..Default::default()
    };
    let mut s = start(Opts { rag: Some(rag), ..audit_opts() }).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "How many days do I have to return an item?"}], "max_tokens": 2});
    let (status, text) =
        post_id(&s, "/v1/chat/completions", Some(&s.keys.user.clone()), "grounded", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let want: Vec<&str> =
        v["sources"].as_array().expect("sources").iter().filter_map(|x| x["doc_id"].as_str()).collect();
    s.shutdown().await;
    let (_, all) = entries(&s);
    let f = &inference_by_id(&all)["grounded"]["fields"];
    assert_eq!(f["knowledge_base"], "policies", "{f}");
    let got: Vec<&str> = f["sources"].as_array().expect("sources").iter().filter_map(Value::as_str).collect();
    assert_eq!((got.first().copied(), &got), (Some("returns.md"), &want), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_unload_and_the_refusals_after_it_are_recorded_with_the_reason() {
    let mut s = start(Opts { registry: true, ..audit_opts() }).await;
    let key = s.keys.admin.clone();
    let (reg, _) = serve_a_registry_version(&s, &key).await;
    reg.disable("support", 1, "leaks customer data", &ferrotune_govern::actor(Some("audit-test")))
        .expect("disable");
    let t0 = Instant::now();
    while s.state.engine.adapters().contains(&"support@1".to_string()) {
        assert!(t0.elapsed() < Duration::from_secs(3), "the kill switch did not unload the version");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, v) = s.post_json("/v1/chat/completions", Some(&key), &registry_chat()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("model_disabled")), "{v}");
    s.shutdown().await;

    let (_, all) = entries(&s);
    let unload =
        all.iter().find(|e| e["action"] == "serve.adapter-unload").expect("the kill switch's unload");
    assert_eq!(unload["subject"]["artifact"], "support@1");
    assert_eq!(
        unload["actor"].as_str(),
        Some(ferrotune_serve::audit::events::server_actor().as_str()),
        "the server acted: {unload}"
    );
    assert!(
        unload["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kill switch") && r.contains("leaks customer data")),
        "{unload}"
    );
    let refused = all.iter().find(|e| e["action"] == "serve.refused").expect("serve.refused");
    assert_eq!(
        (refused["actor"].as_str(), refused["fields"]["reason"].as_str()),
        (Some("admin"), Some("model_disabled")),
        "{refused}"
    );
    assert_eq!(refused["fields"]["disabled_reason"], "leaks customer data");
}
