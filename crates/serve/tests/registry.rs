//! Serving the model registry over real HTTP: references by name, alias and version; alias
//! moves, the kill switch and re-enabling on a running server (each within 1 s); the
//! supply-chain check (tampered files); adapters of another base model and full models refused;
//! `/v1/models` and key scopes; the registry switched off, not there yet, or unreadable.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrotune_govern::policy::AliasRule;
use ferrotune_govern::{ArtifactKind, ArtifactRecord, FileHash, NewArtifact, NewModel, Policy, Registry};
use ferrotune_serve::keys::ApiKey;
use serde_json::{Value, json};
use support::{MODEL, Opts, Server, metric_value, sse_data, start};

/// How long a registry change may take to reach the server (the brief: 1 s), plus scheduling
/// margin for a loaded 2-core machine.
const WITHIN: Duration = Duration::from_millis(1500);

fn hashes(files: &[PathBuf]) -> Vec<FileHash> {
    let mut out: Vec<FileHash> = files
        .iter()
        .map(|p| FileHash {
            path: p.display().to_string(),
            bytes: std::fs::metadata(p).expect("meta").len(),
            sha256: ferrotune_model::store::sha256_file(p).expect("hash"),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn policy() -> Policy {
    let free = AliasRule { approvers: 0, gates: vec![], gate_data: None };
    Policy {
        alias: BTreeMap::from([
            ("champion".into(), free.clone()),
            ("canary".into(), free.clone()),
            ("*".into(), free),
        ]),
    }
}

fn actor() -> String {
    ferrotune_govern::actor(Some("registry-test"))
}

/// The test's own connection to the server's registry, with the served base registered.
struct Reg {
    reg: Registry,
    base: i64,
}

impl Reg {
    fn open(s: &Server) -> Self {
        let reg = Registry::open(&s.path("registry.db")).expect("open the registry");
        let files = ferrotune_model::load_path(
            &s.model_dir,
            ferrotune_model::WeightMode::F32,
            &candle_core::Device::Cpu,
        )
        .expect("model")
        .files;
        let base = reg
            .register_model(&NewModel {
                name: MODEL.into(),
                path: s.model_dir.display().to_string(),
                files: hashes(&files),
                config: json!({}),
                parameters: None,
            })
            .expect("register the base");
        Self { reg, base }
    }

    /// A new adapter version of `name` for `base` (written to `rel`).
    fn adapter(&self, s: &Server, name: &str, rel: &str, seed: u64, base: i64) -> ArtifactRecord {
        let dir = s.write_adapter(rel, seed);
        self.artifact(name, ArtifactKind::Adapter, &dir, base)
    }

    fn artifact(&self, name: &str, kind: ArtifactKind, dir: &Path, base: i64) -> ArtifactRecord {
        let dir = std::fs::canonicalize(dir).expect("canonical");
        let files: Vec<PathBuf> =
            std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
        self.reg
            .register_artifact(&NewArtifact {
                name: name.into(),
                kind,
                path: dir.display().to_string(),
                files: hashes(&files),
                run: None,
                base_model: Some(base),
                actor: actor(),
            })
            .expect("register the artifact")
    }

    fn promote(&self, name: &str, version: u32, alias: &str) {
        self.reg.promote(name, version, alias, "test", &actor(), &policy()).expect("promote");
    }

    fn disable(&self, name: &str, version: u32, reason: &str) {
        self.reg.disable(name, version, reason, &actor()).expect("disable");
    }

    fn enable(&self, name: &str, version: u32) {
        self.reg.enable(name, version, "fixed", &actor()).expect("enable");
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "temperature": 0})
}

/// (status, `x-ferrotune-artifact`, body) of a chat request with the admin key.
async fn ask(s: &Server, key: &str, model: &str) -> (u16, Option<String>, Value) {
    let resp = s.post("/v1/chat/completions", Some(key), &chat(model)).await;
    let status = resp.status().as_u16();
    let artifact =
        resp.headers().get("x-ferrotune-artifact").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.expect("body");
    (status, artifact, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

/// Poll `cond` until it holds; fails after `within`. Returns how long it took.
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if cond().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn model_ids(s: &Server, key: &str) -> Vec<String> {
    let (status, body) = s.get("/v1/models", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect()
}

fn registry_opts() -> Opts {
    Opts { registry: true, ..Opts::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_adapter_is_served_by_name_alias_and_version() {
    let s = start(registry_opts()).await;
    let admin = s.keys.admin.clone();
    let r = Reg::open(&s);
    let v1 = r.adapter(&s, "support", "support-v1", 1, r.base);
    assert_eq!(v1.version, 1);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = admin.as_str();
    until("`support` is served", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 }).await;
    let (status, artifact, v) = ask(&s, &admin, "support").await;
    assert_eq!((status, artifact.as_deref()), (200, Some("support@1")), "{v}");
    assert_eq!(v["model"], "support", "the response names the model as asked");
    let (status, artifact, v) = ask(&s, &admin, "support@1").await;
    assert_eq!((status, artifact.as_deref()), (200, Some("support@1")), "{v}");
    let (status, _, v) = ask(&s, &admin, "support@canary").await;
    assert_eq!((status, code(&v)), (404, "model_not_found"), "no canary yet: {v}");
    assert!(message(&v).contains("support@champion"), "the 404 lists what is available: {v}");
    r.promote("support", 1, "canary");
    until(
        "`support@canary` is served",
        WITHIN,
        || async move { ask(sr, a, "support@canary").await.0 == 200 },
    )
    .await;
    // Completions and /tokenize take the same names.
    let (status, v) = s
        .post_json(
            "/v1/completions",
            Some(&admin),
            &json!({"model": "support@canary", "prompt": "hi", "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        s.post_json("/tokenize", Some(&admin), &json!({"model": "support", "prompt": "hi"})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        s.post_json("/tokenize", Some(&admin), &json!({"model": "support@7", "prompt": "hi"})).await;
    assert_eq!((status, code(&v)), (404, "model_not_found"), "{v}");
    // Loaded once, under its version's name.
    assert_eq!(s.state.engine.adapters(), vec!["support@1".to_string()]);
    let m = s.metrics().await;
    assert!(
        metric_value(&m, "ferrotune:registry_requests_total{name=\"support\",version=\"1\"}") >= 4.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_load_a_version_once() {
    let s = start(Opts { cache: false, ..registry_opts() }).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("the registry is read", WITHIN, || async move {
        sr.state.registry.as_ref().is_some_and(|r| r.resolve("support").is_some())
    })
    .await;
    // Loading twice would fail the second load ("already loaded"): every request must get 200.
    let asks = (0..6).map(|_| ask(sr, a, "support@1"));
    for (status, artifact, v) in futures_util::future::join_all(asks).await {
        assert_eq!((status, artifact.as_deref()), (200, Some("support@1")), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_champion_sends_new_requests_to_the_new_version_within_a_second() {
    let s = start(registry_opts()).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.adapter(&s, "support", "support-v2", 2, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("v1 is champion", WITHIN, || async move {
        ask(sr, a, "support").await.1.as_deref() == Some("support@1")
    })
    .await;
    // A stream on v1 in flight while the alias moves finishes on v1, normally.
    let body = json!({"model": "support", "prompt": "go", "max_tokens": 200, "ignore_eos": true, "temperature": 0, "stream": true});
    let held = s.post("/v1/completions", Some(a), &body).await;
    assert_eq!(held.headers().get("x-ferrotune-artifact").and_then(|v| v.to_str().ok()), Some("support@1"));
    r.promote("support", 2, "champion");
    let took = until("new requests reach v2", WITHIN, || async move {
        ask(sr, a, "support").await.1.as_deref() == Some("support@2")
    })
    .await;
    assert!(took < Duration::from_secs(1), "the move took {took:?}");
    assert_eq!(finish_reasons(held).await, ["length"], "the stream on the old version ends normally");
    let m = s.metrics().await;
    assert!(
        metric_value(&m, "ferrotune:registry_requests_total{name=\"support\",version=\"2\"}") >= 1.0,
        "{m}"
    );
}

/// Read a stream to its end: the finish reasons of its choices.
async fn finish_reasons(resp: reqwest::Response) -> Vec<String> {
    let chunks = sse_data(&resp.text().await.expect("stream"));
    chunks
        .iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .filter_map(|v| v["choices"][0]["finish_reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_version_refuses_it_and_ends_its_requests_in_flight_and_enabling_serves_it_again() {
    let s = start(Opts { cache: false, ..registry_opts() }).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("v1 is served", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 }).await;
    // The tiny model is fast: a long request may end before the disable reaches the engine.
    // Try until both a stream and a plain request were seen cut short (each try re-enables).
    let long = |stream: bool| json!({"model": "support", "prompt": "go", "max_tokens": 500, "ignore_eos": true, "temperature": 0, "stream": stream});
    let (mut stream_cut, mut plain_cut) = (false, false);
    for attempt in 0..10 {
        let held = s.post("/v1/completions", Some(a), &long(true)).await;
        assert_eq!(held.status().as_u16(), 200);
        let plain = tokio::spawn({
            let (c, base, key, body) = (s.client.clone(), s.base.clone(), a.to_string(), long(false));
            async move {
                let r = c
                    .post(format!("{base}/v1/completions"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                (r.status().as_u16(), r.json::<Value>().await.expect("json"))
            }
        });
        // Give the plain request a moment to be submitted (it is fine if it is not: retried).
        tokio::time::sleep(Duration::from_millis(5)).await;
        r.disable("support", 1, "leaks customer data");
        let took = until("the disable is seen", WITHIN, || async move {
            let (status, _, v) = ask(sr, a, "support").await;
            status == 403 && code(&v) == "model_disabled"
        })
        .await;
        assert!(took < Duration::from_secs(1), "the disable took {took:?}");
        let finishes = finish_reasons(held).await;
        assert_eq!(finishes.len(), 1, "{finishes:?}");
        stream_cut |= finishes[0] == "disabled";
        let (status, v) = plain.await.expect("plain request");
        if status == 200 {
            plain_cut |= v["choices"][0]["finish_reason"] == "disabled";
        } else {
            // Submitted after the disable: refused like any new request.
            assert_eq!((status, code(&v)), (403, "model_disabled"), "{v}");
        }
        // New requests: 403 naming the version and the reason, by any name that reaches it.
        for name in ["support", "support@champion", "support@1"] {
            let (status, _, v) = ask(&s, a, name).await;
            assert_eq!((status, code(&v)), (403, "model_disabled"), "{name}: {v}");
            assert!(message(&v).contains("support@1") && message(&v).contains("leaks customer data"), "{v}");
        }
        assert!(!s.state.engine.adapters().contains(&"support@1".to_string()), "unloaded");
        assert!(!model_ids(&s, a).await.contains(&"support".to_string()), "not listed while disabled");
        r.enable("support", 1);
        let took =
            until("served again", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 }).await;
        assert!(took < Duration::from_secs(1), "the enable took {took:?}");
        if stream_cut && plain_cut {
            eprintln!("cut short on attempt {attempt}");
            break;
        }
    }
    assert!(stream_cut, "no stream in flight was ended with finish_reason \"disabled\"");
    assert!(plain_cut, "no plain request in flight was ended with finish_reason \"disabled\"");
    let m = s.metrics().await;
    assert!(
        metric_value(
            &m,
            "ferrotune:registry_refusals_total{name=\"support\",version=\"1\",reason=\"disabled\"}"
        ) >= 3.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "ferrotune:request_success_total{model=\"tiny\",adapter=\"support@1\",finished_reason=\"disabled\"}"
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_adapter_file_is_refused_naming_the_file_and_counted() {
    let s = start(registry_opts()).await;
    let r = Reg::open(&s);
    let v1 = r.adapter(&s, "support", "support-v1", 1, r.base);
    let v2 = r.adapter(&s, "support", "support-v2", 2, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("v1 is served", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 }).await;
    let flip = |dir: &str| {
        let p = std::path::Path::new(dir).join("adapter_model.safetensors");
        let mut bytes = std::fs::read(&p).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&p, bytes).expect("tamper");
        ferrotune_model::store::sha256_file(&p).expect("hash")
    };
    // A loaded version whose file changes on disk: refused from the next request on.
    let actual = flip(&v1.path);
    let expected = v1
        .files
        .iter()
        .find(|f| f.path.ends_with("adapter_model.safetensors"))
        .expect("recorded")
        .sha256
        .clone();
    let (status, _, v) = ask(&s, a, "support").await;
    assert_eq!(
        (status, code(&v), v["error"]["type"].as_str()),
        (503, "integrity_check_failed", Some("server_error")),
        "{v}"
    );
    let msg = message(&v);
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains(&expected) && msg.contains(&actual),
        "{msg}"
    );
    assert!(!msg.contains(&v1.path), "the server's folders are not told: {msg}");
    assert!(!s.state.engine.adapters().contains(&"support@1".to_string()), "unloaded");
    // A version never loaded, tampered before its first request.
    flip(&v2.path);
    let (status, _, v) = ask(&s, a, "support@2").await;
    assert_eq!((status, code(&v)), (503, "integrity_check_failed"), "{v}");
    let m = s.metrics().await;
    for version in [1, 2] {
        let line = format!(
            "ferrotune:registry_refusals_total{{name=\"support\",version=\"{version}\",reason=\"integrity\"}}"
        );
        assert_eq!(metric_value(&m, &line), 1.0, "{m}");
    }
    // The bytes put back: checked again, served again.
    flip(&v1.path);
    let (status, artifact, v) = ask(&s, a, "support").await;
    assert_eq!((status, artifact.as_deref()), (200, Some("support@1")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_of_another_base_model_or_a_full_model_is_refused() {
    let s = start(registry_opts()).await;
    let r = Reg::open(&s);
    let other = r
        .reg
        .register_model(&NewModel {
            name: "other-base".into(),
            path: "/models/other".into(),
            files: vec![FileHash {
                path: "/models/other/model.safetensors".into(),
                bytes: 1,
                sha256: "ab".repeat(32),
            }],
            config: json!({}),
            parameters: None,
        })
        .expect("register another base");
    r.adapter(&s, "foreign", "foreign-v1", 1, other);
    r.promote("foreign", 1, "champion");
    let full = r.artifact("merged", ArtifactKind::Model, &s.model_dir, r.base);
    r.promote("merged", full.version, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("the registry is read", WITHIN, || async move {
        ask(sr, a, "foreign").await.0 != 404 && ask(sr, a, "merged").await.0 != 404
    })
    .await;
    let (status, _, v) = ask(&s, a, "foreign").await;
    assert_eq!((status, code(&v)), (409, "base_model_mismatch"), "{v}");
    assert!(message(&v).contains("other-base") && message(&v).contains(MODEL), "names both bases: {v}");
    let (status, _, v) = ask(&s, a, "merged").await;
    assert_eq!((status, code(&v)), (409, "model_not_servable"), "{v}");
    assert!(message(&v).contains("--model"), "{v}");
    assert!(s.state.engine.adapters().is_empty());
    let m = s.metrics().await;
    // The poll above asked too: two refusals at least.
    assert!(
        metric_value(
            &m,
            "ferrotune:registry_refusals_total{name=\"foreign\",version=\"1\",reason=\"base_mismatch\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "ferrotune:registry_refusals_total{name=\"merged\",version=\"1\",reason=\"not_adapter\"}"
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_registry_names_a_key_may_use_without_disabled_targets() {
    let s = start(registry_opts()).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.adapter(&s, "support", "support-v2", 2, r.base);
    r.promote("support", 1, "champion");
    r.promote("support", 2, "canary");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("listed", WITHIN, || async move { model_ids(sr, a).await.contains(&"support@canary".to_string()) })
        .await;
    let ids = model_ids(&s, a).await;
    for want in [MODEL, "support", "support@champion", "support@canary"] {
        assert!(ids.contains(&want.to_string()), "{want} missing from {ids:?}");
    }
    // Loading a version does not add its internal name to the list.
    assert_eq!(ask(&s, a, "support@1").await.0, 200);
    assert!(!model_ids(&s, a).await.contains(&"support@1".to_string()));
    // Scopes: `support` covers every reference to it; `support@champion` only itself.
    let whole = s
        .store()
        .create(&ApiKey { name: "whole".into(), models: vec!["support".into()], ..Default::default() })
        .expect("key");
    let champ = s
        .store()
        .create(&ApiKey {
            name: "champ".into(),
            models: vec!["support@champion".into()],
            ..Default::default()
        })
        .expect("key");
    assert_eq!(model_ids(&s, &whole).await, ["support", "support@canary", "support@champion"]);
    assert_eq!(model_ids(&s, &champ).await, ["support@champion"]);
    assert_eq!(ask(&s, &whole, "support@2").await.0, 200);
    assert_eq!(ask(&s, &champ, "support@champion").await.0, 200);
    for name in ["support", "support@canary", "support@1"] {
        let (status, _, v) = ask(&s, &champ, name).await;
        assert_eq!((status, code(&v)), (403, "model_not_permitted"), "{name}: {v}");
    }
    let (status, _, v) = ask(&s, &s.keys.user, "support").await;
    assert_eq!((status, code(&v)), (403, "model_not_permitted"), "{v}");
    // A disabled target leaves the list (and the 404's list of what is available).
    r.disable("support", 2, "regression");
    until("canary unlisted", WITHIN, || async move {
        !model_ids(sr, a).await.contains(&"support@canary".to_string())
    })
    .await;
    let (status, _, v) = ask(&s, &champ, "nope").await;
    assert_eq!(status, 404, "{v}");
    assert!(message(&v).ends_with("available: support@champion"), "only what the key may use: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_off_a_registry_name_is_not_found() {
    let s = start(Opts { configure: |c| c.registry.enabled = false, ..registry_opts() }).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.promote("support", 1, "champion");
    assert!(s.state.registry.is_none(), "no watcher, no snapshot");
    let (status, _, v) = ask(&s, &s.keys.admin, "support").await;
    assert_eq!((status, code(&v)), (404, "model_not_found"), "{v}");
    assert!(message(&v).contains("available: tiny"), "{v}");
    assert!(!model_ids(&s, &s.keys.admin).await.contains(&"support".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_appears_after_start_is_served_without_a_restart() {
    // The server starts before the file exists: it serves the base and keeps looking.
    let s = start(registry_opts()).await;
    assert!(!s.path("registry.db").exists());
    let (status, _, _) = ask(&s, &s.keys.admin, MODEL).await;
    assert_eq!(status, 200);
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("served once the registry exists", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_registry_keeps_the_last_snapshot_until_it_can_be_read_again() {
    let s = start(registry_opts()).await;
    let r = Reg::open(&s);
    r.adapter(&s, "support", "support-v1", 1, r.base);
    r.promote("support", 1, "champion");
    let sr = &s;
    let a = s.keys.admin.as_str();
    until("v1 is served", WITHIN, || async move { ask(sr, a, "support").await.0 == 200 }).await;
    drop(r);
    let reg = s.state.registry.clone().expect("registry on");
    // The file gone (then garbage in its place): the server warns and serves what it knew.
    let db = s.path("registry.db");
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(s.path(f));
    }
    let rr = &reg;
    until("the poll fails", WITHIN, || async move {
        rr.last_error().is_some_and(|e| e.contains("does not exist"))
    })
    .await;
    std::fs::write(&db, vec![0x5a; 8192]).expect("garbage");
    until("the poll fails again", WITHIN, || async move {
        rr.last_error().is_some_and(|e| !e.contains("does not exist"))
    })
    .await;
    let (status, artifact, v) = ask(&s, a, "support").await;
    assert_eq!((status, artifact.as_deref()), (200, Some("support@1")), "{v}");
    assert!(model_ids(&s, a).await.contains(&"support@champion".to_string()));
    // A registry again (a new file): read, and its state served.
    std::fs::remove_file(&db).expect("rm");
    let r = Reg::open(&s);
    r.adapter(&s, "sales", "sales-v1", 3, r.base);
    r.promote("sales", 1, "champion");
    until("sales is served", WITHIN, || async move { ask(sr, a, "sales").await.0 == 200 }).await;
    assert!(reg.last_error().is_none());
}
