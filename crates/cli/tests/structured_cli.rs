//! `ferrotune generate --json-schema FILE` / `--json` and `ferrotune eval --json-schema FILE`:
//! what is printed (or evaluated) is JSON valid against the schema — on the tiny random model
//! (only the mask can make a nonsense model write it) and on the real default model if installed.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn ferrotune(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_ferrotune")).args(args).output()?)
}

fn schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
        "required": ["name", "age", "tags"], "additionalProperties": false})
}

fn assert_valid(schema: &Value, text: &str) {
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("valid test schema");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text} violates the schema: {errors:?}");
}

fn generate_json(model: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let file = dir.join("s.json");
    std::fs::write(&file, schema().to_string())?;
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--json-schema",
        file,
        "--chat",
        "Tell me about a person.",
        "--max-tokens",
        "300",
    ];
    args.extend_from_slice(extra);
    let o = ferrotune(&args)?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(String::from_utf8(o.stdout)?)
}

#[test]
fn generate_with_a_json_schema_prints_json_valid_against_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tiny = dir.path().join("tiny");
    ferrotune_model::testing::write_tiny_model(&tiny)?;
    let tiny = tiny.to_str().expect("utf-8 path");
    assert_valid(&schema(), &generate_json(tiny, dir.path(), &[])?);
    for seed in ["1", "2"] {
        assert_valid(&schema(), &generate_json(tiny, dir.path(), &["--temperature", "1", "--seed", seed])?);
    }
    // The same model unconstrained writes no JSON: the mask did it.
    let o =
        ferrotune(&["generate", "--model", tiny, "--chat", "Tell me about a person.", "--max-tokens", "40"])?;
    assert!(serde_json::from_slice::<Value>(&o.stdout).is_err());
    if let Some(real) = ferrotune_model::testing::installed_model("smollm2-135m-instruct") {
        assert_valid(&schema(), &generate_json(real.to_str().expect("utf-8 path"), dir.path(), &[])?);
    }
    Ok(())
}

#[test]
fn generate_json_prints_a_json_object_and_refuses_what_it_cannot_enforce() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tiny = dir.path().join("tiny");
    ferrotune_model::testing::write_tiny_model(&tiny)?;
    let tiny = tiny.to_str().expect("utf-8 path");
    // `--json` is any object: a random model may not close one within the budget, which is an
    // error (exit 1), never invalid JSON printed as if it were complete.
    let o = ferrotune(&["generate", "--model", tiny, "--json", "--chat", "hi", "--max-tokens", "400"])?;
    if o.status.success() {
        let v: Value = serde_json::from_slice(&o.stdout)?;
        assert!(v.is_object(), "{v}");
    } else {
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--max-tokens"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({"type": "array", "uniqueItems": true}).to_string())?;
    let o = ferrotune(&[
        "generate",
        "--model",
        tiny,
        "--json-schema",
        bad.to_str().expect("utf-8"),
        "--chat",
        "hi",
    ])?;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uniqueItems"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

#[test]
fn eval_with_a_json_schema_holds_every_answer_to_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tiny = dir.path().join("tiny");
    ferrotune_model::testing::write_tiny_model(&tiny)?;
    let data = dir.path().join("people.jsonl");
    let mut rows = String::new();
    for (i, name) in ["Ada", "Bob", "Cy", "Dee", "Eve"].iter().enumerate() {
        let reference = json!({"name": name, "age": 20 + i, "tags": ["a"]}).to_string();
        rows.push_str(&json!({"messages": [{"role": "user", "content": format!("Describe {name} as JSON.")}, {"role": "assistant", "content": reference}]}).to_string());
        rows.push('\n');
    }
    std::fs::write(&data, rows)?;
    let schema_file = dir.path().join("s.json");
    std::fs::write(&schema_file, schema().to_string())?;
    let out = dir.path().join("eval");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            s(&tiny),
            "--data".into(),
            s(&data),
            "--out".into(),
            s(&out),
            "--max-tokens".into(),
            "300".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |a: Vec<String>| Command::new(env!("CARGO_BIN_EXE_ferrotune")).args(a).output();
    let o = run(args(&["--json-schema", &s(&schema_file)]))?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval: Value = serde_json::from_slice(&std::fs::read(out.join("eval.json"))?)?;
    let rows = eval["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    for r in rows {
        for o in r["outputs"].as_array().expect("outputs") {
            assert_valid(&schema(), o["prediction"].as_str().expect("prediction"));
        }
    }
    // Without the schema the same random model writes no valid JSON on these rows: the mask did it.
    let o = run(args(&[]))?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval: Value = serde_json::from_slice(&std::fs::read(out.join("eval.json"))?)?;
    let parsed = eval["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| {
            serde_json::from_str::<Value>(r["outputs"][0]["prediction"].as_str().unwrap_or("")).is_ok()
        })
        .count();
    assert_eq!(parsed, 0);
    // A schema with a feature the grammar cannot enforce is refused before any row runs, naming it.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({"type": "array", "uniqueItems": true}).to_string())?;
    let o = run(args(&["--json-schema", &s(&bad)]))?;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uniqueItems"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
