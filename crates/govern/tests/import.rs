//! `import_run`: a run folder written without the registry (lineage.json, config.json, adapter
//! files, eval/eval.json) is recorded once, and refused when its output changed after the run.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ferrotune_govern::*;
use serde_json::json;

/// A run folder `<tmp>/runs/demo` laid out as `ferrotune train --out runs/demo` leaves it, with
/// lineage.json's paths relative to where train ran (`runs/demo/...`), as the real file has.
fn run_folder(root: &Path, output_files: &[(&str, &str)], with_eval: bool) -> PathBuf {
    let run = root.join("runs").join("demo");
    let adapter = run.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let mut files = Vec::new();
    for (name, content) in output_files {
        std::fs::write(adapter.join(name), content).unwrap();
        files.push(json!({"path": format!("runs/demo/adapter/{name}"), "bytes": content.len(), "sha256": sha(content)}));
    }
    let config = json!({"model": "smollm2-135m-instruct", "out": "runs/demo", "method": "lora", "device": "cpu", "lora_r": 16});
    std::fs::write(run.join("config.json"), config.to_string()).unwrap();
    let lineage = json!({
        "tool": {"name": "ferrotune", "version": "0.1.0"},
        "started": "2026-12-07T12:36:20Z",
        "finished": "2026-12-07T12:38:13Z",
        "config": config,
        "data": [
            {"path": "examples/support/train.jsonl", "bytes": 312404, "sha256": sha("train")},
            {"path": "examples/support/eval.jsonl", "bytes": 49402, "sha256": sha("eval")}
        ],
        "base_model": {"spec": "smollm2-135m-instruct", "files": [
            {"path": "/home/x/.ferrotune/models/smollm2/model.gguf", "bytes": 98362432, "sha256": sha("model")}
        ]},
        "output": {"path": "runs/demo/adapter", "files": files},
        "metrics": {"run_dir": "runs/demo", "steps": 30, "final_loss": 1.15, "tokens": 5000}
    });
    std::fs::write(run.join("lineage.json"), serde_json::to_string_pretty(&lineage).unwrap()).unwrap();
    if with_eval {
        std::fs::create_dir_all(run.join("eval")).unwrap();
        let eval = json!({
            "model": "smollm2-135m-instruct",
            "data": {"path": "examples/support/eval.jsonl", "sha256": sha("eval"), "rows": 60},
            "systems": [
                {"name": "base", "adapter": null, "run_dir": null},
                {"name": "demo", "adapter": "runs/demo/adapter", "run_dir": "runs/demo"}
            ],
            "metrics": [{"name": "rougeL", "higher_is_better": true, "scale": 1.0, "scores": [
                {"system": "base", "value": 0.10, "ci95": [0.09, 0.12]},
                {"system": "demo", "value": 0.38, "ci95": [0.35, 0.41]}
            ]}]
        });
        std::fs::write(run.join("eval").join("eval.json"), eval.to_string()).unwrap();
    }
    run
}

const ADAPTER: [(&str, &str); 2] =
    [("adapter_config.json", "{\"r\": 16}"), ("adapter_model.safetensors", "weights")];

#[test]
fn importing_a_run_folder_twice_records_it_once() {
    let root = tempfile::tempdir().unwrap();
    let run_dir = run_folder(root.path(), &ADAPTER, true);
    let (_d, reg) = registry();
    let l = reg.import_run(&run_dir, None, "alice").unwrap();
    assert_eq!(
        (l.artifact.name.as_str(), l.artifact.version, l.artifact.kind),
        ("demo", 1, ArtifactKind::Adapter)
    );
    assert!(
        l.artifact.files.iter().all(|f| Path::new(&f.path).is_absolute() && Path::new(&f.path).is_file())
    );
    let run = l.run.as_ref().expect("run");
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        (run.started.as_str(), run.finished.as_deref()),
        ("2026-12-07T12:36:20Z", Some("2026-12-07T12:38:13Z"))
    );
    assert_eq!(
        (run.method.as_str(), run.device.as_str(), run.register_as.as_str(), run.steps),
        ("lora", "cpu", "demo", Some(30))
    );
    assert_eq!(run.config["lora_r"], 16);
    assert_eq!(run.tokens, Some(5000));
    assert_eq!(run.metrics.as_ref().unwrap()["final_loss"], 1.15);
    let base = l.base_model.as_ref().expect("base model");
    assert_eq!((base.name.as_str(), base.parameters), ("smollm2-135m-instruct", None));
    assert_eq!(
        l.datasets.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
        ["examples/support/train.jsonl", "examples/support/eval.jsonl"]
    );
    assert_eq!(l.evals.len(), 1, "the eval's adapter system matched the imported version");
    assert_eq!(l.evals[0].systems[1].1, Some(l.artifact.id));
    assert_eq!(l.evals[0].systems[0].1, None);

    let again = reg.import_run(&run_dir, None, "bob").unwrap();
    assert_eq!((again.artifact.id, again.run.as_ref().unwrap().id), (l.artifact.id, run.id));
    assert_eq!(
        (
            reg.runs().unwrap().len(),
            reg.artifacts().unwrap().len(),
            reg.evals().unwrap().len(),
            reg.models().unwrap().len(),
            reg.datasets().unwrap().len()
        ),
        (1, 1, 1, 1, 2)
    );
    let imported = reg.history("demo").unwrap().iter().filter(|e| e.action == "imported").count();
    assert_eq!(imported, 1);
    // The imported eval gates a promotion like one registered by `ferrotune eval`.
    let p = policy(
        "[alias.champion]\napprovers = 0\ngates = [\"rougeL\"]\ngate_data = \"examples/support/eval.jsonl\"\n",
    );
    assert!(matches!(
        reg.promote("demo", 1, "champion", "imported", "alice", &p).unwrap(),
        Promotion::Applied { .. }
    ));
}

#[test]
fn import_registers_under_the_given_name_and_a_folder_without_adapter_config_as_a_model() {
    let root = tempfile::tempdir().unwrap();
    let run_dir =
        run_folder(root.path(), &[("model.safetensors", "full weights"), ("config.json", "{}")], false);
    let (_d, reg) = registry();
    let l = reg.import_run(&run_dir, Some("support"), "alice").unwrap();
    assert_eq!(
        (l.artifact.name.as_str(), l.artifact.kind, l.evals.len()),
        ("support", ArtifactKind::Model, 0)
    );
    assert!(matches!(reg.import_run(&run_dir, Some("bad name"), "alice"), Err(GovernError::Invalid { .. })));
}

#[test]
fn a_tampered_output_file_refuses_the_import_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let run_dir = run_folder(root.path(), &ADAPTER, true);
    std::fs::write(run_dir.join("adapter").join("adapter_model.safetensors"), "other weights").unwrap();
    let (_d, reg) = registry();
    let err = reg.import_run(&run_dir, None, "alice").unwrap_err();
    assert!(
        matches!(&err, GovernError::Refused(m) if m.contains("adapter_model.safetensors") && m.contains(&sha("weights"))),
        "{err}"
    );
    assert!(reg.runs().unwrap().is_empty() && reg.artifacts().unwrap().is_empty(), "nothing recorded");
    std::fs::remove_file(run_dir.join("adapter").join("adapter_model.safetensors")).unwrap();
    let err = reg.import_run(&run_dir, None, "alice").unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("missing"), "{err}");
}

#[test]
fn a_missing_or_malformed_lineage_names_the_file_and_the_field() {
    let root = tempfile::tempdir().unwrap();
    let run_dir = run_folder(root.path(), &ADAPTER, false);
    let lineage_path = run_dir.join("lineage.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lineage_path).unwrap()).unwrap();
    let (_d, reg) = registry();
    let expect = |field: &str| match reg.import_run(&run_dir, None, "alice") {
        Err(GovernError::BadFile { path, field: f, .. }) => {
            assert!(path.ends_with("lineage.json"), "{path:?}");
            assert_eq!(f, field);
        }
        other => panic!("{field}: {other:?}"),
    };
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = original.clone();
        f(&mut v);
        std::fs::write(&lineage_path, v.to_string()).unwrap();
    };
    edit(&|v| {
        v.as_object_mut().unwrap().remove("started");
    });
    expect("started");
    edit(&|v| v["output"]["files"][1].as_object_mut().unwrap().remove("sha256").map(|_| ()).unwrap_or(()));
    expect("output.files[1].sha256");
    edit(&|v| v["base_model"]["files"] = json!("not a list"));
    expect("base_model.files");
    edit(&|v| v["output"]["files"] = json!([]));
    expect("output.files");
    std::fs::write(&lineage_path, "{ not json").unwrap();
    expect("(json)");
    std::fs::remove_file(&lineage_path).unwrap();
    expect("(file)");
    assert!(reg.runs().unwrap().is_empty());
}

#[test]
fn the_repository_demo_run_imports_when_present() {
    // runs/demo is the checked-in example run (lineage.json with paths relative to the repo root).
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runs/demo");
    if !demo.join("lineage.json").is_file() || !demo.join("adapter").is_dir() {
        return;
    }
    let (_d, reg) = registry();
    let l = reg.import_run(&demo, None, "alice").unwrap();
    assert_eq!((l.artifact.name.as_str(), l.artifact.kind), ("demo", ArtifactKind::Adapter));
    assert_eq!(l.datasets.len(), 2);
    if demo.join("eval/eval.json").is_file() {
        assert_eq!(l.evals.len(), 1, "eval/eval.json's demo system is this adapter");
    }
}
