//! Builders shared by the registry's integration tests: a fresh registry in a temp folder,
//! artifacts with made-up file hashes, evaluations with chosen scores.
#![allow(dead_code, clippy::unwrap_used)]

use ferrotune_govern::*;
use sha2::{Digest, Sha256};

pub fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("temp dir");
    let reg = Registry::open(&dir.path().join("registry.db")).expect("open registry");
    (dir, reg)
}

pub fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// An adapter folder's files, their hashes derived from `tag` (same tag = same content).
pub fn adapter_files(folder: &str, tag: &str) -> Vec<FileHash> {
    ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|f| FileHash { path: format!("{folder}/{f}"), bytes: 10, sha256: sha(&format!("{tag}/{f}")) })
        .collect()
}

pub fn new_artifact(name: &str, tag: &str) -> NewArtifact {
    let path = format!("/adapters/{tag}");
    NewArtifact {
        name: name.into(),
        kind: ArtifactKind::Adapter,
        files: adapter_files(&path, tag),
        path,
        run: None,
        base_model: None,
        actor: "alice".into(),
    }
}

pub fn artifact(reg: &Registry, name: &str, tag: &str) -> ArtifactRecord {
    reg.register_artifact(&new_artifact(name, tag)).expect("register artifact")
}

pub fn model(reg: &Registry) -> i64 {
    reg.register_model(&NewModel {
        name: "tiny".into(),
        path: "/models/tiny".into(),
        files: vec![FileHash {
            path: "/models/tiny/model.safetensors".into(),
            bytes: 1,
            sha256: sha("tiny"),
        }],
        config: serde_json::json!({"layers": 2}),
        parameters: Some(1000),
    })
    .expect("register model")
}

pub fn dataset(reg: &Registry, path: &str) -> i64 {
    reg.register_dataset(&NewDataset {
        path: path.into(),
        sha256: sha(path),
        bytes: 100,
        format: None,
        rows: None,
        report: None,
        pii_findings: None,
        duplicates: None,
    })
    .expect("register dataset")
}

pub fn new_run(base_model: i64, datasets: Vec<i64>, register_as: &str) -> NewRun {
    NewRun {
        name: "run-a".into(),
        run_dir: "/runs/a".into(),
        base_model,
        datasets,
        config: serde_json::json!({"method": "lora"}),
        method: "lora".into(),
        device: "cpu".into(),
        actor: "alice".into(),
        register_as: register_as.into(),
    }
}

pub const EVAL_DATA: &str = "examples/support/eval.jsonl";

/// Record an eval.json on `EVAL_DATA` where each (system, artifact) scored `metric` = value
/// (artifact `None` = the base model). `tag` makes the eval.json's hash unique.
pub fn eval(
    reg: &Registry,
    tag: &str,
    metric: &str,
    higher_is_better: bool,
    systems: &[(&str, Option<&ArtifactRecord>, f64)],
) -> EvalRecord {
    let scores: Vec<serde_json::Value> = systems
        .iter()
        .map(|(s, _, v)| serde_json::json!({"system": s, "value": v, "ci95": [v - 0.01, v + 0.01]}))
        .collect();
    let e = NewEval {
        path: format!("/evals/{tag}/eval.json"),
        sha256: sha(&format!("eval {tag}")),
        model: "tiny".into(),
        data_path: EVAL_DATA.into(),
        data_sha256: sha(EVAL_DATA),
        rows: 60,
        systems: systems
            .iter()
            .map(|(name, a, _)| EvalSystem {
                name: (*name).into(),
                adapter: a.map(|a| a.path.clone()),
                adapter_files: a.map(|a| a.files.clone()).unwrap_or_default(),
            })
            .collect(),
        metrics: serde_json::json!([{"name": metric, "higher_is_better": higher_is_better, "scale": 1.0, "scores": scores}]),
        actor: "alice".into(),
    };
    reg.register_eval(&e).expect("register eval")
}

/// A policy from TOML text.
pub fn policy(text: &str) -> Policy {
    Policy::parse(text, std::path::Path::new("policy.toml")).expect("valid policy")
}
