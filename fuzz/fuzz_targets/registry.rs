//! The registry's inputs, by the first byte: `policy.toml` text (a policy that parses must
//! print as TOML and parse again equal), a run folder for `import_run` with `lineage.json`,
//! `config.json` or `eval/eval.json` of arbitrary bytes (importing twice gives the same
//! lineage), and a `registry.db` of arbitrary bytes opened and read.
#![no_main]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrotune_govern::{Policy, Registry};
use libfuzzer_sys::fuzz_target;

const ADAPTER_CONFIG: &str = "{\"r\": 16}";
const ADAPTER_WEIGHTS: &str = "weights";
const CONFIG: &str = r#"{"model": "smollm2-135m-instruct", "out": "runs/demo", "method": "lora", "device": "cpu", "lora_r": 16}"#;
const LINEAGE: &str = r#"{
  "tool": {"name": "ferrotune", "version": "0.1.0"},
  "started": "2026-12-07T12:36:20Z",
  "finished": "2026-12-07T12:38:13Z",
  "data": [
    {"path": "examples/support/train.jsonl", "bytes": 312404, "sha256": "116f54c41d0405dbb10e7b04ebc31e262a5b8c85c1233fcf36eaee344d91ae58"}
  ],
  "base_model": {"spec": "smollm2-135m-instruct", "files": []},
  "output": {"path": "runs/demo/adapter", "files": [
    {"path": "runs/demo/adapter/adapter_config.json", "bytes": 9, "sha256": "07edc49cf2897ac277f25c9e19fd0b072f22f021eb71101693b11ff95fd71736"},
    {"path": "runs/demo/adapter/adapter_model.safetensors", "bytes": 7, "sha256": "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"}
  ]},
  "metrics": {"run_dir": "runs/demo", "steps": 30, "final_loss": 1.15, "tokens": 5000}
}"#;
const EVAL: &str = r#"{
  "model": "smollm2-135m-instruct",
  "data": {"path": "examples/support/eval.jsonl", "sha256": "116f54c41d0405dbb10e7b04ebc31e262a5b8c85c1233fcf36eaee344d91ae58", "rows": 60},
  "systems": [
    {"name": "base", "adapter": null, "run_dir": null},
    {"name": "demo", "adapter": "runs/demo/adapter", "run_dir": "runs/demo"}
  ],
  "metrics": [{"name": "rougeL", "higher_is_better": true, "scale": 1.0, "scores": [
    {"system": "base", "value": 0.10, "ci95": [0.09, 0.12]},
    {"system": "demo", "value": 0.38, "ci95": [0.35, 0.41]}
  ]}]
}"#;

/// One registry for the process: opening one per input would time the schema, not the parsers.
fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::open(&common::scratch().join("registry.db")).expect("registry"))
}

/// A run folder as `train --out runs/demo` leaves it, with file `fuzzed` holding `bytes`.
fn run_folder(fuzzed: &str, bytes: &[u8]) -> PathBuf {
    let root = common::fresh_dir("import");
    let run = root.join("runs").join("demo");
    std::fs::create_dir_all(run.join("adapter")).expect("folder");
    std::fs::create_dir_all(run.join("eval")).expect("folder");
    let files = [
        ("adapter/adapter_config.json", ADAPTER_CONFIG),
        ("adapter/adapter_model.safetensors", ADAPTER_WEIGHTS),
        ("config.json", CONFIG),
        ("lineage.json", LINEAGE),
        ("eval/eval.json", EVAL),
    ];
    for (name, text) in files {
        let data = if name == fuzzed { bytes } else { text.as_bytes() };
        std::fs::write(run.join(name), data).expect("write");
    }
    run
}

fn open_db(bytes: &[u8]) {
    let dir = common::fresh_dir("db");
    let path = dir.join("registry.db");
    std::fs::write(&path, bytes).expect("write");
    if let Ok(reg) = Registry::open(&path) {
        let _ = reg.check();
        let _ = reg.models();
        let _ = reg.runs();
        let _ = reg.artifacts();
        let _ = reg.evals();
        let _ = reg.aliases();
        let _ = reg.requests(false);
        let _ = reg.lineage("demo", "champion");
    }
}

fn policy(text: &str) {
    let path = Path::new("policy.toml");
    if let Ok(p) = Policy::parse(text, path) {
        let _ = p.rule("champion");
        let printed = toml::to_string(&p).expect("a parsed policy prints as TOML");
        let again = Policy::parse(&printed, path).expect("a printed policy parses");
        assert_eq!(p, again, "policy changed through print and parse");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = common::mode(data) else { return };
    match mode % 5 {
        0 => policy(&String::from_utf8_lossy(bytes)),
        4 => open_db(bytes),
        m => {
            let name = ["lineage.json", "config.json", "eval/eval.json", "adapter/adapter_model.safetensors"]
                [m as usize - 1];
            let run = run_folder(name, bytes);
            if let Ok(first) = registry().import_run(&run, Some("demo"), "fuzz") {
                let again = registry()
                    .import_run(&run, Some("demo"), "fuzz")
                    .expect("a second import of the same folder");
                assert_eq!(
                    serde_json::to_value(&first).expect("lineage"),
                    serde_json::to_value(&again).expect("lineage"),
                    "importing the same folder twice gave different lineages"
                );
            }
        }
    }
});
