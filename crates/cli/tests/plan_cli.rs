//! `ferrotune plan` and `train`'s automatic settings as a user runs them, on a tiny model and on
//! shapes without weights: the table and the JSON agree, settings follow the data, bad input is
//! a clear error with a non-zero exit.

use std::path::Path;
use std::process::Command;

fn ferrotune(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrotune"));
    c.env("FERROTUNE_HOME", home);
    c
}

fn rows(dir: &Path, name: &str, n: usize, long_every: Option<usize>) -> anyhow::Result<std::path::PathBuf> {
    let mut text = String::new();
    for i in 0..n {
        let mut a = format!("The answer for case {i} is {}.", i * 7);
        if long_every.is_some_and(|k| i % k == 0) {
            a = a.repeat(40);
        }
        text.push_str(&serde_json::json!({"messages": [{"role": "user", "content": format!("Case {i}: what is seven times {i}?")}, {"role": "assistant", "content": a}]}).to_string());
        text.push('\n');
    }
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

fn plan_json(home: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = ferrotune(home).arg("plan").args(args).arg("--json").output()?;
    anyhow::ensure!(out.status.success(), "plan failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn a_plan_of_a_tiny_model_lists_every_method_and_device_and_recommends_lora() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ferrotune_model::testing::write_tiny_model(&dir.path().join("tiny"))?;
    let data = rows(dir.path(), "d.jsonl", 300, None)?;
    let tiny = dir.path().join("tiny").display().to_string();
    let v = plan_json(
        dir.path(),
        &["--data", &data.display().to_string(), "--model", &tiny, "--hardware", "cpu,h100,a100"],
    )?;
    assert_eq!(v["data"]["rows"], 300);
    let opts = v["options"].as_array().expect("options");
    assert_eq!(opts.len(), 9, "3 methods × 3 devices");
    for o in opts {
        let total = o["memory"]["total_bytes"].as_u64().expect("total");
        let sum: u64 = o["memory"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["bytes"].as_u64().expect("bytes"))
            .sum();
        assert_eq!(total, sum, "the total is the sum of its items: {o}");
        assert!(o["memory_checkpointed"]["total_bytes"].as_u64().expect("ckpt") <= total);
        let runnable = o["runnable"].as_bool().expect("runnable");
        assert_eq!(runnable, o["method"] != "qlora");
        // Every runnable option has a time (CPU: the shipped record; GPUs: the H200 records).
        assert_eq!(o["hours"].is_number(), runnable, "{o}");
    }
    assert_eq!(v["recommendation"]["method"], "lora");
    // The settings follow the data: 300 rows of 4 a step = 75 steps an epoch, 3 epochs.
    let lora_cpu = opts.iter().find(|o| o["method"] == "lora" && o["hardware"] == "cpu").expect("lora cpu");
    assert_eq!(lora_cpu["settings"]["epochs"]["value"], 3.0);
    assert_eq!(lora_cpu["settings"]["lr"]["value"], 1e-3);
    // The A100 is slower than the H100 in the plan by the data-sheet ratio.
    let t = |hw: &str| {
        opts.iter().find(|o| o["method"] == "lora" && o["hardware"] == hw).expect(hw)["hours"]
            .as_f64()
            .expect("hours")
    };
    assert!((t("a100") / t("h100") - 989.0 / 312.0).abs() < 1e-6);
    // The table says the same in words.
    let out = ferrotune(dir.path())
        .args(["plan", "--data", &data.display().to_string(), "--model", &tiny])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success() && text.contains("recommended: lora on") && text.contains("--lr 1e-3"),
        "{text}"
    );
    Ok(())
}

#[test]
fn an_8b_shape_does_not_fit_a_cpu_for_full_fine_tuning_and_serving_costs_are_compared() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let data = rows(dir.path(), "d.jsonl", 50, Some(25))?;
    // A shape has no tokenizer: the default model's stands in, so this needs it installed.
    if ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_MODEL).is_none() {
        return Ok(());
    }
    let home = ferrotune_model::store::home();
    let v = plan_json(
        &home,
        &[
            "--data",
            &data.display().to_string(),
            "--model",
            "llama-3.1-8b",
            "--hardware",
            "h100,h200",
            "--requests-per-day",
            "20000",
            "--tokens-per-request",
            "600",
        ],
    )?;
    let full_h100 = v["options"]
        .as_array()
        .expect("options")
        .iter()
        .find(|o| o["method"] == "full" && o["hardware"] == "h100")
        .expect("full h100")
        .clone();
    assert_eq!(full_h100["fits"], false, "full fine-tuning of 8B in bf16 with AdamW does not fit 80 GB");
    let warnings = v["recommendation"]["warnings"].to_string();
    assert!(warnings.contains("only 50 rows"), "{warnings}");
    assert!(warnings.contains("long tail"), "{warnings}");
    assert!(v["tokenizer"].as_str().expect("tokenizer").contains("stand-in"));
    let tco = &v["serving"]["tco"];
    assert!(tco["servers"].as_u64().expect("servers") >= 1);
    for a in tco["apis"].as_array().expect("apis") {
        assert!(a["per_month"].as_f64().expect("per month") > 0.0);
    }
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = rows(dir.path(), "d.jsonl", 10, None)?;
    let d = data.display().to_string();
    ferrotune_model::testing::write_tiny_model(&dir.path().join("tiny"))?;
    let tiny = dir.path().join("tiny").display().to_string();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, "as_of = 'x'\ncurrency = 'USD'\n[device_hour]\nh100 = -3\n")?;
    let p = prices.display().to_string();
    for (args, needle) in [
        (vec!["--data", "/nonexistent.jsonl", "--model", &tiny], "/nonexistent.jsonl"),
        (vec!["--data", &d, "--model", "gpt-17"], "gpt-17"),
        (vec!["--data", &d, "--model", &tiny, "--hardware", "tpu9"], "tpu9"),
        (vec!["--data", &d, "--model", &tiny, "--methods", "dora"], "dora"),
        (vec!["--data", &d, "--model", &tiny, "--prices", &p], "device_hour.h100"),
        (vec!["--data", &d, "--model", &tiny, "--completion-share", "1.5"], "--completion-share"),
        (vec!["--data", &d, "--model", &tiny, "--epochs", "0"], "--epochs"),
    ] {
        let out = ferrotune(dir.path()).arg("plan").args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    Ok(())
}

#[test]
fn train_takes_the_recommended_settings_it_is_not_given_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ferrotune_model::testing::write_tiny_model(&dir.path().join("tiny"))?;
    let data = rows(dir.path(), "d.jsonl", 12, None)?;
    let tiny = dir.path().join("tiny").display().to_string();
    let run = |out: &str, extra: &[&str]| -> anyhow::Result<(serde_json::Value, String)> {
        let o = ferrotune(dir.path())
            .args([
                "train",
                "--model",
                &tiny,
                "--data",
                &data.display().to_string(),
                "--out",
                &dir.path().join(out).display().to_string(),
            ])
            .args(["--quiet", "--no-registry", "--batch-size", "4"])
            .args(extra)
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        anyhow::ensure!(o.status.success(), "train failed: {err}");
        Ok((serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("config.json"))?)?, err))
    };
    // 12 rows of 4 = 3 steps an epoch: 10 epochs (the most) to approach 90 steps; a tiny model is small: lr 1e-3.
    let (cfg, err) = run("auto", &[])?;
    assert_eq!(cfg["lr"], 1e-3, "{cfg}");
    assert_eq!(cfg["epochs"], 10.0, "{cfg}");
    assert!(err.contains("lr 1e-3 (auto:") && err.contains("epochs 10 (auto:"), "{err}");
    // Given values win, and nothing is said about them.
    let (cfg, err) = run("given", &["--lr", "5e-4", "--epochs", "1"])?;
    assert_eq!(cfg["lr"], 5e-4);
    assert_eq!(cfg["epochs"], 1.0);
    assert!(!err.contains("auto:"), "{err}");
    // A value in --config counts as given.
    let toml = dir.path().join("run.toml");
    std::fs::write(&toml, "lr = 3e-4\nmax_steps = 2\n")?;
    let (cfg, err) = run("file", &["--config", &toml.display().to_string()])?;
    assert_eq!(cfg["lr"], 3e-4);
    assert!(!err.contains("lr 1e-3"), "{err}");
    Ok(())
}

#[test]
fn calibrate_records_this_machine_and_later_plans_use_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ferrotune_model::testing::write_tiny_model(&dir.path().join("tiny"))?;
    let data = rows(dir.path(), "d.jsonl", 40, None)?;
    let out = ferrotune(dir.path()).args(["plan", "--calibrate"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("calibrated:"), "{text}");
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("plan/calibration.json"))?)?;
    let measured = cal["ferrotune"]["tokens_per_sec"].as_f64().expect("tokens/s");
    assert!(measured > 0.0 && cal["calibrated"].is_string());
    let tiny = dir.path().join("tiny").display().to_string();
    let v = plan_json(
        dir.path(),
        &["--data", &data.display().to_string(), "--model", &tiny, "--hardware", "cpu", "--methods", "lora"],
    )?;
    let speed = &v["options"][0]["speed"];
    assert!(speed["record"]["source"].as_str().expect("source").contains("this machine"), "{speed}");
    assert_eq!(speed["record"]["tokens_per_sec"].as_f64(), Some(measured));
    // A calibration file that is not JSON is an error naming it, not a silent fallback.
    std::fs::write(dir.path().join("plan/calibration.json"), "not json")?;
    let out = ferrotune(dir.path())
        .args(["plan", "--data", &data.display().to_string(), "--model", &tiny])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("calibration.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
