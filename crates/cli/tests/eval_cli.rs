//! `ferrotune eval` and `ferrotune eval score` as a user runs them, on a tiny model with an
//! adapter trained by `ferrotune train`: files written, tuned vs base compared, gates exit 3,
//! bad input exits 1 naming file and line.

use std::path::Path;
use std::process::{Command, Output};

fn ferrotune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    Ok(ferrotune().args(args).output()?)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn rows(n: usize, offset: usize) -> String {
    let mut out = String::new();
    for i in offset..offset + n {
        let q = format!("Spell {i} backwards.");
        let a = format!("ok {}", i.to_string().chars().rev().collect::<String>());
        out.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        out.push('\n');
    }
    out
}

/// A tiny model and a run (runs/spell) whose adapter learned the task a little.
fn setup(dir: &Path) -> anyhow::Result<()> {
    ferrotune_model::testing::write_tiny_model(&dir.join("tiny"))?;
    std::fs::write(dir.join("train.jsonl"), rows(48, 0))?;
    std::fs::write(dir.join("test.jsonl"), rows(6, 100))?;
    let o = run(&[
        "train",
        "--model",
        &dir.join("tiny").display().to_string(),
        "--data",
        &dir.join("train.jsonl").display().to_string(),
        "--out",
        &dir.join("runs/spell").display().to_string(),
        "--max-steps",
        "30",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--quiet",
    ])?;
    assert!(o.status.success(), "{}", text(&o));
    Ok(())
}

#[test]
fn eval_compares_base_and_adapter_writes_reports_and_gates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let model = d.join("tiny").display().to_string();
    let data = d.join("test.jsonl").display().to_string();
    let adapter = d.join("runs/spell/adapter").display().to_string();
    let o = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--adapter",
        &adapter,
        "--max-tokens",
        "8",
        "--batch-size",
        "4",
        "--resamples",
        "100",
    ])?;
    assert!(o.status.success(), "{}", text(&o));
    // Default output folder of one adapter from a run: the run's eval/.
    let out = d.join("runs/spell/eval");
    for f in ["eval.json", "report.md", "metrics.svg", "loss-spell.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json"))?)?;
    let systems: Vec<&str> = ev["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .map(|s| s["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(systems, ["base", "spell"]);
    assert_eq!(ev["rows"].as_array().expect("rows").len(), 6);
    assert_eq!(ev["data"]["rows"], 6);
    let loss = ev["metrics"].as_array().expect("metrics").iter().find(|m| m["name"] == "loss").expect("loss");
    let base_loss = loss["scores"][0]["value"].as_f64().expect("base loss");
    let tuned_loss = loss["scores"][1]["value"].as_f64().expect("tuned loss");
    // The adapter was trained on this task: lower loss on held-out rows of it.
    assert!(tuned_loss < base_loss, "tuned {tuned_loss} vs base {base_loss}");
    let delta = loss["vs_base"][0]["value"].as_f64().expect("difference");
    assert!((delta - (tuned_loss - base_loss)).abs() < 1e-9);
    let ci = loss["scores"][0]["ci95"].as_array().expect("interval");
    assert!(ci[0].as_f64().expect("low") <= base_loss && base_loss <= ci[1].as_f64().expect("high"));
    let report = std::fs::read_to_string(out.join("report.md"))?;
    assert!(report.contains("| loss ↓ |") && report.contains("spell − base"), "{report}");
    assert!(text(&o).contains("rows/s"));

    // Gate on loss against the base: the tuned loss is lower, so it passes.
    let o = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--adapter",
        &format!("t={adapter}"),
        "--max-tokens",
        "4",
        "--metrics",
        "loss,rougeL",
        "--fail-if-worse",
        "loss",
        "--out",
        &d.join("e2").display().to_string(),
        "--resamples",
        "50",
    ])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("→ pass"));

    // Against a stored baseline that scored better, the gate fails with exit 3 and the files stay.
    let mut baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("e2/eval.json"))?)?;
    for m in baseline["metrics"].as_array_mut().expect("metrics") {
        if m["name"] == "rougeL" {
            m["scores"][1]["value"] = serde_json::json!(1.0);
        }
    }
    std::fs::write(d.join("baseline.json"), baseline.to_string())?;
    let o = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--adapter",
        &format!("t={adapter}"),
        "--max-tokens",
        "4",
        "--metrics",
        "loss,rougeL",
        "--fail-if-worse",
        "rougeL:0.01",
        "--baseline",
        &d.join("baseline.json").display().to_string(),
        "--out",
        &d.join("e3").display().to_string(),
        "--resamples",
        "50",
    ])?;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("FAIL") && d.join("e3/eval.json").is_file());
    Ok(())
}

#[test]
fn eval_rejects_bad_input_before_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    ferrotune_model::testing::write_tiny_model(&d.join("tiny"))?;
    let model = d.join("tiny").display().to_string();
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], \"expected\": 5}}\n",
            rows(1, 0)
        ),
    )?;
    let o = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &bad.display().to_string(),
        "--out",
        &d.join("x").display().to_string(),
    ])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("bad.jsonl:2: `expected`"), "{}", text(&o));
    assert!(!d.join("x/eval.json").exists());
    let good = d.join("good.jsonl");
    std::fs::write(&good, rows(2, 0))?;
    let o =
        run(&["eval", "--model", &model, "--data", &good.display().to_string(), "--metrics", "rougeL,blue"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown metric \"blue\""), "{}", text(&o));
    let o = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &good.display().to_string(),
        "--fail-if-worse",
        "rougeL",
    ])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("needs an --adapter"), "{}", text(&o));
    Ok(())
}

#[test]
fn eval_score_scores_given_predictions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let p = d.join("preds.jsonl");
    std::fs::write(
        &p,
        "{\"prediction\": \"The cat sat on the mat.\", \"reference\": \"The cat sat on the mat.\"}\n\
         {\"prediction\": \"A dog ran.\", \"reference\": \"The dog ran away.\"}\n",
    )?;
    let o = run(&[
        "eval",
        "score",
        "--predictions",
        &p.display().to_string(),
        "--json",
        "--out",
        &d.join("s").display().to_string(),
    ])?;
    assert!(o.status.success(), "{}", text(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let em = ev["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["name"] == "exact_match")
        .expect("exact_match");
    assert_eq!(em["scores"][0]["value"], 0.5);
    assert!(d.join("s/report.md").is_file());

    std::fs::write(&p, "{\"prediction\": \"x\", \"reference\": \"x\"}\n{\"prediction\": \"y\"}\n")?;
    let o = run(&["eval", "score", "--predictions", &p.display().to_string()])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("preds.jsonl:2: `reference`: missing"), "{}", text(&o));
    let o = run(&["eval", "score", "--predictions", &p.display().to_string(), "--metrics", "loss"])?;
    assert_eq!(o.status.code(), Some(1));
    Ok(())
}

#[test]
fn a_nan_reference_score_fails_the_gate_with_exit_3() -> anyhow::Result<()> {
    // Regression: every comparison with NaN is false, so a NaN reference passed every system;
    // and the NaN, written to eval.json as null, made the file unreadable as a --baseline.
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    ferrotune_model::testing::write_tiny_model(&d.join("tiny"))?;
    std::fs::write(d.join("test.jsonl"), rows(2, 0))?;
    let preds = d.join("preds.jsonl");
    std::fs::write(
        &preds,
        "{\"prediction\": \"ok 0\", \"reference\": \"ok 0\"}\n{\"prediction\": \"ok 1\", \"reference\": \"ok 1\"}\n",
    )?;
    let o = run(&[
        "eval",
        "score",
        "--predictions",
        &preds.display().to_string(),
        "--metrics",
        "rougeL",
        "--out",
        &d.join("b").display().to_string(),
    ])?;
    assert!(o.status.success(), "{}", text(&o));
    let mut baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("b/eval.json"))?)?;
    baseline["metrics"][0]["scores"][0]["value"] = serde_json::Value::Null;
    std::fs::write(d.join("baseline.json"), baseline.to_string())?;
    let o = run(&[
        "eval",
        "--model",
        &d.join("tiny").display().to_string(),
        "--data",
        &d.join("test.jsonl").display().to_string(),
        "--max-tokens",
        "2",
        "--metrics",
        "rougeL",
        "--fail-if-worse",
        "rougeL",
        "--baseline",
        &d.join("baseline.json").display().to_string(),
        "--out",
        &d.join("e").display().to_string(),
        "--resamples",
        "10",
    ])?;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("the reference rougeL (baseline:predictions) is not a number"), "{t}");
    assert!(t.contains("rougeL of base"), "{t}");
    Ok(())
}

#[test]
fn a_huge_resample_count_is_a_usage_error() -> anyhow::Result<()> {
    // Regression: 10^13 resamples reached a Vec of that many scores (capacity overflow).
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("preds.jsonl");
    std::fs::write(&p, "{\"prediction\": \"x\", \"reference\": \"x\"}\n")?;
    let p = p.display().to_string();
    for mut args in [vec!["eval", "score", "--predictions", &p], vec!["eval", "--data", &p]] {
        args.extend(["--resamples", "10000000000000"]);
        let o = run(&args)?;
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains("--resamples") && t.contains("at most 100000"), "{t}");
    }
    let o = run(&["eval", "score", "--predictions", &p, "--resamples", "100000"])?;
    assert!(o.status.success(), "{}", text(&o));
    Ok(())
}
